"""The serving engine alone, without HTTP: where a step's time goes at each concurrency.

`litgpt benchmark serve` measures the server end to end; this drives `litgpt.serve.engine.Engine` in the calling
thread with the same prompts (1,024-token windows of a text, greedy, `ignore_eos`), C sequences at a time
(max_batch_size C, 4 x C requests, each admitted as a row frees), and splits the wall time of its steps into
prefill (the chunks' forwards and first tokens), decode (the step, its device wait included) and the rest (scheduling,
text, events). Tokens/s here is the ceiling the HTTP server works under; the gap to the server's is the cost of the
API side.

    python benchmarks/serve_engine.py --checkpoint_dir CKPT --text_file TEXT --concurrency 1 16 64 256 \
        --kv_cache_gib 2.15 --out out/serve_engine.json
"""

from __future__ import annotations

import argparse
import json
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
    """An engine that adds up the wall seconds of its prefill chunks and of its decode steps."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.prefill_s = self.decode_s = 0.0
        self.prefill_chunks = self.decode_steps = 0

    def _prefill(self, chunk: PrefillChunk) -> None:
        t0 = time.perf_counter()
        super()._prefill(chunk)
        self.prefill_s += time.perf_counter() - t0
        self.prefill_chunks += 1

    def _decode(self, decoding: list[Sequence]) -> None:
        t0 = time.perf_counter()
        super()._decode(decoding)
        self.decode_s += time.perf_counter() - t0
        self.decode_steps += 1


def run_level(checkpoint_dir: Path, prompts: list[list[int]], concurrency: int, max_tokens: int,
              kv_cache_gib: float | None, device: str) -> dict:
    """One concurrency: a fresh model and engine, its decode steps captured before the clock starts."""
    llm = LLM.load(checkpoint_dir, device=device)
    engine = TimedEngine(llm.model, llm.tokenizer, max_batch_size=concurrency, kv_cache_gib=kv_cache_gib,
                         max_queue=len(prompts))
    engine.capture()
    requests = [GenerationRequest(tuple(p), max_tokens=max_tokens, ignore_eos=True) for p in prompts]
    engine.generate(requests[:1])  # the first prefill's kernels, outside the clock
    engine.prefill_s = engine.decode_s = 0.0
    engine.prefill_chunks = engine.decode_steps = 0
    steps0, tokens0 = engine.steps, engine.generated_tokens
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    engine.generate(requests)
    wall = time.perf_counter() - t0
    steps, tokens = engine.steps - steps0, engine.generated_tokens - tokens0
    return dict(concurrency=concurrency, requests=len(requests), output_tokens=tokens, wall_s=round(wall, 4),
                output_tokens_per_s=round(tokens / wall, 1), steps=steps,
                ms_per_step=round(1000 * wall / steps, 3),
                prefill_ms_per_step=round(1000 * engine.prefill_s / steps, 3),
                decode_ms_per_step=round(1000 * engine.decode_s / steps, 3),
                other_ms_per_step=round(1000 * (wall - engine.prefill_s - engine.decode_s) / steps, 3),
                prefill_chunks=engine.prefill_chunks,
                ms_per_prefill_chunk=round(1000 * engine.prefill_s / max(engine.prefill_chunks, 1), 3),
                ms_per_decode_step=round(1000 * engine.decode_s / max(engine.decode_steps, 1), 3),
                peak_running=engine.scheduler.peak_running, preemptions=engine.scheduler.preemptions)


def markdown(record: dict) -> str:
    lines = [f"# Serving engine without HTTP ({record['device']}, torch {record['torch']}, {record['date']})", "",
             f"Command: `{record['command']}`", "",
             "| concurrency | output tok/s | ms/step | prefill ms/step | decode ms/step | other ms/step | "
             "ms/prefill chunk | ms/decode step | peak running |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        lines.append(f"| {r['concurrency']} | {r['output_tokens_per_s']:,.0f} | {r['ms_per_step']} | "
                     f"{r['prefill_ms_per_step']} | {r['decode_ms_per_step']} | {r['other_ms_per_step']} | "
                     f"{r['ms_per_prefill_chunk']} | {r['ms_per_decode_step']} | {r['peak_running']} |")
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
    parser.add_argument("--out", type=Path, default=Path("out/serve_engine.json"))
    opts = parser.parse_args()
    if min(opts.concurrency) < 1 or opts.prompt_tokens < 1 or opts.max_tokens < 1:
        sys.exit("serve_engine.py: error: --concurrency, --prompt_tokens and --max_tokens must be >= 1")
    if not opts.text_file.is_file():
        sys.exit(f"serve_engine.py: error: --text_file {opts.text_file} is not a file")
    tokenizer = Tokenizer(opts.checkpoint_dir)  # the prompts' ids; each level loads the model itself
    ids = tokenizer.encode(opts.text_file.read_text(encoding="utf-8")).tolist()
    rows = []
    for concurrency in opts.concurrency:
        prompts = prompt_windows(ids, opts.prompt_tokens, 4 * concurrency, opts.seed + concurrency)
        rows.append(run_level(opts.checkpoint_dir, prompts, concurrency, opts.max_tokens, opts.kv_cache_gib,
                              opts.device))
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
