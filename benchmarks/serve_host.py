"""The serving stack's host side alone: `litgpt serve`'s HTTP API and engine with the model replaced by a stub.

The stub's decode step sleeps `--step_ms` (the GIL is free meanwhile, as while the host waits for a GPU step) and
returns random tokens; a prefill takes no time. What is left is the work per token on the host: scheduling, text,
events, SSE chunks and HTTP, against `litgpt benchmark serve`'s own client in another process. Output tokens/s at a
concurrency is the most the server can stream there whatever the GPU does, on a machine where the client does not
compete for the cores; the server's CPU time per token (all its threads, from psutil) is its cost whatever the client
does.

    python benchmarks/serve_host.py --checkpoint_dir CKPT --concurrency 1 16 64 --step_ms 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch

from litgpt.serve import engine as engine_module


class StubStep:
    """A decode step that waits `step_s` and draws random tokens (ids from `low` up to the vocabulary) for its
    rows."""

    step_s, low, high = 0.0, 0, 1

    def __init__(self, model, sampler, mode, first_call=None, graph_pool=None) -> None:
        self.sampler = sampler

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        time.sleep(self.step_s)
        return torch.randint(self.low, self.high, (tokens.size(0), 1))  # (rows, 1)

    def prepare(self, *args) -> None:
        pass


def serve(checkpoint_dir: Path, port: int, step_ms: float, max_batch_size: int, profile_to: Path | None) -> None:
    """Run the API over an engine whose steps are stubs (this process is the server); with `profile_to`, under
    cProfile (the asyncio loop's thread: HTTP and SSE), its functions by own time written there at exit."""
    import uvicorn

    from litgpt.api import LLM
    from litgpt.serve.api import ServedModel, create_app

    StubStep.step_s = step_ms / 1000
    engine_module.DecodeStep = StubStep
    llm = LLM.load(checkpoint_dir, device="cpu")
    StubStep.high = llm.tokenizer.vocab_size  # ids that decode to text, as a model's would
    StubStep.low = StubStep.high // 4  # past the special and byte tokens
    engine = engine_module.Engine(llm.model, llm.tokenizer, max_batch_size=max_batch_size, mode="eager")

    def prefill(chunks) -> None:  # no forward: the bookkeeping and a first token
        for chunk in chunks:
            seq = chunk.seq
            engine.scheduler.computed(seq, chunk.end)
            if chunk.last:
                seq.tokens.append(100)
                engine.scheduler.prefilled(seq)
                engine._emit(engine._live[seq.seq_id], 100, None, None)

    engine._prefill_group = prefill
    served = ServedModel("stub", llm.tokenizer, llm.prompt_style, llm.model.max_seq_length,
                         llm.model.config.vocab_size)
    profiler = cProfile.Profile() if profile_to is not None else None  # this thread's: the asyncio loop's
    if profiler is not None:
        profiler.enable()
    try:
        uvicorn.run(create_app(engine, served), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    finally:
        if profiler is not None:
            profiler.disable()
            with open(profile_to, "w") as f:
                pstats.Stats(profiler, stream=f).sort_stats("tottime").print_stats(40)


async def drive(url: str, concurrency: int, count: int, prompt_tokens: int, max_tokens: int) -> tuple[dict, int]:
    """`count` streamed completions, `concurrency` at a time, sent and timed by the benchmark's client."""
    from types import SimpleNamespace

    from litgpt.benchmark.serve import level_row, run_level, send_ours

    prompt = list(range(1, prompt_tokens + 1))
    server = SimpleNamespace(url=url, ours=True)
    progress = SimpleNamespace(update=lambda n: None)
    results, wall, _ = await run_level(server, lambda client, i: send_ours(client, url, prompt, max_tokens, 0.0, i),
                                       count, concurrency, None, 0, progress)
    row = level_row(results, wall, level=concurrency)
    keys = ("level", "completed", "output_tokens_per_s", "ttft_p50_ms", "itl_p50_ms", "error")
    return {k: row[k] for k in keys}, row["output_tokens"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint_dir", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--step_ms", type=float, default=0.5)
    parser.add_argument("--prompt_tokens", type=int, default=64)
    parser.add_argument("--max_tokens", type=int, default=256)
    parser.add_argument("--profile_server", type=Path, default=None,
                        help="write the server's cProfile (its asyncio thread, by own time) to this file")
    parser.add_argument("--serve_on_port", type=int, default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    max_batch = max(opts.concurrency)
    if opts.serve_on_port is not None:
        serve(opts.checkpoint_dir, opts.serve_on_port, opts.step_ms, max_batch, opts.profile_server)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--serve_on_port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        process = psutil.Process(server.pid)
        for concurrency in opts.concurrency:
            cpu = sum(process.cpu_times()[:2])  # user + system seconds, every thread of the server
            row, tokens = asyncio.run(drive(url, concurrency, 2 * concurrency, opts.prompt_tokens, opts.max_tokens))
            cpu_us = 1e6 * (sum(process.cpu_times()[:2]) - cpu)
            print(json.dumps(dict(row, step_ms=opts.step_ms,
                                  server_cpu_us_per_token=round(cpu_us / tokens, 2) if tokens else None)), flush=True)
    finally:
        server.send_signal(signal.SIGINT)  # uvicorn's graceful exit: the profile is written
        server.wait()


if __name__ == "__main__":
    main()
