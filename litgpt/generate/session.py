"""The decode session: everything one model needs to decode a given batch size into a given cache length, built once.

A `DecodeSession` owns the model's KV cache, the sampler, the folded decode weights, the kernels switch and the
(captured or compiled) decode step, so `litgpt generate`, `litgpt chat`, `LLM.generate`/`LLM.benchmark` and
`litgpt benchmark decode` decode the same way. A session stays valid while its batch size, cache length, sampling
settings and mode do (`matches`); the LLM keeps its last one and reuses it.

The default mode (`decode_mode`) is the fastest one that pays for itself: on CUDA, a CUDA graph of the eager step
(milliseconds to capture), and the compiled step captured as one graph only for generations long enough to repay
its compile (`COMPILE_FROM_TOKENS`; Triton's kernels and the GEMV's autotuning are cached on disk across processes,
so the eager step pays neither twice); on the CPU, the eager step.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Iterator, Optional, TextIO

import torch

from litgpt.fold import check_foldable, fold_for_decode, unfold
from litgpt.generate.base import DecodeStep, Sampler, SamplingParams, generate, generate_tokens, stream_tokens
from litgpt.kernels import set_kernels
from litgpt.lora import merge_for_decoding
from litgpt.model import GPT
from litgpt.tokenizer import Tokenizer
from litgpt.utils import synchronize

# Tokens (batch x new tokens) from which the compiled step pays for its compile in one process. Compiling costs
# seconds in every process, even with inductor's on-disk cache (dynamo re-traces the step); the captured eager step is
# about 0.1 ms slower per step at pythia-160m size (benchmarks/results/history.md), so the break-even lies near
# 50,000 steps: past the 2,048-token context of the Pythia-shaped models, which therefore decode with `cuda_graph`
# unless --compile true asks otherwise.
COMPILE_FROM_TOKENS = 50_000


def decode_mode(device: torch.device, max_new_tokens: int, compile: Optional[bool] = None, batch_size: int = 1) -> str:
    """The decode mode for `batch_size` rows of max_new_tokens on device: `compile` True forces the compiled step,
    False forbids it, None chooses by the number of tokens (see COMPILE_FROM_TOKENS)."""
    if device.type != "cuda":
        return "compile" if compile else "eager"
    if compile is None:
        compile = max_new_tokens * batch_size >= COMPILE_FROM_TOKENS
    return "compile+cuda_graph" if compile else "cuda_graph"


class DecodeSession:
    """A model ready to decode `batch_size` rows into a cache of `cache_len` positions with these sampling settings.

    Building one sets the model's kernels switch (the blocks' and the sampler's fused top-k draw), allocates its KV
    cache and makes the sampler and the decode step (`build_s` seconds). At its first call, the first decode step
    after the prefill, the step folds the model's decode weights from its current weights (the prefill does not read
    them) and then compiles or captures itself, so that a streamed first token is printed before both; `prepare_s`
    counts the build and the step's `prepare_s`, which callers report as a phase of its own and leave out of the
    decode rate. A LoRA model is merged first, in place (`litgpt.lora.merge_lora`, with a warning), so the folded step
    decodes the fine-tuned weights: generate from a copy, or with an unfolded `DecodeStep`, to keep training it.
    `fold=False` decodes on the blocks' own modules instead (an earlier fold is undone). `kv_cache_dtype`: the KV
    cache's format, None (the model's dtype) or "fp8_e4m3" (`litgpt.kv_cache`).
    """

    def __init__(
        self,
        model: GPT,
        batch_size: int,
        cache_len: int,
        params: SamplingParams,
        mode: str = "eager",
        kernels: bool = True,
        fold: bool = True,
        kv_cache_dtype: Optional[str] = None,
    ) -> None:
        t0 = time.perf_counter()
        self.model = model
        self.key = (batch_size, cache_len, params, mode, kernels)
        self.kv_cache_dtype = kv_cache_dtype
        device = model.lm_head.weight.device
        model.max_seq_length = max(model.max_seq_length, cache_len)
        set_kernels(model, kernels)
        merge_for_decoding(model, "DecodeSession")
        if fold:
            check_foldable(model)  # a model the fold would get wrong fails here, before the prefill
        else:
            unfold(model)
        model.set_kv_cache(batch_size, max_seq_length=cache_len, kv_cache_dtype=kv_cache_dtype)
        self._cache = model.transformer.h[0].attn.kv_cache  # the buffers the step is captured or compiled on
        self.sampler = Sampler(params, model.config.vocab_size, batch_size, device, use_kernel=kernels)
        # folding at the step's first call keeps it (0.2 s of a pythia-160m generate on the H200) off the first token
        first_call = partial(fold_for_decode, model) if fold else None
        self.step = DecodeStep(model, self.sampler, mode, first_call=first_call)
        synchronize(device)
        self.build_s = time.perf_counter() - t0  # the cache, the sampler

    @property
    def prepare_s(self) -> float:
        """Seconds spent making this session ready: building it and, once the step has run, its compile/capture."""
        return self.build_s + self.step.prepare_s

    @property
    def batch_size(self) -> int:
        return self.key[0]

    @property
    def cache_len(self) -> int:
        return self.key[1]

    def matches(self, batch_size: int, cache_len: int, params: SamplingParams, mode: str, kernels: bool,
                kv_cache_dtype: Optional[str] = None) -> bool:
        """Whether this session serves a request: the same shapes, settings, mode and cache format, and its own cache
        still the model's (not cleared or replaced since)."""
        own_cache = self.model.transformer.h[0].attn.kv_cache is self._cache
        return (own_cache and self.key == (batch_size, cache_len, params, mode, kernels)
                and self.kv_cache_dtype == kv_cache_dtype)

    def seed(self, seed: int) -> None:
        self.sampler.seed(seed)

    def tokens(self, prompts: list[torch.Tensor], max_new_tokens: int, start: int = 0) -> Iterator[torch.Tensor]:
        """The new tokens (B, 1), one device tensor per position, after the first `start` cached positions."""
        return generate_tokens(self.model, prompts, max_new_tokens, self.sampler, self.step, start)

    def generate(
        self, prompts: list[torch.Tensor], max_new_tokens: int, stop_tokens: list[list[int]] = (),
        stream: Optional[TextIO] = None, tokenizer: Optional[Tokenizer] = None,
    ) -> tuple[list[list[int]], float]:
        """Each row's new ids cut before its first stop sequence, and the seconds to the first tokens; with `stream`,
        the first row's text is written to it as it comes (`litgpt.generate.base.generate`)."""
        return generate(self.model, prompts, max_new_tokens, self.sampler, self.step, stop_tokens,
                        stream=stream, tokenizer=tokenizer)

    def stream(
        self, prompt: torch.Tensor, max_new_tokens: int, tokenizer: Tokenizer, stop_tokens: list[list[int]], out: TextIO,
        start: int = 0,
    ) -> tuple[list[int], list[int], float]:
        """Stream one row's text to `out` (see `litgpt.generate.base.stream_tokens` for what comes back)."""
        return stream_tokens(self.tokens([prompt], max_new_tokens, start), tokenizer, stop_tokens, out)
