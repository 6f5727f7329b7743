"""Decode attention over static KV caches: the Triton kernel where it applies, a pure-torch reference everywhere.

`mla_decode_attention` attends the absorbed MLA query over `KVCacheCompressed.kv`; `gqa_decode_attention` attends
an MHA/GQA/MQA query over `KVCache.k`/`.v`. Both take `input_pos`, the positions of the T new tokens ((T,) shared
by the batch or (B, T) per row): the query at position p attends cached tokens 0..p, which gives per-row valid
lengths and causality among the new tokens at once. On CUDA, for bf16/fp16 inputs whose head widths are multiples
of 16 and that need no gradient, they launch the split-KV kernel of `litgpt.kernels.triton_decode`; otherwise they
run the reference, which is also what the tests check the kernel against.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

import torch

from litgpt.kernels._ops import define_op
from litgpt.kernels._triton import kernel_applies
from litgpt.rope import apply_partial_rope, apply_rope, apply_rope_last

if TYPE_CHECKING:
    from litgpt.model import GPT


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
    if not kernel_applies((q, kv), (kv_lora_rank, D - kv_lora_rank)):
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
    if not kernel_applies((q, k, v), (d, v.size(-1))):
        return gqa_decode_attention_reference(q, k, v, input_pos, scale)
    return _decode_attention_op(q, k, v, positions, d, v.size(-1), scale, False)


def latent_entries(
    kv_a: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, norm_weight: torch.Tensor, eps: float, interleave: bool
) -> torch.Tensor:
    """What MLA caches for tokens whose kv_a_proj output is kv_a (B, T, d_c + d_R): [RMSNorm(latent) * gain | rope
    key] (B, T, d_c + d_R), the norm in fp32 or wider, the rope at the positions of cos, sin ((T, d_R) or (B, T, d_R))."""
    d_c = norm_weight.size(0)
    latent, k_rope = kv_a.split((d_c, kv_a.size(-1) - d_c), dim=-1)  # (B, T, d_c), (B, T, d_R)
    unit = latent.to(torch.promote_types(latent.dtype, torch.float32))
    unit = unit * torch.rsqrt(unit.pow(2).mean(dim=-1, keepdim=True) + eps)
    latent = (unit * norm_weight.to(unit.dtype)).to(kv_a.dtype)
    return torch.cat((latent, apply_rope(k_rope, cos, sin, interleave)), dim=-1)  # one rope key for all heads


def mla_cache_write(
    kv_a: torch.Tensor,
    cache: torch.Tensor,
    input_pos: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    interleave: bool,
    query: Optional[torch.Tensor] = None,
    use_kernel: bool = True,
) -> Optional[torch.Tensor]:
    """Write the new tokens' `latent_entries` into the MLA cache (B, S, d_c + d_R) at input_pos ((T,) or (B, T)) in
    place; with `query` (B, h, T, d_c + d_R), also return it with its last d_R dims roped at the same positions.

    One Triton launch for both on CUDA for one new token per row (bf16/fp16, widths multiples of 16, `use_kernel`), else torch
    (`latent_entries`, `write_positions`, `apply_rope_last`). kv_a: kv_a_proj's output (B, T, d_c + d_R); cos, sin:
    the rope rows at input_pos.
    """
    B, T, D = kv_a.shape
    d_r = cos.size(-1)
    fused = (
        use_kernel and query is not None and T == 1 and query.dim() == 4 and query.size(-1) == D == cache.size(-1)
        and cos.numel() // d_r in (1, B) and 0 < d_r < D
        and kernel_applies((query, kv_a, cache), (D - d_r, d_r))
    )
    if not fused:
        write_positions(cache, input_pos, latent_entries(kv_a, cos, sin, norm_weight, eps, interleave), seq_dim=1)
        return None if query is None else apply_rope_last(query, cos, sin, interleave)  # (B, h, T, d_c + d_R)
    positions = _positions(input_pos, B, 1)[:, 0]  # (B,)
    return _mla_cache_write_op(query.view(B, query.size(1), D), kv_a.view(B, D), cache, positions,
                               cos.reshape(-1, d_r), sin.reshape(-1, d_r), norm_weight, eps, interleave)


def split_heads(
    qkv: torch.Tensor, n_head: int, n_groups: int, head_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows [Q heads | K groups | V groups] (B, T, (nh + 2 ng) hs) -> views q (B, nh, T, hs), k and v (B, ng, T, hs)."""
    B, T, _ = qkv.shape
    q, k, v = qkv.split((n_head * head_size, n_groups * head_size, n_groups * head_size), dim=-1)
    q = q.view(B, T, n_head, head_size).transpose(1, 2)  # (B, nh, T, hs)
    k = k.view(B, T, n_groups, head_size).transpose(1, 2)  # (B, ng, T, hs)
    v = v.view(B, T, n_groups, head_size).transpose(1, 2)  # (B, ng, T, hs)
    return q, k, v


