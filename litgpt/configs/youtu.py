"""Youtu-LLM-2B (transformers' youtu): a dense model with DeepSeek-V3's MLA (YoutuAttention *is* DeepseekV3Attention),
Llama's decoder layer and SwiGLU MLP, and tied word embeddings.

Our layout expresses it exactly (tie_embeddings: lm_head is the embedding's Parameter); its module names equal
DeepseekV3ForCausalLM's, with no MoE keys (every MLP dense).

Source: config.json values as copied in public repositories (hidden 2048, 32 layers, 16 heads, q_lora 1536,
kv_lora 512, qk_nope 128, qk_rope 64, v 128, vocab 128256, rope_theta 1.6e6 unscaled, rope_interleave true, tied);
max_position_embeddings 131072 and rms_norm_eps 1e-6 are transformers' YoutuConfig/DeepseekV3Config defaults, which
that class documents as the checkpoint's (the model card states a 128K context).
"""

from __future__ import annotations

HF_CONFIG_JSON: dict[str, dict] = {
    "Youtu-LLM-2B": dict(
        architectures=["YoutuForCausalLM"], model_type="youtu", _name_or_path="tencent/Youtu-LLM-2B",
        vocab_size=128256, hidden_size=2048, intermediate_size=6144, num_hidden_layers=32, num_attention_heads=16,
        num_key_value_heads=16, kv_lora_rank=512, q_lora_rank=1536, qk_nope_head_dim=128, qk_rope_head_dim=64,
        v_head_dim=128, rope_interleave=True, rope_theta=1600000, max_position_embeddings=131072, rms_norm_eps=1e-6,
        hidden_act="silu", attention_bias=False, tie_word_embeddings=True,
    ),
}

PUBLISHED_PARAMS: dict[str, int] = {"Youtu-LLM-2B": 1_960_000_000}
PUBLISHED_PARAMS_SOURCE: dict[str, str] = {
    "Youtu-LLM-2B": "technical report / transformers model doc: 1.96B (rounded); tied embeddings counted once"
}

UPSTREAM_DIFFERENCES: dict[str, str] = {"Youtu-LLM-2B": "no upstream row"}
