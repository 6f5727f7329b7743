"""FLOP counts and peak device throughput, for MFU."""

from __future__ import annotations

from typing import Optional

import torch

from litgpt.config import Config

# dense bf16 tensor-core peak (vendor spec), by substring of torch.cuda.get_device_name()
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}


def matmul_params(config: Config) -> int:
    """Parameters that take part in a matmul per token: every Linear weight (the embedding lookup is free); in an
    MoE layer the router and the n_expert_per_token routed plus the shared experts a token runs."""
    c = config
    n = c.n_embd
    if c.mla is None:
        attn = n * (c.n_head + 2 * c.n_query_groups) * c.head_size + c.n_head * c.head_size * n
    else:
        d = c.mla
        q = n * c.n_head * d.qk_head_dim if d.q_lora_rank is None else d.q_lora_rank * (n + c.n_head * d.qk_head_dim)
        attn = q + n * d.cache_width + d.kv_lora_rank * c.n_head * (d.qk_nope_head_dim + d.v_head_dim)
        out = c.n_head * d.v_head_dim
        attn += out * n if d.o_latent_dim is None else d.o_latent_dim * (out + n)  # proj, or MLA-o's o_a and o_b
    dense_mlp = (2 if c.mlp_class_name == "GptNeoxMLP" else 3) * n * c.intermediate_size
    n_moe = len(c.moe_layers)
    moe_mlp = 0
    if n_moe:
        experts = c.n_expert_per_token + (c.n_shared_expert or 0)
        moe_mlp = n * c.n_expert + experts * 3 * n * c.moe_intermediate_size
    return c.n_layer * attn + (c.n_layer - n_moe) * dense_mlp + n_moe * moe_mlp + n * c.padded_vocab_size


def flops_per_token(config: Config, seq_len: int, training: bool = True) -> float:
    """Forward (x3 for training) FLOPs per token: 2 per matmul weight plus causal-agnostic attention scores.

    Attention counts 2 * seq_len * n_head * (qk_dim + v_dim) per token per layer (the PaLM convention,
    full square, as upstream litgpt and nanoGPT do), so MLA and MHA are measured on one scale.
    """
    c = config
    qk_dim, v_dim = (c.head_size, c.head_size) if c.mla is None else (c.mla.qk_head_dim, c.mla.v_head_dim)
    attention = 2 * seq_len * c.n_head * (qk_dim + v_dim) * c.n_layer
    forward = 2 * matmul_params(c) + attention
    return float(forward * (3 if training else 1))


def peak_flops(device: torch.device) -> Optional[float]:
    """bf16 peak of a known CUDA device, else None (MFU is then not reported)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
