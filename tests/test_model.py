"""GPT forward, cached decode and the public API."""

import dataclasses

import pytest
import torch

from litgpt.attention import AttentionInputs
from litgpt import GPT, Config

MLA_DIMS = dict(q_lora_rank=24, kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=12)

CASES = {
    "mha": dict(),
    "gqa": dict(n_query_groups=2),
    "mqa": dict(n_query_groups=1),
    "mha-llama": dict(
        parallel_residual=False, norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP", intermediate_size=96,
        bias=False, rotary_percentage=1.0, n_query_groups=2,
    ),
    "mha-interleaved": dict(rope_interleave=True, shared_attention_norm=True),
    "mla": dict(latent_attention=True),
    "mla-qlora": dict(latent_attention=MLA_DIMS),
    "mla-interleaved": dict(latent_attention=MLA_DIMS, rope_interleave=True, parallel_residual=False),
    "mla-noqlora-interleaved": dict(latent_attention={**MLA_DIMS, "q_lora_rank": None}, rope_interleave=True),
    "mla-bias": dict(latent_attention=MLA_DIMS, attn_bias=True),
}


def randomize(model: GPT) -> GPT:
    """Non-trivial weights everywhere (norm weights included) so a wrong path cannot hide."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_weight = ("norm" in name or "ln_f" in name) and name.endswith("weight")
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if is_norm_weight else 0.0))
    return model


def make(case: str, dtype=torch.float32) -> GPT:
    config = Config.from_name("debug", block_size=64, vocab_size=100, padding_multiple=64, **CASES[case])
    return randomize(GPT(config)).to(dtype).eval()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("chunks", [(20,), (7, 5, 8), (1,) * 20])
def test_cached_decode_equals_full_forward(case, chunks):
    model = make(case)
    idx = torch.randint(0, 100, (2, sum(chunks)))
    with torch.no_grad():
        full = model(idx)  # (2, 20, V)
        model.set_kv_cache(batch_size=2, max_seq_length=32)
        start, outs = 0, []
        for n in chunks:
            input_pos = torch.arange(start, start + n)
            outs.append(model(idx[:, start : start + n], input_pos=input_pos))
            start += n
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["mha", "gqa", "mla", "mla-interleaved"])
def test_per_row_positions(case):
    """input_pos of shape (B, T): rows at different positions match each row decoded alone."""
    model = make(case)
    idx = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        model.set_kv_cache(batch_size=2, max_seq_length=16)
        model(idx[:, :8], input_pos=torch.arange(8))
        # row 0 continues at position 8, row 1 rewrites and continues at position 5
        step = torch.stack([idx[0, 8], idx[1, 5]]).view(2, 1)
        out = model(step, input_pos=torch.tensor([[8], [5]]))
        ref0 = model.__class__(model.config).eval()
        ref0.load_state_dict(model.state_dict())
        expected0 = ref0(idx[:1, :9])[:, -1]
        expected1 = ref0(idx[1:, :6])[:, -1]
    torch.testing.assert_close(out[0, 0], expected0[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, 0], expected1[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["mha", "mla"])
def test_input_pos_maxp1_bounds_cache_read(case):
    model = make(case)
    idx = torch.randint(0, 100, (1, 10))
    with torch.no_grad():
        full = model(idx)
        model.set_kv_cache(batch_size=1, max_seq_length=64)
        model(idx[:, :9], input_pos=torch.arange(9), input_pos_maxp1=9)
        last = model(idx[:, 9:], input_pos=torch.tensor([9]), input_pos_maxp1=10)
    torch.testing.assert_close(last[:, 0], full[:, 9], atol=1e-5, rtol=1e-5)


def test_public_api():
    model = GPT.from_name("debug-mla")
    assert model.max_seq_length == model.config.block_size
    model.max_seq_length = 32
    assert model.cos.shape == (32, model.config.rope_n_elem)
    with pytest.raises(ValueError, match="block_size"):
        model.max_seq_length = model.config.block_size + 1
    with pytest.raises(TypeError, match="set_kv_cache"):
        model(torch.zeros(1, 2, dtype=torch.long), input_pos=torch.arange(2))
    with pytest.raises(ValueError, match="max_seq_length"):
        model(torch.zeros(1, 33, dtype=torch.long))
    model.set_kv_cache(batch_size=3)
    assert model.kv_cache_bytes() > 0
    model.clear_kv_cache()
    assert model.kv_cache_bytes() == 0


def test_state_dict_keys_match_upstream_names():
    mha = GPT.from_name("debug").state_dict().keys()
    assert {"transformer.wte.weight", "transformer.h.0.norm_1.weight", "transformer.h.0.attn.qkv.weight",
            "transformer.h.0.attn.proj.weight", "transformer.h.0.norm_2.weight", "transformer.h.0.mlp.fc.weight",
            "transformer.h.0.mlp.proj.weight", "transformer.ln_f.weight", "lm_head.weight"} <= set(mha)
    mla = GPT(Config.from_name("debug", latent_attention=MLA_DIMS)).state_dict().keys()
    for name in ("q_a_proj", "q_a_norm", "q_b_proj", "kv_a_proj_with_mqa", "kv_a_norm", "kv_b_proj", "proj"):
        assert f"transformer.h.1.attn.{name}.weight" in mla
    assert "transformer.h.0.attn.q_proj.weight" in GPT.from_name("debug-mla").state_dict()
    llama = GPT(Config.from_name("debug", mlp_class_name="LLaMAMLP", intermediate_size=96)).state_dict()
    assert {"transformer.h.0.mlp.fc_1.weight", "transformer.h.0.mlp.fc_2.weight"} <= set(llama)


def test_qkv_rows_are_all_q_then_all_k_then_all_v():
    """Zeroing the K rows of qkv makes every score equal: output is the mean of V, as the layout implies."""
    model = make("gqa")
    attn = model.transformer.h[0].attn
    c = model.config
    with torch.no_grad():
        attn.qkv.weight[c.n_head * c.head_size : (c.n_head + c.n_query_groups) * c.head_size] = 0
        attn.qkv.bias[c.n_head * c.head_size : (c.n_head + c.n_query_groups) * c.head_size] = 0
        x = torch.randn(1, 5, c.n_embd)
        cos, sin = model.cos[:5], model.sin[:5]
        y = attn(x, AttentionInputs(cos, sin))
        v = attn.qkv(x)[..., (c.n_head + c.n_query_groups) * c.head_size :].view(1, 5, c.n_query_groups, -1)
        v_mean = v.cumsum(1) / torch.arange(1, 6).view(1, 5, 1, 1)  # causal mean of V per group
        v_mean = v_mean.repeat_interleave(c.n_head // c.n_query_groups, dim=2).reshape(1, 5, -1)
    torch.testing.assert_close(y, attn.proj(v_mean), atol=1e-5, rtol=1e-5)


def test_rope_cache_follows_weights_device_and_meta_build():
    with torch.device("meta"):
        model = GPT.from_name("debug")
    assert model.cos.device.type == "cpu" and model.cos.shape == (128, model.config.rope_n_elem)


# ------------------------------------------------------------------------------------------------ scaled embeddings
def test_scale_embeddings_multiplies_the_embedding_by_the_root_of_n_embd():
    """scale_embeddings: the blocks read wte(idx) * sqrt(n_embd) (Gemma's normalizer), not the embedding as it is."""
    config = Config.from_name("debug", block_size=32, vocab_size=100, padding_multiple=64, scale_embeddings=True)
    model = randomize(GPT(config)).eval()
    seen = []
    model.transformer.h[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    idx = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        model(idx)
    assert config.n_embd == 64  # so the factor is 8
    torch.testing.assert_close(seen[0], model.transformer.wte.weight[idx] * 8.0, rtol=0, atol=0)


def test_scale_embeddings_logits_match_transformers_gemma(tmp_path):
    """A Gemma model of transformers (which scales its embeddings by sqrt(hidden_size)) with a SiLU MLP and untied
    head, i.e. a Llama but for that scale and Gemma's (1 + w) RMSNorm gains: converted as a Llama with the gains
    plus one, our model with scale_embeddings=True gives its logits."""
    transformers = pytest.importorskip("transformers", reason="the oracle is transformers' Gemma")
    from litgpt.checkpoint import load_checkpoint
    from litgpt.scripts.convert_hf_checkpoint import convert_hf_checkpoint

    dims = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                head_dim=8, intermediate_size=48, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0,
                hidden_act="silu", tie_word_embeddings=False)
    torch.manual_seed(0)
    gemma = transformers.GemmaForCausalLM(transformers.GemmaConfig(**dims, attn_implementation="eager")).eval()
    state = {}
    with torch.no_grad():
        for name, p in gemma.named_parameters():
            p.copy_(torch.randn_like(p) * (0.1 if "norm" in name else 0.3))
            state[name] = p.detach() + (1.0 if "norm" in name else 0.0)  # Llama's gain is Gemma's 1 + w
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(**dims))
    llama.load_state_dict(state, strict=True)
    llama.save_pretrained(tmp_path / "hf")
    converted = load_checkpoint(convert_hf_checkpoint(tmp_path / "hf", output_dir=tmp_path / "lit"))
    assert converted.config.scale_embeddings is False
    model = GPT(dataclasses.replace(converted.config, scale_embeddings=True)).eval()
    model.load_state_dict(converted.state_dict())
    idx = torch.randint(0, 96, (2, 10))
    with torch.no_grad():
        expected = gemma(idx).logits
        torch.testing.assert_close(model(idx)[..., :96], expected, atol=1e-5, rtol=1e-5)
        assert (converted.eval()(idx)[..., :96] - expected).abs().max() > 0.1  # the scale matters here


