"""Device time of one decode step's token choice (`litgpt.generate.base.Sampler`) at the generate shapes: greedy
argmax, top-k through torch (`use_kernel=False`), the fused Triton top-k + draw (k <= FUSED_MAX_K; also at other
first-pass widths than CHUNK) and torch.topk + the Triton draw (k above it), each captured in a CUDA graph as the
decode step captures it and replayed. The sampled rows must give the torch path's tokens (ties aside) or the row
says so. It measures how much of MHA's sampled batch-8
step (0.555 ms against the greedy 0.510 ms on the H200) is the draw.

    python benchmarks/sampling.py --out results/sampling.json
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch

from litgpt.generate.base import Sampler, SamplingParams

CASES = (  # name, temperature, top_k, use_kernel
    ("greedy", 0.0, None, False),
    ("top-50, torch", 0.8, 50, False),
    ("top-50, fused kernel", 0.8, 50, True),
    ("top-200, torch", 0.8, 200, False),
    ("top-200, torch.topk + kernel draw", 0.8, 200, True),
)  # each torch row before the kernel rows of its k: their tokens are compared with it


CHUNKS = (1024, 2048, 4096)  # the fused top-k's first-pass width (`litgpt.kernels.triton_sampling.CHUNK`)


def replay_ms(graph: torch.cuda.CUDAGraph, reps: int) -> float:
    """Mean device milliseconds of one replay over `reps` back-to-back replays (CUDA events)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(10):
        graph.replay()
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


@torch.inference_mode()
def captured(draw, reps: int) -> tuple[float, torch.Tensor]:
    """(ms per replay, the tokens drawn) of `draw()` captured in a CUDA graph, as the decode step captures it."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # first launches (Triton's load, torch's workspaces) outside the capture
        for _ in range(2):
            draw()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tokens = draw()  # (B, 1)
    return replay_ms(graph, reps), tokens.clone()


def sampler_draw(temperature: float, top_k: int | None, use_kernel: bool, logits: torch.Tensor, vocab_size: int):
    """The decode step's draw for one sampler setting, at position 7 of every row."""
    batch = logits.size(0)
    sampler = Sampler(SamplingParams(temperature, top_k), vocab_size, batch, logits.device, use_kernel=use_kernel)
    sampler.seed(1234)
    position = torch.full((batch, 1), 7, dtype=torch.int64, device=logits.device)  # (B, 1)
    return sampler, lambda: sampler(logits, position)


def chunk_draw(sampler: Sampler, logits: torch.Tensor, vocab_size: int, k: int, chunk: int):
    """The fused top-k draw of `sampler` (same seeds, position, temperature) with another first-pass width."""
    from litgpt.kernels import triton_sampling

    batch = logits.size(0)
    positions = torch.full((batch,), 7, dtype=torch.int64, device=logits.device)  # (B,)
    seeds = sampler.row_seeds.reshape(batch)
    return lambda: triton_sampling.fused_top_k_sample(logits, vocab_size, k, seeds, positions,
                                                      sampler.inv_temperature, chunk=chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--vocab_size", type=int, default=50254, help="sampled ids (Pythia's vocab_size)")
    parser.add_argument("--padded_vocab_size", type=int, default=50304, help="the logits' width")
    parser.add_argument("--reps", type=int, default=500)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for batch in args.batch_sizes:
        logits = (torch.randn(batch, args.padded_vocab_size, device="cuda") * 3).to(torch.bfloat16)  # (B, V_padded)
        reference: dict[int | None, torch.Tensor] = {}
        for name, temperature, top_k, use_kernel in CASES:
            sampler, draw = sampler_draw(temperature, top_k, use_kernel, logits, args.vocab_size)
            ms, tokens = captured(draw, args.reps)
            if not use_kernel:
                reference[top_k] = tokens
            same = None if not use_kernel else bool(torch.equal(tokens, reference[top_k]))
            rows.append(dict(batch=batch, case=name, top_k=top_k, kernel=use_kernel, ms=ms, same_tokens_as_torch=same))
            if name == "top-50, fused kernel":  # the same draw at other first-pass widths
                for chunk in CHUNKS:
                    ms, tokens = captured(chunk_draw(sampler, logits, args.vocab_size, top_k, chunk), args.reps)
                    rows.append(dict(batch=batch, case=f"top-50, fused kernel, chunk {chunk}", top_k=top_k, kernel=True,
                                     ms=ms, same_tokens_as_torch=bool(torch.equal(tokens, reference[top_k]))))
    header = "| batch | case | us per draw | same tokens as torch |"
    print(header + "\n|---|---|---|---|")
    for r in rows:
        same = "-" if r["same_tokens_as_torch"] is None else ("yes" if r["same_tokens_as_torch"] else "NO")
        print(f"| {r['batch']} | {r['case']} | {1000 * r['ms']:.1f} | {same} |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    device=torch.cuda.get_device_name(), torch=torch.__version__, vocab_size=args.vocab_size,
                    padded_vocab_size=args.padded_vocab_size, reps=args.reps)
        args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))


if __name__ == "__main__":
    main()
