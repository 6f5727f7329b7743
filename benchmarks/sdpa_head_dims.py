"""Which SDPA backend runs MLA's training attention fastest: q, k of head dim d_n + d_R = 96 and v of 64, causal.

The naive MLA path pads V to the query width because FlashAttention needs one head dim; this times forward +
backward of each backend that accepts the shape, padded and unpadded (pythia-160m-mla at micro batch 16 x 1024).
Run on a GPU: `python benchmarks/sdpa_head_dims.py [--out sdpa.json]`.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def time_fwd_bwd(backend: SDPBackend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, steps: int = 20) -> float:
    """Median ms of one forward + backward of causal SDPA with this backend only."""
    with sdpa_kernel(backend):
        times = []
        for i in range(steps + 3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.1)
            y.backward(torch.ones_like(y))
            end.record()
            end.synchronize()
            if i >= 3:
                times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--qk", type=int, default=96)
    parser.add_argument("--v", type=int, default=64)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    shape = (args.batch, args.heads, args.seq)
    rows = []
    for name, backend in BACKENDS.items():
        for v_dim in (args.qk, args.v):
            q, k = (torch.randn(*shape, args.qk, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in "qk")
            v = torch.randn(*shape, v_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            try:
                ms = time_fwd_bwd(backend, q, k, v)
            except RuntimeError as error:
                print(f"{name:>9} qk {args.qk} v {v_dim}: not supported ({str(error).splitlines()[0][:80]})")
                continue
            rows.append(dict(backend=name, qk=args.qk, v=v_dim, fwd_bwd_ms=ms))
            print(f"{name:>9} qk {args.qk} v {v_dim}: {ms:.3f} ms forward + backward per layer")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
