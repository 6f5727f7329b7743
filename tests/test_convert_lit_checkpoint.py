"""Ours -> Hugging Face: tiny random models, converted, must give our logits in transformers."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from litgpt import GPT, Config
from litgpt.checkpoint import load_checkpoint, save_checkpoint, save_config
from litgpt.scripts.convert_hf_checkpoint import convert_hf_checkpoint
from litgpt.scripts.convert_lit_checkpoint import convert_lit_checkpoint

VOCAB = 96
MLA = dict(q_lora_rank=24, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=12, v_head_dim=10)
LLAMA = dict(parallel_residual=False, norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP",
             bias=False, rotary_percentage=1.0, norm_eps=1e-6)
# DeepSeek MoE: layer 0 dense, layer 1 with 8 routed experts (top-2, in 4 groups of which 2 are kept) + shared ones
MOE = dict(LLAMA, latent_attention=MLA, rope_interleave=True, rotary_percentage=0.25, mlp_class_name="LLaMAMoE",
           n_expert=8, n_expert_per_token=2, moe_intermediate_size=16, n_shared_expert=1, first_k_dense_replace=1,
           n_expert_groups=4, n_topk_groups=2)
YARN = dict(factor=4.0, original_max_seq_len=16, beta_fast=32, beta_slow=1, mscale=1.0, mscale_all_dim=1.0)
LLAMA3 = dict(factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=32)
SEQ = 48  # the Llama 3 case's sequence: past LLAMA3's original context (32), within block_size (64)

# case: (config overrides, architecture argument, HF architecture expected in config.json)
CASES = {
    "neox": (dict(), None, "GPTNeoXForCausalLM"),
    "neox-sequential-nobias-tanh": (
        dict(parallel_residual=False, bias=False, gelu_approximate="tanh"), None, "GPTNeoXForCausalLM",
    ),
    "neox-interleaved-shared-norm": (
        dict(rope_interleave=True, shared_attention_norm=True), None, "GPTNeoXForCausalLM",
    ),
    "llama-gqa": (dict(LLAMA, n_query_groups=2), None, "LlamaForCausalLM"),
    "llama-attn-bias-interleaved": (
        dict(LLAMA, n_query_groups=1, attn_bias=True, rope_interleave=True), "LlamaForCausalLM", "LlamaForCausalLM",
    ),
    # q/k/v biases only (attn_bias without bias): Qwen2's layout, here with tied embeddings
    "qwen2-tied": (dict(LLAMA, n_query_groups=2, attn_bias=True, tie_embeddings=True), None, "Qwen2ForCausalLM"),
    # Llama 3 rope scaling, head_size 16 (wavelengths 6.3, 20, 63, ...: kept, blended, divided against original 32)
    "llama3-rope": (dict(LLAMA, n_query_groups=2, head_size=16, rope_adjustments=LLAMA3), None, "LlamaForCausalLM"),
    "llama-linear-rope": (dict(LLAMA, rope_condense_ratio=2), None, "LlamaForCausalLM"),
    "mla-v3": (dict(LLAMA, latent_attention=MLA), None, "DeepseekV3ForCausalLM"),
    "mla-v3-interleaved-noqlora": (
        dict(LLAMA, latent_attention={**MLA, "q_lora_rank": None}, rope_interleave=True), None, "DeepseekV3ForCausalLM",
    ),
    "mla-v3-attn-bias": (dict(LLAMA, latent_attention=MLA, attn_bias=True), None, "DeepseekV3ForCausalLM"),
    "mla-v2": (
        dict(LLAMA, latent_attention=MLA, rope_interleave=True, bias=True), "DeepseekV2ForCausalLM",
        "DeepseekV2ForCausalLM",
    ),
    "moe-v3-yarn": (
        dict(MOE, moe_scoring="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5, rope_adjustments=YARN), None,
        "DeepseekV3ForCausalLM",
    ),
    "moe-v3-no-groups": (
        dict(MOE, moe_scoring="sigmoid", n_expert_groups=None, n_topk_groups=None), None, "DeepseekV3ForCausalLM",
    ),
    "moe-v2": (dict(MOE, moe_scoring="softmax", n_shared_expert=2), None, "DeepseekV2ForCausalLM"),
}
ROUND_TRIP = ("neox", "neox-sequential-nobias-tanh", "llama-gqa", "qwen2-tied", "llama3-rope", "llama-linear-rope",
              "mla-v3", "mla-v3-attn-bias", "moe-v3-yarn",
              "moe-v3-no-groups", "moe-v2")


def make_ours(overrides: dict, zero_biases: bool = False) -> GPT:
    """Tiny model with noticeable random weights; with zero_biases, Linear biases are zero (as HF may need)."""
    fields = dict(name="tiny", block_size=64, n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, padding_multiple=32,
                  intermediate_size=48, rotary_percentage=0.5)
    config = Config(**{**fields, **overrides})
    model = GPT(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = "norm" in name or "ln_f" in name
            zero = zero_biases and name.endswith(".bias") and not is_norm
            p.copy_(torch.zeros_like(p) if zero else torch.randn_like(p) * 0.3 + float(is_norm and "weight" in name))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # DeepSeek-V3's routing bias: it changes the choice
                b.copy_(torch.randn_like(b) * 0.3)
    return model


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_in_transformers(case, tmp_path):
    overrides, architecture, expected_arch = CASES[case]
    # HF DeepSeek has no bias on q_b/kv_b/MLP: our bias=True model converts only while those are zero
    model = make_ours(overrides, zero_biases=case == "mla-v2")
    save_checkpoint(model, tmp_path / "lit")
    hf_dir = convert_lit_checkpoint(tmp_path / "lit", tmp_path / "hf", architecture=architecture)
    assert json.loads((hf_dir / "config.json").read_text())["architectures"] == [expected_arch]
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager", dtype=torch.float32).eval()
    idx = torch.randint(0, VOCAB, (2, SEQ if "llama3" in case else 10))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(idx).logits, model(idx), atol=1e-5, rtol=1e-5)
    if case in ROUND_TRIP:  # and back: the same tensors, plus zero biases where HF's bias flags are coarser
        back = load_checkpoint(convert_hf_checkpoint(hf_dir, output_dir=tmp_path / "back")).state_dict()
        ours = model.state_dict()
        assert set(ours) <= set(back)
        for key, value in back.items():
            expected = ours[key] if key in ours else torch.zeros_like(value)
            torch.testing.assert_close(value, expected, atol=0, rtol=0, msg=key)


def test_mla_with_parallel_residual_has_no_hf_equivalent(tmp_path):
    save_config(Config.from_name("pythia-14m-mla"), tmp_path)  # the error comes before any weight is read
    with pytest.raises(ValueError, match=r"^cannot convert 'pythia-14m-mla' to DeepseekV3ForCausalLM \(the HF "
                       r"architecture with MLA\): it has no equivalent of parallel_residual=True, "
                       r"norm_class_name='LayerNorm', mlp_class_name='GptNeoxMLP'$"):
        convert_lit_checkpoint(tmp_path, tmp_path / "hf")


@pytest.mark.parametrize(
    "overrides, architecture, match",
    [
        (dict(n_query_groups=2), None, r"GPTNeoXForCausalLM: it has no equivalent of n_query_groups=2 \(GQA/MQA\)"),
        (dict(LLAMA, rotary_percentage=0.5), None, r"LlamaForCausalLM: .*rotary_percentage=0.5 \(partial rope\)"),
        (dict(LLAMA, latent_attention=MLA), "DeepseekV2ForCausalLM", "rope_interleave=False"),
        (dict(LLAMA), "DeepseekV3ForCausalLM", r"latent_attention=None \(no MLA\)"),
        (dict(LLAMA, scale_embeddings=True), None, "scale_embeddings=True"),
        (dict(), "MistralForCausalLM", "unsupported architecture MistralForCausalLM"),
        (dict(LLAMA, bias=True), "Qwen2ForCausalLM", r"bias=True \(Qwen2 has no o_proj or MLP biases\)"),
        (dict(LLAMA, rope_adjustments=LLAMA3, rope_condense_ratio=2), None, r"LlamaForCausalLM: .*rope_condense_ratio=2"),
        (dict(rope_adjustments=LLAMA3), None, r"GPTNeoXForCausalLM: .*rope_adjustments \(Llama 3 scaling\)"),
        (dict(MOE, moe_scoring="sigmoid", rope_adjustments=LLAMA3), None, r"rope_adjustments \(Llama 3 scaling\)"),
        (dict(MOE, moe_scoring="topk_softmax", n_expert_groups=None, n_topk_groups=None), None,
         r"DeepseekV3ForCausalLM.*moe_scoring='topk_softmax'"),
        (dict(MOE, moe_scoring="softmax"), "DeepseekV3ForCausalLM", "moe_scoring='softmax'"),
        (dict(MOE, moe_scoring="softmax", norm_topk_prob=True), None, "DeepseekV2ForCausalLM.*norm_topk_prob=True"),
        (dict(MOE, moe_scoring="sigmoid", n_topk_scores_per_group=1), None, "n_topk_scores_per_group=1"),
        (dict(MOE, moe_scoring="sigmoid", n_shared_expert=None), None, r"n_shared_expert=None \(no shared experts\)"),
        (dict(MOE, moe_scoring="sigmoid", n_layer=3, first_k_dense_replace=None, moe_layer_freq=2), None,
         "moe_layer_freq=2"),
        (dict(MOE, moe_scoring="sigmoid", rope_adjustments={**YARN, "mscale": 0.7, "mscale_all_dim": 0.0}), None,
         "rope_adjustments.mscale=0.7 with mscale_all_dim=0"),
        (dict(LLAMA, rope_adjustments=YARN), None, r"LlamaForCausalLM: .*rope_adjustments \(YaRN\)"),
    ],
)
def test_unsupported_configs(tmp_path, overrides, architecture, match):
    save_config(make_ours(overrides).config, tmp_path)
    with pytest.raises(ValueError, match=match):
        convert_lit_checkpoint(tmp_path, tmp_path / "hf", architecture=architecture)


def test_nonzero_bias_without_hf_equivalent(tmp_path):
    save_checkpoint(make_ours(dict(LLAMA, latent_attention=MLA, bias=True)), tmp_path / "lit")
    with pytest.raises(ValueError, match=r"DeepseekV3ForCausalLM: it has no bias 'model\.layers\.0\..*' and ours is"):
        convert_lit_checkpoint(tmp_path / "lit", tmp_path / "hf")


def test_cli_and_tokenizer_files(tmp_path):
    from jsonargparse import CLI

    save_checkpoint(make_ours(LLAMA), tmp_path / "lit")
    (tmp_path / "lit" / "tokenizer.json").write_text("{}")
    CLI(convert_lit_checkpoint, args=[str(tmp_path / "lit"), str(tmp_path / "hf")])
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in (tmp_path / "hf").iterdir()}


def test_deepseek_latent_norm_eps_warning(tmp_path):
    """HF's DeepSeek builds q_a/kv_a norms with eps 1e-6 whatever rms_norm_eps says; ours use norm_eps."""
    save_checkpoint(make_ours(dict(LLAMA, latent_attention=MLA, norm_eps=1e-5)), tmp_path / "lit")
    with pytest.warns(UserWarning, match="q_a/kv_a norms use eps=1e-06"):
        convert_lit_checkpoint(tmp_path / "lit", tmp_path / "hf")


