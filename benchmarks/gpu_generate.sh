#!/usr/bin/env bash
# Issue 15 on one GPU: train three small checkpoints on the offline corpus, then time what users run.
#
# Checkpoints (each trained for TRAIN_S seconds, the three at once on the one GPU, Pythia tokenizer):
#   mla   pythia-160m-mla                                  ours only (upstream cannot build MLA without q_lora_rank;
#                                                          HF has no parallel-residual LayerNorm MLA layout)
#   mha   pythia-160m                                      ours, upstream litgpt 0.5.13, HF GPTNeoXForCausalLM
#   ds    pythia-160m-mla shapes in DeepSeek's layout      ours, upstream, HF DeepseekV3ForCausalLM
#         (RMSNorm, SwiGLU 2048, sequential residual, q_lora_rank 384)
# Parts: `diag` (import times, `litgpt benchmark decode` at the generate shapes), `tests` (CUDA tests), `finetune` (a
# `litgpt benchmark finetune` smoke on the mha and mla checkpoints, until DEADLINE_S) and `bench` (`litgpt benchmark generate`
# on the three, with the peers). Usage: bash benchmarks/gpu_generate.sh [diag] [bench]
# Carry: [".whl", ".peer", DATA]. DATA (default .data) holds copies of ../shared/data's corpus/, tokenizers/pythia/
# and instruct/ (../shared does not travel), and optionally wheels/ (bitsandbytes for QLoRA).
set -uo pipefail
DATA=${DATA:-$PWD/.data}
source benchmarks/gpu_setup.sh
set +e
if ls "$DATA"/wheels/*.whl >/dev/null 2>&1; then  # bitsandbytes for the QLoRA cells
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$DATA"/wheels/*.whl
fi
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
TRAIN_S=${TRAIN_S:-45}
timed() {  # label, command...: the command's wall time
  python3 -c "import subprocess, sys, time; t = time.time(); subprocess.run(sys.argv[2:]); print(sys.argv[1], f'{time.time() - t:.2f} s')" "$@"
}
log() { echo "[$(date +%T) +$((SECONDS))s] $*" | tee -a "$OUT/steps.log"; }
parts=${*:-diag bench tests finetune}

# upstream litgpt 0.5.13 (+ jsonargparse 4.41) in its own directory, run by the machine's python (torch, lightning,
# tokenizers, psutil, requests) through a wrapper that puts only that directory on PYTHONPATH: never next to ours
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/peersite .peer/*.whl
printf '#!/bin/sh\nPYTHONPATH=/tmp/peersite exec %s "$@"\n' "$(command -v python3)" > /tmp/peer_python
chmod +x /tmp/peer_python
(cd /tmp && env -u PYTHONPATH /tmp/peer_python -c "import litgpt, importlib.metadata as m; print('peer litgpt', m.version('litgpt'), litgpt.__file__)")

# ---------------------------------------------------------------------------------------------- checkpoints
log "tokenize"
cat > /tmp/tokenize.py <<PY
from pathlib import Path
from litgpt.data import TextFiles
from litgpt.tokenizer import Tokenizer
if __name__ == "__main__":  # the spawned tokenizer workers import this file
    data = TextFiles(train_data_path=Path("$DATA/corpus/train"), val_data_path=Path("$DATA/corpus/val"),
                     cache_dir=Path("/tmp/tokens"), tokenize_workers=12)
    data.connect(Tokenizer(Path("$DATA/tokenizers/pythia")), max_seq_length=1024)
    data.prepare_data()
PY
timeout 120 python3 /tmp/tokenize.py
cat > /tmp/ds.yaml <<'YAML'
model_config:
  name: pythia-160m-mla-ds
  block_size: 2048
  n_layer: 12
  n_embd: 768
  n_head: 12
  vocab_size: 50254
  padding_multiple: 128
  parallel_residual: false
  bias: false
  norm_class_name: RMSNorm
  norm_eps: 1.0e-06
  mlp_class_name: LLaMAMLP
  intermediate_size: 2048
  latent_attention: {q_lora_rank: 384, kv_lora_rank: 256, qk_rope_head_dim: 32, qk_nope_head_dim: 64, v_head_dim: 64}
YAML
train() {  # name, then the model options
  local name=$1; shift
  timeout 240 python3 -m litgpt pretrain "$@" --out_dir /tmp/ckpt/$name --precision bf16-mixed --resume false \
    --data TextFiles --data.train_data_path "$DATA/corpus/train" --data.val_data_path "$DATA/corpus/val" \
    --data.cache_dir /tmp/tokens --tokenizer_dir "$DATA/tokenizers/pythia" --train.max_time "$TRAIN_S" \
    --train.micro_batch_size 16 --train.global_batch_size 64 --train.max_seq_length 1024 --train.lr_warmup_steps 20 \
    --train.save_interval null --train.log_interval 20 --eval.interval 1000 --eval.max_iters 10 \
    --optimizer.lr 0.0006 > "/tmp/train_$name.log" 2>&1
  tail -3 "/tmp/train_$name.log"
}
log "pretrain mla, mha, ds for ${TRAIN_S}s each, concurrently"
train mla --model_name pythia-160m-mla &
train mha --model_name pythia-160m &
train ds --config /tmp/ds.yaml &
wait
cat /tmp/train_*.log >> "$OUT/steps.log"
for m in mla mha ds; do ls /tmp/ckpt/$m/final/ || echo "no checkpoint for $m"; done

# ---------------------------------------------------------------------------------------------- diagnostics
if [[ " $parts " == *" diag "* ]]; then
  log "import times: without a writable bytecode cache (the image's state), then with PYTHONPYCACHEPREFIX"
  for i in 1 2; do env -u PYTHONPYCACHEPREFIX python3 -c "import time; t = time.time(); import torch; print(f'import torch, no pyc cache: {time.time() - t:.2f} s')"; done 2>&1 | tee -a "$OUT/diag.log"
  for i in 1 2 3; do python3 -c "import time; t = time.time(); import torch; print(f'import torch, pyc cache: {time.time() - t:.2f} s')"; done 2>&1 | tee -a "$OUT/diag.log"
  log "benchmark decode"
  timeout 150 python3 -m litgpt benchmark decode --models '[pythia-160m-mla, pythia-160m]' --batch_sizes '[1, 8]' \
    --context_lengths '[1024]' --mode cuda_graph --decode_steps 300 --warmup 10 --out_dir /tmp/decode_cuda_graph 2>&1 \
    | tail -2 | tee -a "$OUT/diag.log"
  cat /tmp/decode_cuda_graph/results.csv >> "$OUT/diag.log"
fi

if [[ " $parts " == *" tests "* ]]; then
  log "CUDA kernel tests (before timing anything that runs them)"
  timeout 120 python3 -m pytest -q -p no:cacheprovider -n 8 -m cuda tests/test_kernels.py 2>&1 | tail -15 \
    | tee -a "$OUT/steps.log"
fi

# ---------------------------------------------------------------------------------------------- the benchmark
if [[ " $parts " == *" bench "* ]]; then
  for m in mla mha ds; do
    log "benchmark generate $m"
    case $m in
      mla) extra=(--hf false) ;;
      mha) extra=(--peer_python /tmp/peer_python --peer_new_tokens '[100]' --chat false) ;;
      ds) extra=(--peer_python /tmp/peer_python --peer_new_tokens '[100]' --chat false --batches '[1]') ;;
    esac
    timeout 300 python3 -m litgpt benchmark generate /tmp/ckpt/$m/final --out_dir /tmp/bench_$m "${extra[@]}" 2>&1 \
      | tail -15
    cp /tmp/bench_$m/results.json "$OUT/generate_$m.json"
    cat /tmp/bench_*/results.md > "$OUT/generate.md"
  done
