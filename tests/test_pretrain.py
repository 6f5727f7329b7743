"""`litgpt pretrain` through the real CLI: end to end, kill-and-resume equivalence, config_hub, bad inputs."""

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from litgpt.__main__ import main
from litgpt.checkpoint import load_checkpoint
from litgpt.args import TrainArgs
from litgpt.training import learning_rate
from litgpt.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the a cat dog ran sat on mat and then he she it was happy sad big small red blue tree house "
         "bird sang song day night sun moon went home to school friend played with ball").split()


def write_stories(root: Path, files_per_split: tuple[int, int], stories_per_file: int) -> Path:
    """train/ and val/ directories of .txt files of random little stories (seeded), for TextFiles."""
    rng = random.Random(0)
    for split, n_files in zip(("train", "val"), files_per_split):
        (root / split).mkdir()
        for i in range(n_files):
            stories = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))).capitalize() + "."
                       for _ in range(stories_per_file)]
            (root / split / f"{i}.txt").write_text("\n\n".join(stories))
    return root


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    return write_stories(tmp_path_factory.mktemp("text"), (8, 2), 60)


def tiny_args(text_dir: Path, out_dir: Path, **extra: str) -> list[str]:
    args = {
        "model_name": "debug",
        "model_config": "{n_layer: 1, n_embd: 32, n_head: 2, block_size: 32, vocab_size: 384, padding_multiple: 64}",
        "out_dir": str(out_dir),
        "precision": "32-true",
        "data": "TextFiles",
        "data.train_data_path": str(text_dir / "train"),
        "data.val_data_path": str(text_dir / "val"),
        "data.cache_dir": str(out_dir.parent / f"{out_dir.name}-cache"),
        "data.tokenize_workers": "1",
        "train.global_batch_size": "4",
        "train.micro_batch_size": "2",
        "train.max_seq_length": "32",
        "train.lr_warmup_steps": "2",
        "train.log_interval": "1",
        "eval.interval": "1000",
        "eval.max_iters": "2",
        "devices": "1",
        "seed": "7",
    }
    args.update(extra)
    return ["pretrain"] + [f"--{k}={v}" for k, v in args.items()]


def run_cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "litgpt", *args], capture_output=True, text=True, env=env, **kwargs)


def logged_losses(out_dir: Path, version: int) -> dict[int, str]:
    with open(out_dir / "logs" / "csv" / f"version_{version}" / "metrics.csv") as f:
        return {int(r["step"]): r["loss"] for r in csv.DictReader(f) if r.get("loss")}


def test_end_to_end_checkpoint_loads(tmp_path, text_dir):
    out = tmp_path / "run"
    result = run_cli(tiny_args(text_dir, out, **{"train.max_steps": "6", "train.save_interval": "3"}))
    assert result.returncode == 0, result.stderr
    assert "val loss" in result.stdout and "tok/s" in result.stdout
    for name in ("step-00000003", "final"):
        files = sorted(p.name for p in (out / name).iterdir())
        assert files == ["hyperparameters.yaml", "lit_model.pth", "model_config.yaml", "tokenizer.json",
                         "tokenizer_config.json"], files
    model = load_checkpoint(out / "final")
    assert model.config.n_embd == 32 and model.config.vocab_size == 384
    tokenizer = Tokenizer(out / "final")
    ids = tokenizer.encode("the cat sat on the mat").view(1, -1)
    assert model(ids).shape == (1, ids.size(1), 384)
    hparams = yaml.safe_load((out / "final" / "hyperparameters.yaml").read_text())
    assert hparams["train"]["max_steps"] == 6 and hparams["data"]["class_path"].endswith("TextFiles")
    state = torch.load(out / "final" / "lit_model.pth", weights_only=True)
    assert (state["step_count"], state["iter_num"], state["tokens"]) == (6, 12, 6 * 4 * 32)
    assert logged_losses(out, 0).keys() == set(range(1, 7))


