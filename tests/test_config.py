"""Config: derived fields, named configs, yaml loading and validation."""

import dataclasses
import warnings

import pytest
import yaml

from litgpt import Config
from litgpt.config import UPSTREAM_UNSUPPORTED_DEFAULTS

# upstream litgpt 0.5.13's values (the fields its pythia configs set or derive)
PYTHIA = {
    "pythia-14m": (512, 6, 128, 4, 32, 512),
    "pythia-31m": (1024, 6, 256, 8, 32, 1024),
    "pythia-70m": (2048, 6, 512, 8, 64, 2048),
    "pythia-160m": (2048, 12, 768, 12, 64, 3072),
    "pythia-410m": (2048, 24, 1024, 16, 64, 4096),
}


@pytest.mark.parametrize("name", sorted(PYTHIA))
def test_pythia_configs_match_upstream(name):
    c = Config.from_name(name)
    assert (c.block_size, c.n_layer, c.n_embd, c.n_head, c.head_size, c.intermediate_size) == PYTHIA[name]
    assert (c.vocab_size, c.padded_vocab_size, c.padding_multiple) == (50254, 50304, 128)
    assert (c.rotary_percentage, c.parallel_residual, c.bias, c.norm_class_name, c.mlp_class_name) == (
        0.25, True, True, "LayerNorm", "GptNeoxMLP")
    assert c.n_query_groups == c.n_head and c.rope_n_elem == c.head_size // 4
    assert c.hf_config == {"org": "EleutherAI", "name": name}
    assert Config.from_name(name + "-gqa").n_query_groups == c.n_head // 4
    assert Config.from_name(name + "-mqa").n_query_groups == 1


def test_latent_attention_true_derives_deepseek_v2_proportions():
    c = Config.from_name("pythia-160m-mla")
    assert c.latent_attention == dict(
        q_lora_rank=None, kv_lora_rank=256, qk_rope_head_dim=32, qk_nope_head_dim=64, v_head_dim=64)
    assert c.rope_n_elem == 32 and c.kv_values_per_token == 288
    assert Config(n_embd=64, n_head=4, latent_attention=False).latent_attention is None


def test_yaml_round_trip(tmp_path):
    c = Config.from_name("pythia-70m-mla", n_layer=2)
    c.save(tmp_path / "model_config.yaml")
    assert Config.from_file(tmp_path / "model_config.yaml") == c
    assert Config.from_checkpoint(tmp_path) == c
    assert Config.from_file(tmp_path / "model_config.yaml", n_layer=3).n_layer == 3


def test_upstream_fields_at_default_are_accepted(tmp_path):
    data = {**Config.from_name("debug").to_dict(), **UPSTREAM_UNSUPPORTED_DEFAULTS}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    assert Config.from_file(tmp_path / "c.yaml") == Config.from_name("debug")


def _write(tmp_path, **fields):
    data = {**Config.from_name("debug").to_dict(), **fields}
    path = tmp_path / "model_config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"n_expert": 8}, "n_expert=8 needs mlp_class_name 'LLaMAMoE'"),
        ({"post_attention_norm": True}, "'post_attention_norm'"),
        ({"rope_adjustments": {"factor": 2.0}}, r"rope_adjustments: unknown keys \[\] / missing keys \['original"),
        ({"rope_adjustments": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}},
         r"Llama 3 scaling\): unknown keys \[\] / missing keys \['original_max_seq_len'\]"),
        ({"rope_adjustments": {"factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
                               "original_max_seq_len": 8192}}, "0 < low_freq_factor < high_freq_factor"),
        ({"n_embdd": 64}, "unknown config field 'n_embdd'"),
        ({"name": "Gemma-2b"}, "Gemma-specific norms"),
    ],
)
def test_yaml_rejects_what_it_cannot_honour(tmp_path, fields, match):
    with pytest.raises(ValueError, match=match):
        Config.from_file(_write(tmp_path, **fields))


MLA = dict(q_lora_rank=None, kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16)

