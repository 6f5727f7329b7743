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
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from litgpt.config import Config
from litgpt.kernels import gqa_cache_write, mla_cache_write, write_positions


def kv_cache_bytes_per_token(config: Config, dtype: torch.dtype) -> int:
    """Bytes one token takes in all layers' caches: n_layer * (kv_lora_rank + qk_rope_head_dim) values for MLA,
    n_layer * 2 * n_query_groups * head_size for MHA/GQA/MQA, times the dtype's size."""
    return config.n_layer * config.kv_values_per_token * torch.empty((), dtype=dtype).element_size()


def _check_static(block_table: Optional[torch.Tensor]) -> None:
    if block_table is not None:
        raise TypeError("block_table addresses a paged KV cache, but this layer's cache is static: call "
                        "model.set_paged_kv_cache(num_pages, page_size) first, or leave block_table out")


class PagedCache(nn.Module):
    """What the paged caches share: the pool's geometry and the check that a forward passes a block table."""

    def __init__(self, num_pages: int, page_size: int) -> None:
        super().__init__()
        if num_pages < 2 or page_size < 1:
            raise ValueError(f"a paged KV cache needs at least 2 pages (page 0 is scratch) of at least 1 token, got "
                             f"num_pages={num_pages}, page_size={page_size}")
        self.num_pages, self.page_size = num_pages, page_size

    @staticmethod
    def _check(block_table: Optional[torch.Tensor]) -> torch.Tensor:
        if block_table is None:
            raise TypeError("this layer's KV cache is paged: pass block_table= (B, pages) int32 page ids with "
                            "input_pos, or set a static cache with model.set_kv_cache(batch_size)")
        return block_table


class KVCache(nn.Module):
    """Keys and values of shape (B, n_query_groups, max_seq_length, head_size)."""

    def __init__(
        self,
        batch_size: int,
        n_query_groups: int,
        max_seq_length: int,
        head_size: int,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        shape = (batch_size, n_query_groups, max_seq_length, head_size)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def forward(
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, G, T, hs) at input_pos ((T,) or (B, T)) and return the full caches (B, G, S, hs)."""
        write_positions(self.k, input_pos, k, seq_dim=2)
        write_positions(self.v, input_pos, v, seq_dim=2)
        return self.k, self.v

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
        head and key group. block_table: None (a static cache is addressed by row; `PagedKVCache` takes one).
        """
        _check_static(block_table)
        q = gqa_cache_write(qkv, self.k, self.v, input_pos, cos, sin, n_head, rope_n_elem, interleave, use_kernel)
        return q, self.k, self.v


class PagedKVCache(PagedCache):
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
    ) -> None:
        super().__init__(num_pages, page_size)
        shape = (num_pages, page_size, n_query_groups, head_size)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

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
        """`KVCache.write_qkv` into the pools, each new token at its row's page and slot (block_table (B, P),
        required); returns the roped query (B, nh, T, hs) and the whole pools (num_pages, page_size, G, hs)."""
        block_table = self._check(block_table)
        q = gqa_cache_write(qkv, self.k, self.v, input_pos, cos, sin, n_head, rope_n_elem, interleave, use_kernel,
                            block_table)
        return q, self.k, self.v


class KVCacheCompressed(nn.Module):
    """MLA cache: one buffer `kv` of shape (B, max_seq_length, kv_lora_rank + qk_rope_head_dim).

    `kv[..., :kv_lora_rank]` is the normalised latent c = kv_a_norm(latent) (it serves as both keys and values in
    the absorbed path); `kv[..., kv_lora_rank:]` is the roped key shared by all heads.
    """

    def __init__(
        self,
        batch_size: int,
        max_seq_length: int,
        kv_lora_rank: int,
        qk_rope_head_dim: int,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        shape = (batch_size, max_seq_length, kv_lora_rank + qk_rope_head_dim)
        self.register_buffer("kv", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

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
        False keeps the write on the torch path; block_table: None (a static cache is addressed by row;
        `PagedKVCacheCompressed` takes one).
        """
        _check_static(block_table)
        query = mla_cache_write(kv_a, self.kv, input_pos, cos, sin, norm.weight, norm.eps, interleave, query,
                                use_kernel)
        return self.kv, query


class PagedKVCacheCompressed(PagedCache):
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
    ) -> None:
        super().__init__(num_pages, page_size)
        shape = (num_pages, page_size, kv_lora_rank + qk_rope_head_dim)
        self.register_buffer("kv", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

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
        """`KVCacheCompressed.write` into the pool, each new token at its row's page and slot (block_table (B, P),
        required); returns the whole pool (num_pages, page_size, d_c + d_R) and the roped query if given."""
        block_table = self._check(block_table)
        query = mla_cache_write(kv_a, self.kv, input_pos, cos, sin, norm.weight, norm.eps, interleave, query,
                                use_kernel, block_table)
        return self.kv, query
