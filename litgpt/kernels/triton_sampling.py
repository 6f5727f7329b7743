"""Triton Gumbel-max draw over a decode step's top-k candidates, one program per row (needs `triton`).

`_gumbel_top_k_kernel` takes a row's k candidate logits (bf16/fp16/fp32) and token ids (int64), hashes
(row seed, position, token id) into 32-bit integers in uint32 arithmetic (the `mix32` of `litgpt.kernels.sampling`:
products wrap, shifts are logical), turns them into the same uniform and Gumbel noise in fp32 and writes the token
id of argmax(logit / temperature + noise), the first on ties as torch's argmax. One launch for what the torch path
runs as about ten elementwise kernels after the top-k.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from litgpt.kernels._triton import on_device

MAX_K = 1024  # candidates of one row: a single block
NUM_WARPS = 4


@triton.jit
def _mix32(x):
    """The 32-bit xorshift-multiply hash on uint32 values (the multiplications wrap modulo 2**32)."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x2C1B3C6D
    return x ^ (x >> 16)


# the reductions through tl.reduce with combine functions of this module, not tl.max/tl.argmax: those are jitted
# when triton is imported, so the tests' interpreted copy of this module could not call them
@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


@triton.jit
def _minimum(a, b):
    return tl.minimum(a, b)


@triton.jit
def _log(x, PRECISE: tl.constexpr):
    """Natural log in fp32: libdevice's (as torch's logf on CUDA) when PRECISE, else tl.log (the interpreter's;
    on the GPU tl.log is an approximation)."""
    if PRECISE:
        return libdevice.log(x)
    else:
        return tl.log(x)


@triton.jit
def _gumbel_top_k_kernel(VALUES, IDS, SEEDS, POS, OUT, stride_v, stride_i, stride_s, stride_p, K, inv_temperature,
                         BLOCK: tl.constexpr, PRECISE_LOG: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    valid = offs < K
    logits = tl.load(VALUES + row * stride_v + offs, mask=valid, other=0.0).to(tl.float32) * inv_temperature
    ids = tl.load(IDS + row * stride_i + offs, mask=valid, other=0)  # (BLOCK,) int64
    seed = tl.load(SEEDS + row * stride_s).to(tl.uint32)  # values in [0, 2**32): the low 32 bits are the value
    position = tl.load(POS + row * stride_p).to(tl.uint32)  # truncation == position & 0xFFFFFFFF
    key = _mix32(seed ^ _mix32(position))
    token_hash = _mix32(ids.to(tl.uint32) ^ 0x9E3779B9)
    bits = _mix32(token_hash ^ key)  # (BLOCK,) uniform 32-bit integers
    uniform = ((bits >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)  # in (0, 1), exact: 24 bits
    gumbel = -_log(-_log(uniform, PRECISE_LOG), PRECISE_LOG)
    scores = tl.where(valid, logits + gumbel, float("-inf"))
    best = tl.reduce(scores, 0, _maximum)
    choice = tl.reduce(tl.where(scores == best, offs, BLOCK), 0, _minimum)  # the first maximum, as torch.argmax
    tl.store(OUT + row, tl.load(IDS + row * stride_i + choice))


def gumbel_top_k_sample(values: torch.Tensor, token_ids: torch.Tensor, row_seeds: torch.Tensor,
                        positions: torch.Tensor, inv_temperature: float) -> torch.Tensor:
    """The sampled token ids (B, 1) int64 from candidates values (B, k) and token_ids (B, k) (unit last strides,
    k <= MAX_K), with row_seeds (B,) and positions (B,) int64 (any strides, 0 included)."""
    B, K = values.shape
    out = torch.empty(B, 1, dtype=torch.int64, device=values.device)
    with on_device(values):
        _gumbel_top_k_kernel[(B,)](values, token_ids, row_seeds, positions, out, values.stride(0), token_ids.stride(0),
                                   row_seeds.stride(0), positions.stride(0), K, inv_temperature,
                                   BLOCK=triton.next_power_of_2(K), PRECISE_LOG=values.is_cuda, num_warps=NUM_WARPS)
    return out
