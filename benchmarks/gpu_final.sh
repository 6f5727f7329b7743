#!/usr/bin/env bash
# One call for the closing GPU numbers of issues 3-5: every CUDA-marked kernel/fold test; the batch-1 GEMV against
# cuBLAS, with and without its norm/GELU prologue; end-to-end decode with the defaults (folded weights, fused Triton
# kernels; and the torch path for comparison), pythia-160m-mla 1 x 1024 profiled, 32 x 4K, 8 x 32K and pythia-160m
# 1 x 1024; MLA's training attention per SDPA backend; pythia-160m-mla's compiled training step with cuDNN attention
# off. JSON and logs land in $OUT. Carry: [".whl"].
set -euo pipefail
source benchmarks/gpu_setup.sh
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_kernels.py tests/test_kernels_linear.py tests/test_fold.py \
  tests/test_benchmark_attention.py 2>&1 | tail -15 | tee "$OUT/cuda_tests.log" || true
python3 benchmarks/mla_kernel_bandwidth.py --batches 1 --contexts 1024 --heads 12 --no-torch --gemv \
  --out "$OUT/gemv.json" 2>&1 | tee "$OUT/gemv.log"
run() { python3 benchmarks/decode.py --steps 200 --warmup 5 "$@" 2>&1 | tee -a "$OUT/decode.log"; }
run --models pythia-160m-mla --shapes 1x1024 --modes compile+cuda_graph --attention kernel torch \
  --out "$OUT/decode_mla_1x1024.json" --profile "$OUT/prof"
run --models pythia-160m-mla --shapes 32x4096 8x32768 --modes compile --attention kernel --out "$OUT/decode_long.json"
run --models pythia-160m --shapes 1x1024 --modes compile+cuda_graph --attention kernel --out "$OUT/decode_mha_1x1024.json"
python3 benchmarks/sdpa_head_dims.py --out "$OUT/sdpa.json" 2>&1 | tee "$OUT/sdpa.log"
timeout 200 python3 -m litgpt benchmark pretrain --models '[pythia-160m-mla]' --compile '[true]' \
  --cudnn_attention false --out_dir "$OUT/pretrain_cudnn_false" 2>&1 | tee -a "$OUT/pretrain.log" || true
