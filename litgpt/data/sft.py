"""Instruction data for fine-tuning: records {instruction, input, output} -> tokenized, prompt-masked samples.

A sample is `prompt_style.apply(instruction, input)` tokenized (with BOS where generation uses one) followed by the
tokenized output and EOS, cut to `max_seq_length` tokens. Its labels are the same ids, with the prompt's positions
set to `ignore_index` when `mask_prompt` (the loss then learns only the response). The prompt is tokenized on its
own, as `litgpt generate` tokenizes it, so the masked positions are exactly the prompt's tokens and a fine-tuned
model sees at generation what it saw in training. `pad_collate` right-pads a batch to its longest sample (input ids
with 0, labels with `ignore_index`), so padding carries no loss weight and, being after the real tokens, changes
nothing a causal model computes for them.

With `prompt_style` `chat_template` (the base checkpoint's own chat template) a sample is the template's rendering
of the conversation [user: instruction (and input after a blank line), assistant: output], tokenized as transformers'
`apply_chat_template` tokenizes it (the template writes its own BOS and end-of-turn tokens; no EOS is appended), and
the prompt is the rendering of the user turn with the generation prompt: what `litgpt generate` and `litgpt chat`
feed the fine-tuned model.

`SFTDataModule` is the base of `JSON` and `Alpaca`, with the call order of the pretraining data modules (`connect`
-> `prepare_data` -> `setup` -> `train_dataset` / `val_dataset`) plus `collate_fn`; it stays a plain class so that
`--data JSON` / `class_path` selects among its dataclass subclasses.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.utils.data import Dataset

from litgpt.data.base import not_utf8
from litgpt.loss import IGNORE_INDEX
from litgpt.prompts import CHAT_TEMPLATE, ChatTemplate, PromptStyle, load_prompt_style, prompt_uses_bos, style_names
from litgpt.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("instruction", "output")
OPTIONAL_KEYS = ("input",)
DEFAULT_IGNORE_INDEX = IGNORE_INDEX  # -100: F.cross_entropy's, and the label the model's training loss ignores


# ---------------------------------------------------------------------------------------------------- records
def read_records(path: Path) -> list[dict[str, str]]:
    """The records of a .json file (a list of objects) or a .jsonl file (one object per line), checked: each needs
    string `instruction` and `output` and may have a string `input`. Every problem is a one-line ValueError naming
    the file, the record and the key."""
    if not path.is_file():
        raise FileNotFoundError(f"instruction data file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None
    if path.suffix == ".jsonl":
        data: Any = []
        for line_number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {line_number} is not valid JSON ({e.msg})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, list):
        raise ValueError(
            f"{path} holds a JSON {type(data).__name__}, not a list of records "
            '[{"instruction": ..., "input": ..., "output": ...}, ...]'
        )
    if not data:
        raise ValueError(f"{path} holds no records")
    return [_check_record(record, i, path) for i, record in enumerate(data)]


def _check_record(record: Any, index: int, path: Path) -> dict[str, str]:
    if not isinstance(record, dict):
        raise ValueError(f"{path}: record {index} is a JSON {type(record).__name__}, not an object with keys "
                         f"{', '.join(REQUIRED_KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in record:
            raise ValueError(f"{path}: record {index} has no {key!r} key (each record needs "
                             f"{' and '.join(REQUIRED_KEYS)}; input is optional)")
    for key in REQUIRED_KEYS + OPTIONAL_KEYS:
        if key in record and not isinstance(record[key], str):
            raise ValueError(f"{path}: record {index}: {key!r} is a {type(record[key]).__name__}, not a string")
    return {"instruction": record["instruction"], "input": record.get("input", ""), "output": record["output"]}


def split_records(records: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val): a seeded random `fraction` of the records (at least one, never all) held out for validation."""
    if len(records) < 2:
        raise ValueError(f"cannot hold out validation records from {len(records)} record; add data")
    n_val = min(len(records) - 1, max(1, round(fraction * len(records))))
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    return [records[i] for i in order[n_val:]], [records[i] for i in order[:n_val]]


