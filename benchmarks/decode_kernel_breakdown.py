"""Per-kernel device time of the MLA decode kernel (split-KV stage vs merge stage) inside CUDA-graph replays, for a
few shapes of the bandwidth table; `total_us` as `mla_kernel_bandwidth.py` times it. Writes $OUT/split_merge.json.

    OUT=results python3 benchmarks/decode_kernel_breakdown.py
"""
import json, os, sys
import torch
from torch.profiler import profile, ProfilerActivity
sys.path.insert(0, os.path.dirname(__file__))
from mla_kernel_bandwidth import n_sets, time_ms
from litgpt.kernels import mla_decode_attention

rows = []
for (B, h, S, dc, dr) in [(1, 16, 16384, 512, 64), (1, 12, 16384, 256, 32), (1, 16, 65536, 512, 64), (8, 12, 16384, 256, 32),
                          (8, 16, 16384, 256, 32), (8, 12, 65536, 256, 32), (64, 12, 16384, 256, 32), (8, 32, 16384, 512, 64),
                          (8, 32, 65536, 512, 64), (8, 16, 16384, 512, 64)]:
    nbytes = B * S * (dc + dr) * 2
    kvs = [torch.randn(B, S, dc + dr, device="cuda", dtype=torch.bfloat16) for _ in range(n_sets(nbytes))]
    sets = [(torch.randn(B, h, 1, dc + dr, device="cuda", dtype=torch.bfloat16), kv) for kv in kvs]
    pos = torch.full((B, 1), S - 1, device="cuda")
    fn = lambda q, kv: mla_decode_attention(q, kv, pos, dc, (dc + dr) ** -0.5)
    total = time_ms(fn, sets)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for s in sets:
            fn(*s)
    g.replay(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            g.replay()
        torch.cuda.synchronize()
    per = {}
    for e in prof.key_averages():
        if e.device_type.name == "CUDA" and e.count:
            per[e.key] = e.device_time_total / (5 * len(sets))
    r = dict(B=B, h=h, S=S, d=f"{dc}+{dr}", total_us=total * 1e3, kernels_us=per, floor_us=nbytes / 3e12 * 1e6)
    print(json.dumps(r), flush=True)
    rows.append(r)
    del kvs, sets, g
    torch.cuda.empty_cache()
json.dump(rows, open(os.environ.get("OUT", ".") + "/split_merge.json", "w"), indent=1)
