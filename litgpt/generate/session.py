"""The decode session: everything one model needs to decode a given batch size into a given cache length, built once.

A `DecodeSession` owns the model's KV cache, the sampler, the folded decode weights, the kernels switch and the
(captured or compiled) decode step, so `litgpt generate`, `litgpt chat`, `LLM.generate`/`LLM.benchmark` and
`litgpt benchmark decode` decode the same way. A session stays valid while its batch size, cache length, sampling
settings and mode do (`matches`); the LLM keeps its last one and reuses it.

The default mode (`decode_mode`) is the fastest one that pays for itself: on CUDA, a CUDA graph of the eager step
(milliseconds to capture) for short generations, and the compiled step captured as one graph for long ones, where
inductor's compile (cached on disk across processes, as are Triton's kernels and the GEMV's autotuning) is repaid;
on the CPU, the eager step.
"""

from __future__ import annotations

from typing import Iterator, Optional, TextIO

import torch

from litgpt.fold import fold_for_decode
from litgpt.generate.base import DecodeStep, Sampler, SamplingParams, generate, generate_tokens, stream_tokens
from litgpt.kernels import set_kernels
from litgpt.model import GPT
from litgpt.tokenizer import Tokenizer

# New tokens from which a compiled step pays for its compile time at batch 1: a cached compile costs a few seconds,
# a captured eager step about 0.1-0.2 ms more per token than the compiled one (pythia-160m-mla on an H200).
COMPILE_FROM_TOKENS = 512


def decode_mode(device: torch.device, max_new_tokens: int, compile: Optional[bool] = None) -> str:
    """The decode mode for a generation of max_new_tokens on device: `compile` True forces the compiled step,
    False forbids it, None chooses by length (see the module docstring)."""
    if device.type != "cuda":
        return "compile" if compile else "eager"
    if compile is None:
        compile = max_new_tokens >= COMPILE_FROM_TOKENS
    return "compile+cuda_graph" if compile else "cuda_graph"


class DecodeSession:
    """A model ready to decode `batch_size` rows into a cache of `cache_len` positions with these sampling settings.

    Building one folds the model's decode weights from its current weights, sets its kernels switch, allocates its
    KV cache and makes the sampler and the decode step (compiled or captured on its first call).
    """

    def __init__(
        self,
        model: GPT,
        batch_size: int,
        cache_len: int,
        params: SamplingParams,
        mode: str = "eager",
        kernels: bool = True,
    ) -> None:
        self.model = model
        self.key = (batch_size, cache_len, params, mode, kernels)
        device = model.lm_head.weight.device
        model.max_seq_length = max(model.max_seq_length, cache_len)
        set_kernels(model, kernels)
        fold_for_decode(model)
        model.set_kv_cache(batch_size, max_seq_length=cache_len)
        self._cache = model.transformer.h[0].attn.kv_cache  # the buffers the step is captured or compiled on
        self.sampler = Sampler(params, model.config.vocab_size, batch_size, device)
        self.step = DecodeStep(model, self.sampler, mode)

    @property
    def batch_size(self) -> int:
        return self.key[0]

    @property
    def cache_len(self) -> int:
        return self.key[1]

    def matches(self, batch_size: int, cache_len: int, params: SamplingParams, mode: str, kernels: bool) -> bool:
        """Whether this session serves a request: the same shapes, settings and mode, and its own cache still the
        model's (not cleared or replaced since)."""
        own_cache = self.model.transformer.h[0].attn.kv_cache is self._cache
        return own_cache and self.key == (batch_size, cache_len, params, mode, kernels)

    def seed(self, seed: int) -> None:
        self.sampler.seed(seed)

    def tokens(self, prompts: list[torch.Tensor], max_new_tokens: int, start: int = 0) -> Iterator[torch.Tensor]:
        """The new tokens (B, 1), one device tensor per position, after the first `start` cached positions."""
        return generate_tokens(self.model, prompts, max_new_tokens, self.sampler, self.step, start)

    def generate(
        self, prompts: list[torch.Tensor], max_new_tokens: int, stop_tokens: list[list[int]] = ()
    ) -> tuple[list[list[int]], float]:
        """Each row's new ids cut before its first stop sequence, and the seconds to the first tokens."""
        return generate(self.model, prompts, max_new_tokens, self.sampler, self.step, stop_tokens)

    def stream(
        self, prompt: torch.Tensor, max_new_tokens: int, tokenizer: Tokenizer, stop_tokens: list[list[int]], out: TextIO,
        start: int = 0,
    ) -> tuple[list[int], list[int], float]:
        """Stream one row's text to `out` (see `litgpt.generate.base.stream_tokens` for what comes back)."""
        return stream_tokens(self.tokens([prompt], max_new_tokens, start), tokenizer, stop_tokens, out)
