"""`litgpt benchmark generate`: the real commands as subprocesses on a tiny CPU checkpoint, the parsers, the peers."""

import json
import sys
import textwrap
from pathlib import Path

import pytest

from litgpt.benchmark.generate import (
    benchmark_generate,
    format_table,
    parse_chat_turns,
    parse_generate_stats,
    parse_upstream_stats,
    run_timed,
)
from test_generate import make_checkpoint

CURRENT = ("litgpt generate: start-up 0.812 s, load 0.403 s, prepare 0.052 s, first token 0.021 s, decode 999 tokens "
           "in 0.351 s (2,846.2 tokens/s, batch 1); peak memory 0.412 GB (CUDA allocated); KV cache 7.08 MB")
OLDER = ("time to first token 4.5 ms; 60 tokens in 0.14 s: decode 441.5 tokens/s (batch 1); peak memory 0.412 GB "
         "(CUDA allocated); KV cache 7.08 MB")


# ------------------------------------------------------------------------------------------------ parsers
def test_parse_current_stats_line():
    stats = parse_generate_stats("Seed set to 1234\n" + CURRENT + "\n")
    assert stats["format"] == "current" and stats["stats_lines"] == 1
    assert stats["start_up_s"] == 0.812 and stats["load_s"] == 0.403 and stats["first_token_s"] == 0.021
    assert stats["prepare_s"] == 0.052
    assert stats["decode_tokens"] == 999 and stats["decode_s"] == 0.351 and stats["decode_tokens_per_s"] == 2846.2
    assert stats["batch"] == 1 and stats["peak_memory_gb"] == 0.412 and stats["kv_cache_mb"] == 7.08
    assert stats["peak_memory_kind"] == "CUDA allocated"


def test_parse_current_stats_aggregates_lines_and_tolerates_new_fields():
    second = (CURRENT.replace("start-up 0.812 s, ", "")
              .replace("decode 999 tokens in 0.351 s", "decode 1,001 tokens in 0.649 s")
              .replace("0.412 GB", "0.5 GB").replace("first token", "prefill 3 ms, first token"))
    stats = parse_generate_stats(CURRENT + "\n" + second + "\n")
    assert stats["stats_lines"] == 2 and stats["first_token_s"] == 0.021 and stats["start_up_s"] == 0.812
    assert stats["decode_tokens"] == 2000 and stats["decode_s"] == pytest.approx(1.0)
    assert stats["decode_tokens_per_s"] == pytest.approx(2000.0) and stats["peak_memory_gb"] == 0.5


def test_parse_current_stats_line_with_time_to_first_token_label():
    stats = parse_generate_stats(CURRENT.replace("first token", "time to first token"))
    assert stats["format"] == "current" and stats["first_token_s"] == 0.021 and stats["decode_tokens"] == 999


def test_parse_older_stats_line():
    stats = parse_generate_stats(OLDER)
    assert stats["format"] == "older" and stats["start_up_s"] is None and stats["load_s"] is None
    assert stats["first_token_s"] == pytest.approx(0.0045) and stats["new_tokens"] == 60
    assert stats["decode_tokens"] == 59 and stats["decode_s"] == pytest.approx(0.14 - 0.0045)
    assert stats["decode_tokens_per_s"] == 441.5 and stats["peak_memory_gb"] == 0.412 and stats["batch"] == 1
    batched = parse_generate_stats(OLDER.replace("60 tokens", "480 tokens").replace("batch 1", "batch 8"))
    assert batched["decode_tokens"] == 472 and batched["batch"] == 8
    assert parse_generate_stats("Traceback (most recent call last):\nValueError: nope\n") is None


def test_parse_chat_turns_plain_and_extended():
    stderr = ("Chat: type a message and press Enter; an empty line or Ctrl-D quits.\n"
              "[200 tokens in 0.41 s, 215 in context]\n[context full: starting a new conversation]\n"
              "[5 tokens in 0.01 s, first token 0.002 s, 1,137.6 tokens/s, 6 in context]\n")
    first, second = parse_chat_turns(stderr)
    assert first == {"tokens": 200, "seconds": 0.41, "context": 215, "first_token_s": None, "tokens_per_s": None}
    assert second == {"tokens": 5, "seconds": 0.01, "context": 6, "first_token_s": 0.002, "tokens_per_s": 1137.6}
    assert parse_chat_turns("no turns here\n") == []


