"""Triton split-KV flash-decoding over a cache shared by a group of query heads (needs `triton`).

One kernel serves both caches:
  MLA  -- K = [latent c | rope key] (B, 1, S, d_c + d_R), V = c, read once per tile for scores and output;
  GQA  -- K (B, G, S, d), V (B, G, S, d_v), separate tensors (MHA: G = n_head, MQA: G = 1).

Stage 1 (`_split_kernel`): one program per (row b and group g, block of query rows, KV split). The query rows of
a program are the (head, new token) pairs of group g, stacked into a (BLOCK_H, d) tile so that every K/V tile
read from memory feeds one tensor-core product for all of them. Row (head, t) of batch row b sees cached tokens
0..input_pos[b, t]; the loop stops at the largest valid length in the block, so only valid tokens are read, and a
split that lies beyond it reads nothing. Online softmax in fp32 with exp2 (log2(e) folded into the scale).
Stage 2 (`_merge_kernel`): for each row, a log-sum-exp merge of the splits that hold its valid tokens, a tile of
splits at a time and the output columns spread over several programs (a serial walk over 128 splits was a chain of
dependent loads: 15 us at batch 1 on an H100).
With one split, stage 1 writes the normalised output directly and stage 2 is skipped.

The split count depends only on static sizes (S_max, B, G, rows, SM count), never on input_pos, and nothing
syncs with the host: the launch can be captured in a CUDA graph.

Paged caches (`litgpt.kv_cache.PagedKVCache`, `PagedKVCacheCompressed`) go through the same kernels with PAGED set:
the cache is then a pool of pages, and row b's position p lives in page block_table[b, p // PAGE_SIZE], slot
p % PAGE_SIZE (`_slot_offset`). The split-KV loop walks a row's pages through its block table, tile by tile, so
nothing is gathered into a contiguous copy; the cache writes find their (page, slot) the same way.

FP8 caches (`litgpt.kernels.fp8_cache.Fp8Rows`, e4m3 values with float32 scales) go through the same kernels with
FP8 set: stage 1 never multiplies a tile by its scales. The e4m3 values enter the products as they are (each is
exact in the query's dtype), one product per block of columns that shares a scale (MLA's latent: up to
MAX_SCALE_BLOCKS blocks; MHA/GQA: one per token and head), and the scales multiply the small results instead: a
block's scale times its column of scores, and times the probabilities that weigh its values (MLA's latent doubles
as V, so each block keeps its own accumulator; MHA/GQA's V scale is one per token). MLA's rope key comes from its
own buffer (the tail, in the model's dtype). The cache writes quantize in the same launch: each block's absolute
maximum / 448 is its scale.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from litgpt.kernels._triton import on_device
from litgpt.kernels.fp8_cache import MAX_SCALE_BLOCKS

LOG2E = 1.4426950408889634
E4M3_MAX = tl.constexpr(448.0)  # as `litgpt.kernels.fp8_cache`
MIN_AMAX = tl.constexpr(448.0 * 1.1754943508222875e-38)  # E4M3_MAX * float32's smallest normal: scales >= 2**-126
MERGE_BLOCK_S = 128  # at most this many splits per merge tile
MERGE_TILE = 8192  # about this many partial outputs per merge tile: (splits, columns)


@triton.jit
def _slot_offset(pos, b, BT, stride_btb, stride_b, stride_s, mask, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr):
    """Element offset of position pos (a scalar or a block) of row b in a cache whose row (static) or page
    (PAGED) stride is stride_b and position stride stride_s: static, b * stride_b + pos * stride_s; paged, the
    page block_table[b, pos // PAGE_SIZE] (read where mask holds, else page 0) at slot pos % PAGE_SIZE."""
    if PAGED:
        page = tl.load(BT + b * stride_btb + pos // PAGE_SIZE, mask=mask, other=0).to(tl.int64)
        return page * stride_b + (pos % PAGE_SIZE) * stride_s
    return b * stride_b + pos * stride_s


@triton.jit
def _cols(rows, offs, row_ok, COL0: tl.constexpr, LIMIT: tl.constexpr, WIDTH: tl.constexpr):
    """The (rows, WIDTH) tile of columns COL0 + offs of each row pointer, columns from LIMIT on read as 0."""
    if COL0 + WIDTH <= LIMIT:
        return tl.load(rows[:, None] + COL0 + offs[None, :], mask=row_ok[:, None], other=0.0)
    return tl.load(rows[:, None] + COL0 + offs[None, :], mask=row_ok[:, None] & (COL0 + offs < LIMIT)[None, :],
                   other=0.0)


@triton.jit
def _store_cols(o, row_ok, offs, OUT, stride_ob, stride_oh, stride_ot, PART_O, b, head, t, part,
                COL0: tl.constexpr, D_V: tl.constexpr, BLOCK_DV: tl.constexpr, SINGLE_SPLIT: tl.constexpr):
    """Output columns COL0 + offs of the program's rows: normalised into OUT (one split), or into the split's
    partial output."""
    cols = COL0 + offs
    if SINGLE_SPLIT:
        o_rows = OUT + b * stride_ob + head * stride_oh + t * stride_ot
        tl.store(o_rows[:, None] + cols[None, :], o.to(OUT.dtype.element_ty),
                 mask=row_ok[:, None] & (cols < D_V)[None, :])
    else:
        tl.store(PART_O + part[:, None] * BLOCK_DV + cols[None, :], o, mask=row_ok[:, None])


@triton.jit
def _split_kernel(
    Q, K, V, KS, KR, VS, POS, BT, OUT, PART_O, PART_LSE,
    qk_scale,  # softmax scale * log2(e)
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kg, stride_ks,
    stride_vb, stride_vg, stride_vs,
    stride_ksb, stride_ksg, stride_kss,  # FP8: K's scales (rows or pages, G, positions or slots, blocks)
    stride_krb, stride_krg, stride_krs,  # FP8 with D_ROPE: the rope key, its own buffer
    stride_vsb, stride_vsg, stride_vss,  # FP8 without SHARED_V: V's scales, one per token
    stride_pb, stride_pt, stride_btb,
    stride_ob, stride_oh, stride_ot,
    n_groups, heads_per_group, T, n_rows, S, split_len, n_splits,
    D_MAIN: tl.constexpr, D_ROPE: tl.constexpr, D_V: tl.constexpr,
    BLOCK_DM: tl.constexpr, BLOCK_DR: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
    SHARED_V: tl.constexpr, SINGLE_SPLIT: tl.constexpr, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr,
    FP8: tl.constexpr, BLOCK_SB: tl.constexpr, N_BLK: tl.constexpr,
):
    pid_rows = tl.program_id(0)  # fastest-varying: row blocks that share a KV tile run side by side (L2 reuse)
    pid_bg = tl.program_id(1)
    pid_split = tl.program_id(2)
    b = (pid_bg // n_groups).to(tl.int64)  # 64-bit: b * stride_kb passes 2**31 for large caches
    g = pid_bg % n_groups

    rows = pid_rows * BLOCK_H + tl.arange(0, BLOCK_H)  # (BLOCK_H,) query rows = (head in group, token)
    row_ok = rows < n_rows
    t = rows % T
    head = g * heads_per_group + rows // T
    pos = tl.load(POS + b * stride_pb + t * stride_pt, mask=row_ok, other=-1)
    valid = tl.minimum(pos + 1, S).to(tl.int32)  # (BLOCK_H,) tokens this row may attend
    block_valid = tl.max(valid, axis=0)
    start = pid_split * split_len
    end = tl.minimum(start + split_len, block_valid)

    q_rows = Q + b * stride_qb + head * stride_qh + t * stride_qt  # (BLOCK_H,) row pointers
    if FP8:  # the query in column blocks of BLOCK_SB, one per K scale (N_BLK <= 4)
        offs_sb = tl.arange(0, BLOCK_SB)
        q0 = _cols(q_rows, offs_sb, row_ok, 0, D_MAIN, BLOCK_SB)
        if N_BLK > 1:
            q1 = _cols(q_rows, offs_sb, row_ok, BLOCK_SB, D_MAIN, BLOCK_SB)
        if N_BLK > 2:
            q2 = _cols(q_rows, offs_sb, row_ok, 2 * BLOCK_SB, D_MAIN, BLOCK_SB)
        if N_BLK > 3:
            q3 = _cols(q_rows, offs_sb, row_ok, 3 * BLOCK_SB, D_MAIN, BLOCK_SB)
    else:
        offs_dm = tl.arange(0, BLOCK_DM)
        q_main = _cols(q_rows, offs_dm, row_ok, 0, D_MAIN, BLOCK_DM)
    if D_ROPE > 0:
        offs_dr = tl.arange(0, BLOCK_DR)
        q_rope = _cols(q_rows, offs_dr, row_ok, D_MAIN, D_MAIN + D_ROPE, BLOCK_DR)
    offs_dv = tl.arange(0, BLOCK_DV)

    k_base = K + g * stride_kg  # K and V rows: their (page, slot) or (row, position) offsets add on
    v_base = V + g * stride_vg
    m_i = tl.full([BLOCK_H], -1.0e30, dtype=tl.float32)  # finite: a row with no key in a tile stays NaN-free
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    if FP8 and SHARED_V:  # MLA: the output in the latent's column blocks, each with its own accumulator
        acc = tl.zeros([BLOCK_H, BLOCK_SB], dtype=tl.float32)
        if N_BLK > 1:
            acc1 = tl.zeros([BLOCK_H, BLOCK_SB], dtype=tl.float32)
        if N_BLK > 2:
            acc2 = tl.zeros([BLOCK_H, BLOCK_SB], dtype=tl.float32)
        if N_BLK > 3:
            acc3 = tl.zeros([BLOCK_H, BLOCK_SB], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_H, BLOCK_DV], dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < end
        k_rows = k_base + _slot_offset(offs_n, b, BT, stride_btb, stride_kb, stride_ks, n_ok, PAGED, PAGE_SIZE)
        if FP8:
            # e4m3 values enter the products as they are (exact in the query's dtype); each block's scale
            # multiplies its column of scores, and below the probabilities that weigh its values
            ks_rows = KS + g * stride_ksg + _slot_offset(offs_n, b, BT, stride_btb, stride_ksb, stride_kss, n_ok,
                                                         PAGED, PAGE_SIZE)
            k0 = _cols(k_rows, offs_sb, n_ok, 0, D_MAIN, BLOCK_SB).to(Q.dtype.element_ty)
            s0 = tl.load(ks_rows, mask=n_ok, other=0.0)  # (BLOCK_N,)
            scores = tl.dot(q0, tl.trans(k0)) * s0[None, :]  # (BLOCK_H, BLOCK_N) fp32
            if N_BLK > 1:
                k1 = _cols(k_rows, offs_sb, n_ok, BLOCK_SB, D_MAIN, BLOCK_SB).to(Q.dtype.element_ty)
                s1 = tl.load(ks_rows + 1, mask=n_ok, other=0.0)
                scores += tl.dot(q1, tl.trans(k1)) * s1[None, :]
            if N_BLK > 2:
                k2 = _cols(k_rows, offs_sb, n_ok, 2 * BLOCK_SB, D_MAIN, BLOCK_SB).to(Q.dtype.element_ty)
                s2 = tl.load(ks_rows + 2, mask=n_ok, other=0.0)
                scores += tl.dot(q2, tl.trans(k2)) * s2[None, :]
            if N_BLK > 3:
                k3 = _cols(k_rows, offs_sb, n_ok, 3 * BLOCK_SB, D_MAIN, BLOCK_SB).to(Q.dtype.element_ty)
                s3 = tl.load(ks_rows + 3, mask=n_ok, other=0.0)
                scores += tl.dot(q3, tl.trans(k3)) * s3[None, :]
        else:
            k_main = _cols(k_rows, offs_dm, n_ok, 0, D_MAIN, BLOCK_DM)
            scores = tl.dot(q_main, tl.trans(k_main))  # (BLOCK_H, BLOCK_N) fp32
        if D_ROPE > 0:
            if FP8:
                kr_rows = KR + g * stride_krg + _slot_offset(offs_n, b, BT, stride_btb, stride_krb, stride_krs, n_ok,
                                                             PAGED, PAGE_SIZE)
                k_rope = _cols(kr_rows, offs_dr, n_ok, 0, D_ROPE, BLOCK_DR)
            else:
                k_rope = _cols(k_rows, offs_dr, n_ok, D_MAIN, D_MAIN + D_ROPE, BLOCK_DR)
            scores = tl.dot(q_rope, tl.trans(k_rope), scores)
        scores = tl.where(offs_n[None, :] < valid[:, None], scores * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])  # (BLOCK_H, BLOCK_N)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if FP8 and SHARED_V:  # MLA: the latent doubles as V, block by block, already in on-chip memory
            acc = tl.dot((p * s0[None, :]).to(Q.dtype.element_ty), k0, acc * alpha[:, None])  # (BLOCK_H, BLOCK_SB)
            if N_BLK > 1:
                acc1 = tl.dot((p * s1[None, :]).to(Q.dtype.element_ty), k1, acc1 * alpha[:, None])
            if N_BLK > 2:
                acc2 = tl.dot((p * s2[None, :]).to(Q.dtype.element_ty), k2, acc2 * alpha[:, None])
            if N_BLK > 3:
                acc3 = tl.dot((p * s3[None, :]).to(Q.dtype.element_ty), k3, acc3 * alpha[:, None])
        elif SHARED_V:
            acc = tl.dot(p.to(Q.dtype.element_ty), k_main, acc * alpha[:, None])  # (BLOCK_H, BLOCK_DV)
        else:
            v_rows = v_base + _slot_offset(offs_n, b, BT, stride_btb, stride_vb, stride_vs, n_ok, PAGED, PAGE_SIZE)
            v = _cols(v_rows, offs_dv, n_ok, 0, D_V, BLOCK_DV)
            if FP8:  # one scale per token, on the probabilities
                vs_rows = VS + g * stride_vsg + _slot_offset(offs_n, b, BT, stride_btb, stride_vsb, stride_vss, n_ok,
                                                             PAGED, PAGE_SIZE)
                v_scale = tl.load(vs_rows, mask=n_ok, other=0.0)  # (BLOCK_N,)
                p_v = (p * v_scale[None, :]).to(Q.dtype.element_ty)  # (BLOCK_H, BLOCK_N)
                acc = tl.dot(p_v, v.to(Q.dtype.element_ty), acc * alpha[:, None])
            else:
                acc = tl.dot(p.to(Q.dtype.element_ty), v, acc * alpha[:, None])  # (BLOCK_H, BLOCK_DV)
        m_i = m_new

    has_keys = row_ok & (start < valid)
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    part = ((pid_bg * n_rows + rows) * n_splits + pid_split).to(tl.int64)  # (BLOCK_H,) index into (B*G, rows, splits)
    kept = row_ok if SINGLE_SPLIT else has_keys
    if FP8 and SHARED_V:
        _store_cols(acc / l_safe[:, None], kept, offs_sb, OUT, stride_ob, stride_oh, stride_ot, PART_O, b, head, t,
                    part, 0, D_V, BLOCK_DV, SINGLE_SPLIT)
        if N_BLK > 1:
            _store_cols(acc1 / l_safe[:, None], kept, offs_sb, OUT, stride_ob, stride_oh, stride_ot, PART_O, b, head, t,
                        part, BLOCK_SB, D_V, BLOCK_DV, SINGLE_SPLIT)
        if N_BLK > 2:
            _store_cols(acc2 / l_safe[:, None], kept, offs_sb, OUT, stride_ob, stride_oh, stride_ot, PART_O, b, head, t,
                        part, 2 * BLOCK_SB, D_V, BLOCK_DV, SINGLE_SPLIT)
        if N_BLK > 3:
            _store_cols(acc3 / l_safe[:, None], kept, offs_sb, OUT, stride_ob, stride_oh, stride_ot, PART_O, b, head, t,
                        part, 3 * BLOCK_SB, D_V, BLOCK_DV, SINGLE_SPLIT)
    else:
        _store_cols(acc / l_safe[:, None], kept, offs_dv, OUT, stride_ob, stride_oh, stride_ot, PART_O, b, head, t,
                    part, 0, D_V, BLOCK_DV, SINGLE_SPLIT)
    if not SINGLE_SPLIT:
        tl.store(PART_LSE + part, m_i + tl.log2(l_safe), mask=has_keys)


@triton.jit
def _merge_kernel(
    POS, OUT, PART_O, PART_LSE,
    stride_pb, stride_pt,
    stride_ob, stride_oh, stride_ot,
    n_groups, heads_per_group, T, n_rows, S, split_len, n_splits,
    D_V: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_S: tl.constexpr, CHUNK_DV: tl.constexpr,
):
    """Program (row b and group g, query row, CHUNK_DV columns of the output): merge that row's splits, BLOCK_S of
    them per (BLOCK_S, CHUNK_DV) tile, so the loads of many splits are in flight at once."""
    pid_bg = tl.program_id(0)
    row = tl.program_id(1)
    b = (pid_bg // n_groups).to(tl.int64)
    g = pid_bg % n_groups
    t = row % T
    head = g * heads_per_group + row // T
    valid = tl.minimum(tl.load(POS + b * stride_pb + t * stride_pt) + 1, S).to(tl.int32)
    n_used = tl.cdiv(valid, split_len)  # splits that hold this row's tokens; later ones are empty for it
    offs_dv = tl.program_id(2) * CHUNK_DV + tl.arange(0, CHUNK_DV)
    offs_s = tl.arange(0, BLOCK_S)
    base = ((pid_bg * n_rows + row) * n_splits).to(tl.int64)
    m = -1.0e30
    l = 0.0
    acc = tl.zeros([CHUNK_DV], dtype=tl.float32)
    for s0 in range(0, n_used, BLOCK_S):
        s_ok = s0 + offs_s < n_used
        lse = tl.load(PART_LSE + base + s0 + offs_s, mask=s_ok, other=float("-inf"))  # (BLOCK_S,)
        o = tl.load(PART_O + (base + s0 + offs_s)[:, None] * BLOCK_DV + offs_dv[None, :], mask=s_ok[:, None],
                    other=0.0)  # (BLOCK_S, CHUNK_DV); unwritten splits stay masked out
        m_new = tl.maximum(m, tl.max(lse, axis=0))
        alpha = tl.exp2(m - m_new)
        w = tl.exp2(lse - m_new)  # (BLOCK_S,), 0 for masked splits
        acc = acc * alpha + tl.sum(w[:, None] * o, axis=0)
        l = l * alpha + tl.sum(w, axis=0)
        m = m_new
    out = acc / l
    tl.store(OUT + b * stride_ob + head * stride_oh + t * stride_ot + offs_dv, out.to(OUT.dtype.element_ty),
             mask=offs_dv < D_V)


@triton.jit
def _store_e4m3(dst, scale_dst, x, ok, in_cache):
    """x (BLOCK,) quantized with one scale, amax(|x| where ok) / 448: e4m3 values at dst, the scale at scale_dst."""
    xf = x.to(tl.float32)
    s = tl.maximum(tl.max(tl.where(ok, tl.abs(xf), 0.0), axis=0), MIN_AMAX) / E4M3_MAX
    values = tl.minimum(tl.maximum(xf / s, -E4M3_MAX), E4M3_MAX)
    tl.store(dst, values.to(dst.dtype.element_ty), mask=ok & in_cache)
    tl.store(scale_dst, s, mask=in_cache)


@triton.jit
def _mla_prologue_kernel(
    Q_IN, KV_A, CACHE, CS, CR, POS, BT, COS, SIN, NORM_W, Q_OUT,
    eps,
    stride_qib, stride_qih, stride_kvb, stride_cb, stride_cs, stride_csb, stride_css, stride_crb, stride_crs,
    stride_pb, stride_btb, stride_cos, stride_sin,
    stride_qob, stride_qoh,
    n_head, S,
    D_C: tl.constexpr, D_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, INTERLEAVE: tl.constexpr,
    PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr, FP8: tl.constexpr, SCALE_BLOCK: tl.constexpr,
    N_BLOCKS: tl.constexpr,
):
    """Program (b, j < n_head): query head j of row b, latent part copied, rope part rotated into Q_OUT.
    Program (b, n_head): the new token of row b, [RMSNorm(latent) * gain | rotated rope key], written into CACHE at
    POS[b] (row b's page and slot when PAGED; nothing written outside positions 0..S-1). FP8: the latent (rounded
    to the model's dtype, as the torch path) in e4m3 into CACHE with one scale per SCALE_BLOCK values into CS, the
    rope key into CR."""
    b = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    offs_c = tl.arange(0, BLOCK_C)
    c_ok = offs_c < D_C
    offs_r = tl.arange(0, BLOCK_R)
    r_ok = offs_r < D_R
    if INTERLEAVE:  # pairs (2i, 2i+1) rotate by frequency i
        partner = offs_r ^ 1
        freq = offs_r // 2
        sign = tl.where(offs_r % 2 == 0, -1.0, 1.0)
    else:  # rotate-half: i pairs with i + D_R/2; the tables repeat each frequency in both halves
        partner = (offs_r + D_R // 2) % D_R
        freq = offs_r
        sign = tl.where(offs_r < D_R // 2, -1.0, 1.0)
    cos = tl.load(COS + b * stride_cos + freq, mask=r_ok, other=0.0).to(tl.float32)
    sin = tl.load(SIN + b * stride_sin + freq, mask=r_ok, other=0.0).to(tl.float32)
    pos = tl.load(POS + b * stride_pb).to(tl.int64)
    in_cache = (j < n_head) | ((pos >= 0) & (pos < S))  # the query programs always store
    if j < n_head:
        src = Q_IN + b * stride_qib + j * stride_qih
        dst = Q_OUT + b * stride_qob + j * stride_qoh
        tl.store(dst + offs_c, tl.load(src + offs_c, mask=c_ok), mask=c_ok)
        rope_dst = dst + D_C
    else:
        src = KV_A + b * stride_kvb
        slot = _slot_offset(pos, b, BT, stride_btb, stride_cb, stride_cs, in_cache, PAGED, PAGE_SIZE)
        latent = tl.load(src + offs_c, mask=c_ok, other=0.0).to(tl.float32)
        gain = tl.load(NORM_W + offs_c, mask=c_ok, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(latent * latent, axis=0) / D_C + eps)
        normed = latent * rstd * gain  # (BLOCK_C,) fp32
        if FP8:
            normed = normed.to(KV_A.dtype.element_ty).to(tl.float32)
            scale_dst = CS + _slot_offset(pos, b, BT, stride_btb, stride_csb, stride_css, in_cache, PAGED, PAGE_SIZE)
            for blk in tl.static_range(N_BLOCKS):
                in_block = c_ok & (offs_c >= blk * SCALE_BLOCK) & (offs_c < (blk + 1) * SCALE_BLOCK)
                _store_e4m3(CACHE + slot + offs_c, scale_dst + blk, normed, in_block, in_cache)
            rope_dst = CR + _slot_offset(pos, b, BT, stride_btb, stride_crb, stride_crs, in_cache, PAGED, PAGE_SIZE)
        else:
            tl.store(CACHE + slot + offs_c, normed.to(CACHE.dtype.element_ty), mask=c_ok & in_cache)
            rope_dst = CACHE + slot + D_C
    x = tl.load(src + D_C + offs_r, mask=r_ok, other=0.0).to(tl.float32)
    x_partner = tl.load(src + D_C + partner, mask=r_ok, other=0.0).to(tl.float32)
    tl.store(rope_dst + offs_r, (x * cos + sign * x_partner * sin).to(rope_dst.dtype.element_ty), mask=r_ok & in_cache)


@triton.jit
def _rope_row(src, offs, d_ok, cos_row, sin_row, N_ROPE: tl.constexpr, INTERLEAVE: tl.constexpr):
    """The head at src (BLOCK_D,) with its first N_ROPE dims rotated in fp32 (as `litgpt.rope.apply_partial_rope`:
    rotate-half pairs i with i + N_ROPE/2, interleaved pairs 2i with 2i+1), the rest passed through unchanged."""
    x = tl.load(src + offs, mask=d_ok, other=0.0)
    if N_ROPE > 0:
        r_ok = offs < N_ROPE
        if INTERLEAVE:  # pairs (2i, 2i+1) rotate by frequency i: the first half of the rotate-half tables
            partner = offs ^ 1
            freq = offs // 2
            sign = tl.where(offs % 2 == 0, -1.0, 1.0)
        else:  # rotate-half: the tables repeat each frequency in both halves
            partner = (offs + N_ROPE // 2) % N_ROPE
            freq = offs
            sign = tl.where(offs < N_ROPE // 2, -1.0, 1.0)
        cos = tl.load(cos_row + freq, mask=r_ok, other=0.0).to(tl.float32)
        sin = tl.load(sin_row + freq, mask=r_ok, other=0.0).to(tl.float32)
        x_partner = tl.load(src + partner, mask=r_ok, other=0.0).to(tl.float32)
        rotated = x.to(tl.float32) * cos + sign * x_partner * sin  # (BLOCK_D,) fp32
        x = tl.where(r_ok, rotated.to(x.dtype), x)
    return x


@triton.jit
def _gqa_prologue_kernel(
    QKV, K_CACHE, V_CACHE, KS, VS, POS, BT, COS, SIN, Q_OUT,
    stride_xb, stride_kb, stride_kg, stride_ks, stride_vb, stride_vg, stride_vs,
    stride_ksb, stride_ksg, stride_kss, stride_vsb, stride_vsg, stride_vss, stride_pb, stride_btb, stride_cos,
    stride_sin, stride_qob, stride_qoh,
    n_head, n_groups, S,
    HS: tl.constexpr, N_ROPE: tl.constexpr, BLOCK_D: tl.constexpr, INTERLEAVE: tl.constexpr,
    PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr, FP8: tl.constexpr,
):
    """Program (b, j < n_head): query head j of row b, roped into Q_OUT. Program (b, n_head + g): key group g of
    row b roped into K_CACHE and value group g copied into V_CACHE, both at POS[b] (row b's page and slot when
    PAGED; nothing written outside 0..S-1). FP8: each in e4m3 with its one scale into KS and VS.

    The qkv row is [Q heads | K groups | V groups] of HS each, so program j's head starts at j * HS either way.
    """
    b = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    offs = tl.arange(0, BLOCK_D)
    d_ok = offs < HS
    src = QKV + b * stride_xb + j * HS
    x = _rope_row(src, offs, d_ok, COS + b * stride_cos, SIN + b * stride_sin, N_ROPE, INTERLEAVE)  # (BLOCK_D,)
    if j < n_head:
        tl.store(Q_OUT + b * stride_qob + j * stride_qoh + offs, x.to(Q_OUT.dtype.element_ty), mask=d_ok)
    else:
        g = j - n_head
        pos = tl.load(POS + b * stride_pb).to(tl.int64)
        in_cache = (pos >= 0) & (pos < S)
        ok = d_ok & in_cache
        k_slot = _slot_offset(pos, b, BT, stride_btb, stride_kb, stride_ks, in_cache, PAGED, PAGE_SIZE)
        v = tl.load(src + n_groups * HS + offs, mask=d_ok, other=0.0)  # V group g sits n_groups heads after K's
        v_slot = _slot_offset(pos, b, BT, stride_btb, stride_vb, stride_vs, in_cache, PAGED, PAGE_SIZE)
        if FP8:
            ks_slot = _slot_offset(pos, b, BT, stride_btb, stride_ksb, stride_kss, in_cache, PAGED, PAGE_SIZE)
            vs_slot = _slot_offset(pos, b, BT, stride_btb, stride_vsb, stride_vss, in_cache, PAGED, PAGE_SIZE)
            _store_e4m3(K_CACHE + k_slot + g * stride_kg + offs, KS + ks_slot + g * stride_ksg, x, d_ok, in_cache)
            _store_e4m3(V_CACHE + v_slot + g * stride_vg + offs, VS + vs_slot + g * stride_vsg, v, d_ok, in_cache)
        else:
            tl.store(K_CACHE + k_slot + g * stride_kg + offs, x.to(K_CACHE.dtype.element_ty), mask=ok)
            tl.store(V_CACHE + v_slot + g * stride_vg + offs, v.to(V_CACHE.dtype.element_ty), mask=ok)


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes and KV split of one launch: `block_h` query rows and `block_n` keys per iteration, `num_stages`
    of cp.async pipelining; the KV is split only until there are `waves` programs per SM, each split at least
    `min_split` tokens long."""

    block_h: int = 16
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 3
    waves: float = 1.0
    min_split: int = 64


@functools.lru_cache(maxsize=None)
def sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.lru_cache(maxsize=None)
def default_config(n_rows: int, d_v: int, batch_groups: int, n_sms: int) -> LaunchConfig:
    """What measured best on an H100 (benchmarks/RESULTS.md, sweeps): 64 keys per iteration, 3 stages, about one
    program per SM before splitting the KV. Up to 16 query rows: 16 per program. More rows: 32 per program
    (8 warps when the accumulator is wider than 256, so it stays in registers), except for wide latents when
    16-row blocks alone give half the SMs a program: then neighbouring 16-row programs share each KV tile in L2."""
    if n_rows <= 16 or (d_v > 256 and batch_groups * triton.cdiv(n_rows, 16) >= n_sms // 2):
        return LaunchConfig()
    return LaunchConfig(block_h=32, num_warps=4 if d_v <= 256 else 8)


def split_plan(programs: int, S: int, n_sms: int, config: LaunchConfig) -> tuple[int, int]:
    """(split_len, n_splits) from static sizes only: enough programs for `waves` per SM, splits >= min_split."""
    wanted = max(1, math.ceil(config.waves * n_sms / programs))
    split_len = max(math.ceil(S / wanted), config.min_split)
    block_n = config.block_n
    split_len = min(triton.cdiv(split_len, block_n) * block_n, triton.cdiv(S, block_n) * block_n)
    return split_len, triton.cdiv(S, split_len)


@dataclass(frozen=True)
class Fp8Parts:
    """What an fp8 cache adds to a launch, each part laid out as its values (rows or pages, G, positions or slots,
    ...): K's scales, one per `block` columns of a token; MLA's rope key in the model's dtype (None: K has no rope
    part); V's scales, one per token (None: V is K's latent). A block narrower than K's values is a power of 2
    (the attention kernel broadcasts each scale over its block in registers)."""

    k_scale: torch.Tensor
    k_rope: Optional[torch.Tensor]
    v_scale: Optional[torch.Tensor]
    block: int

    def __post_init__(self) -> None:
        if self.block < 1 or (self.k_scale.size(-1) > 1 and self.block & (self.block - 1)):
            raise ValueError(f"an fp8 cache's scale block of {self.block} values is not a power of 2")


def _groups(part: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A pool's part as (num_pages, G, page_size, ...): MLA's (num_pages, page_size, X) gets G = 1, a K or V pool's
    (num_pages, page_size, G, X) is transposed."""
    if part is None:
        return None
    return part.unsqueeze(1) if part.dim() == 3 else part.transpose(1, 2)


def _strides(t: Optional[torch.Tensor], n: int) -> tuple[int, ...]:
    """The first n strides of t (zeros for a part a launch does not read)."""
    return tuple(t.stride(i) for i in range(n)) if t is not None else (0,) * n


def decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    d_main: int,
    d_v: int,
    scale: float,
    shared_v: bool,
    config: Optional[LaunchConfig] = None,
) -> torch.Tensor:
    """Launch split-KV decoding over static caches. Shapes are checked by the callers in
    `litgpt.kernels.decode_attention`.

    q: (B, H, T, d_main + d_rope) with unit last stride; k: (B, G, S, d_main + d_rope); v: (B, G, S, d_v)
    (ignored and taken from k[..., :d_v] when shared_v); positions: (B, T) view (batch stride may be 0).
    Returns (B, H, T, d_v) in q.dtype.
    """
    return _split_kv(q, k, v, positions, None, k.size(2), d_main, d_v, scale, shared_v, config)


def paged_decode_attention(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    positions: torch.Tensor,
    block_table: torch.Tensor,
    d_main: int,
    d_v: int,
    scale: float,
    shared_v: bool,
    config: Optional[LaunchConfig] = None,
) -> torch.Tensor:
    """Launch split-KV decoding over page pools, read through the block table. Shapes are checked by the callers
    in `litgpt.kernels.decode_attention`.

    q, positions, the result: as `decode_attention`. k_pool: an MLA pool (num_pages, page_size, d_main + d_rope)
    (shared_v: V is its first d_v columns) or a K pool (num_pages, page_size, G, d_main + d_rope) with v_pool
    (num_pages, page_size, G, d_v); block_table: (B, P) page ids with unit last stride, row b's position p in page
    block_table[b, p // page_size], so each row holds up to P * page_size positions.
    """
    k = _groups(k_pool)  # (num_pages, G, page_size, d)
    v = k if shared_v else _groups(v_pool)
    return _split_kv(q, k, v, positions, block_table, block_table.size(1) * k.size(2), d_main, d_v, scale, shared_v,
                     config)


def fp8_decode_attention(
    q: torch.Tensor, k: torch.Tensor, k_scale: torch.Tensor, k_rope: Optional[torch.Tensor], v: torch.Tensor,
    v_scale: Optional[torch.Tensor], positions: torch.Tensor, d_main: int, d_v: int, scale: float, shared_v: bool,
    scale_block: int,
) -> torch.Tensor:
    """`decode_attention` over an fp8 static cache, dequantized in registers: k (B, G, S, d_main) e4m3 (MLA: the
    latent) with k_scale (B, G, S, ceil(d_main / scale_block)) float32 and, with a rope part, k_rope (B, G, S,
    d_rope) in q.dtype; v (B, G, S, d_v) e4m3 with v_scale (B, G, S, 1), or with shared_v k's first d_v columns
    (v and v_scale unread). Returns (B, H, T, d_v) in q.dtype."""
    parts = Fp8Parts(k_scale, k_rope, None if shared_v else v_scale, scale_block)
    return _split_kv(q, k, k if shared_v else v, positions, None, k.size(2), d_main, d_v, scale, shared_v, None,
                     parts)


def paged_fp8_decode_attention(
    q: torch.Tensor, k_pool: torch.Tensor, k_scale: torch.Tensor, k_rope: Optional[torch.Tensor],
    v_pool: torch.Tensor, v_scale: Optional[torch.Tensor], positions: torch.Tensor, block_table: torch.Tensor,
    d_main: int, d_v: int, scale: float, shared_v: bool, scale_block: int,
) -> torch.Tensor:
    """`fp8_decode_attention` over page pools read through the block table (as `paged_decode_attention`): MLA's
    parts (num_pages, page_size, X), or K and V pools and their scales (num_pages, page_size, G, X)."""
    k = _groups(k_pool)
    parts = Fp8Parts(_groups(k_scale), _groups(k_rope), None if shared_v else _groups(v_scale), scale_block)
    return _split_kv(q, k, k if shared_v else _groups(v_pool), positions, block_table,
                     block_table.size(1) * k.size(2), d_main, d_v, scale, shared_v, None, parts)


def _split_kv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    block_table: Optional[torch.Tensor],
    S: int,
    d_main: int,
    d_v: int,
    scale: float,
    shared_v: bool,
    config: Optional[LaunchConfig],
    fp8: Optional[Fp8Parts] = None,
) -> torch.Tensor:
    """Every launch: k, v (rows or pages, G, positions or slots, d); S the most positions a row holds; with a
    block table, the kernel's PAGED switch on and the page size k.size(2); with `fp8`, its FP8 switch and parts."""
    B, H, T, Dq = q.shape
    G = k.size(1)
    d_rope = Dq - d_main
    heads_per_group = H // G
    n_rows = heads_per_group * T
    n_sms = sm_count(q.device.index if q.device.index is not None else torch.cuda.current_device()) if q.is_cuda else 4
    config = config or default_config(n_rows, d_v, B * G, n_sms)
    block_dv = triton.next_power_of_2(d_v)
    row_blocks = triton.cdiv(n_rows, config.block_h)
    split_len, n_splits = split_plan(B * G * row_blocks, S, n_sms, config)
    out = torch.empty(B, H, T, d_v, device=q.device, dtype=q.dtype)
    if n_splits > 1:
        part_o = torch.empty(B * G * n_rows * n_splits * block_dv, device=q.device, dtype=torch.float32)
        part_lse = torch.empty(B * G * n_rows * n_splits, device=q.device, dtype=torch.float32)
    else:
        part_o = part_lse = out  # unused
    sizes = (G, heads_per_group, T, n_rows, S, split_len, n_splits)
    pos_strides = (positions.stride(0), positions.stride(1))
    out_strides = (out.stride(0), out.stride(1), out.stride(2))
    paged = block_table is not None
    k_scale, k_rope, v_scale = (fp8.k_scale, fp8.k_rope, fp8.v_scale) if fp8 is not None else (None, None, None)
    block_dm = triton.next_power_of_2(d_main)
    block_sb, n_blk = block_dm, 1  # fp8: the K scales' column blocks (one per token: the whole row)
    if fp8 is not None and k_scale.size(-1) > 1:
        block_sb, n_blk = fp8.block, k_scale.size(-1)
        if not (n_blk <= MAX_SCALE_BLOCKS and block_sb >= 16 and (not shared_v or d_v == d_main)):
            raise ValueError(f"the fp8 decode kernel takes up to {MAX_SCALE_BLOCKS} scales per token in blocks of "
                             f"at least 16 values, got {n_blk} of {block_sb}")
    with on_device(q):
        _split_kernel[(row_blocks, B * G, n_splits)](
            q, k, v, *(q if t is None else t for t in (k_scale, k_rope, v_scale)),  # q: a part not read
            positions, block_table if paged else positions, out, part_o, part_lse,  # static: BT unread
            scale * LOG2E,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            *_strides(k_scale, 3), *_strides(k_rope, 3), *_strides(v_scale, 3),
            *pos_strides, block_table.stride(0) if paged else 0, *out_strides, *sizes,
            D_MAIN=d_main, D_ROPE=d_rope, D_V=d_v,
            BLOCK_DM=block_dm,
            BLOCK_DR=triton.next_power_of_2(max(d_rope, 16)),
            BLOCK_DV=block_dv,
            BLOCK_H=config.block_h, BLOCK_N=config.block_n,
            SHARED_V=shared_v, SINGLE_SPLIT=n_splits == 1, PAGED=paged, PAGE_SIZE=k.size(2) if paged else 1,
            FP8=fp8 is not None, BLOCK_SB=block_sb, N_BLK=n_blk,
            num_warps=config.num_warps, num_stages=config.num_stages,
        )
        if n_splits > 1:
            block_s = min(triton.next_power_of_2(n_splits), MERGE_BLOCK_S)
            chunk_dv = min(block_dv, max(64, MERGE_TILE // block_s))  # many splits: more programs per row
            _merge_kernel[(B * G, n_rows, block_dv // chunk_dv)](
                positions, out, part_o, part_lse, *pos_strides, *out_strides, *sizes,
                D_V=d_v, BLOCK_DV=block_dv, BLOCK_S=block_s, CHUNK_DV=chunk_dv, num_warps=4,
            )
    return out


def mla_cache_write(
    query: torch.Tensor,
    kv_a: torch.Tensor,
    cache: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    interleave: bool,
) -> torch.Tensor:
    """One launch for one new token per row: [RMSNorm(latent) * gain | rope(key)] of kv_a written into the cache
    at positions, and the query's rope part rotated. Shapes are checked by `litgpt.kernels.mla_cache_write`.

    query: (B, h, d_c + d_R), rope part not yet rotated; kv_a: (B, d_c + d_R) = kv_a_proj's output; cache:
    (B, S, d_c + d_R), written at positions (B,) (batch stride may be 0; nothing written outside 0..S-1); cos, sin:
    (B or 1, d_R) rows of the rope tables at those positions. Returns the query (B, h, 1, d_c + d_R) with its rope
    part rotated, in query.dtype.
    """
    return _mla_write(query, kv_a, cache, positions, None, cache.size(1), cos, sin, norm_weight, eps, interleave)


def paged_mla_cache_write(
    query: torch.Tensor,
    kv_a: torch.Tensor,
    pool: torch.Tensor,
    positions: torch.Tensor,
    block_table: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    interleave: bool,
) -> torch.Tensor:
    """`mla_cache_write` into a page pool (num_pages, page_size, d_c + d_R): row b's entry goes to page
    block_table[b, positions[b] // page_size], slot positions[b] % page_size (block_table (B, P), unit last stride;
    nothing written for a position outside 0..P * page_size - 1)."""
    return _mla_write(query, kv_a, pool, positions, block_table, block_table.size(1) * pool.size(1), cos, sin,
                      norm_weight, eps, interleave)


def fp8_mla_cache_write(
    query: torch.Tensor, kv_a: torch.Tensor, cache: torch.Tensor, scale: torch.Tensor, rope: torch.Tensor,
    positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, norm_weight: torch.Tensor, eps: float,
    interleave: bool, scale_block: int,
) -> torch.Tensor:
    """`mla_cache_write` into an fp8 cache, quantized in the same launch: the latent in e4m3 into cache
    (B, S, d_c) with one scale per scale_block values into scale (B, S, ceil(d_c / scale_block)), the roped key
    into rope (B, S, d_R) in the model's dtype."""
    return _mla_write(query, kv_a, cache, positions, None, cache.size(1), cos, sin, norm_weight, eps, interleave,
                      Fp8Parts(scale, rope, None, scale_block))


def paged_fp8_mla_cache_write(
    query: torch.Tensor, kv_a: torch.Tensor, pool: torch.Tensor, scale: torch.Tensor, rope: torch.Tensor,
    positions: torch.Tensor, block_table: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    norm_weight: torch.Tensor, eps: float, interleave: bool, scale_block: int,
) -> torch.Tensor:
    """`fp8_mla_cache_write` into page pools (num_pages, page_size, ...), addressed as `paged_mla_cache_write`."""
    return _mla_write(query, kv_a, pool, positions, block_table, block_table.size(1) * pool.size(1), cos, sin,
                      norm_weight, eps, interleave, Fp8Parts(scale, rope, None, scale_block))


def _mla_write(
    query: torch.Tensor, kv_a: torch.Tensor, cache: torch.Tensor, positions: torch.Tensor,
    block_table: Optional[torch.Tensor], S: int, cos: torch.Tensor, sin: torch.Tensor, norm_weight: torch.Tensor,
    eps: float, interleave: bool, fp8: Optional[Fp8Parts] = None,
) -> torch.Tensor:
    """Every MLA write: cache (rows or pages, positions or slots, d_c + d_R; with `fp8`, d_c values and its scale
    and rope parts); S the most positions a row holds."""
    B, h, D = query.shape
    d_c, d_r = norm_weight.size(0), D - norm_weight.size(0)
    q_out = torch.empty(B, h, 1, D, device=query.device, dtype=query.dtype)
    paged = block_table is not None
    scale, rope = (fp8.k_scale, fp8.k_rope) if fp8 is not None else (None, None)
    with on_device(query):
        _mla_prologue_kernel[(B, h + 1)](
            query, kv_a, cache, *(query if t is None else t for t in (scale, rope)), positions,
            block_table if paged else positions, cos, sin, norm_weight, q_out,
            eps,
            query.stride(0), query.stride(1), kv_a.stride(0), cache.stride(0), cache.stride(1),
            *_strides(scale, 2), *_strides(rope, 2), positions.stride(0),
            block_table.stride(0) if paged else 0,
            cos.stride(0) if cos.size(0) > 1 else 0, sin.stride(0) if sin.size(0) > 1 else 0,
            q_out.stride(0), q_out.stride(1),
            h, S,
            D_C=d_c, D_R=d_r, BLOCK_C=triton.next_power_of_2(d_c), BLOCK_R=triton.next_power_of_2(d_r),
            INTERLEAVE=interleave, PAGED=paged, PAGE_SIZE=cache.size(1) if paged else 1,
            FP8=fp8 is not None, SCALE_BLOCK=fp8.block if fp8 is not None else 1,
            N_BLOCKS=scale.size(-1) if fp8 is not None else 1,
            num_warps=2,
        )
    return q_out


def gqa_cache_write(
    qkv: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    n_head: int,
    rope_n_elem: int,
    interleave: bool,
) -> torch.Tensor:
    """One launch for one new token per row: the query heads of qkv roped, and its key groups roped and value groups
    copied into the caches at positions. Shapes are checked by `litgpt.kernels.gqa_cache_write`.

    qkv: (B, (n_head + 2 G) * hs) rows [Q heads | K groups | V groups], unit last stride; k_cache, v_cache:
    (B, G, S, hs), written at positions (B,) (batch stride may be 0); cos, sin: (B or 1, rope_n_elem) rows of the
    rope tables at those positions (any float dtype: the rotation runs in fp32). Returns the query (B, n_head, 1, hs)
    in qkv.dtype. Runs on CPU tensors too under the Triton interpreter (`TRITON_INTERPRET=1`), as the tests do.
    """
    return _gqa_write(qkv, k_cache, v_cache, positions, None, k_cache.size(2), cos, sin, n_head, rope_n_elem,
                      interleave)


def paged_gqa_cache_write(
    qkv: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    positions: torch.Tensor,
    block_table: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    n_head: int,
    rope_n_elem: int,
    interleave: bool,
) -> torch.Tensor:
    """`gqa_cache_write` into K and V page pools (num_pages, page_size, G, hs): row b's key and value groups go to
    page block_table[b, positions[b] // page_size], slot positions[b] % page_size (block_table (B, P), unit last
    stride; nothing written for a position outside 0..P * page_size - 1)."""
    k, v = k_pool.transpose(1, 2), v_pool.transpose(1, 2)  # (num_pages, G, page_size, hs) views
    return _gqa_write(qkv, k, v, positions, block_table, block_table.size(1) * k.size(2), cos, sin, n_head,
                      rope_n_elem, interleave)


def fp8_gqa_cache_write(
    qkv: torch.Tensor, k_cache: torch.Tensor, k_scale: torch.Tensor, v_cache: torch.Tensor, v_scale: torch.Tensor,
    positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_head: int, rope_n_elem: int, interleave: bool,
) -> torch.Tensor:
    """`gqa_cache_write` into fp8 caches, quantized in the same launch: keys and values in e4m3 (B, G, S, hs), each
    token and group with its one scale in k_scale, v_scale (B, G, S, 1)."""
    return _gqa_write(qkv, k_cache, v_cache, positions, None, k_cache.size(2), cos, sin, n_head, rope_n_elem,
                      interleave, Fp8Parts(k_scale, None, v_scale, k_cache.size(-1)))


def paged_fp8_gqa_cache_write(
    qkv: torch.Tensor, k_pool: torch.Tensor, k_scale: torch.Tensor, v_pool: torch.Tensor, v_scale: torch.Tensor,
    positions: torch.Tensor, block_table: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_head: int,
    rope_n_elem: int, interleave: bool,
) -> torch.Tensor:
    """`fp8_gqa_cache_write` into page pools (num_pages, page_size, G, hs) and their scales (num_pages, page_size,
    G, 1), addressed as `paged_gqa_cache_write`."""
    k = k_pool.transpose(1, 2)  # (num_pages, G, page_size, hs)
    return _gqa_write(qkv, k, v_pool.transpose(1, 2), positions, block_table, block_table.size(1) * k.size(2), cos,
                      sin, n_head, rope_n_elem, interleave,
                      Fp8Parts(k_scale.transpose(1, 2), None, v_scale.transpose(1, 2), k.size(-1)))


def _gqa_write(
    qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, positions: torch.Tensor,
    block_table: Optional[torch.Tensor], S: int, cos: torch.Tensor, sin: torch.Tensor, n_head: int, rope_n_elem: int,
    interleave: bool, fp8: Optional[Fp8Parts] = None,
) -> torch.Tensor:
    """Every MHA/GQA write: k_cache, v_cache (rows or pages, G, positions or slots, hs), with `fp8` their scales
    laid out alike; S the most positions a row holds."""
    B = qkv.size(0)
    G, hs = k_cache.size(1), k_cache.size(3)
    q_out = torch.empty(B, n_head, 1, hs, device=qkv.device, dtype=qkv.dtype)
    paged = block_table is not None
    k_scale, v_scale = (fp8.k_scale, fp8.v_scale) if fp8 is not None else (None, None)
    with on_device(qkv):
        _gqa_prologue_kernel[(B, n_head + G)](
            qkv, k_cache, v_cache, *(qkv if t is None else t for t in (k_scale, v_scale)), positions,
            block_table if paged else positions, cos, sin, q_out,
            qkv.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
            *_strides(k_scale, 3), *_strides(v_scale, 3), positions.stride(0),
            block_table.stride(0) if paged else 0,
            cos.stride(0) if cos.size(0) > 1 else 0, sin.stride(0) if sin.size(0) > 1 else 0,
            q_out.stride(0), q_out.stride(1),
            n_head, G, S,
            HS=hs, N_ROPE=rope_n_elem, BLOCK_D=triton.next_power_of_2(hs), INTERLEAVE=interleave,
            PAGED=paged, PAGE_SIZE=k_cache.size(2) if paged else 1, FP8=fp8 is not None,
            num_warps=1,
        )
    return q_out
