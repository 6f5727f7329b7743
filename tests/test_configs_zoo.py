"""The named configs of published models (`litgpt.configs`): each is derived from its published config.json by the
converter's mapping, builds through `Config.from_name` (by name and by Hugging Face id), holds the published parameter
count and exactly the parameters transformers' model of that config.json holds, and has the architecture values the
model publishes (spot-checked below, field by field)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import warnings

import pytest
import torch

from litgpt import Config
from litgpt.config import name_to_config as builtin_configs
from litgpt.configs import (
    CONTEXT_CAPS,
    FEATURES,
    HF_CONFIG_JSON,
    NAMES,
    PUBLISHED_PARAMS,
    PUBLISHED_PARAMS_SOURCE,
    missing_features,
    rows,
)
from litgpt.model import GPT
from litgpt.scripts.convert_hf_checkpoint import config_from_hf

TOLERANCE = 0.005  # published totals are often rounded (model cards) or count a little more (MTP, buffers)
_V2_YARN = dict(factor=40.0, original_max_seq_len=4096, beta_fast=32.0, beta_slow=1.0, mscale=0.707,
                mscale_all_dim=0.707, truncate=True)
_LLAMA32_ROPE = dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=8192)
_V2_LITE_MLA = dict(q_lora_rank=None, kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128)
# Values each model publishes, in our fields (a representative of every family and of every setting the mapping reads).
EXPECTED = {
    "DeepSeek-V2-Lite": dict(
        block_size=163840, n_layer=27, n_embd=2048, n_head=16, head_size=192, vocab_size=102400, rope_base=10000,
        rope_adjustments=_V2_YARN, rope_interleave=True, norm_eps=1e-6, intermediate_size=10944,
        latent_attention=_V2_LITE_MLA, mlp_class_name="LLaMAMoE", moe_intermediate_size=1408, n_expert=64,
        n_expert_per_token=6, n_shared_expert=2, first_k_dense_replace=1, routed_scaling_factor=1.0,
        norm_topk_prob=False, moe_scoring="softmax", n_expert_groups=None, tie_embeddings=False,
    ),
    "DeepSeek-V2": dict(
        n_layer=60, n_embd=5120, n_head=128, n_expert=160, n_expert_groups=8, n_topk_groups=3,
        n_topk_scores_per_group=1, routed_scaling_factor=16.0, moe_scoring="softmax",
        latent_attention=dict(_V2_LITE_MLA, q_lora_rank=1536),
    ),
    "DeepSeek-V2.5": dict(rope_adjustments=dict(_V2_YARN, mscale=1.0, mscale_all_dim=1.0)),
    "DeepSeek-V3": dict(
        n_layer=61, n_embd=7168, vocab_size=129280, n_expert=256, n_expert_per_token=8, n_shared_expert=1,
        n_expert_groups=8, n_topk_groups=4, n_topk_scores_per_group=2, first_k_dense_replace=3,
        routed_scaling_factor=2.5, norm_topk_prob=True, moe_scoring="sigmoid",
        rope_adjustments=dict(_V2_YARN, mscale=1.0, mscale_all_dim=1.0),
    ),
    "Moonlight-16B-A3B": dict(
        block_size=8192, rope_base=50000, rope_adjustments=None, norm_eps=1e-5, n_expert_groups=None,
        routed_scaling_factor=2.446, moe_scoring="sigmoid", vocab_size=163840,
    ),
    "GLM-4.7-Flash": dict(
        block_size=202752, n_layer=47, n_head=20, head_size=256, rope_base=1000000, n_expert_per_token=4,
        first_k_dense_replace=1, routed_scaling_factor=1.8, norm_topk_prob=True, moe_scoring="sigmoid",
        latent_attention=dict(q_lora_rank=768, kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=192,
                              v_head_dim=256),
    ),
    "Youtu-LLM-2B": dict(
        n_layer=32, n_head=16, mlp_class_name="LLaMAMLP", intermediate_size=6144, rope_base=1600000,
        tie_embeddings=True, latent_attention=dict(_V2_LITE_MLA, q_lora_rank=1536),
    ),
    "Llama-3.2-1B": dict(
        block_size=131072, n_layer=16, n_embd=2048, n_head=32, n_query_groups=8, head_size=64, vocab_size=128256,
        padded_vocab_size=128256, rope_base=500000, rope_adjustments=_LLAMA32_ROPE, tie_embeddings=True,
        rotary_percentage=1.0, bias=False, norm_eps=1e-5, intermediate_size=8192,
    ),
    "Llama-3.1-8B": dict(n_layer=32, n_embd=4096, head_size=128, tie_embeddings=False,
                         rope_adjustments=dict(_LLAMA32_ROPE, factor=8.0)),
    "tiny-llama-1.1b": dict(block_size=2048, n_layer=22, n_query_groups=4, rope_adjustments=None, vocab_size=32000),
    "deepseek-coder-1.3b-base": dict(rope_condense_ratio=4, rope_base=100000, norm_eps=1e-6, block_size=16384),
    "Qwen2.5-0.5B": dict(n_embd=896, n_head=14, n_query_groups=2, bias=False, attn_bias=True, tie_embeddings=True,
                         rope_base=1000000, norm_eps=1e-6, vocab_size=151936),
    "Qwen2.5-7B-Instruct": dict(block_size=32768, tie_embeddings=False, attn_bias=True, vocab_size=152064),
    "SmolLM2-135M": dict(n_layer=30, n_embd=576, n_head=9, n_query_groups=3, rope_base=100000, tie_embeddings=True),
    "Mistral-7B-v0.1": dict(block_size=4096, rope_base=10000, n_query_groups=8, head_size=128),
    "Mistral-7B-Instruct-v0.2": dict(block_size=32768, rope_base=1000000),
}


def test_tables_are_complete_and_every_name_builds():
    assert len(NAMES) == len(set(NAMES)) == len(rows()) == 35
    assert not set(NAMES) & set(builtin_configs), "a published model's name shadows a built-in named config"
    assert set(HF_CONFIG_JSON) == set(PUBLISHED_PARAMS) == set(PUBLISHED_PARAMS_SOURCE) == set(NAMES)
    assert set(Config.names()) == set(builtin_configs) | set(NAMES)
    for name in NAMES:
        hf = HF_CONFIG_JSON[name]
        config = Config.from_name(name)
        assert config.name == name and "/".join(config.hf_config.values()) == hf["_name_or_path"]
        assert Config.from_name(hf["_name_or_path"]) == config  # by Hugging Face id too
        assert config.tie_embeddings == bool(hf.get("tie_word_embeddings"))
        assert config.padded_vocab_size == config.vocab_size == hf["vocab_size"]  # every id is sampleable
        assert config.n_layer == hf["num_hidden_layers"] and config.n_embd == hf["hidden_size"]
        assert config.block_size == CONTEXT_CAPS.get(name, hf["max_position_embeddings"])
    assert Config.from_name("EleutherAI/pythia-160m") == Config.from_name("pythia-160m")
    with pytest.raises(ValueError, match=r"unknown model name 'Qwen2.5-0.6B'\. Similar: .*Qwen2.5-0.5B"):
        Config.from_name("Qwen2.5-0.6B")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_named_config_has_the_published_values(name):
    config = Config.from_name(name)
    assert {field: getattr(config, field) for field in EXPECTED[name]} == EXPECTED[name]


def test_named_configs_are_the_converters_reading_of_their_config_json():
    """The converter's config for each published config.json is the named config; Mistral v0.1's window is refused
    there in one line naming the field (the named config reads it capped at the window)."""
    for name in NAMES:
        if name in CONTEXT_CAPS:
            with pytest.raises(ValueError, match=r"^MistralForCausalLM: sliding_window=4096 < max_position_embeddings="
                               r"32768 is not supported .*set max_position_embeddings to 4096"):
                config_from_hf(HF_CONFIG_JSON[name])
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            converted = config_from_hf(HF_CONFIG_JSON[name], name=name)
        assert converted == Config.from_name(name)
        assert any("rms_norm_eps" in str(w.message) for w in caught) == ("latent_norm_eps" in missing_features(name))
    gaps = {name: missing_features(name) for name in NAMES if missing_features(name)}
    assert gaps == {"Moonlight-16B-A3B": ["latent_norm_eps"], "Moonlight-16B-A3B-Instruct": ["latent_norm_eps"],
                    "GLM-4.7-Flash": ["latent_norm_eps"], "Mistral-7B-v0.1": ["sliding_window"],
                    "Mistral-7B-Instruct-v0.1": ["sliding_window"]}
    assert {gap for listed in gaps.values() for gap in listed} == set(FEATURES)


def _param_count(config: Config) -> int:
    with torch.device("meta"):
        model = GPT(config)
    return sum(p.numel() for p in model.parameters())  # a tied head is the embedding's Parameter: counted once


@pytest.mark.parametrize("name", NAMES)
def test_named_config_has_the_published_parameter_count(name):
    ours, published = _param_count(Config.from_name(name)), PUBLISHED_PARAMS[name]
    assert abs(ours - published) <= TOLERANCE * published, (
        f"{name}: {ours:_} parameters, published {published:_} ({PUBLISHED_PARAMS_SOURCE[name]})"
    )


def test_tied_parameter_counts_are_exact():
    """The counts the hub publishes for tied models (the embedding once) are ours exactly."""
    for name, count in (("Llama-3.2-1B", 1_235_814_400), ("Qwen2.5-0.5B", 494_032_768), ("SmolLM2-135M", 134_515_008),
                        ("Qwen2.5-1.5B", 1_543_714_304), ("SmolLM2-1.7B", 1_711_376_384)):
        assert _param_count(Config.from_name(name)) == count, name


@functools.lru_cache(maxsize=None)
def _transformers_param_count(config_json: str) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = json.loads(config_json)
    hf_config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_named_config_holds_the_parameters_of_transformers_model(name):
    pytest.importorskip("transformers")
    hf = {k: v for k, v in HF_CONFIG_JSON[name].items() if k not in ("_name_or_path", "architectures")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = _transformers_param_count(json.dumps(hf, sort_keys=True))
    assert _param_count(Config.from_name(name)) == theirs


def test_importing_litgpt_reads_no_table():
    code = "import sys, litgpt; print('litgpt.configs' in sys.modules, 'litgpt.configs.hf' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ---------------------------------------------------------------------------------------------------------------------
# The families converted through DeepSeek-V3's layout: tiny random transformers models of them, saved as they are,
# convert to transformers' logits.
TINY = dict(vocab_size=96, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
            intermediate_size=48, max_position_embeddings=64, kv_lora_rank=16, qk_rope_head_dim=8,
            qk_nope_head_dim=12, v_head_dim=10, rms_norm_eps=1e-6)  # latent norms use 1e-6: the same everywhere
ALIAS_CASES = {
    # GLM-4.7-Flash's layout: q-LoRA, interleaved rope, V3 routing over one group, a shared expert, layer 0 dense
    "glm4_moe_lite": dict(q_lora_rank=24, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                          n_shared_experts=1, routed_scaling_factor=1.8, norm_topk_prob=True, n_group=1, topk_group=1,
                          tie_word_embeddings=False),
    # Youtu-LLM's layout: dense MLA (q-LoRA, interleaved rope), tied embeddings
    "youtu": dict(q_lora_rank=24, rope_interleave=True, tie_word_embeddings=True),
}


@pytest.mark.parametrize("model_type", sorted(ALIAS_CASES))
def test_deepseek_v3_alias_families_convert_to_transformers_logits(model_type, tmp_path):
    transformers = pytest.importorskip("transformers")
    from litgpt.checkpoint import load_checkpoint
    from litgpt.scripts.convert_hf_checkpoint import convert_hf_checkpoint

    torch.manual_seed(0)
    hf_config = transformers.AutoConfig.for_model(model_type, **TINY, **ALIAS_CASES[model_type])
    hf_config._attn_implementation = "eager"
    hf_model = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
    with torch.no_grad():
        for pname, p in hf_model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "norm" in pname else 0.0))
        for bname, b in hf_model.named_buffers():
            if bname.endswith("e_score_correction_bias"):
                b.copy_(torch.randn_like(b) * 0.3)
    hf_dir = tmp_path / "hf"
    hf_model.save_pretrained(hf_dir)
    config_json = json.loads((hf_dir / "config.json").read_text())
    model = load_checkpoint(convert_hf_checkpoint(hf_dir, output_dir=tmp_path / "lit")).eval()
    assert model.config.tie_embeddings == (model_type == "youtu")
    if model_type == "glm4_moe_lite":  # GLM's dense/sparse list, read as first_k_dense_replace
        assert config_json["mlp_layer_types"] == ["dense", "sparse", "sparse"]
        assert (model.config.first_k_dense_replace, model.config.moe_layers) == (1, [1, 2])
    idx = torch.randint(0, TINY["vocab_size"], (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf_model(idx).logits, atol=1e-5, rtol=1e-5)