# ---------------------------------------------------------------------------------------------------- samples
class SFTDataset(Dataset):
    """Tokenized samples of instruction records: item i is {"input_ids": (L,), "labels": (L,)} int64, L <= max_seq_length.

    Records that leave no token to learn within max_seq_length (with mask_prompt: a prompt that fills it) are
    dropped with a warning; `dropped` counts them.
    """

    def __init__(
        self,
        records: list[dict[str, str]],
        tokenizer: Tokenizer,
        prompt_style: PromptStyle,
        max_seq_length: int,
        mask_prompt: bool,
        ignore_index: int = DEFAULT_IGNORE_INDEX,
        split: str = "train",
    ) -> None:
        if max_seq_length < 2:
            raise ValueError(f"max_seq_length must be at least 2 (a token and its target), got {max_seq_length}")
        if tokenizer.eos_id is None:
            raise ValueError(f"the tokenizer in {tokenizer.checkpoint_dir} has no EOS token to end each response; "
                             "set eos_token in its tokenizer_config.json")
        bos = [tokenizer.bos_id] if prompt_uses_bos(tokenizer, prompt_style) else []
        prompts = tokenizer.encode_batch([prompt_style.apply(r["instruction"], r["input"]) for r in records])
        if isinstance(prompt_style, ChatTemplate):
            conversations = tokenizer.encode_batch([_render_record(prompt_style, r) for r in records])
        else:
            conversations = [None] * len(records)
        responses = tokenizer.encode_batch([r["output"] for r in records])
        self.samples: list[tuple[torch.Tensor, int]] = []  # (ids (L,), prompt length)
        for prompt, response, conversation in zip(prompts, responses, conversations):
            if bos and not (prompt and prompt[0] == bos[0]):
                prompt = bos + prompt
            if conversation is not None and conversation[: len(prompt)] == prompt:
                ids = conversation[:max_seq_length]  # the template closes the assistant turn itself
            else:
                ids = (prompt + response + [tokenizer.eos_id])[:max_seq_length]
            if len(ids) < 2 or (mask_prompt and len(prompt) >= len(ids)):
                continue  # no target left, or every target would be ignored
            self.samples.append((torch.tensor(ids, dtype=torch.int64), len(prompt)))
        self.dropped = len(records) - len(self.samples)
        if not self.samples:
            raise ValueError(f"no {split} record leaves a token to learn within max_seq_length ({max_seq_length} "
                             "tokens: the prompts fill it); raise train.max_seq_length")
        if self.dropped:
            logger.warning("%s: dropped %d of %d records that leave no token to learn within max_seq_length (%d "
                           "tokens)", split, self.dropped, len(records), max_seq_length)
        self.mask_prompt = mask_prompt
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids, prompt_length = self.samples[index]
        labels = ids.clone()  # (L,)
        if self.mask_prompt:
            labels[:prompt_length] = self.ignore_index
        return {"input_ids": ids, "labels": labels}


def _render_record(style: ChatTemplate, record: dict[str, str]) -> str:
    """The chat template's text of a record: the user turn (instruction, then input after a blank line) and the
    assistant turn (output)."""
    content = f"{record['instruction']}\n\n{record['input']}" if record["input"] else record["instruction"]
    return style.render([{"role": "user", "content": content}, {"role": "assistant", "content": record["output"]}],
                        add_generation_prompt=False)


def pad_collate(samples: list[dict[str, torch.Tensor]], ignore_index: int = DEFAULT_IGNORE_INDEX) -> dict[str, Any]:
    """A batch {"input_ids": (B, T), "labels": (B, T), "tokens": int}: samples right-padded to the longest (input
    ids with 0, labels with `ignore_index`); `tokens` counts the batch's tokens without the padding."""
    longest = max(s["input_ids"].numel() for s in samples)
    input_ids = torch.zeros(len(samples), longest, dtype=torch.int64)  # (B, T)
    labels = torch.full((len(samples), longest), ignore_index, dtype=torch.int64)  # (B, T)
    for row, s in enumerate(samples):
        n = s["input_ids"].numel()
        input_ids[row, :n] = s["input_ids"]
        labels[row, :n] = s["labels"]
    return {"input_ids": input_ids, "labels": labels, "tokens": sum(s["input_ids"].numel() for s in samples)}


