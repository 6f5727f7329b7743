"""Decode attention over static KV caches: the Triton kernel where it applies, a pure-torch reference everywhere.

`mla_decode_attention` attends the absorbed MLA query over `KVCacheCompressed.kv`; `gqa_decode_attention` attends
an MHA/GQA/MQA query over `KVCache.k`/`.v`. Both take `input_pos`, the positions of the T new tokens ((T,) shared
by the batch or (B, T) per row): the query at position p attends cached tokens 0..p, which gives per-row valid
lengths and causality among the new tokens at once. On CUDA, for bf16/fp16 inputs whose head widths are multiples
of 16 and that need no gradient, they launch the split-KV kernel of `litgpt.kernels.triton_decode`; otherwise they
run the reference, which is also what the tests check the kernel against.

Paged caches (`litgpt.kv_cache.PagedKVCache`, `PagedKVCacheCompressed`): every function here also takes a
`block_table` (B, P) of page ids, and the cache it reads or writes is then a pool of pages ((num_pages, page_size,
d_c + d_R) for MLA, (num_pages, page_size, G, hs) for K and V): row b's position p lives in page
block_table[b, p // page_size], slot p % page_size. The Triton kernels walk the pages through the table; the torch
path writes with `write_pages` and reads with `gather_pages` (a contiguous copy of each row's pages).

FP8 caches (`litgpt.kernels.fp8_cache.Fp8Rows`, `kv_cache_dtype="fp8_e4m3"`): every function here also takes one
where it takes a cache. The torch path quantizes as it writes (`write_entries`) and dequantizes as it reads; on GPUs
with e4m3 (`fp8_kernels_run`) the same kernels run with their FP8 switch (the `*fp8*` operators below).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

import torch

from litgpt.kernels._ops import define_op
from litgpt.kernels._triton import fp8_kernels_run, kernel_applies
from litgpt.kernels.fp8_cache import E4M3, MAX_SCALE_BLOCKS, Fp8Rows, as_dense, quantize_rows
from litgpt.rope import apply_partial_rope, apply_rope, apply_rope_last

if TYPE_CHECKING:
    from litgpt.model import GPT


def key_mask(input_pos: torch.Tensor, S: int) -> torch.Tensor:
    """(T, S) or (B, 1, T, S) boolean mask, True where the query at input_pos may attend key position s (s <= pos)."""
    mask = torch.arange(S, device=input_pos.device) <= input_pos.unsqueeze(-1)  # (T, S) or (B, T, S)
    return mask.unsqueeze(1) if mask.dim() == 3 else mask


def gather_pages(pool: torch.Tensor | Fp8Rows, block_table: torch.Tensor, length: Optional[int] = None) -> torch.Tensor:
    """Each row's pages of a pool (num_pages, page_size, ...) in block-table order, as one contiguous copy
    (B, P * page_size, ...), or its first `length` positions (only the pages that hold them are copied). An FP8
    pool's pages are gathered, then dequantized."""
    if isinstance(pool, Fp8Rows):
        return pool.map(lambda part: gather_pages(part, block_table, length)).dequantize()
    page_size = pool.size(1)
    if length is not None:
        block_table = block_table[:, : -(-length // page_size)]  # (B, pages holding positions < length)
    rows = pool[block_table.long()].flatten(1, 2)  # (B, P * page_size, ...)
    return rows if length is None else rows[:, :length]


def write_pages(pool: torch.Tensor, block_table: torch.Tensor, input_pos: torch.Tensor, values: torch.Tensor) -> None:
    """pool[block_table[b, p // page_size], p % page_size] = values[b, t] in place for each p = input_pos[b, t]
    (input_pos (T,) or (B, T)); values (B, T, ...) with the pool's trailing shape."""
    B, T = values.shape[:2]
    positions = _positions(input_pos, B, T)  # (B, T)
    page_size = pool.size(1)
    pages = block_table.gather(1, positions // page_size).long()  # (B, T)
    pool.index_put_((pages, positions % page_size), values.to(pool.dtype))


def write_entries(
    cache: torch.Tensor | Fp8Rows, input_pos: torch.Tensor, values: torch.Tensor, seq_dim: int,
    block_table: Optional[torch.Tensor] = None,
) -> None:
    """The torch path's cache write: values at input_pos along seq_dim of a static cache (`write_positions`), or
    with block_table at each position's page and slot of a pool (`write_pages`, values (B, T, ...)). An FP8 cache
    quantizes the values first (`quantize_rows`: the scales come from the tokens written) and writes every part."""
    if isinstance(cache, Fp8Rows):
        for part, part_values in zip(cache.parts(), quantize_rows(values, cache.block, cache.tail_width)):
            write_entries(part, input_pos, part_values, seq_dim, block_table)
    elif block_table is None:
        write_positions(cache, input_pos, values, seq_dim)
    else:
        write_pages(cache, block_table, input_pos, values)


def mla_decode_attention_reference(
    q: torch.Tensor, kv: torch.Tensor | Fp8Rows, input_pos: torch.Tensor, kv_lora_rank: int, scale: float,
    block_table: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Absorbed MLA attention in pure torch (softmax in fp32 or wider); the torch decode path and the test reference.

    q: (B, h, T, d_c + d_R) = [q_nope absorbed into latent space | roped q_rope]; kv: (B, S, d_c + d_R) = [c | k_rope],
    or with block_table (B, P) a page pool (num_pages, page_size, d_c + d_R), gathered here. An FP8 cache
    (`Fp8Rows`) is dequantized to its model dtype first, so both formats compute the same function.
    scores = q . kv * scale over keys 0..input_pos; output = softmax(scores) @ c: (B, h, T, d_c) in q.dtype.
    """
    if block_table is not None:
        kv = gather_pages(kv, block_table)  # (B, P * page_size, d_c + d_R)
    kv = as_dense(kv)  # (B, S, d_c + d_R)
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
    q: torch.Tensor, k: torch.Tensor | Fp8Rows, v: torch.Tensor | Fp8Rows, input_pos: torch.Tensor, scale: float,
    block_table: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Grouped-query attention over a KV cache in pure torch (softmax in fp32 or wider).

    q: (B, H, T, d); k: (B, G, S, d); v: (B, G, S, d_v) with H a multiple of G, or with block_table (B, P) page
    pools k (num_pages, page_size, G, d) and v (num_pages, page_size, G, d_v), gathered here. FP8 caches
    (`Fp8Rows`) are dequantized to their model dtype first.
    Returns (B, H, T, d_v) in q.dtype.
    """
    if block_table is not None:
        k, v = gather_pages(k, block_table).transpose(1, 2), gather_pages(v, block_table).transpose(1, 2)
    k, v = as_dense(k), as_dense(v)  # (B, G, S, d), (B, G, S, d_v)
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


def _check_block_table(block_table: torch.Tensor, B: int) -> None:
    if block_table.dim() != 2 or block_table.size(0) != B or block_table.is_floating_point():
        raise ValueError(f"block_table must hold integer page ids of shape ({B}, pages) for {B} rows, "
                         f"got {block_table.dtype} {tuple(block_table.shape)}")


def _paged_kernel_applies(tensors: tuple[torch.Tensor | Fp8Rows, ...], widths: tuple[int, ...],
                          block_table: Optional[torch.Tensor]) -> bool:
    """`kernel_applies`, and with a block table, the table on the same device with unit last stride. An fp8 cache
    (`Fp8Rows`) takes the kernels only where the device has e4m3 (`fp8_kernels_run`), read as the model's dtype
    (its rope key stands for it in `kernel_applies`), its e4m3 values and scales on the same device with unit last
    strides, one scale per row or per a power of 2 (at least 16) of values, at most MAX_SCALE_BLOCKS of them."""
    plain = tuple(t for t in tensors if not isinstance(t, Fp8Rows))
    caches = [t for t in tensors if isinstance(t, Fp8Rows)]
    if caches:
        first = plain[0]
        if not fp8_kernels_run(first) or not all(
                c.dtype == first.dtype and all(p.device == first.device and p.stride(-1) == 1 for p in c.parts()[:2])
                and (c.scale.size(-1) == 1 or (c.block & (c.block - 1) == 0 and c.block >= 16  # powers of 2
                                               and c.scale.size(-1) <= MAX_SCALE_BLOCKS)) for c in caches):
            return False
        plain += tuple(c.tail for c in caches if c.tail is not None)
    return kernel_applies(plain, widths) and (
        block_table is None or (block_table.device == tensors[0].device and block_table.stride(-1) == 1))


def mla_decode_attention(
    q: torch.Tensor, kv: torch.Tensor | Fp8Rows, input_pos: torch.Tensor, kv_lora_rank: int, scale: float,
    block_table: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Absorbed MLA attention over the latent cache: the Triton kernel where it applies, else the reference.

    Same arguments and result as `mla_decode_attention_reference`. kv may be the whole preallocated cache, or with
    block_table a page pool read through it: only the first input_pos + 1 tokens of each row are read.
    """
    B, _, T, D = q.shape if q.dim() == 4 else (0, 0, 0, 0)
    if q.dim() != 4 or kv.dim() != 3 or (block_table is None and B != kv.size(0)) or D != kv.size(-1):
        raise ValueError(f"expected q (B, h, T, D) and kv (B, S, D) (or a page pool (pages, page_size, D)) with the "
                         f"same B and D, got q {tuple(q.shape)} and kv {tuple(kv.shape)}")
    if not 0 < kv_lora_rank < kv.size(-1):
        raise ValueError(f"kv_lora_rank={kv_lora_rank} must lie strictly between 0 and the cache width {kv.size(-1)}")
    positions = _positions(input_pos, B, T)
    if block_table is not None:
        _check_block_table(block_table, B)
    if not _paged_kernel_applies((q, kv), (kv_lora_rank, D - kv_lora_rank), block_table):
        return mla_decode_attention_reference(q, kv, input_pos, kv_lora_rank, scale, block_table)
    if isinstance(kv, Fp8Rows):  # V is the dequantized latent
        if block_table is not None:
            return _paged_fp8_decode_attention_op(q, kv.data, kv.scale, kv.tail, kv.data, None, positions, block_table,
                                                  kv_lora_rank, kv_lora_rank, scale, True, kv.block)
        k, k_scale, k_rope = (part.unsqueeze(1) for part in kv.parts())  # (B, 1, S, ...): one latent group
        return _fp8_decode_attention_op(q, k, k_scale, k_rope, k, None, positions, kv_lora_rank, kv_lora_rank, scale,
                                        True, kv.block)
    if block_table is not None:
        return _paged_decode_attention_op(q, kv, kv, positions, block_table, kv_lora_rank, kv_lora_rank, scale, True)
    k = kv.unsqueeze(1)  # (B, 1, S, D): one latent group shared by all heads
    return _decode_attention_op(q, k, k, positions, kv_lora_rank, kv_lora_rank, scale, True)


def gqa_decode_attention(
    q: torch.Tensor, k: torch.Tensor | Fp8Rows, v: torch.Tensor | Fp8Rows, input_pos: torch.Tensor, scale: float,
    block_table: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """MHA/GQA/MQA attention over `KVCache` buffers (or, with block_table, `PagedKVCache` pools read through it):
    the Triton kernel where it applies, else the reference.

    Same arguments and result as `gqa_decode_attention_reference`; only the first input_pos + 1 tokens are read.
    """
    group_dim = 1 if block_table is None else 2  # (B, G, S, d) caches or (pages, page_size, G, d) pools
    if (q.dim() != 4 or k.dim() != 4 or v.shape[:3] != k.shape[:3] or q.size(-1) != k.size(-1)
            or (block_table is None and q.size(0) != k.size(0))):
        raise ValueError(f"expected q (B, H, T, d), k (B, G, S, d), v (B, G, S, d_v) (or page pools (pages, "
                         f"page_size, G, d)), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.size(1) % k.size(group_dim) != 0:
        raise ValueError(f"the number of query heads ({q.size(1)}) must be a multiple of the KV groups "
                         f"({k.size(group_dim)})")
    B, _, T, d = q.shape
    positions = _positions(input_pos, B, T)
    if block_table is not None:
        _check_block_table(block_table, B)
    if not _paged_kernel_applies((q, k, v), (d, v.size(-1)), block_table) or (
            isinstance(v, Fp8Rows) and v.scale.size(-1) != 1):
        return gqa_decode_attention_reference(q, k, v, input_pos, scale, block_table)
    if isinstance(k, Fp8Rows):
        if block_table is not None:
            return _paged_fp8_decode_attention_op(q, k.data, k.scale, None, v.data, v.scale, positions, block_table, d,
                                                  v.size(-1), scale, False, k.block)
        return _fp8_decode_attention_op(q, k.data, k.scale, None, v.data, v.scale, positions, d, v.size(-1), scale,
                                        False, k.block)
    if block_table is not None:
        return _paged_decode_attention_op(q, k, v, positions, block_table, d, v.size(-1), scale, False)
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
    cache: torch.Tensor | Fp8Rows,
    input_pos: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    interleave: bool,
    query: Optional[torch.Tensor] = None,
    use_kernel: bool = True,
    block_table: Optional[torch.Tensor] = None,
) -> Optional[torch.Tensor]:
    """Write the new tokens' `latent_entries` into the MLA cache (B, S, d_c + d_R) at input_pos ((T,) or (B, T)) in
    place; with `query` (B, h, T, d_c + d_R), also return it with its last d_R dims roped at the same positions.
    With block_table (B, P) the cache is a page pool (num_pages, page_size, d_c + d_R), written at each position's
    page and slot.

    One Triton launch for both on CUDA for one new token per row (bf16/fp16, widths multiples of 16, `use_kernel`), else torch
    (`latent_entries`, `write_positions`, `apply_rope_last`). kv_a: kv_a_proj's output (B, T, d_c + d_R); cos, sin:
    the rope rows at input_pos.
    """
    B, T, D = kv_a.shape
    d_r = cos.size(-1)
    fused = (
        use_kernel and query is not None and T == 1 and query.dim() == 4 and query.size(-1) == D == cache.size(-1)
        and cos.numel() // d_r in (1, B) and 0 < d_r < D
        and _paged_kernel_applies((query, kv_a, cache), (D - d_r, d_r), block_table)
    )
    if not fused:
        entries = latent_entries(kv_a, cos, sin, norm_weight, eps, interleave)  # (B, T, d_c + d_R)
        write_entries(cache, input_pos, entries, 1, block_table)
        return None if query is None else apply_rope_last(query, cos, sin, interleave)  # (B, h, T, d_c + d_R)
    positions = _positions(input_pos, B, 1)[:, 0]  # (B,)
    args = (cos.reshape(-1, d_r), sin.reshape(-1, d_r), norm_weight, eps, interleave)
    if isinstance(cache, Fp8Rows):  # quantized in the same launch
        query = query.view(B, query.size(1), D)
        if block_table is not None:
            return _paged_fp8_mla_cache_write_op(query, kv_a.view(B, D), *cache.parts(), positions, block_table, *args,
                                                 cache.block)
        return _fp8_mla_cache_write_op(query, kv_a.view(B, D), *cache.parts(), positions, *args, cache.block)
    if block_table is not None:
        return _paged_mla_cache_write_op(query.view(B, query.size(1), D), kv_a.view(B, D), cache, positions,
                                         block_table, *args)
    return _mla_cache_write_op(query.view(B, query.size(1), D), kv_a.view(B, D), cache, positions, *args)


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
    k_cache: torch.Tensor | Fp8Rows,
    v_cache: torch.Tensor | Fp8Rows,
    input_pos: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    n_head: int,
    rope_n_elem: int,
    interleave: bool,
    use_kernel: bool = True,
    block_table: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Split the qkv rows (B, T, (nh + 2 ng) hs) into heads, rope the first rope_n_elem dims of each query head and
    key group (`apply_partial_rope`), write keys and values into the caches (B, ng, S, hs) at input_pos ((T,) or
    (B, T)) in place, and return the roped query (B, nh, T, hs). With block_table (B, P) the caches are page pools
    (num_pages, page_size, ng, hs), written at each position's page and slot.

    One Triton launch for all of it on CUDA for one new token per row (bf16/fp16, no autograd, `use_kernel`), the
    rotation in fp32; else torch (`roped_heads`, `write_positions`). cos, sin: the rope rows
    at input_pos, (T, rope_n_elem) or (B, T, rope_n_elem).
    """
    B, T, width = qkv.shape
    n_groups, head_size = k_cache.size(1 if block_table is None else 2), k_cache.size(-1)
    if width != (n_head + 2 * n_groups) * head_size:
        raise ValueError(f"qkv rows of width {width} do not hold {n_head} query heads and {n_groups} key and value "
                         f"groups of {head_size}")
    fused = (
        use_kernel and T == 1 and k_cache.dim() == 4 and v_cache.shape == k_cache.shape
        and (block_table is not None or k_cache.size(0) == B)
        and 0 <= rope_n_elem <= head_size and rope_n_elem % 2 == 0
        and (rope_n_elem == 0 or (cos.size(-1) == sin.size(-1) == rope_n_elem and cos.numel() // rope_n_elem in (1, B)
                                  and cos.device == sin.device == qkv.device))
        and _paged_kernel_applies((qkv, k_cache, v_cache), (), block_table)
    )
    if not fused:
        q, k, v = roped_heads(qkv, n_head, n_groups, head_size, cos, sin, rope_n_elem, interleave)
        if block_table is not None:
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, T, ng, hs) into the K and V pools
        write_entries(k_cache, input_pos, k, 2, block_table)
        write_entries(v_cache, input_pos, v, 2, block_table)
        return q
    positions = _positions(input_pos, B, 1)[:, 0]  # (B,)
    tables = (cos.reshape(-1, rope_n_elem), sin.reshape(-1, rope_n_elem)) if rope_n_elem else (qkv, qkv)  # unread
    if isinstance(k_cache, Fp8Rows):  # quantized in the same launch
        caches = (k_cache.data, k_cache.scale, v_cache.data, v_cache.scale)
        if block_table is not None:
            return _paged_fp8_gqa_cache_write_op(qkv.select(1, 0), *caches, positions, block_table, *tables, n_head,
                                                 rope_n_elem, interleave)  # (B, nh, 1, hs)
        return _fp8_gqa_cache_write_op(qkv.select(1, 0), *caches, positions, *tables, n_head, rope_n_elem,
                                       interleave)  # (B, nh, 1, hs)
    if block_table is not None:
        return _paged_gqa_cache_write_op(qkv.select(1, 0), k_cache, v_cache, positions, block_table, *tables, n_head,
                                         rope_n_elem, interleave)  # (B, nh, 1, hs)
    return _gqa_cache_write_op(qkv.select(1, 0), k_cache, v_cache, positions, *tables, n_head, rope_n_elem,
                               interleave)  # (B, nh, 1, hs)


def write_positions(buffer: torch.Tensor, input_pos: torch.Tensor, values: torch.Tensor, seq_dim: int) -> None:
    """buffer[..., input_pos, ...] = values along seq_dim in place; input_pos is (T,) or per-row (B, T).

    Per-row positions index every dim up to seq_dim with broadcast index tensors (batch, then any head-group dims,
    then position), so the indexed shape equals the values' shape.
    """
    values = values.to(buffer.dtype)
    if buffer.dtype == E4M3:  # index_copy_ has no float8 kernel on the CPU: copy the bytes
        buffer, values = buffer.view(torch.uint8), values.view(torch.uint8)
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


def _paged_gqa_cache_write_fake(qkv: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                                positions: torch.Tensor, block_table: torch.Tensor, cos: torch.Tensor,
                                sin: torch.Tensor, n_head: int, *_: object) -> torch.Tensor:
    return qkv.new_empty(qkv.size(0), n_head, 1, k_pool.size(-1))  # (B, nh, 1, hs)


def _decode_attention_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, d_main: int,
                           d_v: int, *_: object) -> torch.Tensor:
    B, H, T, _ = q.shape
    return q.new_empty(B, H, T, d_v)  # (B, H, T, d_v)


def _paged_decode_attention_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                                 block_table: torch.Tensor, d_main: int, d_v: int, *_: object) -> torch.Tensor:
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
# The same kernels over page pools, read and written through a block table (their PAGED switch on).
_paged_mla_cache_write_op = define_op("paged_mla_cache_write", (
    "(Tensor query, Tensor kv_a, Tensor(a!) pool, Tensor positions, Tensor block_table, Tensor cos, Tensor sin, "
    "Tensor norm_weight, float eps, bool interleave) -> Tensor"), _launcher("paged_mla_cache_write"),
    _mla_cache_write_fake)
_paged_decode_attention_op = define_op("paged_decode_attention", (
    "(Tensor q, Tensor k_pool, Tensor v_pool, Tensor positions, Tensor block_table, int d_main, int d_v, float scale, "
    "bool shared_v) -> Tensor"), _launcher("paged_decode_attention"), _paged_decode_attention_fake)
_paged_gqa_cache_write_op = define_op("paged_gqa_cache_write", (
    "(Tensor qkv, Tensor(a!) k_pool, Tensor(b!) v_pool, Tensor positions, Tensor block_table, Tensor cos, "
    "Tensor sin, int n_head, int rope_n_elem, bool interleave) -> Tensor"), _launcher("paged_gqa_cache_write"),
    _paged_gqa_cache_write_fake)


def _fp8_decode_attention_fake(q: torch.Tensor, k: torch.Tensor, k_scale: torch.Tensor, k_rope: Optional[torch.Tensor],
                               v: torch.Tensor, v_scale: Optional[torch.Tensor], positions: torch.Tensor,
                               *args: object) -> torch.Tensor:
    d_v = args[-4]  # ([block_table,] d_main, d_v, scale, shared_v, scale_block)
    B, H, T, _ = q.shape
    return q.new_empty(B, H, T, int(d_v))  # (B, H, T, d_v)


def _fp8_gqa_cache_write_fake(qkv: torch.Tensor, k_cache: torch.Tensor, *args: object) -> torch.Tensor:
    n_head = args[-3]  # (..., n_head, rope_n_elem, interleave)
    return qkv.new_empty(qkv.size(0), int(n_head), 1, k_cache.size(-1))  # (B, nh, 1, hs)


# The fp8 caches' launches (`litgpt.kernels.fp8_cache.Fp8Rows`: e4m3 values, float32 scales, MLA's rope key in the
# model's dtype), static and paged: the same kernels with their FP8 switch on.
_fp8_decode_attention_op = define_op("fp8_decode_attention", (
    "(Tensor q, Tensor k, Tensor k_scale, Tensor? k_rope, Tensor v, Tensor? v_scale, Tensor positions, int d_main, "
    "int d_v, float scale, bool shared_v, int scale_block) -> Tensor"), _launcher("fp8_decode_attention"),
    _fp8_decode_attention_fake)
_paged_fp8_decode_attention_op = define_op("paged_fp8_decode_attention", (
    "(Tensor q, Tensor k_pool, Tensor k_scale, Tensor? k_rope, Tensor v_pool, Tensor? v_scale, Tensor positions, "
    "Tensor block_table, int d_main, int d_v, float scale, bool shared_v, int scale_block) -> Tensor"),
    _launcher("paged_fp8_decode_attention"), _fp8_decode_attention_fake)
_fp8_mla_cache_write_op = define_op("fp8_mla_cache_write", (
    "(Tensor query, Tensor kv_a, Tensor(a!) cache, Tensor(b!) scale, Tensor(c!) rope, Tensor positions, Tensor cos, "
    "Tensor sin, Tensor norm_weight, float eps, bool interleave, int scale_block) -> Tensor"),
    _launcher("fp8_mla_cache_write"), _mla_cache_write_fake)
_paged_fp8_mla_cache_write_op = define_op("paged_fp8_mla_cache_write", (
    "(Tensor query, Tensor kv_a, Tensor(a!) pool, Tensor(b!) scale, Tensor(c!) rope, Tensor positions, "
    "Tensor block_table, Tensor cos, Tensor sin, Tensor norm_weight, float eps, bool interleave, int scale_block) "
    "-> Tensor"), _launcher("paged_fp8_mla_cache_write"), _mla_cache_write_fake)
_fp8_gqa_cache_write_op = define_op("fp8_gqa_cache_write", (
    "(Tensor qkv, Tensor(a!) k_cache, Tensor(b!) k_scale, Tensor(c!) v_cache, Tensor(d!) v_scale, Tensor positions, "
    "Tensor cos, Tensor sin, int n_head, int rope_n_elem, bool interleave) -> Tensor"),
    _launcher("fp8_gqa_cache_write"), _fp8_gqa_cache_write_fake)
_paged_fp8_gqa_cache_write_op = define_op("paged_fp8_gqa_cache_write", (
    "(Tensor qkv, Tensor(a!) k_pool, Tensor(b!) k_scale, Tensor(c!) v_pool, Tensor(d!) v_scale, Tensor positions, "
    "Tensor block_table, Tensor cos, Tensor sin, int n_head, int rope_n_elem, bool interleave) -> Tensor"),
    _launcher("paged_fp8_gqa_cache_write"), _fp8_gqa_cache_write_fake)


def set_kernels(model: "GPT", enabled: bool) -> int:
    """Turn the Triton kernels of every block's decode step on or off (attention, cache writes, folded GEMVs);
    returns how many blocks were switched."""
    for block in model.transformer.h:
        block.attn.use_kernel = enabled
    return len(model.transformer.h)