def kill_after_first_checkpoint(args: list[str], out: Path, threads: int) -> int:
    """Run `litgpt ARGS` (which trains into `out`) as a process of its own with `threads` threads, SIGKILL it as soon
    as a step checkpoint exists, check that it had not finished, and return the step of its latest checkpoint."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "litgpt", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while not list(out.glob("step-*/lit_model.pth")) and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "final").exists(), "the run finished before it could be killed"
    return int(sorted(out.glob("step-*"))[-1].name.split("-")[1])


def test_kill_and_resume_is_exact(tmp_path, text_dir):
    extra = {"train.max_steps": "400", "train.save_interval": "10"}
    reference = run_cli(tiny_args(text_dir, tmp_path / "ref", **extra))
    assert reference.returncode == 0, reference.stderr
    expected = logged_losses(tmp_path / "ref", 0)

    out = tmp_path / "killed"
    resumed_from = kill_after_first_checkpoint(tiny_args(text_dir, out, **extra), out, threads=1)

    resumed = run_cli(tiny_args(text_dir, out, **extra, resume="auto"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {out}/step-{resumed_from:08d}" in resumed.stdout
    after = logged_losses(out, 1)
    assert min(after) == resumed_from + 1 and max(after) == 400
    assert after == {step: loss for step, loss in expected.items() if step > resumed_from}  # bitwise (as text)


def test_lr_schedule():
    train = TrainArgs(lr_warmup_steps=10, max_steps=110, min_lr=1e-4)
    assert learning_rate(0, 1e-3, train, 110) == pytest.approx(1e-4)
    assert learning_rate(9, 1e-3, train, 110) == pytest.approx(1e-3)
    assert learning_rate(60, 1e-3, train, 110) == pytest.approx((1e-3 + 1e-4) / 2)
    assert learning_rate(110, 1e-3, train, 110) == pytest.approx(1e-4)
    assert learning_rate(500, 1e-3, train, None) == 1e-3  # max_time only: constant after warmup


@pytest.mark.parametrize("yaml_path", sorted((ROOT / "config_hub" / "pretrain").glob("*.yaml")), ids=lambda p: p.name)
def test_config_hub_parses(yaml_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--config", str(yaml_path), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model_name"].startswith(("pythia-160m", "debug"))
    assert printed["data"]["class_path"].startswith("litgpt.data.")


def test_config_hub_comparisons_differ_only_in_model():
    configs = {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "config_hub" / "pretrain").glob("m*.yaml")}
    configs["gqa"] = yaml.safe_load((ROOT / "config_hub" / "pretrain" / "gqa.yaml").read_text())
    strip = lambda c: {k: v for k, v in c.items() if k not in ("model_name", "out_dir")}
    assert strip(configs["mla"]) == strip(configs["mha"]) == strip(configs["gqa"]) == strip(configs["mqa"])


BAD_INPUTS = [
    ({"data.train_data_path": "/does/not/exist"}, "does not exist"),
    ({"precision": "17-bad"}, "precision '17-bad' is not supported"),
    ({"train.micro_batch_size": "8"}, "micro_batch_size (8) cannot exceed train.global_batch_size (4)"),
    ({"model_name": "pythia-7b"}, "unknown model name 'pythia-7b'"),
    ({"train.max_seq_length": "64"}, "exceeds the model's block_size (32)"),
    ({"resume": "true"}, "no checkpoint found"),
    ({"tokenizer_dir": "/does/not/exist"}, "is not a directory"),
    ({"train.global_batch_size": "6", "train.micro_batch_size": "4"}, "must be a multiple of"),
    ({"model_config": "{n_embdd: 3}"}, "unknown config field 'n_embdd'"),
    ({"optimizer": "Adamm"}, "optimizer 'Adamm' is not a torch.optim class"),
    ({"train.micro_batch_size": "two"}, "micro_batch_size"),
]


@pytest.mark.parametrize("extra, message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_cli_input_is_one_line_error(tmp_path, text_dir, capsys, extra, message):
    args = tiny_args(text_dir, tmp_path / "out", **{"train.max_steps": "1", **extra})
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert "error:" in last and message in err, err


def test_no_model_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--out_dir", str(tmp_path), "--train.max_steps", "1"])
    assert "pass a model name" in capsys.readouterr().err


def test_tinystories_offline_without_data_path(tmp_path, text_dir, capsys, monkeypatch):
    from litgpt.data import TextFiles
    from litgpt.scripts.train_tokenizer import train_tokenizer

    tokenizer_dir = train_tokenizer(TextFiles(train_data_path=text_dir / "train", cache_dir=tmp_path / "c"),
                                    out_dir=tmp_path / "tok", vocab_size=300)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(SystemExit):
        main(["pretrain", "debug", "--out_dir", str(tmp_path / "out"), "--data", "TinyStories",
              "--data.cache_dir", str(tmp_path / "cache"), "--train.max_steps", "1", "--tokenizer_dir",
              str(tokenizer_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data_path" in err[0], err


# ------------------------------------------------------------------------------------ options that take effect
def write_yaml_config(path: Path, text_dir: Path, out_dir: Path, lr: float = 0.003) -> Path:
    """The tiny run as a --config yaml with an optimizer section, like the shipped config_hub files."""
    args = dict(a[2:].split("=", 1) for a in tiny_args(text_dir, out_dir)[1:])
    config = {
        "model_name": "debug",
        "model_config": yaml.safe_load(args.pop("model_config")),
        "out_dir": str(out_dir),
        "precision": "32-true",
        "data": {"class_path": "litgpt.data.TextFiles", "init_args": {
            "train_data_path": args["data.train_data_path"], "val_data_path": args["data.val_data_path"],
            "cache_dir": args["data.cache_dir"]}},
        "train": {"global_batch_size": 4, "micro_batch_size": 2, "max_seq_length": 32, "lr_warmup_steps": 0,
                  "max_steps": 1, "log_interval": 1},
        "eval": {"interval": 1000, "max_iters": 1, "final_validation": False},
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": lr, "weight_decay": 0.01}},
        "devices": 1,
        "seed": 7,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def used_optimizer(out_dir: Path) -> tuple[str, float, float]:
    """(class_path, lr the first step ran with, weight_decay) of a finished one-step run."""
    hparams = yaml.safe_load((out_dir / "final" / "hyperparameters.yaml").read_text())
    state = torch.load(out_dir / "final" / "lit_model.pth", weights_only=True)
    group = state["optimizer"]["param_groups"][0]
    with open(out_dir / "logs" / "csv" / "version_0" / "metrics.csv") as f:
        logged_lr = float(next(r["lr"] for r in csv.DictReader(f) if r.get("lr")))
    assert hparams["optimizer"]["init_args"]["lr"] == pytest.approx(logged_lr) == pytest.approx(group["lr"])
    return hparams["optimizer"]["class_path"], logged_lr, group["weight_decay"]


OPTIMIZER_SPELLINGS = [
    (["--optimizer.lr", "0.0123"], ("torch.optim.adamw.AdamW", 0.0123)),
    (["--optimizer", "AdamW", "--optimizer.lr", "0.0123"], ("torch.optim.adamw.AdamW", 0.0123)),
    (["--optimizer.init_args.lr", "0.0123"], ("torch.optim.adamw.AdamW", 0.0123)),
    (["--optimizer.class_path", "torch.optim.SGD", "--optimizer.init_args.lr", "0.0123"],
     ("torch.optim.sgd.SGD", 0.0123)),
    (["--optimizer", '{"class_path": "torch.optim.SGD", "init_args": {"lr": 0.0123}}'], ("torch.optim.sgd.SGD", 0.0123)),
]


@pytest.mark.parametrize("with_config", [False, True], ids=["cli", "config+cli"])
@pytest.mark.parametrize("spelling, expected", OPTIMIZER_SPELLINGS, ids=[" ".join(s) for s, _ in OPTIMIZER_SPELLINGS])
def test_optimizer_options_take_effect(tmp_path, text_dir, capsys, with_config, spelling, expected):
    out = tmp_path / "out"
    if with_config:
        args = ["pretrain", "--config", str(write_yaml_config(tmp_path / "run.yaml", text_dir, out)), *spelling]
    else:
        args = tiny_args(text_dir, out, **{"train.max_steps": "1", "train.lr_warmup_steps": "0",
                                           "eval.final_validation": "false"}) + spelling
    main(args)
    class_path, lr, weight_decay = used_optimizer(out)
    assert (class_path, lr) == (expected[0], pytest.approx(expected[1]))
    if with_config:
        assert weight_decay == 0.01  # the yaml's other arguments stay


def test_config_after_the_cli_option_wins(tmp_path, text_dir):
    """Later arguments override earlier ones: a --config after --optimizer.lr sets the yaml's lr."""
    out = tmp_path / "out"
    main(["pretrain", "--optimizer.lr", "0.0123", "--config", str(write_yaml_config(tmp_path / "r.yaml", text_dir, out))])
    assert used_optimizer(out)[1] == pytest.approx(0.003)


