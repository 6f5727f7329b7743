"""Triton Gumbel-max draws for a decode step's top-k sampling (needs `triton`).

`_gumbel_top_k_kernel` takes a row's k candidate logits (bf16/fp16/fp32) and token ids (int64), hashes
(row seed, position, token id) into 32-bit integers in uint32 arithmetic (the `mix32` of `litgpt.kernels.sampling`:
products wrap, shifts are logical), turns them into the same uniform and Gumbel noise in fp32 and writes the token
id of argmax(logit / temperature + noise), the first on ties as torch's argmax. One launch for what the torch path
runs as about ten elementwise kernels after the top-k.

`fused_top_k_sample` does the top-k too, over the raw logits, in two launches instead of torch.topk's several: each
program of `_chunk_top_k_kernel` keeps the top KP (k rounded up to a power of two) of CHUNK logits of a row, and one
program per row of `_merge_draw_kernel` keeps the top k of those and draws among them as above. A candidate is an
int64 key, the logit's fp32 bits made order-preserving in the high half and 2**32 - 1 - token id in the low half, so
`tl.topk` ranks by logit and, on equal logits, takes the smaller token id first (the order of a stable descending
sort; torch.topk breaks such ties arbitrarily).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from litgpt.kernels._triton import on_device

MAX_K = 1024  # candidates of one row: a single block
NUM_WARPS = 4
CHUNK = 2048  # logits per program of the fused top-k's first pass
FUSED_MAX_K = 128  # the fused top-k's k: its merge holds (vocab / CHUNK) x KP keys in one program
LOW_BITS = tl.constexpr(0xFFFFFFFF)  # the low half of a key: 2**32 - 1 - token id
MIN_KEY = tl.constexpr(-(2**63))  # below every key: the padding


@triton.jit
def _mix32(x):
    """The 32-bit xorshift-multiply hash on uint32 values (the multiplications wrap modulo 2**32)."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x2C1B3C6D
    return x ^ (x >> 16)


