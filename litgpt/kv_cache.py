"""Static KV caches. Both are preallocated once; an update writes new positions in place and returns the
whole buffer, so a decode step has fixed shapes, no reallocation and no host sync.

`KVCache` holds per-group K and V (MHA/GQA/MQA). `KVCacheCompressed` holds, for MLA, only the normalised
latent and the roped rope key, side by side in one buffer: kv_lora_rank + qk_rope_head_dim values per token.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def _write(buffer: torch.Tensor, input_pos: torch.Tensor, values: torch.Tensor, seq_dim: int) -> None:
    """buffer[..., input_pos, ...] = values along seq_dim; input_pos is (T,) or per-row (B, T).

    Both forms write in place: per-row positions index every dim up to seq_dim with broadcast index tensors
    (batch, then any head-group dims, then position), so the indexed shape equals the values' shape.
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


class KVCache(nn.Module):
    """Keys and values of shape (B, n_query_groups, max_seq_length, head_size)."""

    def __init__(
        self,
        batch_size: int,
        n_query_groups: int,
        max_seq_length: int,
        head_size: int,
        v_head_size: Optional[int] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        v_head_size = head_size if v_head_size is None else v_head_size
        k_shape = (batch_size, n_query_groups, max_seq_length, head_size)
        v_shape = (batch_size, n_query_groups, max_seq_length, v_head_size)
        self.register_buffer("k", torch.zeros(k_shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(v_shape, device=device, dtype=dtype), persistent=False)

    def forward(
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, G, T, hs) at input_pos and return the full caches (B, G, S, hs)."""
        _write(self.k, input_pos, k, seq_dim=2)
        _write(self.v, input_pos, v, seq_dim=2)
        return self.k, self.v

    def reset_parameters(self) -> None:
        self.k.zero_()
        self.v.zero_()


class KVCacheCompressed(nn.Module):
    """MLA cache: one buffer `kv` of shape (B, max_seq_length, kv_lora_rank + qk_rope_head_dim).

    `kv[..., :kv_lora_rank]` is the normalised latent c (it serves as both keys and values in the absorbed
    path); `kv[..., kv_lora_rank:]` is the roped key shared by all heads.
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
        self.kv_lora_rank = kv_lora_rank
        shape = (batch_size, max_seq_length, kv_lora_rank + qk_rope_head_dim)
        self.register_buffer("kv", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def forward(self, input_pos: torch.Tensor, latent: torch.Tensor, k_rope: torch.Tensor) -> torch.Tensor:
        """Write latent (B, T, d_c) and k_rope (B, T, d_R) at input_pos; return the full buffer (B, S, d_c+d_R)."""
        _write(self.kv, input_pos, torch.cat((latent, k_rope), dim=-1), seq_dim=1)
        return self.kv

    def reset_parameters(self) -> None:
        self.kv.zero_()
