"""Triton GEMV for decode at batch 1: y = W [prologue(x)] + bias (+ residual) for one row of x (needs `triton`).

At batch 1 a decode step's linear maps are matrix-vector products. cuBLAS runs them as GEMM tiles of 64 x 8 (plus,
for a long reduction such as a folded block's output map 6144 -> 768, a split-K reduction pass) and the residual
add is one more launch. Here each program owns `BLOCK_N` output columns and streams their weight rows once, through
all K, on the CUDA cores with fp32 accumulation, adding bias and residual in the same pass. The tile shape is
autotuned per (N, K) on the first call (so before any CUDA-graph capture), and the choice is kept in Triton's on-disk
cache where this Triton can (`cache_results`), so later processes do not tune again; nothing depends on values.

Two prologues save a launch each where a folded block feeds a map (`litgpt.fold`):
  NORM  -- x is normalised first (1: LayerNorm, 2: RMSNorm; unit gain, the gain and shift being folded into W):
           every program reduces the row itself, from registers when one BLOCK_K tile holds it, else in extra
           passes over values that sit in L2;
  ACT   -- the input is [x (K1 values) | act(tail)] (1: exact GELU, 2: tanh GELU, 3: SwiGLU over a tail of 2 (K - K1)
           values): a parallel-residual block's output map reads the attention output and the MLP's pre-activation.
H100 (benchmarks/RESULTS.md), bias + residual included: 7.5 / 7.1 / 6.0 / 5.0 us against cuBLAS's 9.2 / 9.8 /
7.9 / 9.3 us for pythia-160m's folded maps (768 -> 6816, 6144 -> 768, 768 -> 5376, 3840 -> 768). With more rows
(M = 4, 8) a fixed-tile version of this design lost badly to cuBLAS, so the caller (`litgpt.kernels.linear`)
sends only one-row products here.
"""

from __future__ import annotations

import inspect
from typing import Optional

import torch
import triton
import triton.language as tl

from litgpt.kernels._triton import on_device

NORMS = {None: 0, "layer": 1, "rms": 2}
ACTS = {None: 0, "gelu": 1, "gelu_tanh": 2, "swiglu": 3}
_SQRT_HALF = tl.constexpr(0.7071067811865476)
_TANH_SCALE = tl.constexpr(1.5957691216057308)  # 2 * sqrt(2 / pi): 0.5 (1 + tanh(u)) = sigmoid(2 u)

_CONFIGS = [
    triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=3)
    for n, k in ((2, 4096), (4, 2048), (8, 1024), (16, 512), (32, 256))
    for w in (4, 8)
]


@triton.jit
def _load_input(X, TAIL, offs_m, offs_k, m_ok, k_ok, stride_xm, stride_tm, K1, K, ACT: tl.constexpr):
    """(BLOCK_M, BLOCK_K) fp32 values of the map's input at columns offs_k (0 outside K)."""
    if ACT == 0:
        return tl.load(X + offs_m[:, None] * stride_xm + offs_k[None, :], mask=m_ok[:, None] & k_ok[None, :],
                       other=0.0).to(tl.float32)
    head_ok = m_ok[:, None] & (k_ok & (offs_k < K1))[None, :]
    tail_ok = m_ok[:, None] & (k_ok & (offs_k >= K1))[None, :]
    head = tl.load(X + offs_m[:, None] * stride_xm + offs_k[None, :], mask=head_ok, other=0.0).to(tl.float32)
    tail_ptr = TAIL + offs_m[:, None] * stride_tm + (offs_k - K1)[None, :]
    t = tl.load(tail_ptr, mask=tail_ok, other=0.0).to(tl.float32)
    if ACT == 1:
        act = 0.5 * t * (1.0 + tl.erf(t * _SQRT_HALF))
    elif ACT == 2:
        act = t * tl.sigmoid(_TANH_SCALE * (t + 0.044715 * t * t * t))
    else:  # SwiGLU: tail = [a | b], each K - K1 wide
        b = tl.load(tail_ptr + (K - K1), mask=tail_ok, other=0.0).to(tl.float32)
        act = t * tl.sigmoid(t) * b
    return tl.where(head_ok, head, act)


@triton.jit
def _normalize(x, k_ok, mean, K, eps):
    """x (BLOCK_M, BLOCK_K) holding whole rows (0 outside k_ok) -> (x - mean) / sqrt(centred second moment + eps)."""
    centred = tl.where(k_ok[None, :], x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / K + eps)
    return centred * rstd[:, None]


