"""Triton grouped GEMMs of a mixture of experts' decode step, reading each chosen expert's weights in place (needs
`triton`).

A decode step routes S = N * k token-expert pairs ("slots"; slot s is token s // k's (s % k)-th choice). Both
kernels run one program per (output tile, expert). A program finds its expert's slots itself, from the routing
indices on the device: it compares the S indices with its expert, ranks the matches by a prefix sum (a counting sort,
stable) and takes them BLOCK_M at a time. An expert that no token chose has no slots and its programs do nothing, so
a step reads each chosen expert's weights once, whatever the number of its tokens, with a grid and shapes fixed by N:
no host synchronisation, nothing data-dependent for a CUDA graph to trip over.

  `_gate_up_kernel`  h[s] = silu(x[t] W_1[e]^T) * (x[t] W_2[e]^T)  (+ biases), fc_weight (E, 2I, C) = [W_1; W_2]:
                     the gate and up maps in one pass over x, the SwiGLU activation in the epilogue -> H (S, I).
  `_down_kernel`     out[s] = w[s] * (h[s] W_p[e]^T (+ bias)), proj_weight (E, C, I) -> OUT (S, C) in float32, the
                     routing weight applied in the epilogue; the caller sums each token's k rows.
"""

from __future__ import annotations

import inspect
from typing import Optional

import torch
import triton
import triton.language as tl

from litgpt.kernels._triton import on_device

BLOCK_M = 16  # slots a program multiplies at once: tl.dot's smallest M
_CONFIGS = [  # few, so that tuning each (C, I, BLOCK_S) compiles little
    triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=4, num_stages=s)
    for n, k, s in ((32, 128, 4), (32, 256, 3), (64, 128, 4), (64, 256, 3))
]
# Triton >= 3.2 can keep autotuning results on disk (in its cache directory, beside the compiled kernels)
_AUTOTUNE_CACHE = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}


@triton.jit
def _expert_slots(IDX, S, expert, m0, BLOCK_S: tl.constexpr, BLOCK: tl.constexpr):
    """The slots of `expert` ranked m0 .. m0 + BLOCK - 1 among its slots (in slot order) -> (slot (BLOCK,), whether
    that rank exists (BLOCK,))."""
    offs_s = tl.arange(0, BLOCK_S)
    chosen = tl.load(IDX + offs_s, mask=offs_s < S, other=-1) == expert  # (BLOCK_S,)
    rank = tl.cumsum(chosen.to(tl.int32), axis=0) - 1  # (BLOCK_S,) rank among the expert's slots
    ranks = m0 + tl.arange(0, BLOCK)  # (BLOCK,)
    match = chosen[None, :] & (rank[None, :] == ranks[:, None])  # (BLOCK, BLOCK_S): at most one per row
    slot = tl.sum(tl.where(match, offs_s[None, :], 0), axis=1)  # (BLOCK,)
    return slot, tl.sum(match.to(tl.int32), axis=1) > 0


@triton.jit
def _slot_count(IDX, S, expert, BLOCK_S: tl.constexpr):
    offs_s = tl.arange(0, BLOCK_S)
    return tl.sum((tl.load(IDX + offs_s, mask=offs_s < S, other=-1) == expert).to(tl.int32), axis=0)


