"""`litgpt benchmark serve`: start a server, drive it with streamed requests, tabulate what a client sees.

Each checkpoint is served in turn by `python -m litgpt serve CKPT` (ours, on a free port, with the same
--max_batch_size and --kv_cache_gib for every checkpoint), and, with `--peer_python`, upstream litgpt's
`litgpt serve CKPT --stream true` from that venv on `--peer_checkpoint_dir` (its LitServe endpoint `/predict`, which
returns the text of one request at a time). The benchmark waits for the server's /health, sends a few untimed
warm-up requests, then, for each level:

- concurrency C: `num_requests` requests (default 4 x C, at least 8), C in flight at any time;
- request rate R (`--request_rate`): `num_requests` requests whose start times are a Poisson process of rate R/s.

Prompts are windows of `prompt_tokens` tokens of a local text file (tokenized with the checkpoint's tokenizer; request
i starts at a different offset; the text repeats where it is shorter), sent to our server as token ids and to the
peer as their text; each asks for `max_tokens` new tokens (ours with `ignore_eos`, so every request decodes them all).

Measured per level, as the client sees it: output tokens/s (every completed request's new tokens, over the level's
wall time), requests/s, time to first token (send to the first streamed token) p50/p99, inter-token latency (the
gaps between consecutive streamed tokens, over all requests; `token_gaps`) p50/p99, and, polled from our server's
/health every 0.05 s, the most sequences running at once and the device's peak memory. Ours counts tokens from the
response's usage; the peer's are counted by tokenizing its text. results.json (rows and meta), results.md (the table)
and serve.png (the plots) are written to out_dir after every level; each row's `failures` lists the first few failed
requests (error, tokens received, seconds after the send). Each server's output goes to out_dir as it runs
(`server_<n>_<checkpoint>.log`, named in the meta's `server_logs`).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from litgpt.benchmark.generate import git_commit
from litgpt.utils import atomic_write

TOOL_OURS, TOOL_UPSTREAM = "litgpt serve", "upstream litgpt serve"
HEALTH_POLL_S = 0.05
WARMUP_REQUESTS = 4
CLIENT_KEEPALIVE_S = 1.0  # the client's keep-alive expiry, below every server's timeout
FAILURES_KEPT = 5  # the failed requests a level's row describes one by one
ROW_KEYS = ("tool", "model", "checkpoint", "mode", "level", "requests", "completed", "failed", "prompt_tokens",
            "max_tokens", "wall_s", "output_tokens", "output_tokens_per_s", "requests_per_s", "ttft_p50_ms",
            "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "peak_running", "peak_memory_gb", "error", "failures")


# ---------------------------------------------------------------------------------------------------- statistics
def percentile(values: list[float], q: float) -> Optional[float]:
    """The q-th percentile (0-100) with linear interpolation between ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class RequestResult:
    """One request as the client saw it (seconds from its send)."""

    ok: bool = False
    ttft_s: Optional[float] = None
    token_times_s: list[float] = field(default_factory=list)  # arrival of each streamed token chunk
    output_tokens: int = 0
    error: Optional[str] = None
    tokens_at_failure: Optional[int] = None  # token chunks received before it failed
    failed_after_s: Optional[float] = None  # when it failed

    def fail(self, message: str, t0: float) -> None:
        """Mark the request failed with `message`, now (t0: its send, on `time.perf_counter`)."""
        self.ok, self.error = False, message
        self.tokens_at_failure = len(self.token_times_s)
        self.failed_after_s = time.perf_counter() - t0


def token_gaps(times: list[float]) -> list[float]:
    """Inter-token latencies from token arrival times: a read that brings k tokens after waiting g since the last
    read counts k gaps of g / k (a server that falls behind sends several tokens at once; their wait is shared, not
    one long gap and k - 1 of zero). Tokens that came with the first one have no wait of their own to count."""
    reads: list[list] = []  # [arrival time, tokens], in order
    for t in times:
        if reads and reads[-1][0] == t:
            reads[-1][1] += 1
        else:
            reads.append([t, 1])
    return [(t - before) / k for (before, _), (t, k) in zip(reads, reads[1:]) for _ in range(k)]


