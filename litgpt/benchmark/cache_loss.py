"""`litgpt benchmark cache_loss`: the validation loss of checkpoints on held-out text, by the plain forward and
through the KV cache in each cache format side by side (the model's dtype, fp8_e4m3), so what a quantized cache
costs in quality is one column against another.

The text (a .txt file, or a folder searched for them) is read as pretraining reads its validation files, each
document followed by EOS, and cut into pretraining's validation windows of the model's context (`--window`); every
window is written into a fresh cache `--cache_chunk` tokens at a time, each chunk a prefill over the cached
(quantized) prefix, and each chunk's next-token losses come from that step's logits
(`litgpt.generate.scoring.cache_loss`).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Optional

import torch

from litgpt.api import LLM
from litgpt.data.text_files import _txt_files, read_documents
from litgpt.files import atomic_write
from litgpt.generate.scoring import cache_loss, check_cache_chunk
from litgpt.kv_cache import check_kv_cache_dtype
from litgpt.tokenizer import Tokenizer
from litgpt.utils import command_line, synchronize

PLAIN = "plain forward"  # the column of the loss without a cache


def held_out_tokens(text: Path, tokenizer: Tokenizer, max_tokens: Optional[int] = None) -> torch.Tensor:
    """The token stream (N,) of the .txt files under `text`: each document's ids followed by EOS, as pretraining
    tokenizes its data; the first max_tokens only when given."""
    if tokenizer.eos_id is None:
        raise ValueError(f"the tokenizer in {tokenizer.checkpoint_dir} has no EOS token, which separates documents")
    ids: list[int] = []
    for path in _txt_files([Path(text)], "text"):
        for document in read_documents(path):
            ids += tokenizer.encode_batch([document])[0] + [tokenizer.eos_id]
            if max_tokens is not None and len(ids) >= max_tokens:
                return torch.tensor(ids[:max_tokens], dtype=torch.int64)
    return torch.tensor(ids, dtype=torch.int64)


def benchmark_cache_loss(
    checkpoint_dirs: list[Path],
    text: Path,
    kv_cache_dtypes: Optional[list[Optional[str]]] = None,
    cache_chunk: int = 256,
    window: Optional[int] = None,
    batch_size: int = 4,
    max_tokens: Optional[int] = None,
    device: str = "auto",
    precision: Optional[str] = None,
    out_dir: Path = Path("out/benchmark/cache_loss"),
) -> list[dict]:
    """Validation loss of checkpoints on held-out text, by the plain forward and through each KV cache format.

    Writes results.json and results.md (also printed) under out_dir.

    Args:
        checkpoint_dirs: checkpoints with their tokenizers (or downloaded hub ids ORG/NAME).
        text: a .txt file, or a folder whose .txt files are read (pretraining's validation text).
        kv_cache_dtypes: the cache formats, null being the model's dtype (default: [null, fp8_e4m3]).
        cache_chunk: tokens written into the cache per prefill.
        window: tokens per scored window (default: each model's block_size).
        batch_size: windows per forward pass.
        max_tokens: score the first max_tokens tokens of the text only (default: all).
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        precision: 32-true, bf16-true, 16-true, 64-true (default: bf16 on CUDA, else 32-true).
        out_dir: where results.json and results.md go.
    """
    command = command_line(locals(), "litgpt benchmark cache_loss")
    formats = [None, "fp8_e4m3"] if kv_cache_dtypes is None else list(kv_cache_dtypes)
    if not formats or len(set(formats)) != len(formats):
        raise ValueError(f"--kv_cache_dtypes must name each cache format once, got {formats}")
    for kv_cache_dtype in formats:
        check_kv_cache_dtype(kv_cache_dtype)
    check_cache_chunk(cache_chunk, "--cache_chunk")
    for name, value in (("--window", window), ("--batch_size", batch_size), ("--max_tokens", max_tokens)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if not Path(text).exists():
        raise FileNotFoundError(f"--text {str(text)!r} does not exist; pass a .txt file or a folder of them")
    rows = []
    for checkpoint_dir in checkpoint_dirs:
        llm = LLM.load(checkpoint_dir, device=device, precision=precision)
        model = llm.model.eval()
        length = model.config.block_size if window is None else window
        if length > model.config.block_size:
            raise ValueError(f"--window {length} exceeds {checkpoint_dir}'s block_size {model.config.block_size}")
        model.max_seq_length = max(model.max_seq_length, length)
        tokens = held_out_tokens(text, llm.tokenizer, max_tokens)
        row = {"checkpoint": str(checkpoint_dir), "dtype": str(next(model.parameters()).dtype).split(".")[-1],
               "window": length, "losses": {}, "seconds": {}}
        for kv_cache_dtype in [PLAIN] + formats:
            chunk, cache = (None, None) if kv_cache_dtype == PLAIN else (cache_chunk, kv_cache_dtype)
            t0 = time.perf_counter()
            loss, predicted = cache_loss(model, tokens, length, chunk, cache, batch_size)
            synchronize(llm.device)
            key = column(kv_cache_dtype)
            row["losses"][key], row["seconds"][key] = loss, time.perf_counter() - t0
            row["tokens"] = predicted
        rows.append(row)
        del llm, model
    results = {"command": command, "cache_chunk": cache_chunk, "text": str(text), "device": device_name(),
               "rows": rows}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown(results, formats)
    atomic_write(out_dir / "results.json", lambda tmp: tmp.write_text(json.dumps(results, indent=2)))
    atomic_write(out_dir / "results.md", lambda tmp: tmp.write_text(table))
    print(table, end="")
    print(f"benchmark cache_loss: wrote {out_dir / 'results.json'} and results.md")
    return rows


def column(kv_cache_dtype: Optional[str]) -> str:
    """A format's column name: the plain forward, `model dtype cache` (null) or the format's name."""
    return kv_cache_dtype if kv_cache_dtype is not None else "model dtype cache"


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"


def markdown(results: dict, formats: list[Optional[str]]) -> str:
    """One line per checkpoint: the loss by the plain forward and in each cache format, each format's change
    against the model-dtype cache (or the plain forward when that is not measured)."""
    keys = [PLAIN] + [column(f) for f in formats]
    base = column(None) if None in formats else PLAIN
    changed = [k for k in keys if k not in (PLAIN, base)]
    lines = [f"Validation loss on {results['text']} through the KV cache ({results['cache_chunk']} tokens per "
             f"prefill), on {results['device']}; change against the {base}.", "",
             "| checkpoint | dtype | window | tokens | " + " | ".join(keys)
             + "".join(f" | {k} change" for k in changed) + " |",
             "|---|---|---|---|" + "---|" * (len(keys) + len(changed))]
    for row in results["rows"]:
        losses = row["losses"]
        cells = [f"{losses[k]:.5f}" for k in keys]
        cells += [f"{100 * (losses[k] - losses[base]) / losses[base]:+.3f}%" for k in changed]
        lines.append(f"| {row['checkpoint']} | {row['dtype']} | {row['window']} | {row['tokens']:,} | "
                     + " | ".join(cells) + " |")
    lines += ["", f"`{results['command']}`", ""]
    return "\n".join(lines)
