"""Qwen2.5 0.5B, 1.5B and 7B, base and Instruct (Qwen2ForCausalLM).

Qwen2's attention has biases on q/k/v but not on o_proj, and no MLP biases: our `attn_bias=True, bias=False` (the
qkv map follows `bias or attn_bias`, the output map and MLP follow `bias`). config.json's sliding_window is inert
(use_sliding_window false). The Instruct repos publish max_position_embeddings 32768 where the 1.5B and 7B base repos
publish 131072; the rows follow each repo (upstream litgpt gives the Instruct rows the base's 131072).

vocab_size = padded_vocab_size = config.json's vocab_size (the embedding's rows). Upstream litgpt sets vocab_size to
151643, the tokenizer's regular tokens, which our sampler would treat as the last sampleable id and so never emit
<|im_end|> (151645).

Sources: the published config.json files (as copied in public repositories) and upstream litgpt 0.5.13's rows.
"""

from __future__ import annotations

_QWEN2_HF = dict(
    architectures=["Qwen2ForCausalLM"], model_type="qwen2", rope_theta=1000000.0, rms_norm_eps=1e-6,
    hidden_act="silu", use_sliding_window=False,
)
_Q05_HF = dict(
    _QWEN2_HF, vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
    num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True,
)
_Q15_HF = dict(
    _QWEN2_HF, vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
    num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=131072, tie_word_embeddings=True,
)
_Q7_HF = dict(
    _QWEN2_HF, vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
    num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=131072, tie_word_embeddings=False,
)

HF_CONFIG_JSON: dict[str, dict] = {
    "Qwen2.5-0.5B": dict(_Q05_HF, _name_or_path="Qwen/Qwen2.5-0.5B"),
    "Qwen2.5-0.5B-Instruct": dict(_Q05_HF, _name_or_path="Qwen/Qwen2.5-0.5B-Instruct"),
    "Qwen2.5-1.5B": dict(_Q15_HF, _name_or_path="Qwen/Qwen2.5-1.5B"),
    "Qwen2.5-1.5B-Instruct": dict(_Q15_HF, _name_or_path="Qwen/Qwen2.5-1.5B-Instruct", max_position_embeddings=32768),
    "Qwen2.5-7B": dict(_Q7_HF, _name_or_path="Qwen/Qwen2.5-7B"),
    "Qwen2.5-7B-Instruct": dict(_Q7_HF, _name_or_path="Qwen/Qwen2.5-7B-Instruct", max_position_embeddings=32768),
}

PUBLISHED_PARAMS: dict[str, int] = {
    "Qwen2.5-0.5B": 494_032_768,
    "Qwen2.5-0.5B-Instruct": 494_032_768,
    "Qwen2.5-1.5B": 1_543_714_304,
    "Qwen2.5-1.5B-Instruct": 1_543_714_304,
    "Qwen2.5-7B": 7_615_616_512,
    "Qwen2.5-7B-Instruct": 7_615_616_512,
}
_HF_TOTAL = (
    "HF safetensors total (Hub API safetensors.total, as copied for the Instruct repo; base has the same shapes)"
)
PUBLISHED_PARAMS_SOURCE: dict[str, str] = {
    name: _HF_TOTAL + ("; tied embeddings counted once" if "7B" not in name else "") for name in PUBLISHED_PARAMS
}

UPSTREAM_DIFFERENCES: dict[str, str] = {
    **{name: "vocab_size 151936/152064 = padded_vocab_size (upstream: 151643)" for name in PUBLISHED_PARAMS},
    "Qwen2.5-1.5B-Instruct": "block_size 32768 as its config.json (upstream: 131072); vocab_size as above",
    "Qwen2.5-7B-Instruct": "block_size 32768 as its config.json (upstream: 131072); vocab_size as above",
}
