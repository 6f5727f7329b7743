"""litgpt benchmark serve: its statistics, and a run against our server (a subprocess) on a tiny checkpoint."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from litgpt.benchmark.serve import (
    ROW_KEYS,
    RequestResult,
    Server,
    benchmark_serve,
    format_table,
    level_row,
    percentile,
    prompt_windows,
    token_gaps,
)
from test_generate import make_checkpoint


def test_percentile_interpolates_between_ranks():
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)


def test_token_gaps_share_the_wait_of_tokens_that_arrive_together():
    assert token_gaps([1.0, 1.3, 1.3, 1.3, 1.5]) == pytest.approx([0.1, 0.1, 0.1, 0.2])
    assert token_gaps([2.0, 2.0, 2.4]) == pytest.approx([0.4])  # the second token came with the first
    assert token_gaps([0.5]) == [] and token_gaps([]) == []


def test_level_row_counts_tokens_and_latencies():
    results = [
        RequestResult(ok=True, ttft_s=0.1, token_times_s=[0.1, 0.2, 0.4], output_tokens=3),
        RequestResult(ok=True, ttft_s=0.3, token_times_s=[0.3, 0.35], output_tokens=2),
        RequestResult(ok=False, error="HTTP 429: full"),
    ]
    row = level_row(results, 2.0, tool="t", model="m", mode="concurrency", level=2)
    assert set(row) == set(ROW_KEYS)
    assert (row["requests"], row["completed"], row["failed"], row["output_tokens"]) == (3, 2, 1, 5)
    assert row["output_tokens_per_s"] == 2.5 and row["requests_per_s"] == 1.0
    assert row["ttft_p50_ms"] == pytest.approx(200.0) and row["ttft_p99_ms"] == pytest.approx(298.0)
    assert row["itl_p50_ms"] == pytest.approx(100.0)  # gaps 100, 200, 50 ms
    assert row["itl_p99_ms"] == pytest.approx(198.0)
    assert row["error"] == "HTTP 429: full"


def test_prompt_windows_have_the_length_asked_and_repeat_a_short_text():
    ids = list(range(10))
    windows = prompt_windows(ids, 25, 6, seed=0)
    assert len(windows) == 6 and all(len(w) == 25 for w in windows)
    assert all(w[i + 1] == (w[i] + 1) % 10 for w in windows for i in range(24))  # consecutive text
    assert prompt_windows(ids, 25, 6, seed=0) == windows
    with pytest.raises(ValueError, match="no tokens"):
        prompt_windows([], 4, 1, seed=0)


def test_benchmark_serve_against_our_server(tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path)
    text = tmp_path / "text.txt"
    text.write_text("The small happy cat saw the big sun. A dog and a cat ran in the park. " * 20)
    out_dir = tmp_path / "out"
    rows = benchmark_serve([checkpoint], text, concurrency=[1, 4], num_requests=8, prompt_tokens=24, max_tokens=5,
                           max_batch_size=4, kv_cache_gib=0.01, accelerator="cpu", out_dir=out_dir)
    assert [(r["mode"], r["level"]) for r in rows] == [("concurrency", 1), ("concurrency", 4)]
    for row in rows:
        assert (row["requests"], row["completed"], row["failed"], row["error"]) == (8, 8, 0, None)
        assert row["output_tokens"] == 8 * 5  # ignore_eos: every request decodes all of max_tokens
        assert row["output_tokens_per_s"] > 0 and row["requests_per_s"] > 0
        assert 0 < row["ttft_p50_ms"] <= row["ttft_p99_ms"]
        assert 0 <= row["itl_p50_ms"] <= row["itl_p99_ms"]
        assert row["peak_memory_gb"] > 0
    assert rows[0]["peak_running"] <= 1 and rows[1]["peak_running"] <= 4
    saved = json.loads((out_dir / "results.json").read_text())
    assert saved["rows"] == rows and saved["meta"]["prompt_tokens"] == 24
    assert (out_dir / "serve.png").stat().st_size > 0
    assert format_table(rows) in (out_dir / "results.md").read_text()
    assert format_table(rows) in capsys.readouterr().out


def test_benchmark_serve_refuses_bad_options(tmp_path):
    checkpoint = make_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="--text_file"):
        benchmark_serve([checkpoint], tmp_path / "missing.txt")
    text = tmp_path / "t.txt"
    text.write_text("some text")
    with pytest.raises(ValueError, match="no levels"):
        benchmark_serve([checkpoint], text, concurrency=[])
    with pytest.raises(ValueError, match="has no lit_model.pth"):
        benchmark_serve([tmp_path], text)


def test_stop_ends_the_processes_a_server_leaves_behind(tmp_path):
    """A server whose main process exits on SIGTERM but leaves a child running (as upstream's LitServe does): stop()
    ends the child too, so no server of an earlier checkpoint holds the device or the CPU."""
    pid_file = tmp_path / "child.pid"
    script = (f"import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', 'import time; "
              f"time.sleep(600)']); open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(600)")
    server = Server([sys.executable, "-c", script], port=0, ours=False)
    deadline = time.monotonic() + 60
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    server.stop()
    assert server.process.returncode is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # killed; reaped by init once it is an orphan
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(child, 9)
        pytest.fail("the server's child outlived stop()")
