"""litgpt.scripts.convert_to_mla: MHA/GQA/MQA checkpoints to MLA (and MLA to MLA-o), tiny float64 models."""

import json

import pytest
import torch

import litgpt.attention
from litgpt import GPT, LLM, Config
from litgpt.checkpoint import load_checkpoint, save_checkpoint
from litgpt.rope import apply_rope
from litgpt.scripts.convert_to_mla import convert_state_dict, convert_to_mla, head_layout, mla_config
from litgpt.scripts.train_tokenizer import train_tokenizer

from test_model import randomize
from test_tokenizer import ListTexts, make_corpus

VOCAB = 300


def source_model(**kwargs) -> GPT:
    """A debug-shaped source (n_embd 64, 4 heads of 16, 8 rope dims per head) with random weights, float64."""
    torch.manual_seed(0)
    config = Config.from_name("debug", block_size=32, vocab_size=VOCAB, **kwargs)
    return randomize(GPT(config)).to(torch.float64).eval()


def convert(source: GPT, kv_lora_rank: int, qk_rope_head_dim: int, o_latent_dim=None) -> GPT:
    target = mla_config(source.config, kv_lora_rank, qk_rope_head_dim, o_latent_dim)
    state, _ = convert_state_dict(source, target)
    model = GPT(target).to(torch.float64)
    model.load_state_dict(state, strict=True)
    return model.eval()


def latent_entries_without_norm(kv_a, cos, sin, norm_weight, eps, interleave):
    """MLA's cache entries with kv_a_norm skipped: [latent | rope(k_R)]."""
    latent, k_rope = kv_a.split((norm_weight.size(0), kv_a.size(-1) - norm_weight.size(0)), dim=-1)
    return torch.cat((latent, apply_rope(k_rope, cos, sin, interleave)), dim=-1)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


TOKENS = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("interleave", [False, True])
def test_mqa_at_full_rank_with_every_rope_pair_is_exact_up_to_the_latent_norm(monkeypatch, interleave):
    """The exact case: an MQA source (one K group, so one shared rope key loses nothing), every rope pair kept
    (the same rope frequencies) and kv_lora_rank at the stacked [K_nope; V] map's rank (24 = 8 nope + 16 value dims).
    MLA's kv_a_norm (an RMSNorm of the latent, which no linear map undoes) is the one approximation left: with it
    skipped the converted logits equal the source's to float64 round-off; the pre-norm factorisation is exact; with
    the norm in place the logits are only close."""
    source = source_model(n_query_groups=1, rope_interleave=interleave)
    model = convert(source, kv_lora_rank=24, qk_rope_head_dim=8)
    attn, src = model.transformer.h[0].attn, source.transformer.h[0].attn
    nope, _ = head_layout(source.config, list(range(4)), 8)
    w_k, w_v = src.qkv.weight[64:80], src.qkv.weight[80:96]
    stacked = torch.cat((w_k[nope], w_v)).repeat(4, 1)  # every head reads the one group
    assert relative_error(attn.kv_b_proj.weight @ attn.kv_a_proj_with_mqa.weight[:24], stacked) < 1e-12
    with torch.no_grad():
        expected = source(TOKENS)
        loose = relative_error(model(TOKENS), expected)
        monkeypatch.setattr(litgpt.attention, "latent_entries", latent_entries_without_norm)
        assert relative_error(model(TOKENS), expected) < 1e-9
    assert 0 < loose < 1.0


def test_errors_fall_as_kv_lora_rank_grows(monkeypatch):
    """The [K_nope; V] reconstruction error falls strictly with the rank and reaches round-off at the rank bound;
    the logits error (latent norm skipped, to isolate the factorisation) grows as the rank falls."""
    source = source_model(n_query_groups=1)
    ranks = [4, 8, 16, 24]
    kv_errors, logit_errors = [], []
    monkeypatch.setattr(litgpt.attention, "latent_entries", latent_entries_without_norm)
    with torch.no_grad():
        expected = source(TOKENS)
        for rank in ranks:
            target = mla_config(source.config, rank, 8, None)
            state, layers = convert_state_dict(source, target)
            model = GPT(target).to(torch.float64).eval()
            model.load_state_dict(state)
            kv_errors.append(max(row["kv_relative_error"] for row in layers))
            logit_errors.append(relative_error(model(TOKENS), expected))
    assert all(a > b for a, b in zip(kv_errors, kv_errors[1:])), kv_errors
    assert all(a > b for a, b in zip(logit_errors, logit_errors[1:])), logit_errors
    assert kv_errors[-1] < 1e-12 and logit_errors[-1] < 1e-9


