"""Static KV caches. Both are preallocated once; a write fills new positions in place and returns the whole buffer,
so a decode step has fixed shapes, no reallocation and no host sync.

`KVCache` holds per-group K and V (MHA/GQA/MQA). `KVCacheCompressed` holds, for MLA, only the normalised latent and
the roped rope key, side by side in one buffer: kv_lora_rank + qk_rope_head_dim values per token. Each cache owns
its write: `KVCacheCompressed.write` turns kv_a_proj's output into those entries itself, and `KVCache.write_qkv`
the fused qkv projection's output (each a Triton launch on CUDA for a one-token step).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from litgpt.kernels import gqa_cache_write, mla_cache_write, write_positions


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
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write the new tokens' roped keys and values from the qkv rows (B, T, (nh + 2 G) hs) at input_pos; return
        their query (B, nh, T, hs), roped at the same positions, and the full caches (B, G, S, hs).

        One launch for a one-token step on CUDA (`litgpt.kernels.gqa_cache_write`). cos, sin: the rope rows at
        input_pos ((T, rope_n_elem) or (B, T, rope_n_elem)), which rotate the first rope_n_elem dims of each query
        head and key group.
        """
        q = gqa_cache_write(qkv, self.k, self.v, input_pos, cos, sin, n_head, rope_n_elem, interleave, use_kernel)
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
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Write the new tokens' [norm(latent) | rope(k_R)] from kv_a_proj's output kv_a (B, T, d_c + d_R) at
        input_pos; return the whole buffer (B, S, d_c + d_R) and, if given, `query` (B, h, T, d_c + d_R) with its
        rope part roped at the same positions (the kernel rotates it in the same launch; `litgpt.kernels`).

        norm: kv_a_norm (an RMSNorm: its weight and eps are read); cos, sin: the rope rows at input_pos; use_kernel
        False keeps the write on the torch path.
        """
        query = mla_cache_write(kv_a, self.kv, input_pos, cos, sin, norm.weight, norm.eps, interleave, query,
                                use_kernel)
        return self.kv, query
