#!/usr/bin/env bash
# The closing check of the batch-1 GEMV: its CUDA tests and those of folding, then batch-1 decode of
# pythia-160m-mla (kernels on and off) and pythia-160m with every one-row map on the GEMV. Logs land in $OUT.
set -euo pipefail
source benchmarks/gpu_setup.sh
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_kernels_linear.py tests/test_fold.py 2>&1 | tail -3 \
  | tee "$OUT/cuda_tests_gemv.log" || true
python3 benchmarks/decode.py --steps 200 --warmup 5 --models pythia-160m-mla pythia-160m --shapes 1x1024 \
  --modes compile+cuda_graph --attention kernel torch --out "$OUT/decode_1x1024.json" 2>&1 | tee "$OUT/decode.log"
