"""Train a byte-level BPE tokenizer on a data module's training documents.

    python -m litgpt.scripts.train_tokenizer --data litgpt.data.StdlibText --out_dir checkpoints/tokenizer
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator, Optional

from litgpt.data.base import DataModule

logger = logging.getLogger(__name__)

ENDOFTEXT = "<|endoftext|>"
NO_MAX_LENGTH = int(1e30)  # what Hugging Face writes when a tokenizer has no length limit of its own


def train_tokenizer(
    data: DataModule,
    out_dir: Path,
    vocab_size: int = 8192,
    min_frequency: int = 2,
    max_chars: Optional[int] = 50_000_000,
) -> Path:
    """Train a byte-level BPE tokenizer (GPT-2 style, `<|endoftext|>` = id 0) and write it to `out_dir`.

    Writes `tokenizer.json` and `tokenizer_config.json` (eos_token `<|endoftext|>`, no BOS). The result is
    the same for the same documents and arguments.

    Args:
        data: the data module whose training documents (`iter_texts("train")`) are learned from.
        out_dir: directory to write the tokenizer files into (created if missing).
        vocab_size: size of the vocabulary: 256 bytes, `<|endoftext|>` and the learned merges.
        min_frequency: pairs seen fewer times than this are never merged.
        max_chars: stop reading documents after this many characters (None: all of them).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise ValueError(
            f"vocab_size must be at least {len(alphabet) + 1} (every byte plus {ENDOFTEXT}), got {vocab_size}"
        )
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    if max_chars is not None and max_chars <= 0:
        raise ValueError(f"max_chars must be positive or None, got {max_chars}")
    out_dir = Path(out_dir)

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[ENDOFTEXT],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    stats = {"documents": 0, "chars": 0}
    tokenizer.train_from_iterator(_limited(data.iter_texts("train"), max_chars, stats), trainer=trainer)
    if stats["documents"] == 0:
        raise ValueError(f"{type(data).__name__} yielded no training documents; check its data paths")
    if tokenizer.token_to_id(ENDOFTEXT) != 0:
        raise RuntimeError(f"{ENDOFTEXT} did not get id 0; this tokenizers version trains differently")

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": None,
        "eos_token": ENDOFTEXT,
        "unk_token": None,
        "model_max_length": NO_MAX_LENGTH,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    trained = tokenizer.get_vocab_size()
    if trained < vocab_size:
        logger.warning(
            "trained %d tokens, fewer than vocab_size=%d: the text has too few pairs seen %d+ times",
            trained, vocab_size, min_frequency,
        )
    logger.info(
        "trained a %d-token BPE on %d documents (%d characters) -> %s",
        trained, stats["documents"], stats["chars"], out_dir,
    )
    return out_dir


def _limited(texts: Iterator[str], max_chars: Optional[int], stats: dict) -> Iterator[str]:
    for text in texts:
        if max_chars is not None and stats["chars"] >= max_chars:
            return
        if max_chars is not None:
            text = text[: max_chars - stats["chars"]]
        stats["documents"] += 1
        stats["chars"] += len(text)
        yield text


if __name__ == "__main__":
    from litgpt.__main__ import run_script

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_script(train_tokenizer, as_positional=False)
