"""litgpt benchmark serve: its statistics, and a run against our server (a subprocess) on a tiny checkpoint."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Optional

import httpx
import pytest

from litgpt.benchmark.serve import (
    FAILURES_KEPT,
    ROW_KEYS,
    RequestResult,
    Server,
    benchmark_serve,
    format_table,
    level_row,
    percentile,
    prompt_windows,
    send_ours,
    server_log_name,
    token_gaps,
)
from litgpt.serve.api import ChunkEncoder, error_body, sse
from test_generate import make_checkpoint

ENCODER = ChunkEncoder({"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "m"})


def token_event(text: str) -> bytes:
    """A token chunk as our server streams it."""
    return ENCODER.choice({"index": 0, "text": text, "logprobs": None, "finish_reason": None})


def send_to_stub(reads: list[bytes], status: int = 200, error: Optional[Exception] = None) -> RequestResult:
    """`send_ours` against an in-process stub that answers with `reads` (one network read each), or raises `error`."""
    bodies = []

    async def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        if error is not None:
            raise error

        async def stream():
            for read in reads:
                yield read

        return httpx.Response(status, content=stream(), headers={"content-type": "text/event-stream"})

    async def main() -> RequestResult:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await send_ours(client, "http://stub", [1, 2, 3], 3, 0.0, 7)

    result = asyncio.run(main())
    assert bodies and bodies[0]["prompt"] == [1, 2, 3] and bodies[0]["stream_options"] == {"include_usage": True}
    return result


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
    assert row["failures"] == [{"error": "HTTP 429: full", "tokens": None, "after_s": None}]


def test_level_row_lists_the_first_failures_with_their_tokens_and_time():
    results = [RequestResult(ok=True, ttft_s=0.1, token_times_s=[0.1], output_tokens=1)]
    results += [RequestResult(error=f"ReadError: {i}", tokens_at_failure=i, failed_after_s=0.5 + i / 3000)
                for i in range(FAILURES_KEPT + 2)]
    row = level_row(results, 1.0)
    assert row["failed"] == FAILURES_KEPT + 2
    assert row["failures"] == [{"error": f"ReadError: {i}", "tokens": i, "after_s": round(0.5 + i / 3000, 3)}
                               for i in range(FAILURES_KEPT)]
    assert row["error"] == "ReadError: 0; ReadError: 1; ReadError: 2"  # the notes column as before
    assert level_row(results[:1], 1.0)["failures"] == []


def test_send_ours_counts_a_token_whose_text_is_usage():
    """A token chunk holding `"text": "usage"` is a token, not the usage chunk (it once failed with KeyError)."""
    events = [token_event("the"), token_event("usage"), token_event(" usage"),
              ENCODER.usage({"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}), sse("[DONE]")]
    stream = b"".join(events)
    reads = [stream[:50], stream[50:len(events[0]) + 30], stream[len(events[0]) + 30:]]  # events cut across reads
    result = send_to_stub(reads)
    assert (result.ok, result.error, result.output_tokens) == (True, None, 3)
    assert len(result.token_times_s) == 3 and result.ttft_s == result.token_times_s[0] > 0
    assert (result.tokens_at_failure, result.failed_after_s) == (None, None)


def test_send_ours_fails_a_request_on_an_error_event_with_its_message():
    result = send_to_stub([token_event("a") + token_event("b"),
                           sse(error_body("the request failed: out of pages", "server_error"))])
    assert not result.ok
    assert result.error == "server error: the request failed: out of pages"
    assert result.tokens_at_failure == 2 and len(result.token_times_s) == 2
    assert 0 < result.failed_after_s < 60


def test_send_ours_tells_a_stream_cut_midway_from_a_refused_connection():
    cut = send_to_stub([token_event("a"), token_event("b") + token_event("c")])  # no usage, no [DONE]
    assert (cut.ok, cut.error, cut.tokens_at_failure) == (False, "the stream ended without [DONE]", 3)
    refused = send_to_stub([], error=httpx.ConnectError("refused"))
    assert (refused.ok, refused.error, refused.tokens_at_failure) == (False, "ConnectError: refused", 0)
    assert refused.ttft_s is None and refused.failed_after_s >= 0
    full = send_to_stub([json.dumps(error_body("queue full")).encode()], status=429)
    assert (full.ok, full.error, full.tokens_at_failure) == (False, "HTTP 429: queue full", 0)


def test_server_log_name_is_numbered_and_sanitized(tmp_path):
    assert server_log_name(1, tmp_path / "Llama-3.2-1B") == "server_1_Llama-3.2-1B.log"
    assert server_log_name(2, tmp_path / "my model (v2)", peer=True) == "server_2_upstream-my-model-v2.log"
    assert server_log_name(3, tmp_path / ("x" * 80)) == f"server_3_{'x' * 48}.log"


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
        assert row["failures"] == []
    assert rows[0]["peak_running"] <= 1 and rows[1]["peak_running"] <= 4
    saved = json.loads((out_dir / "results.json").read_text())
    assert saved["rows"] == rows and saved["meta"]["prompt_tokens"] == 24
    assert saved["meta"]["server_logs"] == [{"file": "server_1_checkpoint.log", "tool": "litgpt serve",
                                             "checkpoint": str(checkpoint)}]
    log = (out_dir / "server_1_checkpoint.log").read_text()
    assert "litgpt serve:" in log and "Application startup complete" in log
    assert "Finished server process" in log  # the whole log, up to its stop
    assert (out_dir / "serve.png").stat().st_size > 0
    assert format_table(rows) in (out_dir / "results.md").read_text()
    assert format_table(rows) in capsys.readouterr().out


def test_benchmark_serve_keeps_the_log_of_a_server_that_fails(tmp_path):
    checkpoint = make_checkpoint(tmp_path)
    text = tmp_path / "text.txt"
    text.write_text("The small happy cat saw the big sun. " * 20)
    out_dir = tmp_path / "out"
    rows = benchmark_serve([checkpoint], text, concurrency=[1], num_requests=1, prompt_tokens=8, max_tokens=2,
                           accelerator="cpu", out_dir=out_dir, extra_args=["--no_such_option", "1"])
    assert len(rows) == 1 and rows[0]["error"].startswith("the server exited with status 2")
    meta = json.loads((out_dir / "results.json").read_text())["meta"]
    assert [log["file"] for log in meta["server_logs"]] == ["server_1_checkpoint.log"]
    assert "unrecognized option '--no_such_option'" in (out_dir / "server_1_checkpoint.log").read_text()


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
