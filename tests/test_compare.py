"""`litgpt compare` through the CLI: files and their contents (next-token accuracy, per-expert load of MoE models),
skipping finished models, exact resume of an interrupted one, bad inputs, and the shipped comparison configs."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from litgpt.__main__ import main
from litgpt.benchmark.compare import read_metrics

from test_pretrain import write_stories

MODELS = ["debug", "debug-mla"]
TABLE_HEADER = ("| model | params | val loss | val ppl | val acc | tokens | tokens/s | peak memory | KV bytes/token "
                "| train time |")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    return write_stories(tmp_path_factory.mktemp("text"), (4, 1), 40)


def compare_args(text_dir, out_dir, **extra):
    args = {
        "models": "[" + ", ".join(MODELS) + "]",
        "model_config": "{n_layer: 1, n_embd: 32, n_head: 2, block_size: 32, vocab_size: 384, padding_multiple: 64}",
        "out_dir": str(out_dir),
        "precision": "32-true",
        "data": "TextFiles",
        "data.train_data_path": str(text_dir / "train"),
        "data.val_data_path": str(text_dir / "val"),
        "data.cache_dir": str(out_dir.parent / "data-cache"),
        "data.tokenize_workers": "1",
        "train.global_batch_size": "4",
        "train.micro_batch_size": "2",
        "train.max_seq_length": "32",
        "train.lr_warmup_steps": "2",
        "train.max_steps": "6",
        "train.save_interval": "3",
        "eval.interval": "3",
        "eval.max_iters": "2",
        "seed": "7",
    }
    args.update(extra)
    return ["compare"] + [f"--{k}={v}" for k, v in args.items()]


def test_compare_writes_results_skips_finished_and_resumes_exactly(tmp_path, text_dir, capsys):
    out = tmp_path / "compare"
    main(compare_args(text_dir, out))
    first_output = capsys.readouterr().out
    assert first_output.count("step 6/6") == 2 and "val loss" in first_output  # pretrain's own progress lines

    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == MODELS
    assert results["settings"]["train"]["max_steps"] == 6 and results["settings"]["seed"] == 7
    for name, row in results["models"].items():
        assert set(row) >= {"model", "params", "val_loss", "val_ppl", "val_acc", "tokens", "tokens_per_s",
                            "peak_memory_gib", "kv_bytes_per_token", "train_time_s", "expert_load"}
        assert math.isfinite(row["val_loss"]) and 0 < row["val_loss"] < 7  # ln(384) = 5.95 at chance; it trains
        assert 0 <= row["val_acc"] < 1 and row["expert_load"] == [] and row["expert_max_violation"] is None
        assert row["val_ppl"] == pytest.approx(math.exp(row["val_loss"]))
        assert (row["steps"], row["tokens"]) == (6, 6 * 4 * 32)
        assert row["tokens_per_s"] == pytest.approx(row["tokens"] / row["train_time_s"])
        assert row["peak_memory_gib"] is None  # CPU: not measured
        log = read_metrics(out / name)
        train_rows = [r for r in log if "loss" in r]
        assert [r["step"] for r in train_rows] == list(range(1, 7))
        assert all(math.isfinite(r["loss"]) for r in train_rows)
        times = [r["time"] for r in train_rows]
        assert times == sorted(times) and times[0] > 0
        assert [(r["step"], r["tokens"]) for r in log if "val_loss" in r] == [(3, 384.0), (6, 768.0)]
        assert [r["val_loss"] for r in log if "val_loss" in r][-1] == row["val_loss"]
    # KV cache per token, all layers, fp32: MHA 2 x 2 groups x 16 x 1 layer; MLA (4*16 + 16/2) x 1 layer
    assert results["models"]["debug"]["kv_bytes_per_token"] == 2 * 2 * 16 * 4
    assert results["models"]["debug-mla"]["kv_bytes_per_token"] == (64 + 8) * 4

    table = (out / "results.md").read_text().splitlines()
    assert TABLE_HEADER in table
    rows = [line for line in table if line.startswith("| debug")]
    assert [r.split("|")[1].strip() for r in rows] == MODELS
    assert f"{results['models']['debug']['val_loss']:.4f}" in rows[0]
    assert f"{100 * results['models']['debug']['val_acc']:.2f}%" in rows[0]
    assert "## Expert load" not in table
    for name in ("loss_vs_tokens.png", "loss_vs_time.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the same command again: both models are finished and recorded, nothing is retrained
    checkpoints = {name: (out / name / "final" / "lit_model.pth").stat().st_mtime_ns for name in MODELS}
    main(compare_args(text_dir, out))
    second_output = capsys.readouterr().out
    assert all(f"compare: {name} is finished (results recorded), skipping it" in second_output for name in MODELS)
    assert "step 1/6" not in second_output
    assert {name: (out / name / "final" / "lit_model.pth").stat().st_mtime_ns for name in MODELS} == checkpoints

    # interrupted after the step-3 checkpoint: no final/, no recorded results -> it resumes from step 3
    shutil.rmtree(out / "debug-mla" / "final")
    recorded = json.loads((out / "results.json").read_text())
    expected = recorded["models"].pop("debug-mla")
    (out / "results.json").write_text(json.dumps(recorded))
    main(compare_args(text_dir, out))
    third_output = capsys.readouterr().out
    assert "compare: debug is finished" in third_output
    assert f"resuming from {out / 'debug-mla' / 'step-00000003'}" in third_output
    resumed = json.loads((out / "results.json").read_text())["models"]["debug-mla"]
    assert resumed["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-6)  # exact resume, same final model
    assert resumed["tokens"] == expected["tokens"]
    assert [r["step"] for r in read_metrics(out / "debug-mla") if "loss" in r] == list(range(1, 7))


def test_processes_sharing_an_out_dir_keep_each_others_rows_and_peak_memory(tmp_path, text_dir, capsys,
                                                                            monkeypatch):
    import litgpt.benchmark.compare as compare_module

    out = tmp_path / "compare"
    train = compare_module._train

    def train_while_another_process_records_debug(name, *args):
        # this process loaded results.json before training; another one records `debug` meanwhile
        monkeypatch.setattr(compare_module, "_train", train)
        main(compare_args(text_dir, out, models="[debug]"))
        assert list(json.loads((out / "results.json").read_text())["models"]) == ["debug"]
        return train(name, *args)

    monkeypatch.setattr(compare_module, "_train", train_while_another_process_records_debug)
    main(compare_args(text_dir, out, models="[debug-mla]"))
    assert sorted(json.loads((out / "results.json").read_text())["models"]) == MODELS  # neither row is lost
    capsys.readouterr()

    # a model trained but not recorded (a run stopped in between) keeps the peak memory its run wrote
    recorded = json.loads((out / "results.json").read_text())
    recorded["models"].pop("debug")
    (out / "results.json").write_text(json.dumps(recorded))
    (out / "debug" / "peak_memory.json").write_text(json.dumps({"peak_memory_gib": 1.25}))
    main(compare_args(text_dir, out))
    output = capsys.readouterr().out
    assert "compare: debug finished training earlier; recording its results\n" in output
    assert "compare: debug-mla is finished (results recorded), skipping it" in output
    assert json.loads((out / "results.json").read_text())["models"]["debug"]["peak_memory_gib"] == 1.25
    assert "| 1.25 GiB |" in (out / "results.md").read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"models": "[debug, debug]"}, "--models must be a non-empty list of distinct model names"),
        ({"models": "[debug, nope]"}, "unknown model name 'nope'"),
        ({"eval.final_validation": "false"}, "keep eval.final_validation"),
        ({"train.max_steps": "null"}, "set at least one of train.max_tokens"),
        ({"tokenizer_dir": "/does/not/exist"}, "--tokenizer_dir '/does/not/exist' is not a directory"),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, text_dir, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(compare_args(text_dir, tmp_path / "out", **extra))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()  # nothing is written before the arguments are checked


def test_other_settings_in_same_out_dir_are_refused(tmp_path, text_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    settings = dict(precision="32-true", train={"max_steps": 99})
    (out / "results.json").write_text(json.dumps(dict(version=1, settings=settings, models={})))
    with pytest.raises(SystemExit):
        main(compare_args(text_dir, out))
    err = capsys.readouterr().err
    assert "holds a comparison run with different settings" in err and "train.max_steps" in err


def test_worker_counts_may_change_between_reruns(tmp_path):
    """Worker processes change how fast the data is read, not what trains: a rerun may use other counts, and a
    run recorded before tokenize_workers had its name (num_workers) is the same experiment."""
    from litgpt.benchmark.compare import ANY_VALUE_SETTINGS, RESULTS_VERSION, load_results

    def _load_results(path, settings):  # as `litgpt compare` calls it
        return load_results(path, settings, version=RESULTS_VERSION, entries="models", command="compare",
                            run="comparison run", any_value=ANY_VALUE_SETTINGS)

    settings = {"seed": 7, "data": {"class_path": "litgpt.data.text_files.TextFiles",
                                    "init_args": {"cache_dir": "c", "tokenize_workers": 4, "loader_workers": 2}}}
    recorded = {"seed": 7, "data": {"class_path": "litgpt.data.text_files.TextFiles",
                                    "init_args": {"cache_dir": "c", "num_workers": 16}}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(dict(version=1, settings=recorded, models={"debug": {"val_loss": 1.5}})))
    assert _load_results(path, settings)["models"] == {"debug": {"val_loss": 1.5}}
    with pytest.raises(ValueError, match=r"different settings \(data.init_args.cache_dir changed\)"):
        _load_results(path, {**settings, "data": {**settings["data"], "init_args": {"cache_dir": "d"}}})



def test_moe_models_report_accuracy_and_expert_load(tmp_path, text_dir):
    """MoE models: per-expert load logged during pretraining and, on the held-out tokens, per layer in results.json
    and averaged in results.md; the accuracy pass reads the batches the final validation read (the same loss)."""
    from litgpt.benchmark.compare import evaluate, held_out_batches
    from litgpt.checkpoint import load_checkpoint
    from litgpt.data import TextFiles

    out = tmp_path / "compare"
    models = ["debug-moe", "debug-moe-mla"]
    tiny = "{n_layer: 2, n_embd: 32, n_head: 2, block_size: 32, vocab_size: 384, padding_multiple: 64}"
    main(compare_args(text_dir, out, models="[" + ", ".join(models) + "]", model_config=tiny, **{"train.max_steps": "4",
                                                                           "train.save_interval": "4"}))
    results = json.loads((out / "results.json").read_text())
    for name in models:
        row = results["models"][name]
        assert len(row["expert_load"]) == 1 and len(row["expert_load"][0]) == 4  # one MoE layer of 4 experts
        assert sum(row["expert_load"][0]) == pytest.approx(1.0) and row["expert_max_violation"] >= 0
        logged = [r for r in read_metrics(out / name) if "loss" in r]
        assert all(sum(r[f"moe_load_expert_{i}"] for i in range(4)) == pytest.approx(1.0) for r in logged)
        assert all(r["moe_max_violation"] >= 0 and r["moe_aux_loss"] > 0 for r in logged)
    table = (out / "results.md").read_text()
    assert "## Expert load" in table and "| model | max violation | e0 | e1 | e2 | e3 |" in table

    data = TextFiles(train_data_path=text_dir / "train", val_data_path=text_dir / "val",
                     cache_dir=tmp_path / "data-cache", tokenize_workers=1)
    batches = held_out_batches(data, out / "tokenizer", 32, 2, 2)
    assert [tuple(b.shape) for b in batches] == [(2, 33), (2, 33)]
    scores = evaluate(load_checkpoint(out / "debug-moe" / "final"), batches)
    assert scores["loss"] == pytest.approx(results["models"]["debug-moe"]["val_loss"], rel=1e-5)
    assert scores["accuracy"] == pytest.approx(results["models"]["debug-moe"]["val_acc"])


def test_evaluate_scores_token_ids_past_vocab_size_as_training_does():
    """A tokenizer may have more ids than vocab_size (Pythia's 50,277 against 50,254): the held-out pass scores them
    against all padded_vocab_size logits, as training's loss does, instead of failing (a CUDA device assert)."""
    from litgpt.benchmark.compare import evaluate
    from litgpt.config import Config
    from litgpt.model import GPT

    torch.manual_seed(0)
    model = GPT(Config(n_layer=1, n_embd=32, n_head=2, block_size=16, vocab_size=300, padding_multiple=64))
    assert model.config.padded_vocab_size == 320
    batch = torch.randint(0, 320, (2, 17))
    batch[:, 5] = 310  # past vocab_size, inside the padded logits
    scores = evaluate(model, [batch])
    with torch.no_grad():
        logits = model(batch[:, :-1])  # (2, 16, 320)
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
    assert scores["loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert scores["accuracy"] == (logits.argmax(-1) == batch[:, 1:]).float().mean().item()


def test_moe_attention_comparison_config_loads(tmp_path, text_dir, capsys):
    """config_hub/compare/moe-attention.yaml parses as `litgpt compare` reads it: MHA, GQA and MLA in identical
    MoE models of 50M parameters or more, TinyStories and the Pythia tokenizer by default, and the offline corpus
    options its header names (TextFiles on local train/val folders, a local tokenizer) override them."""
    from litgpt.config import Config
    from litgpt.model import GPT

    path = ROOT / "config_hub" / "compare" / "moe-attention.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--config", str(path), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["models"] == ["pythia-70m-moe", "pythia-70m-moe-gqa", "pythia-70m-moe-mla"]
    assert printed["tokenizer_dir"] == "checkpoints/EleutherAI/pythia-160m"
    assert printed["data"]["class_path"] == "litgpt.data.TinyStories"

    tokenizer_dir = tmp_path / "tokenizers" / "pythia"
    tokenizer_dir.mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--config", str(path), "--data", "TextFiles",
              "--data.train_data_path", str(text_dir / "train"), "--data.val_data_path", str(text_dir / "val"),
              "--tokenizer_dir", str(tokenizer_dir), "--print_config"])
    assert exit_info.value.code == 0
    override = yaml.safe_load(capsys.readouterr().out)
    assert override["tokenizer_dir"] == str(tokenizer_dir)
    assert override["data"]["class_path"] == "litgpt.data.TextFiles"
    assert override["data"]["init_args"]["train_data_path"] == str(text_dir / "train")
    assert override["data"]["init_args"]["val_data_path"] == str(text_dir / "val")
    assert {k: v for k, v in override.items() if k not in ("data", "tokenizer_dir")} == {
        k: v for k, v in printed.items() if k not in ("data", "tokenizer_dir")}
    configs = {name: Config.from_name(name).to_dict() for name in printed["models"]}
    attention = ("name", "n_query_groups", "latent_attention", "rotary_percentage")
    shared = [{k: v for k, v in c.items() if k not in attention} for c in configs.values()]
    assert shared[0] == shared[1] == shared[2] and shared[0]["mlp_class_name"] == "LLaMAMoE"
    for name in printed["models"]:
        with torch.device("meta"):
            assert sum(p.numel() for p in GPT(Config.from_name(name)).parameters()) >= 50e6

