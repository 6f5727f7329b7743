"""`Alpaca`: the cleaned Stanford Alpaca instruction set (about 52K records), downloaded once; `Alpaca2k`: its
2,000-record sample on the Hugging Face hub (`mhenrichsen/alpaca_2k_test`), 1,900 training and 100 validation records."""

from __future__ import annotations

import logging
import shutil
import urllib.error
import urllib.request
from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import Any, Optional

from litgpt.data.sft import (
    DEFAULT_IGNORE_INDEX,
    SFTDataModule,
    _check_record,
    check_fraction,
    read_records,
    split_records,
)
from litgpt.utils import atomic_write

logger = logging.getLogger(__name__)

ALPACA_URL = "https://raw.githubusercontent.com/tloen/alpaca-lora/main/alpaca_data_cleaned_archive.json"
ALPACA_FILE = "alpaca_data_cleaned_archive.json"
ALPACA2K_REPO = "mhenrichsen/alpaca_2k_test"
ALPACA2K_FILE = "alpaca2k_data_cleaned_archive.json"  # upstream litgpt's file_name default (the hub's files are read)
DOWNLOAD_TIMEOUT_S = 60


@dataclass
class Alpaca(SFTDataModule):
    """Alpaca records, downloaded from `file_url` into `download_dir/file_name` unless that file is already there
    (offline: put the file there yourself).

    Args:
        mask_prompt: give the prompt's tokens no loss weight, so only the response is learned.
        val_split_fraction: fraction of the records held out for validation (0.03865: about 2,000).
        prompt_style: how instruction and input are framed: alpaca, plain, default, a model family's (llama3,
            qwen2.5, ...: `litgpt.prompts.prompt_styles`), or
            chat_template (the base checkpoint's own chat template: user turn instruction + input, assistant turn
            output).
        ignore_index: the label of positions that carry no loss weight (a masked prompt, padding).
        seed: seed of the validation hold-out.
        loader_workers: DataLoader worker processes (0: in the training process; the samples are in memory).
        download_dir: where the file is kept.
        file_url: where it is downloaded from.
        file_name: its name in download_dir.
        num_workers: upstream litgpt's name of loader_workers (give one of the two).
    """

    mask_prompt: bool = False
    val_split_fraction: float = 0.03865
    prompt_style: str = "alpaca"
    ignore_index: int = DEFAULT_IGNORE_INDEX
    seed: int = 42
    loader_workers: int = 0
    download_dir: Path = Path("data/alpaca")
    file_url: str = ALPACA_URL
    file_name: str = ALPACA_FILE
    num_workers: InitVar[Optional[int]] = None

    def __post_init__(self, num_workers: Optional[int] = None) -> None:
        self.download_dir = Path(self.download_dir)
        self._check_fields(num_workers)
        check_fraction(type(self).__name__, self.val_split_fraction)

    @property
    def path(self) -> Path:
        return self.download_dir / self.file_name

    def prepare_data(self) -> None:
        """Download the file unless it is in download_dir already."""
        if self.path.is_file():
            return
        logger.info("downloading %s to %s", self.file_url, self.path)

        def fetch(tmp: Path) -> None:
            with urllib.request.urlopen(self.file_url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(tmp, "wb") as f:
                shutil.copyfileobj(response, f)

        try:
            atomic_write(self.path, fetch)
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise ConnectionError(
                f"could not download the Alpaca data from {self.file_url} ({reason}); offline, put {self.file_name} "
                f"into {str(self.download_dir)!r} (--data.download_dir)"
            ) from None

    def records(self) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        self.prepare_data()
        return split_records(read_records(self.path), self.val_split_fraction, self.seed)


@dataclass
class Alpaca2k(Alpaca):
    """The 2,000 Alpaca records of the Hugging Face dataset `repo_id` (its train split), split as upstream litgpt
    splits them: `datasets`' `train_test_split(test_size=val_split_fraction, seed=seed)`, so 0.05 holds out 100
    records and the same 100 as upstream's. Loaded with `datasets.load_dataset(repo_id, cache_dir=download_dir)`:
    downloaded once into download_dir; offline, a cached download or a local directory of .json/.jsonl/.parquet
    record files as `repo_id` serves.

    Args: those of `Alpaca`, besides
        repo_id: the dataset on the Hugging Face hub, or a local directory with its files.
        file_url, file_name: `Alpaca`'s download, which Alpaca2k does not use: leave them unset.
    """

    val_split_fraction: float = 0.05
    download_dir: Path = Path("data/alpaca2k")
    file_name: str = ALPACA2K_FILE
    repo_id: str = ALPACA2K_REPO

    def __post_init__(self, num_workers: Optional[int] = None) -> None:
        super().__post_init__(num_workers)
        if self.file_url != ALPACA_URL or self.file_name != ALPACA2K_FILE:
            raise ValueError("Alpaca2k: file_url and file_name are Alpaca's download; Alpaca2k loads the Hugging Face "
                             "dataset repo_id: set --data.repo_id instead")

    def prepare_data(self) -> None:
        """Download the dataset into download_dir unless it is cached there."""
        self._load()

    def records(self) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        split = self._load().train_test_split(test_size=self.val_split_fraction, seed=self.seed)
        source = Path(self.repo_id)
        return ([_check_record(r, i, source) for i, r in enumerate(split["train"])],
                [_check_record(r, i, source) for i, r in enumerate(split["test"])])

    def _load(self) -> Any:
        """The dataset's train split (a `datasets.Dataset`)."""
        import datasets

        try:
            return datasets.load_dataset(self.repo_id, split="train", cache_dir=str(self.download_dir))
        except (OSError, ValueError) as e:  # no network, no such dataset (FileNotFoundError), unreadable files
            reason = " ".join(str(e).split()) or type(e).__name__
            raise ConnectionError(
                f"could not load the Alpaca2k data {self.repo_id!r} ({reason}); offline, load it once with network "
                f"into --data.download_dir {str(self.download_dir)!r}, or pass --data.repo_id a local directory "
                "with its .json/.jsonl/.parquet files"
            ) from None
