"""Pretraining data: `DataModule` (tokenize once into memmaps), `TokenWindows`, `ResumableSampler`, loaders.

A data module yields raw documents (`iter_texts`), tokenizes them once into
`<cache_dir>/<tokenizer fingerprint[:12]>/{train,val}.bin` (flat token streams, EOS after every document)
with a `meta.json` that records which tokenizer and which source produced them, and serves non-overlapping
windows of `max_seq_length + 1` tokens. Subclasses are dataclasses so jsonargparse builds them from
`data: {class_path: litgpt.data.TinyStories, init_args: {...}}`; the base stays a plain class so that
`class_path` selects among them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import random
import sys
import time
import warnings
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from litgpt.tokenizer import Tokenizer
from litgpt.utils import atomic_write

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")
META_VERSION = 1
# Work units for the tokenizer processes: at most this many documents / characters per chunk.
CHUNK_DOCUMENTS = 1024
CHUNK_CHARS = 4_000_000


class DataModule:
    """Base of the pretraining data modules.

    Subclasses implement `iter_texts(split)` and `source_fingerprint()` and have `cache_dir`, `tokenize_workers`
    (tokenizer processes of `prepare_data`) and `loader_workers` (DataLoader worker processes of training and
    validation) fields, and `seed` where they hold out a random validation split. Call order: `connect` ->
    `prepare_data` (once, one process) -> `setup` (every process) -> `train_dataset` / `val_dataset`.
    """

    cache_dir: Optional[Path] = None
    tokenize_workers: int = 0
    loader_workers: int = 0
    tokenizer: Optional[Tokenizer] = None
    max_seq_length: int = -1
    _tokens: Optional[dict[str, np.ndarray]] = None

    # ------------------------------------------------------------------ to implement
    def iter_texts(self, split: str) -> Iterator[str]:
        """Raw documents of `split` ("train" or "val"), in a deterministic order."""
        raise NotImplementedError

    def source_fingerprint(self) -> dict[str, Any]:
        """JSON-serializable description of everything the documents depend on (files, sizes, mtimes, options)."""
        raise NotImplementedError

    def cache_root(self) -> Path:
        """Directory holding one prepared subdirectory per tokenizer."""
        if self.cache_dir is None:
            raise ValueError(f"{type(self).__name__}.cache_dir is not set; pass a cache_dir")
        return Path(self.cache_dir)

    # ------------------------------------------------------------------ interface
    def connect(self, tokenizer: Tokenizer, *, max_seq_length: int = -1) -> None:
        """Attach the tokenizer and the window length (tokens per training sequence) the datasets will serve."""
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self._tokens = None

    def as_dict(self) -> dict[str, Any]:
        """{class_path, init_args}: the yaml `data:` section that rebuilds this data module."""
        fields = dataclasses.fields(self) if dataclasses.is_dataclass(self) else ()
        init_args = {f.name: getattr(self, f.name) for f in fields if f.init}
        return {"class_path": f"{type(self).__module__}.{type(self).__qualname__}", "init_args": init_args}

    @property
    def prepared_dir(self) -> Path:
        """`<cache_dir>/<tokenizer fingerprint[:12]>`, where the .bin files and meta.json live."""
        return self.cache_root() / self._connected_tokenizer().fingerprint[:12]

    def prepare_data(self) -> None:
        """Tokenize both splits into memmaps unless an up-to-date tokenization is already cached."""
        tokenizer = self._connected_tokenizer()
        if tokenizer.eos_id is None:
            raise ValueError(
                f"the tokenizer in {tokenizer.checkpoint_dir} has no EOS token to separate documents; set "
                "eos_token in its tokenizer_config.json"
            )
        out_dir = self.prepared_dir
        source = _hash_json(self.source_fingerprint())
        dtype = token_dtype(tokenizer.vocab_size)
        reason = self._stale_reason(out_dir, tokenizer.fingerprint, source, dtype)
        if reason is None:
            logger.info("reusing tokenized data in %s", out_dir)
            return
        logger.info("tokenizing %s into %s: %s", type(self).__name__, out_dir, reason)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "meta.json").unlink(missing_ok=True)  # never let an old meta vouch for new, partial files
        splits = {}
        with _encoder_pool(tokenizer, dtype, self.tokenize_workers) as pool:
            for split in SPLITS:
                start = time.perf_counter()
                documents, tokens = _tokenize_to_file(
                    self.iter_texts(split), pool, out_dir / f"{split}.bin", max_in_flight=2 * self.tokenize_workers
                )
                splits[split] = {"documents": documents, "tokens": tokens}
                logger.info(
                    "%s: %d documents, %d tokens in %.1f s", split, documents, tokens, time.perf_counter() - start
                )
        if splits["train"]["documents"] == 0:
            raise ValueError(f"{type(self).__name__} produced no training documents; check its data paths")
        if splits["val"]["documents"] == 0:
            logger.warning("%s produced no validation documents; val_dataset() will fail", type(self).__name__)
        meta = {
            "version": META_VERSION,
            "data_module": type(self).__name__,
            "tokenizer_fingerprint": tokenizer.fingerprint,
            "tokenizer_dir": str(tokenizer.checkpoint_dir),
            "source_fingerprint": source,
            "dtype": np.dtype(dtype).name,
            "eos_id": tokenizer.eos_id,
            "vocab_size": tokenizer.vocab_size,
            "splits": splits,
        }
        atomic_write(out_dir / "meta.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8"))

    def setup(self) -> None:
        """Open the prepared token streams as read-only memmaps."""
        tokenizer = self._connected_tokenizer()
        out_dir = self.prepared_dir
        meta = _read_meta(out_dir)
        if meta is None:
            raise FileNotFoundError(f"no prepared data in {out_dir}; call prepare_data() before setup()")
        if meta.get("tokenizer_fingerprint") != tokenizer.fingerprint:
            raise ValueError(f"{out_dir} was tokenized with a different tokenizer; call prepare_data() again")
        dtype = np.dtype(meta["dtype"])
        self._tokens = {}
        for split in SPLITS:
            n = meta["splits"][split]["tokens"]
            path = out_dir / f"{split}.bin"
            if n == 0:
                self._tokens[split] = np.zeros(0, dtype=dtype)
            else:
                self._tokens[split] = np.memmap(path, dtype=dtype, mode="r", shape=(n,))

    def train_dataset(self) -> "TokenWindows":
        return TokenWindows(self._split_tokens("train"), self._window_length(), split="train")

    def val_dataset(self) -> "TokenWindows":
        return TokenWindows(self._split_tokens("val"), self._window_length(), split="val")

    # ------------------------------------------------------------------ helpers
    def _check_workers(self, num_workers: Optional[int] = None) -> None:
        """For a subclass's `__post_init__`: take the deprecated `num_workers` as `tokenize_workers` (with a
        FutureWarning) and check both worker counts."""
        name = type(self).__name__
        if num_workers is not None:
            warnings.warn(
                f"{name}: num_workers is deprecated; it is the number of tokenizer processes, now called "
                "tokenize_workers (--data.tokenize_workers); DataLoader workers are loader_workers",
                FutureWarning, stacklevel=4,
            )
            default = next((f.default for f in dataclasses.fields(self) if f.name == "tokenize_workers"), None)
            if self.tokenize_workers not in (default, num_workers):
                raise ValueError(
                    f"{name}: num_workers={num_workers} and tokenize_workers={self.tokenize_workers} disagree; pass "
                    "only tokenize_workers (num_workers is its deprecated name)"
                )
            self.tokenize_workers = num_workers
        for field in ("tokenize_workers", "loader_workers"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}: {field} must be an integer >= 0 (0: in this process), got {value!r}")

    def _connected_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise RuntimeError(f"call {type(self).__name__}.connect(tokenizer, max_seq_length=...) first")
        return self.tokenizer

    def _window_length(self) -> int:
        if self.max_seq_length <= 0:
            raise ValueError(f"max_seq_length must be positive, got {self.max_seq_length}; pass it to connect()")
        return self.max_seq_length

    def _split_tokens(self, split: str) -> np.ndarray:
        if self._tokens is None:
            self.setup()
        return self._tokens[split]

    def _stale_reason(self, out_dir: Path, tokenizer_fp: str, source_fp: str, dtype: np.dtype) -> Optional[str]:
        """Why the cached tokenization in `out_dir` cannot be reused, or None when it can."""
        meta = _read_meta(out_dir)
        if meta is None:
            root = out_dir.parent
            siblings = sorted(root.iterdir()) if root.is_dir() else []
            others = [p.name for p in siblings if p != out_dir and (p / "meta.json").is_file()]
            if others:
                return f"no tokenization for this tokenizer yet (cached ones are for other tokenizers: {others})"
            return "no cached tokenization"
        if meta.get("version") != META_VERSION:
            return f"cache format version {meta.get('version')} != {META_VERSION}"
        if meta.get("tokenizer_fingerprint") != tokenizer_fp:
            return f"tokenizer changed ({str(meta.get('tokenizer_fingerprint'))[:12]} -> {tokenizer_fp[:12]})"
        if meta.get("source_fingerprint") != source_fp:
            return f"source data changed ({str(meta.get('source_fingerprint'))[:12]} -> {source_fp[:12]})"
        if meta.get("dtype") != np.dtype(dtype).name:
            return f"dtype changed ({meta.get('dtype')} -> {np.dtype(dtype).name})"
        for split in SPLITS:
            path = out_dir / f"{split}.bin"
            expected = meta["splits"][split]["tokens"] * np.dtype(dtype).itemsize
            if not path.is_file() or path.stat().st_size != expected:
                return f"{path.name} is missing or has the wrong size"
        return None


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size < 2**16 else np.dtype(np.uint32)


# ---------------------------------------------------------------------------------------------------- tokenizing
_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer_dir: str, fingerprint: str, eos_id: int, dtype: str, parallel: bool) -> None:
    """Load the tokenizer once per process (and keep each process to one thread when there are several)."""
    if not parallel:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    tokenizer = Tokenizer(tokenizer_dir)
    if tokenizer.fingerprint != fingerprint:
        raise RuntimeError(f"the tokenizer files in {tokenizer_dir} changed while tokenizing; run again")
    _WORKER.update(tokenizer=tokenizer, eos_id=eos_id, dtype=np.dtype(dtype))


def _encode_chunk(documents: list[str]) -> np.ndarray:
    """Token ids of `documents`, each followed by EOS, as one flat array of the cache dtype."""
    ids = _WORKER["tokenizer"].encode_batch(documents)
    eos_id, dtype = _WORKER["eos_id"], _WORKER["dtype"]
    out = np.empty(sum(len(x) for x in ids) + len(ids), dtype=np.int64)
    pos = 0
    for x in ids:
        out[pos : pos + len(x)] = x
        pos += len(x)
        out[pos] = eos_id
        pos += 1
    if out.size and (out.max() > np.iinfo(dtype).max or out.min() < 0):
        raise ValueError(f"token id {out.max()} does not fit {dtype.name}; the tokenizer's vocab_size is wrong")
    return out.astype(dtype)


def _chunks(documents: Iterable[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    chars = 0
    for doc in documents:
        chunk.append(doc)
        chars += len(doc)
        if len(chunk) >= CHUNK_DOCUMENTS or chars >= CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


@contextmanager
def _encoder_pool(tokenizer: Tokenizer, dtype: np.dtype, num_workers: int) -> Iterator[Optional[Any]]:
    """A pool of `num_workers` spawned processes that each load the tokenizer once; None (this process) for <= 1.

    spawn, not fork: the parent may hold threads (torch, tokenizers, Lightning) that fork would copy mid-state.
    A spawned process re-runs the parent's main script first; where there is none to re-run (a script read from
    stdin, `python - <<EOF`), every worker would die at start and the pool would replace it forever, so this
    process tokenizes alone, with a warning.
    """
    init_args = (str(tokenizer.checkpoint_dir), tokenizer.fingerprint, tokenizer.eos_id, np.dtype(dtype).name)
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if num_workers > 1 and main_file is not None and not os.path.isfile(main_file):
        warnings.warn(
            f"tokenize_workers={num_workers} needs worker processes that re-import the main script, and "
            f"{main_file!r} is not a file (a script from stdin?); tokenizing in this process instead. Run the "
            "script from a file to tokenize in parallel", stacklevel=4,
        )
        num_workers = 0
    if num_workers <= 1:
        _WORKER.update(tokenizer=tokenizer, eos_id=tokenizer.eos_id, dtype=np.dtype(dtype))
        try:
            yield None
        finally:
            _WORKER.clear()
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(num_workers, initializer=_init_worker, initargs=(*init_args, False)) as pool:
        yield pool


def _tokenize_to_file(
    documents: Iterable[str], pool: Optional[Any], path: Path, max_in_flight: int = 8
) -> tuple[int, int]:
    """Write the EOS-separated token stream of `documents` to `path` atomically; return (documents, tokens).

    Chunks of documents are tokenized in `pool` (or in this process when None) and written in input order,
    with a bounded number of chunks in flight.
    """
    n_docs = n_tokens = 0

    def write_stream(tmp: Path) -> None:
        with open(tmp, "wb") as f:

            def write(tokens: np.ndarray, count: int) -> None:
                nonlocal n_docs, n_tokens
                f.write(tokens.tobytes())
                n_docs += count
                n_tokens += tokens.size

            if pool is None:
                for chunk in _chunks(documents):
                    write(_encode_chunk(chunk), len(chunk))
            else:
                pending: deque = deque()
                for chunk in _chunks(documents):
                    pending.append((pool.apply_async(_encode_chunk, (chunk,)), len(chunk)))
                    if len(pending) >= max_in_flight:
                        result, count = pending.popleft()
                        write(result.get(), count)
                while pending:
                    result, count = pending.popleft()
                    write(result.get(), count)

    atomic_write(path, write_stream)
    return n_docs, n_tokens


# ---------------------------------------------------------------------------------------------------- cache files
def not_utf8(path: Path, error: UnicodeDecodeError, whole_file: bool = True) -> ValueError:
    """The one-line error for a data file that is not UTF-8 text: the file, the first bad byte and, where `error`
    decoded the whole file (not a buffer of a streamed read), its offset."""
    byte = error.object[error.start] if error.start < len(error.object) else None
    found = "an invalid byte" if byte is None else f"byte {byte:#04x}"
    if whole_file:
        found += f" at offset {error.start}"
    return ValueError(f"{path} is not UTF-8 text ({found}); save it as UTF-8 (e.g. `iconv -t UTF-8`) and rerun")


def _hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _read_meta(out_dir: Path) -> Optional[dict]:
    path = out_dir / "meta.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        logger.warning("ignoring unreadable %s", path)
        return None


# ---------------------------------------------------------------------------------------------------- splits
def holdout_split(documents: Iterable[str], split: str, fraction: float, seed: int) -> Iterator[str]:
    """The `split` part of `documents` when a random `fraction` (seeded, streaming) is held out for validation.

    Each document goes to "val" with probability `fraction` (one draw per document from `random.Random(seed)`,
    so both splits see the same draws). If no document was drawn, the last one is held out, so "val" is never
    empty when there are at least two documents.
    """
    check_split(split)
    rng = random.Random(seed)
    any_val = False
    n_train = 0
    pending: Optional[str] = None  # the latest training document, withheld in case val would stay empty
    for doc in documents:
        if rng.random() < fraction:
            any_val = True
            if split == "val":
                yield doc
            continue
        if pending is not None and split == "train":
            yield pending
        pending = doc
        n_train += 1
    if pending is not None:
        pending_is_train = any_val or n_train == 1
        if (split == "train") == pending_is_train:
            yield pending


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


# ---------------------------------------------------------------------------------------------------- datasets
class TokenWindows(Dataset):
    """Non-overlapping windows over a 1-d token stream: item i is tokens[i*L : i*L + L + 1] (L = max_seq_length).

    Inputs are item[:-1] and targets item[1:]. Pickles a memmap by file name, so DataLoader workers reopen it
    instead of copying the data.
    """

    def __init__(self, tokens: np.ndarray, max_seq_length: int, split: str = "train") -> None:
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be 1-d, got shape {tokens.shape}")
        if max_seq_length <= 0:
            raise ValueError(f"max_seq_length must be positive, got {max_seq_length}")
        if tokens.size < max_seq_length + 1:
            raise ValueError(
                f"the {split} split has {tokens.size} tokens, fewer than max_seq_length + 1 = {max_seq_length + 1}; "
                "lower max_seq_length or add data"
            )
        self.tokens = tokens
        self.max_seq_length = max_seq_length
        self.split = split

    def __len__(self) -> int:
        return (self.tokens.size - 1) // self.max_seq_length

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        start = index * self.max_seq_length
        window = self.tokens[start : start + self.max_seq_length + 1]  # (max_seq_length + 1,)
        return torch.from_numpy(window.astype(np.int64))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        tokens = self.tokens
        if isinstance(tokens, np.memmap) and tokens.filename is not None:
            state["tokens"] = ("memmap", tokens.filename, tokens.dtype.str, tokens.offset, tokens.shape)
        return state

    def __setstate__(self, state: dict) -> None:
        tokens = state["tokens"]
        if isinstance(tokens, tuple) and tokens[0] == "memmap":
            _, filename, dtype, offset, shape = tokens
            state["tokens"] = np.memmap(filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape)
        self.__dict__.update(state)


class ResumableSampler(Sampler[int]):
    """Infinite, seeded, sharded sample order that resumes exactly after `consumed_samples`.

    Epoch e is `torch.randperm(num_samples)` drawn with seed `seed + e`; rank r takes indices r::world_size of
    it, cut so every rank gets `num_samples // world_size` per epoch. `consumed_samples` counts the samples
    this rank already took, so a resumed run continues the uninterrupted run's sequence. Each `iter()` starts
    again at `consumed_samples`: rebuild the sampler (or loader) with the new count to resume.
    """

    def __init__(
        self, num_samples: int, seed: int, rank: int = 0, world_size: int = 1, consumed_samples: int = 0
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if num_samples < world_size:
            raise ValueError(
                f"{num_samples} samples cannot be shared by {world_size} ranks; add data or lower max_seq_length"
            )
        if consumed_samples < 0:
            raise ValueError(f"consumed_samples must be >= 0, got {consumed_samples}")
        self.num_samples = num_samples
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.consumed_samples = consumed_samples
        self.samples_per_epoch = num_samples // world_size  # per rank

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's sample indices for `epoch`."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        permutation = torch.randperm(self.num_samples, generator=generator)
        return permutation[self.rank :: self.world_size][: self.samples_per_epoch].tolist()

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.consumed_samples, self.samples_per_epoch)
        while True:
            yield from self.epoch_indices(epoch)[offset:]
            epoch, offset = epoch + 1, 0


def make_train_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    consumed_samples: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    collate_fn: Optional[Callable[[list], Any]] = None,
) -> DataLoader:
    """Infinite loader of batches in `ResumableSampler` order: (batch_size, max_seq_length + 1) token windows, or
    whatever `collate_fn` makes of `batch_size` samples (None: stack them).

    `consumed_samples` is per rank (steps taken * batch_size). With Lightning Fabric, pass
    `use_distributed_sampler=False` to `setup_dataloaders` so this sampler is kept. The loader draws its worker
    seeds from its own generator, never from torch's global RNG, so starting to iterate it does not change the
    random numbers of training (dropout), and a resumed run draws what the uninterrupted one did.
    """
    sampler = ResumableSampler(len(dataset), seed, rank, world_size, consumed_samples)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(seed + rank),
    )


def make_val_loader(
    dataset: Dataset, batch_size: int, max_batches: Optional[int] = None, num_workers: int = 0,
    collate_fn: Optional[Callable[[list], Any]] = None,
) -> DataLoader:
    """Sequential loader over the first `max_batches * batch_size` samples (all of them when None), batched by
    `collate_fn` (None: stacked).

    With `num_workers` > 0 the workers persist between passes, so each validation does not start them again. As in
    `make_train_loader`, iterating it leaves torch's global RNG alone.
    """
    if max_batches is not None:
        if max_batches <= 0:
            raise ValueError(f"max_batches must be positive or None, got {max_batches}")
        dataset = Subset(dataset, range(min(len(dataset), max_batches * batch_size)))
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, persistent_workers=num_workers > 0,
        collate_fn=collate_fn, generator=torch.Generator().manual_seed(0),
    )
