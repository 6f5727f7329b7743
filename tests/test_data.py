import json
import logging
import os
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

import litgpt.data.base as base
import litgpt.data.text_files as text_files
from litgpt.data import (
    DataModule,
    ResumableSampler,
    StdlibText,
    TextFiles,
    TinyStories,
    TokenWindows,
    make_train_loader,
    make_val_loader,
)
from litgpt.scripts.train_tokenizer import train_tokenizer
from litgpt.tokenizer import Tokenizer

WORDS = "the a cat dog saw ran big small happy sad tree house sun moon played jumped and then she he it".split()


def make_stories(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 15))).capitalize() + "." for _ in range(2))
        for _ in range(n)
    ]


@dataclass
class ListTexts(DataModule):
    texts: list = field(default_factory=list)

    def iter_texts(self, split: str) -> Iterator[str]:
        yield from self.texts


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> tuple[Tokenizer, Tokenizer]:
    """Two different tiny byte-level BPE tokenizers (EOS = <|endoftext|> = 0)."""
    root = tmp_path_factory.mktemp("tokenizers")
    data = ListTexts(texts=make_stories(100, seed=99))
    a = train_tokenizer(data, root / "a", vocab_size=300, min_frequency=1)
    b = train_tokenizer(data, root / "b", vocab_size=330, min_frequency=1)
    return Tokenizer(a), Tokenizer(b)


def expected_stream(tokenizer: Tokenizer, documents: list[str]) -> list[int]:
    out: list[int] = []
    for doc in documents:
        out += tokenizer.encode(doc).tolist() + [tokenizer.eos_id]
    return out


def read_bin(data: DataModule, split: str) -> list[int]:
    meta = json.loads((data.prepared_dir / "meta.json").read_text())
    return np.fromfile(data.prepared_dir / f"{split}.bin", dtype=meta["dtype"]).tolist()


def documents_of(tokenizer: Tokenizer, stream: list[int]) -> list[str]:
    """Split a token stream at EOS and decode each document."""
    docs, current = [], []
    for t in stream:
        if t == tokenizer.eos_id:
            docs.append(tokenizer.decode(current))
            current = []
        else:
            current.append(t)
    assert not current, "stream must end with EOS"
    return docs


def prepared(data: DataModule, tokenizer: Tokenizer, max_seq_length: int = 16) -> DataModule:
    data.connect(tokenizer, max_seq_length=max_seq_length)
    data.prepare_data()
    data.setup()
    return data


# ---------------------------------------------------------------------------------------------------- TinyStories
def write_txt(path: Path, stories: list[str]) -> None:
    path.write_text("".join(f"{s}\n<|endoftext|>\n" for s in stories))


