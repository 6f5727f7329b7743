"""TinyStories (Eldan & Li, 2023): short, simple English stories, from the hub or from local files."""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Optional

from litgpt.data.base import DataModule, check_split, holdout_split, not_utf8

logger = logging.getLogger(__name__)

ENDOFTEXT = "<|endoftext|>"
SUPPORTED_SUFFIXES = (".json", ".jsonl", ".parquet", ".txt")
READER_VERSION = 1  # bump when the way documents are read changes, to invalidate cached tokenizations
OFFLINE_HINT = (
    "pass --data.data_path DIR with local TinyStories files (.json/.jsonl/.parquet/.txt), or use --data TextFiles "
    "--data.train_data_path DIR with plain .txt files"
)


@dataclass
class TinyStories(DataModule):
    """TinyStories stories as pretraining documents.

    Args:
        data_path: local TinyStories files: a file or a directory searched recursively for .json (a list of
            objects with "story" or "text"), .jsonl, .parquet (column "text") or .txt (stories separated by
            `<|endoftext|>` lines). Files whose names contain "valid" form the validation split. None downloads
            roneneldan/TinyStories with `datasets` (without network: its cached copy, else a one-line error).
        cache_dir: where the tokenized splits are written, one subdirectory per tokenizer.
        val_split_fraction: fraction of stories held out for validation when the source has no validation split.
        tokenize_workers: processes that tokenize in `prepare_data` (0 or 1: in this process).
        seed: seed of the validation hold-out.
        loader_workers: DataLoader worker processes that read the training and validation windows (0: in the
            training process); the sample order, and so the run, is the same for every value.
        num_workers: deprecated name of tokenize_workers.
    """

    data_path: Optional[Path] = None
    cache_dir: Path = Path("data/tinystories")
    val_split_fraction: float = 0.005
    tokenize_workers: int = 4
    seed: int = 42
    loader_workers: int = 0
    num_workers: InitVar[Optional[int]] = None

    hub_name: ClassVar[str] = "roneneldan/TinyStories"

    def __post_init__(self, num_workers: Optional[int] = None) -> None:
        self._check_workers(num_workers)
        self.data_path = None if self.data_path is None else Path(self.data_path)
        self.cache_dir = Path(self.cache_dir)
        if not 0.0 < self.val_split_fraction < 1.0:
            raise ValueError(f"--data.val_split_fraction must be in (0, 1), the share of TinyStories's documents "
                             f"held out for validation (e.g. 0.05), got {self.val_split_fraction}")
        self._hub: Any = None

    # ------------------------------------------------------------------ DataModule
    def iter_texts(self, split: str) -> Iterator[str]:
        check_split(split)
        if self.data_path is None:
            yield from self._iter_hub(split)
            return
        train_files, val_files = self.local_files()
        if val_files:
            for path in train_files if split == "train" else val_files:
                yield from read_stories(path)
        else:
            stories = (story for path in train_files for story in read_stories(path))
            yield from holdout_split(stories, split, self.val_split_fraction, self.seed)

    def source_fingerprint(self) -> dict[str, Any]:
        if self.data_path is None:
            return {"source": "hub", "dataset": self.hub_name, "reader": READER_VERSION,
                    "holdout": [self.val_split_fraction, self.seed]}
        train_files, val_files = self.local_files()
        files = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns, split]
                 for split, paths in (("train", train_files), ("val", val_files)) for p in paths]
        holdout = None if val_files else [self.val_split_fraction, self.seed]
        return {"source": "local", "files": files, "reader": READER_VERSION, "holdout": holdout}

    # ------------------------------------------------------------------ sources
    def local_files(self) -> tuple[list[Path], list[Path]]:
        """(train files, validation files) under `data_path`, sorted."""
        path = self.data_path
        assert path is not None
        hint = "pass --data.data_path pointing at local TinyStories files (.json/.jsonl/.parquet/.txt)"
        if not path.exists():
            raise FileNotFoundError(f"TinyStories data_path {str(path)!r} does not exist; {hint}")
        if path.is_file():
            if path.suffix.lower() not in SUPPORTED_SUFFIXES:
                raise ValueError(f"TinyStories data_path {str(path)!r} is not a {'/'.join(SUPPORTED_SUFFIXES)} file")
            files = [path]
        else:
            cache = self.cache_dir.resolve()
            files = sorted(
                (
                    p
                    for p in path.rglob("*")
                    if p.suffix.lower() in SUPPORTED_SUFFIXES
                    and p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)
                    and cache not in p.resolve().parents
                ),
                key=lambda p: p.as_posix(),
            )
            if not files:
                raise FileNotFoundError(
                    f"no TinyStories files ({', '.join(SUPPORTED_SUFFIXES)}) under {str(path)!r}; {hint}"
                )
        base = path if path.is_dir() else path.parent
        val = [p for p in files if "valid" in p.relative_to(base).as_posix().lower()]
        train = [p for p in files if p not in val]
        if not train:
            raise FileNotFoundError(
                f"all TinyStories files under {str(path)!r} are validation files (names contain 'valid'); "
                "add training files"
            )
        return train, val

    def _iter_hub(self, split: str) -> Iterator[str]:
        dataset = self._load_hub()
        if "validation" in dataset:
            name = "train" if split == "train" else "validation"
            yield from _hub_texts(dataset[name])
        else:
            yield from holdout_split(_hub_texts(dataset["train"]), split, self.val_split_fraction, self.seed)

    def _load_hub(self) -> Any:
        """The hub dataset via `datasets`; without network (or in offline mode) only its cached copy, read without
        network requests (datasets would retry them for ~25 s), else a one-line ConnectionError naming the fix."""
        if self._hub is not None:
            return self._hub
        try:
            import datasets
        except ImportError as e:
            raise ImportError(
                f"downloading {self.hub_name} needs `datasets` (pip install 'datasets>=3'), or {OFFLINE_HINT}"
            ) from e
        from litgpt.scripts.download import hub_offline_variable, hub_unreachable

        endpoint = str(datasets.config.HF_ENDPOINT).rstrip("/")
        offline = hub_offline_variable() or ("HF_DATASETS_OFFLINE" if datasets.config.HF_HUB_OFFLINE else None)
        problem = None if offline else hub_unreachable(endpoint)
        try:
            if offline or problem:
                with _offline_mode(datasets):
                    self._hub = datasets.load_dataset(self.hub_name)
            else:
                self._hub = datasets.load_dataset(self.hub_name)
        except Exception as e:
            network = isinstance(e, _offline_errors())
            if not (network or offline or problem):
                raise
            cause = " ".join(f"{type(e).__name__}: {e}".split())[:200]
            if offline:
                why = f"offline mode is on ({offline} is set)"
            elif problem:
                why = f"no network connection to the Hugging Face hub at {endpoint} ({problem})"
            else:
                why = cause
            if offline or problem:  # only the datasets cache was asked
                why += " and it is not in the datasets cache" if network else f" and reading the cache failed ({cause})"
            raise ConnectionError(f"could not download {self.hub_name} (no network?): {why}; {OFFLINE_HINT}") from e
        return self._hub


