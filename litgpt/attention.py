"""Causal self-attention: MHA/GQA/MQA (`CausalSelfAttention`) and multi-head latent attention
(`MultiheadLatentAttention`, DeepSeek-V2), sharing one base for rope, cache plumbing and the SDPA call.

Every forward of a model passes one `AttentionInputs` down to each layer: the rope rows of the new tokens and,
with a KV cache, their positions. A query at position p sees cached positions <= p; the mask that says so is
built only by the SDPA calls that read it (`AttentionInputs.mask`), never by the decode kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from litgpt.config import Config
from litgpt.kernels import (
    gather_pages,
    gqa_decode_attention,
    key_mask,
    latent_entries,
    mla_decode_attention,
    mla_decode_attention_reference,
    roped_heads,
)
from litgpt.kernels.fp8_cache import Fp8Rows, as_dense
from litgpt.kv_cache import KVCache, KVCacheCompressed, PagedKVCache, PagedKVCacheCompressed
from litgpt.norm import RMSNorm
from litgpt.projection import Projection, as_dtype, linear_map, stack_outputs
from litgpt.rope import apply_rope_last, softmax_scale_multiplier

# A folded MLA step (`decode_projections`) takes W_UK into the query map and W_UV into the output map when that adds
# at most this many parameters a layer over the unfolded maps plus W_UK and W_UV: folding saves the two per-head
# products' launches (a few microseconds) but reads the larger maps every step. 8M parameters are 16 MB in bf16, about
# those launches' time at 3 TB/s. pythia-160m-mla adds 3.1M (folded); DeepSeek-V2-Lite 23M and DeepSeek-V3, whose
# output map would grow by 344M a layer, keep their maps and apply W_UK and W_UV in the step.
ABSORB_EXTRA_PARAMS = 8_000_000


@dataclass(frozen=True)
class AttentionInputs:
    """What every layer of one forward reads, built once by `GPT.forward`.

    cos, sin: rope rows of the new tokens, (T, n) or per row (B, T, n). input_pos: their positions, (T,) or (B, T),
    consecutive in each row, when they go into a KV cache (None: a causal pass over the new tokens alone, as in
    training). input_pos_maxp1: with a cache, read only its first input_pos_maxp1 positions.
    block_table: with a paged cache, (B, P) page ids: row b's position p lives in page block_table[b, p // page_size].
    """

    cos: torch.Tensor
    sin: torch.Tensor
    input_pos: Optional[torch.Tensor] = None
    input_pos_maxp1: Optional[int] = None
    block_table: Optional[torch.Tensor] = None

    @property
    def cached(self) -> bool:
        return self.input_pos is not None

    def mask(self, key_len: int) -> Optional[torch.Tensor]:
        """For SDPA over key_len cached keys: True where a query may attend ((T, S) or (B, 1, T, S)); None where
        SDPA's is_causal says the same: a pass without a cache, or a prefill from position 0 that reads just its T
        keys (input_pos_maxp1 == T: its positions are 0..T-1), which then runs SDPA's causal kernels (cuDNN, flash)
        instead of a masked one."""
        if self.input_pos is None or self.input_pos_maxp1 == key_len == self.input_pos.size(-1):
            return None
        return key_mask(self.input_pos, key_len)

    def cache_view(self, cache: torch.Tensor | Fp8Rows, seq_dim: int) -> torch.Tensor:
        """The part of a whole cache buffer this forward reads, positions along seq_dim: its first input_pos_maxp1
        positions, or all, as dense values (an FP8 cache dequantized). A paged cache's pool (num_pages, page_size,
        ...) comes back as each row's pages gathered in order (a contiguous copy, (B, S, ...) with S moved to
        seq_dim), for SDPA to read."""
        if self.block_table is not None:
            return gather_pages(cache, self.block_table, self.input_pos_maxp1).movedim(1, seq_dim)
        return as_dense(self.kernel_view(cache, seq_dim))

    def kernel_view(self, cache: torch.Tensor | Fp8Rows, seq_dim: int) -> torch.Tensor | Fp8Rows:
        """What the decode attention functions read (`litgpt.kernels`), in the cache's own format: a static cache's
        first input_pos_maxp1 positions (or all); a paged cache's pool itself, which they read through
        `block_table`."""
        if self.block_table is not None or self.input_pos_maxp1 is None:
            return cache
        return cache.narrow(seq_dim, 0, self.input_pos_maxp1)


def cudnn_attention_takes(q: torch.Tensor, mask: Optional[torch.Tensor]) -> bool:
    """True where SDPA runs cuDNN attention, which takes a value head narrower than the query/key head: a causal
    pass without a mask, in bf16/fp16, on a Hopper-or-newer GPU with cuDNN attention enabled. There, MLA's training
    attention skips padding V (pythia-160m-mla on an H100: 0.675 against 0.789 ms per layer forward + backward)."""
    return (
        mask is None
        and q.is_cuda
        and q.dtype in (torch.bfloat16, torch.float16)
        and cudnn_attention_preferred(q.device.index)
    )


def cudnn_attention_preferred(device_index: int) -> bool:
    """cuDNN attention is enabled and the GPU is Hopper or newer, where SDPA tries it first."""
    return torch.backends.cuda.cudnn_sdp_enabled() and torch.cuda.get_device_capability(device_index) >= (9, 0)


# A constant while compiling (no graph break, no guard): the mark that `torch.compiler.assume_constant_result` sets,
# set without its import of torch._dynamo, which costs every command about a second at start-up.
# tests/test_attention.py::test_cudnn_decision_compiles_without_graph_breaks fails if the mark stops working.
cudnn_attention_preferred._dynamo_marked_constant = True


class AttentionBase(nn.Module):
    """What MHA and MLA share: the config, the SDPA call, the KV-cache plumbing and the kernel switch.

    A layer's decode-time form is two linear maps around `attend_projected`: `decode_projections` gives them, and a
    block folds them with its norms (`litgpt.fold`).
    """

    kv_cache: Optional[nn.Module]

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.kv_cache = None
        # Cached one-token steps run the Triton kernels on CUDA where they apply (`litgpt.kernels`); False keeps the
        # pure-torch path. `litgpt.kernels.set_kernels(model, enabled)` sets it on a whole model.
        self.use_kernel = True

    @staticmethod
    def attend(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], scale: Optional[float] = None
    ) -> torch.Tensor:
        """SDPA of q (B, nh, T, d) over k, v (B, ng, S, d[_v]); grouped heads are not repeated in memory."""
        enable_gqa = q.size(1) != k.size(1)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=enable_gqa
        )  # (B, nh, T, d_v)

    def decode_projections(self) -> tuple[Projection, Projection]:
        """(weight, bias) of the one linear map from the normed input to what `attend_projected` takes, and of the
        one linear map from what it returns to the attention output."""
        raise NotImplementedError

    def attend_projected(self, h: torch.Tensor, ctx: AttentionInputs) -> torch.Tensor:
        """What lies between the two maps of `decode_projections`: (B, T, in width) -> (B, T, out width)."""
        raise NotImplementedError

    def check_cache(self, ctx: AttentionInputs) -> None:
        if ctx.cached and self.kv_cache is None:
            raise TypeError("input_pos was given but no KV cache is set: call `model.set_kv_cache(batch_size)` first")

    def build_kv_cache(
        self, batch_size: int, max_seq_length: int, device: Optional[torch.device], dtype: Optional[torch.dtype],
        kv_cache_dtype: Optional[str] = None,
    ) -> nn.Module:
        """This layer's static cache; kv_cache_dtype None (dtype) or "fp8_e4m3" (`litgpt.kv_cache`)."""
        raise NotImplementedError

    def build_paged_kv_cache(
        self, num_pages: int, page_size: int, device: Optional[torch.device], dtype: Optional[torch.dtype],
        kv_cache_dtype: Optional[str] = None,
    ) -> nn.Module:
        """This layer's paged cache; kv_cache_dtype as in `build_kv_cache`."""
        raise NotImplementedError

    def kv_cache_bytes(self) -> int:
        """Bytes held by this layer's cache buffers (0 when none is set)."""
        if self.kv_cache is None:
            return 0
        return sum(b.numel() * b.element_size() for b in self.kv_cache.buffers())