INVALID = [
    (dict(n_embd=65, n_head=4), "n_embd"),
    (dict(n_head=4, n_query_groups=3), "n_query_groups"),
    (dict(n_layer=0), "n_layer"),
    (dict(block_size=-1), "block_size"),
    (dict(head_size=10, rotary_percentage=0.5), "rope dimension must be even"),
    (dict(rotary_percentage=1.5), "rotary_percentage"),
    (dict(norm_class_name="BatchNorm"), "norm_class_name"),
    (dict(mlp_class_name="GemmaMLP"), "mlp_class_name"),
    (dict(mlp_class_name="LLaMAMLP", intermediate_size=None), "intermediate_size"),
    (dict(gelu_approximate="fast"), "gelu_approximate"),
    (dict(norm_eps=0.0), "norm_eps"),
    (dict(parallel_residual=False, shared_attention_norm=True), "shared_attention_norm"),
    (dict(latent_attention={**MLA, "qk_rope_head_dim": 7}), "qk_rope_head_dim must be even"),
    (dict(latent_attention={**MLA, "kv_lora_rank": 0}), "latent_attention.kv_lora_rank must be a positive"),
    (dict(latent_attention={**MLA, "q_lora_rank": -4}), "latent_attention.q_lora_rank"),
    (dict(latent_attention={**MLA, "rank": 3}), "unknown keys \\['rank'\\]"),
    (dict(latent_attention={k: v for k, v in MLA.items() if k != "v_head_dim"}), "missing keys \\['v_head_dim'\\]"),
    (dict(latent_attention=True, n_query_groups=2), "n_query_groups == n_head"),
    (dict(latent_attention="yes"), "latent_attention must be"),
    (dict(n_head=0), "n_head"),
    (dict(rope_base=0), "rope_base"),
    (dict(latent_attention={**MLA, "qk_nope_head_dim": -1}),
     "latent_attention.qk_nope_head_dim must be a non-negative"),
    (dict(rope_adjustments={"factor": 0.5, "original_max_seq_len": 64, "beta_fast": 32, "beta_slow": 1}),
     "rope_adjustments.factor must be >= 1"),
    (dict(rope_adjustments={"factor": 4, "original_max_seq_len": 64, "beta_fast": 32, "beta_slow": "1"}),
     "rope_adjustments.beta_slow must be a number"),
    (dict(rope_adjustments={"factor": 4, "original_max_seq_len": 64, "beta_fast": 32, "beta_slow": 1,
                            "truncate": 1}), "rope_adjustments.truncate must be true or false"),
    (dict(rope_adjustments=[4.0]), "rope_adjustments must be a dict"),
]


@pytest.mark.parametrize("overrides, match", INVALID)
def test_invalid_configs_name_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        Config.from_name("debug", **overrides)


def test_explicit_padded_vocab_clamps_vocab_size_like_upstream():
    assert Config.from_name("debug", padded_vocab_size=10, vocab_size=1024).vocab_size == 10


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown model name 'pythia-7b'.*Similar: pythia-14m"):
        Config.from_name("pythia-7b")
    assert {"pythia-160m", "pythia-160m-mla", "debug-gqa"} <= set(Config.names())


# ---------------------------------------------------------------------------------------------------- MLA and rope
def test_rotary_percentage_is_refused_for_latent_attention():
    message = ("rotary_percentage does not apply to latent attention \\(got 0.5\\); set the rope width with "
               "latent_attention.qk_rope_head_dim")
    with pytest.raises(ValueError, match=message):
        Config(n_embd=64, n_head=4, latent_attention=MLA, rotary_percentage=0.5)
    with pytest.raises(ValueError, match=message):
        Config.from_name("debug-mla", rotary_percentage=0.5)  # set explicitly: refused
    with pytest.raises(ValueError, match=message):
        Config.from_name("debug", latent_attention=True, rotary_percentage=0.5)
    # the default, and upstream litgpt's 1.0 (a fully rotated rope key), are accepted; the rope width is MLA's
    for rotary in (0.25, 1.0):
        c = Config(n_embd=64, n_head=4, latent_attention=MLA, rotary_percentage=rotary)
        assert c.rope_n_elem == MLA["qk_rope_head_dim"] == 8


def test_mla_variants_take_the_default_rotary_percentage():
    assert Config.from_name("debug").rotary_percentage == 0.5  # the base keeps its partial rope
    for name in ("debug-mla", "pythia-14m-mla", "pythia-160m-mla"):
        assert Config.from_name(name).rotary_percentage == 0.25
    # a named MHA config turned into MLA by an override does not carry its rotary_percentage over
    c = Config.from_name("debug", latent_attention=True)
    assert (c.rotary_percentage, c.rope_n_elem) == (0.25, 8)  # qk_rope_head_dim = head_size 16 // 2
    mla = Config.from_name("debug-mla")
    mla.name = "debug"
    assert c == mla


