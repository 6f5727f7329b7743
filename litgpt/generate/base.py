"""Text generation: prefill, the one decode step, on-device sampling, the generation loop and `litgpt generate`.

The decode step has static shapes: the KV caches are preallocated, the token and its position come in as (B, 1)
device tensors (each row at its own position), the mask is `arange(cache_len) <= input_pos` and the next token
is sampled on the device. Nothing in it reads a value back to the host, so it can be compiled with
`torch.compile(mode="reduce-overhead")` or captured as a CUDA graph once and replayed for every token.

Batched prompts of different lengths are right-padded and prefilled at shared positions 0..T-1; each row's first
token comes from the logits at its own last prompt position and its decode starts at its own next position. The
pad tokens' cache entries sit beyond the row's position, so the mask hides them until a decode step overwrites
them: every row generates exactly what it would alone.

Sampling noise is a counter-based hash of (seed, row, position, token id), not a stateful RNG: it is capturable,
identical in eager and compiled runs, and the same seed always gives the same text.
"""

from __future__ import annotations

import contextlib
import resource
import time
from dataclasses import dataclass
from collections import deque
from typing import Callable, Generator, Iterable, Iterator, Optional, Sequence, TextIO, Union

import torch
from torch import nn

from litgpt.kernels._triton import TRITON_AVAILABLE
from litgpt.kernels.sampling import (
    FUSED_MAX_K,
    MAX_K,
    VALUE_DTYPES,
    fused_top_k_sample,
    gumbel_noise,
    gumbel_top_k_sample,
    inverse_temperature,
    mix32_int,
    token_hashes,
)
from litgpt.model import GPT
from litgpt.tokenizer import IncrementalDecoder, Tokenizer
from litgpt.utils import synchronize

PRECISION_DTYPES = {
    "32-true": torch.float32,
    "bf16-true": torch.bfloat16,
    "bf16-mixed": torch.bfloat16,
    "16-true": torch.float16,
    "16-mixed": torch.float16,
    "64-true": torch.float64,
}
DECODE_MODES = ("eager", "compile", "max-autotune", "cuda_graph", "compile+cuda_graph")
# rows x tokens per prefill forward: bounds its activations (the LM head maps only the prompts' last positions, and
# a first chunk from position 0 needs no mask). Each later chunk re-reads the cached prefix (MLA decompresses it), so
# fewer, larger chunks do less work: 32 prompts of 4K take 4 chunks, not 16
PREFILL_TOKENS_PER_CHUNK = 32768