def test_bad_optimizer_argument_is_one_line(tmp_path, text_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_args(text_dir, tmp_path / "out", **{"train.max_steps": "1"}) + ["--optimizer.lrr", "3"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "'lrr'" in err, err


# ------------------------------------------------------------------------------------ divergence
def test_nan_loss_stops_the_run_without_a_nan_checkpoint(tmp_path, text_dir):
    out = tmp_path / "out"
    result = run_cli(tiny_args(text_dir, out, **{"train.max_steps": "20", "train.save_interval": "1",
                                                 "train.log_interval": "5", "optimizer.lr": "1e6"}))
    assert result.returncode == 2
    err = result.stderr.strip().splitlines()
    assert err[-1].startswith("litgpt: error: training stopped: the loss or gradient norm became NaN/inf at step 2 ")
    assert f"the last good checkpoint is {out / 'step-00000001'}" in err[-1] and "Traceback" not in result.stderr
    assert "step 1 done after" in result.stdout  # progress before the first logging interval (step 5)
    assert [p.parent.name for p in out.glob("*/lit_model.pth")] == ["step-00000001"]
    weights = torch.load(out / "step-00000001" / "lit_model.pth", weights_only=True)["model"]
    assert all(torch.isfinite(t).all() for t in weights.values())


# ------------------------------------------------------------------------------------ recovery
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, text_dir) -> Path:
    """A 6-step run with checkpoints at steps 2 and 4 and final (step 6), all steps logged."""
    out = tmp_path_factory.mktemp("finished") / "out"
    result = run_cli(tiny_args(text_dir, out, **{"train.max_steps": "6", "train.save_interval": "2"}))
    assert result.returncode == 0, result.stderr
    return out


def copy_run(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


def test_shipped_configs_resume_automatically():
    for path in (ROOT / "config_hub" / "pretrain").glob("*.yaml"):
        assert yaml.safe_load(path.read_text())["resume"] == "auto", path


def test_corrupt_latest_checkpoint_resumes_exactly_from_the_previous(tmp_path, text_dir, finished_run):
    out = copy_run(finished_run, tmp_path / "out")
    import shutil

    shutil.rmtree(out / "final")  # as if killed after step 4 was saved
    latest = out / "step-00000004" / "lit_model.pth"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # truncated on disk
    resumed = run_cli(tiny_args(text_dir, out, **{"train.max_steps": "6", "train.save_interval": "2"}))
    assert resumed.returncode == 0, resumed.stderr
    assert "skipping unreadable checkpoint" in resumed.stderr and str(latest) in resumed.stderr
    assert f"resuming from {out / 'step-00000002' / 'lit_model.pth'}" in resumed.stdout
    after = logged_losses(out, 1)
    assert after == {step: loss for step, loss in logged_losses(finished_run, 0).items() if step > 2}  # bitwise


def test_rerun_of_a_finished_run_resumes_and_says_so(tmp_path, text_dir, finished_run):
    out = copy_run(finished_run, tmp_path / "out")
    again = run_cli(tiny_args(text_dir, out, **{"train.max_steps": "6"}))
    assert again.returncode == 0, again.stderr
    assert f"resuming from {out / 'final' / 'lit_model.pth'}" in again.stdout


def test_resume_false_refuses_to_overwrite_an_earlier_run(tmp_path, text_dir, finished_run):
    out = copy_run(finished_run, tmp_path / "out")
    refused = run_cli(tiny_args(text_dir, out, **{"train.max_steps": "6", "resume": "false"}))
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"litgpt: error: {str(out)!r} already holds a run (latest checkpoint {out / 'final'}); pass --resume auto to "
        "continue it, --resume false --overwrite true to delete its checkpoints and start over, or another --out_dir"
    )
    before = (out / "final" / "lit_model.pth").read_bytes()
    assert before == (finished_run / "final" / "lit_model.pth").read_bytes()  # nothing touched
    fresh = run_cli(tiny_args(text_dir, out, **{"train.max_steps": "2", "resume": "false", "overwrite": "true"}))
    assert fresh.returncode == 0, fresh.stderr
    assert f"--overwrite: deleted {out / 'step-00000004'}" in fresh.stdout
    assert sorted(p.parent.name for p in out.glob("*/lit_model.pth")) == ["final"]
    assert torch.load(out / "final" / "lit_model.pth", weights_only=True)["step_count"] == 2


def test_resume_with_another_tokenizer_is_refused(tmp_path, text_dir, finished_run):
    from litgpt.data import TextFiles
    from litgpt.scripts.train_tokenizer import train_tokenizer

    out = copy_run(finished_run, tmp_path / "out")
    other = train_tokenizer(TextFiles(train_data_path=text_dir / "val", cache_dir=tmp_path / "c"),
                            out_dir=tmp_path / "other", vocab_size=300)
    refused = run_cli(tiny_args(text_dir, out, **{"train.max_steps": "8", "tokenizer_dir": str(other)}))
    assert refused.returncode == 2
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"litgpt: error: cannot resume {out / 'final'}: --tokenizer_dir {str(other)!r} is not the "
                           "tokenizer the run started with"), last


