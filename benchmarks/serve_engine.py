"""The serving engine alone, without HTTP: where a step's time goes at each concurrency.

`litgpt benchmark serve` measures the server end to end; this drives `litgpt.serve.engine.Engine` in the calling
thread with the same prompts (1,024-token windows of a text, greedy, `ignore_eos`), C sequences at a time
(max_batch_size C, 4 x C requests, each admitted as a row frees), and splits the wall time of its steps into
prefill (the chunks' forwards and first tokens), queueing the decode step (planning, inputs, launch), reading back
the last decode step (the wait for the device, then the tokens' text and events) and the rest (scheduling).
Tokens/s here is the ceiling the HTTP server works under; the gap to the server's is the cost of the API side.
With --profile C [C ...], each of those levels is run once more, on fresh prompts, under cProfile and the torch
profiler: the host's functions by own time and the device's kernels by time, beside the JSON
(OUT_profile_C_host.txt, _device.txt).

    python benchmarks/serve_engine.py --checkpoint_dir CKPT --text_file TEXT --concurrency 1 16 64 256 \
        --kv_cache_gib 2.15 --profile 1 64 --out out/serve_engine.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from litgpt.api import LLM
from litgpt.benchmark.serve import prompt_windows
from litgpt.serve.engine import Engine, GenerationRequest
from litgpt.serve.scheduler import PrefillChunk, Sequence
from litgpt.tokenizer import Tokenizer


class TimedEngine(Engine):
    """An engine that adds up the wall seconds of its prefill (counting chunks and forwards), of queueing its decode
    steps and of reading them back."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reset()

    def reset(self) -> None:
        self.prefill_s = self.queue_s = self.read_s = 0.0
        self.prefill_chunks = self.prefill_forwards = self.decode_steps = 0

    def _prefill(self, chunks: list[PrefillChunk]) -> None:
        t0 = time.perf_counter()
        super()._prefill(chunks)
        self.prefill_s += time.perf_counter() - t0
        self.prefill_chunks += len(chunks)

    def _prefill_group(self, chunks: list[PrefillChunk]) -> None:
        super()._prefill_group(chunks)
        self.prefill_forwards += 1

    def _queue_decode(self, decoding: list[Sequence]):
        t0 = time.perf_counter()
        queued = super()._queue_decode(decoding)
        self.queue_s += time.perf_counter() - t0
        self.decode_steps += 1
        return queued

    def _read_back(self) -> None:
        t0 = time.perf_counter()
        super()._read_back()
        self.read_s += time.perf_counter() - t0


def run_level(checkpoint_dir: Path, prompts: list[list[int]], concurrency: int, max_tokens: int,
              kv_cache_gib: float | None, device: str, profile_to: Path | None = None,
              profile_prompts: list[list[int]] | None = None) -> dict:
    """One concurrency: a fresh model and engine, its decode steps captured before the clock starts; with
    `profile_to`, `profile_prompts` (default: the same prompts, which then come from the prefix cache) once more
    under the profilers (after the timed run, which they do not touch)."""
    llm = LLM.load(checkpoint_dir, device=device)
    engine = TimedEngine(llm.model, llm.tokenizer, max_batch_size=concurrency, kv_cache_gib=kv_cache_gib,
                         max_queue=len(prompts))
    engine.capture()
    requests = [GenerationRequest(tuple(p), max_tokens=max_tokens, ignore_eos=True) for p in prompts]
    engine.generate(requests[:1])  # the first prefill's kernels, outside the clock
    engine.reset()
    steps0, tokens0 = engine.steps, engine.generated_tokens
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    engine.generate(requests)
    wall = time.perf_counter() - t0
    steps, tokens = engine.steps - steps0, engine.generated_tokens - tokens0
    other_s = wall - engine.prefill_s - engine.queue_s - engine.read_s
    row = dict(concurrency=concurrency, requests=len(requests), output_tokens=tokens, wall_s=round(wall, 4),
               output_tokens_per_s=round(tokens / wall, 1), steps=steps,
               ms_per_step=round(1000 * wall / steps, 3),
               prefill_ms_per_step=round(1000 * engine.prefill_s / steps, 3),
               queue_ms_per_step=round(1000 * engine.queue_s / steps, 3),
               read_ms_per_step=round(1000 * engine.read_s / steps, 3),
               other_ms_per_step=round(1000 * other_s / steps, 3),
               prefill_chunks=engine.prefill_chunks, prefill_forwards=engine.prefill_forwards,
               ms_per_prefill_forward=round(1000 * engine.prefill_s / max(engine.prefill_forwards, 1), 3),
               decode_steps=engine.decode_steps,
               peak_running=engine.scheduler.peak_running, preemptions=engine.scheduler.preemptions)
    if profile_to is not None:
        again = [GenerationRequest(tuple(p), max_tokens=max_tokens, ignore_eos=True)
                 for p in profile_prompts or prompts]
        profile_level(engine, again, profile_to)
    return row


