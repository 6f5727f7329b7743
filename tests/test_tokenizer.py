import json
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import torch

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
        yield from self.texts


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    return train_tokenizer(ListTexts(texts=make_corpus()), tmp_path / "tok", vocab_size=300, min_frequency=1)


def test_round_trip_and_special_tokens(tokenizer_dir):
    tokenizer = Tokenizer(tokenizer_dir)
    assert tokenizer.backend == "huggingface"
    assert tokenizer.vocab_size == 300
    assert tokenizer.eos_id == 0 and tokenizer.bos_id is None
    assert tokenizer.token_to_id("<|endoftext|>") == 0
    for text in ["The cat saw the dog.", "  spaces\tand\nnewlines ", "unicode: héllo wörld 🙂 日本", ""]:
        ids = tokenizer.encode(text)
        assert ids.dtype == torch.int64 and ids.ndim == 1
        assert tokenizer.decode(ids) == text
        assert tokenizer.decode(ids.tolist()) == text
    ids = tokenizer.encode("the cat", eos=True)
    assert ids[-1].item() == 0 and tokenizer.decode(ids[:-1]) == "the cat"
    assert tokenizer.decode(ids) == "the cat<|endoftext|>"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the cat"
    text = "the cat saw the dog"
    assert tokenizer.encode(text, max_length=2).tolist() == tokenizer.encode(text)[:2].tolist()
    with pytest.raises(ValueError, match="no BOS token"):
        tokenizer.encode("x", bos=True)
    texts = make_corpus(5, seed=1)
    assert tokenizer.encode_batch(texts) == [tokenizer.encode(t).tolist() for t in texts]


def test_special_tokens_from_configs(tokenizer_dir, tmp_path):
    def variant(name: str, files: dict) -> Tokenizer:
        d = tmp_path / name
        d.mkdir()
        shutil.copy(tokenizer_dir / "tokenizer.json", d)
        for fname, content in files.items():
            (d / fname).write_text(json.dumps(content))
        return Tokenizer(d)

    # no config at all: byte-level BPE falls back to <|endoftext|> as EOS
    bare = variant("bare", {})
    assert (bare.bos_id, bare.eos_id) == (None, 0)
    # {"content": ...} dicts, as Hugging Face writes them
    eot = {"content": "<|endoftext|>", "special": True}
    t = variant("dicts", {"tokenizer_config.json": {"bos_token": eot, "eos_token": eot}})
    assert (t.bos_id, t.eos_id) == (0, 0)
    assert t.encode("the", bos=True, eos=True).tolist() == [0, *bare.encode("the").tolist(), 0]
    t = variant("map", {"special_tokens_map.json": {"eos_token": "t"}})
    assert t.eos_id == bare.token_to_id("t") != 0
    # generation_config supplies stop ids (and an EOS the tokenizer configs lack), never a BOS
    t = variant("gen", {"generation_config.json": {"bos_token_id": 5, "eos_token_id": [7, 8]}})
    assert (t.bos_id, t.eos_id, t.stop_ids, t.add_bos) == (None, 7, [7, 8], False)
    t = variant("gen_eos", {"tokenizer_config.json": {"eos_token": "t"}, "generation_config.json": {"eos_token_id": 9}})
    assert t.stop_ids == [bare.token_to_id("t"), 9]
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        variant("bad", {"tokenizer_config.json": {"eos_token": "<|nope|>"}})


def test_fingerprint_files_and_save(tokenizer_dir, tmp_path):
    tokenizer = Tokenizer(tokenizer_dir)
    assert [p.name for p in tokenizer.files] == ["tokenizer.json", "tokenizer_config.json"]
    assert Tokenizer(tokenizer_dir).fingerprint == tokenizer.fingerprint
    tokenizer.save(tmp_path / "ckpt")
    copy = Tokenizer(tmp_path / "ckpt")
    assert copy.fingerprint == tokenizer.fingerprint
    tokenizer.save(tokenizer_dir)  # saving onto itself is a no-op
    # a different tokenizer, or the same one with another config, has another fingerprint
    other = train_tokenizer(ListTexts(texts=make_corpus(seed=3)), tmp_path / "other", vocab_size=300, min_frequency=1)
    assert Tokenizer(other).fingerprint != tokenizer.fingerprint
    (tmp_path / "ckpt" / "generation_config.json").write_text(json.dumps({"eos_token_id": 1}))
    assert Tokenizer(tmp_path / "ckpt").fingerprint != tokenizer.fingerprint


