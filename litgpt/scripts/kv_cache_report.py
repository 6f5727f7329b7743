"""Build models, check that cached decode reproduces the full forward, and report KV-cache sizes.

    python -m litgpt.scripts.kv_cache_report --models '[pythia-160m, pythia-160m-mla]' --max_seq_length 2048
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from litgpt import GPT, Config


def kv_cache_report(
    models: Optional[list[str]] = None,
    batch_size: int = 1,
    max_seq_length: int = 2048,
    prompt_length: int = 16,
    decode_tokens: int = 8,
    seed: int = 42,
) -> list[dict]:
    """Print one row per model: parameters, cached values per token per layer, KV-cache bytes, decode check.

    Args:
        models: named configs to compare (default: pythia-160m and its -gqa, -mqa, -mla variants).
        batch_size: rows in the KV cache.
        max_seq_length: tokens the KV cache is allocated for.
        prompt_length: tokens prefilled before decoding.
        decode_tokens: tokens decoded one at a time and checked against the uncached forward.
        seed: random seed for weights and token ids.
    """
    models = models or ["pythia-160m", "pythia-160m-gqa", "pythia-160m-mqa", "pythia-160m-mla"]
    rows = []
    header = f"{'model':<20} {'params':>8} {'values/tok/layer':>17} {'KV cache':>10} {'decode ms/tok':>14} {'max |diff|':>11}"
    print(header)
    print("-" * len(header))
    for name in models:
        torch.manual_seed(seed)
        config = Config.from_name(name)
        model = GPT(config).eval()
        ids = torch.randint(0, config.vocab_size, (batch_size, prompt_length + decode_tokens))
        with torch.inference_mode():
            full = model(ids)  # (B, T, V): no cache
            model.set_kv_cache(batch_size=batch_size, max_seq_length=max_seq_length)
            cached = [model(ids[:, :prompt_length], input_pos=torch.arange(prompt_length))[:, -1:]]
            start = time.perf_counter()
            for pos in range(prompt_length, prompt_length + decode_tokens - 1):
                cached.append(model(ids[:, pos : pos + 1], input_pos=torch.tensor([pos])))
            ms_per_token = 1e3 * (time.perf_counter() - start) / max(1, decode_tokens - 1)
        diff = (torch.cat(cached, dim=1) - full[:, prompt_length - 1 : -1]).abs().max().item()
        row = dict(
            model=name,
            params=sum(p.numel() for p in model.parameters()),
            values_per_token_per_layer=config.kv_values_per_token,
            kv_cache_bytes=model.kv_cache_bytes(),
            decode_ms_per_token=ms_per_token,
            max_abs_diff=diff,
        )
        rows.append(row)
        print(
            f"{name:<20} {row['params'] / 1e6:>7.1f}M {row['values_per_token_per_layer']:>17,} "
            f"{row['kv_cache_bytes'] / 2**20:>8.1f}MB {ms_per_token:>14.1f} {diff:>11.2e}"
        )
        if diff > 1e-3:
            raise RuntimeError(f"{name}: cached decode differs from the full forward by {diff:.2e}")
    print(f"\nKV cache for batch {batch_size} x {max_seq_length} tokens in float32; "
          "'max |diff|' compares cached decode logits with the uncached forward.")
    return rows


if __name__ == "__main__":
    from litgpt.__main__ import run_script

    run_script(kv_cache_report, as_positional=False)
