"""Decode attention over static KV caches: the Triton kernel where it applies, a pure-torch reference everywhere.

`mla_decode_attention` attends the absorbed MLA query over `KVCacheCompressed.kv`; `gqa_decode_attention` attends
an MHA/GQA/MQA query over `KVCache.k`/`.v`. Both take `input_pos`, the positions of the T new tokens ((T,) shared
by the batch or (B, T) per row): the query at position p attends cached tokens 0..p, which gives per-row valid
lengths and causality among the new tokens at once. On CUDA, for bf16/fp16 inputs whose head widths are multiples
of 16 and that need no gradient, they launch the split-KV kernel of `litgpt.kernels.triton_decode`; otherwise they
run the reference, which is also what the tests check the kernel against.
"""

from __future__ import annotations

import importlib.util
from typing import Optional

import torch

TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None
KERNEL_DTYPES = (torch.bfloat16, torch.float16)


def key_mask(input_pos: torch.Tensor, S: int) -> torch.Tensor:
    """(T, S) or (B, 1, T, S) boolean mask, True where the query at input_pos may attend key position s (s <= pos)."""
    mask = torch.arange(S, device=input_pos.device) <= input_pos.unsqueeze(-1)  # (T, S) or (B, T, S)
    return mask.unsqueeze(1) if mask.dim() == 3 else mask