def test_missing_files(tmp_path, tokenizer_dir, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist.*litgpt train_tokenizer"):
        Tokenizer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no tokenizer.json or tokenizer.model in .*empty.*litgpt download"):
        Tokenizer(tmp_path / "empty")
    sp_only = tmp_path / "sp"
    sp_only.mkdir()
    (sp_only / "tokenizer.model").write_bytes(b"\0")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # as if not installed
    with pytest.raises(ImportError, match="sentencepiece is not installed"):
        Tokenizer(sp_only)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="could not load"):
        Tokenizer(bad)


def test_sentencepiece(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(make_corpus(200)), model_prefix=str(tmp_path / "tokenizer"), vocab_size=60,
        model_type="bpe", minloglevel=2,
    )
    tokenizer = Tokenizer(tmp_path)
    assert tokenizer.backend == "sentencepiece" and tokenizer.vocab_size == 60
    assert (tokenizer.bos_id, tokenizer.eos_id) == (1, 2)
    ids = tokenizer.encode("the cat saw the dog", bos=True, eos=True)
    assert ids[0].item() == 1 and ids[-1].item() == 2
    assert tokenizer.decode(ids[1:-1]) == "the cat saw the dog"
    assert tokenizer.encode_batch(["the cat", "a dog"]) == [tokenizer.encode(t).tolist() for t in ("the cat", "a dog")]


# ---------------------------------------------------------------------------------------------------- BOS / EOS
LLAMA2 = dict(config={"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, "add_eos_token": False},
              post_processor="<s>", generation_config={"bos_token_id": 1, "eos_token_id": 2})
QWEN2 = dict(config={"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
             generation_config={"bos_token_id": 9, "eos_token_id": [8, 9]})
LLAMA3 = dict(config={"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, post_processor="<|begin_of_text|>",
              generation_config={"bos_token_id": 2, "eos_token_id": [3, 4]})
# a Llama-layout checkpoint whose tokenizer adds no BOS although generation_config names one
NO_BOS = dict(config={"bos_token": None, "eos_token": "</s>", "add_bos_token": False},
              generation_config={"bos_token_id": 0, "eos_token_id": 1})
# tokenizer.json's post-processor is the truth where it disagrees with add_bos_token / add_eos_token (transformers 5
# bakes those flags into it when it saves the tokenizer)
OFF = dict(config={"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": False}, post_processor="<s>")
EOS_TOO = dict(config={"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, "add_eos_token": True})


@pytest.mark.parametrize("family", [LLAMA2, QWEN2, LLAMA3, NO_BOS, OFF, EOS_TOO],
                         ids=["llama2", "qwen2", "llama3", "no_bos", "add_bos_false", "add_eos"])
def test_bos_and_eos_follow_the_tokenizer_config_as_transformers_does(tmp_path, family):
    from hf_tokenizers import auto_tokenizer, make_hf_tokenizer

    directory = make_hf_tokenizer(tmp_path, **family)
    ours, theirs = Tokenizer(directory), auto_tokenizer(directory)
    assert (ours.bos_id, ours.eos_id) == (theirs.bos_token_id, theirs.eos_token_id)
    for text in ["The cat saw the dog.", "Hello, how are you today?", " a", "<|im_start|>user"]:
        ids = ours.encode(text, bos=ours.add_bos, eos=ours.add_eos).tolist()
        assert ids == theirs(text)["input_ids"], text
    generation = family.get("generation_config", {}).get("eos_token_id", [])
    generation = generation if isinstance(generation, list) else [generation]
    assert ours.stop_ids == list(dict.fromkeys([ours.eos_id, *generation]))


def test_a_text_that_starts_with_bos_gets_no_second_one(tmp_path):
    from hf_tokenizers import make_hf_tokenizer

    tokenizer = Tokenizer(make_hf_tokenizer(tmp_path, **LLAMA3))
    once = tokenizer.encode("<|begin_of_text|>The cat", bos=True).tolist()
    assert once == [tokenizer.bos_id] + tokenizer.encode("The cat").tolist()


def test_llm_prompts_start_with_bos_only_when_the_tokenizer_adds_one(tmp_path):
    from hf_tokenizers import auto_tokenizer, make_hf_tokenizer

    from litgpt.api import LLM
    from litgpt.config import Config
    from litgpt.model import GPT

    model = GPT(Config.from_name("debug", n_layer=1, n_embd=16, n_head=2, vocab_size=512, block_size=32))
    for name, family in (("qwen2", QWEN2), ("no_bos", NO_BOS), ("llama3", LLAMA3)):
        directory = make_hf_tokenizer(tmp_path / name, **family)
        llm = LLM(model, tokenizer=Tokenizer(directory))
        assert llm.encode_prompts(["The cat"])[0].tolist() == auto_tokenizer(directory)("The cat")["input_ids"], name
