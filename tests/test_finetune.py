"""`litgpt finetune_full` and `litgpt finetune_lora` through the real CLI on tiny models and data made here: exact
resume after a kill, the saved LoRA and merged weights, the prompt style that generation then uses, the config_hub
yamls, and one-line errors for bad inputs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from litgpt.__main__ import commands, load_command, main
from litgpt.api import LLM
from litgpt.checkpoint import load_checkpoint
from litgpt.lora import LoRASpec, apply_lora, load_lora_state_dict, lora_filter
from litgpt.tokenizer import Tokenizer
from test_data_sft import make_base_checkpoint, make_records, write_json_dir
from test_pretrain import kill_after_first_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_base_checkpoint(tmp_path_factory.mktemp("base") / "mha")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_json_dir(tmp_path_factory.mktemp("data") / "instruct", 64, 16)


def ft_args(command: str, base: Path, data_dir: Path, out_dir: Path, **extra: str) -> list[str]:
    args = {
        "out_dir": str(out_dir),
        "precision": "32-true",
        "data": "JSON",
        "data.json_path": str(data_dir),
        "data.prompt_style": "plain",
        "data.mask_prompt": "true",
        "train.global_batch_size": "4",
        "train.micro_batch_size": "2",
        "train.lr_warmup_steps": "2",
        "train.max_steps": "6",
        "train.save_interval": "3",
        "eval.interval": "1000",
        "eval.max_iters": "2",
        "optimizer.lr": "0.01",
        "seed": "7",
    }
    args.update(extra)
    return [command, str(base)] + [f"--{k}={v}" for k, v in args.items()]


def logged(out_dir: Path, version: int, key: str) -> dict[int, str]:
    with open(out_dir / "logs" / "csv" / f"version_{version}" / "metrics.csv") as f:
        return {int(r["step"]): r[key] for r in csv.DictReader(f) if r.get(key)}


def model_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


# ---------------------------------------------------------------------------------------------------- full
def test_full_finetune_resumes_exactly_after_a_kill(tmp_path, base, data_dir, capsys):
    """A run killed (SIGKILL) after a checkpoint and rerun ends with the weights of the uninterrupted run, bitwise.
    The killed run is a process of its own with this process's thread count; the others run here."""
    extra = {"train.max_steps": "120", "train.epochs": "null", "train.save_interval": "10", "train.log_interval": "5"}
    main(ft_args("finetune_full", base, data_dir, tmp_path / "ref", **extra))

    out = tmp_path / "killed"
    resumed_from = kill_after_first_checkpoint(ft_args("finetune_full", base, data_dir, out, **extra), out,
                                               threads=torch.get_num_threads())

    capsys.readouterr()
    main(ft_args("finetune_full", base, data_dir, out, **extra))
    assert f"resuming from {out}/step-{resumed_from:08d}/lit_model.pth" in capsys.readouterr().out
    after = logged(out, 1, "loss")
    assert min(after) == resumed_from + 5 and max(after) == 120
    assert after == {s: v for s, v in logged(tmp_path / "ref", 0, "loss").items() if s > resumed_from}  # as text
    expected, got = model_state(tmp_path / "ref" / "final" / "lit_model.pth"), model_state(out / "final" / "lit_model.pth")
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)  # bitwise


def test_full_finetune_checkpoint_generates_with_its_prompt_style(tmp_path, base, data_dir, capsys):
    out = tmp_path / "full"
    main(ft_args("finetune_full", base, data_dir, out, **{"train.max_steps": "12", "eval.interval": "6"}))
    printed = capsys.readouterr().out
    assert "full fine-tuning debug from" in printed and "step 0: val loss" in printed and "tok/s" in printed
    for name in ("step-00000003", "final"):
        assert sorted(p.name for p in (out / name).iterdir()) == [
            "hyperparameters.yaml", "lit_model.pth", "model_config.yaml", "prompt_style.yaml", "tokenizer.json",
            "tokenizer_config.json"]
    assert yaml.safe_load((out / "final" / "prompt_style.yaml").read_text()) == {"name": "plain"}
    hparams = yaml.safe_load((out / "final" / "hyperparameters.yaml").read_text())
    assert hparams["checkpoint_dir"] == str(base) and hparams["data"]["class_path"] == "litgpt.data.json_data.JSON"
    val = {step: float(v) for step, v in logged(out, 0, "val_loss").items()}
    assert sorted(val) == [0, 6, 12] and val[12] < val[6] < val[0]  # validated before, between and after

    llm = LLM.load(out / "final", device="cpu")
    assert llm.prompt_style.name == "plain"
    prompt = "Define the word cat."
    assert llm.encode_prompts([prompt])[0].tolist() == Tokenizer(base).encode(prompt + "\n").tolist()
    main(["generate", str(out / "final"), "--prompt", prompt, "--temperature", "0", "--max_new_tokens", "4"])
    assert capsys.readouterr().out.startswith(prompt)


