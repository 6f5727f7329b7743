"""Scoring text through the KV cache: what a cache format (an fp8 cache above all) costs in quality.

A plain forward (`model(idx)`) never reads the KV cache, so its loss cannot show what a quantized cache changes.
`logits_through_cache` writes the text into a fresh static cache `chunk` tokens at a time: each chunk is a prefill
at its own positions that attends over the cached (in fp8: quantized and read back dequantized) earlier chunks and
itself, as chat's later turns and the server's prefix cache do, and the logits come from those steps. With the
model's dtype as the cache's format the result equals the plain forward's up to the order of floating-point sums
(`tests/test_scoring.py`). `cache_loss` is the validation loss of a token stream computed this way (or by the plain
forward, chunk None), over pretraining's validation windows.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from litgpt.generate.base import head_at
from litgpt.kv_cache import check_kv_cache_dtype
from litgpt.model import GPT


def check_cache_chunk(chunk: int, option: str = "cache_chunk") -> int:
    """chunk itself if it is a positive int, else a one-line error naming `option`."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"{option} must be a positive number of tokens per prefill through the KV cache, got {chunk!r}")
    return chunk


@torch.inference_mode()
def logits_through_cache(
    model: GPT, idx: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, chunk: int,
    kv_cache_dtype: Optional[str] = None,
) -> torch.Tensor:
    """The logits (N, V) at the positions (rows[n], cols[n]) of idx (B, T), in that order, with idx written into a
    fresh static KV cache of T positions in `kv_cache_dtype` (None: the model's dtype), `chunk` tokens at a time:
    the chunk at positions begin..end-1 is a prefill that attends over the cache's first `end` positions. The LM
    head maps only the asked positions. The model's KV cache is removed afterwards."""
    check_cache_chunk(chunk)
    check_kv_cache_dtype(kv_cache_dtype)
    B, T = idx.shape
    device = model.lm_head.weight.device
    rows_host, cols_host = rows.cpu(), cols.cpu()  # (N,) each: which positions go to which chunk, read on the host
    if cols_host.numel() and not (0 <= int(cols_host.min()) and int(cols_host.max()) < T):
        raise ValueError(f"the asked positions must lie within the {T} columns of idx")
    idx = idx.to(device)
    out: Optional[torch.Tensor] = None
    model.set_kv_cache(B, max_seq_length=T, kv_cache_dtype=kv_cache_dtype)
    try:
        for begin in range(0, T, chunk):
            end = min(T, begin + chunk)
            picked = ((cols_host >= begin) & (cols_host < end)).nonzero()[:, 0]  # (n,): this chunk's positions
            input_pos = torch.arange(begin, end, device=device)  # (t,)
            with head_at(model, rows_host[picked].to(device), (cols_host[picked] - begin).to(device)):
                logits = model(idx[:, begin:end], input_pos=input_pos, input_pos_maxp1=end)  # (n, V)
            if out is None:
                out = logits.new_empty(rows_host.numel(), logits.size(-1))  # (N, V)
            out[picked.to(device)] = logits
    finally:
        model.clear_kv_cache()
    return out


@torch.inference_mode()
def cache_loss(
    model: GPT, tokens: torch.Tensor, window: int, chunk: Optional[int] = None, kv_cache_dtype: Optional[str] = None,
    batch_size: int = 1, max_windows: Optional[int] = None,
) -> tuple[float, int]:
    """(mean next-token cross-entropy, tokens predicted) over the disjoint windows tokens[i*L : i*L + L + 1] of a
    token stream (N,) (L = window; pretraining's validation windows, the incomplete last one left out), in batches
    of `batch_size` windows: through the KV cache in chunks of `chunk` tokens (`logits_through_cache`, in
    kv_cache_dtype), or with chunk None by the plain forward (kv_cache_dtype must then be None). max_windows: score
    at most that many windows (the first ones). The cross-entropy is taken in float32, one window at a time."""
    if chunk is None and kv_cache_dtype is not None:
        raise ValueError(f"kv_cache_dtype {kv_cache_dtype!r} is read only through the cache: pass a chunk size too")
    if chunk is not None:
        check_cache_chunk(chunk, "chunk")
    if window < 1 or window > model.max_seq_length:
        raise ValueError(f"window must be within 1..{model.max_seq_length} (the model's max_seq_length), got {window}")
    count = (tokens.numel() - 1) // window
    count = count if max_windows is None else min(count, max_windows)
    if count < 1:
        raise ValueError(f"{tokens.numel()} tokens make no window of {window + 1}; give more text or a shorter window")
    device = model.lm_head.weight.device
    windows = tokens[: count * window + 1].to(torch.int64)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for first in range(0, count, batch_size):
        b = min(batch_size, count - first)
        starts = torch.arange(first, first + b) * window  # (b,)
        span = starts[:, None] + torch.arange(window + 1)  # (b, L + 1)
        rows = windows[span]  # (b, L + 1)
        idx, targets = rows[:, :-1].to(device), rows[:, 1:].to(device)  # (b, L) each
        if chunk is None:
            logits = model(idx).flatten(0, 1)  # (b * L, V)
        else:
            grid_rows = torch.arange(b).repeat_interleave(window)  # (b * L,)
            grid_cols = torch.arange(window).repeat(b)  # (b * L,)
            logits = logits_through_cache(model, idx, grid_rows, grid_cols, chunk, kv_cache_dtype)  # (b * L, V)
        for i in range(b):
            part = logits[i * window : (i + 1) * window].float()  # (L, V): one window's float32 copy
            total += F.cross_entropy(part, targets[i], reduction="sum").double()
    predicted = count * window
    loss = total.item() / predicted
    if not math.isfinite(loss):
        raise ValueError(f"the loss is {loss}; the checkpoint or the cache format overflows on this text")
    return loss, predicted