# Triton >= 3.2 can keep autotuning results on disk (in its cache directory, beside the compiled kernels)
_AUTOTUNE_CACHE = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}


@triton.autotune(configs=_CONFIGS, key=["N", "K", "HAS_BIAS", "HAS_RES", "NORM", "ACT"], **_AUTOTUNE_CACHE)
@triton.jit
def _gemv_kernel(
    X, TAIL, W, BIAS, RES, Y,
    M, N, K: tl.constexpr, K1, eps,
    stride_xm, stride_tm, stride_wn, stride_rm, stride_ym,
    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, NORM: tl.constexpr, ACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if NORM != 0 and K <= BLOCK_K:  # one tile holds the row: its statistics come from registers, no extra pass
        offs_k = tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        w = tl.load(W + offs_n[:, None] * stride_wn + offs_k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        x = _load_input(X, TAIL, offs_m, offs_k, m_ok, k_ok, stride_xm, stride_tm, K1, K, ACT)
        mean = tl.zeros([BLOCK_M], dtype=tl.float32)
        if NORM == 1:
            mean = tl.sum(x, axis=1) / K
        x = _normalize(x, k_ok, mean, K, eps)
        acc += tl.sum(x[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)  # (BLOCK_M, BLOCK_N)
    else:
        mean = tl.zeros([BLOCK_M], dtype=tl.float32)
        squares = tl.zeros([BLOCK_M], dtype=tl.float32)
        if NORM != 0:  # statistics of the row over K in passes of BLOCK_K values (they sit in L2)
            if NORM == 1:
                for k0 in range(0, K, BLOCK_K):
                    offs_k = k0 + tl.arange(0, BLOCK_K)
                    mean += tl.sum(_load_input(X, TAIL, offs_m, offs_k, m_ok, offs_k < K, stride_xm, stride_tm, K1,
                                               K, ACT), axis=1) / K
            for k0 in range(0, K, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                k_ok = offs_k < K
                x = _load_input(X, TAIL, offs_m, offs_k, m_ok, k_ok, stride_xm, stride_tm, K1, K, ACT)
                centred = tl.where(k_ok[None, :], x - mean[:, None], 0.0)
                squares += tl.sum(centred * centred, axis=1)
        rstd = 1.0 / tl.sqrt(squares / K + eps)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            w = tl.load(W + offs_n[:, None] * stride_wn + offs_k[None, :], mask=n_ok[:, None] & k_ok[None, :],
                        other=0.0)
            x = _load_input(X, TAIL, offs_m, offs_k, m_ok, k_ok, stride_xm, stride_tm, K1, K, ACT)
            if NORM != 0:
                x = (x - mean[:, None]) * rstd[:, None]
            acc += tl.sum(x[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)  # (BLOCK_M, BLOCK_N)
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    if HAS_RES:
        acc += tl.load(RES + offs_m[:, None] * stride_rm + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(Y.dtype.element_ty), mask=mask)


def gemv(
    x: Optional[torch.Tensor],
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    residual: Optional[torch.Tensor],
    tail: Optional[torch.Tensor] = None,
    norm: Optional[str] = None,
    eps: float = 1e-5,
    activation: Optional[str] = None,
) -> torch.Tensor:
    """weight (N, K) @ input + bias (N,) + residual (M, N) -> (M, N) in the inputs' dtype, all row-contiguous.

    The input is x (M, K), normalised first with norm "layer" or "rms" (unit gain); or, with an activation,
    [x (M, K1) | activation(tail)] where x may be None (K1 = 0) and tail is (M, K - K1), or (M, 2 (K - K1)) for
    "swiglu". Correct for any M, fast for M = 1.
    """
    source = x if x is not None else tail
    M, N, K = source.size(0), weight.size(0), weight.size(1)
    K1 = 0 if activation is None or x is None else x.size(1)
    y = torch.empty(M, N, device=weight.device, dtype=source.dtype)
    x = x if x is not None else tail  # a pointer the kernel never reads when K1 = 0 (or, below, with ACT = 0)
    tail = tail if tail is not None else x
    with on_device(y):
        _gemv_kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)](
            x, tail, weight, bias if bias is not None else y, residual if residual is not None else y, y,
            M, N, K, K1, eps,
            x.stride(0), tail.stride(0), weight.stride(0), residual.stride(0) if residual is not None else 0, y.stride(0),
            HAS_BIAS=bias is not None, HAS_RES=residual is not None, NORM=NORMS[norm], ACT=ACTS[activation],
            BLOCK_M=triton.next_power_of_2(M),
        )
    return y
