"""`Tokenizer`: one interface over a Hugging Face `tokenizer.json` or a SentencePiece `tokenizer.model`.

Special tokens follow the tokenizer's own configuration, as `transformers.AutoTokenizer` reads it: `bos_token` /
`eos_token` come from `tokenizer_config.json` (then `special_tokens_map.json`); whether a text starts with BOS (or
ends with EOS) is what tokenizer.json's own post-processor adds (Llama 3's TemplateProcessing prepends
`<|begin_of_text|>`; `add_bos_token` / `add_eos_token` are baked into it when transformers saves it), and for a
SentencePiece tokenizer.model alone `add_bos_token` (default true, as Llama's) / `add_eos_token`.
`generation_config.json` only adds stop ids (its `eos_token_id`, an id or a list) and an EOS when the tokenizer
configs name none; byte-level BPE tokenizers whose configs name no end-of-text token (GPT-2, Pythia, ours from
`litgpt train_tokenizer`) get `<|endoftext|>` as EOS. `fingerprint` identifies the
exact tokenizer files (chat templates included), so data tokenized with one tokenizer is never silently reused with
another.
"""

from __future__ import annotations

import functools
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
CONFIG_FILES = (
    "tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "chat_template.jinja",
    "chat_template.json",
)
# Every file of a checkpoint's tokenizer: what `litgpt download` fetches and the converters copy.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", *CONFIG_FILES)
NO_TOKENIZER_HINT = "run `litgpt train_tokenizer` to train one or `litgpt download` to fetch a model's"


