"""DeepSeek-V2/V3-architecture models (MLA + DeepSeekMoE): DeepSeek-V2(-Lite)(-Chat), DeepSeek-V2.5, DeepSeek-V3,
DeepSeek-R1 and Moonshot's Moonlight-16B-A3B(-Instruct).

`HF_CONFIG_JSON` holds the architecture keys of each model's published config.json; each named config is what
`litgpt.configs.hf.config_fields_from_hf` makes of it (the mapping the checkpoint converter uses too).

Sources of the config.json values (copies of the published files found in public repositories; the HF hub itself
was not reachable):
  DeepSeek-V2-Lite(-Chat): a transformers-5.7 re-save of DeepSeek-V2-Lite's config.json; V2-Lite-Chat's architecture
    is the same (equal safetensors totals, 15_706_484_224).
  DeepSeek-V2(-Chat): Megatron-Bridge's DeepSeek-V2 test fixture (config.json copy, YaRN mscale 0.707/0.707).
  DeepSeek-V2.5: a config.json copy (transformers_version 4.39.3): as V2, but YaRN mscale = mscale_all_dim = 1.0.
  DeepSeek-V3 / DeepSeek-R1: R1's config.json copy; V3's is the same architecture (noaux_tc, sigmoid, 8 groups).
  Moonlight-16B-A3B(-Instruct): a config.json copy (deepseek_v3 model_type, no rope_scaling, rms_norm_eps 1e-5).
Not tied: none of these ties its word embeddings (tie_word_embeddings false).
"""

from __future__ import annotations

_YARN_V2 = dict(
    type="yarn", factor=40, original_max_position_embeddings=4096, beta_fast=32, beta_slow=1, mscale=0.707,
    mscale_all_dim=0.707,
)
_V2_LITE = dict(
    architectures=["DeepseekV2ForCausalLM"], model_type="deepseek_v2", vocab_size=102400, hidden_size=2048,
    intermediate_size=10944, moe_intermediate_size=1408, num_hidden_layers=27, num_attention_heads=16,
    num_key_value_heads=16, n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6, first_k_dense_replace=1,
    moe_layer_freq=1, n_group=1, topk_group=1, topk_method="greedy", routed_scaling_factor=1.0, norm_topk_prob=False,
    scoring_func="softmax", q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
    v_head_dim=128, max_position_embeddings=163840, rope_theta=10000, rope_scaling=_YARN_V2, rms_norm_eps=1e-6,
    hidden_act="silu", attention_bias=False, tie_word_embeddings=False,
)
_V2 = dict(
    _V2_LITE, hidden_size=5120, intermediate_size=12288, moe_intermediate_size=1536, num_hidden_layers=60,
    num_attention_heads=128, num_key_value_heads=128, n_routed_experts=160, n_group=8, topk_group=3,
    topk_method="group_limited_greedy", routed_scaling_factor=16.0, q_lora_rank=1536,
)
_V3 = dict(
    architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3", vocab_size=129280, hidden_size=7168,
    intermediate_size=18432, moe_intermediate_size=2048, num_hidden_layers=61, num_nextn_predict_layers=1,
    num_attention_heads=128, num_key_value_heads=128, n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8,
    first_k_dense_replace=3, moe_layer_freq=1, n_group=8, topk_group=4, topk_method="noaux_tc",
    routed_scaling_factor=2.5, norm_topk_prob=True, scoring_func="sigmoid", q_lora_rank=1536, kv_lora_rank=512,
    qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, max_position_embeddings=163840, rope_theta=10000,
    rope_scaling=dict(_YARN_V2, mscale=1.0, mscale_all_dim=1.0), rms_norm_eps=1e-6, hidden_act="silu",
    attention_bias=False, tie_word_embeddings=False,
)
_MOONLIGHT = dict(
    _V3, vocab_size=163840, hidden_size=2048, intermediate_size=11264, moe_intermediate_size=1408,
    num_hidden_layers=27, num_nextn_predict_layers=0, num_attention_heads=16, num_key_value_heads=16,
    n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6, first_k_dense_replace=1, n_group=1, topk_group=1,
    routed_scaling_factor=2.446, q_lora_rank=None, max_position_embeddings=8192, rope_theta=50000.0,
    rope_scaling=None, rms_norm_eps=1e-5,
)

