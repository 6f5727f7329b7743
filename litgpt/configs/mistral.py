"""Mistral 7B: v0.1 (base and Instruct) and Instruct-v0.2 (MistralForCausalLM; Llama layout with GQA).

v0.1 attends through a 4096-token sliding window (config.json sliding_window 4096, max_position_embeddings 32768):
our model has no sliding-window attention, and the mapping refuses a window smaller than the context. Up to 4096
tokens the window covers the whole causal context, so the named configs read config.json with
max_position_embeddings capped at the window (`CONTEXT_CAPS`): block_size 4096, exact there (upstream litgpt's rows
also have block_size 4096, plus its sliding_window_size 4096). Instruct-v0.2 has no window (sliding_window null) and
rope_theta 1e6.

Sources: the published config.json files (as copied in public repositories) and upstream litgpt 0.5.13's rows.
"""

from __future__ import annotations

_MISTRAL_HF = dict(
    architectures=["MistralForCausalLM"], model_type="mistral", vocab_size=32000, hidden_size=4096,
    intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
    max_position_embeddings=32768, rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=False,
)
_V01_HF = dict(_MISTRAL_HF, rope_theta=10000.0, sliding_window=4096)
_V02_HF = dict(_MISTRAL_HF, rope_theta=1000000.0, sliding_window=None)

HF_CONFIG_JSON: dict[str, dict] = {
    "Mistral-7B-v0.1": dict(_V01_HF, _name_or_path="mistralai/Mistral-7B-v0.1"),
    "Mistral-7B-Instruct-v0.1": dict(_V01_HF, _name_or_path="mistralai/Mistral-7B-Instruct-v0.1"),
    "Mistral-7B-Instruct-v0.2": dict(_V02_HF, _name_or_path="mistralai/Mistral-7B-Instruct-v0.2"),
}

# config.json's max_position_embeddings for the named config: the sliding window, within which attention is exact
CONTEXT_CAPS: dict[str, int] = {"Mistral-7B-v0.1": 4096, "Mistral-7B-Instruct-v0.1": 4096}

PUBLISHED_PARAMS: dict[str, int] = {name: 7_241_732_096 for name in HF_CONFIG_JSON}
PUBLISHED_PARAMS_SOURCE: dict[str, str] = {
    name: "general.parameter_count of GGUF conversions / model reports (7.24B on the HF model page)"
    for name in PUBLISHED_PARAMS
}

UPSTREAM_DIFFERENCES: dict[str, str] = {
    "Mistral-7B-v0.1": "no sliding_window_size (upstream: 4096, which equals block_size there, so no effect)",
    "Mistral-7B-Instruct-v0.1": "no sliding_window_size (upstream: 4096, equal to block_size)",
}
