"""Linear maps of folded decode steps: the Triton GEMV of `litgpt.kernels.triton_linear` where it was measured to
win (CUDA, bf16/fp16, one row, no autograd), torch elsewhere. Either way the map may normalise its input first or
activate part of it, so a folded block needs no separate norm or activation launch."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from litgpt.activations import ACTIVATIONS
from litgpt.kernels.decode_attention import triton_can_run
from litgpt.norm import RMSNorm


def norm_kind(norm: nn.Module) -> str:
    """"rms" for `RMSNorm`, "layer" for `nn.LayerNorm`: the normalisation `linear(norm=...)` applies."""
    if isinstance(norm, RMSNorm):
        return "rms"
    if isinstance(norm, nn.LayerNorm):
        return "layer"
    raise TypeError(f"cannot fuse a {type(norm).__name__} into a linear map: only LayerNorm and RMSNorm")


def normalize(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What `norm` computes before its gain and shift (LayerNorm or RMSNorm), in x's dtype."""
    if norm_kind(norm) == "rms":
        return norm.normalize(x)
    return F.layer_norm(x, norm.normalized_shape, eps=norm.eps)


def linear(
    x: Optional[torch.Tensor],
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
    *,
    norm: Optional[nn.Module] = None,
    tail: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
    use_kernel: bool = True,
) -> torch.Tensor:
    """weight (N, K) applied to the input, + bias (N,) + residual (..., N): one GEMV launch on CUDA for one row.

    The input is x (..., K); with `norm` (a LayerNorm or RMSNorm module), x normalised as it does but without its
    gain and shift (fold those into weight and bias: `litgpt.fold.fold_norm`); with `activation` (a key of
    `litgpt.activations.ACTIVATIONS`), [x | activation(tail)], or activation(tail) alone when x is None.
    """
    if (tail is None) != (activation is None):
        raise ValueError("linear needs a tail and an activation together, or neither")
    source = x if x is not None else tail
    rows = source.numel() // source.size(-1)
    inputs = tuple(t for t in (x, tail, weight, bias, residual) if t is not None)
    if use_kernel and rows == 1 and triton_can_run(inputs):
        x_rows, tail_rows, residual_rows = (None if t is None else t.reshape(rows, -1).contiguous()
                                            for t in (x, tail, residual))
        kind = None if norm is None else norm_kind(norm)
        eps = 0.0 if norm is None else float(norm.eps)
        y = _gemv_op(x_rows, weight.contiguous(), bias, residual_rows, tail_rows, kind, eps, activation)  # (rows, N)
        return y.view(*source.shape[:-1], weight.size(0))
    if tail is not None:
        activated = ACTIVATIONS[activation](tail)
        x = activated if x is None else torch.cat((x, activated), dim=-1)  # (..., K)
    if norm is not None:
        x = normalize(norm, x)
    y = F.linear(x, weight, bias)
    return y if residual is None else y + residual


@torch.library.custom_op("litgpt::gemv", mutates_args=())
def _gemv_op(
    x: Optional[torch.Tensor],
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    residual: Optional[torch.Tensor],
    tail: Optional[torch.Tensor],
    norm: Optional[str],
    eps: float,
    activation: Optional[str],
) -> torch.Tensor:
    """The Triton launch as one opaque operator for torch.compile and CUDA graphs."""
    from litgpt.kernels.triton_linear import gemv

    return gemv(x, weight, bias, residual, tail, norm, eps, activation)


@_gemv_op.register_fake
def _(x: Optional[torch.Tensor], weight: torch.Tensor, bias: Optional[torch.Tensor], residual: Optional[torch.Tensor],
      tail: Optional[torch.Tensor], norm: Optional[str], eps: float, activation: Optional[str]) -> torch.Tensor:
    source = x if x is not None else tail
    return source.new_empty(source.size(0), weight.size(0))  # (rows, N)