# ------------------------------------------------------------------------------------------------ tied embeddings
def test_tied_embeddings_share_one_parameter_through_moves_loads_and_training(tmp_path):
    """tie_embeddings: lm_head.weight is the embedding's Parameter (counted once), state dicts still hold both keys
    (upstream litgpt's layout), and the tie survives to_empty, a dtype move, an assign=True load and a training step."""
    from litgpt.checkpoint import load_checkpoint, save_config

    config = Config.from_name("debug", tie_embeddings=True)
    untied = sum(p.numel() for p in GPT(Config.from_name("debug")).parameters())
    model = GPT(config)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert sum(p.numel() for p in model.parameters()) == untied - 1024 * 64  # padded_vocab_size x n_embd fewer
    state = model.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["transformer.wte.weight"].data_ptr()  # one storage
    with torch.device("meta"):
        meta = GPT(config)
    meta.to_empty(device="cpu")
    assert meta.lm_head.weight is meta.transformer.wte.weight
    meta.load_state_dict(state, assign=True)
    assert meta.lm_head.weight is meta.transformer.wte.weight
    assert model.to(torch.float64).lm_head.weight is model.transformer.wte.weight
    model = model.float()
    idx = torch.randint(0, 1000, (2, 8))
    loss = model(idx, targets=idx)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    assert model.lm_head.weight is model.transformer.wte.weight
    torch.save(model.state_dict(), tmp_path / "lit_model.pth")
    save_config(config, tmp_path)
    loaded = load_checkpoint(tmp_path)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    torch.testing.assert_close(loaded(idx), model(idx))
    bad = {**state, "lm_head.weight": state["lm_head.weight"] + 1}
    with pytest.raises(ValueError, match="lm_head.weight differs from transformer.wte.weight"):
        GPT(config).load_state_dict(bad)


