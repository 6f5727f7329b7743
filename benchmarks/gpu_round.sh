#!/usr/bin/env bash
# The GPU must-shows of issues 15, 16 and 17 on one H200, in parts that fit the device tool's 600 s per call.
#
#   moe       issue 17: `litgpt benchmark pretrain` of the MoE models against the dense ones of about equal active
#             parameters (eager with the CUDA profile, then compiled), then `litgpt compare` of MHA vs GQA vs MLA in
#             identical MoE models (config_hub/compare/moe-attention.yaml, 50M tokens each, ../shared/data; the
#             three train at once, with the CUDA tests beside them: their tokens/s are not single-run figures);
#             moe_bench and moe_compare are its two halves
#   pretrain  issue 16: pythia-160m and pythia-160m-mla for 100M tokens each on ../shared/data (both at once on the
#             GPU), with the CUDA tests beside them
#   generate  issue 15: `litgpt benchmark decode` at the generate shapes, then `litgpt benchmark generate` on
#             random-init pythia-160m-mla and pythia-160m checkpoints (random weights: the texts run to full length),
#             with upstream litgpt 0.5.13 and HF transformers beside ours on the MHA one
#   generate_ds  the same plus the DeepSeek-layout MLA (q_lora_rank set: upstream and HF load it too)
#   sampling  issue 15: benchmarks/sampling.py, the captured draw (greedy, torch top-k, the fused kernel) at batch 1, 8
#   convert   issue 18: convert_b, convert_a, then report (benchmarks/convert_report.py over what they left)
#   convert_b (b) pythia-70m MHA for 100M tokens, converted to MLA at 1/4 and 1/8 of its KV bytes, healed with 5% and
#             10% of its tokens, against the same MLA shapes trained from scratch for 110M tokens (the source and the
#             two from-scratch runs share the GPU, as do the four heals: their tokens/s are not single-run figures)
#   convert_a (a) pythia-70m-mla vs its MLA-o variants (-mla-o2, -mla-o4) at 50M tokens, seeds 42 and 43: all six
#             trainings at once (their tokens/s are not single-run figures)
#   rerun     issues 16 and 15 after the QLoRA dtype fix: LoRA and QLoRA peak memory in every attention variant
#             (`litgpt benchmark finetune`, 100 steps a cell, on random-init bases of the pretrained shapes: memory
#             depends on shapes, not on weights), then `benchmark decode` and `benchmark generate` on random-init
#             pythia-160m-mla and pythia-160m (peers beside the MHA one)
#   profile   issue 15: `litgpt generate`'s phases, `-X importtime` and a cProfile of its main() on a random-init MLA
#   finetune  issue 16: `litgpt benchmark finetune` (full / lora / qlora x mha / mla / gqa / mqa, 300 steps a cell) on
#             ../shared/data/instruct, three greedy answers of every fine-tuned model to held-out words through
#             `litgpt generate`, and the decode rate of a fine-tuned MLA checkpoint against its base
#
# Usage (repository root): DATA=$PWD/.gpu bash benchmarks/gpu_round.sh PART... ; carry [".whl", ".peer", ".gpu"].
# The parts run in the order given. DATA holds corpus.tar.xz (../shared/data's corpus/ and instruct/),
# tokenizers/pythia/ and wheels/ (bitsandbytes). Checkpoints and results go to KEEP; every part resumes or skips
# what KEEP already holds. DEADLINE_S bounds the run; results are packed into $OUT/results-<parts>.tar.gz.
#
# A git-ignored folder of the checkout is NOT kept between device calls (measured 2026-12-01: .keep/ was empty at the
# start of every call, warm machine or not), and the whole pipeline takes longer than one call may run (600 s). So:
#   call 1:  bash benchmarks/gpu_round.sh --background PART...   copies the checkout to /tmp/round-src and starts the
#            parts there as a process of its own session (setsid: it outlives the call, as the device notes say),
#            KEEP=/tmp/keep, DEADLINE_S=PIPELINE_S (default 1500); then waits like --collect
#   later:   bash benchmarks/gpu_round.sh --collect                waits (at most COLLECT_S, default 570 s) until the
#            pipeline is done, then packs what /tmp/keep holds into $OUT/results-now.tar.gz (also when not done yet)
# Send each --collect call as soon as the last one returns: the machine goes back 30 s after a call (its idle time,
# 2026-12-01), and the pipeline with it. A returned file may be at most 16 MiB: pack() leaves out weights, token
# caches, tokenizer copies and the pipeline's own archive (out/), and splits what is still larger.
set -uo pipefail
pack() {  # DIR ARCHIVE: DIR's results (logs, tables, plots, JSON) without weights or token caches; an archive over
  # the 16 MiB a returned file may be is split into ARCHIVE.part-00, -01, ... (cat them back together)
  tar -C "$1" --exclude='*.pth' --exclude='*.pth.lora' --exclude='*.bin' --exclude='tokens' --exclude='*.ckpt' \
    --exclude='*.safetensors' --exclude='tokenizer*.json' --exclude='out' -czf "$2" . 2>/dev/null
  rm -f "$2".part-*
  if [ "$(stat -c %s "$2")" -gt $((15 * 1024 * 1024)) ]; then
    split -b 15m -d "$2" "$2.part-" && rm "$2"
  fi
}
collect() {
  local until=$((SECONDS + ${COLLECT_S:-570}))
  while [ $SECONDS -lt $until ] && ! grep -q "\] done" /tmp/keep/logs/steps.log 2>/dev/null; do sleep 5; done
  tail -40 /tmp/keep/logs/steps.log
  pack /tmp/keep "${OUT:-/tmp}/results-now.tar.gz"
  ls -la "${OUT:-/tmp}"
}
if [ "${1:-}" = "--background" ]; then
  shift
  rm -rf /tmp/round-src && mkdir -p /tmp/round-src /tmp/keep/logs && cp -r . /tmp/round-src/
  (cd /tmp/round-src && KEEP=/tmp/keep OUT=/tmp/keep/out DEADLINE_S=${PIPELINE_S:-1500} \
    setsid nohup bash benchmarks/gpu_round.sh "$@" > /tmp/keep/logs/pipeline.log 2>&1 < /dev/null &)
  sleep 5
  collect
  exit 0
