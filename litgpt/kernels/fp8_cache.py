"""FP8 KV-cache entries (`kv_cache_dtype: fp8_e4m3`): values in float8 e4m3 with float32 scales, quantized as they
are written, dequantized as they are read. No calibration: each scale is its block's absolute maximum / 448 (e4m3's
largest finite value), computed from the token being written.

`Fp8Rows` is one cache buffer in this format: `data` (..., D_q) e4m3 with `scale` (..., ceil(D_q / block)) float32,
one per `block` consecutive values of a row (the last block may be shorter), and an optional `tail` (..., D_t) kept
in the model's dtype, appended after the dequantized values. MLA's latent cache quantizes the normalised latent in
blocks of at most 128 values and keeps the rope key as the tail (DeepSeek's 512 + 64: 512 bytes, four scales and
64 bf16 values, 656 bytes per token); an MHA/GQA/MQA cache quantizes each head of K and V with its own scale
(block = head size, no tail). The leading dims are the dense buffer's ((B, S) or (B, G, S), or a pool's (pages,
page_size[, G])), so indexing, narrowing and page gathers apply to every part alike (`map`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # the largest finite e4m3fn value
LATENT_BLOCK = 128  # MLA: one scale per block of at most this many latent values
MAX_SCALE_BLOCKS = 4  # scales per token the Triton decode kernel takes (DeepSeek's 512-wide latent in 4 blocks)
# The smallest scale: a block whose absolute maximum is 0 (or below 448 * 2**-126) gets 2**-126, so the division
# never sees 0 and its values stay exactly 0 (or within e4m3's subnormal step of it).
MIN_SCALE = torch.finfo(torch.float32).tiny


def num_blocks(width: int, block: int) -> int:
    """Scales per row of `width` quantized values in blocks of at most `block`."""
    return -(-width // block)


@dataclass(frozen=True)
class Fp8Rows:
    """One cache buffer in e4m3: data (..., D_q) float8_e4m3fn, scale (..., ceil(D_q / block)) float32, tail
    (..., D_t) in `dtype` or None; reads as (..., D_q + D_t) in `dtype` (`dequantize`)."""

    data: torch.Tensor
    scale: torch.Tensor
    tail: Optional[torch.Tensor]
    block: int
    dtype: torch.dtype

    @property
    def tail_width(self) -> int:
        return 0 if self.tail is None else self.tail.size(-1)

    @property
    def shape(self) -> torch.Size:
        """The dense buffer's shape (..., D_q + D_t)."""
        return self.data.shape[:-1] + (self.data.size(-1) + self.tail_width,)

    def dim(self) -> int:
        return self.data.dim()

    def size(self, dim: int) -> int:
        return self.shape[dim]

    @property
    def device(self) -> torch.device:
        return self.data.device

    def parts(self) -> tuple[torch.Tensor, ...]:
        """(data, scale) or (data, scale, tail): the buffers, in the order `quantize_rows` returns them."""
        return (self.data, self.scale) if self.tail is None else (self.data, self.scale, self.tail)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Fp8Rows":
        """The same rows with `fn` applied to every part (an index, narrow or gather over the leading dims)."""
        return Fp8Rows(fn(self.data), fn(self.scale), None if self.tail is None else fn(self.tail), self.block,
                       self.dtype)

    def narrow(self, dim: int, start: int, length: int) -> "Fp8Rows":
        """`torch.Tensor.narrow` over a leading dim (not the last)."""
        return self.map(lambda t: t.narrow(dim, start, length))

    def dequantize(self) -> torch.Tensor:
        """The dense rows (..., D_q + D_t) in `dtype`."""
        values = dequantize_rows(self.data, self.scale, self.block, self.dtype)  # (..., D_q)
        return values if self.tail is None else torch.cat((values, self.tail.to(self.dtype)), dim=-1)


def quantize_rows(x: torch.Tensor, block: int, tail_width: int = 0) -> tuple[torch.Tensor, ...]:
    """Rows x (..., D_q + D_t) -> (data (..., D_q) e4m3, scale (..., ceil(D_q / block)) float32) and, with a tail,
    its last D_t values unchanged: `Fp8Rows.parts` order. Each scale is amax(|block|) / 448 in float32."""
    width = x.size(-1) - tail_width
    values = x[..., :width].float()  # (..., D_q)
    n = num_blocks(width, block)
    blocks = F.pad(values, (0, n * block - width)).unflatten(-1, (n, block))  # (..., n, block), zero padded
    amax = blocks.abs().amax(dim=-1)  # (..., n)
    scale = torch.clamp(amax, min=E4M3_MAX * MIN_SCALE) / E4M3_MAX  # (..., n)
    data = (blocks / scale.unsqueeze(-1)).clamp(-E4M3_MAX, E4M3_MAX).flatten(-2)[..., :width].to(E4M3)
    return (data, scale) if tail_width == 0 else (data, scale, x[..., width:])


def dequantize_rows(data: torch.Tensor, scale: torch.Tensor, block: int, dtype: torch.dtype) -> torch.Tensor:
    """data (..., D_q) e4m3 times its block scales (..., ceil(D_q / block)) -> (..., D_q) in dtype (float32 product)."""
    width = data.size(-1)
    per_value = scale.repeat_interleave(block, dim=-1)[..., :width] if scale.size(-1) > 1 else scale  # (..., D_q)
    return (data.float() * per_value).to(dtype)


def as_dense(cache: torch.Tensor | Fp8Rows) -> torch.Tensor:
    """A cache buffer (or a view of one) as dense values: `Fp8Rows.dequantize`, or the tensor itself."""
    return cache.dequantize() if isinstance(cache, Fp8Rows) else cache
