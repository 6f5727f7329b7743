"""The `litgpt` command line (litgpt/__main__.py): every command rejects unknown options and typos by name, bare
extra arguments are errors, the first parameter may come bare, and `litgpt train_tokenizer` runs."""

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from litgpt.__main__ import commands, load_command, main, option_names
from test_pretrain import write_stories


def leaf_commands(table=None, words=()):
    """(words, function) for every runnable command in the table, `benchmark attention` included (the table names
    each function by import path; it is imported here)."""
    table = commands() if table is None else table
    for word, node in table.items():
        if isinstance(node, dict):
            yield from leaf_commands(node, (*words, word))
        else:
            yield (*words, word), load_command(node)


COMMANDS = list(leaf_commands())
IDS = [" ".join(words) for words, _ in COMMANDS]


def run_main(capsys, argv: list[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err.strip()


def test_the_table_has_every_command():
    assert set(IDS) == {"pretrain", "train_tokenizer", "download", "generate", "chat", "benchmark attention",
                        "benchmark decode", "benchmark pretrain", "benchmark generate", "compare", "merge_lora",
                        "finetune_lora", "finetune", "finetune_full", "benchmark finetune", "convert_to_mla",
                        "convert_to_litgpt", "convert_from_litgpt", "convert_pretrained_checkpoint", "serve",
                        "benchmark serve", "evaluate", "benchmark cache_loss"}


@pytest.mark.parametrize("words, fn", COMMANDS, ids=IDS)
def test_unknown_option_is_rejected_by_name(capsys, words, fn):
    code, err = run_main(capsys, [*words, "--no_such_option", "3"])
    assert code == 2
    assert err.splitlines() == [
        f"litgpt: error: unrecognized option '--no_such_option' for `litgpt {' '.join(words)}`; "
        f"see `litgpt {' '.join(words)} --help`"
    ]


@pytest.mark.parametrize("words, fn", COMMANDS, ids=IDS)
def test_typo_names_the_closest_option(capsys, words, fn):
    name = max(inspect.signature(fn).parameters, key=len)  # the longest name: its typo has one clear neighbour
    typo = name[:-1] + ("x" if name[-1] != "x" else "y")
    code, err = run_main(capsys, [*words, f"--{typo}", "3"])
    assert code == 2 and len(err.splitlines()) == 1
    assert f"unrecognized option '--{typo}'" in err and f"(did you mean '--{name}'?)" in err, err


def test_nested_typo_names_the_closest_field(capsys):
    code, err = run_main(capsys, ["pretrain", "debug", "--train.max_stepz", "3"])
    assert code == 2 and "(did you mean '--train.max_steps'?)" in err and len(err.splitlines()) == 1


def test_generate_unknown_option_is_not_taken_as_the_prompt(capsys, tmp_path):
    code, err = run_main(capsys, ["generate", str(tmp_path), "--max_tokens", "5"])
    assert code == 2 and "unrecognized option '--max_tokens'" in err and "'--max_new_tokens'" in err


def test_unknown_command_names_the_closest(capsys):
    code, err = run_main(capsys, ["benchmark", "atention"])
    assert code == 2 and "no command 'atention' (did you mean 'attention'?)" in err


def test_extra_bare_argument_is_an_error(capsys):
    code, err = run_main(capsys, ["pretrain", "debug", "extra"])
    assert code == 2 and err.splitlines() == [
        "litgpt: error: unexpected argument 'extra'; options are written --name value (see --help)"
    ]


def test_first_parameter_may_come_bare(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "debug-mla", "--print_config"])
    assert exit_info.value.code == 0 and "model_name: debug-mla" in capsys.readouterr().out


def test_every_option_of_a_dataclass_group_is_known():
    from litgpt.pretrain import setup

    names = option_names(setup)
    assert "max_steps" in names["train"] and "interval" in names["eval"] and names["model_name"] == []
    assert {"config", "print_config", "help"} <= set(names)


@pytest.mark.parametrize("devices", ["abc", "0", "-2", "1,x"])
def test_bad_devices_is_one_line(capsys, tmp_path, devices):
    code, err = run_main(capsys, ["pretrain", "debug", "--out_dir", str(tmp_path), "--train.max_steps", "1",
                                  "--devices", devices])
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("litgpt: error: --devices must be a positive number of devices, -1 (all), 'auto' or GPU "
                          "indices like '0,1', got ") and err.endswith(devices + ("'" if "," in devices or
                                                                                  devices.isalpha() else ""))


def test_train_tokenizer_command_writes_a_tokenizer(tmp_path):
    (tmp_path / "text").mkdir()
    text = write_stories(tmp_path / "text", (2, 1), 20)
    out = tmp_path / "tok"
    result = subprocess.run(
        [sys.executable, "-m", "litgpt", "train_tokenizer", "--data", "TextFiles", "--data.train_data_path",
         str(text / "train"), "--data.cache_dir", str(tmp_path / "cache"), "--out_dir", str(out), "--vocab_size",
         "300"], capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    from litgpt.tokenizer import Tokenizer

    assert Tokenizer(out).vocab_size == 300


def test_train_tokenizer_bad_data_is_one_line(capsys, tmp_path):
    code, err = run_main(capsys, ["train_tokenizer", "--data", "NoSuchData", "--out_dir", str(tmp_path / "t")])
    assert code == 2 and len(err.splitlines()) == 1 and "NoSuchData" in err
    assert not (tmp_path / "t").exists()


AMBIGUOUS_ADAMW = """
import sys, torch
class AdamW(torch.optim.Optimizer):  # as bitsandbytes defines one: a second Optimizer subclass named AdamW
    pass
from litgpt.__main__ import main
for argv in (["--optimizer.lr", "0.0123"], ["--optimizer", "AdamW", "--optimizer.lr", "0.0123"],
             ["--optimizer=AdamW", "--optimizer.lr=0.0123"]):
    try:
        main(["pretrain", "--model_name", "debug", *argv, "--print_config"])
    except SystemExit as e:
        print("EXIT", e.code)
"""


def test_optimizer_names_mean_torch_optim_even_beside_another_adamw():
    """jsonargparse resolves a bare class name among every loaded Optimizer subclass; with a second `AdamW` loaded
    (bitsandbytes has one) the default and `--optimizer AdamW` still mean torch.optim.AdamW."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", AMBIGUOUS_ADAMW], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(root)))
    assert result.stdout.count("EXIT 0") == 3 and "error" not in result.stderr, result.stderr[-1500:]  # --print_config
    assert result.stdout.count("class_path: torch.optim.AdamW") == 3 and result.stdout.count("lr: 0.0123") == 3


def test_the_executable_ends_generate_and_chat_without_teardown_and_nothing_else(monkeypatch):
    """`litgpt generate`/`chat` end with os._exit(0) once they return (their output flushed first); other commands,
    and a command that fails, leave through the interpreter's usual exit."""
    import litgpt.__main__ as entry

    exits: list[int] = []
    monkeypatch.setattr(entry.os, "_exit", exits.append)
    for words, expected in ((["generate"], [0]), (["chat"], [0]), (["benchmark", "generate"], []), (["pretrain"], [])):
        exits.clear()
        monkeypatch.setattr(entry, "main", lambda words=words: words)
        entry.cli()
        assert exits == expected, words

    def failing() -> list[str]:
        raise SystemExit(2)

    exits.clear()
    monkeypatch.setattr(entry, "main", failing)
    with pytest.raises(SystemExit):
        entry.cli()
    assert exits == []


def test_generate_through_the_executable_prints_all_its_output(tmp_path):
    """The fast exit loses nothing: stdout's text and stderr's phases line are both there, and the status is 0."""
    from test_generate import make_checkpoint

    ckpt = make_checkpoint(tmp_path)
    args = [sys.executable, "-m", "litgpt", "generate", str(ckpt), "--prompt", "the cat", "--max_new_tokens", "5",
            "--temperature", "0", "--device", "cpu"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("the cat") and result.stdout.endswith("\n")
    assert result.stderr.rstrip().splitlines()[-1].startswith("litgpt generate: start-up")


# ------------------------------------------------------------------------------------ scripts run as modules
SCRIPTS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "litgpt" / "scripts").glob("*.py")
                 if p.stem != "__init__")


def script(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_runs_through_the_one_line_error_entry_point(name):
    """Each `python -m litgpt.scripts.X` ends in `run_script` or `run_command` (one-line errors, exit 2), and its bad
    option is one line, not a usage page or a traceback."""
    source = (Path(__file__).resolve().parents[1] / "litgpt" / "scripts" / f"{name}.py").read_text()
    main_block = source.split('if __name__ == "__main__":', 1)
    assert len(main_block) == 2 and ("run_script(" in main_block[1] or "run_command(" in main_block[1]), name
    result = script(f"litgpt.scripts.{name}", "--no_such_option", "1")
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "no_such_option" in result.stderr


def test_convert_hf_checkpoint_refusals_are_one_line(tmp_path):
    from litgpt.scripts.convert_hf_checkpoint import SUPPORTED_ARCHITECTURES

    hf = tmp_path / "hf"
    hf.mkdir()
    cases = [
        (None, f"convert_hf_checkpoint: error: {str(hf)!r} has no config.json; point at a Hugging Face model "
               "directory"),
        (b"{bad", f"convert_hf_checkpoint: error: {hf / 'config.json'} is not valid JSON (Expecting property name "
                  "enclosed in double quotes at line 1, column 2); it should be a Hugging Face config.json: "
                  "re-download or fix it"),
        (b'{"a": "\xff"}', f"convert_hf_checkpoint: error: {hf / 'config.json'} is not UTF-8 text (byte 0xff at offset "
                           "7); it should be a Hugging Face config.json: re-download or fix it"),
        (b"[1]", f"convert_hf_checkpoint: error: {hf / 'config.json'} holds a JSON list, not a Hugging Face config "
                 "object; point at a Hugging Face model directory"),
        (b'{"architectures": ["FooForCausalLM"]}', "convert_hf_checkpoint: error: unsupported architecture "
         f"FooForCausalLM; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"),
    ]
    for content, expected in cases:
        if content is not None:
            (hf / "config.json").write_bytes(content)
        result = script("litgpt.scripts.convert_hf_checkpoint", str(hf))
        assert (result.returncode, result.stderr) == (2, expected + "\n")


def test_convert_lit_checkpoint_refusals_are_one_line(tmp_path):
    from test_generate import make_checkpoint

    ckpt = make_checkpoint(tmp_path)  # MLA: no GPT-NeoX equivalent
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    result = script("litgpt.scripts.convert_lit_checkpoint", str(ckpt), str(tmp_path / "hf"), "--architecture",
                    "GPTNeoXForCausalLM")
    assert (result.returncode, result.stderr) == (2, "convert_lit_checkpoint: error: cannot convert 'debug-mla' to "
                                                     "GPTNeoXForCausalLM: it has no equivalent of latent_attention "
                                                     "(MLA)\n")
    result = script("litgpt.scripts.convert_lit_checkpoint", ".", "../checkpoint", cwd=ckpt)
    assert result.returncode == 2 and result.stderr.startswith("convert_lit_checkpoint: error: --output_dir "
                                                               "'../checkpoint' is --checkpoint_dir '.' itself")
    result = script("litgpt.scripts.convert_lit_checkpoint", str(ckpt))
    assert (result.returncode, result.stderr) == (2, "convert_lit_checkpoint: error: the following arguments are "
                                                     "required: output_dir (see --help)\n")
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before


# ------------------------------------------------------------------------------------ outputs never overwrite inputs
def test_convert_to_mla_never_writes_over_its_source(tmp_path, capsys, monkeypatch):
    from test_generate import make_checkpoint

    ckpt = make_checkpoint(tmp_path, "debug")
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    (tmp_path / "link").symlink_to(ckpt)
    monkeypatch.chdir(tmp_path)
    for out, message in ((str(ckpt), f"--out_dir {str(ckpt)!r} is --checkpoint_dir {str(ckpt)!r} itself"),
                         ("link/", "--out_dir 'link' is --checkpoint_dir"),
                         (".", f"--checkpoint_dir {str(ckpt)!r} lies inside --out_dir '.', which the command replaces "
                               "as a whole: it would delete its own input")):
        code, err = run_main(capsys, ["convert_to_mla", str(ckpt), "--out_dir", out, "--kv_lora_rank", "16",
                                      "--qk_rope_head_dim", "8"])
        assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before


# ------------------------------------------------------------------------------------ values of the wrong kind
def test_a_learning_rate_that_is_not_a_finite_number_from_zero_is_one_line_naming_the_option(tmp_path, capsys):
    base = ["pretrain", "debug", "--out_dir", str(tmp_path), "--train.max_steps", "1"]
    for args, shown in ((["--optimizer.lr", "nan"], "nan"), (["--optimizer.init_args.lr", "inf"], "inf"),
                        (["--optimizer", "SGD", "--optimizer.lr", "-1"], "-1.0"), (["--optimizer.lr", ".nan"], "nan")):
        code, err = run_main(capsys, base + args)
        option = args[-2][2:]
        assert code == 2 and err.splitlines()[-1].startswith(
            f"litgpt: error: --{option} must be a finite number >= 0 (e.g. 3e-4), got {shown}"), err
        assert len(err.splitlines()) == 1 and "Union" not in err


def test_a_val_split_fraction_out_of_range_is_one_line_naming_the_option(tmp_path, capsys):
    code, err = run_main(capsys, ["finetune_lora", str(tmp_path), "--data", "JSON", "--data.json_path",
                                  str(tmp_path / "x.json"), "--data.val_split_fraction", "1.5"])
    assert code == 2 and err == ("litgpt: error: --data.val_split_fraction must be in (0, 1), the share of JSON's "
                                 "records held out for validation (e.g. 0.05), got 1.5")


@pytest.mark.parametrize("args, expected", [
    (["--train.max_steps", "abc"], "--train.max_steps expects an integer or null, got 'abc' (see --help)"),
    (["--train.max_time", "nan"], "--train.max_time must be a finite number, got nan (see --help)"),
    (["--eval.interval", "1.5"], "--eval.interval expects an integer, got '1.5' (see --help)"),
    (["--strategy", "foo"], "--strategy expects one of auto, ddp, fsdp, got 'foo' (see --help)"),
    (["--optimizer.betas", "1"], "--optimizer.betas expects a list like [a, b], got '1' (see --help)"),
])
def test_a_value_of_the_wrong_type_is_one_line_naming_the_option_and_what_it_takes(tmp_path, capsys, args, expected):
    code, err = run_main(capsys, ["pretrain", "debug", "--out_dir", str(tmp_path), "--train.max_steps", "1", *args])
    assert (code, err) == (2, "litgpt: error: " + expected)


def test_only_model_config_merges_field_by_field():
    """`--model_config {...}` becomes one option per field (merged into the yaml's); a value that is not a mapping,
    and the mapping options of commands that take their values as they come, pass unchanged."""
    from litgpt.__main__ import expand_mappings
    from litgpt.benchmark.finetune import benchmark_finetune
    from litgpt.pretrain import setup

    assert expand_mappings(setup, ["--model_config", "{n_layer: 2, name: x, latent_attention: {kv_lora_rank: 8}}",
                                   "--seed", "1", "--model_config=null"]) == [
        "--model_config.n_layer=2", "--model_config.name=x", '--model_config.latent_attention={"kv_lora_rank": 8}',
        "--seed", "1", "--model_config=null"]
    assert expand_mappings(benchmark_finetune, ["--lora", "{lora_r: 4}"]) == ["--lora", "{lora_r: 4}"]
