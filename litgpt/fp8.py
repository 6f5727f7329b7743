"""FP8 block-quantized checkpoints (DeepSeek-V3/R1, Moonlight): each quantized linear weight is stored as float8
e4m3 beside `<name>_scale_inv`, one float32 scale per block of 128x128 weights (`quantization_config.
weight_block_size` in config.json); the weight is `weight.float() * scale_inv` with each scale spread over its block,
the blocks of the last rows and columns cut where the matrix ends. Conversion dequantizes tensor by tensor, as the
shards are read (`litgpt.scripts.convert_hf_checkpoint.HFWeights`), to bfloat16 (or the dtype asked for).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Optional

import torch

SCALE_SUFFIX = "_scale_inv"
DEFAULT_BLOCK = (128, 128)
DEQUANTIZED_DTYPE = torch.bfloat16  # what the FP8 checkpoints compute in
FLOAT8_DTYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                                                        "float8_e5m2fnuz") if hasattr(torch, name))


def dequantize_fp8_blocks(
    weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] = DEFAULT_BLOCK
) -> torch.Tensor:
    """`weight.float() * scale_inv` with scale_inv[i, j] applied to the block weight[i*b0:(i+1)*b0, j*b1:(j+1)*b1]
    (the last blocks of a matrix not a multiple of the block are partial); float32. scale_inv must have
    ceil(rows/b0) x ceil(cols/b1) entries."""
    if weight.ndim != 2:
        raise ValueError(f"a block-quantized weight is a matrix, got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    b0, b1 = block
    expected = (math.ceil(rows / b0), math.ceil(cols / b1))
    if tuple(scale_inv.shape) != expected:
        raise ValueError(
            f"scale_inv of shape {tuple(scale_inv.shape)} does not fit a {rows}x{cols} weight in {b0}x{b1} blocks "
            f"(expected {expected[0]}x{expected[1]}); check quantization_config.weight_block_size in config.json"
        )
    scale = scale_inv.float().repeat_interleave(b0, dim=0)[:rows].repeat_interleave(b1, dim=1)[:, :cols]
    return weight.float() * scale


def block_size(checkpoint_dir: Path) -> tuple[int, int]:
    """The quantization block of a checkpoint: config.json's quantization_config.weight_block_size, else 128x128."""
    try:
        config = json.loads((Path(checkpoint_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return DEFAULT_BLOCK
    quantization = config.get("quantization_config") if isinstance(config, dict) else None
    block = quantization.get("weight_block_size") if isinstance(quantization, dict) else None
    if isinstance(block, (list, tuple)) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block):
        return int(block[0]), int(block[1])
    return DEFAULT_BLOCK


def scale_names(names: Iterable[str]) -> set[str]:
    """The `<name>_scale_inv` entries among `names` that scale another entry (they are not weights of their own)."""
    names = set(names)
    return {n for n in names if n.endswith(SCALE_SUFFIX) and n[: -len(SCALE_SUFFIX)] in names}


def dequantize(name: str, weight: torch.Tensor, scale_inv: Optional[torch.Tensor], block: tuple[int, int],
               dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The tensor `name` as the model uses it: dequantized (to `dtype`, default bfloat16) when it has a scale_inv;
    a float8 tensor without one is a one-line ValueError; any other tensor is returned as it is."""
    if scale_inv is None:
        if weight.dtype in FLOAT8_DTYPES:
            raise ValueError(f"{name!r} is stored as {weight.dtype} but the checkpoint has no {name}{SCALE_SUFFIX} to "
                             "dequantize it with; re-download the model's weight files")
        return weight
    try:
        return dequantize_fp8_blocks(weight, scale_inv, block).to(dtype or DEQUANTIZED_DTYPE)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
