"""Checkpoint directories: `lit_model.pth` (a state dict, or {"model": state_dict, ...}) beside
`model_config.yaml`. Every write goes to a temporary file first and is renamed into place, so an
interrupted save never leaves a truncated file under the final name. Every read goes through
`read_checkpoint_file`, which pins `weights_only=True` and turns a bad file into one `CheckpointError` line.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
import yaml

from litgpt.config import Config
from litgpt.model import GPT
from litgpt.files import PathLike, atomic_write

__all__ = [
    "CheckpointError", "CheckpointNotFoundError", "atomic_torch_save", "atomic_write", "check_finite",
    "convert_state_dict", "extract_state_dict", "load_checkpoint", "read_checkpoint_file", "save_checkpoint",
    "save_config",
]

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
# torch.save(_use_new_zipfile_serialization=False) pickles this magic number first (after the protocol header)
_LEGACY_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_FIX = "re-save or re-convert it, or point at another checkpoint"


class CheckpointError(ValueError):
    """A checkpoint file or directory that cannot be used: missing, empty, truncated, corrupt, not a torch file,
    holding non-tensor objects, not matching its model_config.yaml, or holding NaN/inf weights.

    Catch it to fall back to another checkpoint (e.g. the previous one when resuming). The message is one line
    that names the file and the problem.
    """


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint file that does not exist: both a `CheckpointError` and a `FileNotFoundError`."""


def _first_sentence(text: str, limit: int = 200) -> str:
    """The first sentence of an error message, without ANSI escapes or line breaks, at most `limit` characters."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())
    text = text.split(". ")[0].rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_checkpoint_file(path: PathLike, mmap: bool = True) -> Any:
    """Load a `.pth` file with `torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)`.

    Every failure raises `CheckpointError` (`CheckpointNotFoundError`, also a `FileNotFoundError`, for a missing
    file) with a one-line message naming the file and the problem: missing, a directory, empty, truncated or
    corrupt, not a torch file, or holding non-tensor objects (refused by weights_only for safety). Files in
    torch's legacy (non-zip) format cannot be memory-mapped and are read without mmap.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint file {str(path)!r} does not exist; point at another checkpoint")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file; point at the .pth file inside it")
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError as e:
        problem = _first_sentence(e.strerror or str(e))
        raise CheckpointError(f"{path} cannot be read ({problem}); fix its permissions or point at another checkpoint"
                              ) from e
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes; an interrupted save or copy?); {_FIX}")
    legacy = head.startswith(b"\x80") and _LEGACY_MAGIC in head
    if not head.startswith(_ZIP_MAGIC) and not legacy:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (it does not start like a torch.save file); {_FIX}")
    try:
        return torch.load(path, map_location="cpu", mmap=mmap and not legacy, weights_only=True)
    except pickle.UnpicklingError as e:
        unsupported = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", str(e), re.IGNORECASE)
        if unsupported:
            raise CheckpointError(
                f"{path} holds non-tensor objects ({unsupported.group(1)}) and is not loaded for safety "
                f"(weights_only=True); re-save only tensors and plain containers, or point at another checkpoint"
            ) from e
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        problem = _first_sentence(detail.group(1) if detail else str(e))
        raise CheckpointError(
            f"{path} is corrupt or not a plain torch.save file (weights_only=True cannot unpickle it: {problem}); "
            f"{_FIX}"
        ) from e
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001  (torch raises RuntimeError, EOFError, ... for a damaged file)
        problem = _first_sentence(str(e)) or type(e).__name__
        raise CheckpointError(f"{path} is truncated or corrupt ({problem}); {_FIX}") from e


