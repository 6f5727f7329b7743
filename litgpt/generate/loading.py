"""Loading a checkpoint for `litgpt generate` and `litgpt chat`, quantized or not (a module of its own, so that each
command imports only it and not the other's)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from litgpt.api import LLM


def load_llm(checkpoint_dir: Path, device: str, precision: Optional[str], prompt_style: Optional[str],
             quantize: Optional[str], kv_cache_dtype: Optional[str] = None) -> LLM:
    """`LLM.load`; with `quantize`, the weights loaded on the device and their linear layers then quantized
    (`LLM.distribute(quantize=...)`, `litgpt.quantize.quantize_linears`). kv_cache_dtype: the format of every KV
    cache the LLM builds (`LLM.distribute`)."""
    if quantize is None:
        return LLM.load(checkpoint_dir, device=device, precision=precision, prompt_style=prompt_style,
                        kv_cache_dtype=kv_cache_dtype)
    llm = LLM.load(checkpoint_dir, distribute=None, prompt_style=prompt_style)
    llm.distribute(accelerator=device, precision=precision, quantize=quantize, kv_cache_dtype=kv_cache_dtype)
    return llm