# ---------------------------------------------------------------------------------------------------- tied embeddings
TIED_CASES = {"llama": dict(LLAMA, n_query_groups=2), "neox": dict(), "mla-v3": dict(LLAMA, latent_attention=MLA)}
HEAD_AND_EMBEDDING = {"llama": ("lm_head.weight", "model.embed_tokens.weight"),
                      "neox": ("embed_out.weight", "gpt_neox.embed_in.weight"),
                      "mla-v3": ("lm_head.weight", "model.embed_tokens.weight")}


def make_tied(overrides: dict) -> GPT:
    """A model whose head is its embedding: one tensor under both names, as upstream litgpt converts SmolLM2."""
    model = make_ours(overrides)
    model.lm_head.weight = model.transformer.wte.weight
    return model


def safetensors_keys(hf_dir) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(hf_dir / "model.safetensors"), framework="pt") as f:
        return set(f.keys())


def is_tied(hf_model) -> bool:
    return hf_model.get_output_embeddings().weight.data_ptr() == hf_model.get_input_embeddings().weight.data_ptr()


@pytest.mark.parametrize("case", sorted(TIED_CASES))
def test_shared_head_and_embedding_export_tied(case, tmp_path):
    model = make_tied(TIED_CASES[case])
    save_checkpoint(model, tmp_path / "lit")
    saved = torch.load(tmp_path / "lit" / "lit_model.pth", weights_only=True)
    assert saved["lm_head.weight"].data_ptr() == saved["transformer.wte.weight"].data_ptr()  # the failing input
    hf_dir = convert_lit_checkpoint(tmp_path / "lit", tmp_path / "hf")
    assert json.loads((hf_dir / "config.json").read_text())["tie_word_embeddings"] is True
    head, embedding = HEAD_AND_EMBEDDING[case]
    keys = safetensors_keys(hf_dir)
    assert embedding in keys and head not in keys  # the embedding once, as transformers saves tied models
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager", dtype=torch.float32).eval()
    assert hf_model.config.tie_word_embeddings is True and is_tied(hf_model)
    idx = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(idx).logits, model(idx), atol=1e-5, rtol=1e-5)


