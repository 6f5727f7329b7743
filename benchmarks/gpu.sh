#!/usr/bin/env bash
# The GPU measurements behind benchmarks/results/*.md, one topic per page. From the repository root, on the GPU
# machine:
#
#   bash benchmarks/gpu.sh TOPIC [TOPIC...]          run the topics in the order given
#   bash benchmarks/gpu.sh --list TOPIC [TOPIC...]   print the commands they run, run nothing (no GPU needed)
#   bash benchmarks/gpu.sh --background TOPIC...     start them as a process of its own session, then --collect
#   bash benchmarks/gpu.sh --collect                 wait (COLLECT_S, default 570 s) and pack what they wrote
#
# Topics (page: benchmarks/results/TOPIC.md):
#   decode    benchmarks/decode.py, pythia-160m-mla and pythia-160m at 1 x 1024, 32 x 4K and 8 x 32K, the default
#             step (folded weights, Triton kernels) and the torch path, with a kernel profile at 1 x 1024
#   generate  `litgpt benchmark decode` at the generate shapes (captured and eager step), `litgpt benchmark generate`
#             on random-init checkpoints (GENERATE_MODELS, default "mla mha"; "ds" adds the DeepSeek-layout MLA),
#             upstream litgpt 0.5.13 and HF transformers beside ours, then where `litgpt generate`'s start-up goes
#   training  `litgpt benchmark pretrain` of the four attention variants (eager, compiled, compiled with CUDA graphs),
#             a short `pretrain --config config_hub/pretrain/mla.yaml` on the offline corpus and `generate` from it;
#             on a machine with 2 GPUs or more also the same pretrain on 1 GPU, 2 with DDP and 2 with FSDP
#   finetune  pythia-160m and pythia-160m-mla pretrained for PRETRAIN_TOKENS (default 100M, resumable), then
#             `litgpt benchmark finetune` (full / lora / qlora x mha / mla / gqa / mqa), greedy answers of every
#             fine-tuned model to held-out words, and the decode rate of a fine-tuned MLA against its base
#   moe       `litgpt benchmark pretrain` of the MoE models against dense ones of equal active parameters, then
#             `litgpt compare --config config_hub/compare/moe-attention.yaml` on the offline corpus, 50M tokens each
#   convert   pythia-70m MHA -> MLA at 1/4 and 1/8 of its KV bytes, healed, against the same shapes from scratch;
#             MLA vs MLA-o at 50M tokens, two seeds; then benchmarks/convert_report.py
#   moe_model DeepSeek-V2-Lite with random bf16 weights (benchmarks/moe_model.py): the CUDA tests of the grouped MoE
#             kernels and of a captured MoE decode step, `litgpt benchmark decode` (captured step) at batch 1, 8, 32 x 1K and 4K contexts, our prefill of
#             4K and 32 x 4K tokens (tokens/s, MFU) with kernel profiles of the batch-1 and batch-8 decode steps,
#             `litgpt benchmark generate` of 256 tokens (phases) from a random-init checkpoint (needs DATA's Pythia
#             tokenizer), then HF transformers' generate (dynamic and static cache) while time is left
#   serve     the engine's CUDA tests, then `litgpt benchmark serve` on random-init pythia-160m-mla and pythia-160m
#             in one run: 1,024-token prompts of the corpus's held-out literature, 256 new tokens, concurrency 1, 16, 64 and 256, both at one
#             --kv_cache_gib (SERVE_KV_GIB, default 2.15: every MLA sequence fits, MHA admits at most 61), upstream
#             litgpt 0.5.13's `litgpt serve` on the MHA checkpoint at concurrency 1; first `litgpt benchmark generate`
#             of the benchmark's first prompt at batch 1 (the decode rate concurrency 1 is compared with), and
#             benchmarks/serve_engine.py on MLA (the engine without HTTP: prefill, decode and host time per step, and
#             host and kernel profiles at concurrency 1 and 64). About 10
#             minutes (upstream serves one request at a time): start it with --background
#   evaluate  pythia-160m and pythia-160m-mla pretrained for PRETRAIN_TOKENS (finetune's runs in KEEP, resumed or
#             reused), `litgpt evaluate` of both on two tasks made from the corpus's held-out text by
#             benchmarks/evaluate_tasks.py (its perplexity; which of 4 definitions belongs to a GCIDE word), then
#             benchmarks/evaluate_gpu.py: ours against lm-eval's HFLM on the HF-converted pythia-160m. Pretraining
#             takes about 9 minutes: start it with --background. Page: tutorials/results/evaluate/README.md
#   fp8       the fp8 cache's CUDA tests, then the fp8 KV cache (kv_cache_dtype fp8_e4m3) against the bf16 cache on
#             pythia-160m-mla and pythia-160m:
#             `litgpt benchmark decode` of random weights at 1 x 1K, 32 x 4K and 8 x 32K (block_size raised to 32K), each
#             cache with its capacity table (longest context, largest batch at 4K in 16 GiB); `litgpt benchmark serve`
#             of the random-init checkpoints at concurrency 256 (SERVE_KV_GIB, default 2.15) with the default cache and
#             with `--extra_args '[--kv_cache_dtype, fp8_e4m3]'`; then quality on the PRETRAIN_TOKENS pretrains
#             (finetune's and evaluate's runs in KEEP, resumed or reused): `litgpt benchmark cache_loss` (validation
#             loss of FP8_LOSS_TOKENS, default 1M, of the held-out text by the plain forward and through each cache, 256
#             tokens per prefill) and `litgpt evaluate --cache_chunk 256` on evaluate's two local tasks with each cache
#             (FP8_SERVE=0 stops after the decode tables, FP8_QUALITY=0 before the quality half). Start it with
#             --background
#   moe_modes DeepSeek-V2-Lite's decode step at batch 1 and 8 x 1K in each capture mode: the captured eager step
#             (cuda_graph), torch.compile with CUDA graphs (compile) and the compiled step captured (compile+cuda_graph)
#   kernels   MLA decode kernel bandwidth (and over an MHA cache), its split/merge breakdown, the batch-1 GEMV
#             against cuBLAS, the training loss's cross-entropy passes, SDPA at MLA's head widths, the sampler draw
#   tests     every CUDA-marked test
#
# Results: RESULTS (default out/gpu)/<date>_<device>/<topic>/: JSON, markdown tables, logs; under the device tool
# (OUT set) they go to /tmp/gpu-results and come back as one archive, $OUT/<date>_<device>_<topics>.tar.gz. Checkpoints
# and token caches: KEEP (default /tmp/keep); topics resume or skip what it holds. DEADLINE_S (default 560) bounds
# the run: each command gets what is left of it. A device call runs at most 600 s; finetune, moe and convert take
# longer, so start them with --background and send --collect calls until the steps log says done; so do serve and
# evaluate.
#
# Inputs, carried with the device tool (carry [".whl", ".peer", ".gpu"]):
#   (`bash benchmarks/gpu_carry.sh CORPUS_DIR`, on a machine with PyPI, downloads .whl and .peer and packs .gpu)
#   .whl/  wheels the image lacks (jsonargparse, ...): benchmarks/gpu_setup.sh installs them; also lm-eval and what it
#          imports (evaluate), fastapi, uvicorn, pydantic and theirs (serve)
#   .peer/ upstream litgpt 0.5.13's wheel, for `generate` and `serve` (it runs from its own PYTHONPATH, never beside
#          ours), with the wheels it needs that the image lacks: its jsonargparse (<= 4.41), litserve, fastapi, ...
#   .gpu/  DATA: the offline corpus of `python benchmarks/offline_corpus.py --out .gpu/offline_corpus --tokenizers`
#          (or .gpu/corpus.tar.xz of its corpus/, instruct/ and tokenizers/), and wheels/ (bitsandbytes, for QLoRA)
set -uo pipefail
cd "$(dirname "$0")/.."
TOPICS="decode generate serve training finetune evaluate fp8 moe moe_model moe_modes convert kernels tests"
pack() {  # DIR ARCHIVE: DIR without weights or token caches; split into 15 MiB parts (a returned file's limit)
  tar -C "$1" --exclude='*.pth' --exclude='*.pth.lora' --exclude='*.bin' --exclude='tokens' --exclude='*.ckpt' \
    --exclude='*.safetensors' --exclude='tokenizer*.json' -czf "$2" . 2>/dev/null
  rm -f "$2".part-*
  if [ "$(stat -c %s "$2")" -gt $((15 * 1024 * 1024)) ]; then split -b 15m -d "$2" "$2.part-" && rm "$2"; fi
}

