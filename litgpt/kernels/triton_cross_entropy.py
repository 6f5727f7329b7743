"""Triton cross-entropy over logits in the compute dtype, one program per row (needs `triton`).

Forward (`_row_loss_kernel`): one online pass over a row of logits gives its log-sum-exp and its loss (lse minus
the target's logit), both in fp32: a block maximum and one exp2 per element, the running sum rescaled per block.
Backward (`_grad_kernel`): one more pass overwrites the row, in place, with factor * (softmax - onehot), where
factor = upstream gradient / counted tokens is read from device memory (no host sync). The row is read twice and
written once in all, against the floor of 2 x (tokens x vocab x 2 bytes) for bf16 at 3.0 TB/s. A row whose target is
IGNORE gets loss 0 and gradient 0 (one scalar comparison per row: no cost when no target is ignored).
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl

from litgpt.kernels._triton import on_device

_LOG2E = tl.constexpr(1.4426950408889634)
_LN2 = tl.constexpr(0.6931471805599453)
BLOCK_V = 4096  # logits per iteration
NUM_WARPS = 8


@triton.jit
def _row_loss_kernel(LOGITS, TARGETS, LSE, LOSS, stride_row, V, IGNORE, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride_row
    offs = tl.arange(0, BLOCK)
    m = float("-inf")  # running maximum, in log2 units
    s = 0.0  # running sum of exp2(x - m)
    for v0 in range(0, V, BLOCK):
        x = tl.load(base + v0 + offs, mask=v0 + offs < V, other=float("-inf")).to(tl.float32) * _LOG2E  # (BLOCK,)
        m_new = tl.maximum(m, tl.max(x, axis=0))  # finite from the first block on: it holds a real logit
        s = s * tl.exp2(m - m_new) + tl.sum(tl.exp2(x - m_new), axis=0)
        m = m_new
    lse = (m + tl.log2(s)) * _LN2
    target = tl.load(TARGETS + row)
    valid = target != IGNORE
    target_logit = tl.load(base + tl.where(valid, target, 0)).to(tl.float32)  # an ignored row reads column 0
    tl.store(LSE + row, lse)
    tl.store(LOSS + row, tl.where(valid, lse - target_logit, 0.0))


@triton.jit
def _grad_kernel(LOGITS, TARGETS, LSE, FACTOR, stride_row, V, IGNORE, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride_row
    offs = tl.arange(0, BLOCK)
    lse2 = tl.load(LSE + row) * _LOG2E
    target = tl.load(TARGETS + row)
    factor = tl.where(target != IGNORE, tl.load(FACTOR).to(tl.float32), 0.0)  # an ignored row: all zeros
    for v0 in range(0, V, BLOCK):
        cols = v0 + offs
        ok = cols < V
        x = tl.load(base + cols, mask=ok, other=0.0).to(tl.float32)
        grad = tl.exp2(x * _LOG2E - lse2)  # softmax
        grad = tl.where(cols == target, grad - 1.0, grad) * factor
        tl.store(base + cols, grad.to(LOGITS.dtype.element_ty), mask=ok)


def row_losses(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lse, loss) per row, fp32, of logits (N, V) with unit last stride against targets (N,); loss 0 where the
    target is ignore_index."""
    N, V = logits.shape
    lse = torch.empty(N, device=logits.device, dtype=torch.float32)
    loss = torch.empty_like(lse)
    with on_device(logits):
        _row_loss_kernel[(N,)](logits, targets, lse, loss, logits.stride(0), V, ignore_index, BLOCK=BLOCK_V,
                               num_warps=NUM_WARPS)
    return lse, loss


def softmax_grad_(
    logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, factor: torch.Tensor, ignore_index: int
) -> None:
    """Overwrite logits (N, V) with factor * (softmax - onehot(targets)), 0 in rows whose target is ignore_index;
    factor is a one-element tensor."""
    N, V = logits.shape
    with on_device(logits):
        _grad_kernel[(N,)](logits, targets, lse, factor, logits.stride(0), V, ignore_index, BLOCK=BLOCK_V,
                           num_warps=NUM_WARPS)