fi
if [ "${1:-}" = "--collect" ]; then
  collect
  exit 0
fi
DATA=${DATA:-$PWD/.gpu}
KEEP=${KEEP:-$PWD/.keep}
DEADLINE_S=${DEADLINE_S:-560}
OUT=${OUT:-out/gpu}
source benchmarks/gpu_setup.sh
set +e
mkdir -p "$OUT" "$KEEP/logs"
log() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$KEEP/logs/steps.log"; }
left() { echo $((DEADLINE_S - SECONDS)); }

if ls "$DATA"/wheels/*.whl >/dev/null 2>&1 && [ ! -d /tmp/site/bitsandbytes ]; then  # QLoRA
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$DATA"/wheels/*.whl
fi
D=/tmp/data  # ../shared/data, unpacked
if [ ! -d $D/corpus ]; then
  mkdir -p $D && tar -C $D -xJf "$DATA/corpus.tar.xz" && cp -r "$DATA/tokenizers" $D/
fi
for marker in /tmp/litgpt-marker "$PWD/.keep-marker"; do  # what the device keeps between calls: the next call says
  [ -f "$marker" ] && log "kept from an earlier call: $marker" || log "not kept (or first call): $marker"
  touch "$marker"
done
python3 - <<PY | tee -a "$KEEP/logs/steps.log"
import torch, triton
print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
PY
corpus=(--data TextFiles --data.train_data_path $D/corpus/train --data.val_data_path $D/corpus/val
        --data.cache_dir "$KEEP/tokens" --data.tokenize_workers 12 --tokenizer_dir $D/tokenizers/pythia)

# ---------------------------------------------------------------------------------------------- issue 17: MoE
part_moe() {
  part_moe_bench
  part_moe_compare
}
part_moe_bench() {  # about 250 s
  local models='[pythia-70m, pythia-70m-moe, pythia-70m-gqa, pythia-70m-moe-gqa, pythia-70m-mla, pythia-70m-moe-mla]'
  log "benchmark pretrain, eager, with the CUDA profile: MoE vs dense"
  timeout $(left) python3 -m litgpt benchmark pretrain --models "$models" --compile '[false]' --profile true \
    --out_dir "$KEEP/moe/bench_eager" 2>&1 | tail -10 | tee -a "$KEEP/logs/steps.log"
  log "benchmark pretrain, compiled"
  timeout $(( $(left) < 200 ? $(left) : 200 )) python3 -m litgpt benchmark pretrain --models "$models" \
    --compile '[true]' --out_dir "$KEEP/moe/bench_compiled" 2>&1 | tail -10 | tee -a "$KEEP/logs/steps.log"
}
part_moe_compare() {  # about 900 s
  log "tokenize the corpus"; tokenize
  # the three trainings at once (one out_dir, one model each: compare merges their rows), the CUDA tests beside
  # them; then compare with all three listed records nothing new and writes the table and plots
  log "compare MHA vs GQA vs MLA in MoE models, 50M tokens each, at once ($(left) s left)"
  local args=(--config config_hub/compare/moe-attention.yaml --out_dir "$KEEP/moe/compare"
              --train.max_tokens 50000000 --train.save_interval 250 --train.log_interval 10
              --eval.interval 100 --eval.max_iters 15 "${corpus[@]}")
  for m in pythia-70m-moe pythia-70m-moe-gqa pythia-70m-moe-mla; do
    timeout $(left) python3 -m litgpt compare "${args[@]}" --models "[$m]" > "$KEEP/logs/compare_$m.log" 2>&1 &
  done
  (log "CUDA tests"; cuda_tests) > "$KEEP/logs/beside.log" 2>&1 &
  wait
  tail -3 "$KEEP"/logs/compare_pythia-70m-moe*.log "$KEEP/logs/beside.log" | tee -a "$KEEP/logs/steps.log"
  timeout $(left) python3 -m litgpt compare "${args[@]}" > "$KEEP/logs/compare_moe.log" 2>&1
  tail -25 "$KEEP/logs/compare_moe.log" | tee -a "$KEEP/logs/steps.log"
}

# ---------------------------------------------------------------------------------------------- issue 16: pretrain
pretrain() {  # model name: 100M tokens, resumable
  timeout $(left) python3 -m litgpt pretrain --config config_hub/pretrain/mla.yaml --model_name "$1" \
    --out_dir "$KEEP/pretrain/$1" --resume auto "${corpus[@]}" --train.max_tokens 100000000 \
    --train.log_interval 20 --train.save_interval 200 --eval.interval 250 --eval.max_iters 15 > "$KEEP/logs/pretrain_$1.log" 2>&1
  tail -4 "$KEEP/logs/pretrain_$1.log"
}
cuda_tests() {
  timeout $(left) python3 -m pytest -q -p no:cacheprovider -n 6 -m cuda tests/test_kernels.py \
    tests/test_kernels_sampling.py tests/test_kv_cache.py tests/test_attention.py tests/test_generate.py \
    tests/test_startup.py tests/test_loss.py tests/test_kernels_cross_entropy.py tests/test_lora.py \
    tests/test_quantize.py tests/test_moe.py tests/test_fold.py tests/test_session.py tests/test_mla_o.py \
    > "$KEEP/logs/cuda_tests.log" 2>&1
  tail -30 "$KEEP/logs/cuda_tests.log"
}
tokenize() {
  cat > /tmp/tokenize.py <<PY
from pathlib import Path
from litgpt.data import TextFiles
from litgpt.tokenizer import Tokenizer
if __name__ == "__main__":  # the spawned tokenizer workers import this file
    data = TextFiles(train_data_path=Path("$D/corpus/train"), val_data_path=Path("$D/corpus/val"),
                     cache_dir=Path("$KEEP/tokens"), tokenize_workers=12)
    data.connect(Tokenizer(Path("$D/tokenizers/pythia")), max_seq_length=1024)
    data.prepare_data()
PY
  timeout 200 python3 /tmp/tokenize.py 2>&1 | tail -2
}
ds_yaml() {
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
}
part_pretrain() {
  log "tokenize the corpus"; tokenize
  log "pretrain pythia-160m and pythia-160m-mla, 100M tokens each, at once; the CUDA tests beside them"
  pretrain pythia-160m > "$KEEP/logs/pretrain_mha.tail" &
  pretrain pythia-160m-mla > "$KEEP/logs/pretrain_mla.tail" &
  (log "CUDA tests"; cuda_tests) > "$KEEP/logs/beside.log" 2>&1 &
  wait
  cat "$KEEP/logs/pretrain_mha.tail" "$KEEP/logs/pretrain_mla.tail" "$KEEP/logs/beside.log" | tee -a "$KEEP/logs/steps.log"
}
part_tests() {
  log "CUDA tests"; cuda_tests | tee -a "$KEEP/logs/steps.log"
}

# ---------------------------------------------------------------------------------------------- issue 15
peer_python() {  # /tmp/peer_python: this machine's python3 with upstream litgpt 0.5.13 alone on its path
  printf '#!/bin/sh\nPYTHONPATH=/tmp/peersite exec %s "$@"\n' "$(command -v python3)" > /tmp/peer_python
  chmod +x /tmp/peer_python
  [ -d /tmp/peersite/litgpt ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/peersite .peer/*.whl
}
generate_benchmarks() {  # ARCHIVE MODEL...: `benchmark decode` at the generate shapes, then `benchmark generate` on
  # the random-init checkpoint of each MODEL (mla, mha, ds), ARCHIVE packed after each step (what a cut-off run keeps)
  local archive=$1; shift
  peer_python
  [ -f "$KEEP/random/ds/lit_model.pth" ] || { log "random-init bases"; random_bases; }
  log "benchmark decode at the generate shapes"
  timeout 120 python3 -m litgpt benchmark decode --models '[pythia-160m-mla, pythia-160m]' --batch_sizes '[1, 8]' \
    --context_lengths '[1024]' --mode cuda_graph --decode_steps 300 --warmup 10 --out_dir "$KEEP/gen/decode" 2>&1 \
    | tail -2 | tee -a "$KEEP/logs/steps.log"
  cat "$KEEP/gen/decode/results.csv" >> "$KEEP/logs/steps.log"
  log "benchmark decode, eager step at batch 1 (what a short generation would pay per token without the capture)"
  timeout 60 python3 -m litgpt benchmark decode --models '[pythia-160m-mla, pythia-160m]' --batch_sizes '[1]' \
    --context_lengths '[1024]' --mode eager --decode_steps 50 --warmup 5 --out_dir "$KEEP/gen/decode_eager" 2>&1 \
    | tail -2 | tee -a "$KEEP/logs/steps.log"
  cat "$KEEP/gen/decode_eager/results.csv" >> "$KEEP/logs/steps.log"
  pack "$KEEP" "$archive"
  for m in "$@"; do
    log "benchmark generate $m"
    case $m in
      mla) extra=(--hf false) ;;
      mha) extra=(--peer_python /tmp/peer_python --peer_new_tokens '[100]' --chat false) ;;
      ds) extra=(--peer_python /tmp/peer_python --peer_new_tokens '[100]' --chat false --batches '[1]') ;;
    esac
    timeout $(( $(left) < 200 ? $(left) : 200 )) python3 -m litgpt benchmark generate "$KEEP/random/$m" \
      --out_dir "$KEEP/gen/$m" "${extra[@]}" 2>&1 | grep "^| " | tee -a "$KEEP/logs/steps.log"
    pack "$KEEP" "$archive"
  done
}
part_sampling() {  # issue 15: device time of the sampled step's draw against greedy (about 20 s)
  log "sampler draw, captured, batch 1 and 8"
  mkdir -p "$KEEP/sampling"
  timeout 120 python3 benchmarks/sampling.py --out "$KEEP/sampling/results.json" 2>&1 | tee -a "$KEEP/logs/steps.log"
}
part_generate() {
  generate_benchmarks "$OUT/results-generate.tar.gz" mla mha
}
part_generate_ds() {  # the DeepSeek-layout MLA as well (its peer rows were measured on 2026-12-01)
  generate_benchmarks "$OUT/results-generate.tar.gz" mla mha ds
}

# ---------------------------------------------------------------------------------------------- issue 16: fine-tune
part_finetune() {
  base_mha=$KEEP/pretrain/pythia-160m/final base_mla=$KEEP/pretrain/pythia-160m-mla/final
  if [ ! -f "$base_mha/lit_model.pth" ] || [ ! -f "$base_mla/lit_model.pth" ]; then
    log "the pretraining did not finish: resume it"
    pretrain pythia-160m & pretrain pythia-160m-mla & wait
  fi
  # MHA and MLA in every mode first (the memory ordering and the fine-tuned MLA decode need them), then the grouped
  # variants: the second run skips the cells the first finished (same settings, same out_dir)
  for variants in '[mha, mla]' '[mha, mla, gqa, mqa]'; do
    log "benchmark finetune $variants, 300 steps a cell ($(left) s left)"
    timeout $(left) python3 -m litgpt benchmark finetune --checkpoints "{mha: $base_mha, mla: $base_mla}" \
      --data JSON --data.json_path $D/instruct --data.mask_prompt true --attention "$variants" \
      --train.max_steps 300 --train.micro_batch_size 16 --train.global_batch_size 16 --train.max_seq_length 256 \
      --train.save_interval 1000 --eval.interval 100 --eval.max_iters 20 --out_dir "$KEEP/ft" \
      >> "$KEEP/logs/finetune.log" 2>&1
  done
  tail -30 "$KEEP/logs/finetune.log" | tee -a "$KEEP/logs/steps.log"
  log "greedy answers to held-out words (the first three of instruct/val.json)"
  python3 - "$D/instruct/val.json" > /tmp/words.txt <<'PY'
import json, sys
for row in json.load(open(sys.argv[1]))[:3]:
    print(row["instruction"])
PY
  answer() {  # cell dir, word index: one `litgpt generate` (six at a time below), into its own file
    local word; word=$(sed -n "$2p" /tmp/words.txt)
    { printf '### %s | %s\n' "$(basename "$1")" "$word"
      timeout 90 python3 -m litgpt generate "$1/final" --prompt "$word" --max_new_tokens 60 --temperature 0 2>/dev/null
    } > "$1/answer-$2.txt"
  }
  export -f answer
  for cell in "$KEEP"/ft/*/; do
    [ -f "$cell/final/lit_model.pth" ] && printf '%s 1\n%s 2\n%s 3\n' "$cell" "$cell" "$cell"
  done | xargs -P 6 -n 2 bash -c 'answer "$0" "$1"'
  cat "$KEEP"/ft/*/answer-*.txt > "$KEEP/ft/answers.txt"
  log "decode rate: fine-tuned MLA (merged LoRA, folded) against its base"
  for ckpt in "$base_mla" "$KEEP/ft/lora-mla/final" "$KEEP/ft/full-mla/final"; do
    [ -f "$ckpt/lit_model.pth" ] || continue
    for i in 1 2; do  # the first run fills Triton's cache
      timeout 60 python3 -m litgpt generate "$ckpt" --prompt "The meaning of the word" --prompt_style plain \
        --max_new_tokens 1000 --temperature 0 2>&1 >/dev/null | grep "litgpt generate:" | sed "s|^|$ckpt run $i: |"
    done
  done | tee "$KEEP/ft/decode_rate.txt" | tee -a "$KEEP/logs/steps.log"
}

# ---------------------------------------------------------------------------------------------- issues 16 and 15 again
random_bases() {  # random-init checkpoints with the Pythia tokenizer: $KEEP/random/{mha,mla,ds} (ds: /tmp/ds.yaml)
  ds_yaml
  python3 - "$KEEP/random" "$D/tokenizers/pythia" <<'PY'
import shutil, sys
from pathlib import Path
import torch, yaml
from litgpt import GPT, Config
from litgpt.checkpoint import save_checkpoint
ds = Config(**yaml.safe_load(open("/tmp/ds.yaml"))["model_config"])
for short, config in (("mha", Config.from_name("pythia-160m")), ("mla", Config.from_name("pythia-160m-mla")), ("ds", ds)):
    out = Path(sys.argv[1]) / short
    torch.manual_seed(0)
    save_checkpoint(GPT(config).to(torch.bfloat16), out)
    for f in Path(sys.argv[2]).iterdir():
        shutil.copy(f, out / f.name)
PY
}
part_rerun() {
  local r=$KEEP/random
  [ -f "$r/ds/lit_model.pth" ] || { log "random-init bases"; random_bases; }
  timeout 150 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_quantize.py \
    > "$KEEP/logs/cuda_tests_rerun.log" 2>&1 &  # beside the fine-tunes: their peak memory is per process
  log "benchmark finetune, lora and qlora x 4 attention variants, 100 steps a cell ($(left) s left)"
  timeout $(left) python3 -m litgpt benchmark finetune --checkpoints "{mha: $r/mha, mla: $r/mla}" \
    --data JSON --data.json_path $D/instruct --data.mask_prompt true --attention '[mha, mla, gqa, mqa]' \
    --modes '[lora, qlora]' --train.max_steps 100 --train.micro_batch_size 16 --train.global_batch_size 16 \
    --train.max_seq_length 256 --train.save_interval 1000 --eval.interval 100 --eval.max_iters 20 \
    --out_dir "$KEEP/ft-memory" > "$KEEP/logs/ft_memory.log" 2>&1
  grep "^| " "$KEEP/logs/ft_memory.log" | tee -a "$KEEP/logs/steps.log"
  wait; tail -3 "$KEEP/logs/cuda_tests_rerun.log" | tee -a "$KEEP/logs/steps.log"
  pack "$KEEP" "$OUT/results-rerun.tar.gz"
  generate_benchmarks "$OUT/results-rerun.tar.gz" mla mha
}

part_profile() {  # issue 15: where the time to the first printed token goes on this machine (about 40 s)
  local r=$KEEP/random p=$KEEP/profile
  [ -f "$r/ds/lit_model.pth" ] || { log "random-init bases"; random_bases; }
  mkdir -p "$p"
  log "profile litgpt generate: two plain runs (they fill the caches), -X importtime, then cProfile of its main()"
  for i in 1 2; do
    python3 -m litgpt generate "$r/mla" --max_new_tokens 100 --temperature 0 2>&1 >/dev/null | grep "litgpt generate:"
  done | tee "$p/phases.txt" | tee -a "$KEEP/logs/steps.log"
  python3 -X importtime -m litgpt generate "$r/mla" --max_new_tokens 100 --temperature 0 2> "$p/importtime.txt" >/dev/null
  sort -t'|' -k2 -n "$p/importtime.txt" | tail -25 > "$p/importtime_top.txt"
  python3 - "$r/mla" "$p" <<'PY' 2>&1 | tail -3 | tee -a "$KEEP/logs/steps.log"
import cProfile, io, os, pstats, sys
from pathlib import Path
sys.stdout = open(os.devnull, "w")  # the generated text
profile = cProfile.Profile()
profile.enable()
from litgpt.generate.cli import main  # the imports are part of the profile, as in a `litgpt generate` run
main(Path(sys.argv[1]), max_new_tokens=100, temperature=0.0)
profile.disable()
for key in ("cumulative", "tottime"):
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats(key).print_stats(60)
    Path(sys.argv[2], f"cprofile_{key}.txt").write_text(text.getvalue())
print("cProfile written", file=sys.stderr)
PY
}

# ---------------------------------------------------------------------------------------------- issue 18: convert
# pythia-70m settings of the dense comparison (tutorials/results/README.md): AdamW 1e-3, wd 0.1, betas (0.9, 0.95),
# cosine to 1e-4, 64 x 1024 tokens a step, compiled
small=(--precision bf16-mixed --compile true --train.micro_batch_size 16 --train.global_batch_size 64
       --train.max_seq_length 1024 --train.lr_warmup_steps 50 --train.min_lr 1e-4 --train.max_norm 1.0
       --train.log_interval 10 --eval.max_iters 15
       --optimizer '{class_path: torch.optim.AdamW, init_args: {lr: 0.001, weight_decay: 0.1, betas: [0.9, 0.95]}}')
scratch_yaml() {  # RANK FILE: the MLA shape `convert_to_mla --kv_lora_rank RANK --qk_rope_head_dim 16` gives pythia-70m
  python3 - "$1" "$2" <<'PY'
import sys, tempfile, yaml
from pathlib import Path
from litgpt import Config
from litgpt.checkpoint import save_config
from litgpt.scripts.convert_to_mla import mla_config
config = mla_config(Config.from_name("pythia-70m"), kv_lora_rank=int(sys.argv[1]), qk_rope_head_dim=16, o_latent_dim=None)
with tempfile.TemporaryDirectory() as tmp:
    save_config(config, tmp)  # the model_config.yaml convert_to_mla writes
    fields = yaml.safe_load((Path(tmp) / "model_config.yaml").read_text())
Path(sys.argv[2]).write_text(yaml.safe_dump({"model_config": fields}))
PY
}
convert_pretrain() {  # OUT_DIR TOKENS LOG MODEL_OPTION MODEL_VALUE ARGS...: one pythia-70m-sized pretraining with the
  # settings above, resumable; the model option (--model_name, --config, --initial_checkpoint_dir) goes first and ARGS
  # last, so that they override `small` (the heals' learning rate and warm-up)
  local out=$1 tokens=$2 logfile=$3 model_option=$4 model_value=$5; shift 5
  timeout $(left) python3 -m litgpt pretrain "$model_option" "$model_value" --out_dir "$out" --resume auto \
    "${corpus[@]}" "${small[@]}" --train.max_tokens "$tokens" "$@" > "$logfile" 2>&1
  tail -3 "$logfile"
}
# pythia-70m: 8 heads of 64, 16 rope dims a head, 2 x 8 x 64 = 1,024 cached values a layer and token;
# 1/4 of that: a latent of 240 + a rope key of 16, 1/8: 112 + 16
CONVERT_RANKS=("quarter 240" "eighth 112")
part_convert_b() {  # (b): the source and the two from-scratch MLAs train at once (they share nothing), then each
  tokenize          # conversion and its two heals (5% and 10% of the source's tokens) at once
  local c=$KEEP/convert
  mkdir -p "$c"
  log "(b) pythia-70m MHA for 100M tokens and the two MLA shapes from scratch for 110M, at once"
  convert_pretrain "$c/mha" 100000000 "$KEEP/logs/convert_mha.log" --model_name pythia-70m \
    --train.save_interval 500 --eval.interval 250 > "$KEEP/logs/convert_mha.tail" &
  for pair in "${CONVERT_RANKS[@]}"; do
    set -- $pair
    scratch_yaml "$2" "/tmp/scratch-$1.yaml"
    convert_pretrain "$c/scratch-$1" 110000000 "$KEEP/logs/convert_scratch_$1.log" --config "/tmp/scratch-$1.yaml" \
      --train.save_interval 500 --eval.interval 250 > "$KEEP/logs/convert_scratch_$1.tail" &
  done
  wait
  cat "$KEEP"/logs/convert_mha.tail "$KEEP"/logs/convert_scratch_*.tail | tee -a "$KEEP/logs/steps.log"
  for pair in "${CONVERT_RANKS[@]}"; do
    set -- $pair
    log "(b) convert to MLA at 1/$([ $1 = quarter ] && echo 4 || echo 8) of the KV bytes"
    timeout $(left) python3 -m litgpt convert_to_mla "$c/mha/final" --out_dir "$c/mla-$1" --kv_lora_rank $2 \
      --qk_rope_head_dim 16 --calibration_data $D/corpus/train/literature.txt 2>&1 | tail -3 | tee -a "$KEEP/logs/steps.log"
  done
  log "(b) heal each conversion for 5M and 10M tokens (each its own schedule), four runs at once"
  for pair in "${CONVERT_RANKS[@]}"; do
    set -- $pair
    for heal in 5000000 10000000; do
      convert_pretrain "$c/heal-$1-$heal" $heal "$KEEP/logs/convert_heal_$1_$heal.log" \
        --initial_checkpoint_dir "$c/mla-$1" --train.lr_warmup_steps 10 --train.save_interval 1000 \
        --eval.interval 25 --eval.initial_validation true --optimizer.lr 0.0003 > /dev/null &
    done
  done
  wait
  for f in "$KEEP"/logs/convert_heal_*.log; do
    echo "$(basename "$f"): $(grep "val loss" "$f" | sed -n '1p;$p' | tr '\n' ' ')"
  done | tee -a "$KEEP/logs/steps.log"
}
part_convert_a() {  # (a): MLA vs MLA-o at 50M tokens each, two seeds: all six trainings at once (compare merges the
  tokenize          # rows of processes sharing an out_dir), then one compare per seed records them and writes its table
  local c=$KEEP/convert
  mkdir -p "$c"
  log "(a) MLA vs MLA-o (o_latent_dim n_embd/2, n_embd/4), 50M tokens each, seeds 42 and 43, six at once"
  local models=(pythia-70m-mla pythia-70m-mla-o2 pythia-70m-mla-o4)
  mla_o_compare() {  # SEED [MODELS]: one compare into the seed's out_dir
    timeout $(left) python3 -m litgpt compare --out_dir "$c/mla-o-seed$1" --seed "$1" "${corpus[@]}" "${small[@]}" \
      --train.max_tokens 50000000 --train.save_interval 500 --eval.interval 100 --models "$2"
  }
  for seed in 42 43; do
    for m in "${models[@]}"; do
      mla_o_compare $seed "[$m]" > "$KEEP/logs/convert_mla_o_${seed}_$m.log" 2>&1 &
    done
  done
  wait
  for seed in 42 43; do
    mla_o_compare $seed "[$(IFS=,; echo "${models[*]}")]" > "$KEEP/logs/convert_mla_o_$seed.log" 2>&1
  done
  tail -12 "$KEEP"/logs/convert_mla_o_4[23].log | tee -a "$KEEP/logs/steps.log"
}
part_convert() {
  part_convert_b
  part_convert_a
  convert_report
}
convert_report() {
  python3 benchmarks/convert_report.py "$KEEP/convert" --out_dir "$KEEP/convert/report" 2>&1 | tee -a "$KEEP/logs/steps.log"
}

for part in "$@"; do
  case $part in
    moe|moe_bench|moe_compare|pretrain|tests|sampling|generate|generate_ds|rerun|profile|finetune|convert|convert_a|convert_b) "part_$part" ;;
    report) convert_report ;;
    *) log "unknown part $part (moe, moe_bench, moe_compare, pretrain, tests, sampling, generate, generate_ds, rerun, profile, finetune, convert, convert_a, convert_b, report)" ;;
  esac
done
log "pack results"
pack "$KEEP" "$OUT/results-$(echo $* | tr ' ' '-').tar.gz"
ls -la "$OUT"
log "done"