def test_tied_mla_model_folds_for_decode_and_refuses_a_lora_head():
    """Folded decode of a tied MLA model gives its unfolded cached logits; LoRA on its head (which would move the
    embedding when merged) is refused, LoRA elsewhere keeps the tie."""
    from litgpt.fold import fold_for_decode
    from litgpt.lora import LoRASpec, apply_lora

    torch.manual_seed(0)
    model = GPT(Config.from_name("debug-mla", block_size=32, tie_embeddings=True)).to(torch.float64).eval()
    prompt, step = torch.randint(0, 1000, (1, 5)), torch.randint(0, 1000, (1, 1))
    with torch.no_grad():
        model.set_kv_cache(batch_size=1)
        model(prompt, input_pos=torch.arange(5))
        plain = model(step, input_pos=torch.tensor([5]))
        fold_for_decode(model)
        model.set_kv_cache(batch_size=1)
        model(prompt, input_pos=torch.arange(5))
        folded = model(step, input_pos=torch.tensor([5]))
    assert (plain - folded).abs().max().item() < 1e-9 * plain.abs().max().item()
    lora_model = GPT(Config.from_name("debug", tie_embeddings=True))
    with pytest.raises(ValueError, match="leave the head out of the LoRA targets"):
        apply_lora(lora_model, LoRASpec(head=True))
    assert not any("lora" in n for n, _ in lora_model.named_parameters())  # refused before any layer was wrapped
    apply_lora(lora_model, LoRASpec())
    assert lora_model.lm_head.weight is lora_model.transformer.wte.weight