if [ "${1:-}" = "--collect" ] || [ "${1:-}" = "--background" ]; then
  collect() {
    local until=$((SECONDS + ${COLLECT_S:-570}))
    while [ $SECONDS -lt $until ] && ! grep -q "\] done" /tmp/keep/steps.log 2>/dev/null; do sleep 5; done
    tail -40 /tmp/keep/steps.log
    pack /tmp/keep/results "${OUT:-/tmp}/results.tar.gz"
    ls -la "${OUT:-/tmp}"
  }
  if [ "$1" = "--background" ]; then
    shift
    rm -rf /tmp/gpu-src && mkdir -p /tmp/gpu-src /tmp/keep && cp -r . /tmp/gpu-src/
    # an earlier pipeline's log (its "done" would end this one's --collect at once) is kept under another name
    [ -f /tmp/keep/steps.log ] && mv /tmp/keep/steps.log "/tmp/keep/steps-$(date +%H%M%S).log"
    (cd /tmp/gpu-src && KEEP=/tmp/keep RESULTS=/tmp/keep/results DEADLINE_S=${PIPELINE_S:-1500} \
      setsid nohup bash benchmarks/gpu.sh "$@" > /tmp/keep/pipeline.log 2>&1 < /dev/null &)
    sleep 5
  fi
  collect
  exit 0
