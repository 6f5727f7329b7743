"""GLM-4.7-Flash (transformers' glm4_moe_lite): DeepSeek-V3's MLA (transformers' Glm4MoeLiteAttention *is*
DeepseekV3Attention) and its MoE (sigmoid router with e_score_correction_bias, n_group 1, norm_topk_prob, routed
scaling 1.8, one shared expert, first layer dense), with GLM's wider heads (qk_nope 192, v 256).

Our layout expresses it except for one eps: the reference q_a/kv_a norms use eps 1e-6 while rms_norm_eps is 1e-5
(`litgpt.configs.FEATURES["latent_norm_eps"]`). Its module names equal DeepseekV3ForCausalLM's; the mapping reads
GLM's dense/sparse layer pattern from `mlp_layer_types` (transformers' default without it: the first layer dense).
The multi-token-prediction layer (num_nextn_predict_layers 1, stored as layer 47) is skipped.

Source: config.json values as copied by vLLM's glm4_moe_lite config test and other public copies.
"""

from __future__ import annotations

HF_CONFIG_JSON: dict[str, dict] = {
    "GLM-4.7-Flash": dict(
        architectures=["Glm4MoeLiteForCausalLM"], model_type="glm4_moe_lite", _name_or_path="zai-org/GLM-4.7-Flash",
        vocab_size=154880, hidden_size=2048, intermediate_size=10240, moe_intermediate_size=1536, num_hidden_layers=47,
        num_nextn_predict_layers=1, num_attention_heads=20, num_key_value_heads=20, hidden_act="silu",
        rms_norm_eps=1e-5, attention_bias=False, max_position_embeddings=202752, rope_theta=1000000.0,
        rope_scaling=None, partial_rotary_factor=1.0, q_lora_rank=768, kv_lora_rank=512, qk_nope_head_dim=192,
        qk_rope_head_dim=64, v_head_dim=256, n_routed_experts=64, n_shared_experts=1, num_experts_per_tok=4,
        norm_topk_prob=True, routed_scaling_factor=1.8, n_group=1, topk_group=1, topk_method="noaux_tc",
        first_k_dense_replace=1, tie_word_embeddings=False,
    ),
}

PUBLISHED_PARAMS: dict[str, int] = {"GLM-4.7-Flash": 30_000_000_000}
PUBLISHED_PARAMS_SOURCE: dict[str, str] = {
    "GLM-4.7-Flash": "model card's size class only (30B-A3B; the hub total also counts the MTP layer); no exact "
    "count found"
}

UPSTREAM_DIFFERENCES: dict[str, str] = {"GLM-4.7-Flash": "no upstream row"}
