"""LoRA (litgpt/lora.py): what trains, where the updates land, merging, LoRA state dicts, and decoding fine-tuned
models (folded and unfolded) against their full forward."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from litgpt import GPT, Config
from litgpt.fold import fold_for_decode
from litgpt.generate.base import SamplingParams
from litgpt.generate.session import DecodeSession
from litgpt.lora import (
    LoRALinear,
    LoRASpec,
    apply_lora,
    has_unmerged_lora,
    is_lora,
    load_base_state_dict,
    load_lora_state_dict,
    lora_modules,
    lora_parameters,
    lora_state_dict,
    mark_only_lora_as_trainable,
    merge_lora,
)
from test_fold import decode_logits
from test_model import MLA_DIMS, randomize

LLAMA = dict(parallel_residual=False, norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP", intermediate_size=96,
             bias=False, rotary_percentage=1.0)
VARIANTS = {
    "mha": dict(),
    "gqa": dict(n_query_groups=2),
    "mqa": dict(n_query_groups=1),
    "gqa-llama": dict(n_query_groups=2, **LLAMA),
    "mla": dict(latent_attention={**MLA_DIMS, "q_lora_rank": None}),
    "mla-qlora": dict(latent_attention=MLA_DIMS),
    "mla-qlora-llama": dict(latent_attention=MLA_DIMS, **LLAMA),
}
ALL = dict(query=True, key=True, value=True, projection=True, mlp=True, head=True)
R = 3


def make(variant: str, dtype: torch.dtype = torch.float32) -> GPT:
    torch.manual_seed(0)
    config = Config.from_name("debug", block_size=64, vocab_size=100, padding_multiple=64, **VARIANTS[variant])
    return randomize(GPT(config)).to(dtype).eval()


def make_lora(variant: str, dtype: torch.dtype = torch.float32, **flags: bool) -> tuple[GPT, GPT]:
    """(the plain model, a LoRA copy with random non-zero A and B on the flagged targets)."""
    base = make(variant, dtype)
    model = copy.deepcopy(base)
    apply_lora(model, LoRASpec(r=R, alpha=6, dropout=0.0, **(flags or ALL)))
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.normal_(0.0, 0.3)
    return base, model


# ---------------------------------------------------------------------------------------------- the spec
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(r=0), r"LoRA r \(lora_r\) must be a positive integer, got 0; use e.g. 8"),
        (dict(r=2.5), r"lora_r\) must be a positive integer"),
        (dict(alpha=0), r"LoRA alpha \(lora_alpha\) must be a positive number, got 0"),
        (dict(dropout=1.0), r"LoRA dropout \(lora_dropout\) must be in \[0, 1\), got 1.0"),
        (dict(query=False, value=False), r"LoRA has no target: set at least one of lora_query, lora_key, .* to true"),
        (dict(mlp="yes"), r"lora_mlp must be true or false, got 'yes'"),
    ],
)
def test_spec_errors_name_the_field_and_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message) as e:
        LoRASpec(**kwargs)
    assert "\n" not in str(e.value)


def test_spec_hyperparameters_round_trip():
    spec = LoRASpec(r=4, alpha=8, dropout=0.1, key=True, head=True)
    hparams = spec.hyperparameters()
    assert hparams["lora_r"] == 4 and hparams["lora_head"] is True and len(hparams) == 9
    assert LoRASpec.from_hyperparameters({**hparams, "checkpoint_dir": "x"}) == spec
    with pytest.raises(ValueError, match=r"unknown LoRA hyperparameters \['lora_rank'\]"):
        LoRASpec.from_hyperparameters({"lora_rank": 4})


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_only_lora_parameters_train(variant):
    base = make(variant)
    model = copy.deepcopy(base).train()
    apply_lora(model, LoRASpec(r=R, **ALL))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if n.endswith((".lora_A", ".lora_B"))} and trainable
    assert len(lora_parameters(model)) == len(trainable)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)  # all of them: the frozen ones must get no grad
    idx = torch.randint(0, 100, (2, 12))
    targets = idx.roll(-1, dims=1)
    targets[:, :4] = -100  # a prompt: no weight
    for _ in range(3):
        optimizer.zero_grad()
        model(idx, targets=targets).backward()
        optimizer.step()
    after = model.state_dict()
    for key, value in before.items():
        if key.endswith((".lora_A", ".lora_B")):
            assert not torch.equal(after[key], value), f"{key} did not train"
        else:
            assert torch.equal(after[key], value), f"{key} changed"
    assert set(base.state_dict()) == {k for k in after if not k.endswith((".lora_A", ".lora_B"))}


def test_apply_twice_and_mark_only_lora():
    model = make("mha")
    apply_lora(model, LoRASpec())
    with pytest.raises(ValueError, match="has LoRA layers already"):
        apply_lora(model, LoRASpec())
    for p in model.parameters():
        p.requires_grad_(True)
    mark_only_lora_as_trainable(model)
    assert all(p.requires_grad == n.endswith(("lora_A", "lora_B")) for n, p in model.named_parameters())


def test_lora_layers_take_the_models_mode():
    model = make("mla")  # eval mode
    apply_lora(model, LoRASpec(dropout=0.5, **ALL))
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.normal_()
        idx = torch.randint(0, 100, (1, 8))
        torch.testing.assert_close(model(idx), model(idx), rtol=0, atol=0)  # no dropout in eval mode
        model.train()
        assert not torch.equal(model(idx), model(idx))  # dropout on the LoRA branch's input in training


def test_a_fresh_lora_model_computes_the_base_model():
    """B starts at zero (A kaiming-uniform): the update starts at zero, with dropout active or not."""
    base = make("mla-qlora")
    model = copy.deepcopy(base)
    apply_lora(model, LoRASpec(dropout=0.5, **ALL))
    layer = model.transformer.h[0].attn.kv_b_proj
    assert torch.all(layer.lora_B == 0) and layer.lora_A.abs().max() > 0
    idx = torch.randint(0, 100, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(model.train()(idx), base(idx), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- where updates land
def _deltas(base: GPT, merged: GPT) -> dict[str, torch.Tensor]:
    plain = base.state_dict()
    return {k: v - plain[k] for k, v in merged.state_dict().items() if not torch.equal(v, plain[k])}


def _rows(spans: list[tuple[int, int]], n: int) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    for a, b in spans:
        mask[a:b] = True
    return mask


def _check_delta(delta: torch.Tensor, rows: torch.Tensor) -> None:
    assert torch.linalg.matrix_rank(delta.double()) <= R
    assert torch.all(delta[~rows] == 0), "an update outside the enabled rows"
    assert torch.all(delta[rows].abs().sum(1) > 0), "an enabled row without an update"


@pytest.mark.parametrize("flag", ["query", "key", "value", "projection", "mlp", "head"])
@pytest.mark.parametrize("variant", ["gqa", "gqa-llama"])
def test_updates_land_on_the_flagged_rows_mha(variant, flag):
    base, model = make_lora(variant, torch.float64, **{f: f == flag for f in ALL})
    merge_lora(model)
    deltas = _deltas(base, model)
    c = model.config
    q, kv = c.n_head * c.head_size, c.n_query_groups * c.head_size
    blocks = {"query": (0, q), "key": (q, q + kv), "value": (q + kv, q + 2 * kv)}
    mlp = ["fc_1", "fc_2", "proj"] if "llama" in variant else ["fc", "proj"]
    expected = {
        "query": ["attn.qkv"], "key": ["attn.qkv"], "value": ["attn.qkv"], "projection": ["attn.proj"],
        "mlp": [f"mlp.{n}" for n in mlp], "head": [],
    }[flag]
    keys = {f"transformer.h.{i}.{m}.weight" for i in range(c.n_layer) for m in expected}
    assert set(deltas) == (keys or {"lm_head.weight"})
    for key, delta in deltas.items():
        rows = _rows([blocks[flag]], delta.size(0)) if flag in blocks else torch.ones(delta.size(0), dtype=torch.bool)
        _check_delta(delta, rows)


@pytest.mark.parametrize("flags", [("query",), ("key",), ("value",), ("key", "value"), ("projection",)])
@pytest.mark.parametrize("variant", ["mla", "mla-qlora"])
def test_updates_land_on_the_flagged_rows_mla(variant, flags):
    base, model = make_lora(variant, torch.float64, **{f: f in flags for f in ALL})
    merge_lora(model)
    deltas = _deltas(base, model)
    c, d = model.config, model.config.mla
    per_head = d.qk_nope_head_dim + d.v_head_dim
    kv_b_rows = []
    if "key" in flags:
        kv_b_rows += [(h * per_head, h * per_head + d.qk_nope_head_dim) for h in range(c.n_head)]
    if "value" in flags:
        kv_b_rows += [(h * per_head + d.qk_nope_head_dim, (h + 1) * per_head) for h in range(c.n_head)]
    modules = {"kv_b_proj": kv_b_rows} if kv_b_rows else {}
    if "key" in flags:
        modules["kv_a_proj_with_mqa"] = None
    if "query" in flags:
        modules.update({"q_proj": None} if d.q_lora_rank is None else {"q_a_proj": None, "q_b_proj": None})
    if "projection" in flags:
        modules["proj"] = None
    expected = {f"transformer.h.{i}.attn.{m}.weight" for i in range(c.n_layer) for m in modules}
    assert set(deltas) == expected
    for key, delta in deltas.items():
        spans = modules[key.split(".")[-2]]
        _check_delta(delta, _rows(spans, delta.size(0)) if spans else torch.ones(delta.size(0), dtype=torch.bool))


# ---------------------------------------------------------------------------------------------- merging
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_merged_logits_equal_unmerged(variant):
    base, model = make_lora(variant)
    idx = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        unmerged = model(idx)
        assert (unmerged - base(idx)).abs().max() > 1e-2  # the updates matter
        assert has_unmerged_lora(model)
        merge_lora(model)
        merged = model(idx)
        assert is_lora(model) and not has_unmerged_lora(model)
        merge_lora(model)  # idempotent
        torch.testing.assert_close(model(idx), merged, rtol=0, atol=0)
    # float32 rounding of two summation orders (W + s B A against W x + s B (A x)): 1.2e-5 was seen on one logit
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=5e-5)
    assert list(model.state_dict()) == list(base.state_dict())  # exactly the plain keys, in the plain order
    plain = GPT(base.config)
    plain.load_state_dict(model.state_dict())  # strict: a merged checkpoint loads as a plain model
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(idx), merged, rtol=0, atol=0)


def test_fused_loss_with_a_lora_head_equals_the_unfused_loss_and_gradients():
    _, model = make_lora("mla", torch.float64)
    idx = torch.randint(0, 100, (2, 10))
    targets = idx.roll(-1, 1)
    targets[0, :3] = -100
    model(idx, targets=targets).backward()
    fused = [p.grad.clone() for p in lora_parameters(model)]
    model.zero_grad()
    F.cross_entropy(model(idx).flatten(0, 1), targets.flatten(), ignore_index=-100).backward()
    for got, want in zip(fused, (p.grad for p in lora_parameters(model))):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------- state dicts
def test_lora_state_dict_holds_only_lora_keys_and_reloads(tmp_path):
    base, model = make_lora("mla-qlora")
    sd = lora_state_dict(model)
    assert sd and all(k.endswith((".lora_A", ".lora_B")) for k in sd)
    assert set(sd) == {k for k in model.state_dict() if k.endswith((".lora_A", ".lora_B"))}
    assert sd["transformer.h.0.attn.kv_b_proj.lora_B"].shape[1] == R
    torch.save(sd, tmp_path / "lit_model.pth.lora")
    fresh = copy.deepcopy(base)
    apply_lora(fresh, LoRASpec(r=R, alpha=6, dropout=0.0, **ALL))
    load_lora_state_dict(fresh, torch.load(tmp_path / "lit_model.pth.lora", weights_only=True))
    idx = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(fresh(idx), model(idx), rtol=0, atol=0)


def test_load_lora_state_dict_errors_are_one_line():
    _, model = make_lora("gqa")
    sd = lora_state_dict(model)
    fresh = make("gqa")
    apply_lora(fresh, LoRASpec(r=R, **ALL))
    missing = dict(sd)
    missing.pop("lm_head.lora_A")
    with pytest.raises(ValueError, match=r"missing \['lm_head.lora_A'\] \(1\), unexpected \[\] \(0\); apply_lora"):
        load_lora_state_dict(fresh, missing)
    with pytest.raises(ValueError, match=r"unexpected \['x.lora_A'\] \(1\)"):
        load_lora_state_dict(fresh, {**sd, "x.lora_A": torch.zeros(1)})
    other_r = make("gqa")
    apply_lora(other_r, LoRASpec(r=R + 1, **ALL))
    with pytest.raises(ValueError, match=r"LoRA tensor '.*lora_A' is \(3, .*\) in the state dict but \(4, .*\) in the "
                                         r"model; apply_lora with the r .*lora_r\)"):
        load_lora_state_dict(other_r, sd)
    merge_lora(model)
    with pytest.raises(ValueError, match="is merged into its base weight already"):
        lora_state_dict(model)


def test_a_plain_checkpoint_loads_into_a_lora_model():
    base = make("mla")
    model = GPT(base.config)
    apply_lora(model, LoRASpec(**ALL))
    assert "transformer.h.0.attn.kv_b_proj.weight" in model.state_dict()
    assert not any(".linear." in k for k in model.state_dict())
    load_base_state_dict(model, base.state_dict())
    idx = torch.randint(0, 100, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(idx), base(idx), rtol=0, atol=0)  # B is zero
    result = model.load_state_dict(base.state_dict(), strict=False)
    assert result.unexpected_keys == [] and all(k.endswith(("lora_A", "lora_B")) for k in result.missing_keys)
    with pytest.raises(ValueError, match=r"base tensor 'lm_head.weight' is \(3, 3\) in the state dict"):
        load_base_state_dict(model, {**base.state_dict(), "lm_head.weight": torch.zeros(3, 3)})
    incomplete = base.state_dict()
    incomplete.pop("transformer.wte.weight")
    with pytest.raises(ValueError, match=r"missing \['transformer.wte.weight'\] \(1\)"):
        load_base_state_dict(model, incomplete)


# ---------------------------------------------------------------------------------------------- decoding
def _full_logits(model: GPT, prompt: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """The full forward's logits at the positions `decode_logits` decodes."""
    with torch.no_grad():
        return model(torch.cat((prompt, steps), dim=1))[:, prompt.size(1) :]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_folded_decode_of_a_merged_lora_model_equals_its_full_forward(variant):
    _, model = make_lora(variant, torch.float64)
    prompt, steps = torch.randint(0, 100, (2, 6)), torch.randint(0, 100, (2, 4))
    want = _full_logits(model, prompt, steps)
    merge_lora(model)
    fold_for_decode(model)
    with torch.no_grad():
        got = decode_logits(model, prompt, steps)
    assert (got - want).abs().max().item() < 1e-9 * want.abs().max().item()


