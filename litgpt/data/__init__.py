"""Data modules. Pretraining (`DataModule`): tokenize once into memmaps, serve fixed-length token windows.
Fine-tuning (`SFTDataModule`): instruction records, prompt-framed and tokenized, padded per batch."""

from litgpt.data.base import (
    DataModule,
    ResumableSampler,
    TokenWindows,
    make_train_loader,
    make_val_loader,
)
from litgpt.data.alpaca import Alpaca, Alpaca2k
from litgpt.data.json_data import JSON
from litgpt.data.sft import SFTDataModule, SFTDataset, pad_collate
from litgpt.data.stdlib_text import StdlibText
from litgpt.data.text_files import TextFiles
from litgpt.data.tinystories import TinyStories

__all__ = [
    "JSON",
    "Alpaca",
    "Alpaca2k",
    "DataModule",
    "ResumableSampler",
    "SFTDataModule",
    "SFTDataset",
    "StdlibText",
    "TextFiles",
    "TinyStories",
    "TokenWindows",
    "make_train_loader",
    "make_val_loader",
    "pad_collate",
]
