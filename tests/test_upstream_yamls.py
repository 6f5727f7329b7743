"""Upstream litgpt 0.5.13's config_hub yamls (tests/data/upstream_yamls: their keys and values) with our commands.

Every key whose concept the commands have takes effect (the Alpaca2k data and its split, data.num_workers, the
optimizer dict, eval.max_new_tokens, train.tie_embeddings, num_nodes, a model_config under its own model_name); a key
they lack is refused by name in one line with exit code 2, never ignored. The runs stop where the commands would load
upstream's hub checkpoints (which do not exist here), or point checkpoint_dir and the data at tiny files made here.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
import yaml

import litgpt.data
import litgpt.generate.base
import litgpt.training
from litgpt.__main__ import main
from litgpt.args import TrainArgs
from litgpt.data import JSON, Alpaca, Alpaca2k
from litgpt.data.sft import SFTDataset
from litgpt.finetune.base import example_index
from litgpt.model import GPT
from litgpt.prompts import PromptStyle
from litgpt.tokenizer import Tokenizer
from test_data_sft import make_base_checkpoint, make_records, write_json_dir

UPSTREAM = Path(__file__).resolve().parent / "data" / "upstream_yamls"
YAMLS = sorted(UPSTREAM.rglob("*.yaml"))
# upstream's pretraining data modules of LitData's prepared SlimPajama/StarCoder streams, which this package lacks
REFUSED = {"pretrain/tinyllama.yaml": "TinyLlama", "pretrain/microllama.yaml": "MicroLlama"}


def name_of(path: Path) -> str:
    return path.relative_to(UPSTREAM).as_posix()


def command_for(path: Path) -> str:
    if path.parent.name == "pretrain":
        return "pretrain"
    return "finetune_full" if path.stem == "full" else "finetune_lora"


def exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def one_line_error(capsys, argv: list[str]) -> str:
    assert exit_code(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("litgpt: error:")]
    assert len(err) == 1, err
    return err[0]


def same(given, printed) -> bool:
    """A yaml value as upstream wrote it and as the command printed it (`6e-5` is text to PyYAML, a number to it)."""
    if isinstance(given, dict):
        return isinstance(printed, dict) and all(k in printed and same(v, printed[k]) for k, v in given.items())
    if isinstance(given, list):
        return isinstance(printed, list) and len(given) == len(printed) and all(map(same, given, printed))
    if isinstance(given, str) and isinstance(printed, float):
        return float(given) == printed
    return given == printed


def test_the_fixtures_are_upstreams_pythia_and_llama_3_2_files():
    """Upstream 0.5.13 ships no Pythia, Qwen2.5 or SmolLM2 fine-tuning yaml; its Pythia file is pretrain/debug."""
    assert [name_of(p) for p in YAMLS] == [
        "llama-3.2-1B/full.yaml", "llama-3.2-1B/lora.yaml", "llama-3.2-1B/qlora.yaml",
        "llama-3.2-3B/full.yaml", "llama-3.2-3B/lora.yaml", "llama-3.2-3B/qlora.yaml",
        "pretrain/debug.yaml", "pretrain/microllama.yaml", "pretrain/tinyllama.yaml", "pretrain/tinystories.yaml"]
    assert yaml.safe_load((UPSTREAM / "pretrain" / "debug.yaml").read_text())["model_name"] == "pythia-14m"


PARSED = [p for p in YAMLS if name_of(p) not in REFUSED]


@pytest.mark.parametrize("path", PARSED, ids=[name_of(p) for p in PARSED])
def test_upstream_yaml_parses_and_keeps_every_value(path, capsys):
    command = command_for(path)
    for word in ([command, "finetune"] if command == "finetune_lora" else [command]):  # upstream's alias too
        assert exit_code([word, "--config", str(path), "--print_config"]) == 0
        printed = yaml.safe_load(capsys.readouterr().out)
        given = yaml.safe_load(path.read_text())
        for key, value in given.items():
            if key == "data" and isinstance(value, str):  # `data: TinyStories`
                assert printed["data"]["class_path"] == f"litgpt.data.{value}"
            else:
                assert same(value, printed[key]), (key, value, printed[key])


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_upstream_data_module_we_lack_is_refused_by_name(name, capsys):
    err = one_line_error(capsys, ["pretrain", "--config", str(UPSTREAM / name)])
    # the message lists the data modules there are: `--data NAME` takes each
    choices = err.split("litgpt.data.base.DataModule subclass (", 1)[1].split(")", 1)[0].split(", ")
    assert {"TextFiles", "TinyStories"} <= set(choices) and err.endswith(f"got '{REFUSED[name]}' (see --help)")
    assert all(issubclass(getattr(litgpt.data, c), litgpt.data.DataModule) for c in choices)
    err = one_line_error(capsys, ["finetune_lora", "--checkpoint_dir", "x", "--data", "LIMA"])  # upstream's too
    assert "--data expects a litgpt.data.sft.SFTDataModule subclass (Alpaca, Alpaca2k, JSON" in err and "'LIMA'" in err


@pytest.mark.parametrize("key, value, named", [
    ("access_token", "hf_abc", "'access_token'"),
    ("log", {"project": "p"}, "'log.project'"),
    ("eval", {"max_new_token": 10}, "'max_new_token'"),
])
def test_an_upstream_key_we_lack_is_refused_by_name(tmp_path, capsys, key, value, named):
    config = yaml.safe_load((UPSTREAM / "llama-3.2-1B" / "lora.yaml").read_text())
    config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
    path = tmp_path / "lora.yaml"
    path.write_text(yaml.safe_dump(config))
    err = one_line_error(capsys, ["finetune_lora", "--config", str(path), "--print_config"])
    assert named in err and ("is not accepted" in err or "does not accept" in err)


@pytest.mark.parametrize("name", ["llama-3.2-1B/full.yaml", "llama-3.2-3B/lora.yaml"])
def test_upstream_yaml_as_written_stops_at_the_missing_download(name, tmp_path, monkeypatch, capsys):
    """Before any work: its checkpoint_dir is where `litgpt download` puts the hub's model, which is not here."""
    monkeypatch.chdir(tmp_path)
    repo_id = yaml.safe_load((UPSTREAM / name).read_text())["checkpoint_dir"].removeprefix("checkpoints/")
    err = one_line_error(capsys, [command_for(UPSTREAM / name), "--config", str(UPSTREAM / name)])
    assert err == (f"litgpt: error: checkpoint directory 'checkpoints/{repo_id}' does not exist; download the model "
                   f"with `litgpt download {repo_id}`, or point at another checkpoint")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------- Alpaca2k