@pytest.mark.parametrize("variant", ["gqa", "mla", "mla-qlora-llama"])
def test_folding_an_unmerged_lora_model_raises_and_the_session_merges(variant):
    _, model = make_lora(variant, torch.float64)
    prompt, steps = torch.randint(0, 100, (2, 6)), torch.randint(0, 100, (2, 4))
    want = _full_logits(model, prompt, steps)
    with pytest.raises(ValueError, match=r"fold_for_decode: lm_head and \d+ more layers hold an unmerged LoRA "
                                         r"update .*call litgpt.lora.merge_lora\(model\) first"):
        fold_for_decode(model)
    with pytest.warns(UserWarning, match="DecodeSession: merging the model's LoRA weights"):
        DecodeSession(model, 2, 16, SamplingParams(0.0))
    assert not has_unmerged_lora(model)
    fold_for_decode(model)  # what the session's first decode step does: merged, the model folds
    assert model.transformer.h[0].folded is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a merged model: nothing more to say
        DecodeSession(model, 2, 16, SamplingParams(0.0))
    with torch.no_grad():
        got = decode_logits(model, prompt, steps)  # the session's folded weights
    assert (got - want).abs().max().item() < 1e-9 * want.abs().max().item()


@pytest.mark.parametrize("variant", ["gqa", "mla", "mla-qlora"])
def test_unfolded_cached_decode_of_an_unmerged_lora_model_equals_its_full_forward(variant):
    """One-token cached steps of MLA take the absorbed path (W_UK, W_UV from kv_b_proj): it must see the update."""
    _, model = make_lora(variant, torch.float64)
    prompt, steps = torch.randint(0, 100, (2, 6)), torch.randint(0, 100, (2, 4))
    want = _full_logits(model, prompt, steps)
    with torch.no_grad():
        got = decode_logits(model, prompt, steps)
    assert (got - want).abs().max().item() < 1e-9 * want.abs().max().item()
    attn = model.transformer.h[0].attn
    maps = [w.clone() for m in attn.decode_projections() for w in m if w is not None]
    merge_lora(model)
    for got_map, want_map in zip(maps, [w for m in attn.decode_projections() for w in m if w is not None]):
        torch.testing.assert_close(got_map, want_map, rtol=1e-12, atol=1e-12)