# ---------------------------------------------------------------------------------------------------- LoRA
LORA_TARGETS = {"lora_r": "4", "lora_key": "true", "lora_projection": "true", "lora_mlp": "true", "lora_head": "true"}


@pytest.fixture(scope="module", params=["debug", "debug-mla"])
def lora_run(request, tmp_path_factory, data_dir) -> tuple[Path, Path]:
    """(base, out_dir) of a finished 6-step LoRA run on every target, MHA and MLA."""
    root = tmp_path_factory.mktemp(f"lora-{request.param}")
    model_base = make_base_checkpoint(root / "base", request.param)
    out = root / "out"
    main(ft_args("finetune_lora", model_base, data_dir, out, **LORA_TARGETS))
    return model_base, out


def test_lora_writes_only_lora_weights_and_a_merged_model_that_generate_loads(lora_run, capsys):
    base, out = lora_run
    assert sorted(p.name for p in (out / "step-00000003").iterdir()) == [
        "hyperparameters.yaml", "lit_model.pth.lora", "model_config.yaml", "prompt_style.yaml", "tokenizer.json",
        "tokenizer_config.json"]
    final = out / "final"
    assert {"lit_model.pth", "lit_model.pth.lora", "prompt_style.yaml"} <= {p.name for p in final.iterdir()}
    state = torch.load(final / "lit_model.pth.lora", weights_only=True)
    assert state["step_count"] == 6 and all(lora_filter(k) for k in state["model"])
    hparams = yaml.safe_load((final / "hyperparameters.yaml").read_text())
    spec = LoRASpec.from_hyperparameters(hparams)
    assert (spec.r, spec.key, spec.head) == (4, True, True) and hparams["checkpoint_dir"] == str(base)

    lora_model = load_checkpoint(base)
    apply_lora(lora_model, spec)
    load_lora_state_dict(lora_model, state["model"])
    assert any(t.abs().sum() > 0 for k, t in state["model"].items() if k.endswith("lora_B"))  # B trained off zero
    lora_model.eval()
    merged = LLM.load(final, device="cpu", precision="32-true")
    assert merged.prompt_style.name == "plain"
    ids = torch.tensor([make_ids(base)])
    with torch.no_grad():
        torch.testing.assert_close(merged.model(ids), lora_model(ids), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(load_checkpoint(base)(ids), lora_model(ids), atol=1e-4)  # the fine-tune did change it

    main(["generate", str(final), "--prompt", "Define the word dog.", "--temperature", "0", "--max_new_tokens", "4"])
    assert capsys.readouterr().out.startswith("Define the word dog.")


def make_ids(base: Path) -> list[int]:
    record = make_records(1)[0]
    return Tokenizer(base).encode(record["instruction"] + "\n" + record["output"]).tolist()


def test_lora_resume_is_exact(tmp_path, base, data_dir):
    """Dropout, the LoRA weights, the optimizer and the data position all continue from the checkpoint."""
    extra = {**LORA_TARGETS, "lora_dropout": "0.3"}
    main(ft_args("finetune_lora", base, data_dir, tmp_path / "ref", **extra))
    out = tmp_path / "resumed"
    main(ft_args("finetune_lora", base, data_dir, out, **extra))
    shutil.rmtree(out / "final")  # as if killed after step 3 was saved
    main(ft_args("finetune_lora", base, data_dir, out, **extra))
    expected = model_state(tmp_path / "ref" / "final" / "lit_model.pth.lora")
    got = model_state(out / "final" / "lit_model.pth.lora")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert logged(out, 1, "loss") == {s: v for s, v in logged(tmp_path / "ref", 0, "loss").items() if s > 3}


def test_qlora_trains_lora_over_quantized_base_weights(tmp_path, data_dir, monkeypatch, capsys):
    """`--quantize bnb.nf4` through the real fine-tune on bitsandbytes' CPU backend, with the CUDA-only checks (Fabric's
    and `check_quantize`'s) lifted: the frozen linears are 4-bit during training, only LoRA is saved, the merged
    model loads. No validation before training: bitsandbytes' CPU backend repacks 4-bit weights for inference in
    eval mode, and its repacked layers cannot train afterwards (not so on CUDA)."""
    bnb = pytest.importorskip("bitsandbytes")
    from lightning.fabric import connector
    from lightning.fabric.plugins import BitsandbytesPrecision

    import litgpt.finetune.base
    import litgpt.quantize

    check = connector._Connector._check_and_init_precision
    monkeypatch.setattr(connector._Connector, "_check_and_init_precision", lambda self: self._precision_instance
                        if isinstance(self._precision_instance, BitsandbytesPrecision) else check(self))
    check_quantize = litgpt.quantize.check_quantize
    monkeypatch.setattr(litgpt.quantize, "check_quantize", lambda q, device, precision: check_quantize(q, "cuda", precision))
    quantized = []
    run = litgpt.finetune.base.run

    floating = {}

    def spy(fabric, model, *args, **kwargs):
        quantized.extend(n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit))
        floating.update((n, p.dtype) for n, p in model.named_parameters() if p.is_floating_point())
        return run(fabric, model, *args, **kwargs)

    monkeypatch.setattr(litgpt.finetune.base, "run", spy)
    base = make_base_checkpoint(tmp_path / "base", n_embd=64)  # the CPU kernels want inputs of 64 or more
    out = tmp_path / "qlora"
    main(ft_args("finetune_lora", base, data_dir, out, quantize="bnb.nf4", precision="bf16-true",
                 **{"eval.initial_validation": "false"}))
    assert "QLoRA fine-tuning debug" in capsys.readouterr().out
    assert "_forward_module.transformer.h.0.attn.qkv.linear" in quantized and len(quantized) == 5  # qkv, proj, mlp, head
    # what the plugin does not quantize computes in its dtype (bf16-true): embeddings, norms, LoRA's A and B
    assert "_forward_module.transformer.wte.weight" in floating and "_forward_module.transformer.h.0.attn.qkv.lora_A" \
        in floating and set(floating.values()) == {torch.bfloat16}, floating
    state = torch.load(out / "final" / "lit_model.pth.lora", weights_only=True)
    assert state["step_count"] == 6 and sorted(state["model"]) == ["transformer.h.0.attn.qkv.lora_A",
                                                                    "transformer.h.0.attn.qkv.lora_B"]
    # the merged checkpoint holds the base's weights, its qkv weight plus alpha/r B A (B left its zero start)
    merged = torch.load(out / "final" / "lit_model.pth", weights_only=True)
    merged = merged.get("model", merged)
    base_weights = torch.load(base / "lit_model.pth", weights_only=True)
    base_weights = base_weights.get("model", base_weights)
    lora_a, lora_b = (state["model"][f"transformer.h.0.attn.qkv.lora_{m}"].float() for m in "AB")
    hparams = yaml.safe_load((out / "final" / "hyperparameters.yaml").read_text())
    assert (hparams["lora_query"], hparams["lora_key"], hparams["lora_value"]) == (True, False, True)
    n_embd = lora_a.size(1)
    delta = hparams["lora_alpha"] / hparams["lora_r"] * (lora_b @ lora_a)  # (2 n_embd, n_embd): the q and v rows
    update = torch.zeros(3 * n_embd, n_embd)  # qkv's rows are [q heads | k groups | v groups] (MHA: n_embd each)
    update[:n_embd], update[2 * n_embd :] = delta[:n_embd], delta[n_embd:]
    key = "transformer.h.0.attn.qkv.weight"
    assert set(merged) == set(base_weights)
    dtype = merged[key].dtype  # the fine-tune's precision (bf16-true)
    assert all(torch.equal(merged[k], base_weights[k].to(dtype)) for k in merged if k != key)
    expected = base_weights[key].float() + update
    assert update.abs().max() > 0.05, "the fine-tune did not move LoRA's B off zero"
    # the merge in float32, rounded once to bf16 (a relative step of 2**-8): within one step of the exact sum, while
    # leaving the update out would miss it by up to update.abs().max()
    torch.testing.assert_close(merged[key].float(), expected, rtol=2**-8, atol=1e-6)
    assert (merged[key].float() - base_weights[key].to(dtype).float()).abs().max() > 0.5 * update.abs().max()