class CausalSelfAttention(AttentionBase):
    """MHA (n_query_groups == n_head), GQA (1 < groups < n_head) and MQA (groups == 1).

    `qkv` rows are [all Q heads | all K groups | all V groups], as in upstream litgpt.
    """

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        hs, n_head, n_groups = config.head_size, config.n_head, config.n_query_groups
        self.qkv = nn.Linear(config.n_embd, (n_head + 2 * n_groups) * hs, bias=config.bias or config.attn_bias)
        self.proj = nn.Linear(n_head * hs, config.n_embd, bias=config.bias)
        self.scale = softmax_scale_multiplier(config.rope_adjustments) / math.sqrt(hs)  # YaRN's mscale^2 included

    def forward(self, x: torch.Tensor, ctx: AttentionInputs) -> torch.Tensor:
        return self.proj(self.attend_projected(self.qkv(x), ctx))  # (B, T, n_embd)

    def attend_projected(self, qkv: torch.Tensor, ctx: AttentionInputs) -> torch.Tensor:
        """Attention between the two projections: qkv (B, T, (nh + 2 ng) hs) -> (B, T, nh * hs)."""
        self.check_cache(ctx)
        B, T, _ = qkv.shape
        c = self.config
        hs, n_head, n_groups = c.head_size, c.n_head, c.n_query_groups
        if not ctx.cached:  # a causal pass over the new tokens alone
            q, k, v = roped_heads(qkv, n_head, n_groups, hs, ctx.cos, ctx.sin, c.rope_n_elem, c.rope_interleave)
            y = self.attend(q, k, v, None, scale=self.scale)  # (B, nh, T, hs)
            return y.transpose(1, 2).reshape(B, T, n_head * hs)
        # the cache's write splits qkv, ropes q and k and writes k, v: one launch for a decode step on CUDA
        q, k, v = self.kv_cache.write_qkv(ctx.input_pos, qkv, ctx.cos, ctx.sin, n_head, c.rope_n_elem,
                                          c.rope_interleave, self.use_kernel, ctx.block_table)
        # q (B, nh, T, hs); k, v: caches (B, ng, S, hs) or paged pools (num_pages, page_size, ng, hs)
        if T == 1 and self.use_kernel:  # decode: the split-KV kernel reads only valid tokens (through the pages)
            y = gqa_decode_attention(q, ctx.kernel_view(k, seq_dim=2), ctx.kernel_view(v, seq_dim=2), ctx.input_pos,
                                     self.scale, ctx.block_table)  # (B, nh, 1, hs)
        else:
            k, v = ctx.cache_view(k, seq_dim=2), ctx.cache_view(v, seq_dim=2)  # (B, ng, S, hs)
            y = self.attend(q, k, v, ctx.mask(k.size(2)), scale=self.scale)  # (B, nh, T, hs)
        return y.transpose(1, 2).reshape(B, T, n_head * hs)

    def decode_projections(self) -> tuple[Projection, Projection]:
        return linear_map(self.qkv), linear_map(self.proj)

    def build_kv_cache(
        self, batch_size: int, max_seq_length: int, device: Optional[torch.device], dtype: Optional[torch.dtype],
        kv_cache_dtype: Optional[str] = None,
    ) -> KVCache:
        c = self.config
        return KVCache(batch_size, c.n_query_groups, max_seq_length, c.head_size, device=device, dtype=dtype,
                       kv_cache_dtype=kv_cache_dtype)

    def build_paged_kv_cache(
        self, num_pages: int, page_size: int, device: Optional[torch.device], dtype: Optional[torch.dtype],
        kv_cache_dtype: Optional[str] = None,
    ) -> PagedKVCache:
        c = self.config
        return PagedKVCache(num_pages, page_size, c.n_query_groups, c.head_size, device=device, dtype=dtype,
                            kv_cache_dtype=kv_cache_dtype)


