"""`StdlibText`: the Python standard library's source as a small, real, offline corpus of English and code."""

from __future__ import annotations

import logging
import os
import sys
import sysconfig
from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from litgpt.data.base import DataModule, check_split

logger = logging.getLogger(__name__)

SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib", "lib2to3", "__pycache__"}
)
VAL_EVERY = 50  # files 0, 50, 100, ... (in sorted order) form the validation split


@dataclass
class StdlibText(DataModule):
    """The standard library's `.py` files (tests, idlelib, lib2to3 and site-packages skipped) as documents.

    Files are taken in sorted order until `max_bytes`; every 50th one (starting with the first) is
    validation. Every machine with Python has this corpus, so it needs no download.

    Args:
        cache_dir: where the tokenized splits are written, one subdirectory per tokenizer.
        max_bytes: stop adding files once their total size would exceed this.
        tokenize_workers: processes that tokenize in `prepare_data` (0 or 1: in this process).
        loader_workers: DataLoader worker processes that read the training and validation windows (0: in the
            training process); the sample order, and so the run, is the same for every value.
        num_workers: deprecated name of tokenize_workers.
    """

    cache_dir: Path = Path("data/stdlib_text")
    max_bytes: int = 8_000_000
    tokenize_workers: int = 2
    loader_workers: int = 0
    num_workers: InitVar[Optional[int]] = None

    def __post_init__(self, num_workers: Optional[int] = None) -> None:
        self._check_workers(num_workers)
        self.cache_dir = Path(self.cache_dir)
        if self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {self.max_bytes}")
        self._files: Optional[list[tuple[Path, int]]] = None

    @staticmethod
    def stdlib_dir() -> Path:
        return Path(sysconfig.get_paths()["stdlib"])

    def files(self) -> list[tuple[Path, int]]:
        """(path, size in bytes) of the selected files, in sorted order."""
        if self._files is not None:
            return self._files
        root = self.stdlib_dir()
        if not root.is_dir():
            raise FileNotFoundError(f"the standard library directory {str(root)!r} does not exist; use another dataset")
        candidates = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
            candidates += [Path(dirpath) / name for name in filenames if name.endswith(".py")]
        candidates.sort(key=lambda p: p.relative_to(root).as_posix())
        selected, total = [], 0
        for path in candidates:
            data = path.read_bytes()
            if total + len(data) > self.max_bytes:
                break
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                continue
            selected.append((path, len(data)))
            total += len(data)
        if not selected:
            raise ValueError(f"no standard library file fits in max_bytes={self.max_bytes}; raise max_bytes")
        self._files = selected
        return selected

    def iter_texts(self, split: str) -> Iterator[str]:
        check_split(split)
        for index, (path, _) in enumerate(self.files()):
            if (index % VAL_EVERY == 0) == (split == "val"):
                text = path.read_text(encoding="utf-8")
                if text.strip():
                    yield text

    def source_fingerprint(self) -> dict[str, Any]:
        root = self.stdlib_dir()
        return {
            "source": "stdlib",
            "python": sys.version,
            "stdlib": str(root),
            "max_bytes": self.max_bytes,
            "files": [[p.relative_to(root).as_posix(), size] for p, size in self.files()],
        }