@contextmanager
def _offline_mode(datasets: Any) -> Iterator[None]:
    """Offline mode for `datasets` and huggingface_hub while the block runs: load_dataset then reads its cache and
    fails at once without it. Both read HF_HUB_OFFLINE at import, so their module constants are switched."""
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _hub_texts(dataset: Any) -> Iterator[str]:
    for batch in dataset.iter(batch_size=1000):
        for text in batch["text"]:
            text = (text or "").strip()
            if text:
                yield text


def _offline_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that `datasets.load_dataset` raises when the hub cannot be reached."""
    from litgpt.scripts.download import network_errors

    errors: list[type[BaseException]] = [ConnectionError, TimeoutError, *network_errors()]  # OSError among them
    try:
        from huggingface_hub import errors as hub_errors

        for name in ("OfflineModeIsEnabled", "LocalEntryNotFoundError", "HfHubHTTPError"):
            if hasattr(hub_errors, name):
                errors.append(getattr(hub_errors, name))
    except ImportError:
        pass
    try:
        import requests

        errors.append(requests.exceptions.RequestException)
    except ImportError:
        pass
    return tuple(errors)


# ---------------------------------------------------------------------------------------------------- readers
def read_stories(path: Path) -> Iterator[str]:
    """The stories in one TinyStories file, stripped, empty ones skipped; a file that is not UTF-8 text is a one-line
    ValueError naming it."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        texts = _read_txt(path)
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise not_utf8(path, e) from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of stories, got {type(data).__name__}")
        texts = (_story(item, path) for item in data)
    elif suffix == ".jsonl":
        texts = (_story(json.loads(line), path) for line in _lines(path) if line.strip())
    elif suffix == ".parquet":
        texts = _read_parquet(path)
    else:
        raise ValueError(f"{path}: unsupported file type; use one of {SUPPORTED_SUFFIXES}")
    for text in texts:
        text = text.strip()
        if text:
            yield text


def _lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        try:
            yield from f
        except UnicodeDecodeError as e:  # decoded a buffer at a time: the offset is not the file's
            raise not_utf8(path, e, whole_file=False) from None


def _read_txt(path: Path) -> Iterator[str]:
    """Stories separated by `<|endoftext|>` (normally on a line of its own)."""
    current: list[str] = []
    for line in _lines(path):
        if ENDOFTEXT not in line:
            current.append(line)
            continue
        parts = line.split(ENDOFTEXT)
        current.append(parts[0])
        yield "".join(current)
        yield from parts[1:-1]
        current = [parts[-1]]
    yield "".join(current)


def _story(item: Any, path: Path) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        for key in ("story", "text"):
            if isinstance(item.get(key), str):
                return item[key]
    raise ValueError(f"{path}: expected objects with a 'story' or 'text' string, got {str(item)[:80]!r}")


def _read_parquet(path: Path) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow (datasets installs it)") from e
    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    column = next((c for c in ("text", "story") if c in names), None)
    if column is None:
        raise ValueError(f"{path}: no 'text' column (columns: {names}); TinyStories parquet files have 'text'")
    for batch in parquet.iter_batches(batch_size=4096, columns=[column]):
        for text in batch.column(0).to_pylist():
            yield text or ""