class MultiheadLatentAttention(AttentionBase):
    """Multi-head latent attention with decoupled RoPE (DeepSeek-V2).

    Keys and values are compressed into a latent c = kv_a_norm(W_DKV x) of width d_c shared by all heads, plus
    one roped key k_R of width d_R shared by all heads; the cache stores only [c | k_R] (`KVCacheCompressed`).

    Two paths compute the same function, side by side:
      naive    -- decompress per-head K/V with kv_b_proj, then SDPA (training and prefill);
      absorbed -- W_UK into the query and W_UV after, attending directly over the latent (decode). Its one
                  variable is whether W_UK/W_UV are pre-folded into the maps around it (a folded block's step).
    `absorb=None` (default) picks absorbed for cached steps of one token and naive otherwise; True/False forces one.
    """

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        mla = config.mla
        assert mla is not None
        self.dims = mla
        # As upstream litgpt: the down-projections follow attn_bias, the up-projections and proj follow bias.
        n_head = config.n_head
        if mla.q_lora_rank is None:
            self.q_proj = nn.Linear(config.n_embd, n_head * mla.qk_head_dim, bias=config.bias)
        else:
            self.q_a_proj = nn.Linear(config.n_embd, mla.q_lora_rank, bias=config.attn_bias)
            self.q_a_norm = RMSNorm(mla.q_lora_rank, eps=config.norm_eps)
            self.q_b_proj = nn.Linear(mla.q_lora_rank, n_head * mla.qk_head_dim, bias=config.bias)
        self.kv_a_proj_with_mqa = nn.Linear(config.n_embd, mla.cache_width, bias=config.attn_bias)
        self.kv_a_norm = RMSNorm(mla.kv_lora_rank, eps=config.norm_eps)
        kv_b_width = n_head * (mla.qk_nope_head_dim + mla.v_head_dim)
        self.kv_b_proj = nn.Linear(mla.kv_lora_rank, kv_b_width, bias=config.bias)
        if mla.o_latent_dim is None:
            self.proj = nn.Linear(n_head * mla.v_head_dim, config.n_embd, bias=config.bias)
        else:  # MLA-o: a low-rank output map through an output latent, optionally normed
            self.o_a_proj = nn.Linear(n_head * mla.v_head_dim, mla.o_latent_dim, bias=config.attn_bias)
            if mla.o_latent_norm:
                self.o_a_norm = RMSNorm(mla.o_latent_dim, eps=config.norm_eps)
            self.o_b_proj = nn.Linear(mla.o_latent_dim, config.n_embd, bias=config.bias)
        # 1/sqrt(d_n + d_R), with YaRN times mscale(factor, mscale_all_dim)^2 (as DeepSeek scales its softmax)
        self.scale = softmax_scale_multiplier(config.rope_adjustments) / math.sqrt(mla.qk_head_dim)
        self.absorb: Optional[bool] = None

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, n_embd) -> (B, T, h * (d_n + d_R))."""
        if self.dims.q_lora_rank is None:
            return self.q_proj(x)
        return self.q_b_proj(self.q_a_norm(self.q_a_proj(x)))

    def output(self, y: torch.Tensor) -> torch.Tensor:
        """The output map: (B, T, h * d_v) -> (B, T, n_embd), `proj` or MLA-o's o_b_proj(o_a_norm(o_a_proj(y)))."""
        if self.dims.o_latent_dim is None:
            return self.proj(y)
        return self.o_b_proj(self.output_latent(y))

    def output_latent(self, y: torch.Tensor) -> torch.Tensor:
        """MLA-o: (B, T, h * d_v) -> the (normed) output latent (B, T, o_latent_dim)."""
        o = self.o_a_proj(y)
        return self.o_a_norm(o) if self.dims.o_latent_norm else o

    def forward(self, x: torch.Tensor, ctx: AttentionInputs) -> torch.Tensor:
        self.check_cache(ctx)
        d, h = self.dims, self.config.n_head
        B, T, _ = x.shape  # (B, T, n_embd)
        q = self.query(x).view(B, T, h, d.qk_head_dim).transpose(1, 2)  # (B, h, T, d_n+d_R)
        kv_a = self.kv_a_proj_with_mqa(x)  # (B, T, d_c+d_R)
        absorb = self.absorb if self.absorb is not None else (ctx.cached and T == 1)
        if absorb:
            y = self.absorbed(q, kv_a, ctx, prefolded=False)  # (B, T, h * d_v)
        else:
            y = self.naive(q, kv_a, ctx)  # (B, T, h * d_v)
        return self.output(y)  # (B, T, n_embd)

    def latent_cache(
        self, kv_a: torch.Tensor, ctx: AttentionInputs, query: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The attended [c | k_R] for kv_a_proj's output (B, T, d_c+d_R): the T new tokens alone (B, T, d_c+d_R)
        without a cache, else the whole cache (B, S, d_c+d_R) or page pool (num_pages, page_size, d_c+d_R) after
        writing them (`AttentionInputs.cache_view`/`kernel_view` give the part to read). `query`
        (B, h, T, .. + d_R) comes back with its rope part roped (in the cache's write launch where the kernel
        applies)."""
        c = self.config
        if not ctx.cached:
            kv = latent_entries(kv_a, ctx.cos, ctx.sin, self.kv_a_norm.weight, self.kv_a_norm.eps, c.rope_interleave)
            return kv, None if query is None else apply_rope_last(query, ctx.cos, ctx.sin, c.rope_interleave)
        return self.kv_cache.write(ctx.input_pos, kv_a, ctx.cos, ctx.sin, self.kv_a_norm, c.rope_interleave, query,
                                   self.use_kernel, ctx.block_table)

    def naive(self, q: torch.Tensor, kv_a: torch.Tensor, ctx: AttentionInputs) -> torch.Tensor:
        """Decompress per-head K/V from the latent and run SDPA. q (B, h, T, d_n+d_R) -> (B, T, h * d_v)."""
        d, h = self.dims, self.config.n_head
        B, _, T, _ = q.shape
        kv, q = self.latent_cache(kv_a, ctx, query=q)  # q with its rope part roped
        kv = ctx.cache_view(kv, seq_dim=1)  # (B, S, d_c+d_R)
        S = kv.size(1)
        latent, k_rope = kv.split((d.kv_lora_rank, d.qk_rope_head_dim), dim=-1)  # (B, S, d_c), (B, S, d_R)
        k_nope, v = (
            self.kv_b_proj(latent).view(B, S, h, d.qk_nope_head_dim + d.v_head_dim).transpose(1, 2)
        ).split((d.qk_nope_head_dim, d.v_head_dim), dim=-1)  # (B, h, S, d_n), (B, h, S, d_v)
        k = torch.cat((k_nope, k_rope.unsqueeze(1).expand(B, h, S, d.qk_rope_head_dim)), dim=-1)  # (B, h, S, d_n+d_R)
        mask = ctx.mask(S)
        pad = d.qk_head_dim - d.v_head_dim
        if pad > 0 and cudnn_attention_takes(q, mask):
            v = v.contiguous()  # a strided view of kv_b_proj's output would send SDPA to a slower backend
        elif pad > 0:  # SDPA's flash kernel needs one head dim for q, k and v: pad V with zeros, drop them after
            v = F.pad(v, (0, pad))  # (B, h, S, d_n+d_R)
        elif pad < 0:  # a value head wider than the query/key head (small d_n): pad q and k, which adds 0 to scores
            q, k = F.pad(q, (0, -pad)), F.pad(k, (0, -pad))  # (B, h, T|S, d_v)
        y = self.attend(q, k, v, mask, scale=self.scale)[..., : d.v_head_dim]  # (B, h, T, d_v)
        return y.transpose(1, 2).reshape(B, T, h * d.v_head_dim)

    def absorbed(self, q: torch.Tensor, kv_a: torch.Tensor, ctx: AttentionInputs, prefolded: bool) -> torch.Tensor:
        """Attend over the latent with W_UK absorbed into the query and W_UV applied to the output.

        prefolded=False: q (B, h, T, d_n+d_R) is the query as `query` makes it; returns (B, T, h * d_v).
        prefolded=True: W_UK is already in the query map, so q (B, h, T, d_c+d_R) is [q_latent | q_rope], and W_UV
        is in the output map, so the latent output (B, T, h * d_c) is returned.
        The query at position p sees cached tokens 0..p; without a cache, the new tokens causally.
        """
        d, h = self.dims, self.config.n_head
        B, _, T, _ = q.shape
        w_uk, w_uv = self.absorbed_weights()  # (h, d_n, d_c), (h, d_v, d_c)
        if not prefolded:
            q_nope, q_rope = q.split((d.qk_nope_head_dim, d.qk_rope_head_dim), dim=-1)
            q = torch.cat((torch.einsum("bhtn,hnc->bhtc", q_nope, w_uk), q_rope), dim=-1)  # (B, h, T, d_c+d_R)
        kv, q = self.latent_cache(kv_a, ctx, query=q)  # q with its rope part roped
        kv = ctx.kernel_view(kv, seq_dim=1)  # (B, S, d_c+d_R), or a paged pool read through ctx.block_table
        input_pos = ctx.input_pos if ctx.cached else torch.arange(T, device=q.device)
        attention = mla_decode_attention if self.use_kernel else mla_decode_attention_reference
        o_latent = attention(q, kv, input_pos, d.kv_lora_rank, self.scale, ctx.block_table)  # (B, h, T, d_c)
        if prefolded and not d.o_latent_norm:
            return o_latent.transpose(1, 2).reshape(B, T, h * d.kv_lora_rank)
        y = torch.einsum("bhtc,hvc->bthv", o_latent, w_uv)  # (B, T, h, d_v)
        b_v = self.value_bias()
        if b_v is not None:
            y = y + b_v  # softmax weights sum to one, so the value bias passes through unchanged
        y = y.reshape(B, T, h * d.v_head_dim)
        # MLA-o with its norm: the norm sits between o_a_proj and o_b_proj, so the output map cannot take W_UV and
        # o_a_proj in; the prefolded path returns the normed output latent and the output map is o_b_proj alone
        return self.output_latent(y) if prefolded else y

    def attend_projected(self, h_in: torch.Tensor, ctx: AttentionInputs) -> torch.Tensor:
        """The absorbed path between the maps of `decode_projections`: h_in (B, T, q width + d_c + d_R) -> the
        latent attention output (B, T, h * d_c), or with MLA-o's norm the normed output latent (B, T, o_latent_dim).

        Without q_lora_rank the query part of h_in is [q_latent | q_rope] per head (W_UK folded into q_proj); with
        it, that part is q_a_proj's output and the query is finished here (W_UK folded into q_b_proj's output).
        """
        self.check_cache(ctx)
        d, h = self.dims, self.config.n_head
        B, T, _ = h_in.shape
        q_part, kv_a = h_in.split((h_in.size(-1) - d.cache_width, d.cache_width), dim=-1)
        folds = self.folds_absorption()
        if d.q_lora_rank is None and folds:
            q = q_part.view(B, T, h, d.cache_width).transpose(1, 2)  # (B, h, T, d_c+d_R)
            return self.absorbed(q, kv_a, ctx, prefolded=True)
        if d.q_lora_rank is not None:
            q_part = self.q_b_proj(self.q_a_norm(q_part))  # (B, T, h * (d_n+d_R))
        q = q_part.view(B, T, h, d.qk_head_dim).transpose(1, 2)  # (B, h, T, d_n+d_R)
        if not folds:  # W_UK and W_UV applied here; the output map is the unfolded one
            y = self.absorbed(q, kv_a, ctx, prefolded=False)  # (B, T, h * d_v)
            return self.output_latent(y) if d.o_latent_norm else y
        q_nope, q_rope = q.split((d.qk_nope_head_dim, d.qk_rope_head_dim), dim=-1)
        q = torch.cat((torch.einsum("bhtn,hnc->bhtc", q_nope, self.absorbed_weights()[0]), q_rope), dim=-1)
        return self.absorbed(q, kv_a, ctx, prefolded=True)

    def folds_absorption(self) -> bool:
        """Whether `decode_projections` folds W_UK into the query map (without q_lora_rank) and W_UV into the output
        map: only where the folded maps hold at most ABSORB_EXTRA_PARAMS more parameters than the unfolded ones plus
        W_UK and W_UV (a pure function of the shapes, so `attend_projected` agrees with the maps it is given)."""
        d, h, n_embd = self.dims, self.config.n_head, self.config.n_embd
        extra = 0
        if d.q_lora_rank is None:  # [W_UK q_nope | q_rope] per head against q_proj and W_UK
            extra += h * d.cache_width * n_embd - (h * d.qk_head_dim * n_embd + h * d.qk_nope_head_dim * d.kv_lora_rank)
        if not d.o_latent_norm:  # proj . W_UV (MLA-o: o_b . o_a . W_UV) against `output_map` and W_UV
            extra += h * d.kv_lora_rank * n_embd - (h * d.v_head_dim * n_embd + h * d.v_head_dim * d.kv_lora_rank)
        return extra <= ABSORB_EXTRA_PARAMS

    def absorbed_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK (h, d_n, d_c) and W_UV (h, d_v, d_c): views of the weight kv_b_proj applies (`linear_map`: with an
        unmerged LoRA update, the base weight plus it)."""
        d, h = self.dims, self.config.n_head
        return linear_map(self.kv_b_proj)[0].view(h, d.qk_nope_head_dim + d.v_head_dim, d.kv_lora_rank).split(
            (d.qk_nope_head_dim, d.v_head_dim), dim=1
        )

    def value_bias(self) -> Optional[torch.Tensor]:
        """kv_b_proj's value bias (h, d_v), or None. (A key bias adds one constant to all of a query's scores,
        which softmax ignores, so the absorbed path drops it.) LoRA leaves biases as they are."""
        bias = self.kv_b_proj.bias
        if bias is None:
            return None
        d = self.dims
        return bias.view(self.config.n_head, d.qk_nope_head_dim + d.v_head_dim)[:, d.qk_nope_head_dim :]

    def decode_projections(self) -> tuple[Projection, Projection]:
        """The absorbed path's input map [q_proj with W_UK folded in per head | kv_a] (or [q_a | kv_a] with
        q_lora_rank) and output map proj . W_UV (MLA-o: o_b_proj . o_a_proj . W_UV; with its norm, o_b_proj alone,
        `attend_projected` then applying W_UV, o_a_proj and the norm), computed in float32 or wider. Where folding
        would grow the maps too much (`folds_absorption`), [q_proj | kv_a] (or [q_a | kv_a]) and `output_map` (with
        MLA-o's norm, o_b_proj) instead: `attend_projected` applies W_UK and W_UV itself."""
        d, h = self.dims, self.config.n_head
        compute = torch.promote_types(self.kv_a_proj_with_mqa.weight.dtype, torch.float32)
        kv_a = linear_map(self.kv_a_proj_with_mqa)
        if not self.folds_absorption():  # the modules' own maps; `attend_projected` applies W_UK and W_UV
            query = linear_map(self.q_proj if d.q_lora_rank is None else self.q_a_proj)
            out = linear_map(self.o_b_proj) if d.o_latent_norm else self.output_map(compute)
            return stack_outputs(query, kv_a), out
        w_uk, w_uv = (w.to(compute) for w in self.absorbed_weights())  # (h, d_n, d_c), (h, d_v, d_c)
        if d.q_lora_rank is None:
            n_embd = self.config.n_embd
            w_q_map, b_q_map = linear_map(self.q_proj)
            w_q = w_q_map.to(compute).view(h, d.qk_head_dim, n_embd)
            w_latent = torch.einsum("hnc,hnm->hcm", w_uk, w_q[:, : d.qk_nope_head_dim])  # (h, d_c, n_embd)
            query: Projection = (torch.cat((w_latent, w_q[:, d.qk_nope_head_dim :]), dim=1).reshape(-1, n_embd), None)
            if b_q_map is not None:
                b_q = b_q_map.to(compute).view(h, d.qk_head_dim)
                b_latent = torch.einsum("hnc,hn->hc", w_uk, b_q[:, : d.qk_nope_head_dim])  # (h, d_c)
                query = (query[0], torch.cat((b_latent, b_q[:, d.qk_nope_head_dim :]), dim=1).flatten())
        else:
            query = linear_map(self.q_a_proj)
        if d.o_latent_norm:
            return stack_outputs(query, kv_a), linear_map(self.o_b_proj)
        w_proj, b_proj = self.output_map(compute)
        w_o = w_proj.to(compute).view(-1, h, d.v_head_dim)  # (n_embd, h, d_v)
        w_out = torch.einsum("mhv,hvc->mhc", w_o, w_uv).flatten(1)  # (n_embd, h * d_c)
        b_out = None if b_proj is None else b_proj.to(compute)
        b_v = self.value_bias()
        if b_v is not None:
            b_v_out = w_o.flatten(1) @ b_v.to(compute).flatten()  # (n_embd,)
            b_out = b_v_out if b_out is None else b_out + b_v_out
        return stack_outputs(query, kv_a), (w_out, b_out)

    def output_map(self, compute: torch.dtype) -> Projection:
        """The output map as one linear (h * d_v -> n_embd) in `compute`: proj, or MLA-o without its norm
        o_b_proj . o_a_proj (weight W_b W_a, bias W_b b_a + b_b)."""
        if self.dims.o_latent_dim is None:
            return as_dtype(linear_map(self.proj), compute)
        w_a, b_a = as_dtype(linear_map(self.o_a_proj), compute)
        w_b, b_b = as_dtype(linear_map(self.o_b_proj), compute)
        bias = None if b_a is None else w_b @ b_a
        if b_b is not None:
            bias = b_b if bias is None else bias + b_b
        return w_b @ w_a, bias

    def build_kv_cache(
        self, batch_size: int, max_seq_length: int, device: Optional[torch.device], dtype: Optional[torch.dtype],
        kv_cache_dtype: Optional[str] = None,
    ) -> KVCacheCompressed:
        d = self.dims
        return KVCacheCompressed(batch_size, max_seq_length, d.kv_lora_rank, d.qk_rope_head_dim, device=device,
                                 dtype=dtype, kv_cache_dtype=kv_cache_dtype)

    def build_paged_kv_cache(
        self, num_pages: int, page_size: int, device: Optional[torch.device], dtype: Optional[torch.dtype],
        kv_cache_dtype: Optional[str] = None,
    ) -> PagedKVCacheCompressed:
        d = self.dims
        return PagedKVCacheCompressed(num_pages, page_size, d.kv_lora_rank, d.qk_rope_head_dim, device=device,
                                      dtype=dtype, kv_cache_dtype=kv_cache_dtype)
