"""Hugging Face -> ours: tiny random HF models, converted, must give HF's logits (and, for the DeepSeek MoE
models, HF's greedy text through our decode)."""

import json
import warnings

import pytest
import torch
from transformers import (
    DeepseekV2Config,
    DeepseekV2ForCausalLM,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from litgpt import Config
from litgpt.checkpoint import load_checkpoint
from litgpt.scripts.convert_hf_checkpoint import config_from_hf, convert_hf_checkpoint

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
              max_position_embeddings=64)
MLA = dict(kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=12, v_head_dim=10, num_key_value_heads=4,
           first_k_dense_replace=2, rope_scaling=None)
# mixture of experts in layer 1 (layer 0 dense): 8 routed experts of width 16, top-2, in 4 groups of which 2 are kept
MOE = dict(MLA, first_k_dense_replace=1, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
           n_group=4, topk_group=2)
YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=16, beta_fast=32.0,
            beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0)
LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=10000.0, factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=32)
SEQ = 48  # past LLAMA3_ROPE's original context (32), within max_position_embeddings (64)

CASES = {
    "neox": (GPTNeoXForCausalLM, GPTNeoXConfig, dict(rotary_pct=0.5, rotary_emb_base=500)),
    "neox-sequential-nobias-tanh": (
        GPTNeoXForCausalLM, GPTNeoXConfig,
        dict(use_parallel_residual=False, attention_bias=False, hidden_act="gelu_new", layer_norm_eps=1e-4),
    ),
    "llama-gqa": (LlamaForCausalLM, LlamaConfig, dict(num_key_value_heads=2, rope_theta=5000.0, rope_scaling=None)),
    "llama-headdim-tied-bias": (
        LlamaForCausalLM, LlamaConfig,
        dict(num_key_value_heads=1, head_dim=12, tie_word_embeddings=True, attention_bias=True, rms_norm_eps=1e-5),
    ),
    # Llama 3 rope scaling with head_dim 16 (8 frequencies, wavelengths 6.3, 20, 63, ...): against original 32 and
    # factors 1/4, the first is kept (< 8), the second blended, the rest divided by 4; positions run past 32
    "llama3-rope-gqa": (
        LlamaForCausalLM, LlamaConfig,
        dict(num_key_value_heads=2, head_dim=16, rope_parameters=LLAMA3_ROPE),
    ),
    "llama-linear-rope": (
        LlamaForCausalLM, LlamaConfig, dict(rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0)),
    ),
    "qwen2-tied-qkv-bias": (Qwen2ForCausalLM, Qwen2Config, dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "mistral-gqa": (MistralForCausalLM, MistralConfig, dict(num_key_value_heads=2, sliding_window=None)),
    "mistral-window-covers-context": (
        MistralForCausalLM, MistralConfig, dict(num_key_value_heads=1, sliding_window=64, rope_theta=1e6),
    ),
    "deepseek-v3-qlora": (DeepseekV3ForCausalLM, DeepseekV3Config, dict(q_lora_rank=24, rope_interleave=True, **MLA)),
    "deepseek-v3-qlora-rotate-half": (
        DeepseekV3ForCausalLM, DeepseekV3Config, dict(q_lora_rank=24, rope_interleave=False, **MLA),
    ),
    "deepseek-v3-attention-bias": (
        DeepseekV3ForCausalLM, DeepseekV3Config, dict(q_lora_rank=24, attention_bias=True, **MLA),
    ),
    "deepseek-v2-no-qlora": (DeepseekV2ForCausalLM, DeepseekV2Config, dict(q_lora_rank=None, **MLA)),
    "deepseek-v2-mlp-bias": (
        DeepseekV2ForCausalLM, DeepseekV2Config, dict(q_lora_rank=None, attention_bias=True, mlp_bias=True, **MLA),
    ),
    # V2: softmax routing, group-limited greedy, two shared experts
    "deepseek-v2-moe-group-limited": (
        DeepseekV2ForCausalLM, DeepseekV2Config,
        dict(MOE, q_lora_rank=None, n_shared_experts=2, topk_method="group_limited_greedy", routed_scaling_factor=1.5),
    ),
    # V3: sigmoid + e_score_correction_bias, expert groups, a shared expert, the first layer dense, YaRN
    "deepseek-v3-moe-yarn": (
        DeepseekV3ForCausalLM, DeepseekV3Config,
        dict(MOE, q_lora_rank=24, n_shared_experts=1, norm_topk_prob=True, routed_scaling_factor=2.5,
             rope_parameters=YARN),
    ),
    # V3 with one expert group (no group limit) and no nope part in the query/key heads
    "deepseek-v3-moe-one-group-no-nope": (
        DeepseekV3ForCausalLM, DeepseekV3Config,
        dict(MOE, q_lora_rank=None, qk_nope_head_dim=0, n_shared_experts=1, n_group=1, topk_group=1),
    ),
}
MOE_CASES = sorted(case for case in CASES if "-moe" in case)