def level_row(results: list[RequestResult], wall_s: float, **base: Any) -> dict:
    """The table row of one level from its requests; its `failures` tell the first few failed requests apart (a
    refused connection has no tokens; a stream cut midway has some): error, tokens received, seconds after the
    send."""
    done = [r for r in results if r.ok]
    gaps = [gap for r in done for gap in token_gaps(r.token_times_s)]
    ttfts = [r.ttft_s for r in done if r.ttft_s is not None]
    tokens = sum(r.output_tokens for r in done)
    errors = sorted({r.error for r in results if r.error})
    failures = [{"error": r.error, "tokens": r.tokens_at_failure,
                 "after_s": None if r.failed_after_s is None else round(r.failed_after_s, 3)}
                for r in results if not r.ok][:FAILURES_KEPT]

    def ms(value: Optional[float]) -> Optional[float]:
        return None if value is None else round(1000 * value, 3)

    row = {key: None for key in ROW_KEYS}
    row.update(base)
    row.update(requests=len(results), completed=len(done), failed=len(results) - len(done), wall_s=round(wall_s, 3),
               output_tokens=tokens, output_tokens_per_s=round(tokens / wall_s, 1) if wall_s > 0 else None,
               requests_per_s=round(len(done) / wall_s, 3) if wall_s > 0 else None,
               ttft_p50_ms=ms(percentile(ttfts, 50)), ttft_p99_ms=ms(percentile(ttfts, 99)),
               itl_p50_ms=ms(percentile(gaps, 50)), itl_p99_ms=ms(percentile(gaps, 99)),
               error="; ".join(errors[:3]) or None, failures=failures)
    return row


