"""Linear maps of folded decode steps: the Triton GEMV of `litgpt.kernels.triton_linear` where it was measured to
win (CUDA, bf16/fp16, one row, no autograd), torch elsewhere. Either way the map may normalise its input first or
activate part of it, so a folded block needs no separate norm or activation launch."""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F

from litgpt.activations import ACTIVATIONS
from litgpt.kernels._ops import define_op
from litgpt.kernels._triton import triton_can_run

NormKind = Literal["layer", "rms"]  # LayerNorm or RMSNorm, without their gain and shift


def normalize(x: torch.Tensor, kind: NormKind, eps: float) -> torch.Tensor:
    """x normalised over its last dim as LayerNorm ("layer") or RMSNorm ("rms", in fp32 or wider) would, without
    gain and shift, in x's dtype."""
    if kind == "layer":
        return F.layer_norm(x, x.shape[-1:], eps=eps)
    if kind == "rms":
        unit = x.to(torch.promote_types(x.dtype, torch.float32))
        return (unit * torch.rsqrt(unit.pow(2).mean(dim=-1, keepdim=True) + eps)).to(x.dtype)
    raise ValueError(f"norm must be 'layer' or 'rms', got {kind!r}")


def linear(
    x: Optional[torch.Tensor],
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
    *,
    norm: Optional[NormKind] = None,
    eps: float = 0.0,
    tail: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
    use_kernel: bool = True,
) -> torch.Tensor:
    """weight (N, K) applied to the input, + bias (N,) + residual (..., N): one GEMV launch on CUDA for one row.

    The input is x (..., K); with `norm` ("layer" or "rms", with `eps`), x normalised without gain and shift (fold
    those into weight and bias: `litgpt.projection.fold_norm`); with `activation` (a key of
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
        y = _gemv_op(x_rows, weight.contiguous(), bias, residual_rows, tail_rows, norm, float(eps), activation)
        return y.view(*source.shape[:-1], weight.size(0))  # (..., N)
    if tail is not None:
        activated = ACTIVATIONS[activation](tail)
        x = activated if x is None else torch.cat((x, activated), dim=-1)  # (..., K)
    if norm is not None:
        x = normalize(x, norm, eps)
    y = F.linear(x, weight, bias)
    return y if residual is None else y + residual


def _gemv(
    x: Optional[torch.Tensor],
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    residual: Optional[torch.Tensor],
    tail: Optional[torch.Tensor],
    norm: Optional[str],
    eps: float,
    activation: Optional[str],
) -> torch.Tensor:
    """The Triton launch (imported at the first one: Triton loads only when a kernel runs)."""
    from litgpt.kernels.triton_linear import gemv

    return gemv(x, weight, bias, residual, tail, norm, eps, activation)


def _gemv_fake(x: Optional[torch.Tensor], weight: torch.Tensor, bias: Optional[torch.Tensor],
               residual: Optional[torch.Tensor], tail: Optional[torch.Tensor], norm: Optional[str], eps: float,
               activation: Optional[str]) -> torch.Tensor:
    source = x if x is not None else tail
    return source.new_empty(source.size(0), weight.size(0))  # (rows, N)


# one opaque operator for torch.compile and CUDA graphs (`litgpt.kernels._ops`)
_gemv_op = define_op("gemv", (
    "(Tensor? x, Tensor weight, Tensor? bias, Tensor? residual, Tensor? tail, str? norm, float eps, str? activation)"
    " -> Tensor"), _gemv, _gemv_fake)
