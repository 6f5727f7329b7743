"""Rotary position embeddings: the cos/sin cache and its two layouts.

Rotate-half (GPT-NeoX, Llama) pairs dimension i with i + n/2; interleaved (DeepSeek, GPT-J) pairs 2i with
2i+1. Both rotate the same frequencies, so a converter only has to permute weights to move between them.
"""

from __future__ import annotations

from typing import Optional

import torch


def build_rope_cache(
    seq_len: int,
    n_elem: int,
    device: Optional[torch.device] = None,
    base: int = 10000,
    condense_ratio: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (seq_len, n_elem) in float32, in rotate-half order (each frequency twice)."""
    theta = 1.0 / (base ** (torch.arange(0, n_elem, 2, device=device, dtype=torch.float32) / n_elem))  # (n_elem/2,)
    positions = torch.arange(seq_len, device=device, dtype=torch.float32) / condense_ratio  # (seq_len,)
    angles = torch.outer(positions, theta)  # (seq_len, n_elem/2)
    angles = torch.cat((angles, angles), dim=-1)  # (seq_len, n_elem)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool = False) -> torch.Tensor:
    """Rotate the last dim of x (..., T, n_elem) by positions given as cos/sin of shape (T, n) or (B, T, n).

    With (B, T, n) cos/sin and a 4-d x (B, H, T, n) the rotation broadcasts over heads.
    """
    if cos.dim() == 3 and x.dim() == 4:
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, n)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if interleave:
        half = x.size(-1) // 2
        cos, sin = cos[..., :half], sin[..., :half]  # each frequency once: (.., T, n/2)
        x_even, x_odd = x[..., 0::2], x[..., 1::2]  # (..., T, n/2)
        rotated = torch.stack((x_even * cos - x_odd * sin, x_odd * cos + x_even * sin), dim=-1)  # (..., T, n/2, 2)
        return rotated.flatten(-2)
    x1, x2 = x.chunk(2, dim=-1)  # (..., T, n/2)
    rotated_half = torch.cat((-x2, x1), dim=-1)  # (..., T, n)
    return x * cos + rotated_half * sin


def apply_partial_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_elem: int, interleave: bool = False
) -> torch.Tensor:
    """Rotate the first n_elem dims of each head of x (B, H, T, hs); the rest pass through."""
    if n_elem == x.size(-1):
        return apply_rope(x, cos, sin, interleave)
    if n_elem == 0:
        return x
    roped = apply_rope(x[..., :n_elem], cos, sin, interleave)
    return torch.cat((roped, x[..., n_elem:]), dim=-1)


def apply_rope_last(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool = False) -> torch.Tensor:
    """Rotate the last cos.size(-1) dims of x (..., T, d + n_elem); the first d pass through (MLA's [q | q_rope])."""
    n_elem = cos.size(-1)
    rest, roped = x.split((x.size(-1) - n_elem, n_elem), dim=-1)
    return torch.cat((rest, apply_rope(roped, cos, sin, interleave)), dim=-1)