def test_shared_head_exported_untied_on_request(tmp_path):
    """--tie_embeddings false: the one tensor is written twice (cloned), and HF keeps two matrices."""
    model = make_tied(LLAMA)
    save_checkpoint(model, tmp_path / "lit")
    hf_dir = convert_lit_checkpoint(tmp_path / "lit", tmp_path / "hf", tie_embeddings=False)
    assert json.loads((hf_dir / "config.json").read_text())["tie_word_embeddings"] is False
    assert {"lm_head.weight", "model.embed_tokens.weight"} <= safetensors_keys(hf_dir)
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager", dtype=torch.float32).eval()
    assert not is_tied(hf_model)
    idx = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(idx).logits, model(idx), atol=1e-5, rtol=1e-5)


def test_untied_model_stays_untied_and_refuses_forced_tying(tmp_path):
    save_checkpoint(make_ours(LLAMA), tmp_path / "lit")
    hf_dir = convert_lit_checkpoint(tmp_path / "lit", tmp_path / "hf")
    assert json.loads((hf_dir / "config.json").read_text())["tie_word_embeddings"] is False
    assert "lm_head.weight" in safetensors_keys(hf_dir)
    with pytest.raises(ValueError, match=r"^cannot tie the embeddings: lm_head\.weight differs from "
                       r"transformer\.wte\.weight \(max abs difference \d.*\); convert without --tie_embeddings"):
        convert_lit_checkpoint(tmp_path / "lit", tmp_path / "tied", tie_embeddings=True)