def test_resume_with_another_model_config_is_refused(tmp_path, text_dir, finished_run):
    out = copy_run(finished_run, tmp_path / "out")
    other = "{n_layer: 1, n_embd: 64, n_head: 2, block_size: 32, vocab_size: 384, padding_multiple: 64}"
    refused = run_cli(tiny_args(text_dir, out, **{"train.max_steps": "8", "model_config": other}))
    assert refused.returncode == 2
    last = refused.stderr.strip().splitlines()[-1]
    assert "it was trained with another model config (n_embd: 32 in the checkpoint, 64 now" in last, last
    assert "Traceback" not in refused.stderr


def test_resume_never_unpickles_code(tmp_path, text_dir, finished_run):
    """A crafted checkpoint that would run code when fully unpickled is refused, even when the environment asks
    torch to load without weights_only."""
    out = copy_run(finished_run, tmp_path / "out")
    marker = tmp_path / "code_ran"
    crafted = tmp_path / "crafted.pth"
    subprocess.run([sys.executable, "-c", (
        "import torch, os\n"
        "class Evil:\n"
        f"    def __reduce__(self): return (os.system, ('touch {marker}',))\n"
        f"torch.save({{'model': {{}}, 'evil': Evil()}}, {str(crafted)!r})\n")], check=True)
    env_args = tiny_args(text_dir, out, **{"train.max_steps": "8", "resume": str(crafted)})
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    refused = subprocess.run([sys.executable, "-m", "litgpt", *env_args], capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and not marker.exists()
    assert str(crafted) in refused.stderr.strip().splitlines()[-1]


def test_bf16_on_cpu_warns(tmp_path, text_dir, capsys):
    with pytest.warns(UserWarning, match="bf16-mixed on the CPU runs many times slower than 32-true"):
        with pytest.raises(SystemExit):
            main(tiny_args(text_dir, tmp_path / "out", **{"precision": "bf16-mixed", "resume": "true",
                                                          "train.max_steps": "1"}))


# ------------------------------------------------------------------------------------ the training step
def test_train_step_takes_the_mean_gradient_of_its_micro_batches():
    """accum micro-batches: the summed loss comes back, one optimizer step on the mean gradient, gradients zeroed;
    a non-finite loss is recorded on the device under the step's number."""
    import lightning as L

    from litgpt import GPT, Config
    from litgpt.training import Divergence, next_token_loss, train_step

    fabric = L.Fabric(devices=1, accelerator="cpu", precision="32-true")
    torch.manual_seed(0)
    model = GPT(Config.from_name("debug", n_layer=1, n_embd=16, n_head=2, block_size=8, vocab_size=64))
    reference = {k: v.clone().double() for k, v in model.state_dict().items()}
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.5))
    batches = [torch.randint(0, 64, (2, 9)) for _ in range(2)]

    expected_loss, grads = 0.0, {}
    copy = GPT(model.config).double()
    copy.load_state_dict(reference)
    for batch in batches:
        loss = next_token_loss(copy, batch)
        expected_loss += loss.item()
        for name, g in zip([n for n, _ in copy.named_parameters()],
                           torch.autograd.grad(loss, list(copy.parameters()), allow_unused=True)):
            if g is not None:
                grads[name] = grads.get(name, 0) + g / 2

    divergence = Divergence(fabric.device, check_grad_norm=True, clipping=False)
    loss_sum = train_step(fabric, model, optimizer, iter(batches), 2, None, divergence, step=7)
    assert loss_sum.dim() == 0 and loss_sum.item() == pytest.approx(expected_loss, rel=1e-6)
    after = model.state_dict()
    assert len(grads) == len(after)
    for name, g in grads.items():  # float32 step against the float64 computation
        torch.testing.assert_close(after[name].double(), reference[name] - 0.5 * g, rtol=1e-5, atol=1e-6, msg=name)
    assert all(p.grad is None for p in model.parameters())
    assert divergence.first_bad.item() == -1

    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    train_step(fabric, model, optimizer, iter(batches), 2, 1.0, divergence, step=8)
    assert divergence.first_bad.item() == 8


