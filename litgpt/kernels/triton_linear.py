"""Triton GEMV for decode at batch 1: y = x @ W.T + bias (+ residual) for one row of x (needs `triton`).

At batch 1 a decode step's linear maps are matrix-vector products. cuBLAS runs them as GEMM tiles of 64 x 8 (plus,
for a long reduction such as a folded block's output map 6144 -> 768, a split-K reduction pass) and the residual
add is one more launch. Here each program owns `BLOCK_N` output columns and streams their weight rows once, through
all K, on the CUDA cores with fp32 accumulation, adding bias and residual in the same pass. The tile shape is
autotuned per (N, K) on the first call (so before any CUDA-graph capture); nothing depends on values.
H100 (benchmarks/RESULTS.md), bias + residual included: 7.5 / 7.1 / 6.0 / 5.0 us against cuBLAS's 9.2 / 9.8 /
7.9 / 9.3 us for pythia-160m's folded maps (768 -> 6816, 6144 -> 768, 768 -> 5376, 3840 -> 768). With more rows
(M = 4, 8) a fixed-tile version of this design lost badly to cuBLAS, so the caller (`litgpt.kernels.linear`)
sends only one-row products here.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

_CONFIGS = [
    triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=3)
    for n, k in ((2, 4096), (4, 2048), (8, 1024), (16, 512), (32, 256))
    for w in (4, 8)
]


@triton.autotune(configs=_CONFIGS, key=["N", "K", "HAS_BIAS", "HAS_RES"])
@triton.jit
def _gemv_kernel(
    X, W, BIAS, RES, Y,
    M, N, K,
    stride_xm, stride_wn, stride_rm, stride_ym,
    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        w = tl.load(W + offs_n[:, None] * stride_wn + offs_k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        x = tl.load(X + offs_m[:, None] * stride_xm + offs_k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        acc += tl.sum(x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)  # (BLOCK_M, BLOCK_N)
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    if HAS_RES:
        acc += tl.load(RES + offs_m[:, None] * stride_rm + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(Y.dtype.element_ty), mask=mask)


def gemv(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], residual: Optional[torch.Tensor]
) -> torch.Tensor:
    """x (M, K), weight (N, K), bias (N,) or None, residual (M, N) or None, all contiguous -> (M, N) in x.dtype.
    Correct for any M, fast for M = 1."""
    M, K = x.shape
    N = weight.size(0)
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    with torch.cuda.device(x.device):
        _gemv_kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)](
            x, weight, bias if bias is not None else y, residual if residual is not None else y, y,
            M, N, K,
            x.stride(0), weight.stride(0), residual.stride(0) if residual is not None else 0, y.stride(0),
            HAS_BIAS=bias is not None, HAS_RES=residual is not None, BLOCK_M=triton.next_power_of_2(M),
        )
    return y
