"""Start-up of the `litgpt` command: a command imports only its own module (not Lightning, matplotlib, datasets or
pandas for `litgpt generate` / `litgpt chat`), the help screens still list every command, and `litgpt generate`
reports its phases (start-up, load, first token, decode) in one stderr line per batch.

The import checks run in a fresh interpreter: pytest's own process has Lightning imported already (conftest.py).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import litgpt.utils
from litgpt.__main__ import commands, load_command, load_table, main
from litgpt.generate.cli import FIRST_TOKEN_LABEL, decode_phase, format_phases
from litgpt.utils import process_start_time
from test_generate import make_checkpoint

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("lightning", "lightning_fabric", "pytorch_lightning", "matplotlib", "datasets", "pandas")
# the modules of the other commands: importing them is what a table of functions used to cost every command
OTHER_COMMANDS = ("litgpt.pretrain", "litgpt.scripts.download", "litgpt.scripts.train_tokenizer", "litgpt.benchmark")

PROBE = """
import json, sys
import litgpt.__main__ as m
try:
    m.main(sys.argv[1:])
except SystemExit as e:
    code = e.code
else:
    code = 0
print("MODULES " + json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def run_probe(*argv: str, stdin: str = "") -> tuple[int, set[str], subprocess.CompletedProcess]:
    """Run `litgpt ARGV` through `litgpt.__main__.main` in a fresh interpreter: (exit code, imported modules)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], input=stdin, capture_output=True, text=True,
                            timeout=300, env=env)
    line = next((ln for ln in result.stderr.splitlines() if ln.startswith("MODULES ")), None)
    assert line is not None, result.stderr
    report = json.loads(line[len("MODULES "):])
    return report["code"], set(report["modules"]), result


def imported(modules: set[str], roots: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in roots or any(m == r or m.startswith(r + ".") for r in roots))


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("startup"))


# ------------------------------------------------------------------------------------------------ lazy imports
def test_the_table_names_commands_by_import_path():
    table = commands()
    leaves = [table[w] for w in ("pretrain", "generate", "chat", "download", "train_tokenizer", "compare")]
    leaves += list(table["benchmark"].values())
    assert all(isinstance(v, str) and ":" in v for v in leaves)
    assert load_command(table["generate"]).__module__ == "litgpt.generate.cli"
    assert load_table(table)["benchmark"]["attention"].__name__ == "benchmark_attention"


def test_generate_imports_only_what_it_needs(checkpoint_dir):
    code, modules, result = run_probe("generate", str(checkpoint_dir), "--max_new_tokens", "3", "--device", "cpu",
                                      "--temperature", "0")
    assert code == 0, result.stderr
    assert "litgpt.generate.cli" in modules and "torch" in modules  # the probe sees what the command imported
    assert imported(modules, HEAVY) == []
    assert imported(modules, OTHER_COMMANDS) == [] and "litgpt.generate.chat" not in modules
    # nor torch._dynamo (about a second): the eager CPU step has no use for it, and building the model to load
    # into skips torch's init functions, which import it on the meta device (litgpt.checkpoint.SkipInit)
    assert "torch._dynamo" not in modules


OPS_PROBE = """
import sys, torch
from litgpt.kernels._ops import define_op
from litgpt.kernels.linear import _gemv_op
from litgpt.kernels.decode_attention import _decode_attention_op, _mla_cache_write_op
assert all(isinstance(op, torch._ops.OpOverload) for op in (_gemv_op, _decode_attention_op, _mla_cache_write_op))
x, w = torch.empty(1, 8, device="meta"), torch.empty(4, 8, device="meta")
assert _gemv_op(x, w, None, None, None, "layer", 1e-5, None).shape == (1, 4)
q, kv, pos = torch.empty(2, 3, 1, 48, device="meta"), torch.empty(2, 9, 48, device="meta"), torch.empty(2, 1)
assert _decode_attention_op(q, kv, kv, pos, 32, 32, 0.1, True).shape == (2, 3, 1, 32)
probe = define_op("startup_probe", "(Tensor x) -> Tensor", lambda x: x + 1, lambda x: torch.empty_like(x))
assert probe(torch.zeros(3)).tolist() == [1.0, 1.0, 1.0]  # a real (CPU) kernel call through the dispatcher
print("DYNAMO", "torch._dynamo" in sys.modules)
if sys.argv[1:] == ["custom_op"]:  # the probe sees the import that custom_op's first call makes
    op = torch.library.custom_op("probe::add", lambda x: x + 1, mutates_args=(), schema="(Tensor x) -> Tensor")
    op(torch.zeros(3))
    print("CUSTOM_OP DYNAMO", "torch._dynamo" in sys.modules)
"""


def test_calling_the_kernel_ops_does_not_import_dynamo():
    """`torch.library.custom_op` imports torch._dynamo at an op's first call (1-5 s inside the first decode step on
    an H200); the ops are registered with the dispatcher directly (`litgpt.kernels._ops`)."""
    result = subprocess.run([sys.executable, "-c", OPS_PROBE, "custom_op"], capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr
    assert "DYNAMO False" in result.stdout and "CUSTOM_OP DYNAMO True" in result.stdout


@pytest.mark.cuda
def test_cuda_graph_generate_does_not_import_dynamo(checkpoint_dir):
    code, modules, result = run_probe("generate", str(checkpoint_dir), "--max_new_tokens", "20", "--device", "cuda",
                                      "--temperature", "0")
    assert code == 0, result.stderr
    assert "torch._dynamo" not in modules and "sympy" not in modules


def test_chat_imports_only_what_it_needs(checkpoint_dir):
    code, modules, result = run_probe("chat", str(checkpoint_dir), "--device", "cpu", stdin="")  # EOF: quits
    assert code == 0, result.stderr
    assert "litgpt.generate.chat" in modules
    assert imported(modules, HEAVY) == []
    assert imported(modules, OTHER_COMMANDS) == [] and "litgpt.generate.cli" not in modules


def test_generate_help_imports_only_generate():
    code, modules, result = run_probe("generate", "--help")
    assert code == 0 and "usage:" in result.stdout and "--checkpoint_dir" in result.stdout
    assert imported(modules, HEAVY + OTHER_COMMANDS) == [] and "litgpt.generate.chat" not in modules


def test_top_level_help_imports_every_command():
    """The probe is not blind: `litgpt --help` lists every command, so it imports every command's module."""
    code, modules, result = run_probe("--help")
    assert code == 0
    assert {"litgpt.pretrain", "litgpt.benchmark.attention", "litgpt.generate.chat"} <= modules


