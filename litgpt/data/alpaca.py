"""`Alpaca`: the cleaned Stanford Alpaca instruction set (about 52K records), downloaded once."""

from __future__ import annotations

import logging
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from litgpt.data.sft import DEFAULT_IGNORE_INDEX, SFTDataModule, check_fraction, read_records, split_records
from litgpt.utils import atomic_write

logger = logging.getLogger(__name__)

ALPACA_URL = "https://raw.githubusercontent.com/tloen/alpaca-lora/main/alpaca_data_cleaned_archive.json"
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
    """

    mask_prompt: bool = False
    val_split_fraction: float = 0.03865
    prompt_style: str = "alpaca"
    ignore_index: int = DEFAULT_IGNORE_INDEX
    seed: int = 42
    loader_workers: int = 0
    download_dir: Path = Path("data/alpaca")
    file_url: str = ALPACA_URL
    file_name: str = "alpaca_data_cleaned_archive.json"

    def __post_init__(self) -> None:
        self.download_dir = Path(self.download_dir)
        self._check_fields()
        check_fraction("Alpaca", self.val_split_fraction)

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