def test_lora_linear_rows_and_repr():
    linear = nn.Linear(4, 6)
    layer = LoRALinear(linear, r=2, alpha=4, dropout=0.0, rows=[(4, 6), (0, 2)])
    assert layer.row_ranges == ((0, 2), (4, 6)) and layer.lora_B.shape == (4, 2)
    assert "rows=0:2, 4:6" in repr(layer)
    assert LoRALinear(linear, 2, 4, 0.0, rows=[(0, 3), (3, 6)]).row_ranges is None  # all rows
    with pytest.raises(ValueError, match="overlap"):
        LoRALinear(linear, 2, 4, 0.0, rows=[(0, 3), (2, 5)])


@pytest.mark.parametrize("rows", [None, [(0, 2), (4, 6)]])
def test_lora_layer_is_the_base_plus_alpha_over_r_times_b_a(rows):
    """By hand, with r=2 and alpha=6 (scale 3): the layer's output is base(x) + 3 B(A(x)) (on its rows), the same
    through `linear_inputs` (the fused loss's form) and `projection`, and merging leaves W + 3 B @ A in the base."""
    torch.manual_seed(0)
    linear = nn.Linear(5, 6, dtype=torch.float64)
    layer = LoRALinear(copy.deepcopy(linear), r=2, alpha=6, dropout=0.0, rows=rows).eval()
    with torch.no_grad():
        layer.lora_A.normal_()
        layer.lora_B.normal_()
    A, B = layer.lora_A.detach(), layer.lora_B.detach()  # (2, 5), (rows, 2)
    full_B = torch.zeros(6, 2, dtype=torch.float64)
    full_B[torch.tensor([0, 1, 4, 5]) if rows else torch.arange(6)] = B
    x = torch.randn(3, 5, dtype=torch.float64)
    expected = linear(x) + 3.0 * (x @ A.T @ full_B.T)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
        x_cat, w_cat, bias = layer.linear_inputs(x)
        torch.testing.assert_close(F.linear(x_cat, w_cat, bias), expected, rtol=1e-12, atol=1e-12)
        weight, bias = layer.projection()
        torch.testing.assert_close(F.linear(x, weight, bias), expected, rtol=1e-12, atol=1e-12)
        layer.merge()
        torch.testing.assert_close(layer.linear.weight, linear.weight + 3.0 * full_B @ A, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    assert LoRASpec(r=2, alpha=6).scaling == 3.0


def test_a_lora_models_update_is_scaled_by_its_specs_alpha_over_r():
    """Through `apply_lora` with the spec's r=3 and alpha=6: the model's logits are those of the plain model with
    W + 2 B @ A in every target, B @ A computed here."""
    base, model = make_lora("mha", torch.float64)
    patched = copy.deepcopy(base)
    targets = dict(patched.named_modules())
    with torch.no_grad():
        for name, m in lora_modules(model):
            targets[name].weight += (6 / R) * m.full_B() @ m.lora_A
        idx = torch.randint(0, 100, (2, 9))
        torch.testing.assert_close(model(idx), patched(idx), rtol=1e-10, atol=1e-10)
        assert (model(idx) - base(idx)).abs().max() > 1e-2  # the updates show


# ------------------------------------------------------------------------------------------------ upstream's names
import litgpt.lora as lora  # noqa: E402
from test_generate import make_checkpoint  # noqa: E402


def test_lora_config_has_upstreams_fields_and_defaults_and_builds_no_lora_by_default():
    config = lora.Config.from_name("debug")
    assert isinstance(config, Config)
    assert {k: getattr(config, k) for k in ("lora_r", "lora_alpha", "lora_dropout", "lora_query", "lora_key",
                                           "lora_value", "lora_projection", "lora_mlp", "lora_head")} == dict(
        lora_r=0, lora_alpha=1, lora_dropout=0.0, lora_query=False, lora_key=False, lora_value=False,
        lora_projection=False, lora_mlp=False, lora_head=False)
    assert config.lora_spec is None and config.base_config() == Config.from_name("debug")
    model = lora.GPT(config)
    assert not is_lora(model) and set(model.state_dict()) == set(GPT.from_name("debug").state_dict())
    with pytest.raises(ValueError, match=r"LoRA r \(lora_r\) must be a positive integer, got 0"):
        lora.Config.from_name("debug", lora_query=True)
    with pytest.raises(TypeError, match="needs a litgpt.lora.Config"):
        lora.GPT(Config.from_name("debug"))


@pytest.mark.parametrize("name, lora_keys", [
    ("debug", ["attn.qkv.lora_A", "attn.qkv.lora_B", "mlp.fc.lora_A", "mlp.fc.lora_B", "mlp.proj.lora_A",
               "mlp.proj.lora_B"]),
    ("debug-mla", ["attn.q_proj.lora_A", "attn.q_proj.lora_B", "attn.kv_b_proj.lora_A", "attn.kv_b_proj.lora_B",
                   "mlp.fc.lora_A", "mlp.fc.lora_B", "mlp.proj.lora_A", "mlp.proj.lora_B"]),
])
def test_lora_gpt_has_lora_layers_on_the_configs_targets_and_loads_a_base_state_dict(name, lora_keys):
    torch.manual_seed(0)
    base = randomize(GPT.from_name(name)).eval()
    model = lora.GPT.from_name(name, lora_r=4, lora_alpha=8, lora_query=True, lora_value=True, lora_mlp=True)
    assert isinstance(model.config, lora.Config) and model.config.lora_spec == LoRASpec(
        r=4, alpha=8, dropout=0.0, query=True, value=True, mlp=True)
    extra = set(model.state_dict()) - set(base.state_dict())
    assert extra == {f"transformer.h.{i}.{k}" for i in range(2) for k in lora_keys}
    assert all(lora.lora_filter(k, None) for k in extra)
    assert not any(lora.lora_filter(k, None) for k in base.state_dict())
    # as upstream: everything trains until mark_only_lora_as_trainable
    assert all(p.requires_grad for p in model.parameters())
    result = model.load_state_dict(base.state_dict(), strict=False)
    assert set(result.missing_keys) == extra and not result.unexpected_keys
    x = torch.randint(0, 100, (1, 8))
    torch.testing.assert_close(model.eval()(x), base(x))  # B starts at zero


def test_mark_only_lora_as_trainable_bias_modes():
    model = lora.GPT.from_name("debug", lora_r=2, lora_query=True, lora_mlp=True)
    names = dict(model.named_parameters())
    lora_names = {n for n in names if lora.lora_filter(n, None)}
    lora_biases = {f"{n}.linear.bias" for n, _ in lora_modules(model)}  # parameter names (not state-dict keys)
    all_biases = {n for n in names if n.endswith(".bias")}
    assert lora_biases and lora_biases < all_biases
    for bias, expected in [("none", lora_names), ("lora_only", lora_names | lora_biases),
                           ("all", lora_names | all_biases)]:
        lora.mark_only_lora_as_trainable(model, bias=bias)
        assert {n for n, p in model.named_parameters() if p.requires_grad} == expected, bias
    with pytest.raises(ValueError, match="bias must be 'none', 'lora_only' or 'all', got 'some'"):
        lora.mark_only_lora_as_trainable(model, bias="some")


def test_merge_lora_weights_keeps_the_output_and_gives_a_plain_state_dict():
    torch.manual_seed(0)
    model = lora.GPT.from_name("debug", lora_r=2, lora_alpha=4, lora_query=True, lora_value=True,
                               lora_projection=True).eval()
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_(0, 0.3)
    x = torch.randint(0, 100, (2, 8))
    before = model(x)
    lora.merge_lora_weights(model)
    assert not has_unmerged_lora(model)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    assert set(model.state_dict()) == set(GPT.from_name("debug").state_dict())


def test_a_lora_fine_tune_through_the_python_api_saves_a_checkpoint_llm_loads(tmp_path):
    """Upstream's pattern: lora.GPT from a lora.Config, the base weights loaded, only LoRA trained, merged, then
    served and saved by `LLM`."""
    from litgpt import LLM

    checkpoint_dir = make_checkpoint(tmp_path)
    base = LLM.load(checkpoint_dir, device="cpu", precision="32-true")
    config = lora.Config.from_file(checkpoint_dir / "model_config.yaml", lora_r=4, lora_alpha=8, lora_query=True,
                                   lora_value=True)
    model = lora.GPT(config)
    model.load_state_dict(torch.load(checkpoint_dir / "lit_model.pth"), strict=False)
    lora.mark_only_lora_as_trainable(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = base.tokenizer.encode("The cat sat on the mat").unsqueeze(0)
    for _ in range(3):
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    llm = LLM(model, base.tokenizer)
    with pytest.raises(ValueError, match="unmerged LoRA layers"):
        llm.save(tmp_path / "tuned")
    lora.merge_lora_weights(model)
    expected = llm.generate("The cat", max_new_tokens=6, temperature=0)
    llm.save(tmp_path / "tuned")
    reloaded = LLM.load(tmp_path / "tuned", device="cpu", precision="32-true")
    assert reloaded.model.config == Config.from_file(checkpoint_dir / "model_config.yaml")
    assert reloaded.generate("The cat", max_new_tokens=6, temperature=0) == expected