def profile_level(engine: Engine, requests: list[GenerationRequest], prefix: Path) -> None:
    """Run `requests` under cProfile (the host's functions by own time) and the torch profiler (kernels by device
    time); write the two tables to PREFIX_host.txt and PREFIX_device.txt."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    host = cProfile.Profile()
    with profile(activities=activities) as device_profile:
        host.enable()
        engine.generate(requests)
        host.disable()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(host, stream=text).sort_stats("tottime").print_stats(40)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}_host.txt").write_text(text.getvalue())
    sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    Path(f"{prefix}_device.txt").write_text(device_profile.key_averages().table(sort_by=sort, row_limit=40))


def markdown(record: dict) -> str:
    lines = [f"# Serving engine without HTTP ({record['device']}, torch {record['torch']}, {record['date']})", "",
             f"Command: `{record['command']}`", "",
             "| concurrency | output tok/s | ms/step | prefill ms/step | queue decode ms/step | read back ms/step | "
             "other ms/step | prefill chunks / forwards | ms/prefill forward | decode steps | peak running |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        lines.append(f"| {r['concurrency']} | {r['output_tokens_per_s']:,.0f} | {r['ms_per_step']} | "
                     f"{r['prefill_ms_per_step']} | {r['queue_ms_per_step']} | {r['read_ms_per_step']} | "
                     f"{r['other_ms_per_step']} | {r['prefill_chunks']} / {r['prefill_forwards']} | "
                     f"{r['ms_per_prefill_forward']} | {r['decode_steps']} | "
                     f"{r['peak_running']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint_dir", type=Path, required=True)
    parser.add_argument("--text_file", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--prompt_tokens", type=int, default=1024)
    parser.add_argument("--max_tokens", type=int, default=256)
    parser.add_argument("--kv_cache_gib", type=float, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", type=int, nargs="+", default=[], metavar="C",
                        help="profile the levels of these concurrencies (of --concurrency) after timing each, on fresh "
                             "prompts (not from the prefix cache)")
    parser.add_argument("--out", type=Path, default=Path("out/serve_engine.json"))
    opts = parser.parse_args()
    if min(opts.concurrency) < 1 or opts.prompt_tokens < 1 or opts.max_tokens < 1:
        sys.exit("serve_engine.py: error: --concurrency, --prompt_tokens and --max_tokens must be >= 1")
    if not opts.text_file.is_file():
        sys.exit(f"serve_engine.py: error: --text_file {opts.text_file} is not a file")
    if not set(opts.profile) <= set(opts.concurrency):
        sys.exit(f"serve_engine.py: error: --profile {opts.profile} is not within --concurrency {opts.concurrency}")
    tokenizer = Tokenizer(opts.checkpoint_dir)  # the prompts' ids; each level loads the model itself
    ids = tokenizer.encode(opts.text_file.read_text(encoding="utf-8")).tolist()
    rows = []
    for concurrency in opts.concurrency:
        prompts = prompt_windows(ids, opts.prompt_tokens, 4 * concurrency, opts.seed + concurrency)
        profile_to, fresh = None, None
        if concurrency in opts.profile:
            profile_to = opts.out.with_name(f"{opts.out.stem}_profile_{concurrency}")
            fresh = prompt_windows(ids, opts.prompt_tokens, 4 * concurrency, opts.seed + concurrency + 1)
        rows.append(run_level(opts.checkpoint_dir, prompts, concurrency, opts.max_tokens, opts.kv_cache_gib,
                              opts.device, profile_to, fresh))
        print(json.dumps(rows[-1]), flush=True)
    record = dict(date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  device=torch.cuda.get_device_name() if opts.device.startswith("cuda") else "cpu",
                  torch=torch.__version__, command=" ".join(["python", *sys.argv]),
                  checkpoint_dir=str(opts.checkpoint_dir), prompt_tokens=opts.prompt_tokens,
                  max_tokens=opts.max_tokens, kv_cache_gib=opts.kv_cache_gib, rows=rows)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(record, indent=2))
    opts.out.with_suffix(".md").write_text(markdown(record))
    print(f"wrote {opts.out} and {opts.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