# the reductions through tl.reduce with combine functions of this module, not tl.max/tl.argmax: those are jitted
# when triton is imported, so an interpreted copy of this module runs its own reductions without swapping any of
# triton.language's functions for interpreted twins
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
def _gumbel_argmax(scaled, ids, valid, lanes, SEEDS, POS, row, stride_s, stride_p, PRECISE_LOG: tl.constexpr):
    """The lane of argmax(scaled + Gumbel noise) over the valid lanes, the first on ties as torch's argmax; the noise
    of a lane hashes (row seed, position, token id) as `litgpt.kernels.sampling.gumbel_noise` does."""
    seed = tl.load(SEEDS + row * stride_s).to(tl.uint32)  # values in [0, 2**32): the low 32 bits are the value
    position = tl.load(POS + row * stride_p).to(tl.uint32)  # truncation == position & 0xFFFFFFFF
    key = _mix32(seed ^ _mix32(position))
    token_hash = _mix32(ids.to(tl.uint32) ^ 0x9E3779B9)
    bits = _mix32(token_hash ^ key)  # uniform 32-bit integers
    uniform = ((bits >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)  # in (0, 1), exact: 24 bits
    gumbel = -_log(-_log(uniform, PRECISE_LOG), PRECISE_LOG)
    scores = tl.where(valid, scaled + gumbel, float("-inf"))
    best = tl.reduce(scores, 0, _maximum)
    return tl.reduce(tl.where(scores == best, lanes, 2147483647), 0, _minimum)


@triton.jit
def _gumbel_top_k_kernel(VALUES, IDS, SEEDS, POS, OUT, stride_v, stride_i, stride_s, stride_p, K, inv_temperature,
                         BLOCK: tl.constexpr, PRECISE_LOG: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    valid = offs < K
    logits = tl.load(VALUES + row * stride_v + offs, mask=valid, other=0.0).to(tl.float32) * inv_temperature
    ids = tl.load(IDS + row * stride_i + offs, mask=valid, other=0)  # (BLOCK,) int64
    choice = _gumbel_argmax(logits, ids, valid, offs, SEEDS, POS, row, stride_s, stride_p, PRECISE_LOG)
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


@triton.jit
def _key(logits, ids):
    """int64 keys ordered as (fp32 logit, then smaller token id): the high 32 bits the logit's bits with the
    magnitude bits of negatives flipped (so signed order is float order), the low 32 bits 2**32 - 1 - id."""
    bits = (logits + 0.0).to(tl.int32, bitcast=True)  # -0.0 + 0.0 is +0.0: the two zeros tie, as they compare
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(tl.int64)
    return (ordered << 32) + (LOW_BITS - ids.to(tl.int64))


@triton.jit
def _key_logit(keys):
    """The fp32 logit of `_key`'s keys."""
    ordered = (keys >> 32).to(tl.int32)
    return tl.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered).to(tl.float32, bitcast=True)


@triton.jit
def _chunk_top_k_kernel(LOGITS, KEYS, stride_l, V, N_CHUNKS, CHUNK: tl.constexpr, KP: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    ids = chunk * CHUNK + tl.arange(0, CHUNK)
    valid = ids < V
    logits = tl.load(LOGITS + row * stride_l + ids, mask=valid, other=0.0).to(tl.float32)
    keys = tl.where(valid, _key(logits, ids), MIN_KEY)  # (CHUNK,); padding: the smallest key
    top = tl.topk(keys, KP)  # (KP,) descending
    tl.store(KEYS + (row * N_CHUNKS + chunk) * KP + tl.arange(0, KP), top)


@triton.jit
def _merge_draw_kernel(KEYS, SEEDS, POS, OUT, stride_s, stride_p, N_KEYS, K, inv_temperature, NP: tl.constexpr,
                       KP: tl.constexpr, PRECISE_LOG: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, NP)
    keys = tl.load(KEYS + row * N_KEYS + offs, mask=offs < N_KEYS, other=MIN_KEY)
    top = tl.topk(keys, KP)  # (KP,) descending: the row's top KP keys
    rank = tl.arange(0, KP)
    valid = rank < K  # the k largest
    ids = LOW_BITS - (top & LOW_BITS)  # (KP,) token ids
    logits = _key_logit(top) * inv_temperature
    # on ties the first lane: the highest-ranked key
    choice = _gumbel_argmax(logits, ids, valid, rank, SEEDS, POS, row, stride_s, stride_p, PRECISE_LOG)
    tl.store(OUT + row, tl.reduce(tl.where(rank == choice, ids, 0), 0, _maximum))


def fused_top_k_sample(logits: torch.Tensor, vocab_size: int, k: int, row_seeds: torch.Tensor,
                       positions: torch.Tensor, inv_temperature: float, chunk: int = CHUNK) -> torch.Tensor:
    """The sampled token ids (B, 1) int64 from logits (B, >= vocab_size) (unit last stride; columns past vocab_size
    ignored): the Gumbel-max draw among each row's top k (k <= FUSED_MAX_K), with row_seeds (B,) and positions (B,)
    int64 (any strides, 0 included). `chunk` (a power of two >= k): logits per program of the first pass."""
    B = logits.size(0)
    kp = max(2, triton.next_power_of_2(k))  # tl.topk keeps at least two
    n_chunks = triton.cdiv(vocab_size, chunk)
    keys = torch.empty(B, n_chunks * kp, dtype=torch.int64, device=logits.device)
    out = torch.empty(B, 1, dtype=torch.int64, device=logits.device)
    with on_device(logits):
        _chunk_top_k_kernel[(B, n_chunks)](logits, keys, logits.stride(0), vocab_size, n_chunks, CHUNK=chunk, KP=kp,
                                           num_warps=NUM_WARPS)
        _merge_draw_kernel[(B,)](keys, row_seeds, positions, out, row_seeds.stride(0), positions.stride(0),
                                 n_chunks * kp, k, inv_temperature, NP=triton.next_power_of_2(n_chunks * kp), KP=kp,
                                 PRECISE_LOG=logits.is_cuda, num_warps=NUM_WARPS)
    return out