class Tokenizer:
    """Encode text to token ids and back with the tokenizer files in `checkpoint_dir`.

    Attributes:
        checkpoint_dir: the directory the files were loaded from.
        backend: "huggingface" (tokenizer.json) or "sentencepiece" (tokenizer.model).
        vocab_size: number of ids, added special tokens included.
        bos_id, eos_id: special token ids, or None when the tokenizer has none.
        add_bos, add_eos: whether the tokenizer's configuration frames a text with BOS / EOS (what
            `transformers.AutoTokenizer(...)(text)` adds); `encode(text, bos=t.add_bos, eos=t.add_eos)` matches it.
        stop_ids: the ids that end a reply: EOS, then generation_config.json's `eos_token_id` (an id or a list).
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
        self.add_bos, self.add_eos = self._framing()
        generation = _read_json(checkpoint_dir / "generation_config.json").get("eos_token_id")
        generation = generation if isinstance(generation, list) else [generation]
        self.stop_ids: list[int] = list(
            dict.fromkeys(i for i in [self.eos_id, *generation] if isinstance(i, int) and not isinstance(i, bool))
        )

    # ------------------------------------------------------------------ special tokens
    def token_to_id(self, token: str) -> Optional[int]:
        """The id of `token`, or None when it is not in the vocabulary."""
        if self.backend == "huggingface":
            return self.processor.token_to_id(token)
        idx = self.processor.piece_to_id(token)
        return None if idx == self.processor.unk_id() and token != self.processor.id_to_piece(idx) else idx

    def _special_id(self, kind: str) -> Optional[int]:
        """Resolve `bos`/`eos`: tokenizer_config, then special_tokens_map; for EOS then generation_config's (first)
        eos_token_id; then the backend's defaults (SentencePiece's own ids, `<|endoftext|>` as a byte-level EOS).

        A BOS comes only from the tokenizer's files: generation_config's bos_token_id is not the tokenizer's (Qwen2
        names one there while its tokenizer has `bos_token: null` and adds none)."""
        named = False
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            config = _read_json(self.checkpoint_dir / name)
            named = named or f"{kind}_token" in config
            token = config.get(f"{kind}_token")
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
        if kind == "eos":
            generation_id = _read_json(self.checkpoint_dir / "generation_config.json").get("eos_token_id")
            if isinstance(generation_id, list):  # several stop ids: the first is the canonical one
                generation_id = generation_id[0] if generation_id else None
            if isinstance(generation_id, int):
                return generation_id
        if named:  # the configs say `null`: there is none
            return None
        if self.backend == "sentencepiece":
            idx = self.processor.bos_id() if kind == "bos" else self.processor.eos_id()
            return idx if idx >= 0 else None
        if kind == "eos":  # byte-level BPE (GPT-2, Pythia, ours) separates documents with <|endoftext|>
            return self.token_to_id(ENDOFTEXT)
        return None

    def _framing(self) -> tuple[bool, bool]:
        """(add_bos, add_eos), as transformers frames `tokenizer(text)`: a tokenizer.json frames a text with what
        its own post-processor adds around it (Llama 2's and Llama 3's TemplateProcessing prepend BOS; Qwen2's
        ByteLevel adds nothing), and tokenizer_config's add_bos_token / add_eos_token are already baked into it;
        a SentencePiece tokenizer.model alone follows add_bos_token (default true, as Llama's) and add_eos_token
        (default false)."""
        if self.backend == "sentencepiece":
            config = _read_json(self.checkpoint_dir / "tokenizer_config.json")
            return (bool(config.get("add_bos_token", True)) and self.bos_id is not None,
                    bool(config.get("add_eos_token", False)) and self.eos_id is not None)
        if self.processor.post_processor is None:
            return False, False
        plain = self.processor.encode("a", add_special_tokens=False).ids
        framed = self.processor.encode("a", add_special_tokens=True).ids
        start = next((i for i in range(len(framed) - len(plain) + 1) if framed[i : i + len(plain)] == plain), 0)
        prefix, suffix = framed[:start], framed[start + len(plain) :]
        if self.bos_id is None and len(prefix) == 1:  # the post-processor adds a BOS the configs do not name
            self.bos_id = prefix[0]
        if self.eos_id is None and len(suffix) == 1:
            self.eos_id = suffix[0]
        return prefix == [self.bos_id], suffix == [self.eos_id]

    # ------------------------------------------------------------------ encode / decode
    def encode(
        self,
        text: str,
        bos: bool = False,
        eos: bool = False,
        device: Optional[Union[torch.device, str]] = None,
        max_length: int = -1,
    ) -> torch.Tensor:
        """Token ids of `text` as a 1-d int64 tensor, optionally framed by BOS/EOS and cut to `max_length`.

        A text that already starts with the BOS token (a chat template writes it) gets no second one."""
        ids = self._encode_plain(text)
        if bos and not (ids and ids[0] == self.bos_id):
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

    @functools.cached_property
    def byte_fallback_ids(self) -> frozenset[int]:
        """Ids of the `<0xNN>` byte pieces of a Hugging Face tokenizer whose decoder has a ByteFallback step
        (Llama- and Mistral-style tokenizer.json files); empty for every other tokenizer.

        ByteFallback decodes a run of byte pieces as a whole: a later byte of the run can turn characters it
        already spelled into U+FFFD, so `IncrementalDecoder` holds a run's text until the run ends. Byte-level
        BPE and SentencePiece decode bytes locally and need no such care.
        """
        if self.backend != "huggingface" or self.processor.decoder is None:
            return frozenset()
        try:
            decoder_state = str(self.processor.decoder.__getstate__())
        except Exception:  # older bindings: read the decoder from the serialised tokenizer
            decoder_state = str(json.loads(self.processor.to_str()).get("decoder"))
        if "ByteFallback" not in decoder_state:
            return frozenset()
        vocab = self.processor.get_vocab(with_added_tokens=False)
        return frozenset(i for piece, i in vocab.items() if _is_byte_piece(piece))

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
            f"bos_id={self.bos_id}, eos_id={self.eos_id}, add_bos={self.add_bos}, fingerprint={self.fingerprint[:12]})"
        )


def _fingerprint(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _is_byte_piece(piece: str) -> bool:
    """Whether `piece` spells one byte as `<0xNN>`."""
    if len(piece) != 6 or not (piece.startswith("<0x") and piece.endswith(">")):
        return False
    return all(c in "0123456789abcdefABCDEF" for c in piece[3:5])


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); fix or delete it") from e
    return data if isinstance(data, dict) else {}


REPLACEMENT_CHAR = "\ufffd"  # what a decoder writes for bytes that are not (yet) a whole UTF-8 character


class IncrementalDecoder:
    """The text of a stream of token ids, piece by piece, with work per id that does not grow with the stream.

    `push(id)` returns the text that `id` completes and `flush()` what is left at the end; everything they
    return, joined, is `tokenizer.decode(all ids)`. Each push decodes only a window of recent ids: a few
    `context` ids whose text is already out, then the pending ids since. The context gives decoders that treat
    the start of the text specially (SentencePiece and Metaspace drop the first piece's leading space, Strip
    decoders the first space) a start that is already behind them, so the pending ids decode as they do inside
    the whole sequence. Text is released only at a clean point: when the window's text extends what was
    released and does not end in U+FFFD, so a character whose UTF-8 bytes are split over 2-4 byte-level tokens
    waits for its last byte. Lossy UTF-8 decoding resynchronises at every character boundary, which is what
    makes a clean point a safe place to cut.

    Once the window holds more than `max_window` ids it restarts from its last `context` ids (at a clean point,
    and only on a context whose text is not empty, since SentencePiece strips the leading space until some
    text is out). After `max_pending` ids that never reach a clean point (a long run of invalid bytes or of
    literal U+FFFD, or a byte-fallback run that long) the text is released as decoded so far, to keep the work
    bounded; only there can the joined text differ from the full decode, in the replacement characters of
    that run.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        context: int = 4,
        max_window: int = 16,
        max_pending: int = 64,
        skip_special_tokens: bool = False,
    ) -> None:
        if context < 1 or max_window <= context or max_pending < 1:
            raise ValueError(
                f"need 1 <= context < max_window and max_pending >= 1, got context={context}, "
                f"max_window={max_window}, max_pending={max_pending}"
            )
        self.tokenizer = tokenizer
        self.context, self.max_window, self.max_pending = context, max_window, max_pending
        self.skip_special_tokens = skip_special_tokens
        self._unfinished_after = getattr(tokenizer, "byte_fallback_ids", frozenset())  # ids that end no clean point
        self._ids: list[int] = []  # the window: `_released` ids whose text is out, then the pending ids
        self._released = 0
        self._text = ""  # decode(self._ids[: self._released])
        self._anchor_len = 0  # the window's first ids up to a clean point with some text (0: none yet)

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes ("" while a character or a decoder's context is unfinished)."""
        self._ids.append(int(token_id))
        text = self._decode(self._ids)
        clean = (
            text.startswith(self._text)
            and not text.endswith(REPLACEMENT_CHAR)
            and self._ids[-1] not in self._unfinished_after
        )
        if not clean and len(self._ids) - self._released < self.max_pending:
            return ""
        if clean and text and not self._anchor_len:
            self._anchor_len = len(self._ids)
        return self._release(text)

    def flush(self) -> str:
        """The text of the ids still pending (an unfinished character comes out as U+FFFD, as in `decode`)."""
        if len(self._ids) == self._released:
            return ""
        return self._release(self._decode(self._ids))

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _release(self, text: str) -> str:
        """Mark the whole window as released (its text is `text`) and return what is new."""
        new = text[len(self._text) :]
        self._released, self._text = len(self._ids), text
        if len(self._ids) > self.max_window:
            self._restart()
        return new

    def _restart(self) -> None:
        """Shrink the window to its last few ids, on the shortest such context that decodes cleanly to some text."""
        for n in range(self.context, min(2 * self.context, len(self._ids))):
            if self._ids[-n - 1] in self._unfinished_after:  # do not cut a byte-fallback run
                continue
            tail = self._ids[-n:]
            tail_text = self._decode(tail)
            if tail_text and not tail_text.endswith(REPLACEMENT_CHAR):
                self._ids, self._released, self._text, self._anchor_len = tail, n, tail_text, n
                return
        if len(self._ids) > self.max_window + self.max_pending:  # no such context for that long: bound the work
            # the window's first ids with text stand in for the text before (SentencePiece keeps later spaces)
            anchor = self._ids[: self._anchor_len] if self._anchor_len <= self.max_window else []
            self._ids = anchor + self._ids[-self.context :]
            self._released, self._text, self._anchor_len = len(self._ids), self._decode(self._ids), len(anchor)
