"""SmolLM2 135M, 360M and 1.7B, base and Instruct (LlamaForCausalLM, tied word embeddings).

Sources: the published config.json files (as copied in public repositories) and upstream litgpt 0.5.13's rows, which
these equal field for field.
"""

from __future__ import annotations

_SMOLLM2_HF = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=49152, max_position_embeddings=8192,
    rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=True, rope_scaling=None,
)
_S135_HF = dict(
    _SMOLLM2_HF, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, rope_theta=100000,
)
_S360_HF = dict(
    _SMOLLM2_HF, hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
    num_key_value_heads=5, rope_theta=100000,
)
_S17_HF = dict(
    _SMOLLM2_HF, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
    num_key_value_heads=32, rope_theta=130000,
)

HF_CONFIG_JSON: dict[str, dict] = {
    f"SmolLM2-{size}{kind}": dict(hf, _name_or_path=f"HuggingFaceTB/SmolLM2-{size}{kind}")
    for size, hf in (("135M", _S135_HF), ("360M", _S360_HF), ("1.7B", _S17_HF))
    for kind in ("", "-Instruct")
}

PUBLISHED_PARAMS: dict[str, int] = {
    f"SmolLM2-{size}{kind}": count
    for size, count in (("135M", 134_515_008), ("360M", 361_821_120), ("1.7B", 1_711_376_384))
    for kind in ("", "-Instruct")
}
PUBLISHED_PARAMS_SOURCE: dict[str, str] = {
    name: "HF safetensors total (Hub API safetensors.total, as copied for the Instruct repo; base has the same "
    "shapes); tied embeddings counted once"
    for name in PUBLISHED_PARAMS
}

UPSTREAM_DIFFERENCES: dict[str, str] = {}
