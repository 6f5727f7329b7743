#!/usr/bin/env bash
# Issues 4 and 5 on one GPU in one call: every CUDA-marked test, then the end-to-end decode table (pythia-160m-mla
# and pythia-160m MHA, bf16, random weights) at the issues' shapes, compiled (torch.compile reduce-overhead = CUDA
# graphs over fused code) with the Triton decode kernels on and off, and captured eager (cuda_graph). JSON in $OUT.
set -euo pipefail
source benchmarks/gpu_setup.sh
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_kernels.py tests/test_benchmark_attention.py 2>&1 | tee "$OUT/cuda_tests.log" || true
STEPS=${STEPS:-50}
python3 benchmarks/decode.py --models pythia-160m-mla pythia-160m --shapes 1x1024 32x4096 8x32768 --modes compile \
  --attention kernel torch --steps "$STEPS" --warmup 5 --out "$OUT/decode_compile.json" --profile "$OUT/prof" 2>&1 | tee "$OUT/decode_compile.log"
python3 benchmarks/decode.py --models pythia-160m-mla --shapes 1x1024 32x4096 8x32768 --modes cuda_graph \
  --attention kernel --steps "$STEPS" --warmup 5 --out "$OUT/decode_graph.json" 2>&1 | tee "$OUT/decode_graph.log"
find "$OUT/prof" -type f ! -name 'pythia-160m-mla_*kernel*' -delete  # keep the MLA-with-kernel profiles