fi

LIST=0
if [ "${1:-}" = "--list" ]; then LIST=1; shift; fi
[ $# -gt 0 ] || { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2; }
for topic in "$@"; do
  case " $TOPICS " in *" $topic "*) ;; *) echo "unknown topic '$topic' (topics: $TOPICS)" >&2; exit 2 ;; esac
done

DATA=${DATA:-$PWD/.gpu}
KEEP=${KEEP:-/tmp/keep}
DEADLINE_S=${DEADLINE_S:-560}
if [ $LIST = 1 ]; then
  RUN_DIR='$RESULTS/DATE_DEVICE' D='$DATA' KEEP='$KEEP' GPUS=2
else
  source benchmarks/gpu_setup.sh
  set +e
  device=$(python3 -c 'import torch; print(torch.cuda.get_device_name())')
  slug=$(echo "$device" | grep -oiE 'h100|h200|b200|a100|l40s' | head -1 | tr 'A-Z' 'a-z')
  RUN_DIR=${RESULTS:-$([ -n "${OUT:-}" ] && echo /tmp/gpu-results || echo out/gpu)}/$(date +%F)_${slug:-gpu}
  GPUS=$(python3 -c 'import torch; print(torch.cuda.device_count())')
  D=/tmp/data  # the offline corpus
  if [ -d "$DATA/offline_corpus/corpus" ]; then D=$DATA/offline_corpus
  elif [ -f "$DATA/corpus.tar.xz" ] && [ ! -d $D/corpus ]; then mkdir -p $D && tar -C $D -xJf "$DATA/corpus.tar.xz"
  fi
  [ -d $D/tokenizers ] || { [ -d "$DATA/tokenizers" ] && cp -r "$DATA/tokenizers" $D/; }
  if ls "$DATA"/wheels/*.whl >/dev/null 2>&1 && [ ! -d /tmp/site/bitsandbytes ]; then  # QLoRA
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$DATA"/wheels/*.whl
  fi
  mkdir -p "$RUN_DIR" "$KEEP"
  python3 -c 'import torch, triton; print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")' \
    > "$RUN_DIR/device.txt"
fi

log() { [ $LIST = 1 ] && echo "# $*" || echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$KEEP/steps.log"; }
left() { local s=$((DEADLINE_S - SECONDS)); echo $((s > 10 ? s : 10)); }
show() {  # the command as one could paste it: arguments with spaces or shell characters in single quotes
  local a out=()
  for a in "$@"; do
    case $a in
      *[[:space:]\[\]{}\(\)\;\&\|\<\>\*\?\"]*) case $a in *'$'*) out+=("\"$a\"") ;; *) out+=("'$a'") ;; esac ;;
      *) out+=("$a") ;;
    esac
  done
  echo "${out[*]}"
}
x() {  # one command, bounded by what is left of DEADLINE_S, its output appended to $R/log.txt
  if [ $LIST = 1 ]; then show "$@"; return 0; fi
  timeout "$(left)" "$@" 2>&1 | tee -a "$R/log.txt"
}
xbg() {  # LOGFILE COMMAND...: one of several commands that run at once on the GPU (then `wait`)
  local logfile=$1; shift
  if [ $LIST = 1 ]; then echo "$(show "$@") > $logfile &"; return 0; fi
  timeout "$(left)" "$@" > "$logfile" 2>&1 &
}
xwait() { if [ $LIST = 1 ]; then echo wait; else wait; fi; }
topic_dir() { R=$RUN_DIR/$1; [ $LIST = 1 ] || mkdir -p "$R"; log "topic $1 -> $R"; }
corpus=(--data TextFiles --data.train_data_path $D/corpus/train --data.val_data_path $D/corpus/val
        --data.cache_dir $KEEP/tokens --data.tokenize_workers 12 --tokenizer_dir $D/tokenizers/pythia)

# ----------------------------------------------------------------------------------------------------------- tests
topic_tests() {
  topic_dir tests
  x python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_kernels.py tests/test_kernels_linear.py \
    tests/test_kernels_sampling.py tests/test_kernels_cross_entropy.py tests/test_kv_cache.py tests/test_attention.py \
    tests/test_fold.py tests/test_benchmark_attention.py tests/test_generate.py tests/test_session.py \
    tests/test_streaming.py tests/test_startup.py tests/test_loss.py tests/test_lora.py tests/test_quantize.py \
    tests/test_moe.py tests/test_mla_o.py tests/test_moe_grouped.py
}

# ---------------------------------------------------------------------------------------------------------- kernels
topic_kernels() {
  topic_dir kernels
  x python3 benchmarks/mla_kernel_bandwidth.py --mha --out $R/mla_kernel_bandwidth.json
  x env OUT=$R python3 benchmarks/decode_kernel_breakdown.py
  x python3 benchmarks/mla_kernel_bandwidth.py --batches 1 --contexts 1024 --heads 12 --no-torch --gemv --out $R/gemv.json
  x python3 benchmarks/cross_entropy.py --out $R/cross_entropy.json
  x python3 benchmarks/sdpa_head_dims.py --out $R/sdpa_head_dims.json
  x python3 benchmarks/sampling.py --out $R/sampling.json
}

# ----------------------------------------------------------------------------------------------------------- decode
topic_decode() {
  topic_dir decode
  x python3 benchmarks/decode.py --steps 200 --warmup 5 --models pythia-160m-mla pythia-160m --shapes 1x1024 \
    --modes compile+cuda_graph --attention kernel torch --out $R/decode_1x1024.json --profile $R/profiles
  x python3 benchmarks/decode.py --steps 100 --warmup 5 --models pythia-160m-mla pythia-160m --shapes 32x4096 8x32768 \
    --modes compile --attention kernel torch --out $R/decode_long.json
}

# --------------------------------------------------------------------------------------------------------- generate
random_bases() {
  [ $LIST = 0 ] && [ -f "$KEEP/random/ds/lit_model.pth" ] && return 0
  x python3 benchmarks/gpu_helpers.py random-bases $KEEP/random $D/tokenizers/pythia
}
peer_python() {  # /tmp/peer_python: python3 with upstream litgpt 0.5.13 (and .peer's wheels) alone on its path
  [ $LIST = 1 ] && return 0
  [ -d /tmp/peersite/litgpt ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/peersite .peer/*.whl
  printf '#!/bin/sh\nPYTHONPATH=/tmp/peersite exec %s "$@"\n' "$(command -v python3)" > /tmp/peer_python
  chmod +x /tmp/peer_python
}
topic_generate() {
  topic_dir generate
  random_bases
  peer_python
  x python3 -m litgpt benchmark decode --models '[pythia-160m-mla, pythia-160m]' --batch_sizes '[1, 8]' \
    --context_lengths '[1024]' --mode cuda_graph --decode_steps 300 --warmup 10 --out_dir $R/decode
  x python3 -m litgpt benchmark decode --models '[pythia-160m-mla, pythia-160m]' --batch_sizes '[1]' \
    --context_lengths '[1024]' --mode eager --decode_steps 50 --warmup 5 --out_dir $R/decode_eager
  local m
  for m in ${GENERATE_MODELS:-mla mha}; do
    case $m in
      mla) x python3 -m litgpt benchmark generate $KEEP/random/mla --out_dir $R/generate_mla --hf false ;;
      mha) x python3 -m litgpt benchmark generate $KEEP/random/mha --out_dir $R/generate_mha \
             --peer_python /tmp/peer_python --peer_new_tokens '[100]' --chat false ;;
      ds) x python3 -m litgpt benchmark generate $KEEP/random/ds --out_dir $R/generate_ds \
            --peer_python /tmp/peer_python --peer_new_tokens '[100]' --chat false --batches '[1]' ;;
    esac
  done
  log "where litgpt generate's time goes: two plain runs (they fill the caches), -X importtime, a cProfile"
  for i in 1 2; do x python3 -m litgpt generate $KEEP/random/mla --max_new_tokens 100 --temperature 0; done
  x python3 -X importtime -m litgpt generate $KEEP/random/mla --max_new_tokens 100 --temperature 0
  x python3 benchmarks/gpu_helpers.py profile-generate $KEEP/random/mla $R
}

# ------------------------------------------------------------------------------------------------------------ serve
topic_serve() {
  topic_dir serve
  random_bases
  peer_python
  local text=$D/corpus/val/literature.txt prompt=$R/prompt_1024.txt p m
  x python3 benchmarks/gpu_helpers.py prompt-text $text $D/tokenizers/pythia 1024 $prompt
  if [ $LIST = 1 ]; then p="\$(cat $prompt)"; else p=$(cat "$prompt" 2>/dev/null); fi
  log "the engine's captured steps against its eager ones on this GPU"
  x python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_serve_engine.py
  log "litgpt generate at batch 1 of the first prompt the serve benchmark sends, 256 new tokens (two timed runs)"
  for m in mla mha; do
    x python3 -m litgpt benchmark generate $KEEP/random/$m --prompt "$p" --new_tokens '[256]' --batches '[1]' \
      --repeats 2 --chat false --hf false --out_dir $R/generate_$m
  done
  log "benchmark serve: ours on MLA then MHA at one --kv_cache_gib, then upstream's litgpt serve on MHA"
  x python3 -m litgpt benchmark serve --checkpoint_dirs "[$KEEP/random/mla, $KEEP/random/mha]" --text_file $text \
    --concurrency '[1, 16, 64, 256]' --prompt_tokens 1024 --max_tokens 256 --max_batch_size 256 \
    --kv_cache_gib ${SERVE_KV_GIB:-2.15} --peer_python /tmp/peer_python --peer_checkpoint_dir $KEEP/random/mha \
    --peer_concurrency '[1]' --out_dir $R/benchmark
  log "the engine alone (no HTTP) on MLA: where a step's time goes at each concurrency, same prompts and --kv_cache_gib"
  x python3 benchmarks/serve_engine.py --checkpoint_dir $KEEP/random/mla --text_file $text \
    --concurrency 1 16 64 256 --kv_cache_gib ${SERVE_KV_GIB:-2.15} --profile 1 64 --out $R/engine_mla.json
}

# --------------------------------------------------------------------------------------------------------- evaluate
topic_evaluate() {
  topic_dir evaluate
  x python3 benchmarks/gpu_helpers.py tokenize $D $KEEP/tokens
  log "pretrain pythia-160m and pythia-160m-mla at once (finetune's runs: a finished one is only reloaded)"
  pretrain_base pythia-160m
  pretrain_base pythia-160m-mla
  xwait
  local tasks=$KEEP/evaluate_tasks names=corpus_heldout,gcide_definitions m
  x python3 benchmarks/evaluate_tasks.py --corpus $D/corpus/val --out $tasks
  x cp $tasks/corpus_heldout.yaml $tasks/gcide_definitions.yaml $R/
  for m in pythia-160m pythia-160m-mla; do
    x python3 -m litgpt evaluate $KEEP/pretrain/$m/final --tasks $names --include_path $tasks --batch_size 32 \
      --out_dir $R/$m
  done
  log "the same at the 1,024 tokens the models trained at (perplexity windows of 1,024, not the block size)"
  for m in pythia-160m pythia-160m-mla; do
    x python3 -m litgpt evaluate $KEEP/pretrain/$m/final --tasks $names --include_path $tasks --batch_size 32 \
      --max_length 1024 --out_dir $R/${m}_1024
  done
  log "ours against lm-eval's HFLM on the HF-converted pythia-160m, same tasks, same process"
  x python3 benchmarks/evaluate_gpu.py --checkpoint_dir $KEEP/pretrain/pythia-160m/final --tasks $names \
    --include_path $tasks --batch_size 32 --out $R/evaluate_gpu.json
}

# -------------------------------------------------------------------------------------------------------------- fp8
topic_fp8() {
  topic_dir fp8
  random_bases
  local text=$D/corpus/val/literature.txt kv shape m
  log "the fp8 kernels against the torch path on this GPU"
  x python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_kv_cache_fp8.py
  log "benchmark decode, each shape with the bf16 cache (kv_cache_dtype null) then the fp8 cache, 8 x 32K first;"
  log "capacity in 16 GiB (largest batch at 4K)"
  for shape in 8x32768 32x4096 1x1024; do
    for kv in null fp8_e4m3; do
      x python3 -m litgpt benchmark decode --models '[pythia-160m-mla, pythia-160m]' --batch_sizes "[${shape%x*}]" \
        --context_lengths "[${shape#*x}]" --kv_cache_dtype $kv --mode cuda_graph --decode_steps 200 --warmup 10 \
        --memory_budget_gib 16 --fit_batch_at_context 4096 --out_dir $R/decode_${kv}_$shape
    done
  done
  [ "${FP8_SERVE:-1}" = 1 ] || return 0
  log "benchmark serve at concurrency 256: the default (bf16) cache, then the fp8 cache, at one --kv_cache_gib"
  local serve=(--checkpoint_dirs "[$KEEP/random/mla, $KEEP/random/mha]" --text_file $text --concurrency '[256]'
               --prompt_tokens 1024 --max_tokens 256 --max_batch_size 256 --kv_cache_gib ${SERVE_KV_GIB:-2.15})
  x python3 -m litgpt benchmark serve "${serve[@]}" --out_dir $R/serve_bf16
  x python3 -m litgpt benchmark serve "${serve[@]}" --extra_args '[--kv_cache_dtype, fp8_e4m3]' --out_dir $R/serve_fp8
  [ "${FP8_QUALITY:-1}" = 1 ] || return 0
  log "quality: the pretrained pythia-160m-mla and pythia-160m (finetune's and evaluate's runs)"
  x python3 benchmarks/gpu_helpers.py tokenize $D $KEEP/tokens
  pretrain_base pythia-160m
  pretrain_base pythia-160m-mla
  xwait
  x python3 -m litgpt benchmark cache_loss --checkpoint_dirs \
    "[$KEEP/pretrain/pythia-160m-mla/final, $KEEP/pretrain/pythia-160m/final]" --text $D/corpus/val \
    --kv_cache_dtypes '[null, fp8_e4m3]' --cache_chunk 256 --batch_size 8 --max_tokens ${FP8_LOSS_TOKENS:-1000000} \
    --out_dir $R/cache_loss
  local tasks=$KEEP/evaluate_tasks names=corpus_heldout,gcide_definitions
  x python3 benchmarks/evaluate_tasks.py --corpus $D/corpus/val --out $tasks
  for m in pythia-160m-mla pythia-160m; do
    for kv in null fp8_e4m3; do
      x python3 -m litgpt evaluate $KEEP/pretrain/$m/final --tasks $names --include_path $tasks --batch_size 32 \
        --cache_chunk 256 --kv_cache_dtype $kv --out_dir $R/evaluate_${m}_$kv
    done
  done
}

# --------------------------------------------------------------------------------------------------------- training
topic_training() {
  topic_dir training
  x python3 -m litgpt benchmark pretrain --compile '[false, true]' --profile true --out_dir $R/pretrain
  x python3 -m litgpt benchmark pretrain --compile '[true]' --compile_mode reduce-overhead --out_dir $R/pretrain_cuda_graphs
  local short=(--config config_hub/pretrain/mla.yaml --resume false "${corpus[@]}" --train.lr_warmup_steps 20
               --train.log_interval 10 --train.save_interval 1000)
  x python3 -m litgpt pretrain "${short[@]}" --out_dir $KEEP/mla_run --train.max_steps 120 --eval.interval 40
  x cp $KEEP/mla_run/logs/csv/version_0/metrics.csv $R/mla_run_metrics.csv
  x python3 -m litgpt generate $KEEP/mla_run/final --prompt "The king" --max_new_tokens 60 --temperature 0
  if [ "$GPUS" -ge 2 ]; then
    log "the same pretrain on 1 GPU, on 2 with DDP and on 2 with FSDP (never NVLink multicast)"
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    local run
    for run in "1 auto" "2 ddp" "2 fsdp"; do
      set -- $run
      x python3 -m litgpt pretrain "${short[@]}" --devices $1 --strategy $2 --out_dir $KEEP/multi_$2_$1 \
        --train.max_steps 40 --eval.interval 1000
    done
  fi
}

# --------------------------------------------------------------------------------------------------------- finetune
pretrain_base() {  # MODEL: PRETRAIN_TOKENS of the offline corpus, resumable, in the background
  xbg $R/pretrain_$1.log python3 -m litgpt pretrain --config config_hub/pretrain/mla.yaml --model_name $1 \
    --out_dir $KEEP/pretrain/$1 --resume auto "${corpus[@]}" --train.max_tokens ${PRETRAIN_TOKENS:-100000000} \
    --train.log_interval 20 --train.save_interval 200 --eval.interval 250 --eval.max_iters 15
}
topic_finetune() {
  topic_dir finetune
  x python3 benchmarks/gpu_helpers.py tokenize $D $KEEP/tokens
  log "pretrain pythia-160m and pythia-160m-mla at once"
  pretrain_base pythia-160m
  pretrain_base pythia-160m-mla
  xwait
  local base_mha=$KEEP/pretrain/pythia-160m/final base_mla=$KEEP/pretrain/pythia-160m-mla/final
  x python3 -m litgpt benchmark finetune --checkpoints "{mha: $base_mha, mla: $base_mla}" \
    --data JSON --data.json_path $D/instruct --data.mask_prompt true --attention '[mha, mla, gqa, mqa]' \
    --train.max_steps 300 --train.micro_batch_size 16 --train.global_batch_size 16 --train.max_seq_length 256 \
    --train.save_interval 1000 --eval.interval 100 --eval.max_iters 20 --out_dir $KEEP/ft
  x cp $KEEP/ft/results.json $KEEP/ft/results.md $R/
  log "greedy answers to the first three held-out words"
  local cell i word
  for cell in $KEEP/ft/*-*/; do
    for i in 1 2 3; do
      word=$([ $LIST = 1 ] && echo WORD || python3 benchmarks/gpu_helpers.py held-out-words $D/instruct/val.json 3 | sed -n ${i}p)
      x python3 -m litgpt generate ${cell}final --prompt "$word" --max_new_tokens 60 --temperature 0
    done
  done
  log "decode rate of a fine-tuned MLA against its base (the first run of each fills Triton's cache)"
  for cell in $base_mla $KEEP/ft/lora-mla/final $KEEP/ft/full-mla/final; do
    for i in 1 2; do
      x python3 -m litgpt generate $cell --prompt "The meaning of the word" --prompt_style plain \
        --max_new_tokens 1000 --temperature 0
    done
  done
}

