"""Linear maps of folded decode steps: the Triton GEMV of `litgpt.kernels.triton_linear` where it was measured to
win (CUDA, bf16/fp16, one row, no autograd), `F.linear` elsewhere."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from litgpt.kernels.decode_attention import triton_can_run


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
    use_kernel: bool = True,
) -> torch.Tensor:
    """x (..., K) @ weight (N, K).T + bias (N,) + residual (..., N): one GEMV launch on CUDA for one row."""
    rows = x.numel() // x.size(-1)
    if use_kernel and rows == 1 and triton_can_run(tuple(t for t in (x, weight, bias, residual) if t is not None)):
        flat_residual = None if residual is None else residual.reshape(rows, -1).contiguous()
        y = _gemv_op(x.reshape(rows, -1).contiguous(), weight.contiguous(), bias, flat_residual)  # (rows, N)
        return y.view(*x.shape[:-1], weight.size(0))
    y = F.linear(x, weight, bias)
    return y if residual is None else y + residual


@torch.library.custom_op("litgpt::gemv", mutates_args=())
def _gemv_op(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], residual: Optional[torch.Tensor]
) -> torch.Tensor:
    """The Triton launch as one opaque operator for torch.compile and CUDA graphs."""
    from litgpt.kernels.triton_linear import gemv

    return gemv(x, weight, bias, residual)


@_gemv_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], residual: Optional[torch.Tensor]) -> torch.Tensor:
    return x.new_empty(x.size(0), weight.size(0))  # (rows, N)