def test_parse_upstream_stats():
    stderr = ("Loading model '/ckpt/lit_model.pth' with {...}\nTime to instantiate model: 0.05 seconds.\n"
              "Time to load the model weights: 0.35 seconds.\nSeed set to 1234\n"
              "Time for inference 1: 4.12 sec total, 24.27 tokens/sec\nMemory used: 0.35 GB\n")
    stats = parse_upstream_stats(stderr)
    assert stats["generate_s"] == 4.12 and stats["tokens_per_s"] == pytest.approx(24.27)
    assert stats["new_tokens"] == 100 and stats["samples"] == 1
    assert stats["load_s"] == pytest.approx(0.40) and stats["peak_memory_gb"] == 0.35
    two = parse_upstream_stats("Time for inference 1: 1.00 sec total, 10.00 tokens/sec\n"
                               "Time for inference 2: 3.00 sec total, 30.00 tokens/sec\n")
    assert two["samples"] == 2 and two["tokens_per_s"] == pytest.approx(25.0) and two["peak_memory_gb"] is None
    assert parse_upstream_stats("Memory used: 0.35 GB\n") is None


def test_run_timed_timestamps_stdout_and_types_after_each_prompt():
    script = textwrap.dedent("""
        import sys, time
        sys.stdout.write("abc"); sys.stdout.flush(); time.sleep(0.3); sys.stdout.write("def\\n"); sys.stdout.flush()
        for _ in range(2):
            sys.stdout.write(">> Prompt: "); sys.stdout.flush()
            sys.stdout.write("got " + sys.stdin.readline()); sys.stdout.flush()
        sys.stderr.write("done\\n")
    """)
    timed = run_timed([sys.executable, "-c", script], lines=["one", "two"])
    assert timed.returncode == 0 and timed.error() is None and timed.stderr == "done\n"
    assert timed.stdout == b"abcdef\n>> Prompt: got one\n>> Prompt: got two\n"
    assert timed.time_at(3) - timed.time_at(0) >= 0.25 and timed.time_at(len(timed.stdout)) is None
    assert len(timed.sent) == 2 and timed.wall_s >= timed.sent[-1] > timed.sent[0] > 0
    failed = run_timed([sys.executable, "-c", "import sys; sys.exit('litgpt: error: bad')"])
    assert failed.returncode == 1 and failed.error() == "litgpt: error: bad"


def test_format_table_marks_skipped_and_sampled_rows():
    rows = [dict(tool="HF generate", model="m", new_tokens=5, batch=8, temperature=0.8, wall_s=None, start_up_s=None,
                 load_s=None, first_printed_token_s=None, first_token_s=None, decode_tokens_per_s=None,
                 peak_memory_gb=None, skipped="no HF layout | here", error=None, note=None)]
    table = format_table(rows).splitlines()
    assert len(table) == 3 and table[0].startswith("| tool | model | new tokens | batch | wall s |")
    assert "sampled T=0.8; skipped: no HF layout / here" in table[2]


# ------------------------------------------------------------------------------------------------ the benchmark
FAKE_PEER = """#!{python}
import json, os, sys
if sys.argv[1:2] == ["-c"]:  # the version query
    print("0.5.13")
    sys.exit(0)
args = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(json.dumps(dict(argv=args, cwd=os.getcwd(), pythonpath=os.environ.get("PYTHONPATH"))) + "\\n")
prompt, n = args[args.index("--prompt") + 1], int(args[args.index("--max_new_tokens") + 1])
print({{"checkpoint_dir": args[3], "prompt": prompt}})  # upstream pprints its arguments first
sys.stderr.write("Time to instantiate model: 0.01 seconds.\\nTime to load the model weights: 0.02 seconds.\\n")
print(prompt + " hay and grass")
sys.stderr.write(f"Time for inference 1: 0.50 sec total, {{n / 0.5:.2f}} tokens/sec\\nMemory used: 0.35 GB\\n")
"""