# ------------------------------------------------------------------------------------ data workers
def test_loader_workers_train_exactly_as_the_main_process(tmp_path, text_dir):
    """Two DataLoader workers read the same windows in the same order: the same train and val losses, bitwise."""
    extra = {"train.max_steps": "4", "eval.interval": "2"}
    logs = {}
    for workers in ("0", "2"):
        out = tmp_path / f"workers-{workers}"
        result = run_cli(tiny_args(text_dir, out, **extra, **{"data.loader_workers": workers}))
        assert result.returncode == 0, result.stderr
        with open(out / "logs" / "csv" / "version_0" / "metrics.csv") as f:
            logs[workers] = [(r["step"], r["loss"], r["val_loss"]) for r in csv.DictReader(f)]
        hparams = yaml.safe_load((out / "final" / "hyperparameters.yaml").read_text())
        assert hparams["data"]["init_args"]["loader_workers"] == int(workers)
    assert [step for step, loss, _ in logs["0"] if loss] == ["1", "2", "3", "4"]
    assert [step for step, _, val in logs["0"] if val] == ["2", "4"]
    assert logs["2"] == logs["0"]  # as text: bitwise


def test_deprecated_num_workers_option_still_works(tmp_path, text_dir):
    out = tmp_path / "out"
    args = [a for a in tiny_args(text_dir, out, **{"train.max_steps": "1"}) if not a.startswith("--data.tokenize_workers")]
    result = run_cli(args + ["--data.num_workers", "1"])
    assert result.returncode == 0, result.stderr
    assert "FutureWarning: TextFiles: num_workers is deprecated" in result.stderr and "tokenize_workers" in result.stderr
    init_args = yaml.safe_load((out / "final" / "hyperparameters.yaml").read_text())["data"]["init_args"]
    assert init_args["tokenize_workers"] == 1 and "num_workers" not in init_args