# ------------------------------------------------------------------------------------------------ help screens
def first_words(fn, n: int = 3) -> str:
    return " ".join(inspect.getdoc(fn).split()[:n])


def help_text(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # jsonargparse wraps the descriptions


def test_help_lists_every_command_with_its_description(capsys):
    table = load_table(commands())
    text = help_text(capsys, ["--help"])
    for word, node in table.items():
        assert f" {word} " in text
        if callable(node):
            assert first_words(node) in text, word
    text = help_text(capsys, ["benchmark", "--help"])
    for word, fn in table["benchmark"].items():
        assert f" {word} " in text and first_words(fn) in text, word


def test_command_help_keeps_the_subcommand_prog(capsys):
    """`litgpt generate --help` reads `<prog> [options] generate ...`, `benchmark decode` likewise."""
    assert "[options] generate [--config CONFIG] --checkpoint_dir" in help_text(capsys, ["generate", "--help"])
    assert "[options] benchmark [options] decode" in help_text(capsys, ["benchmark", "decode", "--help"])


# ------------------------------------------------------------------------------------------------ process start
def test_process_start_time_is_the_start_of_the_process():
    script = "import time; time.sleep(0.5); from litgpt.utils import process_start_time; " \
             "print(time.time() - process_start_time())"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    age = float(result.stdout)
    if sys.platform.startswith("linux"):
        assert 0.5 <= age < 60  # the sleep before litgpt was imported counts
    else:
        assert 0 <= age < 60
    assert process_start_time() <= litgpt.utils._IMPORTED_AT <= time.time()


def test_process_start_time_falls_back_to_the_import_of_litgpt_utils(monkeypatch):
    """Without /proc: litgpt's first import, litgpt.utils' (the package imports it before litgpt.__main__ runs, so a
    later time, like litgpt.__main__'s import, would put the start after an import of this very process)."""
    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(litgpt.utils, "open", no_proc, raising=False)
    assert process_start_time() == litgpt.utils._IMPORTED_AT


# ------------------------------------------------------------------------------------------------ phases line
STATS = dict(time_to_first_token_s=0.021, total_s=0.372, decode_s=0.351, new_tokens=1000, batch=1, decode_tokens_per_s=999 / 0.351,
             peak_memory_bytes=412_000_000, peak_memory_kind="CUDA allocated", kv_cache_bytes=7_080_000, prepare_s=0.052)


def test_phases_line_format():
    assert format_phases(STATS, 0.812, 0.403) == (
        f"litgpt generate: start-up 0.812 s, load 0.403 s, prepare 0.052 s, {FIRST_TOKEN_LABEL} 0.021 s, decode 999 "
        "tokens in 0.351 s "
        "(2,846.2 tokens/s, batch 1); peak memory 0.412 GB (CUDA allocated); KV cache 7.08 MB"
    )


def test_decode_phase_counts_the_tokens_the_rate_counts():
    # batch 4, 9 decode steps after the first token, one row stopped early (new_tokens counts kept tokens only)
    stats = dict(STATS, batch=4, new_tokens=37, time_to_first_token_s=0.5, total_s=2.0, decode_s=1.5,
                 decode_tokens_per_s=36 / 1.5)
    assert decode_phase(stats) == (36, 1.5)
    assert decode_phase(dict(STATS, total_s=0.021, decode_s=0.0, decode_tokens_per_s=0.0)) == (0, 0.0)  # no decode
    # a step captured at its first call after the first token: its 0.25 s is prepare's, not decode's
    captured = dict(STATS, batch=1, time_to_first_token_s=0.5, total_s=2.25, decode_s=1.5, decode_tokens_per_s=30 / 1.5)
    assert decode_phase(captured) == (30, 1.5)


PHASES = re.compile(
    rf"^litgpt generate: start-up (\d+\.\d{{3}}) s, load (\d+\.\d{{3}}) s, prepare \d+\.\d{{3}} s, "
    rf"{FIRST_TOKEN_LABEL} (\d+\.\d{{3}}) s, "
    r"decode (\d+) tokens in (\d+\.\d{3}) s \(([\d,]+\.\d) tokens/s, batch (\d+)\); "
    r"peak memory (\d+\.\d{3}) GB \(([^)]+)\); KV cache (\d+\.\d{2}) MB$"
)


def test_generate_reports_its_phases_once_per_batch(checkpoint_dir):
    """Three samples in batches of two: two lines; start-up counts from the process start (a sleep before the
    command started is in it), start-up and load are on the first line only."""
    script = ("import sys, time; time.sleep(0.5); from litgpt.__main__ import main; "
              "main(sys.argv[1:])")
    args = ["generate", str(checkpoint_dir), "--prompt", "The cat", "--max_new_tokens", "6", "--device", "cpu",
            "--num_samples", "3", "--batch_size", "2", "--temperature", "0"]
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [PHASES.match(line) for line in result.stderr.splitlines() if line.startswith("litgpt generate:")]
    assert len(lines) == 2 and all(lines), result.stderr
    first, later = lines
    assert float(first.group(1)) >= (0.5 if sys.platform.startswith("linux") else 0.0)
    assert float(first.group(2)) > 0
    assert later.group(1) == later.group(2) == "0.000"
    assert [m.group(7) for m in lines] == ["2", "1"]
    for m in lines:
        batch, tokens = int(m.group(7)), int(m.group(4))
        assert tokens % batch == 0 and tokens <= batch * 5  # the tokens after each row's first, times the batch


def test_importing_litgpt_does_not_import_the_compiler():
    """torch._dynamo costs about a second to import: it loads when something is compiled, not with litgpt."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    script = "import sys, litgpt, litgpt.generate.cli; print('torch._dynamo' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