def roped_heads(
    qkv: torch.Tensor, n_head: int, n_groups: int, head_size: int, cos: torch.Tensor, sin: torch.Tensor,
    rope_n_elem: int, interleave: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`split_heads`, then the first rope_n_elem dims of each query head and key group roped (`apply_partial_rope`):
    q (B, nh, T, hs), k and v (B, ng, T, hs) in pure torch."""
    q, k, v = split_heads(qkv, n_head, n_groups, head_size)
    return apply_partial_rope(q, cos, sin, rope_n_elem, interleave), apply_partial_rope(k, cos, sin, rope_n_elem,
                                                                                         interleave), v


def gqa_cache_write(
    qkv: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    input_pos: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    n_head: int,
    rope_n_elem: int,
    interleave: bool,
    use_kernel: bool = True,
) -> torch.Tensor:
    """Split the qkv rows (B, T, (nh + 2 ng) hs) into heads, rope the first rope_n_elem dims of each query head and
    key group (`apply_partial_rope`), write keys and values into the caches (B, ng, S, hs) at input_pos ((T,) or
    (B, T)) in place, and return the roped query (B, nh, T, hs).

    One Triton launch for all of it on CUDA for one new token per row (bf16/fp16, no autograd, `use_kernel`), the
    rotation in fp32; else torch (`roped_heads`, `write_positions`). cos, sin: the rope rows
    at input_pos, (T, rope_n_elem) or (B, T, rope_n_elem).
    """
    B, T, width = qkv.shape
    n_groups, head_size = k_cache.size(1), k_cache.size(-1)
    if width != (n_head + 2 * n_groups) * head_size:
        raise ValueError(f"qkv rows of width {width} do not hold {n_head} query heads and {n_groups} key and value "
                         f"groups of {head_size}")
    fused = (
        use_kernel and T == 1 and k_cache.dim() == 4 and v_cache.shape == k_cache.shape and k_cache.size(0) == B
        and 0 <= rope_n_elem <= head_size and rope_n_elem % 2 == 0
        and (rope_n_elem == 0 or (cos.size(-1) == sin.size(-1) == rope_n_elem and cos.numel() // rope_n_elem in (1, B)
                                  and cos.device == sin.device == qkv.device))
        and kernel_applies((qkv, k_cache, v_cache), ())
    )
    if not fused:
        q, k, v = roped_heads(qkv, n_head, n_groups, head_size, cos, sin, rope_n_elem, interleave)
        write_positions(k_cache, input_pos, k, seq_dim=2)
        write_positions(v_cache, input_pos, v, seq_dim=2)
        return q
    positions = _positions(input_pos, B, 1)[:, 0]  # (B,)
    tables = (cos.reshape(-1, rope_n_elem), sin.reshape(-1, rope_n_elem)) if rope_n_elem else (qkv, qkv)  # unread
    return _gqa_cache_write_op(qkv.select(1, 0), k_cache, v_cache, positions, *tables, n_head, rope_n_elem,
                               interleave)  # (B, nh, 1, hs)


def write_positions(buffer: torch.Tensor, input_pos: torch.Tensor, values: torch.Tensor, seq_dim: int) -> None:
    """buffer[..., input_pos, ...] = values along seq_dim in place; input_pos is (T,) or per-row (B, T).

    Per-row positions index every dim up to seq_dim with broadcast index tensors (batch, then any head-group dims,
    then position), so the indexed shape equals the values' shape.
    """
    values = values.to(buffer.dtype)
    if input_pos.dim() == 1:
        buffer.index_copy_(seq_dim, input_pos, values)
        return
    B, T = input_pos.shape
    index: list[torch.Tensor] = []
    for dim in range(seq_dim):  # (B, 1, .., 1), (1, G, 1, .., 1), ...: each broadcasts to values.shape[:seq_dim + 1]
        shape = [1] * (seq_dim + 1)
        shape[dim] = buffer.size(dim)
        index.append(torch.arange(buffer.size(dim), device=buffer.device).view(shape))
    pos_shape = [B] + [1] * (seq_dim - 1) + [T]
    index.append(input_pos.view(pos_shape))  # (B, 1, .., T)
    buffer.index_put_(tuple(index), values)


def _launcher(name: str) -> Callable[..., torch.Tensor]:
    """The launcher `name` of `litgpt.kernels.triton_decode`, imported at the first launch (Triton loads only when
    a kernel runs); the ops below give it its schema."""

    def launch(*args: object) -> torch.Tensor:
        from litgpt.kernels import triton_decode

        return getattr(triton_decode, name)(*args)

    return launch


def _mla_cache_write_fake(query: torch.Tensor, *_: object) -> torch.Tensor:
    B, h, D = query.shape
    return query.new_empty(B, h, 1, D)  # (B, h, 1, d_c + d_R)


def _gqa_cache_write_fake(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, positions: torch.Tensor,
                          cos: torch.Tensor, sin: torch.Tensor, n_head: int, *_: object) -> torch.Tensor:
    return qkv.new_empty(qkv.size(0), n_head, 1, k_cache.size(-1))  # (B, nh, 1, hs)


def _decode_attention_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, d_main: int,
                           d_v: int, *_: object) -> torch.Tensor:
    B, H, T, _ = q.shape
    return q.new_empty(B, H, T, d_v)  # (B, H, T, d_v)


# The Triton launches as operators (`litgpt.kernels._ops`); the cache writes declare their in-place writes.
_mla_cache_write_op = define_op("mla_cache_write", (
    "(Tensor query, Tensor kv_a, Tensor(a!) cache, Tensor positions, Tensor cos, Tensor sin, Tensor norm_weight, "
    "float eps, bool interleave) -> Tensor"), _launcher("mla_cache_write"), _mla_cache_write_fake)
_decode_attention_op = define_op("decode_attention", (
    "(Tensor q, Tensor k, Tensor v, Tensor positions, int d_main, int d_v, float scale, bool shared_v) -> Tensor"),
    _launcher("decode_attention"), _decode_attention_fake)
_gqa_cache_write_op = define_op("gqa_cache_write", (
    "(Tensor qkv, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor positions, Tensor cos, Tensor sin, int n_head, "
    "int rope_n_elem, bool interleave) -> Tensor"), _launcher("gqa_cache_write"), _gqa_cache_write_fake)


def set_kernels(model: "GPT", enabled: bool) -> int:
    """Turn the Triton kernels of every block's decode step on or off (attention, cache writes, folded GEMVs);
    returns how many blocks were switched."""
    for block in model.transformer.h:
        block.attn.use_kernel = enabled
    return len(model.transformer.h)
