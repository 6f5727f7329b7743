#!/usr/bin/env bash
# Decode on folded weights (litgpt/fold.py) in one call on one GPU: the small-batch GEMV against cuBLAS; then
# pythia-160m-mla at the issues' shapes with all kernels on ("kernel": Triton attention + GEMV) or off ("torch"),
# under torch.compile's CUDA graphs ("compile") and one explicit graph over compiled code ("compile+cuda_graph"),
# folded and not; pythia-160m MHA at batch 1. JSON, logs and kernel profiles land in $OUT.
set -euo pipefail
source benchmarks/gpu_setup.sh
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
STEPS=${STEPS:-100}
python3 benchmarks/mla_kernel_bandwidth.py --batches 1 --contexts 1024 --heads 12 --no-torch --gemv \
  --out "$OUT/gemv.json" 2>&1 | tee "$OUT/gemv.log"
run() { python3 benchmarks/decode.py --steps "$STEPS" --warmup 5 "$@" 2>&1 | tee -a "$OUT/decode_fold.log"; }
run --models pythia-160m-mla --shapes 1x1024 --modes compile+cuda_graph compile --attention kernel torch --fold on \
  --out "$OUT/decode_mla_1x1024_fold.json" --profile "$OUT/prof"
run --models pythia-160m-mla --shapes 1x1024 --modes compile+cuda_graph compile --attention kernel torch --fold off \
  --out "$OUT/decode_mla_1x1024_nofold.json"
run --models pythia-160m-mla --shapes 32x4096 8x32768 --modes compile --attention kernel --fold on off \
  --out "$OUT/decode_mla_long.json"
run --models pythia-160m --shapes 1x1024 --modes compile+cuda_graph --attention kernel --fold off on \
  --out "$OUT/decode_mha_1x1024.json"