def test_upstream_and_older_mla_files_load(tmp_path):
    import os

    upstream = Config.from_file(os.path.join(os.path.dirname(__file__), "data", "upstream", "mla", "model_config.yaml"))
    assert upstream.rotary_percentage == 1.0 and upstream.mla is not None
    # written before MLA configs refused other values: loaded with the default and a warning naming the file
    path = tmp_path / "model_config.yaml"
    path.write_text(yaml.safe_dump({**Config.from_name("debug-mla").to_dict(), "rotary_percentage": 0.5}))
    with pytest.warns(UserWarning, match=f"{path}: rotary_percentage=0.5 has no effect with latent attention"):
        old = Config.from_file(path)
    assert old == Config.from_name("debug-mla")
    with pytest.raises(ValueError, match="rotary_percentage does not apply to latent attention"):
        Config.from_file(path, rotary_percentage=0.75)  # an explicit override is checked



# ---------------------------------------------------------------------------------------------------- MoE and YaRN
YARN = dict(factor=40.0, original_max_seq_len=4096, beta_fast=32, beta_slow=1, mscale=0.707, mscale_all_dim=0.707)


def test_moe_and_yarn_round_trip_and_resolve_their_defaults(tmp_path):
    c = Config.from_name("debug-moe-mla", rope_adjustments={k: YARN[k] for k in list(YARN)[:4]},
                         latent_attention={**MLA, "qk_nope_head_dim": 0})
    assert c.rope_adjustments == {**{k: YARN[k] for k in list(YARN)[:4]}, "mscale": 1.0, "mscale_all_dim": 0.0,
                                  "truncate": True}
    assert (c.moe_scoring, c.n_topk_scores_per_group, c.moe_layers) == ("sigmoid", 2, [1])
    c.save(tmp_path / "model_config.yaml")
    assert Config.from_file(tmp_path / "model_config.yaml") == c
    assert Config.from_name("debug-moe", rope_adjustments=YARN).rope_adjustments["mscale"] == 0.707


def test_upstream_moe_fields_keep_upstream_meaning():
    """Upstream litgpt routes grouped experts with sigmoid + bias (DeepSeek-V3) and the others with a softmax over
    the top-k logits (Mixtral); moe_intermediate_size falls back to intermediate_size."""
    upstream = dict(mlp_class_name="LLaMAMoE", intermediate_size=64, n_expert=8, n_expert_per_token=2)
    mixtral = Config.from_dict({**Config.from_name("debug").to_dict(), **upstream, "moe_scoring": None,
                                "moe_intermediate_size": None})
    assert (mixtral.moe_scoring, mixtral.moe_intermediate_size, mixtral.moe_layers) == ("topk_softmax", 64, [0, 1])
    grouped = Config.from_name("debug", **upstream, n_expert_groups=4, n_topk_groups=2, n_topk_scores_per_group=2,
                               first_k_dense_replace=1, n_shared_expert=1, norm_topk_prob=True)
    assert (grouped.moe_scoring, grouped.moe_layers) == ("sigmoid", [1])
    assert Config.from_name("debug", **upstream, moe_layer_freq=2, n_layer=5).moe_layers == [0, 2, 4]


def test_saved_dense_config_has_only_upstream_fields_and_moe_keeps_its_own(tmp_path):
    """A dense model's model_config.yaml holds no field that upstream litgpt lacks (it rejects unknown keys: our
    `moe_scoring: null` made upstream 0.5.13's `litgpt generate` fail on an H200, 2026-12-01); an MoE config keeps them."""
    import yaml

    from litgpt.config import LITGPT_ONLY_FIELDS

    for name in ("pythia-160m", "pythia-160m-mla", "pythia-70m-moe"):
        config = Config.from_name(name)
        config.save(tmp_path / f"{name}.yaml")
        saved = yaml.safe_load((tmp_path / f"{name}.yaml").read_text())
        if config.n_expert == 0:
            assert not set(saved) & set(LITGPT_ONLY_FIELDS), saved
        assert Config.from_file(tmp_path / f"{name}.yaml") == config
    moe = yaml.safe_load((tmp_path / "pythia-70m-moe.yaml").read_text())
    assert moe["moe_scoring"] == Config.from_name("pythia-70m-moe").moe_scoring


