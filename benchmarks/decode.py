"""Decode tokens/s of the static decode step at 1 x 1024, 32 x 4096 and 8 x 32768 (batch x context), eager vs
captured vs compiled.

    python3 benchmarks/decode.py --out out/benchmark/decode.json [--profile out/benchmark/profiles]

Random weights in bf16 (the speed does not depend on them), a cache filled to the context length, then timed
steps at its last positions. Prints a table with the byte floor (weights + whole KV cache read per step at 3.0 TB/s)
and the gap to it; writes every row to --out as JSON after each measurement, so a cut-short run keeps its rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script from a checkout

from litgpt.benchmark.decode import benchmark_decode  # noqa: E402
from litgpt.config import Config  # noqa: E402
from litgpt.generate.base import DECODE_MODES  # noqa: E402
from litgpt.model import GPT, init_weights  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--models", nargs="+", default=["pythia-160m-mla", "pythia-160m"])
    parser.add_argument("--shapes", nargs="+", default=["1x1024", "32x4096", "8x32768"], help="BATCHxCONTEXT")
    parser.add_argument("--modes", nargs="+", default=["cuda_graph", "compile", "eager"],
                        choices=list(DECODE_MODES))
    parser.add_argument("--attention", nargs="+", default=["torch", "kernel"], choices=["torch", "kernel"],
                        help="decode attention: the pure-torch path and/or the Triton decode kernel")
    parser.add_argument("--fold", nargs="+", default=["on"], choices=["off", "on"],
                        help="decode on folded weights (litgpt.fold) or the blocks' own modules")
    parser.add_argument("--steps", type=int, default=100, help="timed decode steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compile/capture happen here)")
    parser.add_argument("--profile", type=Path, default=None, help="directory for top-kernel tables per run")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    meta = dict(date=date.today().isoformat(), device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                torch=torch.__version__, command=" ".join(sys.argv), floor_bandwidth_bytes_per_s=3.0e12)
    rows: list[dict] = []
    header = (f"{'model':<16} {'mode/attention':<24} {'batch':>5} {'context':>7} {'tok/s':>9} {'ms/step':>8} {'floor ms':>8} "
              f"{'gap':>5} {'prefill s':>9} {'warmup s':>8} {'KV MB':>8} {'peak GB':>7}")
    print(header, flush=True)
    for name in args.models:
        for shape in args.shapes:
            batch, context = (int(v) for v in shape.split("x"))
            config = Config.from_name(name, block_size=max(context, Config.from_name(name).block_size))
            torch.manual_seed(0)
            with torch.device(device):
                model = GPT(config)
            init_weights(model)
            model = model.to(dtype=dtype).eval()
            variants = [(mode, attn, fold) for attn in args.attention for mode in args.modes for fold in args.fold]
            for mode, attn, fold in variants:
                torch._dynamo.reset()  # each shape compiles its own static graph
                label = f"{mode}/{attn}" + ("/fold" if fold == "on" else "")
                profile = args.profile / f"{name}_{shape}_{label.replace('/', '_').replace('+', '-')}.txt" if args.profile else None
                try:
                    r = benchmark_decode(model, batch, context, args.steps, args.warmup, mode, profile_path=profile,
                                         kernels=attn == "kernel", fold=fold == "on")
                    r["attention"] = attn
                except Exception as e:  # keep measuring the other variants; the failure is recorded in the JSON
                    r = dict(model=name, mode=mode, attention=attn, fold=fold == "on", batch=batch, context=context,
                             error=f"{type(e).__name__}: {str(e)[:2000]}")
                    print(f"{name:<16} {label:<24} {batch:>5} {context:>7} FAILED {r['error'][:200]!r}", flush=True)
                else:
                    print(f"{name:<16} {label:<24} {batch:>5} {context:>7} {r['decode_tokens_per_s']:>9,.0f} "
                          f"{r['ms_per_step']:>8.3f} {r['floor_ms']:>8.3f} {r['gap']:>5.1f} "
                          f"{r['time_to_first_token_s']:>9.2f} {r['warmup_s']:>8.1f} {r['kv_cache_bytes'] / 1e6:>8.1f} "
                          f"{r['peak_memory_bytes'] / 1e9:>7.2f}", flush=True)
                rows.append(r)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
            model.clear_kv_cache()
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