HF_CONFIG_JSON: dict[str, dict] = {
    "DeepSeek-V2-Lite": dict(_V2_LITE, _name_or_path="deepseek-ai/DeepSeek-V2-Lite"),
    "DeepSeek-V2-Lite-Chat": dict(_V2_LITE, _name_or_path="deepseek-ai/DeepSeek-V2-Lite-Chat"),
    "DeepSeek-V2": dict(_V2, _name_or_path="deepseek-ai/DeepSeek-V2"),
    "DeepSeek-V2-Chat": dict(_V2, _name_or_path="deepseek-ai/DeepSeek-V2-Chat"),
    "DeepSeek-V2.5": dict(
        _V2, _name_or_path="deepseek-ai/DeepSeek-V2.5", rope_scaling=dict(_YARN_V2, mscale=1.0, mscale_all_dim=1.0)
    ),
    "DeepSeek-V3": dict(_V3, _name_or_path="deepseek-ai/DeepSeek-V3"),
    "DeepSeek-R1": dict(_V3, _name_or_path="deepseek-ai/DeepSeek-R1"),
    "Moonlight-16B-A3B": dict(_MOONLIGHT, _name_or_path="moonshotai/Moonlight-16B-A3B"),
    "Moonlight-16B-A3B-Instruct": dict(_MOONLIGHT, _name_or_path="moonshotai/Moonlight-16B-A3B-Instruct"),
}

# Total parameters as published. "HF safetensors total" is the parameter count the Hugging Face hub reports from the
# checkpoint's safetensors metadata (bf16 checkpoints: metadata.total_size / 2); counts below were read from public
# copies of those hub figures.
PUBLISHED_PARAMS: dict[str, int] = {
    "DeepSeek-V2-Lite": 15_706_484_224,
    "DeepSeek-V2-Lite-Chat": 15_706_484_224,
    "DeepSeek-V2": 235_741_434_880,
    "DeepSeek-V2-Chat": 235_741_434_880,
    "DeepSeek-V2.5": 235_741_434_880,
    "DeepSeek-V3": 671_000_000_000,
    "DeepSeek-R1": 671_000_000_000,
    "Moonlight-16B-A3B": 15_960_111_936,
    "Moonlight-16B-A3B-Instruct": 15_960_111_936,
}
_HF_TOTAL = "HF safetensors total (bf16)"
_V3_CARD = (
    "model card: 671B main-model weights (+14B multi-token-prediction module, not part of our model; the HF "
    "safetensors total, 684_531_386_000 for V3 and 684_489_845_504 for R1, also counts MTP and fp8 scales). "
    "microsoft/MAI-DS-R1, the same architecture in bf16 without MTP, totals 671_026_419_200 = our 671_026_404_352 "
    "parameters + 14_848 e_score_correction_bias values (a buffer here)"
)
PUBLISHED_PARAMS_SOURCE: dict[str, str] = {
    "DeepSeek-V2-Lite": _HF_TOTAL,
    "DeepSeek-V2-Lite-Chat": _HF_TOTAL,
    "DeepSeek-V2": _HF_TOTAL + "; also DeepSeek-V2-Chat-0628's metadata.total_size 471_482_869_760 bytes / 2",
    "DeepSeek-V2-Chat": _HF_TOTAL,
    "DeepSeek-V2.5": _HF_TOTAL,
    "DeepSeek-V3": _V3_CARD,
    "DeepSeek-R1": _V3_CARD,
    "Moonlight-16B-A3B": (
        _HF_TOTAL + " (counts the 1_664 e_score_correction_bias values, a buffer here, and 1_728 more)"
    ),
    "Moonlight-16B-A3B-Instruct": _HF_TOTAL,
}

# Where a row differs from upstream litgpt 0.5.13: upstream has no named config for any of these models.
UPSTREAM_DIFFERENCES: dict[str, str] = {}
