"""KV caches, static and paged. All are preallocated once; a write fills new positions in place and returns the
whole buffer (or pool), so a decode step has fixed shapes, no reallocation and no host sync.

`KVCache` holds per-group K and V (MHA/GQA/MQA). `KVCacheCompressed` holds, for MLA, only the normalised latent and
the roped rope key, side by side in one buffer: kv_lora_rank + qk_rope_head_dim values per token. Each cache owns
its write: `KVCacheCompressed.write` turns kv_a_proj's output into those entries itself, and `KVCache.write_qkv`
the fused qkv projection's output (each a Triton launch on CUDA for a one-token step).

The paged caches (`PagedKVCache`, `PagedKVCacheCompressed`, for a server's many sequences) hold the same entries in
a pool of fixed-size pages shared by all sequences: a (B, P) block table of page ids, passed with every forward,
says where each row's positions live (position p of row b: page block_table[b, p // page_size], slot
p % page_size), so memory follows each sequence's length. Page 0 is a scratch page no sequence owns: an idle row
of a decode batch points all its table at it. Their writes take the same arguments as the static caches' plus the
block table, and attention reads them through it (`litgpt.attention.AttentionInputs`): one interface to the
attention code.

`kv_cache_dtype="fp8_e4m3"` stores every cache in float8 e4m3 with float32 scales, quantized in the same call as
the write (`litgpt.kernels.fp8_cache`): for MLA the normalised latent with one scale per block of at most 128
values, the rope key kept in the model's dtype; for MHA/GQA/MQA K and V with one scale per token and head. Such a
cache's `entries(name)` is an `Fp8Rows` where the model's dtype gives the tensor itself.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import nn

from litgpt.config import Config
from litgpt.kernels import gqa_cache_write, mla_cache_write, write_entries
from litgpt.kernels.fp8_cache import E4M3, LATENT_BLOCK, Fp8Rows, num_blocks

KV_CACHE_DTYPES = ("fp8_e4m3",)  # besides None: the model's dtype
SCALE_BYTES = 4  # float32 scales


def check_kv_cache_dtype(kv_cache_dtype: Optional[str]) -> Optional[str]:
    """kv_cache_dtype itself if it is None (the model's dtype) or one of KV_CACHE_DTYPES, else a one-line error."""
    if kv_cache_dtype is None or kv_cache_dtype in KV_CACHE_DTYPES:
        return kv_cache_dtype
    allowed = ", ".join([repr(d) for d in KV_CACHE_DTYPES])
    raise ValueError(f"kv_cache_dtype must be null (the model's dtype) or one of {allowed}, got {kv_cache_dtype!r}")


def kv_cache_bytes_per_token(config: Config, dtype: torch.dtype, kv_cache_dtype: Optional[str] = None) -> int:
    """Bytes one token takes in all layers' caches. In the model's dtype: n_layer * (kv_lora_rank +
    qk_rope_head_dim) values for MLA, n_layer * 2 * n_query_groups * head_size for MHA/GQA/MQA, times the dtype's
    size. In fp8_e4m3: MLA d_c bytes + 4 per block of at most 128 + d_R values in dtype (256 + 32 in bf16: 328);
    MHA/GQA/MQA 2 * n_query_groups * (head_size + 4)."""
    size = torch.empty((), dtype=dtype).element_size()
    if check_kv_cache_dtype(kv_cache_dtype) is None:
        return config.n_layer * config.kv_values_per_token * size
    if config.mla is not None:
        d_c, d_r = config.mla.kv_lora_rank, config.mla.qk_rope_head_dim
        return config.n_layer * (d_c + SCALE_BYTES * num_blocks(d_c, LATENT_BLOCK) + d_r * size)
    return config.n_layer * 2 * config.n_query_groups * (config.head_size + SCALE_BYTES)


class CacheEntries(nn.Module):
    """What every cache shares: its entry buffers, dense in the model's dtype or in e4m3 with float32 scales
    (`kv_cache_dtype="fp8_e4m3"`), and `entries(name)`, the buffer as the cache writes and attention read it."""

    def __init__(self, kv_cache_dtype: Optional[str] = None) -> None:
        super().__init__()
        self.kv_cache_dtype = check_kv_cache_dtype(kv_cache_dtype)
        self._formats: dict[str, tuple[int, int, torch.dtype]] = {}  # name -> (block, tail width, model dtype)

    def allocate(self, name: str, shape: tuple[int, ...], block: int, tail_width: int,
                 device: Optional[torch.device], dtype: Optional[torch.dtype]) -> None:
        """Register the buffer `name` of (dense) `shape`: in fp8, `name`_fp8 (..., D - tail_width) e4m3 with
        `name`_scale (..., blocks) float32 (one per `block` values) and, with a tail, `name`_tail (..., tail_width)
        in dtype."""
        dtype = dtype or torch.get_default_dtype()
        if self.kv_cache_dtype is None:
            self.register_buffer(name, torch.zeros(shape, device=device, dtype=dtype), persistent=False)
            return
        lead, width = shape[:-1], shape[-1] - tail_width
        self.register_buffer(f"{name}_fp8", torch.zeros(*lead, width, device=device, dtype=E4M3), persistent=False)
        self.register_buffer(f"{name}_scale", torch.ones(*lead, num_blocks(width, block), device=device,
                                                          dtype=torch.float32), persistent=False)
        if tail_width:
            self.register_buffer(f"{name}_tail", torch.zeros(*lead, tail_width, device=device, dtype=dtype),
                                 persistent=False)
        self._formats[name] = (block, tail_width, dtype)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> "CacheEntries":
        """`nn.Module._apply` (`.to`, `.cuda`, ...); an fp8 cache's values then read back in the dtype its model
        dtype became (a cast to float64 also casts the e4m3 buffers, which keep their e4m3-rounded values)."""
        super()._apply(fn, recurse)
        self._formats = {name: (block, tail, fn(torch.empty(0, dtype=dtype)).dtype)
                         for name, (block, tail, dtype) in self._formats.items()}
        return self

    def entries(self, name: str) -> Union[torch.Tensor, Fp8Rows]:
        """The buffer `name` ("k", "v" or "kv"): the tensor, or in fp8 its `Fp8Rows`."""
        if self.kv_cache_dtype is None:
            return getattr(self, name)
        block, tail_width, dtype = self._formats[name]
        tail = getattr(self, f"{name}_tail") if tail_width else None
        return Fp8Rows(getattr(self, f"{name}_fp8"), getattr(self, f"{name}_scale"), tail, block, dtype)

    def address(self, block_table: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """How a write finds its entries: a static cache by row, so no block table (a paged cache needs one)."""
        if block_table is not None:
            raise TypeError("block_table addresses a paged KV cache, but this layer's cache is static: call "
                            "model.set_paged_kv_cache(num_pages, page_size) first, or leave block_table out")
        return None


class PagedCache(CacheEntries):
    """What the paged caches share: the pool's geometry and the check that a forward passes a block table."""

    def __init__(self, num_pages: int, page_size: int, kv_cache_dtype: Optional[str] = None) -> None:
        super().__init__(kv_cache_dtype)
        if num_pages < 2 or page_size < 1:
            raise ValueError(f"a paged KV cache needs at least 2 pages (page 0 is scratch) of at least 1 token, got "
                             f"num_pages={num_pages}, page_size={page_size}")
        self.num_pages, self.page_size = num_pages, page_size

    def address(self, block_table: Optional[torch.Tensor]) -> torch.Tensor:
        """A paged cache's writes go through the block table (B, P), which a forward must pass."""
        if block_table is None:
            raise TypeError("this layer's KV cache is paged: pass block_table= (B, pages) int32 page ids with "
                            "input_pos, or set a static cache with model.set_kv_cache(batch_size)")
        return block_table


class KVWrite:
    """The K/V write of `KVCache` and `PagedKVCache` (a mixin over `CacheEntries`: `entries`, `address`)."""

    def write_qkv(
        self,
        input_pos: torch.Tensor,
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        n_head: int,
        rope_n_elem: int,
        interleave: bool,
        use_kernel: bool = True,
        block_table: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write the new tokens' roped keys and values from the qkv rows (B, T, (nh + 2 G) hs) at input_pos; return
        their query (B, nh, T, hs), roped at the same positions, and the full caches (B, G, S, hs).

        One launch for a one-token step on CUDA (`litgpt.kernels.gqa_cache_write`). cos, sin: the rope rows at
        input_pos ((T, rope_n_elem) or (B, T, rope_n_elem)), which rotate the first rope_n_elem dims of each query
        head and key group. block_table: None for a static cache (addressed by row), (B, P) page ids for a paged one
        (each new token at its row's page and slot; the "caches" are then the whole pools (num_pages, page_size, G,
        hs)).
        """
        block_table = self.address(block_table)
        k_cache, v_cache = self.entries("k"), self.entries("v")
        q = gqa_cache_write(qkv, k_cache, v_cache, input_pos, cos, sin, n_head, rope_n_elem, interleave, use_kernel,
                            block_table)
        return q, k_cache, v_cache


class LatentWrite:
    """The latent write of `KVCacheCompressed` and `PagedKVCacheCompressed` (a mixin over `CacheEntries`)."""

    def write(
        self,
        input_pos: torch.Tensor,
        kv_a: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        norm: nn.Module,
        interleave: bool,
        query: Optional[torch.Tensor] = None,
        use_kernel: bool = True,
        block_table: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Write the new tokens' [norm(latent) | rope(k_R)] from kv_a_proj's output kv_a (B, T, d_c + d_R) at
        input_pos; return the whole buffer (B, S, d_c + d_R) and, if given, `query` (B, h, T, d_c + d_R) with its
        rope part roped at the same positions (the kernel rotates it in the same launch; `litgpt.kernels`).

        norm: kv_a_norm (an RMSNorm: its weight and eps are read); cos, sin: the rope rows at input_pos; use_kernel
        False keeps the write on the torch path; block_table: None for a static cache (addressed by row), (B, P)
        page ids for a paged one (each new token at its row's page and slot; the buffer returned is then the whole
        pool (num_pages, page_size, d_c + d_R)).
        """
        block_table = self.address(block_table)
        kv = self.entries("kv")
        query = mla_cache_write(kv_a, kv, input_pos, cos, sin, norm.weight, norm.eps, interleave, query, use_kernel,
                                block_table)
        return kv, query


class KVCache(KVWrite, CacheEntries):
    """Keys and values of shape (B, n_query_groups, max_seq_length, head_size) (in fp8: one scale per token and
    group, (B, n_query_groups, max_seq_length, 1))."""

    def __init__(
        self,
        batch_size: int,
        n_query_groups: int,
        max_seq_length: int,
        head_size: int,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        kv_cache_dtype: Optional[str] = None,
    ) -> None:
        super().__init__(kv_cache_dtype)
        shape = (batch_size, n_query_groups, max_seq_length, head_size)
        self.allocate("k", shape, head_size, 0, device, dtype)
        self.allocate("v", shape, head_size, 0, device, dtype)

    def forward(
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[Union[torch.Tensor, Fp8Rows], Union[torch.Tensor, Fp8Rows]]:
        """Write k, v (B, G, T, hs) at input_pos ((T,) or (B, T)) and return the full caches (B, G, S, hs)."""
        k_cache, v_cache = self.entries("k"), self.entries("v")
        write_entries(k_cache, input_pos, k, seq_dim=2)
        write_entries(v_cache, input_pos, v, seq_dim=2)
        return k_cache, v_cache


class PagedKVCache(KVWrite, PagedCache):
    """Keys and values in page pools of shape (num_pages, page_size, n_query_groups, head_size), read and written
    through a block table."""

    def __init__(
        self,
        num_pages: int,
        page_size: int,
        n_query_groups: int,
        head_size: int,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        kv_cache_dtype: Optional[str] = None,
    ) -> None:
        super().__init__(num_pages, page_size, kv_cache_dtype)
        shape = (num_pages, page_size, n_query_groups, head_size)
        self.allocate("k", shape, head_size, 0, device, dtype)
        self.allocate("v", shape, head_size, 0, device, dtype)


class KVCacheCompressed(LatentWrite, CacheEntries):
    """MLA cache: one buffer `kv` of shape (B, max_seq_length, kv_lora_rank + qk_rope_head_dim).

    `kv[..., :kv_lora_rank]` is the normalised latent c = kv_a_norm(latent) (it serves as both keys and values in
    the absorbed path); `kv[..., kv_lora_rank:]` is the roped key shared by all heads. In fp8 the latent is e4m3
    with one float32 scale per block of at most 128 values, and the key the tail in the model's dtype.
    """

    def __init__(
        self,
        batch_size: int,
        max_seq_length: int,
        kv_lora_rank: int,
        qk_rope_head_dim: int,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        kv_cache_dtype: Optional[str] = None,
    ) -> None:
        super().__init__(kv_cache_dtype)
        shape = (batch_size, max_seq_length, kv_lora_rank + qk_rope_head_dim)
        self.allocate("kv", shape, LATENT_BLOCK, qk_rope_head_dim, device, dtype)


class PagedKVCacheCompressed(LatentWrite, PagedCache):
    """MLA cache in one page pool `kv` of shape (num_pages, page_size, kv_lora_rank + qk_rope_head_dim), each entry
    [normalised latent | roped key] as in `KVCacheCompressed`, read and written through a block table."""

    def __init__(
        self,
        num_pages: int,
        page_size: int,
        kv_lora_rank: int,
        qk_rope_head_dim: int,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        kv_cache_dtype: Optional[str] = None,
    ) -> None:
        super().__init__(num_pages, page_size, kv_cache_dtype)
        shape = (num_pages, page_size, kv_lora_rank + qk_rope_head_dim)
        self.allocate("kv", shape, LATENT_BLOCK, qk_rope_head_dim, device, dtype)