def test_finetune_is_the_alias_of_finetune_lora():
    table = commands()
    assert load_command(table["finetune"]) is load_command(table["finetune_lora"])


# ---------------------------------------------------------------------------------------------------- bad inputs
def one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_missing_checkpoint_is_one_line(tmp_path, data_dir, capsys):
    for command in ("finetune_full", "finetune_lora"):
        err = one_line_error(capsys, ft_args(command, tmp_path / "nope", data_dir, tmp_path / "out"))
        assert err == (f"litgpt: error: checkpoint directory {str(tmp_path / 'nope')!r} does not exist; point at a "
                       "model to fine-tune, e.g. the final/ directory of a `litgpt pretrain` run")
    (tmp_path / "empty").mkdir()
    err = one_line_error(capsys, ft_args("finetune_full", tmp_path / "empty", data_dir, tmp_path / "out"))
    assert f"checkpoint directory {str(tmp_path / 'empty')!r} has no lit_model.pth" in err


def test_json_without_the_keys_is_one_line(tmp_path, base, capsys):
    bad = write_json_dir(tmp_path / "bad", 8, 4)
    records = json.loads((bad / "train.json").read_text())
    del records[2]["output"]
    (bad / "train.json").write_text(json.dumps(records))
    err = one_line_error(capsys, ft_args("finetune_lora", base, bad, tmp_path / "out"))
    assert err == (f"litgpt: error: {bad / 'train.json'}: record 2 has no 'output' key (each record needs "
                   "instruction and output; input is optional)")


