"""Merge a LoRA fine-tune into its base model: `litgpt merge_lora out/finetune/lora/final`.

Reads `lit_model.pth.lora` (the LoRA weights alone) and `hyperparameters.yaml` (the run's `lora_*` settings and its
base `checkpoint_dir`) from the fine-tune's directory, loads the base `lit_model.pth`, adds each update into its
base weight and writes `lit_model.pth` beside the `.lora` file, atomically, with exactly the plain model's keys: the
directory then loads like any checkpoint (`litgpt generate`, `litgpt chat`, `LLM.load`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import torch
import yaml

from litgpt.checkpoint import (
    atomic_torch_save,
    check_finite,
    extract_state_dict,
    load_checkpoint,
    read_checkpoint_file,
    save_config,
)
from litgpt.config import Config
from litgpt.lora import LoRASpec, apply_lora, load_lora_state_dict
from litgpt.lora import merge_lora as merge_lora_weights

LORA_FILE = "lit_model.pth.lora"
MERGED_FILE = "lit_model.pth"
HPARAMS_FILE = "hyperparameters.yaml"
# the dtype of the merged weights for a run's precision (mixed precisions train float32 weights)
WEIGHT_DTYPES = {
    "64-true": torch.float64,
    "32-true": torch.float32,
    "bf16-true": torch.bfloat16,
    "16-true": torch.float16,
    "bf16-mixed": torch.float32,
    "16-mixed": torch.float32,
}


def merge_lora(
    checkpoint_dir: Path, pretrained_checkpoint_dir: Optional[Path] = None, precision: Optional[str] = None
) -> None:
    """Merge the LoRA weights of a fine-tune into its base model's and save them as `checkpoint_dir/lit_model.pth`.

    Args:
        checkpoint_dir: the fine-tune's output directory, holding lit_model.pth.lora and hyperparameters.yaml.
        pretrained_checkpoint_dir: the base model's checkpoint directory (default: hyperparameters.yaml's
            checkpoint_dir, the one the run started from).
        precision: the merged weights' dtype as a precision (32-true, bf16-true, 16-true, 64-true; a mixed one gives
            float32); default: the run's precision from hyperparameters.yaml, else the base checkpoint's dtype.
    """
    checkpoint_dir = Path(checkpoint_dir)
    lora_path, merged_path = checkpoint_dir / LORA_FILE, checkpoint_dir / MERGED_FILE
    if not checkpoint_dir.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(checkpoint_dir)!r} does not exist; point at a "
                                "`litgpt finetune_lora` output directory")
    if not lora_path.is_file():
        raise FileNotFoundError(f"{lora_path} does not exist; point at a `litgpt finetune_lora` output directory "
                                f"(the one holding {LORA_FILE})")
    hparams = _read_hparams(checkpoint_dir / HPARAMS_FILE)
    if pretrained_checkpoint_dir is None:
        if not hparams.get("checkpoint_dir"):
            raise ValueError(f"{checkpoint_dir / HPARAMS_FILE} names no base checkpoint_dir; pass "
                             "--pretrained_checkpoint_dir")
        pretrained_checkpoint_dir = Path(hparams["checkpoint_dir"])
    pretrained_checkpoint_dir = Path(pretrained_checkpoint_dir)
    if pretrained_checkpoint_dir.resolve() == checkpoint_dir.resolve():
        raise ValueError(
            f"the base checkpoint {str(pretrained_checkpoint_dir)!r} is the fine-tune's directory itself: the merged "
            f"{MERGED_FILE} would be written over the base weights it is made from; pass --pretrained_checkpoint_dir "
            "with the checkpoint the LoRA run started from"
        )
    if merged_path.exists():
        raise ValueError(f"{merged_path} exists already (merged before?); use it as it is, or delete it to "
                              "merge again")
    spec = LoRASpec.from_hyperparameters(hparams)
    if not (pretrained_checkpoint_dir / MERGED_FILE).is_file():
        raise FileNotFoundError(
            f"base checkpoint {str(pretrained_checkpoint_dir / MERGED_FILE)!r} does not exist; pass "
            "--pretrained_checkpoint_dir with the checkpoint the LoRA run started from"
        )
    precision = precision if precision is not None else hparams.get("precision")
    if precision is not None and precision not in WEIGHT_DTYPES:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(WEIGHT_DTYPES)}")

    model = load_checkpoint(pretrained_checkpoint_dir)
    base_dtype = model.lm_head.weight.dtype
    model = model.to(torch.promote_types(base_dtype, torch.float32))  # LoRA weights and the sums in fp32 or wider
    _check_same_config(checkpoint_dir, model.config, pretrained_checkpoint_dir)
    lora = extract_state_dict(read_checkpoint_file(lora_path), source=str(lora_path))
    check_finite(lora, str(lora_path))
    apply_lora(model, spec)
    try:
        load_lora_state_dict(model, lora)
    except ValueError as e:
        raise ValueError(f"{lora_path}: {e}") from None
    merge_lora_weights(model)
    dtype = base_dtype if precision is None else WEIGHT_DTYPES[precision]
    state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    atomic_torch_save(state_dict, merged_path)
    if not (checkpoint_dir / "model_config.yaml").is_file():
        save_config(model.config, checkpoint_dir)


def _read_hparams(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; merge_lora reads the run's lora_* settings from it (a "
                                "`litgpt finetune_lora` output directory has one)")
    try:
        hparams = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML ({' '.join(str(e).split())}); fix it or re-run the fine-tune"
                         ) from None
    if not isinstance(hparams, dict):
        raise ValueError(f"{path} does not hold a mapping of hyperparameters")
    return hparams


def _check_same_config(checkpoint_dir: Path, config: Config, pretrained_checkpoint_dir: Path) -> None:
    """The fine-tune's model_config.yaml, where it has one, must describe the base model."""
    if not (checkpoint_dir / "model_config.yaml").is_file():
        return
    tuned = dataclasses.asdict(Config.from_checkpoint(checkpoint_dir))
    base = dataclasses.asdict(config)
    diff = sorted(k for k in base if k != "name" and base[k] != tuned.get(k))
    if diff:
        raise ValueError(
            f"{checkpoint_dir}/model_config.yaml differs from the base checkpoint {str(pretrained_checkpoint_dir)!r} "
            f"in {', '.join(diff[:5])}; pass --pretrained_checkpoint_dir with the checkpoint the LoRA run started from"
        )


if __name__ == "__main__":
    from litgpt.__main__ import run_command

    run_command("merge_lora")
