"""`TextFiles`: pretrain on directories of plain .txt files."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from litgpt.data.base import DataModule, check_split, holdout_split

logger = logging.getLogger(__name__)

# Files up to this many characters are one document; larger ones are cut at blank lines into documents of
# about this size (never more than 4x), so the tokenizer processes get work units of bounded size.
DOCUMENT_CHARS = 1_000_000
READER_VERSION = 1


@dataclass
class TextFiles(DataModule):
    """Every .txt file (searched recursively) is a document; very large files are cut at blank lines.

    Args:
        train_data_path: a directory (or a list of them, or .txt files) with the training text.
        val_data_path: the same for validation; None holds out `val_split_fraction` of the training documents.
        cache_dir: where the tokenized splits are written; None means data/text_files/<hash of the paths>.
        val_split_fraction: fraction of documents held out for validation when val_data_path is None.
        tokenize_workers: processes that tokenize in `prepare_data` (0 or 1: in this process).
        seed: seed of the validation hold-out.
        loader_workers: DataLoader worker processes that read the training and validation windows (0: in the
            training process); the sample order, and so the run, is the same for every value.
        num_workers: deprecated name of tokenize_workers.
    """

    train_data_path: Union[Path, list[Path]]
    val_data_path: Optional[Union[Path, list[Path]]] = None
    cache_dir: Optional[Path] = None
    val_split_fraction: float = 0.01
    tokenize_workers: int = 4
    seed: int = 42
    loader_workers: int = 0
    num_workers: InitVar[Optional[int]] = None

    def __post_init__(self, num_workers: Optional[int] = None) -> None:
        self._check_workers(num_workers)
        self.train_data_path = _as_paths(self.train_data_path)
        self.val_data_path = None if self.val_data_path is None else _as_paths(self.val_data_path)
        self.cache_dir = None if self.cache_dir is None else Path(self.cache_dir)
        if self.val_data_path is None and not 0.0 < self.val_split_fraction < 1.0:
            raise ValueError(f"--data.val_split_fraction must be in (0, 1), the share of TextFiles's documents held "
                             f"out for validation (e.g. 0.05), got {self.val_split_fraction}")

    def cache_root(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        paths = [str(p.resolve()) for p in self.train_data_path + (self.val_data_path or [])]
        return Path("data/text_files") / hashlib.sha256("\n".join(paths).encode()).hexdigest()[:12]

    def iter_texts(self, split: str) -> Iterator[str]:
        check_split(split)
        if self.val_data_path is not None:
            paths = self.train_data_path if split == "train" else self.val_data_path
            for path in _txt_files(paths, "train" if split == "train" else "val"):
                yield from read_documents(path)
        else:
            documents = (doc for path in _txt_files(self.train_data_path, "train") for doc in read_documents(path))
            yield from holdout_split(documents, split, self.val_split_fraction, self.seed)

    def source_fingerprint(self) -> dict[str, Any]:
        files = []
        for split, paths in (("train", self.train_data_path), ("val", self.val_data_path)):
            for p in _txt_files(paths, split) if paths is not None else []:
                stat = p.stat()
                files.append([str(p.resolve()), stat.st_size, stat.st_mtime_ns, split])
        holdout = None if self.val_data_path is not None else [self.val_split_fraction, self.seed]
        return {"source": "text_files", "files": files, "holdout": holdout, "reader": READER_VERSION,
                "document_chars": DOCUMENT_CHARS}


def _as_paths(value: Union[str, Path, list]) -> list[Path]:
    return [Path(p) for p in value] if isinstance(value, (list, tuple)) else [Path(value)]


def _txt_files(paths: list[Path], split: str) -> list[Path]:
    """The .txt files of `paths` (directories searched recursively), each directory's sorted."""
    files: list[Path] = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{split} data path {str(path)!r} does not exist; point it at .txt files")
        if path.is_file():
            files.append(path)
            continue
        found = sorted((p for p in path.rglob("*.txt") if p.is_file()), key=lambda p: p.as_posix())
        if not found:
            raise FileNotFoundError(f"no .txt files under {split} data path {str(path)!r}; add some or fix the path")
        files.extend(found)
    return files


def read_documents(path: Path) -> Iterator[str]:
    """`path` as one document, or, when larger than DOCUMENT_CHARS, as blank-line-aligned pieces of about that size."""
    with open(path, encoding="utf-8", errors="replace") as f:
        if path.stat().st_size <= DOCUMENT_CHARS:
            text = f.read()
            if "\ufffd" in text:
                logger.warning("%s is not valid UTF-8; undecodable bytes were replaced", path)
            if text.strip():
                yield text
            return
        piece: list[str] = []
        size = 0
        for line in f:
            piece.append(line)
            size += len(line)
            if (size >= DOCUMENT_CHARS and not line.strip()) or size >= 4 * DOCUMENT_CHARS:
                text = "".join(piece)
                if text.strip():
                    yield text
                piece, size = [], 0
        text = "".join(piece)
        if text.strip():
            yield text
