"""Causal self-attention: MHA/GQA/MQA (`CausalSelfAttention`) and multi-head latent attention
(`MultiheadLatentAttention`, DeepSeek-V2), sharing one base for rope, cache plumbing and the SDPA call.

Mask convention for every forward: `mask` is None for a causal pass over the new tokens alone (training,
no cache), or a boolean tensor (T, S) or (B, 1, T, S) that is True where a query may attend a cached key.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from litgpt.config import Config
from litgpt.fold import Projection, stack_outputs
from litgpt.kernels import (
    gqa_decode_attention,
    mla_decode_attention,
    mla_decode_attention_reference,
    mla_decode_step,
    mla_decode_step_applies,
)
from litgpt.kv_cache import KVCache, KVCacheCompressed
from litgpt.norm import RMSNorm
from litgpt.rope import apply_partial_rope, apply_rope


def causal_mask(q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """(q_len, kv_len) boolean mask for the last q_len of kv_len tokens attending causally."""
    return torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(diagonal=kv_len - q_len)


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


@torch.compiler.assume_constant_result  # a constant while compiling: no graph break, no guard
def cudnn_attention_preferred(device_index: int) -> bool:
    """cuDNN attention is enabled and the GPU is Hopper or newer, where SDPA tries it first."""
    return torch.backends.cuda.cudnn_sdp_enabled() and torch.cuda.get_device_capability(device_index) >= (9, 0)


class AttentionBase(nn.Module):
    """What MHA and MLA share: the config, rope application, the SDPA call and KV-cache plumbing."""

    kv_cache: Optional[nn.Module]

    def __init__(self, config: Config, block_idx: int) -> None:
        super().__init__()
        self.config = config
        self.block_idx = block_idx
        self.kv_cache = None
        # Cached one-token steps run the Triton decode kernel on CUDA where it applies (`litgpt.kernels`);
        # False keeps the pure-torch path. `litgpt.kernels.set_kernels(model, enabled)` sets it on a whole model.
        self.use_kernel = True

    def rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate the first `config.rope_n_elem` dims of x (..., T, hs) in the configured layout."""
        return apply_partial_rope(x, cos, sin, self.config.rope_n_elem, self.config.rope_interleave)

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
        one linear map from what it returns to the attention output. `litgpt.fold` builds the decode GEMMs on them."""
        raise NotImplementedError

    def attend_projected(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        input_pos: Optional[torch.Tensor] = None,
        input_pos_maxp1: Optional[int] = None,
    ) -> torch.Tensor:
        """What lies between the two maps of `decode_projections`: (B, T, in width) -> (B, T, out width)."""
        raise NotImplementedError

    def check_cache(self, input_pos: Optional[torch.Tensor]) -> None:
        if input_pos is not None and self.kv_cache is None:
            raise TypeError("input_pos was given but no KV cache is set: call `model.set_kv_cache(batch_size)` first")

    def build_kv_cache(
        self,
        batch_size: int,
        max_seq_length: int,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> nn.Module:
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

    def __init__(self, config: Config, block_idx: int) -> None:
        super().__init__(config, block_idx)
        hs, n_head, n_groups = config.head_size, config.n_head, config.n_query_groups
        self.qkv = nn.Linear(config.n_embd, (n_head + 2 * n_groups) * hs, bias=config.bias or config.attn_bias)
        self.proj = nn.Linear(n_head * hs, config.n_embd, bias=config.bias)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        input_pos: Optional[torch.Tensor] = None,
        input_pos_maxp1: Optional[int] = None,
    ) -> torch.Tensor:
        y = self.attend_projected(self.qkv(x), cos, sin, mask, input_pos, input_pos_maxp1)  # (B, T, nh * hs)
        return self.proj(y)  # (B, T, n_embd)

    def attend_projected(
        self,
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        input_pos: Optional[torch.Tensor] = None,
        input_pos_maxp1: Optional[int] = None,
    ) -> torch.Tensor:
        """Attention between the two projections: qkv (B, T, (nh + 2 ng) hs) -> (B, T, nh * hs)."""
        self.check_cache(input_pos)
        B, T, _ = qkv.shape
        hs, n_head, n_groups = self.config.head_size, self.config.n_head, self.config.n_query_groups
        q, k, v = qkv.split((n_head * hs, n_groups * hs, n_groups * hs), dim=-1)
        q = q.view(B, T, n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, n_groups, hs).transpose(1, 2)  # (B, ng, T, hs)
        v = v.view(B, T, n_groups, hs).transpose(1, 2)  # (B, ng, T, hs)
        q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
        if input_pos is not None:
            k, v = self.kv_cache(input_pos, k, v)  # (B, ng, S, hs)
            if input_pos_maxp1 is not None:
                k, v = k[:, :, :input_pos_maxp1], v[:, :, :input_pos_maxp1]
        if input_pos is not None and T == 1 and self.use_kernel:  # decode: split-KV kernel, reads only valid tokens
            y = gqa_decode_attention(q, k, v, input_pos, 1.0 / math.sqrt(hs))  # (B, nh, 1, hs)
        else:
            y = self.attend(q, k, v, mask)  # (B, nh, T, hs)
        return y.transpose(1, 2).reshape(B, T, n_head * hs)

    def decode_projections(self) -> tuple[Projection, Projection]:
        return (self.qkv.weight, self.qkv.bias), (self.proj.weight, self.proj.bias)

    def build_kv_cache(
        self,
        batch_size: int,
        max_seq_length: int,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> KVCache:
        c = self.config
        return KVCache(batch_size, c.n_query_groups, max_seq_length, c.head_size, device=device, dtype=dtype)


class MultiheadLatentAttention(AttentionBase):
    """Multi-head latent attention with decoupled RoPE (DeepSeek-V2).

    Keys and values are compressed into a latent c = kv_a_norm(W_DKV x) of width d_c shared by all heads, plus
    one roped key k_R of width d_R shared by all heads; the cache stores only [c | k_R].

    Two paths compute the same function:
      naive    -- decompress per-head K/V with kv_b_proj, then SDPA (training and prefill);
      absorbed -- fold W_UK into the query and W_UV into the output, attend directly over the latent (decode).
    `absorb=None` (default) picks absorbed for cached steps of one token and naive otherwise; True/False forces one.
    `use_kernel=True` (default) runs the absorbed attention with the Triton split-KV kernel on CUDA where it applies
    (`litgpt.kernels.mla_decode_attention`); False keeps the pure-torch path. `litgpt.kernels.set_kernels` sets it
    on a whole model.
    """

    def __init__(self, config: Config, block_idx: int) -> None:
        super().__init__(config, block_idx)
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
        kv_a_width = mla.kv_lora_rank + mla.qk_rope_head_dim
        self.kv_a_proj_with_mqa = nn.Linear(config.n_embd, kv_a_width, bias=config.attn_bias)
        self.kv_a_norm = RMSNorm(mla.kv_lora_rank, eps=config.norm_eps)
        kv_b_width = n_head * (mla.qk_nope_head_dim + mla.v_head_dim)
        self.kv_b_proj = nn.Linear(mla.kv_lora_rank, kv_b_width, bias=config.bias)
        self.proj = nn.Linear(n_head * mla.v_head_dim, config.n_embd, bias=config.bias)
        self.scale = 1.0 / math.sqrt(mla.qk_head_dim)
        self.absorb: Optional[bool] = None

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, n_embd) -> (B, T, h * (d_n + d_R))."""
        if self.dims.q_lora_rank is None:
            return self.q_proj(x)
        return self.q_b_proj(self.q_a_norm(self.q_a_proj(x)))

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        input_pos: Optional[torch.Tensor] = None,
        input_pos_maxp1: Optional[int] = None,
    ) -> torch.Tensor:
        self.check_cache(input_pos)
        d = self.dims
        B, T, _ = x.shape  # (B, T, n_embd)
        q = self.query(x).view(B, T, self.config.n_head, d.qk_head_dim).transpose(1, 2)  # (B, h, T, d_n+d_R)
        q_nope, q_rope = q.split((d.qk_nope_head_dim, d.qk_rope_head_dim), dim=-1)  # (B, h, T, d_n), (B, h, T, d_R)
        q_rope = apply_rope(q_rope, cos, sin, self.config.rope_interleave)
        kv = self.latent_kv(self.kv_a_proj_with_mqa(x), cos, sin, input_pos, input_pos_maxp1)  # (B, S, d_c+d_R)
        absorb = self.absorb if self.absorb is not None else (input_pos is not None and T == 1)
        if absorb:
            y = self.absorbed(q_nope, q_rope, kv, input_pos)
        else:
            y = self.naive(q_nope, q_rope, kv, mask)
        return self.proj(y)  # (B, T, n_embd)

    def latent_kv(
        self,
        kv_a: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        input_pos: Optional[torch.Tensor],
        input_pos_maxp1: Optional[int],
    ) -> torch.Tensor:
        """kv_a_proj's output (B, T, d_c+d_R) -> the attended [normed latent c | roped k_R]: the T new tokens
        alone without a cache, else the cache (B, S, d_c+d_R) after writing them at input_pos."""
        d = self.dims
        latent, k_rope = kv_a.split((d.kv_lora_rank, d.qk_rope_head_dim), dim=-1)  # (B, T, d_c), (B, T, d_R)
        latent = self.kv_a_norm(latent)
        k_rope = apply_rope(k_rope, cos, sin, self.config.rope_interleave)  # one rope key for all heads
        if input_pos is None:
            return torch.cat((latent, k_rope), dim=-1)  # (B, T, d_c+d_R)
        kv = self.kv_cache(input_pos, latent, k_rope)  # (B, S, d_c+d_R)
        return kv if input_pos_maxp1 is None else kv[:, :input_pos_maxp1]

    def naive(
        self, q_nope: torch.Tensor, q_rope: torch.Tensor, kv: torch.Tensor, mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Decompress per-head K/V from the latent and run SDPA. Returns (B, T, h * d_v)."""
        d, h = self.dims, self.config.n_head
        B, S, _ = kv.shape
        T = q_nope.size(2)
        latent, k_rope = kv.split((d.kv_lora_rank, d.qk_rope_head_dim), dim=-1)  # (B, S, d_c), (B, S, d_R)
        k_nope, v = (
            self.kv_b_proj(latent).view(B, S, h, d.qk_nope_head_dim + d.v_head_dim).transpose(1, 2)
        ).split((d.qk_nope_head_dim, d.v_head_dim), dim=-1)  # (B, h, S, d_n), (B, h, S, d_v)
        k = torch.cat((k_nope, k_rope.unsqueeze(1).expand(B, h, S, d.qk_rope_head_dim)), dim=-1)  # (B, h, S, d_n+d_R)
        q = torch.cat((q_nope, q_rope), dim=-1)  # (B, h, T, d_n+d_R)
        pad = d.qk_head_dim - d.v_head_dim
        if pad > 0 and cudnn_attention_takes(q, mask):
            v = v.contiguous()  # a strided view of kv_b_proj's output would send SDPA to a slower backend
        elif pad > 0:  # SDPA's flash kernel needs one head dim for q, k and v: pad V with zeros, drop them after
            v = F.pad(v, (0, pad))  # (B, h, S, d_n+d_R)
        y = self.attend(q, k, v, mask, scale=self.scale)[..., : d.v_head_dim]  # (B, h, T, d_v)
        return y.transpose(1, 2).reshape(B, T, h * d.v_head_dim)

    def absorbed_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK (h, d_n, d_c) and W_UV (h, d_v, d_c): views of kv_b_proj's weight."""
        d, h = self.dims, self.config.n_head
        return self.kv_b_proj.weight.view(h, d.qk_nope_head_dim + d.v_head_dim, d.kv_lora_rank).split(
            (d.qk_nope_head_dim, d.v_head_dim), dim=1
        )

    def value_bias(self) -> Optional[torch.Tensor]:
        """kv_b_proj's value bias (h, d_v), or None. (A key bias adds one constant to all of a query's scores,
        which softmax ignores, so the absorbed path drops it.)"""
        if self.kv_b_proj.bias is None:
            return None
        d = self.dims
        return self.kv_b_proj.bias.view(self.config.n_head, d.qk_nope_head_dim + d.v_head_dim)[:, d.qk_nope_head_dim :]

    def absorbed(
        self, q_nope: torch.Tensor, q_rope: torch.Tensor, kv: torch.Tensor, input_pos: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Attend over the latent with W_UK absorbed into q and W_UV applied after. Returns (B, T, h * d_v).

        The query at position p sees cached tokens 0..p (input_pos (T,) or (B, T)); without input_pos, kv holds just
        the T new tokens and attention is causal among them.
        """
        d, h = self.dims, self.config.n_head
        B, _, T, _ = q_nope.shape
        w_uk, w_uv = self.absorbed_weights()  # (h, d_n, d_c), (h, d_v, d_c)
        q_latent = torch.einsum("bhtn,hnc->bhtc", q_nope, w_uk)  # (B, h, T, d_c)
        o_latent = self.latent_attend(q_latent, q_rope, kv, input_pos)  # (B, h, T, d_c)
        y = torch.einsum("bhtc,hvc->bthv", o_latent, w_uv)  # (B, T, h, d_v)
        b_v = self.value_bias()
        if b_v is not None:
            y = y + b_v  # softmax weights sum to one, so the value bias passes through unchanged
        return y.reshape(B, T, h * d.v_head_dim)

    def latent_attend(
        self, q_latent: torch.Tensor, q_rope: torch.Tensor, kv: torch.Tensor, input_pos: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Softmax attention of [q_latent | q_rope] (B, h, T, d_c + d_R) over kv (B, S, d_c+d_R), the latent
        doubling as values: the Triton kernel or the torch reference. Returns (B, h, T, d_c)."""
        q = torch.cat((q_latent, q_rope), dim=-1)  # (B, h, T, d_c+d_R)
        if input_pos is None:
            input_pos = torch.arange(q.size(2), device=q.device)  # kv is the new tokens alone: causal among them
        attention = mla_decode_attention if self.use_kernel else mla_decode_attention_reference
        return attention(q, kv, input_pos, self.dims.kv_lora_rank, self.scale)

    def attend_projected(
        self,
        h_in: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        input_pos: Optional[torch.Tensor] = None,
        input_pos_maxp1: Optional[int] = None,
    ) -> torch.Tensor:
        """The absorbed path between the maps of `decode_projections`: h_in (B, T, q width + d_c + d_R) -> the
        latent attention output (B, T, h * d_c); W_UV lives in the output map. Positions define what each query
        sees (as in `absorbed`), so `mask` is not needed.

        Without q_lora_rank the query part of h_in is already in latent space, [q_latent | q_rope] per head (W_UK
        folded into q_proj); with it, that part is q_a_proj's output and the query is finished here. A cached
        one-token step without q_lora_rank runs as one fused operator on CUDA (`litgpt.kernels.mla_decode_step`).
        """
        self.check_cache(input_pos)
        d, h = self.dims, self.config.n_head
        B, T, _ = h_in.shape
        q_part, kv_a = h_in.split((h_in.size(-1) - d.cache_width, d.cache_width), dim=-1)
        if d.q_lora_rank is None:
            q = q_part.view(B, T, h, d.cache_width)  # (B, T, h, d_c+d_R)
            if input_pos is not None and self.use_kernel and mla_decode_step_applies(q, kv_a, self.kv_cache.kv, cos):
                o_latent = mla_decode_step(q, kv_a, self.kv_cache.kv, input_pos, cos, sin, self.kv_a_norm.weight,
                                           self.kv_a_norm.eps, self.scale, self.config.rope_interleave)  # (B, h, 1, d_c)
                return o_latent.view(B, T, h * d.kv_lora_rank)
            q_latent, q_rope = q.transpose(1, 2).split((d.kv_lora_rank, d.qk_rope_head_dim), dim=-1)  # (B, h, T, ..)
        else:
            q = self.q_b_proj(self.q_a_norm(q_part)).view(B, T, h, d.qk_head_dim).transpose(1, 2)  # (B, h, T, d_n+d_R)
            q_nope, q_rope = q.split((d.qk_nope_head_dim, d.qk_rope_head_dim), dim=-1)
            q_latent = torch.einsum("bhtn,hnc->bhtc", q_nope, self.absorbed_weights()[0])  # (B, h, T, d_c)
        q_rope = apply_rope(q_rope, cos, sin, self.config.rope_interleave)  # (B, h, T, d_R)
        kv = self.latent_kv(kv_a, cos, sin, input_pos, input_pos_maxp1)  # (B, S, d_c+d_R)
        o_latent = self.latent_attend(q_latent, q_rope, kv, input_pos)  # (B, h, T, d_c)
        return o_latent.transpose(1, 2).reshape(B, T, h * d.kv_lora_rank)

    def decode_projections(self) -> tuple[Projection, Projection]:
        """The absorbed path's input map [q_proj with W_UK folded in per head | kv_a] (or [q_a | kv_a] with
        q_lora_rank) and output map proj . W_UV, computed in float32 or wider."""
        d, h = self.dims, self.config.n_head
        compute = torch.promote_types(self.proj.weight.dtype, torch.float32)
        w_uk, w_uv = (w.to(compute) for w in self.absorbed_weights())  # (h, d_n, d_c), (h, d_v, d_c)
        if d.q_lora_rank is None:
            n_embd = self.config.n_embd
            w_q = self.q_proj.weight.to(compute).view(h, d.qk_head_dim, n_embd)
            w_latent = torch.einsum("hnc,hnm->hcm", w_uk, w_q[:, : d.qk_nope_head_dim])  # (h, d_c, n_embd)
            query: Projection = (torch.cat((w_latent, w_q[:, d.qk_nope_head_dim :]), dim=1).reshape(-1, n_embd), None)
            if self.q_proj.bias is not None:
                b_q = self.q_proj.bias.to(compute).view(h, d.qk_head_dim)
                b_latent = torch.einsum("hnc,hn->hc", w_uk, b_q[:, : d.qk_nope_head_dim])  # (h, d_c)
                query = (query[0], torch.cat((b_latent, b_q[:, d.qk_nope_head_dim :]), dim=1).flatten())
        else:
            query = (self.q_a_proj.weight, self.q_a_proj.bias)
        kv_a = (self.kv_a_proj_with_mqa.weight, self.kv_a_proj_with_mqa.bias)
        w_o = self.proj.weight.to(compute).view(-1, h, d.v_head_dim)  # (n_embd, h, d_v)
        w_out = torch.einsum("mhv,hvc->mhc", w_o, w_uv).flatten(1)  # (n_embd, h * d_c)
        b_out = None if self.proj.bias is None else self.proj.bias.to(compute)
        b_v = self.value_bias()
        if b_v is not None:
            b_v_out = w_o.flatten(1) @ b_v.to(compute).flatten()  # (n_embd,)
            b_out = b_v_out if b_out is None else b_out + b_v_out
        return stack_outputs(query, kv_a), (w_out, b_out)

    def build_kv_cache(
        self,
        batch_size: int,
        max_seq_length: int,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> KVCacheCompressed:
        d = self.dims
        return KVCacheCompressed(
            batch_size, max_seq_length, d.kv_lora_rank, d.qk_rope_head_dim, device=device, dtype=dtype
        )