def test_initial_checkpoint_alone_is_the_model(tmp_path, text_dir):
    """`--initial_checkpoint_dir` without a model name trains the checkpoint's own model (its model_config.yaml), from
    its weights: at learning rate 0 the weights come out as they went in."""
    first = tmp_path / "first"
    main(tiny_args(text_dir, first, **{"train.max_steps": "2", "eval.final_validation": "false"}))
    args = {k: v for k, v in (a[2:].split("=", 1) for a in tiny_args(text_dir, tmp_path / "second")[1:])
            if k not in ("model_name", "model_config")}
    args.update({"initial_checkpoint_dir": str(first / "final"), "tokenizer_dir": str(first / "final"),
                 "train.max_steps": "1", "train.lr_warmup_steps": "0", "optimizer.lr": "0",
                 "eval.final_validation": "false"})
    main(["pretrain"] + [f"--{k}={v}" for k, v in args.items()])
    assert (yaml.safe_load((tmp_path / "second" / "final" / "model_config.yaml").read_text())
            == yaml.safe_load((first / "final" / "model_config.yaml").read_text()))
    before = torch.load(first / "final" / "lit_model.pth", weights_only=True)["model"]
    after = torch.load(tmp_path / "second" / "final" / "lit_model.pth", weights_only=True)["model"]
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------------------------ --model_config overrides
DEBUG_YAML = ROOT / "config_hub" / "pretrain" / "debug.yaml"