# ---------------------------------------------------------------------------------------------------- prompts
def prompt_windows(ids: list[int], prompt_tokens: int, count: int, seed: int) -> list[list[int]]:
    """`count` windows of `prompt_tokens` ids of the text's ids (repeated where it is shorter), at seeded offsets."""
    if not ids:
        raise ValueError("the text file gives no tokens; pass a file with some text")
    repeated = ids * (prompt_tokens // len(ids) + 2)
    span = len(repeated) - prompt_tokens
    rng = random.Random(seed)
    return [repeated[(o := rng.randrange(span + 1)): o + prompt_tokens] for _ in range(count)]


# ---------------------------------------------------------------------------------------------------- clients
class Server:
    """A server process the benchmark started: its base URL, its kind (ours answers /v1/completions and /health
    with counters; the peer /predict) and its output (stdout and stderr), written to `log_path` as it comes (a
    temporary file without one), for the error message and for reading after the run."""

    def __init__(self, command: list[str], port: int, ours: bool, env: Optional[dict] = None,
                 cwd: Optional[str] = None, log_path: Optional[Path] = None) -> None:
        self.url, self.ours, self.log_path = f"http://127.0.0.1:{port}", ours, log_path
        self.log = open(log_path, "w+b") if log_path is not None else tempfile.TemporaryFile()
        try:
            self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                            start_new_session=True)
        except BaseException:
            self.log.close()
            raise

    def log_tail(self, lines: int = 5) -> str:
        """The log's last `lines` lines, joined by " / " (read without moving the offset the server writes at)."""
        fd = self.log.fileno()
        text = os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace").strip().splitlines()
        return " / ".join(line.strip() for line in text[-lines:])

    async def wait_ready(self, timeout_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited with status {self.process.returncode}: {self.log_tail()}")
                try:
                    if (await client.get(f"{self.url}/health")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.25)
        raise RuntimeError(f"the server was not ready after {timeout_s:.0f} s: {self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM (the server finishes what is in flight), then SIGKILL after 60 s; then the same for what is left of
        its process group (upstream's LitServe leaves its server processes running when its main process exits)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._end_group()
        self.log.close()

    def _end_group(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL, the processes left in the server's own session (start_new_session: its group id
        is its pid), each signal given timeout_s to take."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                try:
                    os.killpg(self.process.pid, 0)
                except (ProcessLookupError, PermissionError):
                    return
                time.sleep(0.1)


async def send_ours(client: Any, url: str, prompt: list[int], max_tokens: int, temperature: float,
                    seed: int) -> RequestResult:
    """One streamed completion from our server: the arrival time of each token chunk (an event with choices), the
    usage's count (the event with a usage), and a failure for an error event or a stream that ends before [DONE]."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "seed": seed, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}
    result, t0, buffer = RequestResult(), time.perf_counter(), b""
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
            if response.status_code != 200:
                message = json.loads(await response.aread()).get("error", {}).get("message", "")
                result.fail(f"HTTP {response.status_code}: {message}", t0)
                return result
            async for data in response.aiter_bytes():
                now = time.perf_counter() - t0
                buffer += data
                *events, buffer = buffer.split(b"\n\n")
                for event in events:
                    payload = event.removeprefix(b"data: ").strip()
                    if not payload or payload.startswith(b":"):  # an SSE comment (keep-alive)
                        continue
                    if payload == b"[DONE]":
                        result.ok = True
                        continue
                    chunk = json.loads(payload)
                    if chunk.get("error") is not None:
                        error = chunk["error"]
                        result.fail(f"server error: {error.get('message') if isinstance(error, dict) else error}",
                                    t0)
                        return result
                    if chunk.get("usage") is not None:
                        result.output_tokens = chunk["usage"]["completion_tokens"]
                    if chunk.get("choices"):
                        result.token_times_s.append(now)
        if not result.ok:
            result.fail("the stream ended without [DONE]", t0)
    except Exception as e:  # a dropped connection is this request's failure, not the benchmark's
        if result.ok:  # answered in full ([DONE] came) before the connection broke
            result.error = f"{type(e).__name__}: {e}"
        else:
            result.fail(f"{type(e).__name__}: {e}", t0)
    finally:
        result.ttft_s = result.token_times_s[0] if result.token_times_s else None
    return result


async def send_peer(client: Any, url: str, prompt: str, count_tokens: Any) -> RequestResult:
    """One request to upstream's LitServe endpoint (`/predict`, streamed JSON objects `{"output": piece}`)."""
    result, t0, buffer, pieces = RequestResult(), time.perf_counter(), "", []
    decoder = json.JSONDecoder()
    try:
        async with client.stream("POST", f"{url}/predict", json={"prompt": prompt}) as response:
            if response.status_code != 200:
                result.fail(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}", t0)
                return result
            async for text in response.aiter_text():
                now = time.perf_counter() - t0
                buffer += text
                while True:
                    stripped = buffer.lstrip()
                    try:
                        value, end = decoder.raw_decode(stripped)
                    except ValueError:
                        break
                    buffer = stripped[end:]
                    if isinstance(value, dict) and value.get("output"):
                        pieces.append(value["output"])
                        result.token_times_s.append(now)
        result.ok = True
    except Exception as e:
        result.fail(f"{type(e).__name__}: {e}", t0)
    result.output_tokens = count_tokens("".join(pieces))
    result.ttft_s = result.token_times_s[0] if result.token_times_s else None
    return result


async def poll_health(client: Any, url: str, stats: dict, stop: asyncio.Event) -> None:
    """Keep the most running sequences and the latest peak memory our /health reports until `stop`."""
    while not stop.is_set():
        try:
            health = (await client.get(f"{url}/health")).json()
            stats["peak_running"] = max(stats.get("peak_running", 0), int(health.get("running", 0)))
            if health.get("peak_memory_bytes") is not None:
                stats["peak_memory_bytes"] = health["peak_memory_bytes"]
            stats["health"] = health
        except Exception:  # a missed poll is not a result
            pass
        try:
            await asyncio.wait_for(stop.wait(), HEALTH_POLL_S)
        except asyncio.TimeoutError:
            pass


async def run_level(server: Server, send: Any, count: int, concurrency: Optional[int], rate: Optional[float],
                    seed: int, progress: Any) -> tuple[list[RequestResult], float, dict]:
    """Send `count` requests (`send(client, i)`), `concurrency` at a time or at Poisson times of `rate` per second:
    (their results, the wall seconds, the /health readings)."""
    import httpx

    stats: dict = {}
    results: list[Optional[RequestResult]] = [None] * count
    limit = concurrency if concurrency is not None else count
    # idle connections are dropped by the client before a server's keep-alive timeout can close them (uvicorn's
    # is 5 s, httpx's own expiry too): a request sent on a connection the server is closing fails mid-read
    limits = httpx.Limits(max_connections=limit + 2, max_keepalive_connections=limit + 2,
                          keepalive_expiry=CLIENT_KEEPALIVE_S)
    async with httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits) as client:
        stop = asyncio.Event()
        poller = asyncio.create_task(poll_health(client, server.url, stats, stop)) if server.ours else None

        async def one(i: int) -> None:
            results[i] = await send(client, i)
            progress.update(1)

        t0 = time.perf_counter()
        if concurrency is not None:
            queue = iter(range(count))

            async def worker() -> None:
                for i in queue:
                    await one(i)

            await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
        else:
            rng, tasks, start = random.Random(seed), [], time.perf_counter()
            at = 0.0
            for i in range(count):
                at += rng.expovariate(rate)
                await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
        if poller is not None:
            stop.set()
            await poller
    return [r for r in results if r is not None], wall, stats


# ---------------------------------------------------------------------------------------------------- output
def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    head = ["tool", "model", "mode", "level", "done/sent", "output tok/s", "req/s", "TTFT p50 ms", "TTFT p99 ms",
            "ITL p50 ms", "ITL p99 ms", "peak running", "peak GB", "notes"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [r["tool"], r["model"], r["mode"], _fmt(r["level"]), f"{r['completed']}/{r['requests']}",
                 _fmt(r["output_tokens_per_s"]), _fmt(r["requests_per_s"]), _fmt(r["ttft_p50_ms"]),
                 _fmt(r["ttft_p99_ms"]), _fmt(r["itl_p50_ms"]), _fmt(r["itl_p99_ms"]), _fmt(r["peak_running"]),
                 _fmt(r["peak_memory_gb"]), (r["error"] or "").replace("|", "/")]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    """Output tokens/s, TTFT p50, ITL p50 and peak running sequences against the level, one line per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("output_tokens_per_s", "output tokens / s"), ("ttft_p50_ms", "time to first token p50 (ms)"),
               ("itl_p50_ms", "inter-token latency p50 (ms)"), ("peak_running", "peak running sequences")]
    figure, axes = plt.subplots(2, 2, figsize=(11, 8), squeeze=False)
    for ax, (key, label) in zip(axes.flat, metrics):
        for series in dict.fromkeys((r["tool"], r["model"], r["mode"]) for r in rows):
            points = sorted((r["level"], r[key]) for r in rows
                            if (r["tool"], r["model"], r["mode"]) == series and r[key] is not None)
            if points:
                x, y = zip(*points)
                ax.plot(x, y, marker="o", label=f"{series[0]}: {series[1]} ({series[2]})")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency, or requests/s")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_lines():  # a level that failed has no points
            ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_results(out_dir: Path, meta: dict, rows: list[dict]) -> None:
    text = json.dumps({"meta": meta, "rows": rows}, indent=2)
    atomic_write(out_dir / "results.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    lines = [f"# litgpt benchmark serve", "", f"{meta['date']} on {meta['device']} (torch {meta['torch']}, commit "
             f"{meta['git_commit'] or 'unknown'}); prompts of {meta['prompt_tokens']} tokens from "
             f"`{meta['text_file']}`, {meta['max_tokens']} new tokens each, temperature {meta['temperature']:g}", "",
             f"Command: `{meta['command_line']}`", "", format_table(rows), "",
             "Output tok/s: new tokens of the completed requests over the level's wall time. TTFT: send to the first "
             "streamed token. ITL: gaps between consecutive streamed tokens. Peak running and memory: polled from "
             "our server's /health (the peer has none).", ""]
    md = "\n".join(lines)
    atomic_write(out_dir / "results.md", lambda tmp: tmp.write_text(md, encoding="utf-8"))
    if rows:
        plot(rows, out_dir / "serve.png")


# ---------------------------------------------------------------------------------------------------- command
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _check_checkpoint(checkpoint_dir: Path, option: str) -> None:
    for name in ("lit_model.pth", "model_config.yaml"):
        if not (checkpoint_dir / name).is_file():
            raise ValueError(f"--{option} {str(checkpoint_dir)!r} has no {name}; point at a checkpoint directory")


def server_log_name(number: int, checkpoint_dir: Path, peer: bool = False) -> str:
    """`server_<number>_<label>.log`: the label is the checkpoint directory's name (`upstream-` before it for the
    peer), with what is not a letter, digit, `.`, `_` or `-` replaced by `-`, at most 48 characters."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(checkpoint_dir).resolve().name).strip("-.")[:48] or "checkpoint"
    return f"server_{number}_{'upstream-' if peer else ''}{name}.log"


def _model_name(checkpoint_dir: Path) -> str:
    from litgpt.config import Config

    return Config.from_checkpoint(checkpoint_dir).name or checkpoint_dir.name


def benchmark_serve(
    checkpoint_dirs: list[Path],
    text_file: Path,
    concurrency: Optional[list[int]] = [1, 16, 64, 256],
    request_rate: Optional[list[float]] = None,
    num_requests: Optional[int] = None,
    prompt_tokens: int = 1024,
    max_tokens: int = 256,
    temperature: float = 0.0,
    max_batch_size: int = 256,
    kv_cache_gib: Optional[float] = None,
    max_queue: int = 4096,
    accelerator: str = "auto",
    precision: Optional[str] = None,
    peer_python: Optional[Path] = None,
    peer_checkpoint_dir: Optional[Path] = None,
    peer_concurrency: Optional[list[int]] = [1],
    extra_args: Optional[list[str]] = None,
    out_dir: Path = Path("out/benchmark/serve"),
    startup_timeout_s: float = 900.0,
    seed: int = 1234,
) -> list[dict]:
    """Serve each checkpoint (and upstream's server with --peer_python) and drive it at each level; print the table,
    write results.json, results.md, serve.png and the servers' logs to out_dir.

    Args:
        checkpoint_dirs: the checkpoints our server serves, one after the other, with the same settings.
        text_file: a local text file the prompts are cut from.
        concurrency: levels of requests in flight at once (null with --request_rate).
        request_rate: levels of Poisson arrival rates (requests/s), run after the concurrency levels.
        num_requests: requests per level (default: 4 x the concurrency, at least 8; for a rate, 4 x the rate, at
            least 8).
        prompt_tokens: tokens per prompt.
        max_tokens: new tokens per request.
        temperature: sampling temperature of every request (0: greedy).
        max_batch_size, kv_cache_gib, max_queue, accelerator, precision: our server's options (`litgpt serve`).
        peer_python: the python of a venv with upstream litgpt; its `litgpt serve --stream true` is driven too (it
            serves one request at a time).
        peer_checkpoint_dir: the checkpoint the peer serves (default: the last of checkpoint_dirs).
        peer_concurrency: the concurrency levels the peer runs (null: every level; it serves one request at a time,
            about 10 tokens/s on an H200, so its levels take long).
        extra_args: more options for our `litgpt serve` (`--extra_args '[--page_size, "32"]'`).
        out_dir: where results.json, results.md, serve.png and each server's log (`server_<n>_<checkpoint>.log`,
            named in results.json's meta `server_logs`) go.
        startup_timeout_s: how long a server may take to answer /health.
        seed: the prompts' offsets and the requests' seeds.
    """
    from tqdm import tqdm

    from litgpt.tokenizer import Tokenizer

    checkpoint_dirs = [Path(c) for c in checkpoint_dirs]
    if not checkpoint_dirs:
        raise ValueError("--checkpoint_dirs is empty; pass at least one checkpoint directory")
    for checkpoint_dir in checkpoint_dirs:
        _check_checkpoint(checkpoint_dir, "checkpoint_dirs")
    text_file = Path(text_file)
    if not text_file.is_file():
        raise FileNotFoundError(f"--text_file {str(text_file)!r} is not a file; pass a local text file")
    levels = [("concurrency", c) for c in (concurrency or [])] + [("rate", r) for r in (request_rate or [])]
    if not levels:
        raise ValueError("no levels: pass --concurrency and/or --request_rate")
    if any(c < 1 for c in concurrency or []) or any(not r > 0 for r in request_rate or []):
        raise ValueError(f"concurrency levels must be >= 1 and rates > 0, got {concurrency} and {request_rate}")
    if prompt_tokens < 1 or max_tokens < 1 or (num_requests is not None and num_requests < 1):
        raise ValueError("prompt_tokens, max_tokens and num_requests must be >= 1")
    if peer_python is not None and not (Path(peer_python).is_file() and os.access(peer_python, os.X_OK)):
        raise ValueError(f"--peer_python {str(peer_python)!r} is not an executable file")
    peer_checkpoint = Path(peer_checkpoint_dir) if peer_checkpoint_dir is not None else checkpoint_dirs[-1]
    if peer_python is not None:
        _check_checkpoint(peer_checkpoint, "peer_checkpoint_dir")
    text = text_file.read_text(encoding="utf-8", errors="replace")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    import torch

    device = "cuda" if accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available()) \
        else accelerator
    meta = dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                device=torch.cuda.get_device_name() if device.startswith("cuda") else "CPU", torch=torch.__version__,
                git_commit=git_commit(), command_line=shlex.join(sys.argv), text_file=str(text_file),
                prompt_tokens=prompt_tokens, max_tokens=max_tokens, temperature=temperature,
                max_batch_size=max_batch_size, kv_cache_gib=kv_cache_gib, servers={}, server_logs=[])
    rows: list[dict] = []

    def count_for(mode: str, level: float) -> int:
        return num_requests if num_requests is not None else max(8, int(4 * level))

    peer_levels = [(m, lv) for m, lv in levels if peer_concurrency is None or (m, lv) in
                   [("concurrency", c) for c in peer_concurrency]]
    if peer_python is not None and not peer_levels:
        raise ValueError(f"--peer_concurrency {peer_concurrency} names none of the levels; pick from {concurrency}")
    total = (sum(count_for(m, lv) for m, lv in levels) * len(checkpoint_dirs)
             + (sum(count_for(m, lv) for m, lv in peer_levels) if peer_python is not None else 0))
    progress = tqdm(total=total, desc="benchmark serve", unit="request")

    def drive(server: Server, tool: str, checkpoint_dir: Path, tokenizer: Tokenizer,
              levels: list[tuple[str, float]]) -> None:
        ids = tokenizer.encode(text).tolist()
        model = _model_name(checkpoint_dir)
        prompts = prompt_windows(ids, prompt_tokens, max(WARMUP_REQUESTS, *(count_for(m, lv) for m, lv in levels)),
                                 seed)
        if server.ours:
            def send(client: Any, i: int) -> Any:
                return send_ours(client, server.url, prompts[i], max_tokens, temperature, seed + i)
        else:
            texts = [tokenizer.decode(p) for p in prompts]

            def send(client: Any, i: int) -> Any:
                return send_peer(client, server.url, texts[i], lambda s: len(tokenizer.encode(s)))

        asyncio.run(server.wait_ready(startup_timeout_s))
        warm, _, _ = asyncio.run(run_level(server, send, WARMUP_REQUESTS, WARMUP_REQUESTS, None, seed,
                                           tqdm(disable=True)))
        if not any(r.ok for r in warm):
            raise RuntimeError(f"no warm-up request succeeded: {warm[0].error}")
        for mode, level in levels:
            progress.set_postfix_str(f"{tool} {model} {mode} {level}")
            count = count_for(mode, level)
            results, wall, stats = asyncio.run(run_level(
                server, send, count, int(level) if mode == "concurrency" else None,
                level if mode == "rate" else None, seed, progress))
            memory = stats.get("peak_memory_bytes")
            rows.append(level_row(results, wall, tool=tool, model=model, checkpoint=str(checkpoint_dir), mode=mode,
                                  level=level, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                                  peak_running=stats.get("peak_running"),
                                  peak_memory_gb=None if memory is None else round(memory / 1e9, 3)))
            if stats.get("health"):
                meta["servers"][f"{tool} {checkpoint_dir}"] = {k: v for k, v in stats["health"].items()
                                                                if k not in ("status", "running", "waiting")}
            write_results(out_dir, meta, rows)

    def serve_and_drive(command: list[str], port: int, ours: bool, tool: str, checkpoint_dir: Path,
                        levels: list[tuple[str, float]], env: Optional[dict] = None, cwd: Optional[str] = None) -> None:
        tokenizer = Tokenizer(checkpoint_dir)
        log_name = server_log_name(len(meta["server_logs"]) + 1, checkpoint_dir, peer=not ours)
        meta["server_logs"].append({"file": log_name, "tool": tool, "checkpoint": str(checkpoint_dir)})
        server = Server(command, port, ours, env, cwd, log_path=out_dir / log_name)
        try:
            drive(server, tool, checkpoint_dir, tokenizer, levels)
        except RuntimeError as e:
            rows.append({**{k: None for k in ROW_KEYS}, "tool": tool, "model": _model_name(checkpoint_dir),
                         "checkpoint": str(checkpoint_dir), "mode": "-", "level": None, "requests": 0,
                         "completed": 0, "failed": 0, "error": str(e)})
            progress.write(f"benchmark serve: {tool} on {checkpoint_dir}: {e}")
            write_results(out_dir, meta, rows)
        finally:
            server.stop()

    try:
        for checkpoint_dir in checkpoint_dirs:
            port = free_port()
            command = [sys.executable, "-m", "litgpt", "serve", str(checkpoint_dir), "--port", str(port),
                       "--max_batch_size", str(max_batch_size), "--max_queue", str(max_queue),
                       "--accelerator", accelerator]
            if kv_cache_gib is not None:
                command += ["--kv_cache_gib", str(kv_cache_gib)]
            if precision is not None:
                command += ["--precision", precision]
            serve_and_drive(command + list(extra_args or []), port, True, TOOL_OURS, checkpoint_dir, levels)
        if peer_python is not None:
            port = free_port()
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            with tempfile.TemporaryDirectory(prefix="benchmark-serve-peer-") as cwd:  # so it imports its own litgpt
                # --timeout: LitServe's default answers a request still waiting after 30 s with 504
                command = [str(peer_python), "-m", "litgpt", "serve", str(peer_checkpoint.resolve()), "--port",
                           str(port), "--stream", "true", "--max_new_tokens", str(max_tokens), "--temperature",
                           str(temperature), "--accelerator", accelerator, "--timeout", "100000"]
                serve_and_drive(command, port, False, TOOL_UPSTREAM, peer_checkpoint, peer_levels, env, cwd)
    finally:
        progress.close()
    write_results(out_dir, meta, rows)
    print(format_table(rows))
    print(f"wrote {out_dir / 'results.json'}, {out_dir / 'results.md'}, {out_dir / 'serve.png'} and the servers' "
          f"logs ({', '.join(log['file'] for log in meta['server_logs'])})")
    return rows
