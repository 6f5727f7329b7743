"""Effective bandwidth of the MLA decode kernel against the torch absorbed path (and, with --mha, the MHA/GQA kernel).

Effective bandwidth = cache bytes the step must read (B * valid_len * (d_c + d_R) * 2 for bf16) / kernel time; the
floor is those bytes at the measured copy bandwidth (~3.0 TB/s on an H100). One decode token per row, full-length
rows. Device time only: each variant is captured in a CUDA graph that calls it once on each of several input sets
(together > 256 MB, so the L2 cache cannot serve repeats), and the graph is replayed; the median replay time over
the number of calls is reported. Host launch overhead, which a captured decode step does not pay, is left out.

    python benchmarks/mla_kernel_bandwidth.py --out results/mla_kernel_bandwidth.json
    python benchmarks/mla_kernel_bandwidth.py --sweep   # also time alternative launch configs on a few shapes
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
from pathlib import Path

import torch
import triton

from litgpt.kernels import gqa_decode_attention_reference, mla_decode_attention, mla_decode_attention_reference
from litgpt.kernels.triton_decode import LaunchConfig, decode_attention, default_config, sm_count

COPY_BANDWIDTH = 3.0e12  # bytes/s, measured device-to-device copy on the H100 (read + write)


ROTATE_BYTES = 256 * 2**20


def n_sets(nbytes: int) -> int:
    """Input sets to rotate through so that one pass reads more than the L2 cache holds."""
    return max(1, min(256, -(-ROTATE_BYTES // nbytes)))


def time_ms(fn, sets: list[tuple], replays: int = 20) -> float:
    """Median device time of one fn(*inputs) call, from CUDA-graph replays over all input sets."""
    for inputs in sets:
        fn(*inputs)  # compile and warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for inputs in sets:
            fn(*inputs)
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(sets))
    del graph
    return sorted(times)[len(times) // 2]


def mla_row(B: int, h: int, S: int, d_c: int, d_r: int, kvs: list[torch.Tensor], with_torch: bool) -> dict:
    sets = [(torch.randn(B, h, 1, d_c + d_r, device="cuda", dtype=torch.bfloat16), kv) for kv in kvs]
    pos = torch.full((B, 1), S - 1, device="cuda")
    scale = (d_c + d_r) ** -0.5
    nbytes = B * S * (d_c + d_r) * kvs[0].element_size()
    kernel_ms = time_ms(lambda q, kv: mla_decode_attention(q, kv, pos, d_c, scale), sets)
    row = dict(kind="mla", B=B, h=h, context=S, d_c=d_c, d_R=d_r, bytes=nbytes, kernel_ms=kernel_ms,
               kernel_TBps=nbytes / kernel_ms / 1e9, floor_ms=nbytes / COPY_BANDWIDTH * 1e3)
    if with_torch:
        torch_ms = time_ms(lambda q, kv: mla_decode_attention_reference(q, kv, pos, d_c, scale), sets, replays=5)
        row.update(torch_ms=torch_ms, torch_TBps=nbytes / torch_ms / 1e9, speedup=torch_ms / kernel_ms)
    return row


LARGE_SHAPES = [(64, 32, 4096, 512, 64), (8, 32, 16384, 512, 64), (8, 32, 16384, 256, 32)]
SMALL_SHAPES = [(1, 12, 1024, 256, 32), (1, 12, 16384, 256, 32), (1, 16, 16384, 512, 64), (8, 12, 4096, 256, 32),
                (32, 12, 4096, 256, 32)]  # batch 1 and the end-to-end decode shapes: latency-bound launches


def sweep(rows: list[dict], shapes: list[tuple[int, ...]], small: bool = False) -> None:
    """Time alternative launch configs on a few shapes; prints the best per shape. `small` sweeps what matters
    for latency-bound problems (split length, waves, pipeline depth) instead of the tile shapes."""
    for B, h, S, d_c, d_r in shapes:
        nbytes = B * S * (d_c + d_r) * 2
        sets = [(torch.randn(B, h, 1, d_c + d_r, device="cuda", dtype=torch.bfloat16),
                 torch.randn(B, 1, S, d_c + d_r, device="cuda", dtype=torch.bfloat16)) for _ in range(n_sets(nbytes))]
        pos = torch.full((B, 1), S - 1, device="cuda")
        base = default_config(h, d_c, B, sm_count(torch.cuda.current_device()))
        results = []
        if small:
            grid = [dict(block_n=n, num_stages=st, waves=w, min_split=m) for n in (32, 64) for st in (2, 3)
                    for w in (1.0, 2.0, 4.0) for m in (64, 128, 256) if m % n == 0]
        else:
            grid = [dict(block_h=bh, block_n=n, num_warps=nw) for bh in (16, 32) for n in (32, 64) for nw in (4, 8)]
        for changes in grid:
            config = dataclasses.replace(base, **changes)
            try:
                ms = time_ms(lambda q, k: decode_attention(q, k, k, pos, d_c, d_c, 0.1, True, config), sets, replays=5)
            except Exception as error:  # out of shared memory for the largest tiles
                print(f"  skip {config}: {type(error).__name__}")
                continue
            results.append((ms, config))
        results.sort(key=lambda r: r[0])
        default_ms = time_ms(lambda q, k: decode_attention(q, k, k, pos, d_c, d_c, 0.1, True, base), sets)
        print(f"sweep B={B} h={h} S={S} d={d_c}+{d_r}: default {nbytes / default_ms / 1e9:.2f} TB/s ({base})")
        for ms, config in results[:4]:
            print(f"   {nbytes / ms / 1e9:.2f} TB/s  {config}")
        rows.append(dict(kind="sweep", B=B, h=h, context=S, d_c=d_c, d_R=d_r, default_TBps=nbytes / default_ms / 1e9,
                         best=[dict(TBps=nbytes / ms / 1e9, **dataclasses.asdict(c)) for ms, c in results[:4]]))
        del sets


def gemv_rows(rows: list[dict]) -> None:
    """The batch-1 GEMV (litgpt.kernels.triton_linear: y = x W^T + b + residual, autotuned) against cuBLAS
    (F.linear, then the residual add), at pythia-160m's folded shapes (in maps N > K, out maps K > N)."""
    import torch.nn.functional as F

    from litgpt.kernels.triton_linear import gemv

    for M, N, K in ((1, 6816, 768), (1, 768, 6144), (1, 5376, 768), (1, 768, 3840)):
        nbytes = N * K * 2
        sets = [tuple(torch.randn(*shape, device="cuda", dtype=torch.bfloat16)
                      for shape in ((M, K), (N, K), (N,), (M, N))) for _ in range(n_sets(nbytes))]
        kernel_ms = time_ms(lambda x, w, b, r: gemv(x, w, b, r), sets)
        cublas_ms = time_ms(lambda x, w, b, r: F.linear(x, w, b) + r, sets)
        if N > K:  # an input map: LayerNorm in the prologue, against a separate LayerNorm launch
            fused_ms = time_ms(lambda x, w, b, r: gemv(x, w, b, None, norm="layer"), sets)
            apart_ms = time_ms(lambda x, w, b, r: gemv(F.layer_norm(x, (K,)), w, b, None), sets)
            prologue = "LayerNorm"
        else:  # an output map: GELU of the second half of the input in the prologue, against GELU + cat launches
            half = K // 2
            fused_ms = time_ms(lambda x, w, b, r: gemv(x[:, :half], w, b, r, x[:, half:], activation="gelu"), sets)
            apart_ms = time_ms(lambda x, w, b, r: gemv(torch.cat((x[:, :half], F.gelu(x[:, half:])), -1), w, b, r), sets)
            prologue = "GELU half"
        rows.append(dict(kind="gemv", M=M, N=N, K=K, bytes=nbytes, kernel_ms=kernel_ms, cublas_ms=cublas_ms,
                         prologue=prologue, fused_ms=fused_ms, apart_ms=apart_ms))
        print(f"gemv M={M} N={N:>5} K={K:>5} ({nbytes / 1e6:5.1f} MB): kernel {kernel_ms * 1e3:6.2f} us "
              f"{nbytes / kernel_ms / 1e9:5.2f} TB/s | cuBLAS + add {cublas_ms * 1e3:6.2f} us "
              f"{nbytes / cublas_ms / 1e9:5.2f} TB/s | {prologue} fused {fused_ms * 1e3:6.2f} us, "
              f"as separate launches {apart_ms * 1e3:6.2f} us")