def resolved(monkeypatch, args: list[str]) -> tuple:
    """(Config, hyperparameters) that `litgpt pretrain ARGS` would train with (the run itself is not started)."""
    import litgpt.pretrain as pretrain

    seen = {}
    monkeypatch.setattr(pretrain, "fit", lambda fabric, config, **kw: seen.update(config=config, hparams=kw["hparams"]))
    main(args)
    return seen["config"], seen["hparams"]


@pytest.mark.parametrize("override", [["--model_config", "{n_layer: 2}"], ["--model_config={n_layer: 2}"],
                                      ["--model_config.n_layer", "2"], ["--model_config.n_layer=2"]])
def test_a_model_config_override_changes_the_named_fields_and_keeps_the_yamls_others(tmp_path, monkeypatch, override):
    config, hparams = resolved(monkeypatch, ["pretrain", "--config", str(DEBUG_YAML), "--out_dir", str(tmp_path),
                                             *override])
    assert (config.name, config.n_layer, config.n_embd, config.n_head, config.block_size, config.vocab_size,
            config.padded_vocab_size) == ("debug-mla", 2, 128, 4, 256, 2048, 2048)
    assert hparams["model_config"] == {"n_layer": 2, "n_embd": 128, "n_head": 4, "block_size": 256,
                                       "vocab_size": 2048, "padding_multiple": 64}


def test_model_config_values_from_the_command_line_take_their_fields_types(tmp_path, monkeypatch):
    latent = "{q_lora_rank: null, kv_lora_rank: 32, qk_rope_head_dim: 8, qk_nope_head_dim: 32, v_head_dim: 32}"
    config, _ = resolved(monkeypatch, [
        "pretrain", "--config", str(DEBUG_YAML), "--out_dir", str(tmp_path), "--model_config.n_layer", "3",
        "--model_config.norm_eps", "1e-4", "--model_config.bias", "false", "--model_config.name", "mine",
        "--model_config.latent_attention", latent, "--model_config", "{rope_base: 500, lm_head_bias: true}",
    ])
    assert (config.n_layer, config.norm_eps, config.bias, config.name, config.rope_base, config.lm_head_bias) == (
        3, 1e-4, False, "mine", 500, True)
    assert config.latent_attention["kv_lora_rank"] == 32 and config.latent_attention["q_lora_rank"] is None
    assert config.n_embd == 128  # from the yaml


