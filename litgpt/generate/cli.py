"""`litgpt generate`: generate text from a checkpoint, streaming it to stdout, timings and memory on stderr.

After each batch of samples one stderr line reports where the time went (`format_phases`): start-up (process start
to this command running: imports and argument parsing), load (`LLM.load`), prepare (the decode session: folded
weights, KV cache, the step's CUDA-graph capture or compile), first token and decode.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

from litgpt.generate.base import SamplingParams, resolve_device
from litgpt.generate.loading import load_llm
from litgpt.kv_cache import check_kv_cache_dtype
from litgpt.quantize import check_inference_quantize
from litgpt.utils import process_start_time, synchronize, warn_compile_on_cpu

# "first token" is the time from the start of a batch's generation to its first token. The line says "time to first
# token" because tests/test_generate.py asserts that phrase; `litgpt.benchmark.generate` parses both.
FIRST_TOKEN_LABEL = "time to first token"


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
    compile: Optional[bool] = None,
    kernels: bool = True,
    prompt_style: Optional[str] = None,
    quantize: Optional[str] = None,
    kv_cache_dtype: Optional[str] = None,
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
        batch_size: samples generated at once; the first sample of each batch streams token by token.
        seed: sampling seed: the same seed gives the same text.
        precision: weight precision: 32-true, bf16-true, 16-true, 64-true (default: bf16 on CUDA, else 32-true).
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        compile: compile the decode step (true) or not (false); default: by the tokens to generate: on CUDA a CUDA
            graph of the eager step, and the compiled step captured as one graph only from 50,000 tokens (batch x
            max_new_tokens), where its compile of a few seconds per process pays for itself; on the CPU the eager
            step (true there warns: the CPU compile takes minutes).
        kernels: on CUDA, decode attention runs the Triton split-KV kernels of `litgpt.kernels` (false: the
            pure-torch attention). No effect on CPU, where the torch path always runs.
        prompt_style: how the prompt is framed (default: the checkpoint's prompt_style.yaml, else its chat
            template, else plain text; chat_template: the checkpoint's chat template).
        quantize: store the linear layers' weights quantized by bitsandbytes: bnb.nf4, bnb.nf4-dq, bnb.fp4,
            bnb.fp4-dq (4-bit) or bnb.int8 (LLM.int8()); the LM head stays in --precision. The weights load in full
            first; a quantized model decodes unfolded (see `litgpt.quantize.quantize_linears`).
        kv_cache_dtype: the KV cache's format: null (the weights' dtype) or fp8_e4m3 (e4m3 values with float32
            scales, quantized as each token is written: for MLA the latent in blocks of 128 and the rope key in the
            weights' dtype, for MHA/GQA/MQA K and V per token and head; `litgpt.kv_cache`).

    After each batch one line goes to stderr (see `format_phases`): start-up and load (on the first batch's line;
    0.000 on later ones), prepare, first token, decode tokens, seconds and tokens/s, peak memory and KV-cache size.
    """
    start_up_s = max(time.time() - process_start_time(), 0.0)
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
    SamplingParams(temperature, top_k, top_p)  # bad values fail before the weights load
    if not prompt:
        raise ValueError("the prompt is empty; pass some text with --prompt")
    check_inference_quantize(quantize)
    check_kv_cache_dtype(kv_cache_dtype)
    warn_compile_on_cpu(compile, resolve_device(device))
    t0 = time.perf_counter()
    llm = load_llm(checkpoint_dir, device, precision, prompt_style, quantize, kv_cache_dtype)
    synchronize(llm.device)  # the weights are on the device when the clock stops
    load_s = time.perf_counter() - t0
    for first in range(0, num_samples, batch_size):
        rows = min(batch_size, num_samples - first)
        texts, stats = llm.generate_with_stats(  # the batch's first text streams, the others print when it ends
            [prompt] * rows, max_new_tokens, temperature, top_k, top_p, seed=seed + first, compile=compile,
            stream=sys.stdout, kernels=kernels,
        )
        for i, text in enumerate(texts):
            if i > 0:
                sys.stdout.write(llm.prompt_style.apply(prompt) + text)  # as the first row streamed it
            sys.stdout.write("\n")
            if num_samples > 1:
                sys.stdout.write("-" * 40 + "\n")
        sys.stdout.flush()
        sys.stderr.write(format_phases(stats, start_up_s, load_s) + "\n")
        sys.stderr.flush()
        start_up_s = load_s = 0.0  # paid once: later lines add up to the run


def decode_phase(stats: dict) -> tuple[int, float]:
    """(tokens, seconds) of the decode phase of `LLM.generate_with_stats`'s stats: everything after the first token.

    Seconds: total - time to first token - the decode step's compile/capture at its first call (part of prepare).
    Tokens: the tokens after each row's first, times the batch, that is `decode_tokens_per_s` x those seconds (the
    count the rate was computed from: batch x decode steps).
    """
    seconds = max(stats["decode_s"], 0.0)
    tokens = round(stats["decode_tokens_per_s"] * max(seconds, 1e-9))
    return tokens, seconds


def format_phases(stats: dict, start_up_s: float, load_s: float) -> str:
    """The stderr line of one batch, e.g. `litgpt generate: start-up 0.812 s, load 0.403 s, prepare 0.052 s, time
    to first token 0.021 s, decode 999 tokens in 0.351 s (2,846.2 tokens/s, batch 1); peak memory 0.412 GB (CUDA
    allocated); KV cache 7.08 MB`. `stats` is `LLM.generate_with_stats`'s (prepare: building its decode session,
    0 when an earlier batch's was reused); start-up and load are in seconds."""
    tokens, seconds = decode_phase(stats)
    return (
        f"litgpt generate: start-up {start_up_s:.3f} s, load {load_s:.3f} s, prepare {stats['prepare_s']:.3f} s, "
        f"{FIRST_TOKEN_LABEL} {stats['time_to_first_token_s']:.3f} s, "
        f"decode {tokens} tokens in {seconds:.3f} s ({stats['decode_tokens_per_s']:,.1f} tokens/s, "
        f"batch {stats['batch']}); peak memory {stats['peak_memory_bytes'] / 1e9:.3f} GB "
        f"({stats['peak_memory_kind']}); KV cache {stats['kv_cache_bytes'] / 1e6:.2f} MB"
    )
