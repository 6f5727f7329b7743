"""`litgpt generate`: generate text from a checkpoint, streaming it to stdout, timings and memory on stderr."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from litgpt.api import LLM
from litgpt.generate.base import SamplingParams
from litgpt.kernels import set_kernels


def main(
    checkpoint_dir: Path,
    prompt: str = "What food do llamas eat?",
    max_new_tokens: int = 50,
    temperature: float = 0.8,
    top_k: Optional[int] = 50,
    top_p: float = 1.0,
    num_samples: int = 1,
    batch_size: int = 1,
    seed: int = 1234,
    precision: Optional[str] = None,
    device: str = "auto",
    compile: bool = False,
    kernels: bool = True,
    prompt_style: Optional[str] = None,
) -> None:
    """Generate text from a checkpoint, streaming it to stdout; timings and memory go to stderr.

    Args:
        checkpoint_dir: a directory with lit_model.pth, model_config.yaml and tokenizer files (e.g. the `final`
            directory that `litgpt pretrain` writes).
        prompt: the text to continue.
        max_new_tokens: tokens to generate per sample (fewer if the model ends the text).
        temperature: sampling temperature; 0 is greedy decoding (argmax).
        top_k: sample only among the k likeliest tokens (null for all).
        top_p: sample only among the likeliest tokens whose probability adds up to top_p (1.0 for all).
        num_samples: how many samples to generate.
        batch_size: samples generated at once; with 1, text streams token by token.
        seed: sampling seed: the same seed gives the same text.
        precision: weight precision: 32-true, bf16-true, 16-true, 64-true (default: bf16 on CUDA, else 32-true).
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        compile: compile the decode step (on CUDA: torch.compile with CUDA graphs; on CPU: inductor).
        kernels: on CUDA, decode attention runs the Triton split-KV kernels of `litgpt.kernels` (false: the
            pure-torch attention). No effect on CPU, where the torch path always runs.
        prompt_style: how the prompt is framed (default: the checkpoint's prompt_style.yaml, else plain text).
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
    SamplingParams(temperature, top_k, top_p)  # bad values fail before the weights load
    if not prompt:
        raise ValueError("the prompt is empty; pass some text with --prompt")
    llm = LLM.load(checkpoint_dir, device=device, precision=precision, prompt_style=prompt_style)
    set_kernels(llm.model, kernels)
    for first in range(0, num_samples, batch_size):
        rows = min(batch_size, num_samples - first)
        stream = sys.stdout if rows == 1 else None
        texts, stats = llm.generate_with_stats(
            [prompt] * rows, max_new_tokens, temperature, top_k, top_p, seed=seed + first, compile=compile,
            stream=stream,
        )
        for text in texts:
            if stream is None:
                sys.stdout.write(prompt + text)
            sys.stdout.write("\n")
            if num_samples > 1:
                sys.stdout.write("-" * 40 + "\n")
        sys.stdout.flush()
        sys.stderr.write(format_stats(stats) + "\n")


def format_stats(stats: dict) -> str:
    return (
        f"time to first token {stats['time_to_first_token_s'] * 1000:.1f} ms; "
        f"{stats['new_tokens']} tokens in {stats['total_s']:.2f} s: decode {stats['decode_tokens_per_s']:,.1f} "
        f"tokens/s (batch {stats['batch']}); peak memory {stats['peak_memory_bytes'] / 1e9:.3f} GB "
        f"({stats['peak_memory_kind']}); KV cache {stats['kv_cache_bytes'] / 1e6:.2f} MB"
    )