def test_typed_model_config_converts_text_by_field():
    from litgpt.pretrain import typed_model_config

    assert typed_model_config({"n_layer": "2", "norm_eps": "1e-5", "rotary_percentage": "0.5", "bias": "true",
                               "name": "123", "moe_scoring": "null", "n_query_groups": "null", "gelu_approximate":
                               "tanh", "n_embd": 64, "no_such_field": "7"}) == {
        "n_layer": 2, "norm_eps": 1e-5, "rotary_percentage": 0.5, "bias": True, "name": "123", "moe_scoring": None,
        "n_query_groups": None, "gelu_approximate": "tanh", "n_embd": 64, "no_such_field": "7"}
    assert typed_model_config(None) is None


def test_an_unknown_model_name_is_named_before_a_missing_stopping_condition(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--model_name", "pythia-14m-mal", "--out_dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("litgpt: error: unknown model name 'pythia-14m-mal'. Similar: pythia-14m,"), err


def test_an_input_checkpoint_inside_what_the_run_writes_is_refused(tmp_path, text_dir, finished_run, capsys):
    out = copy_run(finished_run, tmp_path / "out")
    before = (out / "final" / "lit_model.pth").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_args(text_dir, out, **{"train.max_steps": "1", "initial_checkpoint_dir": str(out / "final"),
                                         "resume": "false", "overwrite": "true"}))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err == (
        f"litgpt: error: --initial_checkpoint_dir {str(out / 'final')!r} lies in --out_dir {str(out)!r} as final/, a "
        "directory the command writes over: it would overwrite its own input; pass another --out_dir, or copy the "
        "input elsewhere")
    assert (out / "final" / "lit_model.pth").read_bytes() == before


# ------------------------------------------------------------------------------------ a full disk
def test_a_full_disk_during_a_save_is_one_line_and_the_rerun_resumes_exactly(tmp_path, text_dir, capsys,
                                                                             monkeypatch):
    """The save of step 4 fails for want of space: one line naming the directory and the fix, exit 2, step 2 intact
    and nothing half-written; the rerun resumes from step 2 and logs the losses of an undisturbed run."""
    import errno

    import lightning.fabric

    extra = {"train.max_steps": "6", "train.save_interval": "2"}
    reference = run_cli(tiny_args(text_dir, tmp_path / "ref", **extra))
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "out"
    original, saves = lightning.fabric.Fabric.save, []

    def save(self, path, state, filter=None):
        saves.append(path)
        if len(saves) == 2:
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, path, state, filter=filter)

    monkeypatch.setattr(lightning.fabric.Fabric, "save", save)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the other runs (OMP_NUM_THREADS=1): the same sums, bit for bit
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(tiny_args(text_dir, out, **extra))
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == (
        f"litgpt: error: [Errno 28] no space left to write {out / 'step-00000004'} (No space left on device); free "
        "some space and rerun the command (it resumes from the last complete checkpoint), or pass another --out_dir")
    assert sorted(p.name for p in out.iterdir()) == ["logs", "step-00000002", "tokenizer"]  # no .step-*.tmp
    assert torch.load(out / "step-00000002" / "lit_model.pth", weights_only=True)["step_count"] == 2

    monkeypatch.setattr(lightning.fabric.Fabric, "save", original)
    resumed = run_cli(tiny_args(text_dir, out, **extra))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {out / 'step-00000002' / 'lit_model.pth'}" in resumed.stdout
    after = logged_losses(out, 1)
    assert after == {step: loss for step, loss in logged_losses(tmp_path / "ref", 0).items() if step > 2}  # bitwise


def test_pretrain_list_prints_every_name_from_name_takes(capsys):
    """`litgpt pretrain list` (upstream's spelling) prints the named configs, one a line, and trains nothing."""
    from litgpt.__main__ import main
    from litgpt.config import Config

    main(["pretrain", "list"])
    names = capsys.readouterr().out.split()
    assert names == Config.names()
    assert {"pythia-160m-mla", "Llama-3.2-1B", "DeepSeek-V2-Lite", "Qwen2.5-0.5B", "SmolLM2-135M"} <= set(names)
    assert all(Config.from_name(name).name == name for name in ("debug-mla", "Qwen2.5-0.5B"))
