import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from litgpt.data import DataModule
from litgpt.scripts.train_tokenizer import train_tokenizer
from litgpt.tokenizer import Tokenizer

WORDS = "the a cat dog saw ran big small happy sad tree house sun moon played jumped and then she he it".split()


def make_corpus(n: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))).capitalize() + "." for _ in range(n)]


@dataclass
class ListTexts(DataModule):
    texts: list = field(default_factory=list)

    def iter_texts(self, split: str) -> Iterator[str]:
        assert split == "train"
        yield from self.texts


def test_writes_a_loadable_byte_level_bpe(tmp_path):
    out = train_tokenizer(ListTexts(texts=make_corpus()), tmp_path / "tok", vocab_size=300, min_frequency=1)
    assert out == tmp_path / "tok"
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|endoftext|>" and config["bos_token"] is None
    assert "model_max_length" in config
    tokenizer = Tokenizer(out)
    assert tokenizer.vocab_size == 300 and tokenizer.eos_id == 0 and tokenizer.bos_id is None
    # byte-level: any text round-trips, even characters never seen in training
    text = "The cat saw 42 ünïcödé 🙂 things\n\tand more"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    # merges were learned: a training sentence takes fewer tokens than bytes
    sentence = make_corpus()[0]
    assert len(tokenizer.encode(sentence)) < len(sentence.encode()) / 2


def test_deterministic(tmp_path):
    texts = make_corpus()
    a = train_tokenizer(ListTexts(texts=texts), tmp_path / "a", vocab_size=300, min_frequency=1)
    b = train_tokenizer(ListTexts(texts=texts), tmp_path / "b", vocab_size=300, min_frequency=1)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    assert Tokenizer(a).fingerprint == Tokenizer(b).fingerprint
    c = train_tokenizer(ListTexts(texts=make_corpus(seed=1)), tmp_path / "c", vocab_size=300, min_frequency=1)
    assert Tokenizer(c).fingerprint != Tokenizer(a).fingerprint


def test_max_chars_and_min_frequency(tmp_path, caplog):
    texts = make_corpus()
    full = Tokenizer(train_tokenizer(ListTexts(texts=texts), tmp_path / "full", vocab_size=300, min_frequency=1))
    capped = Tokenizer(train_tokenizer(ListTexts(texts=texts), tmp_path / "cap", vocab_size=300, max_chars=200))
    assert capped.fingerprint != full.fingerprint
    assert capped.vocab_size < 300  # 200 characters do not hold 43 pairs seen twice
    assert "fewer than vocab_size" in caplog.text


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="vocab_size must be at least 257"):
        train_tokenizer(ListTexts(texts=make_corpus()), tmp_path / "t", vocab_size=100)
    with pytest.raises(ValueError, match="no training documents"):
        train_tokenizer(ListTexts(texts=[]), tmp_path / "t", vocab_size=300)


def test_cli(tmp_path):
    from jsonargparse import CLI

    (tmp_path / "docs").mkdir()
    for i, text in enumerate(make_corpus(20)):
        (tmp_path / "docs" / f"{i:02d}.txt").write_text(text)
    args = ["--data", "litgpt.data.TextFiles", "--data.train_data_path", str(tmp_path / "docs"),
            "--out_dir", str(tmp_path / "tok"), "--vocab_size", "280", "--min_frequency", "1"]
    out = CLI(train_tokenizer, args=args, as_positional=False)
    assert Path(out) == tmp_path / "tok" and Tokenizer(out).vocab_size == 280
