"""`litgpt benchmark pretrain` on the CPU through the CLI: it times `litgpt.training.train_step` with the optimizer
and clipping it is given, prints its table and writes results.json."""

import json
import math

import pytest

import litgpt.benchmark.pretrain as benchmark
import litgpt.training
from litgpt.__main__ import main

HEADER = f"{'model':<18} {'compile':>7} {'tokens/s':>10} {'MFU':>6} {'step ms':>8} {'peak GiB':>9} {'loss':>7}"


def bench_args(out_dir, *extra: str) -> list[str]:
    return ["benchmark", "pretrain", "--models", "[debug]", "--micro_batch_size", "2", "--seq_len", "16",
            "--compile", "[false]", "--precision", "32-true", "--warmup_steps", "1", "--steps", "2",
            "--out_dir", str(out_dir), *extra]


@pytest.fixture
def steps(monkeypatch) -> list[dict]:
    """What each call of the training step was given."""
    calls = []

    def spy(fabric, model, optimizer, batches, accum, max_norm, divergence=None, step=0):
        inner = getattr(optimizer, "optimizer", optimizer)
        calls.append(dict(optimizer=type(inner).__name__, lr=inner.param_groups[0]["lr"],
                          weight_decay=inner.param_groups[0]["weight_decay"], accum=accum, max_norm=max_norm, step=step))
        return litgpt.training.train_step(fabric, model, optimizer, batches, accum, max_norm, divergence, step)

    assert benchmark.train_step is litgpt.training.train_step  # the step `litgpt pretrain` and `litgpt finetune_*` run
    monkeypatch.setattr(benchmark, "train_step", spy)
    return calls


def test_default_optimizer_and_clipping(tmp_path, capsys, steps):
    main(bench_args(tmp_path))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == HEADER and out[1].startswith("debug") and out[-1] == f"wrote {tmp_path / 'results.json'}"
    assert [c["step"] for c in steps] == [1, 2, 3]  # 1 warm-up + 2 timed steps
    assert {(c["optimizer"], c["lr"], c["weight_decay"], c["accum"], c["max_norm"]) for c in steps} == {
        ("AdamW", 3e-4, 0.1, 1, 1.0)}
    results = json.loads((tmp_path / "results.json").read_text())
    optimizer = results["meta"]["optimizer"]  # the CLI's spelling records every argument of the class
    assert optimizer["class_path"] == "torch.optim.adamw.AdamW"
    assert (optimizer["init_args"]["lr"], optimizer["init_args"]["weight_decay"]) == (3e-4, 0.1)
    assert results["meta"]["max_norm"] == 1.0 and results["meta"]["seq_len"] == 16
    (row,) = results["rows"]
    assert row["model"] == "debug" and row["compile"] is False and row["tokens_per_sec"] > 0
    assert row["step_ms"] == pytest.approx(1e3 * 2 * 16 / row["tokens_per_sec"])  # 2 sequences of 16 per step
    assert math.isfinite(row["final_loss"]) and row["mfu"] is None and row["peak_memory_gib"] == 0.0


def test_optimizer_and_max_norm_options_take_effect(tmp_path, steps):
    main(bench_args(tmp_path, "--optimizer", "SGD", "--optimizer.lr", "0.05", "--max_norm", "null"))
    assert {(c["optimizer"], c["lr"], c["max_norm"]) for c in steps} == {("SGD", 0.05, None)}
    meta = json.loads((tmp_path / "results.json").read_text())["meta"]
    assert meta["optimizer"]["class_path"] == "torch.optim.sgd.SGD" and meta["optimizer"]["init_args"]["lr"] == 0.05
    assert meta["max_norm"] is None
    steps.clear()
    main(bench_args(tmp_path, "--optimizer.lr", "0.001", "--max_norm", "0.5"))
    assert {(c["optimizer"], c["lr"], c["weight_decay"], c["max_norm"]) for c in steps} == {("AdamW", 0.001, 0.1, 0.5)}


def test_bad_max_norm_is_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(bench_args(tmp_path, "--max_norm", "0"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max_norm must be positive or null (no clipping), got 0.0" in err[0], err


def test_an_unknown_compile_mode_or_model_is_one_line_before_any_run(tmp_path, capsys, steps):
    cases = ((["--compile_mode", "bogus"], "litgpt: error: --compile_mode 'bogus' is not a torch.compile mode; choose "
                                           f"one of {', '.join(benchmark.compile_modes())}"),
             (["--models", "[debug, nope]"], "litgpt: error: unknown model name 'nope'."))
    assert {"default", "reduce-overhead", "max-autotune"} <= set(benchmark.compile_modes())
    for extra, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(bench_args(tmp_path, *extra))
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith(message), err
    assert steps == []  # no configuration was timed
