"""Fused LM-head + cross-entropy for training: the (tokens, vocab) logits are never held in fp32.

With a 50K vocabulary the logits dominate a small model's training step: at micro batch 16 x 1024 they are 1.6 GB
in bf16 and 3.3 GB in fp32, and the unfused loss makes several passes over them (cast, log-softmax, its backward,
cast back). `linear_cross_entropy` walks the tokens in chunks instead: per chunk it computes the logits, and from
them the loss and the gradient with respect to the logits in one fused pass (fp32 inside, compute dtype out). The
backward pass scales that gradient and runs the two remaining matmuls. Same three matmuls as the unfused loss, one
elementwise pass per chunk; what stays alive is one chunk of logits plus the (tokens, vocab) gradient in the compute
dtype (bf16 under bf16-mixed), never an fp32 copy.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

CHUNK_BYTES = 256 * 2**20  # bytes of one chunk's logits in the compute dtype


def _loss_and_grad(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of logits (n, V) against targets (n,) and d(sum)/d(logits) in the logits' dtype."""
    logits32 = logits.to(torch.promote_types(logits.dtype, torch.float32))  # (n, V)
    lse = torch.logsumexp(logits32, dim=-1)  # (n,)
    target_logit = logits32.gather(1, targets.unsqueeze(1)).squeeze(1)  # (n,)
    grad = torch.exp(logits32 - lse.unsqueeze(1))  # (n, V): softmax
    grad = grad - F.one_hot(targets, logits.size(-1)).to(grad.dtype)  # softmax - onehot
    return (lse - target_logit).sum(), grad.to(logits.dtype)


_loss_and_grad_compiled: Optional[Any] = None


def _chunk_fn(device: torch.device) -> Any:
    """On CUDA the elementwise part is compiled into one pass over the chunk's logits; elsewhere it runs eagerly."""
    global _loss_and_grad_compiled
    if device.type != "cuda":
        return _loss_and_grad
    if _loss_and_grad_compiled is None:
        _loss_and_grad_compiled = torch.compile(_loss_and_grad, dynamic=False)
    return _loss_and_grad_compiled


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        targets: torch.Tensor,
        compute_dtype: torch.dtype,
    ) -> torch.Tensor:
        n_tokens, vocab = hidden.size(0), weight.size(0)
        h_all = hidden.to(compute_dtype)  # (N, d)
        w = weight.to(compute_dtype)  # (V, d)
        b = None if bias is None else bias.to(compute_dtype)  # (V,)
        # d(loss sum)/d(logits), one chunk at a time into one buffer in the compute dtype: the weight gradient is
        # then a single matmul over all tokens (as autograd does for an unfused head), with no per-chunk adds.
        grad_logits = torch.empty(n_tokens, vocab, dtype=compute_dtype, device=hidden.device)  # (N, V)
        loss = torch.zeros((), dtype=torch.promote_types(compute_dtype, torch.float32), device=hidden.device)
        chunk = _chunk_size(n_tokens, vocab, compute_dtype)
        fn = _chunk_fn(hidden.device)
        for start in range(0, n_tokens, chunk):
            h = h_all[start : start + chunk]  # (n, d)
            logits = h @ w.t() if b is None else torch.addmm(b, h, w.t())  # (n, V)
            loss_sum, grad_logits[start : start + chunk] = fn(logits, targets[start : start + chunk])  # (), (n, V)
            loss += loss_sum
        ctx.save_for_backward(h_all, w, grad_logits)
        ctx.scale, ctx.has_bias = 1.0 / n_tokens, bias is not None
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return loss * ctx.scale

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:  # type: ignore[override]
        h_all, w, grad_logits = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        factor = (grad_loss * ctx.scale).to(grad_logits.dtype)  # ()
        grad_logits = grad_logits.mul_(factor)  # (N, V), in place: the buffer is not needed afterwards
        grad_hidden = (grad_logits @ w).to(hidden_dtype)  # (N, d)
        grad_weight = (grad_logits.t() @ h_all).to(weight_dtype)  # (V, d)
        grad_bias = None
        if ctx.has_bias:
            grad_bias = grad_logits.sum(0, dtype=torch.promote_types(grad_logits.dtype, torch.float32)).to(weight_dtype)
        return grad_hidden, grad_weight, grad_bias, None, None


@torch.compiler.disable
def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T + bias` (N, V) against targets (N,), logits computed chunk by chunk.

    The matmuls run in the autocast dtype when autocast is on (bf16-mixed), else in the hidden states' dtype; the
    softmax and the loss accumulate in fp32. Gradients flow to hidden, weight and bias as with `F.cross_entropy`.
    """
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = hidden.dtype
    with torch.autocast(device_type, enabled=False):
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            return _LinearCrossEntropy.apply(hidden, weight, bias, targets, compute_dtype)
        return _loss_only(hidden, weight, bias, targets, compute_dtype)


def _chunk_size(n_tokens: int, vocab: int, dtype: torch.dtype) -> int:
    return max(1, min(n_tokens, CHUNK_BYTES // (vocab * (torch.finfo(dtype).bits // 8))))


def _loss_only(
    hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """The forward of `_LinearCrossEntropy` without gradients (validation): logits one chunk at a time."""
    w = weight.to(dtype)  # (V, d)
    b = None if bias is None else bias.to(dtype)
    acc = torch.promote_types(dtype, torch.float32)
    loss = torch.zeros((), dtype=acc, device=hidden.device)
    chunk = _chunk_size(hidden.size(0), weight.size(0), dtype)
    for start in range(0, hidden.size(0), chunk):
        logits = F.linear(hidden[start : start + chunk].to(dtype), w, b).to(acc)  # (n, V)
        loss += F.cross_entropy(logits, targets[start : start + chunk], reduction="sum")
    return loss / hidden.size(0)