@pytest.fixture(scope="module")
def alpaca2k_dir(tmp_path_factory) -> Path:
    """A local copy of the hub dataset's shape: one file of 2,000 records."""
    root = tmp_path_factory.mktemp("alpaca2k") / "repo"
    root.mkdir()
    (root / "train.json").write_text(json.dumps(make_records(2000, seed=3)))
    return root


def test_alpaca2k_holds_out_upstreams_100_of_2000_records(alpaca2k_dir, tmp_path):
    data = Alpaca2k(repo_id=str(alpaca2k_dir), download_dir=tmp_path / "cache", num_workers=3)
    assert isinstance(data, Alpaca) and data.loader_workers == 3  # upstream's name of the DataLoader workers
    assert (data.val_split_fraction, data.seed, Alpaca2k().repo_id) == (0.05, 42, "mhenrichsen/alpaca_2k_test")
    train, val = data.records()
    records = make_records(2000, seed=3)
    # `datasets`' train_test_split, as upstream splits: a seed-42 permutation, its first 100 held out
    order = np.random.default_rng(42).permutation(2000)
    assert val == [records[i] for i in order[:100]]
    assert train == [records[i] for i in order[100:]]


def test_alpaca2k_refuses_what_it_would_ignore(capsys):
    with pytest.raises(ValueError, match="file_url and file_name are Alpaca's download"):
        Alpaca2k(file_url="https://example.com/a.json")
    with pytest.raises(ValueError, match="num_workers=2 and loader_workers=1 disagree"):
        Alpaca(num_workers=2, loader_workers=1)
    assert Alpaca(num_workers=2).loader_workers == 2


def test_json_data_takes_upstreams_num_workers_as_loader_workers():
    assert JSON(json_path="train.json", val_split_fraction=0.1, num_workers=3).loader_workers == 3
    with pytest.raises(ValueError, match="JSON: num_workers=3 and loader_workers=2 disagree"):
        JSON(json_path="train.json", num_workers=3, loader_workers=2)


# ---------------------------------------------------------------------------------------------------- what reaches Fabric
class Launched(Exception):
    """Raised by the stand-in Fabric at launch: the arguments are recorded, nothing runs."""