@triton.autotune(configs=_CONFIGS, key=["C", "I", "BLOCK_S", "HAS_BIAS"], **_AUTOTUNE_CACHE)
@triton.jit
def _gate_up_kernel(
    X, W, BIAS, IDX, H,
    S, TOP_K, C, I,
    stride_xm, stride_we, stride_wn, stride_be, stride_hm,
    HAS_BIAS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    expert = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) columns of h
    n_ok = offs_n < I
    gate_rows = W + expert.to(tl.int64) * stride_we + offs_n[None, :] * stride_wn  # (1, BLOCK_N) W_1 rows
    up_rows = gate_rows + I * stride_wn  # W_2 rows
    count = _slot_count(IDX, S, expert, BLOCK_S)
    for m0 in range(0, count, BLOCK_M):
        slot, row_ok = _expert_slots(IDX, S, expert, m0, BLOCK_S, BLOCK_M)  # (BLOCK_M,)
        token = slot // TOP_K
        gate = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, C, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < C
            x = tl.load(X + token[:, None] * stride_xm + offs_k[None, :], mask=row_ok[:, None] & k_ok[None, :],
                        other=0.0)  # (BLOCK_M, BLOCK_K)
            w_mask = k_ok[:, None] & n_ok[None, :]
            w_gate = tl.load(gate_rows + offs_k[:, None], mask=w_mask, other=0.0)  # (BLOCK_K, BLOCK_N)
            w_up = tl.load(up_rows + offs_k[:, None], mask=w_mask, other=0.0)  # (BLOCK_K, BLOCK_N)
            gate = tl.dot(x, w_gate.to(x.dtype), gate)
            up = tl.dot(x, w_up.to(x.dtype), up)
        if HAS_BIAS:
            bias = BIAS + expert.to(tl.int64) * stride_be + offs_n
            gate += tl.load(bias, mask=n_ok, other=0.0).to(tl.float32)[None, :]
            up += tl.load(bias + I, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        h = gate * tl.sigmoid(gate) * up  # (BLOCK_M, BLOCK_N) SwiGLU
        tl.store(H + slot[:, None] * stride_hm + offs_n[None, :], h.to(H.dtype.element_ty),
                 mask=row_ok[:, None] & n_ok[None, :])


@triton.autotune(configs=_CONFIGS, key=["C", "I", "BLOCK_S", "HAS_BIAS"], **_AUTOTUNE_CACHE)
@triton.jit
def _down_kernel(
    H, W, BIAS, IDX, RW, OUT,
    S, C, I,
    stride_hm, stride_we, stride_wn, stride_be, stride_om,
    HAS_BIAS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    expert = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) output columns
    n_ok = offs_n < C
    rows = W + expert.to(tl.int64) * stride_we + offs_n[None, :] * stride_wn  # (1, BLOCK_N) W_p rows
    count = _slot_count(IDX, S, expert, BLOCK_S)
    for m0 in range(0, count, BLOCK_M):
        slot, row_ok = _expert_slots(IDX, S, expert, m0, BLOCK_S, BLOCK_M)  # (BLOCK_M,)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, I, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < I
            h = tl.load(H + slot[:, None] * stride_hm + offs_k[None, :], mask=row_ok[:, None] & k_ok[None, :],
                        other=0.0)  # (BLOCK_M, BLOCK_K)
            w = tl.load(rows + offs_k[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0)  # (BLOCK_K, BLOCK_N)
            acc = tl.dot(h, w.to(h.dtype), acc)
        if HAS_BIAS:
            acc += tl.load(BIAS + expert.to(tl.int64) * stride_be + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        routing = tl.load(RW + slot, mask=row_ok, other=0.0).to(tl.float32)  # (BLOCK_M,)
        tl.store(OUT + slot[:, None] * stride_om + offs_n[None, :], acc * routing[:, None],
                 mask=row_ok[:, None] & n_ok[None, :])


def moe_experts(
    x: torch.Tensor,
    fc_weight: torch.Tensor,
    proj_weight: torch.Tensor,
    fc_bias: Optional[torch.Tensor],
    proj_bias: Optional[torch.Tensor],
    weights: torch.Tensor,
    indices: torch.Tensor,
) -> torch.Tensor:
    """x (N, C), fc_weight (E, 2I, C), proj_weight (E, C, I), biases (E, 2I) and (E, C) or None, routing weights and
    expert indices (N, k) -> sum_j weights[:, j] * expert_{indices[:, j]}(x) (N, C) in x's dtype, all row-contiguous.
    Every program scans all N * k routing indices: meant for decode-sized inputs (`litgpt.kernels.moe_grouped`
    sends at most MAX_SLOTS)."""
    N, C = x.shape
    E, two_I, _ = fc_weight.shape
    I = two_I // 2
    k = indices.size(1)
    S = N * k
    flat_indices = indices.reshape(S).contiguous()  # (S,)
    flat_weights = weights.reshape(S).to(torch.float32).contiguous()  # (S,)
    h = torch.empty(S, I, device=x.device, dtype=x.dtype)  # (S, I) each slot's activation, slot order
    out = torch.empty(S, C, device=x.device, dtype=torch.float32)  # (S, C) each slot's weighted expert output
    block_s = max(16, triton.next_power_of_2(S))
    with on_device(x):
        _gate_up_kernel[lambda meta: (triton.cdiv(I, meta["BLOCK_N"]), E)](
            x, fc_weight, fc_bias if fc_bias is not None else fc_weight, flat_indices, h,
            S, k, C, I,
            x.stride(0), fc_weight.stride(0), fc_weight.stride(1), fc_bias.stride(0) if fc_bias is not None else 0,
            h.stride(0),
            HAS_BIAS=fc_bias is not None, BLOCK_S=block_s, BLOCK_M=BLOCK_M,
        )
        _down_kernel[lambda meta: (triton.cdiv(C, meta["BLOCK_N"]), E)](
            h, proj_weight, proj_bias if proj_bias is not None else proj_weight, flat_indices, flat_weights, out,
            S, C, I,
            h.stride(0), proj_weight.stride(0), proj_weight.stride(1),
            proj_bias.stride(0) if proj_bias is not None else 0, out.stride(0),
            HAS_BIAS=proj_bias is not None, BLOCK_S=block_s, BLOCK_M=BLOCK_M,
        )
    return out.view(N, k, C).sum(dim=1).to(x.dtype)  # (N, C)


SCORINGS = {"softmax": 0, "sigmoid": 1, "topk_softmax": 2}  # the router's scoring, as the kernel's constant


@triton.jit
def _route_kernel(
    X, W, BIAS, WEIGHTS, INDICES,
    C, stride_x, stride_w, scale,
    E: tl.constexpr, K: tl.constexpr, SCORING: tl.constexpr, HAS_BIAS: tl.constexpr, NORM: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)  # one token per program
    offs_e = tl.arange(0, BLOCK_E)
    e_ok = offs_e < E
    logits = tl.zeros([BLOCK_E], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < C
        x = tl.load(X + n * stride_x + offs_c, mask=c_ok, other=0.0).to(tl.float32)  # (BLOCK_C,)
        w = tl.load(W + offs_e[:, None] * stride_w + offs_c[None, :], mask=e_ok[:, None] & c_ok[None, :],
                    other=0.0).to(tl.float32)  # (BLOCK_E, BLOCK_C)
        logits += tl.sum(w * x[None, :], axis=1)
    logits = tl.where(e_ok, logits, float("-inf"))  # (BLOCK_E,)
    if SCORING == 0:  # softmax over all experts
        ex = tl.exp(logits - tl.max(logits, axis=0))
        scores = ex / tl.sum(ex, axis=0)
    elif SCORING == 1:
        scores = tl.where(e_ok, tl.sigmoid(logits), 0.0)
    else:  # topk_softmax: the top logits, softmaxed below
        scores = logits
    choice = scores
    if HAS_BIAS:  # chooses, does not weigh
        choice += tl.load(BIAS + offs_e, mask=e_ok, other=0.0).to(tl.float32)
    choice = tl.where(e_ok, choice, float("-inf"))
    offs_k = tl.arange(0, BLOCK_K)
    k_ok = offs_k < K
    picked = tl.zeros([BLOCK_K], dtype=tl.float32)
    chosen = tl.zeros([BLOCK_K], dtype=tl.int64)
    for j in tl.static_range(K):  # the k best, best first (ties: the lowest expert)
        best = tl.max(choice, axis=0)
        e = tl.min(tl.where(choice == best, offs_e, BLOCK_E), axis=0)
        picked = tl.where(offs_k == j, tl.sum(tl.where(offs_e == e, scores, 0.0), axis=0), picked)
        chosen = tl.where(offs_k == j, e, chosen)
        choice = tl.where(offs_e == e, float("-inf"), choice)
    if SCORING == 2:
        ex = tl.where(k_ok, tl.exp(picked - tl.max(tl.where(k_ok, picked, float("-inf")), axis=0)), 0.0)
        picked = ex / tl.sum(ex, axis=0)
    elif NORM:
        picked = picked / (tl.sum(tl.where(k_ok, picked, 0.0), axis=0) + 1e-20)
    tl.store(WEIGHTS + n * K + offs_k, picked * scale, mask=k_ok)
    tl.store(INDICES + n * K + offs_k, chosen, mask=k_ok)


def route(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    k: int,
    scoring: str,
    norm_topk_prob: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A router's inference step in one launch: x (N, C) and the router's weight (E, C) -> routing weights (N, k)
    in float32 and expert indices (N, k), as `litgpt.moe.Router` computes them without expert groups: the logits in
    float32, the scores (softmax or sigmoid over the experts; topk_softmax: the logits), the k best by score (+ bias
    where given), their scores, normalised (norm_topk_prob) or softmaxed (topk_softmax), times scale."""
    N, C = x.shape
    E = weight.size(0)
    weights = torch.empty(N, k, device=x.device, dtype=torch.float32)  # (N, k)
    indices = torch.empty(N, k, device=x.device, dtype=torch.int64)  # (N, k)
    block_e = triton.next_power_of_2(E)
    with on_device(x):
        _route_kernel[(N,)](
            x, weight, bias if bias is not None else weight, weights, indices,
            C, x.stride(0), weight.stride(0), scale,
            E=E, K=k, SCORING=SCORINGS[scoring], HAS_BIAS=bias is not None, NORM=norm_topk_prob,
            BLOCK_E=block_e, BLOCK_C=max(16, min(256, 8192 // block_e)), BLOCK_K=max(2, triton.next_power_of_2(k)),
        )
    return weights, indices