# -------------------------------------------------------------------------------------------------------------- moe
topic_moe() {
  topic_dir moe
  local models='[pythia-70m, pythia-70m-moe, pythia-70m-gqa, pythia-70m-moe-gqa, pythia-70m-mla, pythia-70m-moe-mla]'
  x python3 -m litgpt benchmark pretrain --models "$models" --compile '[false]' --profile true --out_dir $R/bench_eager
  x python3 -m litgpt benchmark pretrain --models "$models" --compile '[true]' --out_dir $R/bench_compiled
  x python3 benchmarks/gpu_helpers.py tokenize $D $KEEP/tokens
  local args=(--config config_hub/compare/moe-attention.yaml --out_dir $KEEP/moe_compare --train.max_tokens 50000000
              --train.save_interval 250 --train.log_interval 10 --eval.interval 100 --eval.max_iters 15 "${corpus[@]}")
  log "the three trainings at once in one out_dir (their tokens/s are not single-run figures), then the table"
  local m
  for m in pythia-70m-moe pythia-70m-moe-gqa pythia-70m-moe-mla; do
    xbg $R/compare_$m.log python3 -m litgpt compare "${args[@]}" --models "[$m]"
  done
  xwait
  x python3 -m litgpt compare "${args[@]}"
  x cp -r $KEEP/moe_compare/results.json $KEEP/moe_compare/results.md $R/
}

