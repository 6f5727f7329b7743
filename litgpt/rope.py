"""Rotary position embeddings: the cos/sin cache and its two layouts, optionally YaRN-scaled.

Rotate-half (GPT-NeoX, Llama) pairs dimension i with i + n/2; interleaved (DeepSeek, GPT-J) pairs 2i with
2i+1. Both rotate the same frequencies, so a converter only has to permute weights to move between them.

YaRN (`config.rope_adjustments`, DeepSeek's form): frequencies that turn fewer than beta_slow times over the
original context are interpolated (divided by `factor`), those that turn more than beta_fast times are kept, and a
linear ramp blends the ones between. The cos/sin tables are scaled by mscale(factor, mscale) /
mscale(factor, mscale_all_dim), so roped query and key parts grow by that much each, and attention's softmax scale
is multiplied by mscale(factor, mscale_all_dim)^2 (`softmax_scale_multiplier`), where
mscale(s, m) = 0.1 m ln(s) + 1 for s > 1, else 1.

Llama 3 scaling (`rope_adjustments` with upstream litgpt's keys factor, low_freq_factor, high_freq_factor,
original_max_seq_len; `is_llama3`): wavelengths 2*pi/freq longer than original_max_seq_len / low_freq_factor are
divided by `factor`, those shorter than original_max_seq_len / high_freq_factor are kept, and between the two the
frequency is a blend with weight s = (original_max_seq_len / wavelength - low) / (high - low) on the kept one. No
magnitude correction: the attention factor and softmax multiplier stay 1.
"""

from __future__ import annotations

import math
from typing import Optional

import torch


LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_seq_len")


def is_llama3(adjustments: Optional[dict]) -> bool:
    """Whether rope_adjustments are Llama 3's (they carry low_freq_factor or high_freq_factor) rather than YaRN's."""
    return adjustments is not None and ("low_freq_factor" in adjustments or "high_freq_factor" in adjustments)


def yarn_mscale(factor: float, mscale: float) -> float:
    """DeepSeek's YaRN magnitude correction: 0.1 * mscale * ln(factor) + 1 (1 without scaling)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def rope_attention_factor(adjustments: Optional[dict]) -> float:
    """What the cos/sin tables are multiplied by: mscale(factor, mscale) / mscale(factor, mscale_all_dim)."""
    if adjustments is None or is_llama3(adjustments):
        return 1.0
    factor = adjustments["factor"]
    return yarn_mscale(factor, adjustments["mscale"]) / yarn_mscale(factor, adjustments["mscale_all_dim"])


def softmax_scale_multiplier(adjustments: Optional[dict]) -> float:
    """What attention's 1/sqrt(d) softmax scale is multiplied by: mscale(factor, mscale_all_dim)^2 (1 without YaRN)."""
    if adjustments is None or is_llama3(adjustments):
        return 1.0
    return yarn_mscale(adjustments["factor"], adjustments["mscale_all_dim"]) ** 2


def yarn_frequencies(
    n_elem: int, base: float, adjustments: dict, device: Optional[torch.device] = None
) -> torch.Tensor:
    """YaRN's rotation frequencies (n_elem/2,) in float32: the ramp blend of the original and the interpolated ones."""
    factor, original = adjustments["factor"], adjustments["original_max_seq_len"]

    def dim_turning(turns: float) -> float:  # the (fractional) frequency index that turns `turns` times over `original`
        return n_elem * math.log(original / (turns * 2 * math.pi)) / (2 * math.log(base))

    low, high = dim_turning(adjustments["beta_fast"]), dim_turning(adjustments["beta_slow"])
    if adjustments["truncate"]:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, n_elem - 1)
    if low == high:
        high += 0.001  # a step instead of a ramp, without dividing by zero
    powers = base ** (torch.arange(0, n_elem, 2, device=device, dtype=torch.float32) / n_elem)  # (n_elem/2,)
    ramp = ((torch.arange(n_elem // 2, device=device, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: the original frequency (fast, turns often), 0: interpolated (slow)
    return (1.0 / (factor * powers)) * (1 - keep) + (1.0 / powers) * keep


def llama3_frequencies(
    n_elem: int, base: float, adjustments: dict, device: Optional[torch.device] = None
) -> torch.Tensor:
    """Llama 3's rotation frequencies (n_elem/2,) in float32 (see the module docstring)."""
    factor, original = adjustments["factor"], adjustments["original_max_seq_len"]
    low, high = adjustments["low_freq_factor"], adjustments["high_freq_factor"]
    theta = 1.0 / (base ** (torch.arange(0, n_elem, 2, device=device, dtype=torch.float32) / n_elem))  # (n_elem/2,)
    wavelength = 2 * math.pi / theta  # (n_elem/2,)
    slow = wavelength > original / low  # interpolated: divided by factor
    fast = wavelength < original / high  # kept
    blend = (original / wavelength - low) / (high - low)  # (n_elem/2,) weight of the kept frequency
    mixed = (1 - blend) * theta / factor + blend * theta
    return torch.where(slow, theta / factor, torch.where(fast, theta, mixed))


def build_rope_cache(
    seq_len: int,
    n_elem: int,
    device: Optional[torch.device] = None,
    base: int = 10000,
    condense_ratio: int = 1,
    adjustments: Optional[dict] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (seq_len, n_elem) in float32, in rotate-half order (each frequency twice); with YaRN
    `adjustments` (a resolved `config.rope_adjustments`), its frequencies and its attention factor; with Llama 3's,
    its frequencies."""
    if is_llama3(adjustments):
        theta = llama3_frequencies(n_elem, base, adjustments, device)  # (n_elem/2,)
    elif adjustments is None:
        theta = 1.0 / (base ** (torch.arange(0, n_elem, 2, device=device, dtype=torch.float32) / n_elem))  # (n_elem/2,)
    else:
        theta = yarn_frequencies(n_elem, base, adjustments, device)  # (n_elem/2,)
    positions = torch.arange(seq_len, device=device, dtype=torch.float32) / condense_ratio  # (seq_len,)
    angles = torch.outer(positions, theta)  # (seq_len, n_elem/2)
    angles = torch.cat((angles, angles), dim=-1)  # (seq_len, n_elem)
    factor = rope_attention_factor(adjustments)
    if factor == 1.0:
        return torch.cos(angles), torch.sin(angles)
    return torch.cos(angles) * factor, torch.sin(angles) * factor


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