def check_finite(state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise `CheckpointError` naming `source` and the first floating tensor that holds NaN or inf values.

    The check runs where the tensors are and allocates nothing the size of a tensor: `torch.aminmax` per floating
    tensor (NaN propagates to both, inf shows as one of them; `torch.isfinite` would materialise an `abs` copy and
    masks), `torch.isfinite(t).all()` for complex ones, and one host sync per device for all of them (on CUDA one
    sync per tensor cost more than the reductions). The NaN/inf counts are computed only for a bad tensor.
    """
    checked = {name: t for name, t in state_dict.items() if (t.is_floating_point() or t.is_complex()) and t.numel()}
    flags: dict[torch.device, list[torch.Tensor]] = {}
    for t in checked.values():
        flags.setdefault(t.device, []).append(_finite_flag(t))  # 0-dim bool on t's device
    if all(bool(torch.stack(device_flags).all()) for device_flags in flags.values()):
        return
    name, t = next((name, t) for name, t in checked.items() if not bool(_finite_flag(t)))
    nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    raise CheckpointError(
        f"{source}: tensor {name!r} holds NaN/inf values ({nan} NaN, {inf} inf of {t.numel()}; the training "
        "run diverged?); use an earlier checkpoint"
    )


def _finite_flag(t: torch.Tensor) -> torch.Tensor:
    """Whether the non-empty `t` is all finite, as a 0-dim bool tensor on its device (no host sync)."""
    if t.is_floating_point():
        try:
            low, high = torch.aminmax(t)
        except (RuntimeError, NotImplementedError):  # a dtype without aminmax here (float8...)
            pass
        else:
            return torch.isfinite(low) & torch.isfinite(high)
    return torch.isfinite(t).all()


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """`torch.save(obj, path)` through `atomic_write`: a kill never leaves a truncated file under `path`."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_config(config: Config, checkpoint_dir: PathLike) -> None:
    """Write `checkpoint_dir/model_config.yaml` atomically."""
    atomic_write(Path(checkpoint_dir) / "model_config.yaml", config.save)


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model state dict from a loaded `lit_model.pth`: plain, or wrapped as {"model": ...}."""
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{source} does not hold a model state dict (expected tensors, or {{'model': state_dict}})"
        )
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


def missing_weights_message(checkpoint_dir: PathLike) -> str:
    """Why a directory without lit_model.pth cannot be loaded, and the fix: `litgpt merge_lora` for a LoRA fine-tune's
    checkpoint (lit_model.pth.lora alone), else a conversion or a `litgpt pretrain` output."""
    checkpoint_dir = Path(checkpoint_dir)
    if (checkpoint_dir / "lit_model.pth.lora").is_file():
        return (
            f"{str(checkpoint_dir)!r} holds LoRA weights (lit_model.pth.lora) but no merged lit_model.pth; run "
            f"`litgpt merge_lora {checkpoint_dir}` to write it, then load the directory again"
        )
    return (
        f"{str(checkpoint_dir)!r} has no lit_model.pth; convert a Hugging Face checkpoint with "
        "`python -m litgpt.scripts.convert_hf_checkpoint` or point at a `litgpt pretrain` output"
    )


def load_checkpoint(
    checkpoint_dir: PathLike,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[torch.dtype] = None,
) -> GPT:
    """Build the model described by `model_config.yaml` and load `lit_model.pth` into it (strictly), with its
    weights on `device` in `dtype` (None: the CPU / the checkpoint's dtype; `dtype` applies to floating tensors).

    The model is built on the meta device and the weights are memory-mapped; after the file checks each tensor is
    moved and cast in one `Tensor.to` straight from the mapped file and assigned as the parameter, so no copy
    of all weights in the checkpoint's dtype is made on the way (on the CPU in the checkpoint's dtype the
    parameters stay mapped: nothing is copied). The rope cache is rebuilt on `device` and cast to `dtype`, as
    `model.to(device, dtype)` would leave it.

    A missing directory raises FileNotFoundError; every problem with the files in it (missing, unreadable,
    a mangled model_config.yaml, weights whose keys or shapes do not match it, NaN/inf weights, also values that
    overflow `dtype`) raises `CheckpointError` (a ValueError; `CheckpointNotFoundError` for a missing file) with a
    one-line message. The NaN/inf check runs on the converted weights on `device`; every other check runs before
    anything is put there.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(checkpoint_dir)!r} does not exist")
    weights = checkpoint_dir / "lit_model.pth"
    if not weights.is_file():
        raise CheckpointNotFoundError(missing_weights_message(checkpoint_dir))
    config = _read_config(checkpoint_dir)
    with torch.device("meta"), SkipInit():
        model = GPT(config)
    state_dict = extract_state_dict(read_checkpoint_file(weights), source=str(weights))
    missing, unexpected = _key_mismatch(model, state_dict)
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not match model_config.yaml: missing keys {missing[:5]}, unexpected keys "
            f"{unexpected[:5]}{' ...' if len(missing) > 5 or len(unexpected) > 5 else ''}"
        )
    _check_shapes(model, state_dict, weights)
    converted = convert_state_dict(state_dict, device, dtype)
    # on the target device and dtype: one sync on a GPU instead of a pass over the mapped file on the CPU (0.6 s of
    # a 160M-parameter `litgpt generate` load on the H200 host); a failure drops the copies with the model
    check_finite(converted, str(weights) if dtype is None else f"{weights} (loaded as {dtype})")
    model.load_state_dict(converted, strict=True, assign=True)
    model.reset_rope_cache()  # built on the device of the weights, now `device` (the model was built on meta)
    # the parameters are already in place (a no-op for them); this casts the rope buffers as before
    return model.to(device=device, dtype=dtype)