def test_mla_o_variants_are_the_mla_shapes_with_an_output_latent_of_half_and_a_quarter_of_n_embd():
    for base in ("pythia-70m", "pythia-160m", "debug", "pythia-70m-moe"):
        mla = Config.from_name(f"{base}-mla")
        for divisor in (2, 4):
            mla_o = Config.from_name(f"{base}-mla-o{divisor}")
            assert mla_o.latent_attention == {**mla.latent_attention, "o_latent_dim": mla.n_embd // divisor}
            assert dataclasses.replace(mla_o, name=mla.name, latent_attention=mla.latent_attention) == mla


def test_an_implausible_block_size_is_refused_with_what_it_would_allocate():
    with pytest.raises(ValueError) as info:
        Config(block_size=10**9)
    assert str(info.value) == (
        "block_size 1,000,000,000 is past any model's context (at most 16,777,216 here): the rope cache alone would "
        "allocate 256.0 GB at model build; set block_size to the context the model trains or generates with (e.g. "
        "4096)")
    assert Config(block_size=2**24).block_size == 2**24  # the bound itself is accepted (nothing is allocated here)


def test_an_mla_latent_that_outgrows_mha_warns_with_the_cache_bytes_and_the_fix():
    latent = dict(q_lora_rank=None, kv_lora_rank=512, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16)
    with pytest.warns(UserWarning) as record:
        Config.from_name("debug-mla", latent_attention=latent)  # n_embd 64: 8x
    assert [str(w.message) for w in record] == [
        "latent_attention.kv_lora_rank=512 is implausible for n_embd=64: the MLA KV cache takes 2,080 bytes per token "
        "(bf16, 2 layers) against 512 for MHA (4.06x), and a latent wider than n_embd holds no more than n_embd values "
        "would; set kv_lora_rank so that kv_lora_rank + qk_rope_head_dim stays well below MHA's 128 values a layer and "
        "kv_lora_rank <= n_embd, e.g. 64 (4 x head_size, as DeepSeek-V2)"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in Config.names():  # every shipped shape is plausible
            Config.from_name(name)
        Config.from_name("debug-mla", latent_attention={**latent, "kv_lora_rank": 64})  # = n_embd: fine



def test_saved_yaml_writes_our_fields_only_where_upstream_would_read_them_otherwise(tmp_path):
    """moe_scoring is left out where upstream litgpt derives the same (grouped experts: sigmoid, else top-k softmax)
    and written where it differs (DeepSeek-V2's softmax); tie_embeddings only when true."""
    import yaml

    upstream = dict(mlp_class_name="LLaMAMoE", intermediate_size=64, n_expert=8, n_expert_per_token=2)
    cases = [
        (Config.from_name("debug", **upstream), {}),  # topk_softmax, as upstream derives without groups
        (Config.from_name("debug", **upstream, n_expert_groups=4, n_topk_groups=2), {}),  # sigmoid, as upstream
        (Config.from_name("debug", **upstream, moe_scoring="softmax"), {"moe_scoring": "softmax"}),
        (Config.from_name("debug", **upstream, moe_scoring="sigmoid"), {"moe_scoring": "sigmoid"}),
        (Config.from_name("debug", **upstream, moe_layer_freq=2), {"moe_layer_freq": 2}),
        (Config.from_name("debug", tie_embeddings=True), {"tie_embeddings": True}),
        (Config.from_name("debug"), {}),
    ]
    from litgpt.config import LITGPT_ONLY_FIELDS

    for i, (config, ours) in enumerate(cases):
        config.save(tmp_path / f"{i}.yaml")
        saved = yaml.safe_load((tmp_path / f"{i}.yaml").read_text())
        assert {k: v for k, v in saved.items() if k in LITGPT_ONLY_FIELDS} == ours, i
        assert Config.from_file(tmp_path / f"{i}.yaml") == config


def test_yarn_yaml_warns_once_how_upstream_litgpt_differs(tmp_path, monkeypatch):
    """Loading a model_config.yaml with YaRN rope_adjustments warns once per process, naming the difference (upstream
    litgpt's ramp keeps the slow frequencies and divides the fast ones); Llama 3 scaling and plain rope do not warn."""
    import litgpt.config as config_module

    monkeypatch.setattr(config_module, "_warned_upstream_yarn", False)
    yarn = dict(factor=4.0, original_max_seq_len=32, beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0)
    llama3 = dict(factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=32)
    plain_path = _write(tmp_path, rope_adjustments=llama3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Config.from_file(plain_path)
        Config.from_file(_write(tmp_path, rope_adjustments=None))
        assert not caught
        yarn_path = _write(tmp_path, rope_adjustments=yarn)
        first = Config.from_file(yarn_path)
        second = Config.from_file(yarn_path)
    assert first == second and first.rope_adjustments["beta_fast"] == 32.0
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith(f"{yarn_path}: rope_adjustments are YaRN's; upstream litgpt computes YaRN differently")
    assert "keeps the slow rope frequencies and divides the fast ones by `factor`" in message