def test_tied_hf_model_round_trips_tied(tmp_path):
    """HF tied -> ours (the head is a copy of the embedding) -> HF: tied again, with the original logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
                            tie_word_embeddings=True)
    original = LlamaForCausalLM(hf_config).eval()
    with torch.no_grad():
        for name, p in original.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3 + float("norm" in name))
    assert is_tied(original)
    original.save_pretrained(tmp_path / "hf")
    lit = load_checkpoint(convert_hf_checkpoint(tmp_path / "hf", output_dir=tmp_path / "lit")).eval()
    torch.testing.assert_close(lit.lm_head.weight, lit.transformer.wte.weight, atol=0, rtol=0)
    hf_dir = convert_lit_checkpoint(tmp_path / "lit", tmp_path / "hf2")
    assert json.loads((hf_dir / "config.json").read_text())["tie_word_embeddings"] is True
    again = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager", dtype=torch.float32).eval()
    assert is_tied(again)
    idx = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        expected = original(idx).logits
        torch.testing.assert_close(lit(idx), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(again(idx).logits, expected, atol=1e-5, rtol=1e-5)


def test_checkpoint_without_lm_head_is_an_error(tmp_path):
    model = make_ours(LLAMA)
    save_checkpoint(model, tmp_path / "lit")
    state_dict = model.state_dict()
    del state_dict["lm_head.weight"]
    torch.save(state_dict, tmp_path / "lit" / "lit_model.pth")
    with pytest.raises(ValueError, match=r"lit_model\.pth does not match model_config\.yaml: it has no "
                       r"'lm_head\.weight'; point at the checkpoint directory"):
        convert_lit_checkpoint(tmp_path / "lit", tmp_path / "hf")


# ---------------------------------------------------------------------------------------------------- MoE
@pytest.mark.parametrize("case", ["moe-v3-yarn", "moe-v2"])
def test_fused_expert_layout_loads_in_transformers(case, tmp_path):
    """--expert_layout fused writes transformers 5's mlp.experts.gate_up_proj (E, 2I, C) / down_proj (E, C, I)."""
    model = make_ours(CASES[case][0])
    save_checkpoint(model, tmp_path / "lit")
    hf_dir = convert_lit_checkpoint(tmp_path / "lit", tmp_path / "hf", expert_layout="fused")
    keys = safetensors_keys(hf_dir)
    assert {"model.layers.1.mlp.experts.gate_up_proj", "model.layers.1.mlp.experts.down_proj"} <= keys
    assert not any(".experts.0." in k for k in keys)
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager", dtype=torch.float32).eval()
    assert tuple(hf_model.model.layers[1].mlp.experts.gate_up_proj.shape) == (8, 32, 32)
    idx = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(idx).logits, model(idx), atol=1e-5, rtol=1e-5)


def test_expert_layout_and_expert_biases(tmp_path):
    save_checkpoint(make_ours(LLAMA), tmp_path / "dense")
    with pytest.raises(ValueError, match="--expert_layout fused applies to mixture-of-experts models"):
        convert_lit_checkpoint(tmp_path / "dense", tmp_path / "hf", expert_layout="fused")
    # bias=True: the Linear biases zero (HF's q_b/kv_b have none), the routed experts' stacked biases random
    save_checkpoint(make_ours(dict(MOE, moe_scoring="softmax", bias=True), zero_biases=True), tmp_path / "biased")
    message = r"routed experts have no bias and our 'transformer\.h\.1\.mlp\.experts\.0\.fc_1"
    with pytest.raises(ValueError, match=message):
        convert_lit_checkpoint(tmp_path / "biased", tmp_path / "hf2")
