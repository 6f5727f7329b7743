"""`Tokenizer`: one interface over a Hugging Face `tokenizer.json` or a SentencePiece `tokenizer.model`.

Special tokens come from `tokenizer_config.json`, `special_tokens_map.json` and `generation_config.json` when
present; byte-level BPE tokenizers whose configs name no end-of-text token (GPT-2, Pythia, ours from
`litgpt train_tokenizer`) get `<|endoftext|>` as EOS. `fingerprint` identifies the exact tokenizer files, so
data tokenized with one tokenizer is never silently reused with another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional, Union

import torch

logger = logging.getLogger(__name__)

ENDOFTEXT = "<|endoftext|>"
# Files that define a tokenizer's behaviour: copied into checkpoints and hashed into the fingerprint.
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
NO_TOKENIZER_HINT = "run `litgpt train_tokenizer` to train one or `litgpt download` to fetch a model's"


class Tokenizer:
    """Encode text to token ids and back with the tokenizer files in `checkpoint_dir`.

    Attributes:
        checkpoint_dir: the directory the files were loaded from.
        backend: "huggingface" (tokenizer.json) or "sentencepiece" (tokenizer.model).
        vocab_size: number of ids, added special tokens included.
        bos_id, eos_id: special token ids, or None when the tokenizer has none.
        files: the tokenizer files, to copy into checkpoints (`save`).
        fingerprint: sha256 over the names and bytes of `files`.
    """

    def __init__(self, checkpoint_dir: Union[Path, str]) -> None:
        checkpoint_dir = Path(checkpoint_dir)
        if not checkpoint_dir.is_dir():
            raise FileNotFoundError(
                f"tokenizer directory {str(checkpoint_dir)!r} does not exist; {NO_TOKENIZER_HINT} into it"
            )
        self.checkpoint_dir = checkpoint_dir
        hf_file, sp_file = checkpoint_dir / "tokenizer.json", checkpoint_dir / "tokenizer.model"
        if hf_file.is_file():
            from tokenizers import Tokenizer as HFTokenizer

            try:
                self.processor: Any = HFTokenizer.from_file(str(hf_file))
            except Exception as e:  # tokenizers raises a bare Exception on malformed files
                raise ValueError(f"could not load {hf_file} ({e}); replace it with a valid tokenizer.json") from e
            self.backend = "huggingface"
            self.vocab_size: int = self.processor.get_vocab_size(with_added_tokens=True)
            model_file = hf_file
        elif sp_file.is_file():
            try:
                import sentencepiece
            except ImportError as e:
                raise ImportError(
                    f"{str(checkpoint_dir)!r} has only a SentencePiece tokenizer.model and sentencepiece is not "
                    "installed: pip install 'litgpt-mla[sentencepiece]' (or pip install sentencepiece)"
                ) from e
            self.processor = sentencepiece.SentencePieceProcessor(model_file=str(sp_file))
            self.backend = "sentencepiece"
            self.vocab_size = self.processor.vocab_size()
            model_file = sp_file
        else:
            raise FileNotFoundError(
                f"no tokenizer.json or tokenizer.model in {str(checkpoint_dir)!r}; {NO_TOKENIZER_HINT} into it"
            )
        self.files: list[Path] = [model_file] + [
            checkpoint_dir / name for name in CONFIG_FILES if (checkpoint_dir / name).is_file()
        ]
        self.fingerprint: str = _fingerprint(self.files)
        self.bos_id: Optional[int] = self._special_id("bos")
        self.eos_id: Optional[int] = self._special_id("eos")

    # ------------------------------------------------------------------ special tokens
    def token_to_id(self, token: str) -> Optional[int]:
        """The id of `token`, or None when it is not in the vocabulary."""
        if self.backend == "huggingface":
            return self.processor.token_to_id(token)
        idx = self.processor.piece_to_id(token)
        return None if idx == self.processor.unk_id() and token != self.processor.id_to_piece(idx) else idx

    def _special_id(self, kind: str) -> Optional[int]:
        """Resolve `bos`/`eos`: tokenizer_config, then special_tokens_map, then generation_config, then defaults."""
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            token = _read_json(self.checkpoint_dir / name).get(f"{kind}_token")
            if isinstance(token, dict):
                token = token.get("content")
            if token is None:
                continue
            if not isinstance(token, str):
                raise ValueError(f"{self.checkpoint_dir / name}: {kind}_token must be a string, got {token!r}")
            idx = self.token_to_id(token)
            if idx is None:
                raise ValueError(
                    f"{self.checkpoint_dir / name} names {kind}_token {token!r}, which is not in the tokenizer's "
                    "vocabulary; fix the config or the tokenizer file"
                )
            return idx
        generation_id = _read_json(self.checkpoint_dir / "generation_config.json").get(f"{kind}_token_id")
        if isinstance(generation_id, list):  # several stop ids: the first is the canonical one
            generation_id = generation_id[0] if generation_id else None
        if isinstance(generation_id, int):
            return generation_id
        if self.backend == "sentencepiece":
            idx = self.processor.bos_id() if kind == "bos" else self.processor.eos_id()
            return idx if idx >= 0 else None
        if kind == "eos":  # byte-level BPE (GPT-2, Pythia, ours) separates documents with <|endoftext|>
            return self.token_to_id(ENDOFTEXT)
        return None

    # ------------------------------------------------------------------ encode / decode
    def encode(
        self,
        text: str,
        bos: bool = False,
        eos: bool = False,
        device: Optional[Union[torch.device, str]] = None,
        max_length: int = -1,
    ) -> torch.Tensor:
        """Token ids of `text` as a 1-d int64 tensor, optionally framed by BOS/EOS and cut to `max_length`."""
        ids = self._encode_plain(text)
        if bos:
            if self.bos_id is None:
                raise ValueError(f"encode(bos=True): the tokenizer in {self.checkpoint_dir} has no BOS token")
            ids = [self.bos_id] + ids
        if eos:
            if self.eos_id is None:
                raise ValueError(f"encode(eos=True): the tokenizer in {self.checkpoint_dir} has no EOS token")
            ids = ids + [self.eos_id]
        if max_length > 0:
            ids = ids[:max_length]
        return torch.tensor(ids, dtype=torch.int64, device=device)

    def _encode_plain(self, text: str) -> list[int]:
        if self.backend == "huggingface":
            return self.processor.encode(text, add_special_tokens=False).ids
        return self.processor.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens (the fast path for data preparation)."""
        if self.backend == "huggingface":
            encode = getattr(self.processor, "encode_batch_fast", self.processor.encode_batch)
            return [e.ids for e in encode(texts, add_special_tokens=False)]
        return self.processor.encode(texts)

    def decode(self, ids: Union[torch.Tensor, list[int]], skip_special_tokens: bool = False) -> str:
        """Text of `ids` (a 1-d tensor, a scalar tensor or a list)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        if self.backend == "huggingface":
            return self.processor.decode(ids, skip_special_tokens=skip_special_tokens)
        return self.processor.decode(ids)

    # ------------------------------------------------------------------ files
    def save(self, out_dir: Union[Path, str]) -> None:
        """Copy the tokenizer files into `out_dir` (created if missing)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in self.files:
            target = out_dir / path.name
            if target.exists() and target.samefile(path):
                continue
            shutil.copy2(path, target)

    def __repr__(self) -> str:
        return (
            f"Tokenizer({str(self.checkpoint_dir)!r}, backend={self.backend}, vocab_size={self.vocab_size}, "
            f"bos_id={self.bos_id}, eos_id={self.eos_id}, fingerprint={self.fingerprint[:12]})"
        )


def _fingerprint(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); fix or delete it") from e
    return data if isinstance(data, dict) else {}