class SkipInit(torch.overrides.TorchFunctionMode):
    """Inside it, `torch.nn.init` functions return their tensor untouched: for building a model whose weights are
    loaded next. On the meta device the init functions would run torch's reference decompositions, which import
    torch._dynamo (about a second of every `litgpt generate` start-up) to fill tensors that hold no data."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


def convert_state_dict(
    state_dict: dict[str, torch.Tensor],
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[torch.dtype] = None,
) -> dict[str, torch.Tensor]:
    """The tensors of `state_dict` on `device`, floating ones cast to `dtype`: one `Tensor.to` per tensor.

    The entries are taken out of `state_dict` one by one as they are converted, so a state dict read without
    mmap is freed tensor by tensor instead of being held whole beside its converted copy. A tensor already on
    `device` in `dtype` is kept as it is (no copy).
    """
    converted = {}
    for name in list(state_dict):
        t = state_dict.pop(name)
        converted[name] = t.to(device=device, dtype=dtype if t.is_floating_point() else None)
        del t
    return converted


def _read_config(checkpoint_dir: Path) -> Config:
    """`Config.from_checkpoint`, with invalid yaml and bad values reported in one line naming the file."""
    path = checkpoint_dir / "model_config.yaml"
    try:
        return Config.from_checkpoint(checkpoint_dir)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = _first_sentence(getattr(e, "problem", None) or str(e))
        raise CheckpointError(
            f"{path} is not valid YAML ({problem}{where}); fix it, or rewrite it with litgpt.Config.save"
        ) from e
    except (ValueError, TypeError) as e:
        message = " ".join(str(e).split())
        if str(path) in message:
            raise
        raise CheckpointError(f"{path}: {message}") from e


def _check_shapes(model: GPT, state_dict: dict[str, torch.Tensor], weights: Path) -> None:
    expected = model.state_dict()
    bad = [k for k, v in state_dict.items() if v.shape != expected[k].shape]
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"{weights}: model_config.yaml does not match lit_model.pth: tensor {k!r} is "
            f"{tuple(state_dict[k].shape)} in lit_model.pth but {tuple(expected[k].shape)} for model_config.yaml"
            f"{f' ({len(bad)} tensors differ)' if len(bad) > 1 else ''}; fix model_config.yaml or point at the "
            "checkpoint it belongs to"
        )


def _key_mismatch(model: GPT, state_dict: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    expected = set(model.state_dict())
    return sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
