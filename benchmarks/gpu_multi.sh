#!/usr/bin/env bash
# Issue 3's multi-GPU check, on a machine with 2 GPUs (nvidia-h200-x2): the same pretrain of pythia-160m-mla
# (config_hub/pretrain/mla.yaml on the local corpus) on 1 GPU, on 2 GPUs with DDP and on 2 GPUs with FSDP; the
# tokens/s of each, and a 1-GPU `litgpt generate` from each 2-GPU run's final checkpoint. Logs land in $OUT.
set -euo pipefail
source benchmarks/gpu_setup.sh
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # never NVLink multicast here
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
STEPS=${STEPS:-40}
common=(--config config_hub/pretrain/mla.yaml --resume false
  --data TextFiles --data.train_data_path .devdata/corpus/train --data.val_data_path .devdata/corpus/val
  --data.cache_dir /tmp/textcache --data.tokenize_workers 16 --tokenizer_dir .devdata/tokenizers/pythia
  --train.max_steps "$STEPS" --train.lr_warmup_steps 10 --train.log_interval 10 --eval.interval 1000
  --eval.max_iters 20 --train.save_interval 1000)
for run in "1 auto" "2 ddp" "2 fsdp"; do
  set -- $run
  python3 -m litgpt pretrain "${common[@]}" --devices "$1" --strategy "$2" --out_dir "/tmp/multi_$2_$1" \
    2>&1 | tee "$OUT/pretrain_$2_$1.log"
done
for run in ddp_2 fsdp_2; do
  CUDA_VISIBLE_DEVICES=0 python3 -m litgpt generate "/tmp/multi_$run/final" --prompt "The king said" \
    --max_new_tokens 40 --temperature 0 2>&1 | tee "$OUT/generate_$run.log"
done
grep -h "this run trained" "$OUT"/pretrain_*.log