def test_gqa_rope_key_is_the_groups_mean():
    """With several K groups the shared rope key can only approximate them: it is their mean."""
    source = source_model(n_query_groups=2)
    model = convert(source, kv_lora_rank=48, qk_rope_head_dim=8)
    w_k = source.transformer.h[0].attn.qkv.weight[64:96].view(2, 16, 64)
    _, rope = head_layout(source.config, list(range(4)), 8)
    assert torch.allclose(model.transformer.h[0].attn.kv_a_proj_with_mqa.weight[48:], w_k[:, rope].mean(0))


def test_full_rank_output_latent_reproduces_the_source():
    """MLA-o from the SVD of proj at o_latent_dim = n_embd, on an MLA source: nothing else changes, so the logits
    match (no latent norm is involved)."""
    torch.manual_seed(0)
    source = randomize(GPT(Config.from_name("debug-mla", block_size=32, vocab_size=VOCAB))).to(torch.float64).eval()
    from litgpt.scripts.convert_to_mla import _add_output_latent

    d = source.config.mla
    state, target, layers = _add_output_latent(source, d.kv_lora_rank, d.qk_rope_head_dim, 64)
    model = GPT(target).to(torch.float64).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        assert relative_error(model(TOKENS), source(TOKENS)) < 1e-5
    assert max(row["o_relative_error"] for row in layers) < 1e-12


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A GQA and an MLA source checkpoint with a tokenizer, float32."""
    root = tmp_path_factory.mktemp("convert_to_mla")
    dirs = {}
    for name, config_name, kwargs in (("gqa", "debug", dict(n_query_groups=2)), ("mla", "debug-mla", {})):
        checkpoint_dir = root / name
        train_tokenizer(ListTexts(texts=make_corpus()), checkpoint_dir, vocab_size=VOCAB, min_frequency=1)
        torch.manual_seed(0)
        save_checkpoint(randomize(GPT(Config.from_name(config_name, vocab_size=VOCAB, **kwargs))), checkpoint_dir)
        dirs[name] = checkpoint_dir
    (root / "calibration.txt").write_text(" ".join(make_corpus(10)))
    dirs["calibration"] = root / "calibration.txt"
    return dirs


def test_converted_checkpoint_loads_and_generates(checkpoints, tmp_path, capsys):
    out_dir = tmp_path / "mla"
    report = convert_to_mla(checkpoints["gqa"], out_dir, kv_lora_rank=16, qk_rope_head_dim=4, o_latent_dim=32,
                            calibration_data=checkpoints["calibration"], calibration_tokens=200)
    assert "total KV bytes per token: 512 -> 160" in capsys.readouterr().out  # 2 layers * (2*2*16 -> 16+4) * 4 B
    assert json.loads((out_dir / "convert_report.json").read_text()) == json.loads(json.dumps(report))
    model = load_checkpoint(out_dir)
    assert model.config.name == "debug-mla" and model.config.mla.o_latent_dim == 32
    assert (out_dir / "tokenizer.json").is_file()
    llm = LLM.load(out_dir, device="cpu", precision="32-true")
    assert isinstance(llm.generate("Once upon", max_new_tokens=3, temperature=0.0), str)
    # MLA -> MLA-o
    convert_to_mla(checkpoints["mla"], tmp_path / "mla-o", kv_lora_rank=64, qk_rope_head_dim=8, o_latent_dim=16)
    assert load_checkpoint(tmp_path / "mla-o").config.mla.o_latent_dim == 16


@pytest.mark.parametrize(
    "source, kwargs, match",
    [
        ("gqa", dict(kv_lora_rank=0, qk_rope_head_dim=8), r"kv_lora_rank must be in 1\.\.48"),
        ("gqa", dict(kv_lora_rank=49, qk_rope_head_dim=8), r"kv_lora_rank must be in 1\.\.48"),
        ("gqa", dict(kv_lora_rank=16, qk_rope_head_dim=3), "qk_rope_head_dim must be even"),
        ("gqa", dict(kv_lora_rank=16, qk_rope_head_dim=10), r"qk_rope_head_dim \(10\) must be <= the source's rope"),
        ("mla", dict(kv_lora_rank=16, qk_rope_head_dim=8), "is MLA already; pass --o_latent_dim"),
        ("missing", dict(kv_lora_rank=16, qk_rope_head_dim=8), "does not exist"),
    ],
)
def test_bad_arguments_are_one_line_errors(checkpoints, tmp_path, source, kwargs, match):
    checkpoint_dir = checkpoints.get(source, tmp_path / "nowhere")
    with pytest.raises((ValueError, FileNotFoundError), match=match) as info:
        convert_to_mla(checkpoint_dir, tmp_path / "out", **kwargs)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_healing_a_converted_checkpoint_with_finetune_full_or_pretrain(tmp_path):
    """The healing path of the README: convert an MHA checkpoint, then train the converted MLA model with
    `finetune_full` or by continuing `litgpt pretrain` from it. Both train the model its model_config.yaml describes
    (the latent cache and all), and the validation loss falls below the one right after the conversion."""
    import yaml

    from litgpt.__main__ import main
    from test_data_sft import make_base_checkpoint, make_records, write_json_dir
    from test_finetune import ft_args, logged

    source = make_base_checkpoint(tmp_path / "mha")  # debug: 4 heads of 8, 2 rope dims a head, random weights
    converted = tmp_path / "mla"
    main(["convert_to_mla", str(source), "--out_dir", str(converted), "--kv_lora_rank", "16", "--qk_rope_head_dim", "2"])
    config = yaml.safe_load((converted / "model_config.yaml").read_text())
    assert config["latent_attention"]["kv_lora_rank"] == 16 and config["latent_attention"]["qk_rope_head_dim"] == 2

    healed = tmp_path / "healed-finetune"
    main(ft_args("finetune_full", converted, write_json_dir(tmp_path / "instruct"), healed,
                 **{"train.max_steps": "12", "eval.interval": "6"}))
    val = {step: float(v) for step, v in logged(healed, 0, "val_loss").items()}
    assert sorted(val) == [0, 6, 12] and val[12] < val[0]  # step 0: the converted model as it came out
    assert yaml.safe_load((healed / "final" / "model_config.yaml").read_text()) == config

    text = tmp_path / "text"
    for split, records in (("train", make_records(120)), ("val", make_records(20))):
        (text / split).mkdir(parents=True)
        (text / split / "records.txt").write_text("\n\n".join(" ".join(r.values()) for r in records))
    continued = tmp_path / "healed-pretrain"
    main(["pretrain", "--initial_checkpoint_dir", str(converted), "--tokenizer_dir", str(converted),
          "--out_dir", str(continued), "--precision", "32-true", "--data", "TextFiles",
          "--data.train_data_path", str(text / "train"), "--data.val_data_path", str(text / "val"),
          "--data.cache_dir", str(tmp_path / "cache"), "--data.tokenize_workers", "1",
          "--train.max_steps", "12", "--train.global_batch_size", "4", "--train.micro_batch_size", "2",
          "--train.max_seq_length", "32", "--train.lr_warmup_steps", "2", "--optimizer.lr", "0.01",
          "--eval.interval", "6", "--eval.max_iters", "2", "--eval.initial_validation", "true"])
    val = {step: float(v) for step, v in logged(continued, 0, "val_loss").items()}
    assert sorted(val) == [0, 6, 12] and val[12] < val[0]
    assert yaml.safe_load((continued / "final" / "model_config.yaml").read_text()) == config


def test_the_rope_pairs_that_dominate_the_query_key_products_are_kept(monkeypatch):
    """An MQA source whose rope pairs 0 and 2 carry query and key rows 10x the usual size and pairs 1 and 3 rows
    0.1x: keeping two pairs, the conversion keeps 0 and 2 (every layer), and its logits are much closer to the
    source's than those of the same conversion made to keep 1 and 3 (latent norm skipped, full kv rank: the rope
    pairs are the only loss)."""
    from litgpt.scripts.convert_to_mla import pair_dims

    source = source_model(n_query_groups=1)
    c = source.config  # 4 heads of 16, 8 rope dims per head: pairs (j, j + 4), j = 0..3
    with torch.no_grad():
        for block in source.transformer.h:
            qk = block.attn.qkv.weight[: (c.n_head + 1) * c.head_size].view(c.n_head + 1, c.head_size, c.n_embd)
            for j, (a, b) in enumerate(pair_dims(c.rope_n_elem, c.rope_interleave)):
                qk[:, [a, b]] *= 10.0 if j in (0, 2) else 0.1
    target = mla_config(c, kv_lora_rank=28, qk_rope_head_dim=4, o_latent_dim=None)  # 28: the rank bound

    def converted(stats=None) -> tuple[GPT, list[list[int]]]:
        state, layers = convert_state_dict(source, target, stats)
        model = GPT(target).to(torch.float64).eval()
        model.load_state_dict(state, strict=True)
        return model, [row["kept_rope_pairs"] for row in layers]

    model, kept = converted()
    assert kept == [[0, 2]] * c.n_layer
    # the same conversion told (through calibration statistics) that pairs 1 and 3 matter most
    favour_others = [dict(pair_scores=torch.tensor([0.0, 1.0, 0.0, 1.0]), latent_rms=lambda down, bias: 1.0)] * c.n_layer
    other, other_kept = converted(favour_others)
    assert other_kept == [[1, 3]] * c.n_layer
    monkeypatch.setattr(litgpt.attention, "latent_entries", latent_entries_without_norm)
    with torch.no_grad():
        expected = source(TOKENS)
        error, other_error = relative_error(model(TOKENS), expected), relative_error(other(TOKENS), expected)
    assert error < 0.1 * other_error, (error, other_error)
