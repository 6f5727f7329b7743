#!/usr/bin/env bash
# Issue 14 (structure): the same speed before and after, measured back to back on one GPU, plus the CUDA tests.
# The tree before the change is exported into .before (git-ignored) and carried beside this checkout:
#   rm -rf .before && mkdir .before && git archive 7dad5ed litgpt benchmarks/decode.py | tar -x -C .before
# Parts (each fits one 10-minute device call): `tests`, `decode`, `pretrain MODEL...`. Carry: [".whl", ".before"].
set -uo pipefail
source benchmarks/gpu_setup.sh
set +e  # one failing part must not stop the next
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
part=${1:-tests}
shift || true
site=${PYTHONPATH%%:*}  # /tmp/site when wheels were carried

case "$part" in
tests)
  python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_kernels.py tests/test_kernels_linear.py tests/test_fold.py \
    tests/test_kv_cache.py tests/test_attention.py tests/test_generate.py tests/test_benchmark_attention.py \
    tests/test_kernels_cross_entropy.py tests/test_loss.py 2>&1 | tail -25 | tee "$OUT/cuda_tests.log"
  ;;
decode)  # benchmarks/decode.py puts its own checkout first on sys.path
  for tree in before after; do
    root=$([ "$tree" = before ] && echo .before || echo .)
    PYTHONPATH=$site python3 "$root/benchmarks/decode.py" --models pythia-160m-mla pythia-160m \
      --shapes 1x1024 32x4096 8x32768 --modes compile --attention kernel --steps 100 --warmup 10 \
      --out "$OUT/decode_$tree.json" 2>&1 | tee -a "$OUT/decode.log"
  done
  ;;
pretrain)  # one model at a time, before then after, so each pair runs back to back
  for model in "$@"; do
    for tree in before after; do
      root=$([ "$tree" = before ] && echo .before || echo .)
      (cd "$root" && PYTHONPATH=$site:$PWD python3 -m litgpt benchmark pretrain --models "[$model]" --compile '[true]' \
        --out_dir "/tmp/pretrain_${model}_$tree") 2>&1 | tee -a "$OUT/pretrain.log"
      cp "/tmp/pretrain_${model}_$tree/results.json" "$OUT/pretrain_${model}_$tree.json" || true
    done
  done
  ;;
esac
