"""Checkpoint directories: `lit_model.pth` (a state dict, or {"model": state_dict, ...}) beside
`model_config.yaml`. Every write goes to a temporary file first and is renamed into place, so an
interrupted save never leaves a truncated file under the final name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from litgpt.config import Config
from litgpt.model import GPT

PathLike = Union[str, Path]


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> None:
    """Call write(tmp_path) for a temporary file beside path, fsync it, then rename it onto path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_config(config: Config, checkpoint_dir: PathLike) -> None:
    atomic_write(Path(checkpoint_dir) / "model_config.yaml", config.save)


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model state dict from a loaded `lit_model.pth`: plain, or wrapped as {"model": ...}."""
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{source} does not hold a model state dict (expected tensors, or {{'model': state_dict}})")
    # torch.compile and DDP wrappers prefix keys; strip them so wrapped saves load too
    for prefix in ("_orig_mod.", "module.", "_forward_module."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return obj


def save_checkpoint(model: GPT, checkpoint_dir: PathLike) -> None:
    """Write `lit_model.pth` (plain state dict) and `model_config.yaml` into checkpoint_dir."""
    checkpoint_dir = Path(checkpoint_dir)
    atomic_torch_save(model.state_dict(), checkpoint_dir / "lit_model.pth")
    save_config(model.config, checkpoint_dir)


def load_checkpoint(
    checkpoint_dir: PathLike,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[torch.dtype] = None,
) -> GPT:
    """Build the model described by `model_config.yaml` and load `lit_model.pth` into it (strictly)."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(checkpoint_dir)!r} does not exist")
    weights = checkpoint_dir / "lit_model.pth"
    if not weights.is_file():
        raise FileNotFoundError(
            f"{str(checkpoint_dir)!r} has no lit_model.pth; convert a Hugging Face checkpoint with "
            "`python -m litgpt.scripts.convert_hf_checkpoint` or point at a `litgpt pretrain` output"
        )
    config = Config.from_checkpoint(checkpoint_dir)
    with torch.device("meta"):
        model = GPT(config)
    state_dict = extract_state_dict(
        torch.load(weights, map_location="cpu", mmap=True, weights_only=True), source=str(weights)
    )
    missing, unexpected = _key_mismatch(model, state_dict)
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match model_config.yaml: missing keys {missing[:5]}, unexpected keys "
            f"{unexpected[:5]}{' ...' if len(missing) > 5 or len(unexpected) > 5 else ''}"
        )
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.reset_rope_cache()  # the model was built on the meta device
    return model.to(device=device, dtype=dtype)


def _key_mismatch(model: GPT, state_dict: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    expected = set(model.state_dict())
    return sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
