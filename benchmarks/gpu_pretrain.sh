#!/usr/bin/env bash
# Issue 3's single-GPU measurements in one call; everything lands in $OUT (JSON + logs).
#   1. training-step throughput, MFU and peak memory: pythia-160m{,-gqa,-mqa,-mla}, micro batch 16 x 1024, bf16,
#      eager and compiled (`litgpt benchmark pretrain`);
#   2. `litgpt pretrain --config config_hub/pretrain/mla.yaml` on the local corpus with the Pythia tokenizer
#      (.devdata/, copied from ../shared/data) for a short budget: validation loss must fall.
set -euo pipefail
source benchmarks/gpu_setup.sh
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
python3 -m litgpt benchmark pretrain --out_dir "$OUT/pretrain_bench" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/pretrain_bench.log"
cp "$OUT/pretrain_bench/results.json" "$OUT/pretrain_bench.json"
python3 -m litgpt pretrain --config config_hub/pretrain/mla.yaml --out_dir /tmp/mla_run --resume false \
  --data TextFiles --data.train_data_path .devdata/corpus/train --data.val_data_path .devdata/corpus/val \
  --data.cache_dir /tmp/textcache --data.tokenize_workers 8 --tokenizer_dir .devdata/tokenizers/pythia \
  --train.max_steps ${MLA_STEPS:-120} --train.lr_warmup_steps 20 --train.log_interval 10 --eval.interval 40 \
  --train.save_interval 1000 2>&1 | tee "$OUT/mla_run.log"
cp /tmp/mla_run/logs/csv/version_0/metrics.csv "$OUT/mla_run_metrics.csv"
# 3. `litgpt generate` on the run's final checkpoint (greedy, then sampled) prints text.
python3 -m litgpt generate /tmp/mla_run/final --prompt "The king" --max_new_tokens 60 --temperature 0 2>&1 | tee "$OUT/mla_generate.log"
python3 -m litgpt generate /tmp/mla_run/final --prompt "Thou art" --max_new_tokens 60 --temperature 0.8 --top_k 50 2>&1 | tee -a "$OUT/mla_generate.log"