def test_quantize_where_it_cannot_run_is_one_line(tmp_path, base, data_dir, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    err = one_line_error(capsys, ft_args("finetune_lora", base, data_dir, tmp_path / "out", quantize="bnb.nf4"))
    assert err.startswith("litgpt: error: --quantize bnb.nf4 needs ")  # bitsandbytes, or a CUDA GPU
    err = one_line_error(capsys, ft_args("finetune_lora", base, data_dir, tmp_path / "out", quantize="bnb.nf8"))
    assert "--quantize 'bnb.nf8' is not a quantization mode; choose one of bnb.nf4, bnb.nf4-dq" in err
    err = one_line_error(capsys, ft_args("finetune_full", base, data_dir, tmp_path / "out", quantize="bnb.nf4"))
    assert "unrecognized option '--quantize' for `litgpt finetune_full`" in err


def test_other_bad_inputs_are_one_line(tmp_path, base, data_dir, lora_run, capsys):
    args = lambda command, **extra: ft_args(command, base, data_dir, tmp_path / "out", **extra)  # noqa: E731
    assert "train.max_tokens is not supported by fine-tuning" in one_line_error(
        capsys, args("finetune_full", **{"train.max_tokens": "1000"}))
    assert "LoRA r (lora_r) must be a positive integer, got 0" in one_line_error(capsys, args("finetune_lora", lora_r="0"))
    assert "train.max_seq_length (100) exceeds the model's block_size (64)" in one_line_error(
        capsys, args("finetune_full", **{"train.max_seq_length": "100"}))
    run_base, run_out = lora_run
    err = one_line_error(capsys, ft_args("finetune_lora", run_base, data_dir, run_out, **{**LORA_TARGETS, "lora_r": "8"}))
    assert f"cannot resume {run_out / 'final'}: it was trained with other LoRA settings (lora_r: 4 in the " \
           "checkpoint, 8 now)" in err


# ---------------------------------------------------------------------------------------------------- config_hub
HUB = sorted((ROOT / "config_hub" / "finetune").glob("*/*.yaml"))


@pytest.mark.parametrize("path", HUB, ids=[f"{p.parent.name}/{p.name}" for p in HUB])
def test_config_hub_parses(path, capsys):
    command = "finetune_full" if path.stem == "full" else "finetune_lora"
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--config", str(path), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["class_path"] == "litgpt.data.JSON" and printed["data"]["init_args"]["mask_prompt"]
    assert printed["resume"] == "auto" and printed["checkpoint_dir"].endswith("/final")
    assert (printed.get("quantize") is not None) == (path.stem == "qlora")


def test_config_hub_has_every_model_and_mode_and_variants_differ_only_in_paths():
    models = ("pythia-160m", "pythia-160m-gqa", "pythia-160m-mqa", "pythia-160m-mla")
    modes = ("full", "lora", "qlora")
    assert {f"{p.parent.name}/{p.stem}" for p in HUB} == {f"{m}/{mode}" for m in models for mode in modes}
    for mode in modes:
        configs = [yaml.safe_load((ROOT / "config_hub" / "finetune" / m / f"{mode}.yaml").read_text()) for m in models]
        strip = [{k: v for k, v in c.items() if k not in ("checkpoint_dir", "out_dir")} for c in configs]
        assert all(s == strip[0] for s in strip), mode


def test_an_out_dir_that_would_write_over_the_checkpoint_is_refused(tmp_path, base, data_dir, capsys):
    """The checkpoint to fine-tune may not be out_dir, nor a final/ or step-*/ directory in it (the run writes and,
    with --overwrite, deletes those): however the paths are spelled."""
    out = tmp_path / "out"
    shutil.copytree(base, out / "final")
    (tmp_path / "link").symlink_to(out)
    before = (out / "final" / "lit_model.pth").read_bytes()
    for command in ("finetune_full", "finetune_lora"):
        err = one_line_error(capsys, ft_args(command, out / "final", data_dir, tmp_path / "link"))
        assert err == (f"litgpt: error: --checkpoint_dir {str(out / 'final')!r} lies in --out_dir "
                       f"{str(tmp_path / 'link')!r} as final/, a directory the command writes over: it would overwrite "
                       "its own input; pass another --out_dir, or copy the input elsewhere")
        err = one_line_error(capsys, ft_args(command, out / "final", data_dir, out / "final" / ".." / "final"))
        assert "is --checkpoint_dir" in err and "itself: the command would write over its own input" in err
    assert (out / "final" / "lit_model.pth").read_bytes() == before