def write_fake_peer(directory: Path) -> tuple[Path, Path]:
    """An executable that answers like upstream litgpt 0.5.13's `litgpt generate`, logging how it was called."""
    log, peer = directory / "peer_calls.jsonl", directory / "peer_python"
    peer.write_text(FAKE_PEER.format(python=sys.executable, log=str(log)))
    peer.chmod(0o755)
    return peer, log


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One benchmark: debug-mla, 5 new tokens at batches 1 and 2, chat, the fake peer, no HF."""
    tmp = tmp_path_factory.mktemp("benchmark_generate")
    checkpoint_dir = make_checkpoint(tmp)
    peer, log = write_fake_peer(tmp)
    out_dir = tmp / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
        rows = benchmark_generate(checkpoint_dir, new_tokens=[5], batches=[1, 2], chat_tokens=5, peer_python=peer,
                                  hf=False, device="cpu", out_dir=out_dir, warmup=False)
    return dict(rows=rows, out_dir=out_dir, log=log, checkpoint_dir=checkpoint_dir)


def test_rows_of_our_generate_have_wall_times_and_parsed_stats(run):
    ours = [r for r in run["rows"] if r["tool"] == "litgpt generate"]
    assert [(r["new_tokens"], r["batch"]) for r in ours] == [(5, 1), (5, 2)]
    for r in ours:
        assert r["error"] is None and r["model"] == "debug-mla"
        assert r["wall_s"] > 0 and r["decode_tokens_per_s"] > 0 and r["first_token_s"] > 0
        assert 0 < r["first_printed_token_s"] < r["wall_s"] and r["peak_memory_gb"] > 0
    assert ours[0]["temperature"] == 0.0 and ours[1]["temperature"] == 0.8  # batch 1 greedy, larger sampled
    assert "--num_samples 2 --batch_size 2" in ours[1]["command"] and "--num_samples" not in ours[0]["command"]


def test_chat_rows_per_turn(run):
    turns = [r for r in run["rows"] if r["tool"].startswith("litgpt chat")]
    assert [r["turn"] for r in turns] == [1, 2]
    for r in turns:
        assert r["error"] is None and r["new_tokens"] > 0 and r["turn_s"] >= 0 and r["decode_tokens_per_s"] > 0
        assert 0 < r["first_printed_token_s"] <= r["wall_s"] < r["process_wall_s"]
    assert "0.5 s target" in turns[1]["note"]


def test_fake_peer_is_parsed_and_runs_without_our_pythonpath(run):
    peer = [r for r in run["rows"] if r["tool"].startswith("upstream litgpt generate")]
    assert [r["tool"] for r in peer] == ["upstream litgpt generate 0.5.13"] * 2
    done, skipped = peer
    assert done["error"] is None and done["batch"] == 1 and done["decode_tokens_per_s"] == 10.0
    assert done["load_s"] == pytest.approx(0.03) and done["peak_memory_gb"] == 0.35 and done["wall_s"] > 0
    assert done["first_printed_token_s"] is not None
    assert skipped["batch"] == 2 and "batch_size" in skipped["skipped"]
    (call,) = [json.loads(line) for line in run["log"].read_text().splitlines()]
    assert call["pythonpath"] is None and Path(call["cwd"]).resolve() != Path.cwd().resolve()
    assert call["argv"][:4] == ["-m", "litgpt", "generate", str(run["checkpoint_dir"].resolve())]
    assert call["argv"][call["argv"].index("--temperature") + 1] == "0.0"


def test_peers_run_only_their_lengths(tmp_path):
    checkpoint_dir = make_checkpoint(tmp_path)
    peer, log = write_fake_peer(tmp_path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
        rows = benchmark_generate(checkpoint_dir, new_tokens=[3, 4], batches=[1], chat=False, peer_python=peer,
                                  hf=False, device="cpu", out_dir=tmp_path / "out", warmup=False, peer_new_tokens=[4])
    assert [(r["tool"].split()[0], r["new_tokens"]) for r in rows] == [("litgpt", 3), ("litgpt", 4), ("upstream", 4)]
    (call,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert call["argv"][call["argv"].index("--max_new_tokens") + 1] == "4"


def test_results_files(run):
    results = json.loads((run["out_dir"] / "results.json").read_text())
    assert results["rows"] == json.loads(json.dumps(run["rows"]))
    meta = results["meta"]
    assert meta["device"] == "cpu" and meta["torch"] and meta["command_line"] and meta["date"]
    assert meta["checkpoint"] == str(run["checkpoint_dir"].resolve()) and meta["peer_litgpt"] == "0.5.13"
    md = (run["out_dir"] / "results.md").read_text()
    assert ("| tool | model | new tokens | batch | wall s | start-up s | load s | prepare s | first printed token s "
            "(parent) |") in md
    assert md.count("| litgpt generate | debug-mla |") == 2 and md.count("| litgpt chat (turn") == 2


def test_hf_generate_on_converted_neox_checkpoint(tmp_path):
    checkpoint_dir = make_checkpoint(tmp_path, "debug")  # GPT-NeoX layout: our converter writes GPTNeoXForCausalLM
    rows = benchmark_generate(checkpoint_dir, new_tokens=[5], batches=[1], chat=False, hf=True, device="cpu",
                              out_dir=tmp_path / "out", warmup=False)
    ours, hf = rows
    assert ours["tool"] == "litgpt generate" and ours["error"] is None
    assert hf["tool"] == "HF generate" and hf["error"] is None and hf["skipped"] is None
    assert hf["wall_s"] > 0 and hf["decode_tokens_per_s"] > 0 and hf["first_token_s"] > 0 and hf["decode_tokens"] == 4
    assert (tmp_path / "out" / "hf" / "config.json").is_file()


def test_hf_is_skipped_with_the_converters_reason(tmp_path):
    checkpoint_dir = make_checkpoint(tmp_path, "debug-mla")  # MLA with parallel residual: no HF layout
    rows = benchmark_generate(checkpoint_dir, new_tokens=[5], batches=[1], chat=False, hf=True, device="cpu",
                              out_dir=tmp_path / "out", extra_args=["--no_such_option", "1"])
    ours, hf = rows  # the warm-up run adds no row
    assert ours["error"].startswith("litgpt: error: unrecognized option '--no_such_option'")  # recorded, not raised
    assert hf["skipped"].startswith("convert_lit_checkpoint: error: cannot convert 'debug-mla' to DeepseekV3ForCausalLM")
    assert "\n" not in hf["skipped"] and hf["wall_s"] is None
    meta = json.loads((tmp_path / "out" / "results.json").read_text())["meta"]
    assert meta["warmup"] is True and len(meta["warmup_s"]) == 1 and meta["hf_skipped"] == hf["skipped"]


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(checkpoint_dir="missing"), "is not a directory"),
        (dict(remove="lit_model.pth"), "has no lit_model.pth"),
        (dict(remove="tokenizer.json"), "has no tokenizer.json or tokenizer.model"),
        (dict(new_tokens=[0]), "new_tokens must be a non-empty list of positive integers"),
        (dict(batches=[]), "batches must be a non-empty list of positive integers"),
        (dict(temperature=-1.0), "temperature must be >= 0"),
        (dict(peer_python="not_executable"), "is not an executable file"),
        (dict(device="tpu"), "device must be"),
        (dict(new_tokens=[5], peer_new_tokens=[7]), "must be a subset of new_tokens"),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path, kwargs, match):
    checkpoint_dir = tmp_path / "checkpoint"
    checkpoint_dir.mkdir()
    for name in ("lit_model.pth", "model_config.yaml", "tokenizer.json"):
        (checkpoint_dir / name).write_text("x")
    if "remove" in kwargs:
        (checkpoint_dir / kwargs.pop("remove")).unlink()
    if kwargs.get("checkpoint_dir") == "missing":
        kwargs["checkpoint_dir"] = tmp_path / "missing"
    if kwargs.get("peer_python") == "not_executable":
        kwargs["peer_python"] = tmp_path / "python"
        kwargs["peer_python"].write_text("")
    args = {"checkpoint_dir": checkpoint_dir, "out_dir": tmp_path / "out", **kwargs}
    with pytest.raises(ValueError, match=match) as error:
        benchmark_generate(**args)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()  # nothing ran


def test_jsonargparse_reads_the_signature(tmp_path):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_function_arguments(benchmark_generate)
    cfg = parser.parse_args(["--checkpoint_dir", str(tmp_path), "--new_tokens", "[5, 7]", "--batches", "[1]",
                             "--peer_python", "/usr/bin/python3", "--hf", "false",
                             "--extra_args", '[--compile, "true"]', "--warmup", "false"])
    assert cfg.new_tokens == [5, 7] and cfg.batches == [1] and str(cfg.peer_python) == "/usr/bin/python3"
    assert cfg.hf is False and cfg.temperature is None and cfg.extra_args == ["--compile", "true"]
    assert cfg.warmup is False
    assert "sampled" in parser.format_help()


def test_command_line_once_registered(tmp_path, monkeypatch, capsys):
    """With `"generate": benchmark_generate` in the table's "benchmark" group, a bad checkpoint is one stderr line."""
    import litgpt.__main__ as cli

    table = cli.commands()
    if "generate" not in table["benchmark"]:  # not registered yet: register it for this test
        table["benchmark"]["generate"] = benchmark_generate
        monkeypatch.setattr(cli, "commands", lambda: table)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["benchmark", "generate", str(tmp_path / "missing"), "--new_tokens", "[5]", "--hf", "false"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"litgpt: error: checkpoint_dir {str(tmp_path / 'missing')!r} is not a directory\n"