def randomize_(model: torch.nn.Module) -> None:
    """Noticeable random values in every parameter, norm weights around 1 (and LayerNorm biases around 0), and in
    DeepSeek-V3's routing bias (a buffer), which then changes the experts chosen."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_weight = "norm" in name and name.endswith("weight")
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if is_norm_weight else 0.0))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn_like(b) * 0.3)


def make_hf(case: str, tmp_path, **save_kwargs):
    model_cls, config_cls, overrides = CASES[case]
    config = config_cls(**{**COMMON, **overrides}, attn_implementation="eager")
    model = model_cls(config).eval()
    randomize_(model)
    hf_dir = tmp_path / "hf" / case
    model.save_pretrained(hf_dir, **save_kwargs)
    return model, hf_dir


def hf_logits(model, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx).logits


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_hf(case, tmp_path):
    hf_model, hf_dir = make_hf(case, tmp_path)
    out_dir = convert_hf_checkpoint(hf_dir, output_dir=tmp_path / "lit")
    model = load_checkpoint(out_dir).eval()
    idx = torch.randint(0, VOCAB, (2, SEQ))
    with torch.no_grad():
        ours = model(idx)
    torch.testing.assert_close(ours, hf_logits(hf_model, idx), atol=1e-5, rtol=1e-5)
    assert model.config.name == case  # no _name_or_path in a save_pretrained config.json: the directory name
    assert (out_dir / "generation_config.json").is_file()


def test_converted_deepseek_cached_decode_equals_full_forward(tmp_path):
    hf_model, hf_dir = make_hf("deepseek-v3-qlora", tmp_path)
    model = load_checkpoint(convert_hf_checkpoint(hf_dir, output_dir=tmp_path / "lit")).eval()
    idx = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        full = model(idx)
        model.set_kv_cache(batch_size=2, max_seq_length=16)
        steps = [model(idx[:, :6], input_pos=torch.arange(6))]
        steps += [model(idx[:, t : t + 1], input_pos=torch.tensor([t])) for t in range(6, 10)]  # absorbed path
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full, hf_logits(hf_model, idx), atol=1e-5, rtol=1e-5)


def test_sharded_bin_weights_dtype_and_tokenizer_files(tmp_path):
    hf_model, hf_dir = make_hf("llama-gqa", tmp_path, max_shard_size="20KB")
    assert (hf_dir / "model.safetensors.index.json").is_file()
    (hf_dir / "tokenizer.json").write_text("{}")
    (hf_dir / "tokenizer_config.json").write_text("{}")
    out_dir = convert_hf_checkpoint(hf_dir, output_dir=tmp_path / "lit", dtype="bfloat16")
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= {p.name for p in out_dir.iterdir()}
    model = load_checkpoint(out_dir)
    assert model.lm_head.weight.dtype == torch.bfloat16
    # the same weights as pytorch_model.bin, converted in place (output_dir defaults to the input directory)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((hf_dir / "config.json").read_text())
    torch.save(hf_model.state_dict(), bin_dir / "pytorch_model.bin")
    model = load_checkpoint(convert_hf_checkpoint(bin_dir)).eval()
    idx = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf_logits(hf_model, idx), atol=1e-5, rtol=1e-5)


def test_cli(tmp_path):
    from jsonargparse import CLI

    _, hf_dir = make_hf("neox", tmp_path)
    CLI(convert_hf_checkpoint, args=[str(hf_dir), "--output_dir", str(tmp_path / "cli"), "--dtype", "float32"])
    assert (tmp_path / "cli" / "lit_model.pth").is_file() and (tmp_path / "cli" / "model_config.yaml").is_file()


def test_legacy_pythia_config_matches_named_config():
    """A transformers-4 style config.json (rotary_pct, rotary_emb_base) gives our pythia-160m architecture."""
    hf = {"architectures": ["GPTNeoXForCausalLM"], "hidden_act": "gelu", "hidden_size": 768, "intermediate_size": 3072,
          "layer_norm_eps": 1e-05, "max_position_embeddings": 2048, "model_type": "gpt_neox", "num_attention_heads": 12,
          "num_hidden_layers": 12, "rotary_emb_base": 10000, "rotary_pct": 0.25, "tie_word_embeddings": False,
          "use_parallel_residual": True, "vocab_size": 50304, "_name_or_path": "EleutherAI/pythia-160m"}
    ours, named = config_from_hf(hf), Config.from_name("pythia-160m")
    assert ours.name == "pythia-160m" and ours.hf_config == dict(org="EleutherAI", name="pythia-160m")
    for field in ("block_size", "n_layer", "n_embd", "n_head", "head_size", "n_query_groups", "padded_vocab_size",
                  "rotary_percentage", "rope_base", "parallel_residual", "bias", "norm_class_name", "norm_eps",
                  "mlp_class_name", "gelu_approximate", "intermediate_size", "rope_interleave"):
        assert getattr(ours, field) == getattr(named, field), field


def _deepseek_v3_dict(**overrides) -> dict:
    config = DeepseekV3Config(**{**COMMON, "q_lora_rank": 24, **MLA, **overrides})
    return {**config.to_dict(), "architectures": ["DeepseekV3ForCausalLM"]}


@pytest.mark.parametrize(
    "hf, match",
    [
        ({"architectures": ["MistralForCausalLM"]}, r"^MistralForCausalLM: config.json has no 'num_attention_heads'"),
        ({"architectures": ["Gemma2ForCausalLM"]}, r"unsupported architecture Gemma2ForCausalLM; supported: GPTNeoX"),
        # transformers' MLA families we cannot express: one line naming the family and what we lack
        ({"architectures": ["MiniCPM3ForCausalLM"]},
         r"^unsupported architecture MiniCPM3ForCausalLM \(transformers' minicpm3\): our model has no longrope"),
        ({"model_type": "longcat_flash"},
         r"^unsupported architecture LongcatFlashForCausalLM \(transformers' longcat_flash\): .*zero-computation"),
        ({"architectures": ["DeepseekV32ForCausalLM"]}, r"\(transformers' deepseek_v32\): .*sparse-attention indexer"),
        ({"model_type": "kimi_linear"}, r"\(transformers' kimi_linear\): our model has no linear-attention"),
        ({"model_type": "axk1"}, r"\(transformers' axk1\): our model has no RMSNorm on the MoE output"),
        ({"model_type": "t5"}, "unsupported architecture <none given>"),
        (
            {**_deepseek_v3_dict(), "rope_parameters": None, "rope_scaling": {"type": "dynamic", "factor": 4}},
            "rope scaling 'dynamic' is not supported",
        ),
        (
            {**_deepseek_v3_dict(), "rope_parameters": {**YARN, "mscale": None}},
            "YaRN with mscale_all_dim=1.0 but mscale=None is not supported",
        ),
        (
            {**_deepseek_v3_dict(), "rope_parameters": {**YARN, "attention_factor": 2.0}},
            "YaRN attention_factor=2.0 is not supported",
        ),
        (
            {**_deepseek_v3_dict(**MOE), "architectures": ["DeepseekV2ForCausalLM"], "topk_method": "noaux_tc"},
            "topk_method 'noaux_tc' is not supported",
        ),
        (_deepseek_v3_dict(**{**MOE, "num_experts_per_tok": 9}), r"n_expert_per_token must be between 1 and n_expert"),
        (_deepseek_v3_dict(**{**MOE, "n_group": 3}), r"n_expert_groups \(3\) must divide n_expert \(8\)"),
        (
            {**LlamaConfig(**COMMON).to_dict(), "architectures": ["LlamaForCausalLM"],
             "rope_parameters": {"rope_type": "dynamic", "rope_theta": 5e5, "factor": 8.0}},
            "rope scaling 'dynamic' is not supported",
        ),
        (
            {**LlamaConfig(**COMMON).to_dict(), "architectures": ["LlamaForCausalLM"],
             "rope_parameters": {"rope_type": "linear", "rope_theta": 5e5, "factor": 2.5}},
            r"linear rope scaling factor 2.5 is not supported; rope_condense_ratio takes a whole number",
        ),
        (
            {**MistralConfig(**COMMON, sliding_window=16).to_dict(), "architectures": ["MistralForCausalLM"]},
            r"^MistralForCausalLM: sliding_window=16 < max_position_embeddings=64 is not supported",
        ),
        (
            {**Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=32, max_window_layers=1).to_dict(),
             "architectures": ["Qwen2ForCausalLM"]},
            r"^Qwen2ForCausalLM: sliding_window=32 < max_position_embeddings=64 is not supported",
        ),
        (
            {**_deepseek_v3_dict(**MOE), "architectures": ["Glm4MoeLiteForCausalLM"],
             "mlp_layer_types": ["sparse", "dense"]},
            r"mlp_layer_types \['sparse', 'dense'\] is not supported",
        ),
        ({**LlamaConfig(**COMMON).to_dict(), "architectures": ["LlamaForCausalLM"], "hidden_act": "gelu"},
         "hidden_act 'gelu' is not supported"),
    ],
)
def test_config_errors(hf, match):
    with pytest.raises(ValueError, match=match):
        config_from_hf(hf)


def test_deepseek_dense_when_no_routed_experts_and_eps_warning():
    """Original DeepSeek configs disable MoE with n_routed_experts=null; HF's latent norms fix eps at 1e-6."""
    config = config_from_hf(_deepseek_v3_dict(first_k_dense_replace=0) | {"n_routed_experts": None})
    assert config.mla is not None and config.rope_interleave and config.mla.q_lora_rank == 24
    with pytest.warns(UserWarning, match="q_a/kv_a norms use eps=1e-06"):
        config_from_hf(_deepseek_v3_dict(rms_norm_eps=1e-5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config_from_hf(_deepseek_v3_dict())


def test_deepseek_config_leaves_rotary_percentage_at_the_default():
    """MLA's rope width is qk_rope_head_dim; rotary_percentage, which MLA configs refuse to change, keeps its default."""
    from litgpt.config import DEFAULT_ROTARY_PERCENTAGE

    for arch_dict in (_deepseek_v3_dict(), {**_deepseek_v3_dict(), "architectures": ["DeepseekV2ForCausalLM"]}):
        config = config_from_hf(arch_dict)
        assert config.rotary_percentage == DEFAULT_ROTARY_PERCENTAGE == 0.25
        assert config.rope_n_elem == config.mla.qk_rope_head_dim == arch_dict["qk_rope_head_dim"]


def test_missing_config_and_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        convert_hf_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**LlamaConfig(**COMMON).to_dict(),
                                                      "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(FileNotFoundError, match="no .*safetensors"):
        convert_hf_checkpoint(tmp_path)



# ---------------------------------------------------------------------------------------------------- MoE
def greedy_ids(model, prompt: torch.Tensor, max_new_tokens: int) -> list[int]:
    """Our decode: prefill, then folded one-token steps with greedy sampling."""
    from litgpt.fold import fold_for_decode
    from litgpt.generate.base import DecodeStep, Sampler, SamplingParams, generate

    model.set_kv_cache(1, max_seq_length=prompt.numel() + max_new_tokens)
    sampler = Sampler(SamplingParams(temperature=0.0), model.config.vocab_size, 1, torch.device("cpu"))
    fold_for_decode(model)
    rows, _ = generate(model, [prompt], max_new_tokens, sampler, DecodeStep(model, sampler))
    return rows[0]


@pytest.mark.parametrize("case", MOE_CASES)
def test_moe_greedy_text_equals_hf(case, tmp_path):
    hf_model, hf_dir = make_hf(case, tmp_path)
    model = load_checkpoint(convert_hf_checkpoint(hf_dir, output_dir=tmp_path / "lit")).eval()
    assert model.config.moe_layers == [1] and type(model.transformer.h[0].mlp).__name__ == "LLaMAMLP"
    prompt = torch.randint(0, VOCAB, (6,))
    with torch.no_grad():
        expected = hf_model.generate(prompt[None], max_new_tokens=10, min_new_tokens=10, do_sample=False)[0, 6:]
    assert greedy_ids(model, prompt, 10) == expected.tolist()


def test_fused_expert_layout_and_mtp_layer(tmp_path):
    """transformers 5's in-memory layout (mlp.experts.gate_up_proj / down_proj) converts like the per-expert one;
    tensors of a multi-token-prediction layer past num_hidden_layers are skipped with a warning."""
    from safetensors.torch import save_file

    hf_model, saved_dir = make_hf("deepseek-v3-moe-yarn", tmp_path)
    fused_dir = tmp_path / "fused"
    fused_dir.mkdir()
    tensors = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    assert "model.layers.1.mlp.experts.gate_up_proj" in tensors  # (E, 2I, C)
    mtp = {k.replace("model.layers.1.", "model.layers.2."): v.clone() for k, v in tensors.items() if ".layers.1." in k}
    mtp["model.layers.2.eh_proj.weight"] = torch.zeros(32, 64)
    save_file({**tensors, **mtp}, str(fused_dir / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((saved_dir / "config.json").read_text())
    (fused_dir / "config.json").write_text(json.dumps({**config, "num_nextn_predict_layers": 1}))
    skipped = r"skipped layer\(s\) \[2\] past num_hidden_layers=2: the multi-token-prediction module"
    with pytest.warns(UserWarning, match=skipped):
        out_dir = convert_hf_checkpoint(fused_dir, output_dir=tmp_path / "lit")
    model = load_checkpoint(out_dir).eval()
    idx = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf_logits(hf_model, idx), atol=1e-5, rtol=1e-5)
    per_expert = load_checkpoint(convert_hf_checkpoint(saved_dir, output_dir=tmp_path / "per-expert")).state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, per_expert[key]), key


def test_moe_and_yarn_config_fields():
    v3 = config_from_hf(_deepseek_v3_dict(**{**MOE, "n_shared_experts": 1, "rope_parameters": YARN,
                                             "routed_scaling_factor": 2.5, "norm_topk_prob": True}))
    assert (v3.mlp_class_name, v3.moe_scoring, v3.n_expert, v3.n_expert_per_token, v3.moe_intermediate_size) == (
        "LLaMAMoE", "sigmoid", 8, 2, 16)
    assert (v3.n_expert_groups, v3.n_topk_groups, v3.n_topk_scores_per_group, v3.first_k_dense_replace) == (4, 2, 2, 1)
    assert (v3.n_shared_expert, v3.routed_scaling_factor, v3.norm_topk_prob, v3.moe_layers) == (1, 2.5, True, [1])
    assert v3.rope_adjustments == dict(factor=4.0, original_max_seq_len=16, beta_fast=32.0, beta_slow=1.0,
                                       mscale=1.0, mscale_all_dim=1.0, truncate=True)
    legacy = {**_deepseek_v3_dict(), "rope_parameters": None, "rope_theta": 5000.0,
              "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096}}
    config = config_from_hf(legacy)  # DeepSeek's config.json: rope_scaling; without mscales: transformers' factor
    yarn = config.rope_adjustments
    assert config.rope_base == 5000 and (yarn["mscale"], yarn["mscale_all_dim"]) == (1.0, 0.0)
    v2_dict = {**_deepseek_v3_dict(**MOE), "architectures": ["DeepseekV2ForCausalLM"]}
    v2 = config_from_hf({**v2_dict, "topk_method": "greedy", "norm_topk_prob": False})
    assert (v2.moe_scoring, v2.n_expert_groups, v2.n_shared_expert) == ("softmax", None, 1)
    with pytest.warns(UserWarning, match="norm_topk_prob=true, which transformers' DeepseekV2 ignores"):
        config_from_hf({**v2_dict, "norm_topk_prob": True})


def test_deepseek_v3_config_without_rope_interleave_takes_transformers_default(tmp_path):
    """A DeepSeek-V3 config.json without rope_interleave (older exports): transformers reads it as True, its default,
    and so must the converter: the interleaved rope, and HF's logits (the rotate-half reading differs from them)."""
    import dataclasses

    from litgpt import GPT

    assert DeepseekV3Config().rope_interleave is True  # transformers' default, which the converter must share
    config = DeepseekV3Config(**{**COMMON, "q_lora_rank": 24, **MLA}, attn_implementation="eager")
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(config).eval()
    randomize_(model)
    hf_dir = tmp_path / "hf"
    model.save_pretrained(hf_dir)
    raw = json.loads((hf_dir / "config.json").read_text())
    raw.pop("rope_interleave")
    (hf_dir / "config.json").write_text(json.dumps(raw))
    hf_model = DeepseekV3ForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    assert hf_model.config.rope_interleave is True
    assert config_from_hf(raw).rope_interleave is True
    ours = load_checkpoint(convert_hf_checkpoint(hf_dir, output_dir=tmp_path / "lit")).eval()
    assert ours.config.rope_interleave is True
    idx = torch.randint(0, VOCAB, (2, 10))
    expected = hf_logits(hf_model, idx)
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), expected, atol=1e-5, rtol=1e-5)
        rotate_half = GPT(dataclasses.replace(ours.config, rope_interleave=False)).eval()
        rotate_half.load_state_dict(ours.state_dict())
        assert (rotate_half(idx) - expected).abs().max() > 1e-3  # the setting shows in the logits


def test_new_layouts_read_their_settings():
    """Llama 3 rope, linear rope, Qwen2's q/k/v biases and tie, Mistral: the config fields each maps to."""
    llama3 = config_from_hf({**LlamaConfig(**COMMON, head_dim=16, rope_parameters=LLAMA3_ROPE).to_dict(),
                             "architectures": ["LlamaForCausalLM"]})
    assert llama3.rope_adjustments == dict(factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                           original_max_seq_len=32)
    legacy = {**LlamaConfig(**COMMON).to_dict(), "architectures": ["LlamaForCausalLM"], "rope_parameters": None,
              "rope_theta": 1e5, "rope_scaling": {"type": "linear", "factor": 4.0}}  # deepseek-coder's config.json
    assert (config_from_hf(legacy).rope_condense_ratio, config_from_hf(legacy).rope_base) == (4, 100000)
    qwen = config_from_hf({**Qwen2Config(**COMMON, num_key_value_heads=2, tie_word_embeddings=True).to_dict(),
                           "architectures": ["Qwen2ForCausalLM"]})
    assert (qwen.bias, qwen.attn_bias, qwen.tie_embeddings) == (False, True, True)
    mistral = config_from_hf({**MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=None).to_dict(),
                              "architectures": ["MistralForCausalLM"]})
    assert (mistral.bias, mistral.attn_bias, mistral.tie_embeddings, mistral.block_size) == (False, False, False, 64)