fi
# ---------------------------------------------------------------------------------------------- GPU tests, fine-tuning
if [[ " $parts " == *" tests "* ]]; then
  log "CUDA tests of this round's paths"
  timeout 200 python3 -m pytest -q -p no:cacheprovider -n 8 -m cuda tests/test_kv_cache.py \
    tests/test_attention.py tests/test_generate.py tests/test_startup.py tests/test_loss.py \
    tests/test_kernels_cross_entropy.py tests/test_lora.py tests/test_quantize.py tests/test_moe.py tests/test_fold.py \
    tests/test_session.py 2>&1 | tail -30 | tee -a "$OUT/steps.log"
fi
if [[ " $parts " == *" finetune "* ]]; then
  left=$((${DEADLINE_S:-440} - SECONDS))
  log "benchmark finetune smoke (${FT_STEPS:-40} steps per cell, ${left}s left)"
  timeout $left python3 -m litgpt benchmark finetune --checkpoints "{mha: /tmp/ckpt/mha/final, mla: /tmp/ckpt/mla/final}" \
    --data JSON --data.json_path "$DATA/instruct" --data.mask_prompt true --attention '[mha, mla]' \
    --train.max_steps ${FT_STEPS:-40} --train.micro_batch_size 16 --train.global_batch_size 16 \
    --train.max_seq_length 128 --eval.max_iters 10 --out_dir /tmp/ft 2>&1 | tail -20 | tee -a "$OUT/steps.log"
  cp /tmp/ft/results.md "$OUT/finetune.md"
fi
log "done"
