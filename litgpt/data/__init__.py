"""Pretraining data modules: tokenize once into memmaps, serve fixed-length token windows."""

from litgpt.data.base import (
    DataModule,
    ResumableSampler,
    TokenWindows,
    make_train_loader,
    make_val_loader,
)
from litgpt.data.stdlib_text import StdlibText
from litgpt.data.text_files import TextFiles
from litgpt.data.tinystories import TinyStories

__all__ = [
    "DataModule",
    "ResumableSampler",
    "StdlibText",
    "TextFiles",
    "TinyStories",
    "TokenWindows",
    "make_train_loader",
    "make_val_loader",
]
