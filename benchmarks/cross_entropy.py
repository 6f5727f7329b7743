"""Device time of the training loss's two passes over the logits (`litgpt.kernels.cross_entropy`) against their byte
floor: the forward reads the (tokens, vocab) logits once (log-sum-exp and loss per row), the backward reads and
writes them once (the gradient in place). Torch's chunked reference (the CPU path, run here on the GPU) for scale.

    python benchmarks/cross_entropy.py --out results/cross_entropy.json
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch
import triton

import litgpt.kernels.cross_entropy as ce

COPY_BANDWIDTH = 3.0e12  # bytes/s, measured device-to-device copy on the H100 (read + write)


def time_ms(fn, reps: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=5, rep=reps * 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16 * 1024)
    parser.add_argument("--vocab", type=int, default=50304)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    N, V = args.tokens, args.vocab
    logits = torch.randn(N, V, device="cuda", dtype=torch.bfloat16)
    work = logits.clone()
    targets = torch.randint(0, V, (N,), device="cuda")
    factor = torch.tensor([1.0 / N], device="cuda")
    lse, _ = ce.row_losses(logits, targets)
    nbytes = N * V * logits.element_size()
    rows = []
    print(f"{N} x {V} bf16 logits ({nbytes / 1e9:.2f} GB), {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"{'pass':<22} {'floor us':>9} {'kernel us':>10} {'TB/s':>6} {'% floor':>8} {'torch us':>10}")
    for name, passes, kernel in (
        ("forward: lse + loss", 1, lambda: ce.row_losses(logits, targets)),
        ("backward: grad in place", 2, lambda: ce.softmax_grad_(work, targets, lse, factor)),
    ):
        kernel_ms = time_ms(kernel)
        ce.TRITON_AVAILABLE = False  # the same call through the torch reference
        torch_ms = time_ms(kernel, reps=3)
        ce.TRITON_AVAILABLE = True
        floor_us = passes * nbytes / COPY_BANDWIDTH * 1e6
        row = dict(name=name, bytes=passes * nbytes, floor_us=floor_us, kernel_us=kernel_ms * 1e3,
                   kernel_TBps=passes * nbytes / kernel_ms / 1e9, torch_us=torch_ms * 1e3)
        rows.append(row)
        print(f"{name:<22} {floor_us:>9.0f} {row['kernel_us']:>10.0f} {row['kernel_TBps']:>6.2f} "
              f"{100 * floor_us / row['kernel_us']:>7.0f}% {row['torch_us']:>10.0f}")
    if args.out:
        meta = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(), torch=torch.__version__,
                    triton=triton.__version__, tokens=N, vocab=V)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))


if __name__ == "__main__":
    main()
