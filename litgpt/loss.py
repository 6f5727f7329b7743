"""Fused LM-head + cross-entropy for training: the (tokens, vocab) logits are never held in fp32.

With a 50K vocabulary the logits dominate a small model's training step: at micro batch 16 x 1024 they are 1.6 GB
in bf16 and 3.3 GB in fp32, and the unfused loss makes several passes over them (cast, log-softmax, its backward,
cast back). `linear_cross_entropy` computes them once, in the compute dtype (bf16 under bf16-mixed), and keeps them
for the backward pass. Forward: one pass over them gives each token's log-sum-exp and loss (fp32 inside). Backward:
one more pass turns them, in place, into the gradient with respect to the logits, already scaled by the upstream
gradient / tokens, and the two remaining matmuls finish. On CUDA both passes are Triton kernels
(`litgpt.kernels.cross_entropy`): two reads and one write of the logits in all, no copies, no host sync.

Targets equal to `ignore_index` (-100, as in `F.cross_entropy`: the prompt and padding tokens of fine-tuning data)
carry no weight: the loss is the mean over the others, and 0 (with a zero gradient) when every target is ignored.
The count of the others stays on the device, so no target being ignored costs one (N,) comparison and sum beside
the (N, V) passes. Gradients are computed only for the inputs that need them (a frozen LM head gets none).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from litgpt.kernels.cross_entropy import row_chunks, row_losses, softmax_grad_

IGNORE_INDEX = -100  # a target that carries no weight (F.cross_entropy's default ignore_index)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        targets: torch.Tensor,
        compute_dtype: torch.dtype,
        ignore_index: int,
    ) -> torch.Tensor:
        h_all = hidden.to(compute_dtype)  # (N, d)
        w = weight.to(compute_dtype)  # (V, d)
        logits = h_all @ w.t() if bias is None else torch.addmm(bias.to(compute_dtype), h_all, w.t())  # (N, V)
        lse, losses = row_losses(logits, targets, ignore_index)  # (N,), (N,) in fp32 or wider; 0 where ignored
        count = _counted(targets, ignore_index, lse.dtype)  # () on the device
        ctx.save_for_backward(h_all, w, logits, targets, lse, count)
        ctx.has_bias, ctx.dtypes, ctx.used = bias is not None, (hidden.dtype, weight.dtype), False
        ctx.ignore_index = ignore_index
        return losses.sum() / count

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:  # type: ignore[override]
        if ctx.used:
            raise RuntimeError("linear_cross_entropy's backward ran twice: its saved logits became the gradient the "
                               "first time; compute the loss again instead of backward(retain_graph=True)")
        ctx.used = True
        h_all, w, logits, targets, lse, count = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        factor = (grad_loss / count).to(lse.dtype).reshape(1)  # d(loss)/d(each counted row's loss), on the device
        # (N, V), in place: the logits are not needed again; ignored rows become zero
        grad_logits = softmax_grad_(logits, targets, lse, factor, ctx.ignore_index)
        grad_hidden = (grad_logits @ w).to(hidden_dtype) if needs_hidden else None  # (N, d)
        grad_weight = (grad_logits.t() @ h_all).to(weight_dtype) if needs_weight else None  # (V, d)
        grad_bias = None
        if ctx.has_bias and needs_bias:
            grad_bias = grad_logits.sum(0, dtype=lse.dtype).to(weight_dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None


@torch._disable_dynamo  # torch.compiler.disable, applied at the first call: no torch._dynamo import at start-up
def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    targets: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T + bias` (N, V) against targets (N,), without fp32 logits.

    The mean is over the targets that are not `ignore_index` (0 when all are). The matmuls run in the autocast
    dtype when autocast is on (bf16-mixed), else in the hidden states' dtype; the softmax and the loss accumulate
    in fp32. Gradients flow to hidden, weight and bias as with `F.cross_entropy`.
    """
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = hidden.dtype
    with torch.autocast(device_type, enabled=False):
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            return _LinearCrossEntropy.apply(hidden, weight, bias, targets, compute_dtype, ignore_index)
        return _loss_only(hidden, weight, bias, targets, compute_dtype, ignore_index)


def _counted(targets: torch.Tensor, ignore_index: int, dtype: torch.dtype) -> torch.Tensor:
    """How many targets count, at least 1 (so all ignored gives 0 / 1), as a () tensor on the device."""
    return (targets != ignore_index).sum().clamp_(min=1).to(dtype)


def _loss_only(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    targets: torch.Tensor,
    dtype: torch.dtype,
    ignore_index: int,
) -> torch.Tensor:
    """The forward of `_LinearCrossEntropy` without gradients (validation): logits one chunk at a time."""
    w = weight.to(dtype)  # (V, d)
    b = None if bias is None else bias.to(dtype)
    acc = torch.promote_types(dtype, torch.float32)
    loss = torch.zeros((), dtype=acc, device=hidden.device)
    for rows in row_chunks(hidden.size(0), weight.size(0), acc):
        logits = F.linear(hidden[rows].to(dtype), w, b)  # (n, V) in the compute dtype
        loss += row_losses(logits, targets[rows], ignore_index)[1].sum()  # the training forward's per-row losses
    return loss / _counted(targets, ignore_index, acc)