def test_tinystories_txt(tmp_path, tokenizers):
    tok = tokenizers[0]
    train, val = make_stories(30), make_stories(5, seed=1)
    write_txt(tmp_path / "TinyStories-train.txt", train)
    write_txt(tmp_path / "TinyStories-valid.txt", val)
    data = prepared(TinyStories(data_path=tmp_path, cache_dir=tmp_path / "cache", tokenize_workers=1), tok)
    assert read_bin(data, "train") == expected_stream(tok, train)
    assert read_bin(data, "val") == expected_stream(tok, val)
    assert data.prepared_dir == tmp_path / "cache" / tok.fingerprint[:12]
    meta = json.loads((data.prepared_dir / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["tokenizer_fingerprint"] == tok.fingerprint
    assert meta["splits"]["train"] == {"documents": 30, "tokens": len(expected_stream(tok, train))}
    # the cache inside data_path is not mistaken for data on the next run
    assert list(TinyStories(data_path=tmp_path, cache_dir=tmp_path / "cache").iter_texts("val")) == val


def test_tinystories_txt_inline_separators(tmp_path):
    (tmp_path / "a.txt").write_text("one\n<|endoftext|>\ntwo<|endoftext|>three<|endoftext|>\n\nfour\nlines\n")
    data = TinyStories(data_path=tmp_path / "a.txt", val_split_fraction=0.4, seed=0)
    docs = list(data.iter_texts("train")) + list(data.iter_texts("val"))
    assert sorted(docs) == sorted(["one", "two", "three", "four\nlines"])


def test_tinystories_json_holdout(tmp_path, tokenizers):
    tok = tokenizers[0]
    stories = make_stories(200)
    (tmp_path / "all").mkdir()
    (tmp_path / "all" / "data00.json").write_text(json.dumps([{"story": s, "summary": "x"} for s in stories[:120]]))
    (tmp_path / "all" / "data01.json").write_text(json.dumps([{"text": s} for s in stories[120:]]))
    source = TinyStories(data_path=tmp_path / "all", cache_dir=tmp_path / "c", val_split_fraction=0.05, tokenize_workers=1)
    data = prepared(source, tok)
    train, val = documents_of(tok, read_bin(data, "train")), documents_of(tok, read_bin(data, "val"))
    assert 1 <= len(val) < 30 and len(train) + len(val) == 200
    assert sorted(train + val) == sorted(stories)
    assert [s for s in stories if s in set(train)] == train  # order kept
    # the hold-out is deterministic and seeded
    again = TinyStories(data_path=tmp_path / "all", val_split_fraction=0.05)
    assert list(again.iter_texts("val")) == val
    other_seed = TinyStories(data_path=tmp_path / "all", val_split_fraction=0.05, seed=7)
    assert list(other_seed.iter_texts("val")) != val


def test_tinystories_jsonl_and_parquet(tmp_path, tokenizers):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    tok = tokenizers[0]
    train, val = make_stories(20), make_stories(4, seed=2)
    (tmp_path / "jsonl").mkdir()
    (tmp_path / "jsonl" / "train.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in train))
    (tmp_path / "jsonl" / "validation.jsonl").write_text("".join(json.dumps({"story": s}) + "\n" for s in val))
    (tmp_path / "parquet" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": train}), tmp_path / "parquet" / "data" / "train-00000-of-00001.parquet")
    pq.write_table(pa.table({"text": val}), tmp_path / "parquet" / "data" / "validation-00000-of-00001.parquet")
    for layout in ("jsonl", "parquet"):
        source = TinyStories(data_path=tmp_path / layout, cache_dir=tmp_path / f"cache-{layout}", tokenize_workers=1)
        data = prepared(source, tok)
        assert read_bin(data, "train") == expected_stream(tok, train), layout
        assert read_bin(data, "val") == expected_stream(tok, val), layout


def test_tinystories_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data_path '.*missing' does not exist"):
        list(TinyStories(data_path=tmp_path / "missing").iter_texts("train"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("hi")
    with pytest.raises(FileNotFoundError, match=r"no TinyStories files \(.json, .jsonl, .parquet, .txt\) under"):
        list(TinyStories(data_path=tmp_path / "empty").iter_texts("train"))
    (tmp_path / "bad.json").write_text(json.dumps([{"title": "no text"}]))
    with pytest.raises(ValueError, match="'story' or 'text'"):
        list(TinyStories(data_path=tmp_path / "bad.json").iter_texts("train"))
    with pytest.raises(ValueError, match="split must be one of"):
        list(TinyStories(data_path=tmp_path / "bad.json").iter_texts("test"))


@pytest.mark.parametrize("offline_error", ["connection", "hub_offline"])
def test_tinystories_offline_error(monkeypatch, offline_error):
    datasets = pytest.importorskip("datasets")

    def load_dataset(*args, **kwargs):
        if offline_error == "connection":  # what datasets raises without network
            raise ConnectionError("Couldn't reach 'roneneldan/TinyStories' on the Hub (LocalEntryNotFoundError)")
        from huggingface_hub.errors import OfflineModeIsEnabled

        raise OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled.")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(ConnectionError) as info:
        list(TinyStories().iter_texts("train"))
    message = str(info.value)
    assert "could not download roneneldan/TinyStories (no network?)" in message
    assert "--data.data_path" in message and ".parquet" in message


# ---------------------------------------------------------------------------------------------------- caching
def test_stale_tokenization_is_detected(tmp_path, tokenizers, caplog):
    tok_a, tok_b = tokenizers
    stories = make_stories(40)
    write_txt(tmp_path / "train.txt", stories)
    write_txt(tmp_path / "valid.txt", stories[:3])
    cache = tmp_path / "cache"
    caplog.set_level(logging.INFO, logger="litgpt.data.base")

    data_a = prepared(TinyStories(data_path=tmp_path, cache_dir=cache, tokenize_workers=1), tok_a)
    stream_a = read_bin(data_a, "train")
    bin_a = data_a.prepared_dir / "train.bin"
    mtime = bin_a.stat().st_mtime_ns

    # same cache_dir, different tokenizer: re-tokenized (and logged why), different tokens
    caplog.clear()
    data_b = prepared(TinyStories(data_path=tmp_path, cache_dir=cache, tokenize_workers=1), tok_b)
    assert "cached ones are for other tokenizers" in caplog.text
    stream_b = read_bin(data_b, "train")
    assert stream_b != stream_a and stream_b == expected_stream(tok_b, stories)

    # same tokenizer again: reused, file untouched
    caplog.clear()
    prepared(TinyStories(data_path=tmp_path, cache_dir=cache, tokenize_workers=1), tok_a)
    assert "reusing tokenized data" in caplog.text
    assert bin_a.stat().st_mtime_ns == mtime

    # a meta.json that names another tokenizer is rejected by setup and re-tokenized by prepare_data
    meta_path = data_a.prepared_dir / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "tokenizer_fingerprint": tok_b.fingerprint}))
    with pytest.raises(ValueError, match="different tokenizer"):
        data_a.setup()
    caplog.clear()
    prepared(TinyStories(data_path=tmp_path, cache_dir=cache, tokenize_workers=1), tok_a)
    assert "tokenizer changed" in caplog.text

    # the source changed: re-tokenized
    write_txt(tmp_path / "train.txt", stories[:20])
    caplog.clear()
    data = prepared(TinyStories(data_path=tmp_path, cache_dir=cache, tokenize_workers=1), tok_a)
    assert "source data changed" in caplog.text
    assert read_bin(data, "train") == expected_stream(tok_a, stories[:20])

    # a truncated .bin is not trusted
    with open(bin_a, "r+b") as f:
        f.truncate(10)
    caplog.clear()
    prepared(TinyStories(data_path=tmp_path, cache_dir=cache, tokenize_workers=1), tok_a)
    assert "wrong size" in caplog.text


def test_interrupted_prepare_leaves_nothing_valid(tmp_path, tokenizers, monkeypatch):
    tok = tokenizers[0]
    write_txt(tmp_path / "train.txt", make_stories(40))
    write_txt(tmp_path / "valid.txt", make_stories(3))
    data = TinyStories(data_path=tmp_path, cache_dir=tmp_path / "cache", tokenize_workers=1)
    data.connect(tok, max_seq_length=8)
    monkeypatch.setattr(base, "CHUNK_DOCUMENTS", 4)
    encode = base._encode_chunk
    calls = []

    def crash_on_third(docs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return encode(docs)

    monkeypatch.setattr(base, "_encode_chunk", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        data.prepare_data()
    assert sorted(p.name for p in data.prepared_dir.iterdir()) == []  # no .bin, no tmp, no meta
    with pytest.raises(FileNotFoundError, match="call prepare_data"):
        data.setup()
    monkeypatch.setattr(base, "_encode_chunk", encode)
    data.prepare_data()
    assert read_bin(data, "train") == expected_stream(tok, make_stories(40))


def test_prepare_needs_eos_and_connect(tmp_path, tokenizers):
    data = ListTexts(texts=["a"])
    data.cache_dir = tmp_path
    with pytest.raises(RuntimeError, match=r"call ListTexts.connect"):
        data.prepare_data()
    no_eos = tmp_path / "no_eos"
    tokenizers[0].save(no_eos)
    (no_eos / "tokenizer.json").write_text((no_eos / "tokenizer.json").read_text().replace("<|endoftext|>", "<|pad|>"))
    (no_eos / "tokenizer_config.json").write_text("{}")
    data.connect(Tokenizer(no_eos), max_seq_length=4)
    with pytest.raises(ValueError, match="no EOS token"):
        data.prepare_data()


# ---------------------------------------------------------------------------------------------------- TextFiles
def test_text_files(tmp_path, tokenizers, monkeypatch):
    tok = tokenizers[0]
    stories = make_stories(12)
    for i, s in enumerate(stories[:10]):
        sub = tmp_path / "train" / ("even" if i % 2 == 0 else "odd")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:02d}.txt").write_text(s)
    (tmp_path / "train" / "skip.md").write_text("not a txt file")
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "v.txt").write_text(stories[10])
    monkeypatch.chdir(tmp_path)
    data = prepared(TextFiles(train_data_path=tmp_path / "train", val_data_path=tmp_path / "val", tokenize_workers=1), tok)
    assert data.cache_root().parent == Path("data/text_files")  # default cache: under the working directory
    order = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9]  # sorted paths: even/00.txt ... odd/09.txt
    assert read_bin(data, "train") == expected_stream(tok, [stories[i] for i in order])
    assert read_bin(data, "val") == expected_stream(tok, [stories[10]])

    held_out = TextFiles(train_data_path=[tmp_path / "train", tmp_path / "val"], val_split_fraction=0.2)
    train, val = list(held_out.iter_texts("train")), list(held_out.iter_texts("val"))
    assert val and sorted(train + val) == sorted(stories[:11])

    with pytest.raises(FileNotFoundError, match=r"train data path '.*nope' does not exist"):
        list(TextFiles(train_data_path=tmp_path / "nope").iter_texts("train"))
    (tmp_path / "no_txt").mkdir()
    with pytest.raises(FileNotFoundError, match="no .txt files"):
        list(TextFiles(train_data_path=tmp_path / "no_txt").iter_texts("train"))


def test_text_files_splits_large_files(tmp_path, monkeypatch):
    monkeypatch.setattr(text_files, "DOCUMENT_CHARS", 100)
    paragraphs = [f"paragraph {i} " + "word " * 10 for i in range(20)]
    (tmp_path / "big.txt").write_text("\n\n".join(paragraphs))
    pieces = list(text_files.read_documents(tmp_path / "big.txt"))
    assert len(pieces) > 3 and all(len(p) <= 400 for p in pieces)
    assert "".join(pieces) == "\n\n".join(paragraphs)
    assert all(p.endswith("\n\n") for p in pieces[:-1])  # cut at blank lines


# ---------------------------------------------------------------------------------------------------- StdlibText
def test_stdlib_text(tmp_path, tokenizers):
    tok = tokenizers[0]
    one = prepared(StdlibText(cache_dir=tmp_path / "one", max_bytes=200_000, tokenize_workers=1), tok, max_seq_length=64)
    files = one.files()
    assert sum(size for _, size in files) <= 200_000
    assert all("site-packages" not in str(p) and "/test/" not in str(p) for p, _ in files)
    assert len(one.train_dataset()) > 10 and len(one.val_dataset()) >= 1
    # several processes give the same token stream as one
    two = prepared(StdlibText(cache_dir=tmp_path / "two", max_bytes=200_000, tokenize_workers=2), tok, max_seq_length=64)
    for split in ("train", "val"):
        assert read_bin(two, split) == read_bin(one, split)
    fingerprint = one.source_fingerprint()
    assert fingerprint["python"] and fingerprint["files"]


# ---------------------------------------------------------------------------------------------------- TokenWindows
def test_token_windows(tmp_path):
    windows = TokenWindows(np.arange(101, dtype=np.uint16), max_seq_length=10)
    assert len(windows) == 10
    assert windows[0].dtype == torch.int64 and windows[0].shape == (11,)
    assert windows[3].tolist() == list(range(30, 41))
    assert windows[9].tolist() == list(range(90, 101))
    with pytest.raises(IndexError):
        windows[10]
    assert len(TokenWindows(np.arange(100, dtype=np.uint16), max_seq_length=10)) == 9
    message = r"the val split has 8 tokens, fewer than max_seq_length \+ 1 = 11; lower max_seq_length or add data"
    with pytest.raises(ValueError, match=message):
        TokenWindows(np.arange(8), max_seq_length=10, split="val")

    # memmaps pickle by file name (DataLoader workers reopen, never copy)
    path = tmp_path / "t.bin"
    np.arange(1000, dtype=np.uint16).tofile(path)
    mm = TokenWindows(np.memmap(path, dtype=np.uint16, mode="r"), max_seq_length=10)
    payload = pickle.dumps(mm)
    assert len(payload) < 1000
    clone = pickle.loads(payload)
    assert isinstance(clone.tokens, np.memmap) and clone[5].tolist() == mm[5].tolist()


def test_datasets_and_loaders(tmp_path, tokenizers):
    tok = tokenizers[0]
    write_txt(tmp_path / "train.txt", make_stories(60))
    write_txt(tmp_path / "valid.txt", make_stories(10, seed=3))
    data = prepared(TinyStories(data_path=tmp_path, cache_dir=tmp_path / "cache", tokenize_workers=1), tok, max_seq_length=8)
    train, val = data.train_dataset(), data.val_dataset()
    stream = read_bin(data, "train")
    assert len(train) == (len(stream) - 1) // 8
    assert train[2].tolist() == stream[16:25]
    loader = make_train_loader(train, batch_size=4, seed=0)
    batches = iter(loader)
    first = [next(batches) for _ in range(3)]
    assert all(b.shape == (4, 9) and b.dtype == torch.int64 for b in first)
    resumed = next(iter(make_train_loader(train, batch_size=4, seed=0, consumed_samples=8)))
    assert torch.equal(resumed, first[2])
    val_batches = list(make_val_loader(val, batch_size=3, max_batches=2))
    assert len(val_batches) == 2 and torch.equal(val_batches[0][0], val[0])
    assert sum(len(b) for b in make_val_loader(val, batch_size=3, max_batches=None)) == len(val)
    # DataLoader workers (`loader_workers`) read the same windows in the same order
    in_process, in_workers = iter(make_train_loader(train, 4, seed=0, consumed_samples=12)), iter(
        make_train_loader(train, 4, seed=0, consumed_samples=12, num_workers=2))
    for _ in range(len(train) // 4 + 3):  # past the end of the first epoch
        assert torch.equal(next(in_process), next(in_workers))
    val_in_workers = make_val_loader(val, batch_size=3, max_batches=2, num_workers=2)
    assert val_in_workers.persistent_workers
    for _ in range(2):  # every pass over the persistent workers yields the same batches
        assert [b.tolist() for b in val_in_workers] == [b.tolist() for b in val_batches]
    with pytest.raises(ValueError, match="lower max_seq_length or add data"):
        data.connect(tok, max_seq_length=10_000)
        data.val_dataset()


# ---------------------------------------------------------------------------------------------------- sampler
def take(sampler: ResumableSampler, n: int) -> list[int]:
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_resumable_sampler_resumes_exactly():
    full = take(ResumableSampler(10, seed=3), 35)
    for epoch in range(3):  # every epoch is a fresh permutation
        assert sorted(full[10 * epoch : 10 * epoch + 10]) == list(range(10))
    assert full[:10] != full[10:20]
    assert full[:10] == torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()
    for k in (0, 4, 10, 17, 23):  # including resumption points in later epochs and across epoch boundaries
        assert take(ResumableSampler(10, seed=3, consumed_samples=k), 12) == full[k : k + 12]
    assert take(ResumableSampler(10, seed=4), 10) != full[:10]


def test_resumable_sampler_ranks():
    world = 3
    streams = [take(ResumableSampler(10, seed=0, rank=r, world_size=world), 6) for r in range(world)]
    for epoch in range(2):
        shares = [s[3 * epoch : 3 * epoch + 3] for s in streams]  # 10 // 3 = 3 samples per rank per epoch
        flat = [i for share in shares for i in share]
        assert len(flat) == len(set(flat)) == 9  # disjoint, equal-sized
    for r in range(world):
        assert take(ResumableSampler(10, seed=0, rank=r, world_size=world, consumed_samples=2), 4) == streams[r][2:6]
    with pytest.raises(ValueError, match="rank"):
        ResumableSampler(10, seed=0, rank=3, world_size=3)
    with pytest.raises(ValueError, match="cannot be shared"):
        ResumableSampler(2, seed=0, world_size=3)


# ---------------------------------------------------------------------------------------------------- worker options
@pytest.mark.parametrize("cls, kwargs", [
    (TinyStories, {}), (StdlibText, {}), (TextFiles, {"train_data_path": Path("train")}),
], ids=["TinyStories", "StdlibText", "TextFiles"])
def test_num_workers_is_a_deprecated_name_of_tokenize_workers(cls, kwargs):
    with pytest.warns(FutureWarning, match=f"{cls.__name__}: num_workers is deprecated.*tokenize_workers"):
        data = cls(**kwargs, num_workers=3)
    assert data.tokenize_workers == 3 and data.loader_workers == 0
    init_args = data.as_dict()["init_args"]
    assert init_args["tokenize_workers"] == 3 and "num_workers" not in init_args
    with pytest.warns(FutureWarning):
        assert cls(**kwargs, num_workers=3, tokenize_workers=3).tokenize_workers == 3  # the same value twice is fine
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="num_workers=3 and tokenize_workers=5 disagree"):
        cls(**kwargs, num_workers=3, tokenize_workers=5)
    with pytest.raises(ValueError, match=f"{cls.__name__}: loader_workers must be an integer >= 0"):
        cls(**kwargs, loader_workers=-1)
    with pytest.raises(ValueError, match="tokenize_workers must be an integer >= 0"):
        cls(**kwargs, tokenize_workers=-2)


def test_connect_takes_max_seq_length_by_name(tokenizers):
    data = ListTexts(texts=["a b"])
    data.connect(tokenizers[0], max_seq_length=8)
    assert data.max_seq_length == 8 and not hasattr(data, "batch_size")
    with pytest.raises(TypeError):
        data.connect(tokenizers[0], 2, 8)  # the old (tokenizer, batch_size, max_seq_length) order fails loudly



def test_parallel_tokenizing_from_a_stdin_script_falls_back_to_one_process(tmp_path, tokenizers):
    """A spawned worker re-runs the main script; `python - <<EOF` has none, so the pool would respawn dying workers
    forever. The data module tokenizes in the script's process instead, with a warning, and gives the same tokens."""
    import subprocess
    import sys

    for split, stories in (("train", make_stories(6)), ("val", make_stories(2, seed=1))):
        (tmp_path / split).mkdir()
        write_txt(tmp_path / split / "a.txt", stories)
    script = f"""
from pathlib import Path
from litgpt.data import TextFiles
from litgpt.tokenizer import Tokenizer
data = TextFiles(train_data_path=Path({str(tmp_path / 'train')!r}), val_data_path=Path({str(tmp_path / 'val')!r}),
                 cache_dir=Path({str(tmp_path / 'cache')!r}), tokenize_workers=2)
data.connect(Tokenizer(Path({str(tokenizers[0].checkpoint_dir)!r})), max_seq_length=16)
data.prepare_data()
data.setup()
print("TOKENS", len(data._split_tokens("train")))
"""
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    result = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "is not a file (a script from stdin?); tokenizing in this process instead" in result.stderr
    reference = prepared(TextFiles(train_data_path=tmp_path / "train", val_data_path=tmp_path / "val",
                                   cache_dir=tmp_path / "reference"), tokenizers[0])
    assert f"TOKENS {len(read_bin(reference, 'train'))}" in result.stdout


def test_a_tinystories_file_that_is_not_utf8_is_named(tmp_path):
    from litgpt.data.tinystories import read_stories

    for name, text in (("a.json", '["un caf\u00e9"]'), ("a.jsonl", '{"text": "caf\u00e9"}\n'), ("a.txt", "caf\u00e9\n")):
        path = tmp_path / name
        path.write_bytes(text.encode("latin-1"))
        with pytest.raises(ValueError) as info:
            list(read_stories(path))
        where = f" at offset {text.index(chr(0xe9))}" if name.endswith(".json") else ""  # streamed: no offset
        assert str(info.value) == (f"{path} is not UTF-8 text (byte 0xe9{where}); save it as UTF-8 (e.g. `iconv -t "
                                   "UTF-8`) and rerun")
