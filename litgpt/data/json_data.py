"""`JSON`: instruction fine-tuning data from local JSON / JSON Lines files."""

from __future__ import annotations

from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import Optional

from litgpt.data.sft import DEFAULT_IGNORE_INDEX, SFTDataModule, check_fraction, read_records, split_records

SUFFIXES = (".json", ".jsonl")


@dataclass
class JSON(SFTDataModule):
    """Instruction records {"instruction", "input" (optional), "output"} from local files.

    Args:
        json_path: a .json file (a list of records) or a .jsonl file (one record per line), split into train and
            validation by val_split_fraction; or a directory with train.json and val.json (or .jsonl).
        mask_prompt: give the prompt's tokens no loss weight, so only the response is learned.
        val_split_fraction: fraction of the records held out for validation when json_path is a file (required
            then; a directory brings its own val file).
        prompt_style: how instruction and input are framed: alpaca, plain, default, a model family's (llama3,
            qwen2.5, ...: `litgpt.prompts.prompt_styles`), or
            chat_template (the base checkpoint's own chat template: user turn instruction + input, assistant turn
            output); saved with the fine-tuned checkpoint for `litgpt generate` and `litgpt chat`.
        ignore_index: the label of positions that carry no loss weight (a masked prompt, padding).
        seed: seed of the validation hold-out.
        loader_workers: DataLoader worker processes (0: in the training process; the samples are in memory).
        num_workers: upstream litgpt's name of loader_workers (give one of the two).
    """

    json_path: Path
    mask_prompt: bool = False
    val_split_fraction: Optional[float] = None
    prompt_style: str = "alpaca"
    ignore_index: int = DEFAULT_IGNORE_INDEX
    seed: int = 42
    loader_workers: int = 0
    num_workers: InitVar[Optional[int]] = None

    def __post_init__(self, num_workers: Optional[int] = None) -> None:
        self.json_path = Path(self.json_path)
        self._check_fields(num_workers)
        check_fraction("JSON", self.val_split_fraction)

    def records(self) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        path = self.json_path
        if path.is_dir():
            if self.val_split_fraction is not None:
                raise ValueError(f"--data.json_path {str(path)!r} is a directory with its own val file; "
                                 "val_split_fraction splits a single file: leave it unset")
            return read_records(_split_file(path, "train")), read_records(_split_file(path, "val"))
        if not path.is_file():
            raise FileNotFoundError(f"--data.json_path {str(path)!r} does not exist; point it at a .json file or a "
                                    "directory with train.json and val.json")
        if self.val_split_fraction is None:
            raise ValueError(f"--data.json_path {str(path)!r} is one file: set --data.val_split_fraction (e.g. 0.05) "
                             "to hold out validation records, or point at a directory with train.json and val.json")
        return split_records(read_records(path), self.val_split_fraction, self.seed)


def _split_file(directory: Path, split: str) -> Path:
    for suffix in SUFFIXES:
        if (directory / f"{split}{suffix}").is_file():
            return directory / f"{split}{suffix}"
    raise FileNotFoundError(f"--data.json_path {str(directory)!r} is a directory without {split}.json (or "
                            f"{split}.jsonl); it needs train.json and val.json")