@pytest.fixture
def fabric_calls(monkeypatch) -> dict:
    calls: dict = {}

    class RecordingFabric:
        def __init__(self, **kwargs):
            calls["fabric"] = kwargs

        def launch(self, fn, **kwargs):
            calls["launch"] = kwargs
            raise Launched

    monkeypatch.setattr(lightning, "Fabric", RecordingFabric)
    return calls


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny Llama-shaped checkpoint with a 256-token context (upstream's yamls train 512-token sequences)."""
    return make_base_checkpoint(tmp_path_factory.mktemp("base") / "llama", name="tiny-llama-1.1b", n_query_groups=2,
                                intermediate_size=64, block_size=256, padded_vocab_size=320)


def upstream_args(name: str, base: Path, tmp_path: Path, alpaca2k_dir: Path, **extra: str) -> list[str]:
    path = UPSTREAM / name
    args = {"checkpoint_dir": str(base), "out_dir": str(tmp_path / "out"), "precision": "32-true",
            "data.init_args.repo_id": str(alpaca2k_dir), "data.init_args.download_dir": str(tmp_path / "cache"),
            "train.max_seq_length": "256", **extra}
    return [command_for(path), "--config", str(path)] + [f"--{k}={v}" for k, v in args.items()]


@pytest.mark.parametrize("name", ["llama-3.2-1B/full.yaml", "llama-3.2-3B/lora.yaml"])
def test_upstream_finetune_settings_reach_fabric_and_the_run(name, base, tmp_path, alpaca2k_dir, fabric_calls):
    with pytest.raises(Launched):
        main(upstream_args(name, base, tmp_path, alpaca2k_dir, num_nodes="2"))
    assert fabric_calls["fabric"]["num_nodes"] == 2 and fabric_calls["fabric"]["devices"] == 1
    launched = fabric_calls["launch"]
    data = launched["plan"].data
    assert type(data) is Alpaca2k and data.loader_workers == 4 and data.prompt_style == "alpaca"
    assert launched["eval"].max_new_tokens == 100 and launched["train"].tie_embeddings is None
    optimizer = launched["optimizer"].build([torch.nn.Parameter(torch.zeros(1))], torch.device("cpu"))
    weight_decay = 0.1 if name.endswith("full.yaml") else 0.0
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["lr"] == 2e-4 and optimizer.defaults["betas"] == (0.9, 0.95)
    assert optimizer.defaults["weight_decay"] == weight_decay


def test_a_finetune_keeps_its_checkpoints_tying(base, tmp_path, alpaca2k_dir, capsys):
    err = one_line_error(capsys, upstream_args("llama-3.2-1B/lora.yaml", base, tmp_path, alpaca2k_dir,
                                               **{"train.tie_embeddings": "true"}))
    assert "train.tie_embeddings true: a fine-tune keeps the tying of its checkpoint (tie_embeddings: false" in err


def test_upstream_pretrain_settings_reach_fabric_and_the_model(tmp_path, fabric_calls, capsys):
    """tinystories.yaml: its model_config is the model (stories15M is no named config), tied as train says."""
    base = make_base_checkpoint(tmp_path / "tok")  # for its tokenizer
    path = UPSTREAM / "pretrain" / "tinystories.yaml"
    with pytest.raises(Launched):
        main(["pretrain", "--config", str(path), "--tokenizer_dir", str(base), "--out_dir", str(tmp_path / "out"),
              "--precision", "32-true", "--devices", "1", "--num_nodes", "3"])
    assert fabric_calls["fabric"]["num_nodes"] == 3
    config = fabric_calls["launch"]["config"]
    assert (config.name, config.n_layer, config.n_embd, config.intermediate_size) == ("stories15M", 6, 288, 768)
    assert config.tie_embeddings is True  # train.tie_embeddings: true
    model = GPT(config)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert fabric_calls["launch"]["seq_len"] == 256

    debug = UPSTREAM / "pretrain" / "debug.yaml"
    err = one_line_error(capsys, ["pretrain", "--config", str(debug), "--eval.max_new_tokens", "10"])
    assert "eval.max_new_tokens sets the sample a fine-tune generates" in err


# ---------------------------------------------------------------------------------------------------- a real run
def test_upstream_lora_yaml_trains_with_its_workers_and_sample_answer(base, tmp_path, alpaca2k_dir, monkeypatch,
                                                                       capsys):
    """llama-3.2-1B/lora.yaml as written, on the tiny checkpoint and a local Alpaca2k, for 1 step: the DataLoaders
    get its 4 workers, and after the final validation a sample answer of at most eval.max_new_tokens (100) tokens is
    generated for the first validation record's prompt."""
    loaders, generations = [], []
    make_train_loader, generate = litgpt.training.make_train_loader, litgpt.generate.base.generate

    def recording_loader(*args, **kwargs):
        loaders.append(make_train_loader(*args, **kwargs))
        return loaders[-1]

    def recording_generate(model, prompts, max_new_tokens, *args, **kwargs):
        generations.append((prompts, max_new_tokens))
        return generate(model, prompts, max_new_tokens, *args, **kwargs)

    monkeypatch.setattr(litgpt.training, "make_train_loader", recording_loader)
    monkeypatch.setattr(litgpt.generate.base, "generate", recording_generate)
    main(upstream_args("llama-3.2-1B/lora.yaml", base, tmp_path, alpaca2k_dir,
                       **{"train.max_steps": "1", "eval.max_iters": "2"}))
    printed = capsys.readouterr().out
    assert [loader.num_workers for loader in loaders] == [4]
    assert "1,900 training samples of up to 256 tokens" in printed

    tokenizer = Tokenizer(base)
    first_val = Alpaca2k(repo_id=str(alpaca2k_dir), download_dir=tmp_path / "cache").records()[1][0]
    prompt = SFTDataset([first_val], tokenizer, PromptStyle.from_name("alpaca"), 256, mask_prompt=True).samples[0]
    [(prompts, max_new_tokens)] = generations  # one validation: the final one (eval.interval 100 > 1 step)
    assert max_new_tokens == 100
    assert prompts[0].tolist() == prompt[0][: prompt[1]].tolist()
    answer = printed.split("step 1: sample answer to validation record 0:\n", 1)[1]
    assert answer.startswith(tokenizer.decode(prompts[0]))
    assert (tmp_path / "out" / "final" / "lit_model.pth.lora").is_file()


def test_lr_warmup_fraction_sets_the_warmup_of_the_run(tmp_path, capsys):
    """Upstream's train.lr_warmup_fraction: the warmup spans that share of an epoch's optimizer steps (32 samples,
    4 a step: 0.5 is 4 steps), as the logged learning rates show; with lr_warmup_steps also set it is refused."""
    train = TrainArgs(lr_warmup_steps=None, lr_warmup_fraction=0.5, global_batch_size=4, max_steps=3)
    assert train.warmup_steps(32) == 4 and train.warmup_steps(31) == 4 and train.warmup_steps(33) == 5
    base = make_base_checkpoint(tmp_path / "base")
    data = write_json_dir(tmp_path / "data", 32, 8)
    out = tmp_path / "out"
    args = ["finetune_full", str(base), f"--out_dir={out}", "--precision=32-true", "--data=JSON",
            f"--data.json_path={data}", "--data.prompt_style=plain", "--train.global_batch_size=4",
            "--train.micro_batch_size=4", "--train.max_steps=3", "--eval.interval=100", "--eval.max_iters=1",
            "--eval.initial_validation=false", "--eval.final_validation=false", "--optimizer.lr=0.01",
            "--train.lr_warmup_steps=null", "--train.lr_warmup_fraction=0.5"]
    main(args)
    with open(out / "logs" / "csv" / "version_0" / "metrics.csv") as f:
        lrs = {int(r["step"]): float(r["lr"]) for r in csv.DictReader(f) if r.get("lr")}
    assert lrs == pytest.approx({1: 0.01 / 4, 2: 0.02 / 4, 3: 0.03 / 4})
    err = one_line_error(capsys, args[:-2] + ["--train.lr_warmup_steps=10", "--train.lr_warmup_fraction=0.5"])
    assert "train.lr_warmup_fraction (0.5) and train.lr_warmup_steps (10) both set the warmup" in err


def test_example_index_follows_evaluate_example():
    assert example_index("first", 10, seed=5) == 0
    picks = {example_index("random", 10, seed=s) for s in range(50)}
    assert picks == set(range(10))  # every record can be drawn, and the draw depends only on the seed
    assert example_index("random", 10, seed=7) == example_index("random", 10, seed=7)
    assert example_index(3, 10, seed=0) == 3
    with pytest.raises(ValueError, match="eval.evaluate_example 10 is not a validation record index"):
        example_index(10, 10, seed=0)


def test_the_sample_answer_leaves_training_unchanged(tmp_path, capsys):
    """LoRA (with dropout) trained with a sample answer after every validation ends with the weights of the run
    without one, bitwise: the sample draws from the sampler's own stream, not training's random state."""
    base = make_base_checkpoint(tmp_path / "base")
    data = write_json_dir(tmp_path / "data", 32, 8)
    weights = {}
    for max_new_tokens in ("null", "5"):
        out = tmp_path / f"out-{max_new_tokens}"
        main(["finetune_lora", str(base), f"--out_dir={out}", "--precision=32-true", "--data=JSON",
              f"--data.json_path={data}", "--data.prompt_style=plain", "--train.global_batch_size=4",
              "--train.micro_batch_size=2", "--train.max_steps=4", "--eval.interval=2", "--eval.max_iters=1",
              f"--eval.max_new_tokens={max_new_tokens}", "--eval.evaluate_example=random", "--lora_dropout=0.5"])
        weights[max_new_tokens] = torch.load(out / "final" / "lit_model.pth.lora", weights_only=True)["model"]
        printed = capsys.readouterr().out
        assert printed.count("sample answer to validation record") == (0 if max_new_tokens == "null" else 3)
    assert weights["null"].keys() == weights["5"].keys()
    assert all(torch.equal(weights["null"][k], weights["5"][k]) for k in weights["null"])
