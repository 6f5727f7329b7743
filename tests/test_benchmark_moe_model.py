"""benchmarks/moe_model.py's `checkpoint` subcommand: a random-init checkpoint of a named model whose stand-in
tokenizer is padded with `<extra_N>` tokens to the model's vocabulary, so `litgpt generate` decodes every id."""

import json
import subprocess
import sys
from pathlib import Path

from tokenizers import Tokenizer

from litgpt.config import Config
from litgpt.scripts.train_tokenizer import train_tokenizer
from test_tokenizer import ListTexts, make_corpus

ROOT = Path(__file__).resolve().parents[1]


def test_checkpoint_pads_the_tokenizer_to_the_vocabulary_and_generates(tmp_path):
    source, out = tmp_path / "tokenizer", tmp_path / "ckpt"
    train_tokenizer(ListTexts(texts=make_corpus()), source, vocab_size=300, min_frequency=1)
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "moe_model.py"), "checkpoint", "--model",
                          "debug-moe-mla", "--out", str(out), "--tokenizer_dir", str(source)],
                         capture_output=True, text=True, timeout=300, check=True)
    vocab = Config.from_name("debug-moe-mla").vocab_size
    assert json.loads(run.stdout) == dict(checkpoint=str(out), vocab_size=vocab, tokenizer_size=vocab)
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    original = Tokenizer.from_file(str(source / "tokenizer.json"))
    assert tokenizer.decode([vocab - 1]) == f"<extra_{vocab - 1 - original.get_vocab_size()}>"
    assert tokenizer.encode("def main(").ids == original.encode("def main(").ids  # the text's own ids unchanged
    assert {p.name for p in out.iterdir()} >= {"lit_model.pth", "model_config.yaml", "tokenizer.json"}
    generated = subprocess.run([sys.executable, "-m", "litgpt", "generate", str(out), "--prompt", "def main(",
                                "--max_new_tokens", "12", "--temperature", "0"],
                               capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.startswith("def main(") and len(generated.stdout) > len("def main(")
