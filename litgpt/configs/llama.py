"""Llama-architecture dense models: Meta's Llama 3.2 1B/3B and Llama 3.1 8B (base and Instruct), TinyLlama 1.1B
(base and chat) and deepseek-coder-1.3b-base.

Llama 3.x's rope scaling maps to upstream litgpt's llama3-style `rope_adjustments` (factor, low_freq_factor,
high_freq_factor, original_max_seq_len). deepseek-coder's linear rope scaling (factor 4) is `rope_condense_ratio=4`:
positions divided by 4, which is exactly transformers' "linear" rope type. Llama 3.2 ties its embeddings.

vocab_size = padded_vocab_size = config.json's vocab_size (the embedding's rows), as our converter sets them. Upstream
litgpt sets vocab_size to the base tokenizer's size instead (Llama 3: 128000), which our sampler would treat as the
last sampleable id, masking the chat/special tokens above it (<|eot_id|> is 128009).

Sources: the published config.json files (values cross-checked against copies in public repositories and upstream
litgpt 0.5.13's rows of the same names); the Llama 3.1 8B, 3.2 1B/3B values match Meta's config.json as copied
(llama3 rope: factor 8 / 32, low 1, high 4, original 8192; rope_theta 500000; rms_norm_eps 1e-5).
"""

from __future__ import annotations

_LLAMA3_HF = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=128256, max_position_embeddings=131072,
    rope_theta=500000.0, rms_norm_eps=1e-5, hidden_act="silu", attention_bias=False, mlp_bias=False, head_dim=64,
    num_key_value_heads=8,
)
_LLAMA32_ROPE_HF = dict(
    rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
)
_LLAMA_3_2_1B_HF = dict(
    _LLAMA3_HF, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, head_dim=64,
    rope_scaling=_LLAMA32_ROPE_HF, tie_word_embeddings=True,
)
_LLAMA_3_2_3B_HF = dict(
    _LLAMA3_HF, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24, head_dim=128,
    rope_scaling=_LLAMA32_ROPE_HF, tie_word_embeddings=True,
)
_LLAMA_3_1_8B_HF = dict(
    _LLAMA3_HF, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, head_dim=128,
    rope_scaling=dict(_LLAMA32_ROPE_HF, factor=8.0), tie_word_embeddings=False,
)
_TINYLLAMA_HF = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=32000, hidden_size=2048, intermediate_size=5632,
    num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
    rope_theta=10000.0, rope_scaling=None, rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=False,
)
_DEEPSEEK_CODER_1_3B_HF = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=32256, hidden_size=2048, intermediate_size=5504,
    num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=16384,
    rope_theta=100000, rope_scaling=dict(type="linear", factor=4.0), rms_norm_eps=1e-6, hidden_act="silu",
    tie_word_embeddings=False,
)

HF_CONFIG_JSON: dict[str, dict] = {
    "Llama-3.2-1B": dict(_LLAMA_3_2_1B_HF, _name_or_path="meta-llama/Llama-3.2-1B"),
    "Llama-3.2-1B-Instruct": dict(_LLAMA_3_2_1B_HF, _name_or_path="meta-llama/Llama-3.2-1B-Instruct"),
    "Llama-3.2-3B": dict(_LLAMA_3_2_3B_HF, _name_or_path="meta-llama/Llama-3.2-3B"),
    "Llama-3.2-3B-Instruct": dict(_LLAMA_3_2_3B_HF, _name_or_path="meta-llama/Llama-3.2-3B-Instruct"),
    "Llama-3.1-8B": dict(_LLAMA_3_1_8B_HF, _name_or_path="meta-llama/Meta-Llama-3.1-8B"),
    "Llama-3.1-8B-Instruct": dict(_LLAMA_3_1_8B_HF, _name_or_path="meta-llama/Meta-Llama-3.1-8B-Instruct"),
    "tiny-llama-1.1b": dict(_TINYLLAMA_HF, _name_or_path="TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"),
    "tiny-llama-1.1b-chat": dict(_TINYLLAMA_HF, _name_or_path="TinyLlama/TinyLlama-1.1B-Chat-v1.0"),
    "deepseek-coder-1.3b-base": dict(_DEEPSEEK_CODER_1_3B_HF, _name_or_path="deepseek-ai/deepseek-coder-1.3b-base"),
}

PUBLISHED_PARAMS: dict[str, int] = {
    "Llama-3.2-1B": 1_235_814_400,
    "Llama-3.2-1B-Instruct": 1_235_814_400,
    "Llama-3.2-3B": 3_212_749_824,
    "Llama-3.2-3B-Instruct": 3_212_749_824,
    "Llama-3.1-8B": 8_030_261_248,
    "Llama-3.1-8B-Instruct": 8_030_261_248,
    "tiny-llama-1.1b": 1_100_048_384,
    "tiny-llama-1.1b-chat": 1_100_048_384,
    "deepseek-coder-1.3b-base": 1_346_471_936,
}
_HF_TOTAL = (
    "HF safetensors total (Hub API safetensors.total, as copied for the Instruct repo; base has the same shapes)"
)
PUBLISHED_PARAMS_SOURCE: dict[str, str] = {
    "Llama-3.2-1B": _HF_TOTAL + "; tied embeddings counted once",
    "Llama-3.2-1B-Instruct": _HF_TOTAL + "; tied embeddings counted once",
    "Llama-3.2-3B": _HF_TOTAL + "; tied embeddings counted once",
    "Llama-3.2-3B-Instruct": _HF_TOTAL + "; tied embeddings counted once",
    "Llama-3.1-8B": _HF_TOTAL,
    "Llama-3.1-8B-Instruct": _HF_TOTAL,
    "tiny-llama-1.1b": "HF safetensors metadata {'F32': 1100048384} of the base repo",
    "tiny-llama-1.1b-chat": "parameter count reported for TinyLlama-1.1B-Chat-v1.0 (same shapes as the base)",
    "deepseek-coder-1.3b-base": "model registries' total_parameters for deepseek-coder-1.3b (HF model page: 1.35B)",
}

UPSTREAM_DIFFERENCES: dict[str, str] = {
    **{
        name: "vocab_size 128256 (upstream: 128000, the base tokenizer; padded_vocab_size 128256 in both)"
        for name in ("Llama-3.2-1B", "Llama-3.2-1B-Instruct", "Llama-3.2-3B", "Llama-3.2-3B-Instruct",
                     "Llama-3.1-8B", "Llama-3.1-8B-Instruct")
    },
    "tiny-llama-1.1b": "padding_multiple left at its default (upstream: 64); padded_vocab_size 32000 in both",
    "tiny-llama-1.1b-chat": "padding_multiple left at its default (upstream: 64); padded_vocab_size 32000 in both",
    "deepseek-coder-1.3b-base": "no upstream row",
}
