"""Linear maps as data: (weight, bias) pairs, and the algebra that folds and stacks them.

Attention modules describe their decode-time maps with these (`decode_projections`), and `litgpt.fold` builds a
block's folded one-token step from them.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

Projection = tuple[torch.Tensor, Optional[torch.Tensor]]  # a linear map: weight (out, in) and bias (out,) or None


def dense_weight(weight: torch.Tensor) -> torch.Tensor:
    """A linear's weight (out, in) as a dense floating tensor: a bitsandbytes 4-bit weight (packed uint8 with a
    quant_state) dequantized, any other returned as it is."""
    if weight.is_floating_point():
        return weight
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is None:
        raise TypeError(f"a linear weight of dtype {weight.dtype} without a bitsandbytes quant_state cannot be read")
    import bitsandbytes.functional as bnb_functional

    return bnb_functional.dequantize_4bit(weight.data, quant_state)


def linear_map(module: nn.Module) -> Projection:
    """The (weight, bias) a linear module applies to its input: an nn.Linear's own (dequantized for a bitsandbytes
    layer), or for a module with a `projection()` method (a LoRA linear, `litgpt.lora.LoRALinear`) what that
    returns: the base weight plus any unmerged low-rank update. Read weights for computation through this, never
    `.weight` directly."""
    if type(module) is nn.Linear:
        return module.weight, module.bias
    projection = getattr(module, "projection", None)
    return projection() if callable(projection) else (dense_weight(module.weight), module.bias)


def linear_inputs(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(input, weight, bias) with `F.linear(input, weight, bias) == module(x)`, for code that fuses the map into
    something else (the LM head into `litgpt.loss.linear_cross_entropy`): (x, weight, bias) for an nn.Linear
    (dequantized for a bitsandbytes layer), or what a module's `linear_inputs(x)` method returns (a LoRA linear
    appends its low-rank branch to both)."""
    if type(module) is nn.Linear:
        return x, module.weight, module.bias
    fused = getattr(module, "linear_inputs", None)
    return fused(x) if callable(fused) else (x, dense_weight(module.weight), module.bias)


def as_dtype(linear: Projection, dtype: torch.dtype) -> Projection:
    weight, bias = linear
    return weight.to(dtype), None if bias is None else bias.to(dtype)


def stack_outputs(*maps: Projection) -> Projection:
    """One map computing several maps of the same input side by side: outputs concatenated (missing biases: 0)."""
    dtype = maps[0][0].dtype
    maps = tuple(as_dtype(m, dtype) for m in maps)
    weight = torch.cat([w for w, _ in maps], dim=0)  # (sum of outs, in)
    if all(b is None for _, b in maps):
        return weight, None
    return weight, torch.cat([w.new_zeros(w.size(0)) if b is None else b for w, b in maps])


def stack_inputs(*maps: Projection) -> Projection:
    """One map of the concatenated inputs of several maps that returns the sum of their outputs."""
    dtype = maps[0][0].dtype
    maps = tuple(as_dtype(m, dtype) for m in maps)
    weight = torch.cat([w for w, _ in maps], dim=1)  # (out, sum of ins)
    biases = [b for _, b in maps if b is not None]
    return weight, (torch.stack(biases).sum(0) if biases else None)


def fold_norm(norm: nn.Module, linear: Projection) -> Projection:
    """`linear(norm(x))` as a map of the unit-gain normalised x: weight * gain, bias + weight @ shift."""
    weight, bias = linear
    folded = weight * norm.weight.to(weight.dtype)  # (out, in) * (in,)
    shift = getattr(norm, "bias", None)
    if shift is not None:
        shifted = weight @ shift.to(weight.dtype)  # (out,)
        bias = shifted if bias is None else bias + shifted
    return folded, bias