# ------------------------------------------------------------------------------------------------ device and dtype
def resolve_device(device: Optional[Union[str, torch.device]] = None) -> torch.device:
    """`None`/"auto": CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was requested but CUDA is not available; use --device cpu")
    return device


def resolve_dtype(precision: Optional[str], device: torch.device) -> torch.dtype:
    """The weight dtype for `precision` (default: bf16 on CUDA when supported, else float32)."""
    if precision is None:
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_DTYPES)}")
    return PRECISION_DTYPES[precision]


# ------------------------------------------------------------------------------------------------ sampling
@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 is greedy (argmax); top_k keeps the k likeliest tokens; top_p keeps the smallest set of
    likeliest tokens whose probability reaches top_p, the token that crosses it included (transformers' and vLLM's
    rule; 1.0 keeps all)."""

    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be a positive integer or None, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Sampler(nn.Module):
    """Next token ids (B, 1) from logits (B, V) on the device, with no host sync.

    Sampling uses the Gumbel-max trick: argmax(logits / temperature + Gumbel noise) is a draw from
    softmax(logits / temperature). With top_k the noise is made for the k candidates alone, not the whole vocabulary
    (at batch 8 and a 50k vocabulary that is 400 values a step instead of 400,000). The noise comes from hashing
    (row seed, position, token id), so a step has no RNG state to advance: it replays under a CUDA graph and gives
    the same tokens for the same seed everywhere.

    `use_kernel`: a top-k draw (top_p 1.0) on CUDA runs in Triton: for k up to FUSED_MAX_K the top-k as well
    (`litgpt.kernels.sampling.fused_top_k_sample`, two launches instead of torch.topk's several), else torch.topk
    over the raw logits, then one launch for the scaling, the noise and the argmax (`gumbel_top_k_sample`). The same
    tokens as the torch path, except where logits tie at the k-th place: the kernels keep the smaller token id
    (a stable descending sort's order), torch.topk either.
    """

    def __init__(
        self, params: SamplingParams, vocab_size: int, batch_size: int, device: torch.device, use_kernel: bool = False
    ) -> None:
        super().__init__()
        self.params = params
        self.use_kernel = use_kernel
        self.inv_temperature = inverse_temperature(params.temperature) if not params.greedy else 0.0
        self.vocab_size = vocab_size  # logits of padded ids beyond it are never sampled
        token_ids = torch.arange(vocab_size, dtype=torch.int64, device=device)
        self.register_buffer("token_hash", token_hashes(token_ids).view(1, vocab_size), persistent=False)
        row_seeds = torch.zeros(batch_size, 1, dtype=torch.int64, device=device)  # (B, 1), set by `seed`
        self.register_buffer("row_seeds", row_seeds, persistent=False)
        self.seed(0)

    def seed(self, seed: int) -> None:
        """Give row i the stream `hash(hash(seed) ^ (i + 1))`: in place, so captured graphs keep seeing the buffer.
        A chain, not hash(seed) ^ hash(i + 1), which is symmetric: seed s, row r would share the stream of seed
        r + 1, row s - 1 (seeds 1 and 2 would draw the same two samples in batches of two)."""
        seeds = [mix32_int(mix32_int(seed) ^ (row + 1)) for row in range(self.row_seeds.size(0))]
        self.row_seeds.copy_(torch.tensor(seeds, dtype=torch.int64).view(-1, 1))

    def _fused(self, logits: torch.Tensor) -> bool:
        """Whether this draw runs as top-k + the fused kernel: `use_kernel`, a top-k draw with top_p 1.0, and logits
        the kernel takes (elsewhere the torch path below, whose CPU division rounds unlike the kernel's scaling)."""
        top_k, params = self.params.top_k, self.params
        return (
            self.use_kernel and not params.greedy and top_k is not None and top_k < self.vocab_size
            and top_k <= MAX_K and params.top_p == 1.0 and TRITON_AVAILABLE and logits.is_cuda
            and logits.dtype in VALUE_DTYPES and logits.device == self.row_seeds.device
        )

    def forward(self, logits: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """logits (B, V_padded) for the token at `position` (B, 1) -> token ids (B, 1)."""
        if self._fused(logits):
            # dividing by temperature > 0 keeps the order: the top-k of the raw logits, scaled in fp32 by the kernel
            k = self.params.top_k
            if k <= FUSED_MAX_K:  # the top-k in the kernels too: two launches
                return fused_top_k_sample(logits, self.vocab_size, k, self.row_seeds, position, self.inv_temperature)
            values, token_ids = torch.topk(logits[:, : self.vocab_size], k, dim=-1)  # (B, k), (B, k)
            return gumbel_top_k_sample(values, token_ids, self.row_seeds, position, self.inv_temperature)  # (B, 1)
        logits = logits[:, : self.vocab_size].float()  # (B, V)
        if self.params.greedy:
            return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        logits = logits / self.params.temperature
        if self.params.top_k is not None and self.params.top_k < self.vocab_size:
            # only the k likeliest can be drawn: go on with those k candidates (B, k), sorted, and their token ids;
            # each keeps the noise of its token id, so the draw is the one over the whole masked vocabulary
            logits, token_ids = torch.topk(logits, self.params.top_k, dim=-1)  # (B, k), (B, k)
            token_hash = self.token_hash.view(-1)[token_ids]  # (B, k)
        else:
            token_ids, token_hash = None, self.token_hash  # (1, V): every token a candidate
        if self.params.top_p < 1.0:
            if token_ids is None:
                logits, token_ids = torch.sort(logits, dim=-1, descending=True)  # (B, V)
                token_hash = self.token_hash.view(-1)[token_ids]
            probs = torch.softmax(logits, dim=-1)  # candidates sorted by logit, likeliest first
            # out: a token after likelier ones that already reach top_p (the likeliest token always stays)
            outside = (torch.cumsum(probs, dim=-1) - probs) >= self.params.top_p
            logits = logits.masked_fill(outside, float("-inf"))
        gumbel = gumbel_noise(token_hash, self.row_seeds, position)  # (B, candidates), fp32
        choice = (logits + gumbel).argmax(dim=-1, keepdim=True)  # (B, 1)
        return choice if token_ids is None else token_ids.gather(-1, choice)  # (B, 1) token ids


ROW_DRAWS = ("greedy", "sample", "filter")


class RowSamplingParams(nn.Module):
    """Each row's sampling settings as (B, 1) device tensors, so one step samples rows with different settings:
    temperature (0: greedy), top_k (the vocabulary size: no top-k), top_p (1.0: no top-p) and the row's noise seed.
    `set_row` writes a host copy; `sync` copies it to the device buffers in place (a captured step keeps them)."""

    def __init__(self, batch_size: int, vocab_size: int, device: torch.device) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        pin = device.type == "cuda"
        self._host = {
            "temperature": torch.zeros(batch_size, 1, dtype=torch.float32, pin_memory=pin),
            "top_k": torch.full((batch_size, 1), vocab_size, dtype=torch.int64, pin_memory=pin),
            "top_p": torch.ones(batch_size, 1, dtype=torch.float32, pin_memory=pin),
            "row_seeds": torch.zeros(batch_size, 1, dtype=torch.int64, pin_memory=pin),
        }
        for name, host in self._host.items():
            self.register_buffer(name, host.to(device), persistent=False)  # (B, 1) each
        self._dirty = False

    def set_row(self, row: int, params: SamplingParams, seed: int) -> None:
        """Row `row` samples with `params` from the noise stream of `seed`: the stream row 0 of a `Sampler` seeded
        with `seed` draws from, so a request decodes alike here, alone, batched or beside anything."""
        top_k = self.vocab_size if params.top_k is None else min(params.top_k, self.vocab_size)
        values = dict(temperature=params.temperature, top_k=top_k, top_p=params.top_p,
                      row_seeds=mix32_int(mix32_int(seed) ^ 1))
        for name, value in values.items():
            self._host[name][row, 0] = value
        self._dirty = True

    def sync(self) -> None:
        if self._dirty:
            for name, host in self._host.items():
                getattr(self, name).copy_(host, non_blocking=True)
            self._dirty = False


class RowSampler(nn.Module):
    """Next token ids (B, 1) from logits (B, V) with each row's own settings (`RowSamplingParams`), on the device and
    without a host sync: the same draw as `Sampler`'s torch path (Gumbel-max with noise hashed from (row seed,
    position, token id)), with the settings as tensors. Greedy rows take the argmax.

    `draw` (one of ROW_DRAWS) is the work a step does, chosen for the rows it serves: "greedy" the argmax alone (every
    row greedy); "sample" also the draw over the whole vocabulary (no row with top-k or top-p); "filter" also each
    row's top-k and top-p, over the logits sorted. A row gets the same token from each draw that serves it.
    `top_logprobs` n > 0: each step also writes, into the buffers `logprobs` (B, 1 + n) and `top_ids` (B, n), the
    chosen token's log-probability and the n likeliest tokens' (under the model's distribution, before temperature
    and filtering), read after the step. `rows`: the sampler serves the first `rows` rows of `params` (default:
    all), for a step over that many rows."""

    def __init__(self, params: RowSamplingParams, draw: str = "sample", top_logprobs: int = 0,
                 rows: Optional[int] = None) -> None:
        super().__init__()
        if draw not in ROW_DRAWS:
            raise ValueError(f"draw must be one of {ROW_DRAWS}, got {draw!r}")
        all_rows = params.row_seeds.size(0)
        B = all_rows if rows is None else rows
        if not 1 <= B <= all_rows:
            raise ValueError(f"rows must be within 1..{all_rows} (the rows of the sampling params), got {rows}")
        self.params, self.draw, self.top_logprobs, self.rows = params, draw, min(top_logprobs, params.vocab_size), B
        vocab_size, device = params.vocab_size, params.row_seeds.device
        token_ids = torch.arange(vocab_size, dtype=torch.int64, device=device)
        self.register_buffer("token_hash", token_hashes(token_ids).view(1, vocab_size), persistent=False)
        n = self.top_logprobs
        self.register_buffer("logprobs", torch.zeros(B, 1 + n, dtype=torch.float32, device=device), persistent=False)
        self.register_buffer("top_ids", torch.zeros(B, n, dtype=torch.int64, device=device), persistent=False)

    def forward(self, logits: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """logits (B, V_padded) for the tokens at `position` (B, 1) -> token ids (B, 1)."""
        p, B = self.params, self.rows
        token = sample_rows(logits, position, p.temperature[:B], p.top_k[:B], p.top_p[:B], p.row_seeds[:B],
                            self.token_hash, self.draw)
        if self.top_logprobs:
            self.logprobs.copy_(token_logprobs(logits, token, self.top_ids, p.vocab_size))
        return token


def sample_rows(logits: torch.Tensor, position: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                top_p: torch.Tensor, row_seeds: torch.Tensor, token_hash: torch.Tensor, draw: str) -> torch.Tensor:
    """Token ids (B, 1) from logits (B, >= V) at position (B, 1), with per-row temperature, top_k, top_p (B, 1)
    and the work `draw` (see `RowSampler`); token_hash (1, V) is `token_hashes` of the vocabulary."""
    vocab_size = token_hash.size(-1)
    logits = logits[:, :vocab_size].float()  # (B, V)
    if draw == "greedy":
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    greedy = temperature == 0  # (B, 1)
    scaled = logits / torch.where(greedy, torch.ones_like(temperature), temperature)  # (B, V)
    token_ids, hashes = None, token_hash  # every token a candidate, in vocabulary order
    if draw == "filter":  # candidates sorted by logit, likeliest first: a row keeps its first top_k, then its top_p set
        scaled, token_ids = torch.sort(scaled, dim=-1, descending=True)  # (B, V), (B, V)
        hashes = token_hash.view(-1)[token_ids]  # (B, V)
        rank = torch.arange(vocab_size, device=logits.device)  # (V,)
        scaled = scaled.masked_fill(rank >= top_k, float("-inf"))
        probs = torch.softmax(scaled, dim=-1)
        outside = ((torch.cumsum(probs, dim=-1) - probs) >= top_p) & (top_p < 1.0)  # as `Sampler`'s top-p
        scaled = scaled.masked_fill(outside, float("-inf"))
    choice = (scaled + gumbel_noise(hashes, row_seeds, position)).argmax(dim=-1, keepdim=True)  # (B, 1)
    sampled = choice if token_ids is None else token_ids.gather(-1, choice)
    return torch.where(greedy, logits.argmax(dim=-1, keepdim=True), sampled)  # (B, 1)


def token_logprobs(logits: torch.Tensor, token: torch.Tensor, top_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """log-softmax over the first vocab_size logits (B, >= V): [logprob of token (B, 1) | the top_ids.size(1) largest
    logprobs] (B, 1 + n) in fp32, writing their token ids into top_ids (B, n) in place."""
    logprobs = torch.log_softmax(logits[:, :vocab_size].float(), dim=-1)  # (B, V)
    top, ids = logprobs.topk(top_ids.size(1), dim=-1)  # (B, n), (B, n)
    top_ids.copy_(ids)
    return torch.cat((logprobs.gather(-1, token), top), dim=-1)  # (B, 1 + n)


# ------------------------------------------------------------------------------------------------ the decode step
class DecodeStep:
    """The one decode step: (B, 1) token ids at (B, 1) positions -> the next token ids (B, 1); with a paged KV cache
    (`GPT.set_paged_kv_cache`), also each row's (B, P) block table, which a captured step copies into its own
    static table before each replay, as it does the tokens and positions.

    Modes: "eager" runs the module as is; "compile" wraps it in torch.compile (on CUDA with
    mode="reduce-overhead", i.e. CUDA graphs; on CPU inductor's default mode); "max-autotune" likewise with
    mode="max-autotune" on CUDA (Triton GEMM templates with fused epilogues, plus CUDA graphs; slow to compile);
    "cuda_graph" captures the eager step as an explicit CUDA graph on the first call and replays it after;
    "compile+cuda_graph" compiles the step without torch's CUDA-graph machinery and captures the compiled code as
    one explicit graph (a replay costs one launch and no guard checks). The caller owns the model's KV cache,
    which must be set (and must not be reallocated) before the first call, and its folded decode weights
    (`litgpt.fold.fold_for_decode`: two GEMMs per parallel-residual block instead of about nine, measured faster
    at every shape in benchmarks/RESULTS.md), which must be folded before the step is compiled or captured: by the
    caller, or by `first_call`, which the first call runs before anything else (the decode session's fold).
    """

    def __init__(
        self, model: GPT, sampler: Sampler, mode: str = "eager", first_call: Optional[Callable[[], None]] = None,
        graph_pool: Optional[tuple] = None,
    ) -> None:
        if mode not in DECODE_MODES:
            raise ValueError(f"decode mode must be one of {DECODE_MODES}, got {mode!r}")
        self.model, self.sampler, self.mode = model, sampler, mode
        self.device = model.lm_head.weight.device
        if mode in ("cuda_graph", "compile+cuda_graph") and self.device.type != "cuda":
            raise ValueError(f"decode mode {mode!r} needs the model on a CUDA device; use 'compile' or 'eager'")
        self._fn: Callable[..., torch.Tensor] = self.forward
        self._graph: Optional[torch.cuda.CUDAGraph] = None
        self._first_call = first_call  # work before the first step (the session's fold), counted in prepare_s
        # the memory pool of the captured graph (`torch.cuda.graph_pool_handle()`), shared by steps that never run at
        # once, such as the serving engine's row buckets: each replay's output is cloned before another step runs
        self._graph_pool = graph_pool
        self.prepared = mode == "eager" and first_call is None  # done by the first call (or `prepare`)
        self.prepare_s = 0.0  # seconds the first call spent preparing: first_call, compile/capture, its one step
        if mode in ("compile", "max-autotune"):
            if self.device.type == "cuda":
                self.compile(mode="reduce-overhead" if mode == "compile" else mode, fullgraph=True, dynamic=False)
            else:
                self.compile(fullgraph=True, dynamic=False)
        elif mode == "compile+cuda_graph":
            self.compile(fullgraph=True, dynamic=False)

    def forward(
        self, token: torch.Tensor, input_pos: torch.Tensor, block_table: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """token (B, 1) at input_pos (B, 1) -> next token (B, 1), sampled for position input_pos + 1."""
        logits = self.model(token, input_pos, block_table=block_table)[:, -1]  # (B, V_padded)
        return self.sampler(logits, input_pos + 1)

    def compile(self, **compile_kwargs) -> None:
        """Wrap the step in torch.compile with these arguments (e.g. backend="eager" to test for recompiles)."""
        self._fn = torch.compile(self.forward, **compile_kwargs)

    def _mark_static_buffers(self) -> None:
        """KV caches, rope tables and sampler buffers keep their addresses: let CUDA graphs read them in place."""
        for buffer in list(self.model.buffers()) + list(self.sampler.buffers()):
            torch._dynamo.mark_static_address(buffer)

    @torch.inference_mode()
    def prepare(self, batch_size: int, pages: Optional[int] = None) -> None:
        """Compile and/or capture the step now rather than at its first call: one step of token 0 at position 0
        (every row), which writes cache position 0; run it before the prefill, which overwrites that position.
        With a paged cache, `pages` is the width of the block tables later steps pass: this step's table is all
        page 0, the scratch page, so it writes nothing a sequence owns. Nothing to do in eager mode or once prepared.

        Without it the first call prepares: it runs at the first decode position, after the prefill has produced the
        first token, so a streamed first token is printed before the capture (and its cache write is the real one)."""
        if self.prepared:
            return
        zeros = torch.zeros(batch_size, 1, dtype=torch.int64, device=self.device)  # (B, 1)
        scratch = None if pages is None else torch.zeros(batch_size, pages, dtype=torch.int32, device=self.device)
        self(zeros, zeros, scratch)

    @torch.inference_mode()
    def __call__(
        self, token: torch.Tensor, input_pos: torch.Tensor, block_table: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        inputs = (token, input_pos) if block_table is None else (token, input_pos, block_table)
        if not self.prepared:
            synchronize(self.device)
            t0 = time.perf_counter()
            if self._first_call is not None:
                with torch.inference_mode(False):  # what it makes (folded weights) outlives this step: normal tensors
                    self._first_call()
            if self.mode in ("compile", "max-autotune") and self.device.type == "cuda":
                self._mark_static_buffers()  # before dynamo traces the step, and after first_call made its buffers
            out = self._call(*inputs)
            synchronize(self.device)
            self.prepare_s += time.perf_counter() - t0
            self.prepared = True
            return out
        return self._call(*inputs)

    def _call(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Run the step on its inputs: (token, input_pos) or, with a paged cache, (token, input_pos, block_table)."""
        if self.mode in ("cuda_graph", "compile+cuda_graph"):
            return self._replay(*inputs)
        if self.mode in ("compile", "max-autotune") and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
            return self._fn(*inputs).clone()  # the graph's output buffer is reused by the next replay
        return self._fn(*inputs)

    def _replay(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self._graph is None:
            self._static_inputs = tuple(t.clone() for t in inputs)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm up kernels (and their workspaces) outside the capture
                for _ in range(2):
                    self._fn(*self._static_inputs)
            torch.cuda.current_stream().wait_stream(stream)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph, pool=self._graph_pool):
                self._static_out = self._fn(*self._static_inputs)
            # the warm-up and capture wrote this position's cache entry; replaying below writes it again, the same
        if len(inputs) != len(self._static_inputs):
            raise ValueError("this decode step was captured " + ("with" if len(inputs) < 3 else "without")
                             + " a block table: pass one at every step or at none")
        for static, new in zip(self._static_inputs, inputs):
            static.copy_(new)  # token, positions (and block table) into the captured step's own buffers
        self._graph.replay()
        return self._static_out.clone()


# ------------------------------------------------------------------------------------------------ prefill and loop
@contextlib.contextmanager
def head_at(model: GPT, rows: torch.Tensor, cols: torch.Tensor) -> Iterator[None]:
    """Within it, `model(idx)` returns the logits (N, V) of the N positions (rows[n], cols[n]) only: the LM head's
    input (B, T, n_embd) is cut to those positions before it is mapped (a forward pre-hook on `model.lm_head`)."""

    def select(module: torch.nn.Module, args: tuple) -> tuple:
        (hidden,) = args  # (B, T, n_embd)
        return (hidden[rows, cols],)  # (N, n_embd)

    handle = model.lm_head.register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()


def check_lengths(model: GPT, prompt_lengths: list[int], max_new_tokens: int) -> int:
    """The cache length a generation needs, or a ValueError naming the limit it breaks."""
    if not prompt_lengths or min(prompt_lengths) < 1:
        raise ValueError("the prompt is empty (it encodes to no tokens); pass some text with --prompt")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    total = max(prompt_lengths) + max_new_tokens
    if total > model.config.block_size:
        raise ValueError(
            f"prompt ({max(prompt_lengths)} tokens) + max_new_tokens ({max_new_tokens}) = {total} exceeds the "
            f"model's context of {model.config.block_size} tokens; shorten the prompt or lower --max_new_tokens"
        )
    return total


@torch.inference_mode()
def prefill(
    model: GPT,
    prompts: list[torch.Tensor],
    sampler: Sampler,
    start: int = 0,
    tokens_per_chunk: int = PREFILL_TOKENS_PER_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write the prompts (right-padded) into the cache at positions start.. and sample each row's first token.

    Returns the first new tokens (B, 1) and each row's next position (B, 1). Long prompts run in chunks of at
    most `tokens_per_chunk` rows x tokens, which bounds the activations of a forward.
    """
    device = model.lm_head.weight.device
    B, lengths = len(prompts), [len(p) for p in prompts]
    T = max(lengths)
    idx = torch.zeros(B, T, dtype=torch.int64, device=device)  # (B, T), right-padded with id 0
    for row, prompt in enumerate(prompts):
        idx[row, : lengths[row]] = prompt.to(device)
    last_logits = torch.empty(B, model.config.padded_vocab_size, device=device)  # (B, V_padded)
    chunk = max(1, tokens_per_chunk // B)
    for begin in range(0, T, chunk):
        end = min(T, begin + chunk)
        input_pos = torch.arange(start + begin, start + end, device=device)  # (t,)
        ending = [row for row in range(B) if begin <= lengths[row] - 1 < end]  # rows whose prompt ends here
        rows = torch.tensor(ending, dtype=torch.int64, device=device)  # (n,)
        cols = torch.tensor([lengths[row] - 1 - begin for row in ending], dtype=torch.int64, device=device)  # (n,)
        with head_at(model, rows, cols):  # the LM head maps only the prompts' last positions
            logits = model(idx[:, begin:end], input_pos=input_pos, input_pos_maxp1=start + end)  # (n, V_padded)
        if ending:
            last_logits[rows] = logits.to(last_logits.dtype)
    next_pos = start + torch.tensor(lengths, device=device).view(B, 1)  # (B, 1)
    return sampler(last_logits, next_pos), next_pos


@torch.inference_mode()  # every token and position is an inference tensor: the compiled step sees one kind
def generate_tokens(
    model: GPT, prompts: list[torch.Tensor], max_new_tokens: int, sampler: Sampler, step: DecodeStep, start: int = 0
) -> Iterator[torch.Tensor]:
    """Yield the new tokens (B, 1), one device tensor per position; the KV cache must already be set and hold
    the conversation so far in its first `start` positions.

    Nothing here syncs with the host: a caller that never looks at the values runs fully asynchronously.
    """
    token, input_pos = prefill(model, prompts, sampler, start)
    yield token
    for _ in range(max_new_tokens - 1):
        token = step(token, input_pos)
        input_pos = input_pos + 1
        yield token


def trim_at_stop(ids: list[int], stop_tokens: list[list[int]]) -> tuple[list[int], bool]:
    """Cut ids before the earliest stop sequence; also says whether one was found."""
    cut = len(ids)
    for stop in stop_tokens:
        n = len(stop)
        for i in range(len(ids) - n + 1):
            if i >= cut:
                break
            if ids[i : i + n] == stop:
                cut = i
                break
    return ids[:cut], cut < len(ids)


def generate(
    model: GPT,
    prompts: list[torch.Tensor],
    max_new_tokens: int,
    sampler: Sampler,
    step: DecodeStep,
    stop_tokens: list[list[int]] = (),
    check_every: int = 16,
    stream: Optional[TextIO] = None,
    tokenizer: Optional[Tokenizer] = None,
) -> tuple[list[list[int]], float]:
    """Generate for every prompt at once: each row's new ids, cut before its first stop sequence, and the
    seconds until the first tokens were ready.

    Single-token stops are looked for on the device every `check_every` tokens, over the tokens since the last look
    (one search, not one a token), and the host reads the result then, to end early once every row has stopped.
    With `stream` (and the `tokenizer` to decode with), the first row's text is written to it as it comes
    (`stream_tokens`: the text of the ids returned for that row), while the other rows run beside it.
    """
    t0 = time.perf_counter()
    device = model.lm_head.weight.device
    B = len(prompts)
    out = torch.empty(B, max_new_tokens, dtype=torch.int64, device=device)  # (B, max_new_tokens)
    single = [s[0] for s in stop_tokens if len(s) == 1]
    stop_ids = torch.tensor(single, dtype=torch.int64, device=device)
    stopped = torch.zeros(B, 1, dtype=torch.bool, device=device)
    n, time_to_first = 0, 0.0

    def recorded() -> Iterator[torch.Tensor]:  # every row's tokens into `out`, until every row has stopped
        nonlocal n, time_to_first, stopped
        for n, token in enumerate(generate_tokens(model, prompts, max_new_tokens, sampler, step), start=1):
            out[:, n - 1 : n] = token
            if n == 1:
                synchronize(device)
                time_to_first = time.perf_counter() - t0
            yield token
            if single and n % check_every == 0:
                stopped |= torch.isin(out[:, n - check_every : n], stop_ids).any(dim=-1, keepdim=True)  # (B, 1)
                if bool(stopped.all()):
                    return

    tokens = recorded()
    if stream is not None:
        if tokenizer is None:
            raise ValueError("streaming needs the tokenizer to decode with")
        stream_tokens((token[:1] for token in tokens), tokenizer, stop_tokens, stream)  # (1, 1) each
    for _ in tokens:  # the rest: all of it without a stream, the rows still running after the streamed one stopped
        pass
    rows = out[:, :n].tolist()
    return [trim_at_stop(row, list(stop_tokens))[0] for row in rows], time_to_first


class StopMatcher:
    """Finds token-id stop sequences in a stream of ids, one id at a time, with O(1) amortised work per id
    (O(longest stop sequence) at worst).

    An Aho-Corasick automaton over the stop sequences: the state is the longest suffix of the stream that is
    a prefix of some stop sequence, so `held` (its length) is how many of the latest ids could still turn out
    to start a stop sequence, and every id before them is safe to print.
    """

    def __init__(self, stop_tokens: Sequence[Sequence[int]]) -> None:
        self._goto: list[dict[int, int]] = [{}]  # state -> {id: next state}; state 0 is the empty prefix
        self._depth = [0]  # state -> length of its prefix
        terminal = [False]
        for i, stop in enumerate(stop_tokens):
            if len(stop) == 0:
                raise ValueError(f"stop sequence {i} is empty; every stop sequence needs at least one token id")
            state = 0
            for token_id in stop:
                token_id = int(token_id)
                nxt = self._goto[state].get(token_id)
                if nxt is None:
                    nxt = len(self._goto)
                    self._goto[state][token_id] = nxt
                    self._goto.append({})
                    self._depth.append(self._depth[state] + 1)
                    terminal.append(False)
                state = nxt
            terminal[state] = True
        n = len(self._goto)
        self._fail = [0] * n  # state -> state of its longest proper suffix that is also a prefix
        self._match = [0] * n  # state -> length of the longest stop sequence that is a suffix of it (0: none)
        queue = deque(self._goto[0].values())
        for state in queue:
            self._match[state] = self._depth[state] if terminal[state] else 0
        while queue:  # breadth first: a state's failure link is resolved before its children's
            state = queue.popleft()
            for token_id, nxt in self._goto[state].items():
                fail = self._fail[state]
                while fail and token_id not in self._goto[fail]:
                    fail = self._fail[fail]
                self._fail[nxt] = self._goto[fail].get(token_id, 0)
                self._match[nxt] = self._depth[nxt] if terminal[nxt] else self._match[self._fail[nxt]]
                queue.append(nxt)
        self._state = 0

    def push(self, token_id: int) -> int:
        """Add one id; return the length of the longest stop sequence that ends with it (0: none ends here)."""
        state, goto, fail = self._state, self._goto, self._fail
        while state and token_id not in goto[state]:
            state = fail[state]
        self._state = goto[state].get(token_id, 0)
        return self._match[self._state]

    @property
    def held(self) -> int:
        """How many of the latest ids could still be the start of a stop sequence."""
        return self._depth[self._state]


def stream_tokens(
    tokens: Iterable[torch.Tensor],
    tokenizer: Tokenizer,
    stop_tokens: Sequence[Sequence[int]],
    out: TextIO,
    *,
    read_ahead: Optional[int] = None,
) -> tuple[list[int], list[int], float]:
    """Write the text of a batch-of-one token stream to `out` as it comes and stop at the first stop sequence.
    Returns the ids without the stop sequence, every id taken from the stream (the stop sequence included) and
    the seconds to the first token.

    The ids kept are `trim_at_stop(taken, stop_tokens)[0]` and the text written is `tokenizer.decode` of them.
    The work per token does not grow with the stream: stops are matched incrementally (`StopMatcher`, which
    holds back only the ids that could still become a stop sequence, so nothing of one is ever written) and
    text is decoded incrementally (`IncrementalDecoder`, which waits for a split character's last byte).

    The host reads each token when it is needed to match stops and print. With `read_ahead` n, the next n tokens
    are asked of the stream first, which queues their decode steps on the device, and the read waits for this
    token's step alone (`_host_ids`), so the device computes while the host prints (n tokens past a stop are then
    computed and dropped). Default: 2 when the tokens live on CUDA, 0 on the CPU, where it would only add tokens.
    """
    pieces = stream_pieces(tokens, tokenizer, stop_tokens, read_ahead=read_ahead)
    while True:
        try:
            _write(out, next(pieces))
        except StopIteration as done:
            return done.value


def stream_pieces(
    tokens: Iterable[torch.Tensor],
    tokenizer: Tokenizer,
    stop_tokens: Sequence[Sequence[int]],
    *,
    read_ahead: Optional[int] = None,
) -> Generator[str, None, tuple[list[int], list[int], float]]:
    """`stream_tokens` as a generator: yields each non-empty piece of text as it is decoded (what `stream_tokens`
    writes) and returns (kept ids, taken ids, seconds to the first token) when the stream ends. Tokens are asked of
    `tokens` only as pieces are asked for, so a consumer that stops early stops the decode too."""
    t0 = time.perf_counter()
    matcher = StopMatcher(stop_tokens)
    decoder = IncrementalDecoder(tokenizer)
    ids: list[int] = []
    released, stop_len, time_to_first = 0, 0, 0.0  # released: ids handed to the decoder
    for token_id in _host_ids(tokens, read_ahead):
        ids.append(token_id)
        if len(ids) == 1:
            time_to_first = time.perf_counter() - t0
        stop_len = matcher.push(ids[-1])
        if stop_len:
            break
        safe = len(ids) - matcher.held  # ids[:safe] can no longer be part of a stop sequence
        text = "".join(decoder.push(i) for i in ids[released:safe])
        released = safe
        if text:
            yield text
    kept = ids[: len(ids) - stop_len]  # the stop sequence started after `released`: it was held back
    text = "".join(decoder.push(i) for i in kept[released:]) + decoder.flush()
    if text:
        yield text
    return kept, ids, time_to_first


def _host_ids(tokens: Iterable[torch.Tensor], read_ahead: Optional[int]) -> Iterator[int]:
    """The id of each (1, 1) token of `tokens` on the host, in order, with up to `read_ahead` later tokens asked for
    (their steps queued on the device) before one is read. Default: 2 when the tokens live on CUDA, else 0.

    On CUDA each token is copied to pinned host memory as soon as it is asked for, with an event after the copy;
    reading it waits for that event alone, not for the steps queued behind it (a plain `int(token)` would wait for
    the whole stream), so the device runs the next steps while the host prints. The first token is read at once.
    """
    iterator = iter(tokens)
    first = next(iterator, None)
    if first is None:
        return
    yield int(first)
    cuda = first.device.type == "cuda"
    if read_ahead is None:
        read_ahead = 2 if cuda else 0
    ring = [torch.empty((), dtype=first.dtype, pin_memory=True) for _ in range(read_ahead + 1)] if cuda else []
    events = [torch.cuda.Event() for _ in ring]
    pending: deque = deque()  # asked for, not yet read: (the tensor to read, the event to wait for or None)
    for n, token in enumerate(iterator):
        if cuda:
            slot = n % len(ring)  # free: the token that used it was read before this one was asked for
            ring[slot].copy_(token.view(()), non_blocking=True)
            events[slot].record()
            pending.append((ring[slot], events[slot]))
        else:
            pending.append((token, None))
        if len(pending) > read_ahead:
            yield _read(*pending.popleft())
    while pending:
        yield _read(*pending.popleft())


def _read(host: torch.Tensor, event: Optional[torch.cuda.Event]) -> int:
    if event is not None:
        event.synchronize()
    return int(host)


def _write(out: TextIO, text: str) -> None:
    if text:
        out.write(text)
        out.flush()


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    """Peak CUDA memory allocated on `device`, or this process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "CUDA allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process RSS"
