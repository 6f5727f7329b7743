"""Instruction data (litgpt/data/sft.py, json_data.py, alpaca.py): prompt framing, masking, truncation, padding, the
masked loss, splits, and one-line errors for bad files. The helpers here make the tiny data, tokenizer and base
checkpoint the fine-tuning tests use."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from litgpt.checkpoint import save_checkpoint
from litgpt.config import Config
from litgpt.data import JSON, Alpaca, pad_collate
from litgpt.data.sft import SFTDataset
from litgpt.finetune.base import sft_loss
from litgpt.model import GPT, init_weights
from litgpt.prompts import Alpaca as AlpacaStyle
from litgpt.prompts import Plain, Qwen2_5
from litgpt.scripts.train_tokenizer import train_tokenizer
from litgpt.tokenizer import Tokenizer
from test_tokenizer import ListTexts

WORDS = "cat dog sun moon tree bird fish house river stone cloud apple bread chair table lamp road hill".split()


def make_records(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Little "define this word" records, a third of them with an input."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        word, other = rng.choice(WORDS), rng.choice(WORDS)
        records.append({"instruction": f"Define the word {word}.", "input": f"like a {other}" if i % 3 == 0 else "",
                        "output": f"A {word} is a kind of {other}."})
    return records


def write_json_dir(root: Path, n_train: int = 64, n_val: int = 16) -> Path:
    """root/train.json and root/val.json."""
    root.mkdir(parents=True, exist_ok=True)
    records = make_records(n_train + n_val)
    (root / "train.json").write_text(json.dumps(records[:n_train]))
    (root / "val.json").write_text(json.dumps(records[n_train:]))
    return root


def make_tokenizer(directory: Path) -> Path:
    """A 320-token BPE trained on the records' text (and the alpaca template's words)."""
    texts = [" ".join(r.values()) for r in make_records(200)] + [AlpacaStyle().apply("x", "y")] * 5
    return train_tokenizer(ListTexts(texts=texts), directory, vocab_size=320, min_frequency=1)


def make_base_checkpoint(directory: Path, name: str = "debug", **overrides) -> Path:
    """A checkpoint to fine-tune: random weights of a tiny `name` model (block_size 64) and the tokenizer above."""
    make_tokenizer(directory)
    config = Config.from_name(name, **{**dict(n_layer=1, n_embd=32, n_head=4, block_size=64, vocab_size=320,
                                              padding_multiple=64), **overrides})
    torch.manual_seed(0)
    model = GPT(config)
    init_weights(model)
    save_checkpoint(model, directory)
    return directory


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    return Tokenizer(make_tokenizer(tmp_path_factory.mktemp("tok")))


# ---------------------------------------------------------------------------------------------------- samples
@pytest.mark.parametrize("style", [Plain(), AlpacaStyle(), Qwen2_5()], ids=["plain", "alpaca", "qwen2.5"])
def test_masked_labels_are_ignore_index_exactly_on_the_prompt(tokenizer, style):
    records = make_records(6)
    masked = SFTDataset(records, tokenizer, style, max_seq_length=1000, mask_prompt=True)
    plain = SFTDataset(records, tokenizer, style, max_seq_length=1000, mask_prompt=False)
    for i, record in enumerate(records):
        prompt = tokenizer.encode(style.apply(record["instruction"], record["input"])).tolist()
        response = tokenizer.encode(record["output"], eos=True).tolist()
        item = masked[i]
        assert item["input_ids"].tolist() == prompt + response  # the prompt tokenized alone, as generate does
        assert item["labels"].tolist() == [-100] * len(prompt) + response
        assert plain[i]["labels"].tolist() == prompt + response


def test_truncation_and_records_without_a_target(tokenizer):
    records = make_records(4)
    prompt_len = len(tokenizer.encode(Plain().apply(records[1]["instruction"], records[1]["input"])))
    data = SFTDataset(records, tokenizer, Plain(), max_seq_length=prompt_len + 2, mask_prompt=True)
    assert all(len(data[i]["input_ids"]) <= prompt_len + 2 for i in range(len(data)))
    short = SFTDataset(records, tokenizer, Plain(), max_seq_length=prompt_len, mask_prompt=False)
    assert all(len(short[i]["input_ids"]) <= prompt_len for i in range(len(short)))
    with pytest.raises(ValueError, match="no train record leaves a token to learn within max_seq_length"):
        SFTDataset(records, tokenizer, AlpacaStyle(), max_seq_length=8, mask_prompt=True)


def test_pad_collate_right_pads():
    samples = [{"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([-100, 6, 7])},
               {"input_ids": torch.tensor([8]), "labels": torch.tensor([8])}]
    batch = pad_collate(samples, ignore_index=-100)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["tokens"] == 4
    assert pad_collate(samples, ignore_index=-1)["labels"].tolist() == [[-100, 6, 7], [8, -1, -1]]


def test_masked_loss_gives_prompt_and_padding_no_weight(tokenizer):
    """sft_loss == cross-entropy over the response targets only (hand-computed from the logits)."""
    torch.manual_seed(0)
    model = GPT(Config.from_name("debug", n_layer=1, n_embd=32, n_head=4, block_size=256, vocab_size=320,
                                 padding_multiple=64)).double()
    init_weights(model)
    records = make_records(4)
    data = SFTDataset(records, tokenizer, Plain(), max_seq_length=256, mask_prompt=True)
    batch = pad_collate([data[i] for i in range(4)])
    loss = sft_loss(model, batch)

    logits = model(batch["input_ids"])[:, :-1]  # (B, T - 1, V)
    targets = batch["labels"][:, 1:]  # (B, T - 1)
    keep = targets != -100
    manual = -torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)[keep].mean()
    torch.testing.assert_close(loss, manual, rtol=1e-10, atol=1e-12)
    assert 0 < keep.sum() < keep.numel() // 2  # most targets are prompt or padding, and carry no weight
    torch.testing.assert_close(loss, F.cross_entropy(logits.flatten(0, 1), targets.flatten()), rtol=1e-10, atol=0)
    unmasked = F.cross_entropy(logits.flatten(0, 1), batch["input_ids"][:, 1:].flatten())
    assert abs(unmasked.item() - loss.item()) > 1e-3  # the prompt would have changed it

    # another ignore_index labels the same positions and gives the same loss
    relabelled = {**batch, "labels": batch["labels"].masked_fill(batch["labels"] == -100, -1)}
    torch.testing.assert_close(sft_loss(model, relabelled, ignore_index=-1), loss, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------- modules
def test_json_directory_and_file_split(tmp_path, tokenizer):
    directory = write_json_dir(tmp_path / "d", 30, 10)
    data = JSON(json_path=directory, mask_prompt=True, prompt_style="plain")
    data.connect(tokenizer, max_seq_length=64)
    data.setup()
    assert (len(data.train_dataset()), len(data.val_dataset())) == (30, 10)
    assert data.style.name == "plain"

    records = make_records(40)
    (tmp_path / "all.json").write_text(json.dumps(records))
    split = JSON(json_path=tmp_path / "all.json", val_split_fraction=0.25, seed=3)
    train, val = split.records()
    assert (len(train), len(val)) == (30, 10)
    assert sorted(map(json.dumps, train + val)) == sorted(json.dumps(r) for r in records)
    assert JSON(json_path=tmp_path / "all.json", val_split_fraction=0.25, seed=3).records() == (train, val)
    assert JSON(json_path=tmp_path / "all.json", val_split_fraction=0.25, seed=4).records()[1] != val

    (tmp_path / "all.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert JSON(json_path=tmp_path / "all.jsonl", val_split_fraction=0.25, seed=3).records() == (train, val)


BAD_FILES = [
    ({"a": 1}, "holds a JSON dict, not a list of records"),
    ([{"instruction": "x", "output": "y"}, {"instruction": "x", "input": ""}], "record 1 has no 'output' key"),
    ([{"output": "y"}], "record 0 has no 'instruction' key"),
    (["just text"], "record 0 is a JSON str, not an object"),
    ([{"instruction": "x", "output": 3}], "record 0: 'output' is a int, not a string"),
]


@pytest.mark.parametrize("content, message", BAD_FILES, ids=[m for _, m in BAD_FILES])
def test_bad_records_name_the_file_and_the_key(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError) as info:
        JSON(json_path=path, val_split_fraction=0.5).records()
    assert str(path) in str(info.value) and message in str(info.value) and "\n" not in str(info.value)


def test_bad_json_paths(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "val.json").write_text("[]")
    with pytest.raises(FileNotFoundError, match="is a directory without train.json"):
        JSON(json_path=tmp_path / "d").records()
    with pytest.raises(ValueError, match="val_split_fraction splits a single file"):
        JSON(json_path=tmp_path / "d", val_split_fraction=0.1).records()
    (tmp_path / "one.json").write_text("[]")
    with pytest.raises(ValueError, match="is one file: set --data.val_split_fraction"):
        JSON(json_path=tmp_path / "one.json").records()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        JSON(json_path=tmp_path / "missing.json", val_split_fraction=0.1).records()
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        JSON(json_path=tmp_path / "broken.json", val_split_fraction=0.1).records()
    with pytest.raises(ValueError, match="unknown prompt_style 'chatmI'; choose one of .*'chatml'"):
        JSON(json_path=tmp_path / "one.json", prompt_style="chatmI")
    with pytest.raises(ValueError, match="ignore_index must be a negative integer"):
        JSON(json_path=tmp_path / "one.json", ignore_index=3)


def test_a_file_that_is_not_utf8_is_named_with_the_bad_byte(tmp_path):
    for name in ("latin1.json", "latin1.jsonl"):
        path = tmp_path / name
        record = '{"instruction": "caf\u00e9", "output": "x"}'
        path.write_bytes((f"[{record}]" if name.endswith(".json") else record).encode("latin-1"))
        with pytest.raises(ValueError) as info:
            JSON(json_path=path, val_split_fraction=0.5).records()
        offset = (f"[{record}]" if name.endswith(".json") else record).index("\u00e9")
        assert str(info.value) == (f"{path} is not UTF-8 text (byte 0xe9 at offset {offset}); save it as UTF-8 (e.g. "
                                   "`iconv -t UTF-8`) and rerun")


def test_alpaca_reads_a_local_file_and_says_how_to_work_offline(tmp_path):
    records = make_records(50)
    (tmp_path / "alpaca").mkdir()
    (tmp_path / "alpaca" / "alpaca_data_cleaned_archive.json").write_text(json.dumps(records))
    data = Alpaca(download_dir=tmp_path / "alpaca", val_split_fraction=0.1, file_url="http://127.0.0.1:9/none.json")
    data.prepare_data()  # the file is there: no download
    train, val = data.records()
    assert (len(train), len(val)) == (45, 5) and data.style.name == "alpaca"

    offline = Alpaca(download_dir=tmp_path / "empty", file_url="http://127.0.0.1:9/alpaca.json")
    with pytest.raises(ConnectionError) as info:
        offline.prepare_data()
    message = str(info.value)
    assert message.startswith("could not download the Alpaca data from http://127.0.0.1:9/alpaca.json (")
    assert "offline, put alpaca_data_cleaned_archive.json into" in message and "\n" not in message
    assert not any((tmp_path / "empty").glob("*"))  # nothing partial left behind
