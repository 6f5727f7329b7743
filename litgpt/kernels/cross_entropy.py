"""Cross-entropy over (tokens, vocab) logits held in the compute dtype, for `litgpt.loss`: each row's log-sum-exp
and loss, then the gradient factor * (softmax - onehot) written over the logits in place. The Triton kernels of
`litgpt.kernels.triton_cross_entropy` on CUDA; elsewhere the torch reference, which walks the rows in chunks so that
its fp32 copies stay small. A row whose target is `ignore_index` has loss 0 and gradient 0."""

from __future__ import annotations

import torch

from litgpt.kernels._triton import TRITON_AVAILABLE

CHUNK_BYTES = 256 * 2**20  # bytes of one chunk's fp32 (or wider) copy in the torch reference


def _kernel_applies(logits: torch.Tensor) -> bool:
    return (
        TRITON_AVAILABLE
        and logits.is_cuda
        and logits.dtype in (torch.bfloat16, torch.float16, torch.float32)
        and logits.stride(-1) == 1
    )


def row_chunks(n_rows: int, vocab: int, acc: torch.dtype) -> list[slice]:
    """Row ranges whose (rows, vocab) logits take at most CHUNK_BYTES in the dtype `acc` (at least one row each)."""
    step = max(1, CHUNK_BYTES // (vocab * (torch.finfo(acc).bits // 8)))
    return [slice(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


def row_losses(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-sum-exp, cross-entropy) of each row of logits (N, V) against targets (N,): two (N,) tensors in fp32
    (float64 for float64 logits); the loss is 0 where the target is ignore_index."""
    if _kernel_applies(logits):
        from litgpt.kernels.triton_cross_entropy import row_losses as kernel

        return kernel(logits, targets.contiguous(), ignore_index)
    acc = torch.promote_types(logits.dtype, torch.float32)
    lse = torch.empty(logits.size(0), dtype=acc, device=logits.device)
    loss = torch.empty_like(lse)
    for rows in row_chunks(*logits.shape, acc):
        x = logits[rows].to(acc)  # (n, V)
        valid = targets[rows] != ignore_index  # (n,)
        safe = torch.where(valid, targets[rows], 0)  # an ignored target reads column 0, then counts for nothing
        lse[rows] = torch.logsumexp(x, dim=-1)
        loss[rows] = torch.where(valid, lse[rows] - x.gather(1, safe.unsqueeze(1)).squeeze(1), 0.0)
    return lse, loss


def softmax_grad_(
    logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, factor: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """Overwrite logits (N, V) with factor * (softmax - onehot(targets)), the gradient of factor * (sum of the row
    losses), and with 0 in rows whose target is ignore_index; lse (N,) comes from `row_losses`, factor is a
    one-element tensor (read on the device, no host sync). Returns logits."""
    if _kernel_applies(logits):
        from litgpt.kernels.triton_cross_entropy import softmax_grad_ as kernel

        kernel(logits, targets.contiguous(), lse, factor, ignore_index)
        return logits
    for rows in row_chunks(*logits.shape, lse.dtype):
        grad = torch.exp(logits[rows].to(lse.dtype) - lse[rows].unsqueeze(1))  # (n, V): softmax
        valid = targets[rows] != ignore_index  # (n,)
        grad[torch.arange(grad.size(0), device=grad.device), torch.where(valid, targets[rows], 0)] -= 1.0
        row_factor = torch.where(valid, factor, 0.0).to(lse.dtype)  # (n,): ignored rows get no gradient
        logits[rows] = (grad * row_factor.unsqueeze(1)).to(logits.dtype)
    return logits
