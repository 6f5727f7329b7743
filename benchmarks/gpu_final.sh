#!/usr/bin/env bash
# The closing GPU numbers of issues 3-5 in one script; JSON and logs land in $OUT. Each part fits one device call
# (10 minutes); name the parts to run, or none for all of them: `bash benchmarks/gpu_final.sh tests decode`.
#   tests     -- every CUDA-marked test of the kernels, the loss, MLA's attention and the folded decode step
#   kernels   -- MLA decode kernel bandwidth table (vs the torch absorbed path), the batch-1 GEMV against cuBLAS,
#                the training loss's cross-entropy passes against their byte floor
#   decode    -- end-to-end decode with the defaults (folded weights, fused Triton kernels) and the torch path:
#                pythia-160m-mla 1 x 1024 (profiled), 32 x 4K and 8 x 32K; pythia-160m 1 x 1024
#   training  -- the compiled training step of all four attention variants with CUDA graphs (reduce-overhead);
#                `benchmarks/gpu_pretrain.sh` has the eager and default-compile rows and the mla.yaml run
# Carry: [".whl"].
set -euo pipefail
source benchmarks/gpu_setup.sh
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
parts=${*:-tests kernels decode training}

tests() {
  python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_kernels.py tests/test_kernels_linear.py tests/test_fold.py \
    tests/test_benchmark_attention.py tests/test_kernels_cross_entropy.py tests/test_loss.py tests/test_attention.py \
    2>&1 | tail -15 | tee "$OUT/cuda_tests.log" || true
}
kernels() {
  python3 benchmarks/mla_kernel_bandwidth.py --out "$OUT/mla_kernel_bandwidth.json" 2>&1 | tee "$OUT/mla_kernel_bandwidth.log"
  python3 benchmarks/mla_kernel_bandwidth.py --batches 1 --contexts 1024 --heads 12 --no-torch --gemv \
    --out "$OUT/gemv.json" 2>&1 | tee "$OUT/gemv.log"
  python3 benchmarks/cross_entropy.py --out "$OUT/cross_entropy.json" 2>&1 | tee "$OUT/cross_entropy.log"
}
decode() {
  run() { python3 benchmarks/decode.py --steps 200 --warmup 5 "$@" 2>&1 | tee -a "$OUT/decode.log"; }
  run --models pythia-160m-mla --shapes 1x1024 --modes compile+cuda_graph --attention kernel torch \
    --out "$OUT/decode_mla_1x1024.json" --profile "$OUT/prof"
  run --models pythia-160m-mla --shapes 32x4096 8x32768 --modes compile --attention kernel --out "$OUT/decode_long.json"
  run --models pythia-160m --shapes 1x1024 --modes compile+cuda_graph --attention kernel --out "$OUT/decode_mha_1x1024.json"
}
training() {
  python3 -m litgpt benchmark pretrain --compile '[true]' --compile_mode reduce-overhead --profile true \
    --out_dir "$OUT/pretrain_cuda_graphs" 2>&1 | tee "$OUT/pretrain_cuda_graphs.log"
  cp "$OUT/pretrain_cuda_graphs/results.json" "$OUT/pretrain_cuda_graphs.json"
}
for part in $parts; do "$part"; done
