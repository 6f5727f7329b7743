"""MLA-o: a low-rank output map (o_a_proj -> optional RMSNorm -> o_b_proj) in place of MLA's `proj`."""

import pytest
import torch

from litgpt import GPT, Config
from litgpt.fold import fold_for_decode
from litgpt.lora import LoRASpec, apply_lora

from test_fold import decode_logits
from test_model import MLA_DIMS, randomize

CASES = {
    f"{q}-{'norm' if norm else 'plain'}-{residual}": dict(
        latent_attention={**MLA_DIMS, "q_lora_rank": None if q == "full-q" else 24, "o_latent_dim": 20,
                          "o_latent_norm": norm},
        parallel_residual=residual == "parallel", attn_bias=True,
    )
    for q in ("full-q", "lora-q")
    for norm in (False, True)
    for residual in ("parallel", "sequential")
}


def model_for(case: str) -> GPT:
    torch.manual_seed(0)
    config = Config.from_name("debug", block_size=64, **CASES[case])
    return randomize(GPT(config)).to(torch.float64).eval()


@pytest.mark.parametrize("absorb_limit", [10**12, -(10**12)], ids=["w_uv-folded", "w_uv-in-the-step"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_cached_and_folded_decode_equal_the_full_forward_float64(case, absorb_limit, monkeypatch):
    monkeypatch.setattr("litgpt.attention.ABSORB_EXTRA_PARAMS", absorb_limit)  # `folds_absorption` either way
    model = model_for(case)
    prompt, steps = torch.randint(0, 100, (2, 7)), torch.randint(0, 100, (2, 4))
    with torch.no_grad():
        full = model(torch.cat((prompt, steps), dim=1))[:, prompt.size(1) :]  # (B, 4, V)
        cached = decode_logits(model, prompt, steps)
        fold_for_decode(model)
        folded = decode_logits(model, prompt, steps)
    scale = full.abs().max().item()
    assert scale > 1e-2
    assert (full - cached).abs().max().item() < 1e-9 * scale
    assert (cached - folded).abs().max().item() < 1e-9 * scale


def test_state_dict_keys_and_round_trip():
    model = model_for("full-q-norm-parallel")
    keys = set(model.state_dict())
    for name in ("o_a_proj.weight", "o_a_proj.bias", "o_a_norm.weight", "o_b_proj.weight", "o_b_proj.bias"):
        assert f"transformer.h.0.attn.{name}" in keys
    assert not any(k.endswith("attn.proj.weight") for k in keys)
    other = GPT(model.config).to(torch.float64)
    other.load_state_dict(model.state_dict())
    x = torch.randint(0, 100, (1, 9))
    with torch.no_grad():
        assert torch.equal(model(x), other.eval()(x))
    plain = model_for("full-q-plain-parallel")
    assert "transformer.h.0.attn.o_a_norm.weight" not in plain.state_dict()


@pytest.mark.parametrize(
    "value, match",
    [(0, "o_latent_dim must be a positive integer"), (-3, "o_latent_dim must be a positive integer"),
     (2.5, "o_latent_dim must be a positive integer"), (True, "o_latent_dim must be a positive integer"),
     (10_000, r"o_latent_dim \(10000\) must be <= n_embd")],
)
def test_bad_o_latent_dim_is_a_one_line_error(value, match):
    with pytest.raises(ValueError, match=match) as info:
        Config.from_name("debug", latent_attention={**MLA_DIMS, "o_latent_dim": value})
    assert "\n" not in str(info.value)


def test_o_latent_norm_needs_a_bool_and_the_latent():
    with pytest.raises(ValueError, match="o_latent_norm must be true or false"):
        Config.from_name("debug", latent_attention={**MLA_DIMS, "o_latent_dim": 8, "o_latent_norm": "yes"})
    with pytest.raises(ValueError, match="o_latent_norm needs latent_attention.o_latent_dim"):
        Config.from_name("debug", latent_attention={**MLA_DIMS, "o_latent_norm": True})
    assert Config.from_name("debug", latent_attention={**MLA_DIMS, "o_latent_dim": None}).mla.o_latent_dim is None


def test_lora_projection_targets_the_output_latent_maps():
    model = model_for("lora-q-norm-sequential")
    apply_lora(model, LoRASpec(r=2, query=False, value=False, projection=True))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "transformer.h.0.attn.o_a_proj.lora_A" in names and "transformer.h.0.attn.o_b_proj.lora_B" in names


def test_hf_export_names_mla_o_as_unsupported():
    from litgpt.scripts.convert_lit_checkpoint import check_convertible

    config = Config.from_name("debug", latent_attention={**MLA_DIMS, "o_latent_dim": 16})
    with pytest.raises(ValueError, match=r"no equivalent of .*latent_attention.o_latent_dim \(MLA-o\)"):
        check_convertible(config, "DeepseekV3ForCausalLM")