# -------------------------------------------------------------------------------------------------------- moe_modes
topic_moe_modes() {
  topic_dir moe_modes
  local mode
  for mode in cuda_graph compile compile+cuda_graph; do
    x python3 -m litgpt benchmark decode --models '[DeepSeek-V2-Lite]' --batch_sizes '[1, 8]' \
      --context_lengths '[1024]' --mode $mode --decode_steps 50 --warmup 5 --memory_budget_gib 40 \
      --out_dir $R/decode_${mode//+/_}
  done
}

# -------------------------------------------------------------------------------------------------------- moe_model
topic_moe_model() {
  topic_dir moe_model
  x python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_moe_grouped.py
  x python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_moe.py -k "captured_decode_step and not compile"
  x python3 -m litgpt benchmark decode --models '[DeepSeek-V2-Lite]' --batch_sizes '[1, 8, 32]' \
    --context_lengths '[1024, 4096]' --mode cuda_graph --decode_steps 50 --warmup 5 --memory_budget_gib 40 \
    --out_dir $R/decode
  x python3 benchmarks/moe_model.py ours --out $R/ours.json --profile_dir $R/profiles
  log "litgpt generate of 256 tokens (wall time and phases) from a random-init checkpoint (31 GB on disk)"
  [ $LIST = 0 ] && [ -f "$KEEP/random/ds-v2-lite/lit_model.pth" ] ||
    x python3 benchmarks/moe_model.py checkpoint --out $KEEP/random/ds-v2-lite --tokenizer_dir $D/tokenizers/pythia
  x python3 -m litgpt benchmark generate $KEEP/random/ds-v2-lite --new_tokens '[256]' --batches '[1, 8]' \
    --chat false --hf false --out_dir $R/generate
  x python3 benchmarks/moe_model.py hf --out $R/hf.json --deadline_s $(($(left) - 40))
}

# ---------------------------------------------------------------------------------------------------------- convert
# pythia-70m settings of the dense comparison: AdamW 1e-3, wd 0.1, betas (0.9, 0.95), cosine to 1e-4, 64 x 1024 a step
small=(--precision bf16-mixed --compile true --train.micro_batch_size 16 --train.global_batch_size 64
       --train.max_seq_length 1024 --train.lr_warmup_steps 50 --train.min_lr 1e-4 --train.max_norm 1.0
       --train.log_interval 10 --eval.max_iters 15
       --optimizer '{class_path: torch.optim.AdamW, init_args: {lr: 0.001, weight_decay: 0.1, betas: [0.9, 0.95]}}')
# 1/4 of pythia-70m's 1,024 cached values a layer and token: a latent of 240 + a rope key of 16; 1/8: 112 + 16
RANKS=("quarter 240" "eighth 112")
topic_convert() {
  topic_dir convert
  local c=$KEEP/convert pair heal seed m
  x python3 benchmarks/gpu_helpers.py tokenize $D $KEEP/tokens
  log "(b) pythia-70m MHA for 100M tokens and the two MLA shapes from scratch for 110M, at once"
  xbg $R/convert_mha.log python3 -m litgpt pretrain --model_name pythia-70m --out_dir $c/mha --resume auto \
    "${corpus[@]}" "${small[@]}" --train.max_tokens 100000000 --train.save_interval 500 --eval.interval 250
  for pair in "${RANKS[@]}"; do
    set -- $pair
    x python3 benchmarks/gpu_helpers.py scratch-config $2 $KEEP/scratch-$1.yaml
    xbg $R/convert_scratch_$1.log python3 -m litgpt pretrain --config $KEEP/scratch-$1.yaml --out_dir $c/scratch-$1 \
      --resume auto "${corpus[@]}" "${small[@]}" --train.max_tokens 110000000 --train.save_interval 500 --eval.interval 250
  done
  xwait
  for pair in "${RANKS[@]}"; do
    set -- $pair
    x python3 -m litgpt convert_to_mla $c/mha/final --out_dir $c/mla-$1 --kv_lora_rank $2 --qk_rope_head_dim 16 \
      --calibration_data $D/corpus/train/literature.txt
  done
  log "(b) heal each conversion for 5M and 10M tokens, four runs at once"
  for pair in "${RANKS[@]}"; do
    set -- $pair
    for heal in 5000000 10000000; do
      xbg $R/convert_heal_$1_$heal.log python3 -m litgpt pretrain --initial_checkpoint_dir $c/mla-$1 \
        --out_dir $c/heal-$1-$heal --resume auto "${corpus[@]}" "${small[@]}" --train.max_tokens $heal \
        --train.lr_warmup_steps 10 --train.save_interval 1000 --eval.interval 25 --eval.initial_validation true \
        --optimizer.lr 0.0003
    done
  done
  xwait
  log "(a) MLA vs MLA-o (o_latent_dim n_embd/2, n_embd/4), 50M tokens each, seeds 42 and 43, six at once"
  local mla_o=(--train.max_tokens 50000000 --train.save_interval 500 --eval.interval 100)
  for seed in 42 43; do
    for m in pythia-70m-mla pythia-70m-mla-o2 pythia-70m-mla-o4; do
      xbg $R/convert_mla_o_${seed}_$m.log python3 -m litgpt compare --out_dir $c/mla-o-seed$seed --seed $seed \
        "${corpus[@]}" "${small[@]}" "${mla_o[@]}" --models "[$m]"
    done
  done
  xwait
  for seed in 42 43; do
    x python3 -m litgpt compare --out_dir $c/mla-o-seed$seed --seed $seed "${corpus[@]}" "${small[@]}" "${mla_o[@]}" \
      --models '[pythia-70m-mla, pythia-70m-mla-o2, pythia-70m-mla-o4]'
  done
  x python3 benchmarks/convert_report.py $c --out_dir $R/report
}

for topic in "$@"; do "topic_$topic"; done
if [ $LIST = 0 ]; then
  log "results in $RUN_DIR"
  if [ -n "${OUT:-}" ] && [ -z "${RESULTS:-}" ]; then  # the device tool returns $OUT's files: one archive of them
    pack "$RUN_DIR" "$OUT/$(basename "$RUN_DIR")_$(echo "$*" | tr ' ' '-').tar.gz"
  fi
  log "done"
fi