def mla_decode_attention_reference(
    q: torch.Tensor, kv: torch.Tensor, input_pos: torch.Tensor, kv_lora_rank: int, scale: float
) -> torch.Tensor:
    """Absorbed MLA attention in pure torch (softmax in fp32 or wider); the torch decode path and the test reference.

    q: (B, h, T, d_c + d_R) = [q_nope absorbed into latent space | roped q_rope]; kv: (B, S, d_c + d_R) = [c | k_rope].
    scores = q . kv * scale over keys 0..input_pos; output = softmax(scores) @ c: (B, h, T, d_c) in q.dtype.
    """
    B, h, T, D = q.shape
    S = kv.size(1)
    compute = torch.promote_types(q.dtype, torch.float32)
    scores = torch.matmul(q.reshape(B, h * T, D), kv.transpose(1, 2))  # (B, h*T, S): one bmm, no K copy per head
    scores = scores.view(B, h, T, S).to(compute) * scale  # (B, h, T, S)
    scores = scores.masked_fill(~key_mask(input_pos, S), float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(kv.dtype)  # (B, h, T, S)
    out = torch.matmul(probs.view(B, h * T, S), kv[..., :kv_lora_rank])  # (B, h*T, d_c)
    return out.view(B, h, T, kv_lora_rank).to(q.dtype)


def gqa_decode_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, input_pos: torch.Tensor, scale: float
) -> torch.Tensor:
    """Grouped-query attention over a KV cache in pure torch (softmax in fp32 or wider).

    q: (B, H, T, d); k: (B, G, S, d); v: (B, G, S, d_v) with H a multiple of G. Returns (B, H, T, d_v) in q.dtype.
    """
    B, H, T, d = q.shape
    G, S = k.size(1), k.size(2)
    compute = torch.promote_types(q.dtype, torch.float32)
    q_grouped = q.reshape(B, G, (H // G) * T, d)  # heads of a group are consecutive: (B, G, H/G*T, d)
    scores = torch.matmul(q_grouped, k.transpose(2, 3)).view(B, H, T, S).to(compute) * scale  # (B, H, T, S)
    scores = scores.masked_fill(~key_mask(input_pos, S), float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype).view(B, G, (H // G) * T, S)
    return torch.matmul(probs, v).view(B, H, T, v.size(-1)).to(q.dtype)


def _positions(input_pos: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """input_pos (T,) or (B, T) -> (B, T) view (batch stride 0 when shared); a clear error for any other shape."""
    if input_pos.dim() == 1 and input_pos.size(0) == T:
        return input_pos.unsqueeze(0).expand(B, T)
    if input_pos.dim() == 2 and tuple(input_pos.shape) == (B, T):
        return input_pos
    raise ValueError(f"input_pos must have shape ({T},) or ({B}, {T}) for {B} rows of {T} new tokens, "
                     f"got {tuple(input_pos.shape)}")


def triton_can_run(tensors: tuple[torch.Tensor, ...]) -> bool:
    """True where a Triton kernel of `litgpt.kernels` may take these inputs: Triton installed, all on one CUDA
    device, bf16/fp16 of one dtype, no autograd."""
    first = tensors[0]
    return (
        TRITON_AVAILABLE
        and first.is_cuda
        and first.dtype in KERNEL_DTYPES
        and all(t.dtype == first.dtype and t.device == first.device for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
    )


def _kernel_applies(tensors: tuple[torch.Tensor, ...], widths: tuple[int, ...]) -> bool:
    """True where the decode-attention kernel runs: `triton_can_run`, unit last strides, widths multiples of 16."""
    return (
        triton_can_run(tensors)
        and all(t.stride(-1) == 1 for t in tensors)
        and all(w % 16 == 0 and w > 0 for w in widths)
    )


def mla_decode_attention(
    q: torch.Tensor, kv: torch.Tensor, input_pos: torch.Tensor, kv_lora_rank: int, scale: float
) -> torch.Tensor:
    """Absorbed MLA attention over the latent cache: the Triton kernel where it applies, else the reference.

    Same arguments and result as `mla_decode_attention_reference`. kv may be the whole preallocated cache: only
    the first input_pos + 1 tokens of each row are read.
    """
    if q.dim() != 4 or kv.dim() != 3 or q.size(0) != kv.size(0) or q.size(-1) != kv.size(-1):
        raise ValueError(f"expected q (B, h, T, D) and kv (B, S, D) with the same B and D, "
                         f"got q {tuple(q.shape)} and kv {tuple(kv.shape)}")
    if not 0 < kv_lora_rank < kv.size(-1):
        raise ValueError(f"kv_lora_rank={kv_lora_rank} must lie strictly between 0 and the cache width {kv.size(-1)}")
    B, _, T, D = q.shape
    positions = _positions(input_pos, B, T)
    if not _kernel_applies((q, kv), (kv_lora_rank, D - kv_lora_rank)):
        return mla_decode_attention_reference(q, kv, input_pos, kv_lora_rank, scale)
    k = kv.unsqueeze(1)  # (B, 1, S, D): one latent group shared by all heads
    return _decode_attention_op(q, k, k, positions, kv_lora_rank, kv_lora_rank, scale, True)


def gqa_decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, input_pos: torch.Tensor, scale: float
) -> torch.Tensor:
    """MHA/GQA/MQA attention over `KVCache` buffers: the Triton kernel where it applies, else the reference.

    Same arguments and result as `gqa_decode_attention_reference`; only the first input_pos + 1 tokens are read.
    """
    if q.dim() != 4 or k.dim() != 4 or v.shape[:3] != k.shape[:3] or q.size(0) != k.size(0) or q.size(-1) != k.size(-1):
        raise ValueError(f"expected q (B, H, T, d), k (B, G, S, d), v (B, G, S, d_v), "
                         f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.size(1) % k.size(1) != 0:
        raise ValueError(f"the number of query heads ({q.size(1)}) must be a multiple of the KV groups ({k.size(1)})")
    B, _, T, d = q.shape
    positions = _positions(input_pos, B, T)
    if not _kernel_applies((q, k, v), (d, v.size(-1))):
        return gqa_decode_attention_reference(q, k, v, input_pos, scale)
    return _decode_attention_op(q, k, v, positions, d, v.size(-1), scale, False)


def mla_decode_step_applies(q: torch.Tensor, kv_a: torch.Tensor, cache: torch.Tensor, cos: torch.Tensor) -> bool:
    """True where `mla_decode_step` may run: one new token per row (q (B, 1, h, D), kv_a (B, 1, D)), the
    decode-attention kernel's conditions, and rope tables as wide as the rope part (rows of cos (.., 1, d_R))."""
    d_r = cos.size(-1)
    return (
        q.dim() == 4 and q.size(1) == 1 and kv_a.dim() == 3 and kv_a.size(1) == 1
        and q.size(-1) == kv_a.size(-1) == cache.size(-1) and cache.dim() == 3 and cos.numel() // d_r in (1, q.size(0))
        and 0 < d_r < q.size(-1)
        and _kernel_applies((q, kv_a, cache), (q.size(-1) - d_r, d_r))
    )


def mla_decode_step(
    q: torch.Tensor,
    kv_a: torch.Tensor,
    cache: torch.Tensor,
    input_pos: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    scale: float,
    interleave: bool,
) -> torch.Tensor:
    """A one-token absorbed MLA step in three launches (where `mla_decode_step_applies`): what
    `MultiheadLatentAttention` does on its torch path from the query and kv_a_proj's output on.

    q (B, 1, h, d_c + d_R): absorbed queries, rope part unrotated; kv_a (B, 1, d_c + d_R): the new token's raw latent
    and rope key; cache (B, S, d_c + d_R): `KVCacheCompressed.kv`, which receives [kv_a_norm(latent) | rope(key)] at
    input_pos ((1,) or (B, 1)); cos, sin: rope rows at input_pos ((1, d_R) or (B, 1, d_R)); norm_weight, eps:
    kv_a_norm's. Returns the latent attention output (B, h, 1, d_c).
    """
    B, _, h, D = q.shape
    positions = _positions(input_pos, B, 1)[:, 0]  # (B,)
    d_r = cos.size(-1)
    return _mla_decode_step_op(q.view(B, h, D), kv_a.view(B, D), cache, positions, cos.reshape(-1, d_r),
                               sin.reshape(-1, d_r), norm_weight, eps, scale, interleave)


@torch.library.custom_op("litgpt::mla_decode_step", mutates_args=("cache",))
def _mla_decode_step_op(
    q: torch.Tensor,
    kv_a: torch.Tensor,
    cache: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    scale: float,
    interleave: bool,
) -> torch.Tensor:
    """The launches as one opaque operator that writes the cache in place."""
    from litgpt.kernels.triton_decode import mla_decode_step as launch

    return launch(q, kv_a, cache, positions, cos, sin, norm_weight, eps, scale, interleave)


@_mla_decode_step_op.register_fake
def _(q: torch.Tensor, kv_a: torch.Tensor, cache: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
      sin: torch.Tensor, norm_weight: torch.Tensor, eps: float, scale: float, interleave: bool) -> torch.Tensor:
    B, h, _ = q.shape
    return q.new_empty(B, h, 1, norm_weight.size(0))  # (B, h, 1, d_c)


@torch.library.custom_op("litgpt::decode_attention", mutates_args=())
def _decode_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    d_main: int,
    d_v: int,
    scale: float,
    shared_v: bool,
) -> torch.Tensor:
    """The Triton launch as an opaque operator, so torch.compile (and its CUDA graphs) calls it as one node
    instead of tracing into the launcher."""
    from litgpt.kernels.triton_decode import decode_attention

    return decode_attention(q, k, v, positions, d_main, d_v, scale, shared_v=shared_v)


@_decode_attention_op.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, d_main: int, d_v: int,
      scale: float, shared_v: bool) -> torch.Tensor:
    B, H, T, _ = q.shape
    return q.new_empty(B, H, T, d_v)  # (B, H, T, d_v)


def set_kernels(model: torch.nn.Module, enabled: bool) -> int:
    """Turn the decode kernels on or off for every submodule with a `use_kernel` switch; returns how many."""
    switched = 0
    for module in model.modules():
        if hasattr(module, "use_kernel"):
            module.use_kernel = enabled
            switched += 1
    return switched