# ---------------------------------------------------------------------------------------------------- data modules
class SFTDataModule:
    """Base of the instruction data modules.

    Subclasses are dataclasses with the fields `mask_prompt`, `prompt_style`, `ignore_index`, `seed` and
    `loader_workers` (DataLoader worker processes), call `_check_fields()` in `__post_init__`, and implement
    `records()` -> (train records, val records). Call order: `connect` -> `prepare_data` (once, one process) ->
    `setup` (every process) -> `train_dataset` / `val_dataset`; batches come from `collate_fn`.
    """

    mask_prompt: bool = False
    prompt_style: str = "alpaca"
    ignore_index: int = DEFAULT_IGNORE_INDEX
    seed: int = 42
    loader_workers: int = 0
    tokenizer: Optional[Tokenizer] = None
    max_seq_length: int = -1
    _datasets: Optional[dict[str, SFTDataset]] = None

    # ------------------------------------------------------------------ to implement
    def records(self) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """The checked (train, val) records (see `read_records`)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ interface
    def connect(self, tokenizer: Tokenizer, *, max_seq_length: int = -1) -> None:
        """Attach the tokenizer and the longest sample (in tokens) the datasets will serve."""
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self._datasets = None

    def prepare_data(self) -> None:
        """Fetch what `records` reads (nothing for local files)."""

    def setup(self) -> None:
        """Read, check and tokenize both splits."""
        if self.tokenizer is None or self.max_seq_length <= 0:
            raise RuntimeError(f"call {type(self).__name__}.connect(tokenizer, max_seq_length=...) first")
        train, val = self.records()
        style = self.style
        self._datasets = {
            split: SFTDataset(records, self.tokenizer, style, self.max_seq_length, self.mask_prompt,
                              self.ignore_index, split)
            for split, records in (("train", train), ("val", val))
        }

    def train_dataset(self) -> SFTDataset:
        return self._dataset("train")

    def val_dataset(self) -> SFTDataset:
        return self._dataset("val")

    @property
    def style(self) -> PromptStyle:
        """The prompt style the samples are framed with (saved with the fine-tuned checkpoint); `chat_template` is
        the connected tokenizer's checkpoint's template."""
        if self.prompt_style == CHAT_TEMPLATE:
            if self.tokenizer is None:
                raise RuntimeError(f"call {type(self).__name__}.connect(tokenizer, ...) before reading the chat "
                                   "template")
            return load_prompt_style(self.tokenizer.checkpoint_dir, CHAT_TEMPLATE)
        return PromptStyle.from_name(self.prompt_style)

    @property
    def collate_fn(self) -> Callable[[list], dict[str, Any]]:
        """Batches for the DataLoader: `pad_collate` with this module's ignore_index (picklable, for workers)."""
        return functools.partial(pad_collate, ignore_index=self.ignore_index)

    def as_dict(self) -> dict[str, Any]:
        """{class_path, init_args}: the yaml `data:` section that rebuilds this data module."""
        fields = dataclasses.fields(self) if dataclasses.is_dataclass(self) else ()
        init_args = {f.name: getattr(self, f.name) for f in fields if f.init}
        return {"class_path": f"{type(self).__module__}.{type(self).__qualname__}", "init_args": init_args}

    # ------------------------------------------------------------------ helpers
    def _dataset(self, split: str) -> SFTDataset:
        if self._datasets is None:
            self.setup()
        return self._datasets[split]

    def _check_fields(self, num_workers: Optional[int] = None) -> None:
        """For a subclass's `__post_init__`: take upstream litgpt's `num_workers` as loader_workers, and one-line
        errors for bad field values."""
        name = type(self).__name__
        if num_workers is not None:
            if self.loader_workers not in (0, num_workers):
                raise ValueError(f"{name}: num_workers={num_workers} and loader_workers={self.loader_workers} "
                                 "disagree; pass only one (num_workers is upstream litgpt's name)")
            self.loader_workers = num_workers
        if self.prompt_style not in style_names():
            raise ValueError(f"{name}: unknown prompt_style {self.prompt_style!r}; choose one of {style_names()}")
        if isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, int) or self.ignore_index >= 0:
            raise ValueError(f"{name}: ignore_index must be a negative integer (never a token id), got "
                             f"{self.ignore_index!r}")
        value = self.loader_workers
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name}: loader_workers must be an integer >= 0 (0: in this process), got {value!r}")


def check_fraction(name: str, fraction: Optional[float]) -> None:
    """A val_split_fraction must lie strictly between 0 and 1."""
    if fraction is not None and not 0.0 < fraction < 1.0:
        raise ValueError(f"--data.val_split_fraction must be in (0, 1), the share of {name}'s records held out for "
                         f"validation (e.g. 0.05), got {fraction}")
