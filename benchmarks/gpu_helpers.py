"""Small steps of `benchmarks/gpu.sh` that need Python: each is one subcommand.

    python3 benchmarks/gpu_helpers.py random-bases OUT_DIR TOKENIZER_DIR [SIZE]  # random-init mha / mla (/ ds)
    python3 benchmarks/gpu_helpers.py prompt-text TEXT_FILE TOKENIZER_DIR TOKENS OUT_FILE  # a prompt of TOKENS tokens
    python3 benchmarks/gpu_helpers.py scratch-config RANK FILE             # pythia-70m's MLA shape at kv_lora_rank RANK
    python3 benchmarks/gpu_helpers.py tokenize DATA_DIR CACHE_DIR          # tokenize the offline corpus once
    python3 benchmarks/gpu_helpers.py held-out-words VAL_JSON [N]          # the first N instructions of val.json
    python3 benchmarks/gpu_helpers.py profile-generate CHECKPOINT OUT_DIR  # cProfile of `litgpt generate`'s main()
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script from a checkout

# pythia-160m-mla's shapes in DeepSeek's layout (q_lora_rank set): the one MLA that upstream litgpt 0.5.13 and HF
# transformers also load, so `litgpt benchmark generate` can time them beside ours
DS_CONFIG = dict(
    name="pythia-160m-mla-ds", block_size=2048, n_layer=12, n_embd=768, n_head=12, vocab_size=50254,
    padding_multiple=128, parallel_residual=False, bias=False, norm_class_name="RMSNorm", norm_eps=1.0e-06,
    mlp_class_name="LLaMAMLP", intermediate_size=2048,
    latent_attention=dict(q_lora_rank=384, kv_lora_rank=256, qk_rope_head_dim=32, qk_nope_head_dim=64, v_head_dim=64),
)


def random_bases(out_dir: str, tokenizer_dir: str, size: str = "160m") -> None:
    """Random-init bf16 checkpoints of pythia-SIZE (mha), pythia-SIZE-mla (mla) and, at 160m, DS_CONFIG (ds), each
    with the tokenizer's files: random weights never stop early, so every generated text runs to its full length.
    A smaller SIZE (14m) makes CPU-sized stand-ins for dry runs of the GPU commands."""
    import torch

    from litgpt import GPT, Config
    from litgpt.checkpoint import save_checkpoint

    models = [("mha", Config.from_name(f"pythia-{size}")), ("mla", Config.from_name(f"pythia-{size}-mla"))]
    for short, config in models + ([("ds", Config(**DS_CONFIG))] if size == "160m" else []):
        out = Path(out_dir) / short
        torch.manual_seed(0)
        save_checkpoint(GPT(config).to(torch.bfloat16), out)
        for f in Path(tokenizer_dir).iterdir():
            shutil.copy(f, out / f.name)


def prompt_text(text_file: str, tokenizer_dir: str, tokens: str, out_file: str) -> None:
    """The first prompt `litgpt benchmark serve` cuts from TEXT_FILE at its default seed (a window of TOKENS tokens),
    decoded to text into OUT_FILE: `litgpt generate --prompt "$(cat OUT_FILE)"` then reads the request that
    the serve benchmark sends first (re-encoding the text may give a token or two more or fewer)."""
    from litgpt.benchmark.serve import prompt_windows
    from litgpt.tokenizer import Tokenizer

    tokenizer = Tokenizer(Path(tokenizer_dir))
    ids = tokenizer.encode(Path(text_file).read_text(encoding="utf-8", errors="replace")).tolist()
    window = prompt_windows(ids, int(tokens), 1, seed=1234)[0]
    text = tokenizer.decode(window)
    Path(out_file).write_text(text, encoding="utf-8")
    print(f"wrote {out_file}: {len(window)} tokens ({len(tokenizer.encode(text))} once re-encoded), {len(text)} chars")


def scratch_config(rank: str, file: str) -> None:
    """The model_config.yaml that `litgpt convert_to_mla --kv_lora_rank RANK --qk_rope_head_dim 16` writes for
    pythia-70m, as a `--config` file: the same MLA shape trained from scratch."""
    import yaml

    from litgpt import Config
    from litgpt.checkpoint import save_config
    from litgpt.scripts.convert_to_mla import mla_config

    config = mla_config(Config.from_name("pythia-70m"), kv_lora_rank=int(rank), qk_rope_head_dim=16, o_latent_dim=None)
    with tempfile.TemporaryDirectory() as tmp:
        save_config(config, tmp)
        fields = yaml.safe_load((Path(tmp) / "model_config.yaml").read_text())
    Path(file).write_text(yaml.safe_dump({"model_config": fields}))


def tokenize(data_dir: str, cache_dir: str) -> None:
    """Tokenize the offline corpus (DATA_DIR/corpus/{train,val}) with its Pythia tokenizer into CACHE_DIR, so that
    runs started at once share one cache instead of each tokenizing it."""
    from litgpt.data import TextFiles
    from litgpt.tokenizer import Tokenizer

    data = TextFiles(train_data_path=Path(data_dir, "corpus/train"), val_data_path=Path(data_dir, "corpus/val"),
                     cache_dir=Path(cache_dir), tokenize_workers=12)
    data.connect(Tokenizer(Path(data_dir, "tokenizers/pythia")), max_seq_length=1024)
    data.prepare_data()


def held_out_words(val_json: str, n: str = "3") -> None:
    for row in json.loads(Path(val_json).read_text())[:int(n)]:
        print(row["instruction"])


def profile_generate(checkpoint: str, out_dir: str) -> None:
    """cProfile of `litgpt generate CHECKPOINT --max_new_tokens 100 --temperature 0`, imports included, sorted by
    cumulative and by own time into OUT_DIR/cprofile_{cumulative,tottime}.txt."""
    import cProfile
    import io
    import os
    import pstats

    stdout, sys.stdout = sys.stdout, open(os.devnull, "w")  # the generated text
    profile = cProfile.Profile()
    profile.enable()
    from litgpt.generate.cli import main

    main(Path(checkpoint), max_new_tokens=100, temperature=0.0)
    profile.disable()
    sys.stdout = stdout
    for key in ("cumulative", "tottime"):
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats(key).print_stats(60)
        Path(out_dir, f"cprofile_{key}.txt").write_text(text.getvalue())


COMMANDS = {"random-bases": random_bases, "prompt-text": prompt_text, "scratch-config": scratch_config,
            "tokenize": tokenize, "held-out-words": held_out_words, "profile-generate": profile_generate}

if __name__ == "__main__":  # the spawned tokenizer workers import this file: nothing runs at import
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