def mha_rows(rows: list[dict]) -> None:
    """The same kernel over KVCache (separate K and V) for the Pythia-160M MHA shape, against torch."""
    for B, S, G in ((8, 4096, 12), (32, 4096, 12), (8, 32768, 12), (8, 32768, 3)):
        H, d = 12, 64
        nbytes = 2 * B * G * S * d * 2
        sets = [tuple(torch.randn(*shape, device="cuda", dtype=torch.bfloat16)
                      for shape in ((B, H, 1, d), (B, G, S, d), (B, G, S, d))) for _ in range(n_sets(nbytes))]
        pos = torch.full((B, 1), S - 1, device="cuda")
        kernel_ms = time_ms(lambda q, k, v: decode_attention(q, k, v, pos, d, d, 0.125, False), sets)
        torch_ms = time_ms(lambda q, k, v: gqa_decode_attention_reference(q, k, v, pos, 0.125), sets, replays=5)
        sdpa_ms = time_ms(lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, enable_gqa=G != H), sets, replays=5)
        rows.append(dict(kind="gqa", B=B, H=H, G=G, context=S, head_size=d, bytes=nbytes, kernel_ms=kernel_ms,
                         kernel_TBps=nbytes / kernel_ms / 1e9, torch_ms=torch_ms, sdpa_nomask_ms=sdpa_ms))
        print(f"gqa B={B:>3} H={H} G={G:>2} S={S:>6}: kernel {kernel_ms * 1e3:8.1f} us {nbytes / kernel_ms / 1e9:5.2f} TB/s"
              f" | torch masked {torch_ms * 1e3:8.1f} us | sdpa (no mask) {sdpa_ms * 1e3:8.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("mla_kernel_bandwidth.json"))
    parser.add_argument("--heads", type=int, nargs="+", default=[12, 16, 32])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--no-torch", action="store_true", help="skip the torch absorbed path")
    parser.add_argument("--sweep", action="store_true", help="also time alternative launch configs")
    parser.add_argument("--sweep-small", action="store_true",
                        help="also time split lengths / waves / stages on small (latency-bound) shapes")
    parser.add_argument("--mha", action="store_true", help="also time the kernel over an MHA/GQA KVCache")
    parser.add_argument("--gemv", action="store_true", help="also time the small-batch GEMV against cuBLAS")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows: list[dict] = []
    header = (f"{'h':>3} {'d_c+d_R':>8} {'B':>3} {'ctx':>6} | {'MB read':>8} {'floor us':>9} {'kernel us':>9} "
              f"{'TB/s':>5} {'% floor':>7} | {'torch us':>9} {'TB/s':>5} {'speedup':>7}")
    print(header)
    for d_c, d_r in ((256, 32), (512, 64)):
        for B in args.batches:
            for S in args.contexts:
                nbytes = B * S * (d_c + d_r) * 2
                kvs = [torch.randn(B, S, d_c + d_r, device="cuda", dtype=torch.bfloat16) for _ in range(n_sets(nbytes))]
                for h in args.heads:
                    r = mla_row(B, h, S, d_c, d_r, kvs, with_torch=not args.no_torch)
                    rows.append(r)
                    torch_part = (f"{r['torch_ms'] * 1e3:9.1f} {r['torch_TBps']:5.2f} {r['speedup']:6.1f}x"
                                  if "torch_ms" in r else "")
                    print(f"{h:>3} {d_c:>4}+{d_r:<3} {B:>3} {S:>6} | {r['bytes'] / 1e6:8.1f} {r['floor_ms'] * 1e3:9.1f} "
                          f"{r['kernel_ms'] * 1e3:9.1f} {r['kernel_TBps']:5.2f} {r['floor_ms'] / r['kernel_ms']:7.0%} | "
                          + torch_part)
                del kvs
                torch.cuda.empty_cache()
    if args.mha:
        mha_rows(rows)
    if args.gemv:
        gemv_rows(rows)
    if args.sweep:
        sweep(rows, LARGE_SHAPES)
    if args.sweep_small:
        sweep(rows, SMALL_SHAPES, small=True)
    meta = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
                torch=torch.__version__, triton=triton.__version__, copy_bandwidth=COPY_BANDWIDTH)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(f"wrote {args.out} ({meta['device']}, torch {meta['torch']}, triton {meta['triton']})")


if __name__ == "__main__":
    main()
