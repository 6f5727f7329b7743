"""The serving engine: continuous batching over a paged KV cache.

One loop, in a background thread, repeats a step: take new requests and aborts, run this step's prefill chunks
(`litgpt.serve.scheduler.Scheduler` decides which: at most `max_prefill_tokens` tokens, so a long prompt delays the
running decodes by a bounded time; chunks over the same positions, such as new prompts of one length, share one
forward), then queue one decode step for every decoding sequence, one forward over the
smallest bucket of rows that holds them (captured as a CUDA graph per bucket on CUDA; rows without a decoding
sequence read and write the scratch page at position 0 and their outputs are ignored), then read back the previous
decode step's tokens and hand each request its token. The host never waits for the step it just queued: a step's
input tokens are the last step's outputs where they are, on the device, so the device runs the next step while the
host does a step's text work (incremental detokenizing, stop strings, events) and plans the one after. A sequence
retires when the host reads the token that ends it (a stop token, a stop string, max_tokens); a step queued
meanwhile drew one more token for it, which is dropped (max_tokens is known ahead, so no step draws past it). Its
row and pages are free for the next step's admissions (the device runs the queued step before any later use).

Each row samples with its own settings, held as device tensors (`litgpt.generate.base.RowSampler`). The noise of a
draw is a hash of (the request's seed, the position of the token drawn, the token id), so a request with a seed
gets the same tokens whatever runs beside it, in whichever row, and the same as `LLM.generate` with that seed for
that prompt alone. Logprobs are the model's own distribution (log-softmax of the logits, before temperature,
top-k and top-p), as vLLM and OpenAI report them.

The engine knows nothing of HTTP (`litgpt.serve.api` does) and nothing of how pages are laid out on the device
(`GPT.set_paged_kv_cache`); it owns the page pool's bookkeeping (`litgpt.serve.paged`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import AsyncIterator, Generic, Iterator, Optional, Sequence, TypeVar, Union

import torch

from litgpt.fold import check_foldable, fold_for_decode, unfold
from litgpt.generate.base import (
    DECODE_MODES,
    DecodeStep,
    RowSampler,
    RowSamplingParams,
    SamplingParams,
    StopMatcher,
    head_at,
    sample_rows,
    token_logprobs,
)
from litgpt.kernels import set_kernels
from litgpt.kernels.sampling import token_hashes
from litgpt.kv_cache import check_kv_cache_dtype, kv_cache_bytes_per_token
from litgpt.lora import merge_for_decoding
from litgpt.model import GPT
from litgpt.quantize import has_quantized_weights
from litgpt.serve.paged import BlockTables, PagePool
from litgpt.serve.scheduler import PrefillChunk, Scheduler, Sequence as Seq, Status
from litgpt.tokenizer import IncrementalDecoder, Tokenizer

log = logging.getLogger(__name__)

MAX_TOP_LOGPROBS = 20  # the most alternatives per token a request may ask for (OpenAI's chat limit)
CUDA_FREE_MEMORY_FRACTION = 0.8  # of the free GPU memory the page pool takes when kv_cache_gib is not given


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt's generation. temperature 0 is greedy; top_k None and top_p 1.0 keep the whole vocabulary; seed
    makes the request reproducible whatever runs beside it (None: a fresh random seed); stop strings end the text
    before them; logprobs n: each generated token's logprob and the n likeliest alternatives; prompt_logprobs: the
    logprob of each prompt token given the ones before (with logprobs n, their n alternatives too)."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    temperature: float = 0.0
    top_k: Optional[int] = None
    top_p: float = 1.0
    seed: Optional[int] = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: Optional[int] = None
    prompt_logprobs: bool = False


@dataclass
class TokenEvent:
    """One generated token and the text it releases. The last event of a request has a finish_reason: "stop" (a
    stop token, which is not reported as a token, or a stop string, which its text ends before), "length"
    (max_tokens) or "abort". prompt_logprobs (and, with logprobs n, prompt_top_logprobs) come on the first event."""

    token_id: Optional[int]  # None on a final event that carries no token
    text: str  # newly released text (held back while a stop string may be forming)
    logprob: Optional[float] = None
    top_logprobs: Optional[dict[int, float]] = None
    prompt_logprobs: Optional[list[Optional[float]]] = None  # on the first event only, when asked (first is None)
    finish_reason: Optional[str] = None  # "stop" | "length" | "abort" on the last event
    prompt_top_logprobs: Optional[list[Optional[dict[int, float]]]] = None  # with prompt_logprobs and logprobs n


class QueueFull(Exception):
    """`Engine.submit` when max_queue requests already wait."""


class RequestStream:
    """The events of one request, in order, ending with the one that has a finish_reason. Iterate it from a thread
    (blocking) or from an asyncio loop (`async for`), once. If the engine fails, iteration raises RuntimeError."""

    def __init__(self, request_id: int, prompt_tokens: int) -> None:
        self.request_id, self.prompt_tokens = request_id, prompt_tokens
        self.finished = False  # the last event was handed over
        self._lock = threading.Lock()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._async: Optional[tuple[asyncio.AbstractEventLoop, LoopInbox]] = None

    def _put(self, item: Union[TokenEvent, BaseException]) -> None:
        """Hand over an event (or the engine's failure) now, from the engine's thread."""
        target = self._route(item)
        if target is not None:
            _post_to_loop(target[0], [(target[1], item)])

    def _route(self, item: Union[TokenEvent, BaseException]) -> Optional[tuple[asyncio.AbstractEventLoop,
                                                                              "LoopInbox"]]:
        """Take an event: a consumer that iterates from a thread has it at once (None); for one that iterates in an
        asyncio loop, the (loop, inbox) it must be posted to (`Outbox` posts a step's events at once)."""
        with self._lock:
            if isinstance(item, BaseException) or item.finish_reason is not None:
                self.finished = True
            if self._async is None:
                self._events.put(item)
                return None
            return self._async

    @staticmethod
    def _last(item: Union[TokenEvent, BaseException]) -> bool:
        if isinstance(item, BaseException):
            raise RuntimeError(f"the engine failed: {item}") from item
        return item.finish_reason is not None

    def __iter__(self) -> Iterator[TokenEvent]:
        while True:
            item = self._events.get()
            last = self._last(item)
            yield item
            if last:
                return

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[TokenEvent]:
        async for batch in self.batches():
            for item in batch:
                yield item

    async def batches(self) -> AsyncIterator[list[TokenEvent]]:
        """The events from an asyncio loop in lists, each holding every event that had come when the consumer
        asked (a consumer that lags behind the engine catches up in one write). If the engine fails, the events
        before the failure come first, then iteration raises RuntimeError."""
        events: LoopInbox[Union[TokenEvent, BaseException]] = LoopInbox()
        with self._lock:  # what came before this consumer first, then the engine posts to the loop directly
            if self._async is not None:
                raise RuntimeError(f"request {self.request_id}'s stream is already being iterated")
            while True:
                try:
                    events.put(self._events.get_nowait())
                except queue.Empty:
                    break
            self._async = (asyncio.get_running_loop(), events)
        while True:
            items = await events.take()
            batch = []
            for item in items:
                if isinstance(item, BaseException) and batch:
                    yield batch
                    batch = []
                last = self._last(item)  # raises on the engine's failure
                batch.append(item)
                if last:
                    yield batch
                    return
            yield batch


Item = TypeVar("Item")


class LoopInbox(Generic[Item]):
    """Items for one consumer in its asyncio loop: `put` (in the loop) appends, `take` waits for some and takes them
    all (a list and one future: an asyncio.Queue's per-item bookkeeping is what it saves)."""

    def __init__(self) -> None:
        self._items: list[Item] = []
        self._waiter: Optional[asyncio.Future] = None

    def put(self, item: Item) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def take(self) -> list[Item]:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items, self._items = self._items, []
        return items


Posting = tuple[LoopInbox, Union[TokenEvent, BaseException]]  # an event and the consumer's inbox it goes to


def _deliver(items: list[Posting]) -> None:
    """In the consumer's loop: each event into its inbox."""
    for events, item in items:
        events.put(item)


def _post_to_loop(loop: asyncio.AbstractEventLoop, items: list[Posting]) -> None:
    """Hand `items` to `loop` with one wake-up."""
    try:
        loop.call_soon_threadsafe(_deliver, items)
    except RuntimeError:  # the consumer's loop is closed: nobody listens any more
        pass


class Outbox:
    """The events of one engine step for consumers in asyncio loops, posted with one wake-up per loop (a
    `call_soon_threadsafe` per event cost a write to the loop's self-pipe and a wake-up per token), in order."""

    def __init__(self) -> None:
        self._pending: dict[asyncio.AbstractEventLoop, list[Posting]] = {}

    def put(self, stream: RequestStream, item: Union[TokenEvent, BaseException]) -> None:
        """Hold `item` for `stream` until `flush` (a consumer iterating from a thread has it at once)."""
        target = stream._route(item)
        if target is not None:
            self._pending.setdefault(target[0], []).append((target[1], item))

    def flush(self) -> None:
        """Post what is held, one wake-up per loop."""
        pending, self._pending = self._pending, {}
        for loop, items in pending.items():
            _post_to_loop(loop, items)


class _StepOutputs:
    """Host copies of one decode step's outputs (pinned on CUDA, so the copies are queued behind the step): its
    tokens and, when asked, its logprobs and top ids. `read` waits for them."""

    def __init__(self, max_batch_size: int, pin: bool) -> None:
        self.pin = pin
        self.tokens = torch.zeros(max_batch_size, dtype=torch.int64, pin_memory=pin)  # (B,)
        self.logprobs: Optional[torch.Tensor] = None  # (B, 1 + n), allocated at the first step that asks
        self.top_ids: Optional[torch.Tensor] = None  # (B, n)
        self.rows, self.with_logprobs = 0, False
        self.done: Optional[torch.cuda.Event] = None

    def copy_from(self, tokens: torch.Tensor, sampler: Optional[RowSampler]) -> "_StepOutputs":
        """Queue the copies of a step's tokens (rows, 1) and, with `sampler`, of its logprobs and top ids."""
        self.rows, self.with_logprobs = tokens.size(0), sampler is not None
        self.tokens[: self.rows].copy_(tokens.view(-1), non_blocking=True)
        if sampler is not None:
            if self.logprobs is None or self.logprobs.shape[1:] != sampler.logprobs.shape[1:]:
                B = self.tokens.size(0)
                self.logprobs = torch.zeros(B, *sampler.logprobs.shape[1:], pin_memory=self.pin)
                self.top_ids = torch.zeros(B, *sampler.top_ids.shape[1:], dtype=torch.int64, pin_memory=self.pin)
            self.logprobs[: self.rows].copy_(sampler.logprobs, non_blocking=True)
            self.top_ids[: self.rows].copy_(sampler.top_ids, non_blocking=True)
        if tokens.is_cuda:
            self.done = torch.cuda.Event()
            self.done.record()
        return self

    def read(self) -> tuple[list[int], Optional[list[list[float]]], Optional[list[list[int]]]]:
        """The step's tokens per row, and its logprobs and top ids per row (None when not asked), once copied."""
        if self.done is not None:
            self.done.synchronize()
        rows = self.rows
        if not self.with_logprobs:
            return self.tokens[:rows].tolist(), None, None
        return self.tokens[:rows].tolist(), self.logprobs[:rows].tolist(), self.top_ids[:rows].tolist()


@dataclass
class _Queued:
    """A decode step on the device whose tokens the host has not read: each request in it with its row."""

    entries: list[tuple["_Live", int]]
    out: _StepOutputs


@dataclass(eq=False)
class _Live:
    """A request the engine holds: its sequence, its stream, and the state of its text."""

    request: GenerationRequest
    stream: RequestStream
    seq: Seq
    params: SamplingParams
    seed: int
    decoder: IncrementalDecoder
    matcher: Optional[StopMatcher]  # over the characters of the stop strings
    pending: str = ""  # text decoded but held back: it may be the start of a stop string
    started: bool = False  # its first event is out
    prompt_logprobs: list[Optional[float]] = field(default_factory=list)
    prompt_top: list[Optional[dict[int, float]]] = field(default_factory=list)

    draw: str = field(init=False)  # the least work that draws its tokens (`litgpt.generate.base.ROW_DRAWS`)

    def __post_init__(self) -> None:
        p = self.params
        self.draw = "greedy" if p.greedy else "filter" if p.top_k is not None or p.top_p < 1.0 else "sample"


def widest_draw(items: Sequence[_Live]) -> str:
    """The draw that serves every one of items in one batch: a row's own settings make a wider draw give the
    tokens its own would (greedy rows take the argmax in any draw)."""
    draws = {item.draw for item in items}
    return "filter" if "filter" in draws else "sample" if "sample" in draws else "greedy"


class Engine:
    """Continuous batching of `GenerationRequest`s over `model` with a paged KV cache.

    max_batch_size: rows of the decode step (sequences decoding at once). kv_cache_gib: the page pool's memory
    (`litgpt.kv_cache.kv_cache_bytes_per_token` per token); default on CUDA CUDA_FREE_MEMORY_FRACTION of the free
    memory, on the CPU enough for max_batch_size sequences of model.max_seq_length tokens. page_size: tokens per
    page. max_prefill_tokens: prompt tokens prefilled per step. max_queue: requests that may wait before `submit`
    raises QueueFull. stop_token_ids: ids that end a sequence (e.g. the tokenizer's eos_id), unless a request
    ignores them. prefix_caching: share full pages of equal prompt prefixes. mode: the decode step's mode
    (`litgpt.generate.base.DECODE_MODES`; default "cuda_graph" on CUDA, "eager" on the CPU). kv_cache_dtype: the
    pool's format, None (the model's dtype) or "fp8_e4m3" (e4m3 values with float32 scales, `litgpt.kv_cache`); the
    pool's size in pages counts its bytes per token.

    The model is put in eval mode, gets its kernels switched on, a LoRA model is merged, and its decode weights are
    folded at the first decode step (unless quantized), as in `litgpt.generate.session.DecodeSession`; the model's
    KV cache becomes the paged one (`GPT.clear_kv_cache` removes it).
    """

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        max_batch_size: int = 64,
        kv_cache_gib: Optional[float] = None,
        page_size: int = 16,
        max_prefill_tokens: int = 8192,
        max_queue: int = 1024,
        stop_token_ids: Sequence[int] = (),
        prefix_caching: bool = True,
        mode: Optional[str] = None,
        kv_cache_dtype: Optional[str] = None,
    ) -> None:
        check_kv_cache_dtype(kv_cache_dtype)
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1 token, got {page_size}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.device = model.lm_head.weight.device
        if mode is None:
            mode = "cuda_graph" if self.device.type == "cuda" else "eager"
        if mode not in DECODE_MODES:
            raise ValueError(f"mode must be one of {', '.join(DECODE_MODES)}, got {mode!r}")
        self.model, self.tokenizer, self.mode = model.eval(), tokenizer, mode
        self.max_batch_size, self.page_size, self.max_queue = max_batch_size, page_size, max_queue
        self.stop_token_ids = frozenset(int(i) for i in stop_token_ids)
        self.context = model.max_seq_length
        self.vocab_size = model.config.vocab_size

        set_kernels(model, True)
        merge_for_decoding(model, "Engine")
        fold = not has_quantized_weights(model)
        if fold:
            check_foldable(model)
        else:
            unfold(model)
        dtype = model.transformer.wte.weight.dtype
        self.bytes_per_token = kv_cache_bytes_per_token(model.config, dtype, kv_cache_dtype)
        num_pages = self._num_pages(kv_cache_gib, max_batch_size, page_size)
        model.set_paged_kv_cache(num_pages, page_size, device=self.device, dtype=dtype, kv_cache_dtype=kv_cache_dtype)
        self.pool = PagePool(num_pages, page_size)
        self.scheduler = Scheduler(self.pool, max_batch_size, max_prefill_tokens, prefix_caching)
        self.max_pages = self.pool.pages_for(self.context)
        self.block_tables = BlockTables(max_batch_size, self.max_pages, self.device)
        self.row_params = RowSamplingParams(max_batch_size, self.vocab_size, self.device)
        self._token_hash = token_hashes(torch.arange(self.vocab_size, device=self.device)).view(1, -1)  # (1, V)
        pin = self.device.type == "cuda"
        # the decode step's inputs from the host, one host-to-device copy a step: each row's token where the host
        # knows it (a sequence's first decode step), its position, and whether the token is given (else the row's
        # input is the last step's output, already in self._tokens)
        self._host_inputs = torch.zeros(3, max_batch_size, dtype=torch.int64, pin_memory=pin)  # (3, B)
        self._host_view = self._host_inputs.numpy()  # the same memory, written row by row without a tensor per step
        self._staged = torch.zeros(3, max_batch_size, 1, dtype=torch.int64, device=self.device)  # (3, B, 1)
        self._tokens = torch.zeros(max_batch_size, 1, dtype=torch.int64, device=self.device)  # (B, 1) next inputs
        # the host copies of two steps' outputs (the one being read and the one queued): tokens, logprobs, top ids
        self._outputs = [_StepOutputs(max_batch_size, pin) for _ in range(2)]
        self._queued: Optional[_Queued] = None  # the decode step on the device whose tokens are not read yet
        # recorded after a step's host-to-device copies: pinned host buffers are written again only once it passed
        self._staging_done: Optional[torch.cuda.Event] = None
        self._table_rows: dict[int, Seq] = {}  # rows whose block table is set: the sequence it is set for
        # one decode step per (draw, logprobs, rows) kind, made at its first use; the first one made folds the
        # weights. A step runs `rows` rows, the smallest bucket (`row_bucket`) that covers the rows in use
        self._steps: dict[tuple[str, int, int], DecodeStep] = {}
        # one memory pool for every captured step (they never run at once), sized by the largest, captured first
        captured = mode in ("cuda_graph", "compile+cuda_graph") and self.device.type == "cuda"
        self._graph_pool = torch.cuda.graph_pool_handle() if captured else None
        self._fold_pending = fold
        self._outbox = Outbox()  # events for asyncio consumers, posted together after each batch of work

        self._live: dict[int, _Live] = {}  # request id -> request, from submit until its last event
        self._inbox: list[_Live] = []
        self._aborts: list[int] = []
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._stopping = self._drain = False
        self._failed: Optional[BaseException] = None
        self._next_id = 0
        self._seeds = random.SystemRandom()
        self.steps = self.generated_tokens = 0

    def _num_pages(self, kv_cache_gib: Optional[float], max_batch_size: int, page_size: int) -> int:
        page_bytes = self.bytes_per_token * page_size
        if kv_cache_gib is not None:
            if not (kv_cache_gib > 0 and math.isfinite(kv_cache_gib)):
                raise ValueError(f"kv_cache_gib must be a positive number of GiB, got {kv_cache_gib}")
            num_pages = int(kv_cache_gib * 2**30 // page_bytes)
            if num_pages < 2:
                raise ValueError(f"kv_cache_gib {kv_cache_gib} holds {num_pages} page(s) of {page_bytes} bytes; "
                                 "the pool needs at least 2 (page 0 is scratch): raise kv_cache_gib")
            return num_pages
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return max(2, int(free * CUDA_FREE_MEMORY_FRACTION // page_bytes))
        return max_batch_size * -(-self.context // page_size) + 1

    # ------------------------------------------------------------------------------------------------ public API
    def start(self) -> None:
        """Run the loop in a background thread (until `shutdown`)."""
        with self._cond:
            if self._thread is not None:
                raise RuntimeError("the engine is already started")
            if self._stopping:
                raise RuntimeError("the engine is shut down; make a new one")
            self._thread = threading.Thread(target=self._run, name="litgpt-serve-engine", daemon=True)
            self._thread.start()

    def submit(self, request: GenerationRequest) -> RequestStream:
        """Queue a request; its events come through the returned stream. ValueError (naming the field) for a bad
        request or one that cannot fit; QueueFull when max_queue requests already wait; RuntimeError after
        shutdown or a failure."""
        seq_tokens = self._check(request)
        seed = self._seeds.getrandbits(32) if request.seed is None else int(request.seed)
        params = SamplingParams(float(request.temperature), request.top_k, float(request.top_p))
        matcher = StopMatcher([[ord(ch) for ch in stop] for stop in request.stop]) if request.stop else None
        with self._cond:
            if self._failed is not None:
                raise RuntimeError(f"the engine failed: {self._failed}")
            if self._stopping:
                raise RuntimeError("the engine is shutting down and takes no new requests")
            if len(self._inbox) + len(self.scheduler.waiting) >= self.max_queue:
                raise QueueFull(f"{self.max_queue} requests are already waiting (max_queue); retry later")
            request_id = self._next_id
            self._next_id += 1
            stream = RequestStream(request_id, len(seq_tokens))
            seq = Seq(request_id, seq_tokens, len(seq_tokens), len(seq_tokens) + request.max_tokens,
                      cacheable=not request.prompt_logprobs)
            live = _Live(request, stream, seq, params, seed, IncrementalDecoder(self.tokenizer), matcher)
            self._live[request_id] = live
            self._inbox.append(live)
            self._cond.notify()
        return stream

    def abort(self, stream: RequestStream) -> None:
        """End a request now (its client is gone): its row and pages are freed at the next step and its stream
        ends with finish_reason "abort". Nothing happens for a request that has already finished."""
        with self._cond:
            self._aborts.append(stream.request_id)
            self._cond.notify()

    def shutdown(self, drain: bool = True) -> None:
        """Stop taking requests; with `drain` finish every request accepted so far, else abort them; then stop the
        loop's thread."""
        with self._cond:
            self._stopping, self._drain = True, drain
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        elif self._failed is None:  # never started: finish or abort here
            self._run()

    def stats(self) -> dict:
        """Pages, sequences and counters, for the server's metrics and the benchmark."""
        return dict(
            free_pages=self.pool.free_pages,
            total_pages=self.pool.capacity,
            cached_pages=self.pool.cached_pages,
            page_size=self.page_size,
            kv_cache_bytes=self.pool.num_pages * self.page_size * self.bytes_per_token,
            kv_cache_bytes_per_token=self.bytes_per_token,
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting) + len(self._inbox),
            peak_running=self.scheduler.peak_running,
            max_batch_size=self.max_batch_size,
            preemptions=self.scheduler.preemptions,
            prefix_cached_tokens=self.scheduler.cached_tokens,
            steps=self.steps,
            generated_tokens=self.generated_tokens,
        )

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[TokenEvent]]:
        """Run `requests` to the end and return each one's events. With the loop started, this waits on it;
        otherwise it runs the loop's steps in the calling thread. More requests than max_queue are fed in as the
        queue drains."""
        streams = []
        for request in requests:
            while True:
                try:
                    streams.append(self.submit(request))
                    break
                except QueueFull:
                    if self._thread is None:
                        self._step()
                    else:
                        time.sleep(0.001)  # the loop drains the queue
        if self._thread is not None:
            return [list(stream) for stream in streams]
        while not all(stream.finished for stream in streams):
            self._step()
        return [list(stream) for stream in streams]

    # ------------------------------------------------------------------------------------------------ checks
    def _check(self, request: GenerationRequest) -> list[int]:
        """The prompt's ids, after one-line ValueErrors naming the field that is wrong."""
        ids = [int(i) for i in request.prompt_ids]
        if not ids:
            raise ValueError("prompt_ids is empty; a request needs at least one prompt token")
        bad = [i for i in ids if not 0 <= i < self.model.config.padded_vocab_size]
        if bad:
            raise ValueError(f"prompt_ids holds token id {bad[0]}, outside the model's vocabulary of "
                             f"{self.model.config.padded_vocab_size} ids")
        if not isinstance(request.max_tokens, int) or request.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {request.max_tokens!r}")
        total = len(ids) + request.max_tokens
        if total > self.context:
            raise ValueError(f"the prompt has {len(ids)} tokens and max_tokens is {request.max_tokens}: {total} "
                             f"exceeds the model's context of {self.context} tokens; shorten the prompt or lower "
                             "max_tokens")
        if self.pool.pages_for(total - 1) > self.pool.capacity:
            raise ValueError(f"the prompt and max_tokens need {self.pool.pages_for(total - 1)} pages, more than the "
                             f"KV cache's {self.pool.capacity}; lower max_tokens or raise kv_cache_gib")
        if not (math.isfinite(request.temperature) and request.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0 (0 is greedy), got {request.temperature}")
        if request.top_k is not None and (not isinstance(request.top_k, int) or request.top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {request.top_k!r}")
        if not 0.0 < request.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {request.top_p}")
        if request.logprobs is not None and not 0 <= request.logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {request.logprobs}")
        if request.seed is not None and not isinstance(request.seed, int):
            raise ValueError(f"seed must be an integer or None, got {request.seed!r}")
        if any(not isinstance(s, str) or not s for s in request.stop):
            raise ValueError("stop holds an empty or non-string entry; every stop string needs some text")
        return ids

    # ------------------------------------------------------------------------------------------------ the loop
    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (self._inbox or self._aborts or self.scheduler.has_work() or self._stopping):
                        self._cond.wait()
                    busy = bool(self._inbox or self._aborts or self.scheduler.has_work())
                    if self._stopping and not (self._drain and busy):
                        if busy:  # shut down without draining: everything accepted ends as aborted
                            self._aborts.extend(self._live)
                        else:
                            return
                self._step()
        except BaseException as error:  # every open stream learns of it; later submits are refused
            log.exception("the serving engine failed")
            with self._cond:
                self._failed = error
                live, self._live, self._inbox = list(self._live.values()), {}, []
            self._outbox.flush()
            for item in live:
                item.stream._put(error)

    @torch.inference_mode()
    def _step(self) -> None:
        """One step: new requests and aborts, this step's prefill chunks, one decode step."""
        with self._cond:
            inbox, self._inbox = self._inbox, []
            aborts, self._aborts = self._aborts, []
        if self._staging_done is not None:  # the last step's copies from pinned memory have run: it may be rewritten
            self._staging_done.synchronize()
        for item in inbox:
            self.scheduler.add(item.seq)
        if aborts:
            self._read_back()  # an aborted request's tokens in flight go out before its final event
        for request_id in aborts:
            item = self._live.get(request_id)
            if item is not None:
                self._finish(item, TokenEvent(None, "", finish_reason="abort"))
        chunks = self.scheduler.schedule_prefill()
        if chunks:
            self._prefill(chunks)
        decoding, _ = self.scheduler.schedule_decode()
        queued = self._queue_decode(decoding) if decoding else None
        self._read_back()  # the last step's tokens, while this one runs
        self._queued = queued
        self._outbox.flush()
        self.steps += 1

    def _prefill(self, chunks: list[PrefillChunk]) -> None:
        """Run this step's prefill chunks: chunks over the same positions share one forward, one row each (a step's
        new prompts of one length are one forward, not one each); a chunk whose prompt logprobs are asked for runs
        alone. At the end of a sequence's tokens, its next token is drawn."""
        groups: dict[tuple[int, int, int], list[PrefillChunk]] = {}
        for chunk in chunks:
            item = self._live[chunk.seq.seq_id]
            if chunk.start == chunk.seq.cached_tokens:  # its first chunk since it was admitted to this row
                self.row_params.set_row(chunk.seq.row, item.params, item.seed)
            alone = chunk.seq.seq_id if item.request.prompt_logprobs and not item.started else -1
            groups.setdefault((chunk.start, chunk.end, alone), []).append(chunk)
        self.row_params.sync()
        for group in groups.values():
            self._prefill_group(group)

    def _prefill_group(self, chunks: list[PrefillChunk]) -> None:
        """One forward over chunks of the same positions start..end-1, one row each; the sequences whose tokens
        end there draw their next token (one draw for all of them)."""
        start, end = chunks[0].start, chunks[0].end
        B, T, pages = len(chunks), end - start, self.pool.pages_for(end)
        idx = torch.tensor([c.seq.tokens[start:end] for c in chunks], device=self.device)  # (B, T)
        input_pos = torch.arange(start, end, device=self.device).repeat(B, 1)  # (B, T)
        # input_pos_maxp1: the attention gathers each sequence's first `end` positions, not all its pages (and a
        # first chunk from position 0 runs SDPA's causal kernels, no mask)
        table = torch.tensor([c.seq.pages[:pages] for c in chunks], dtype=torch.int32, device=self.device)  # (B, P)
        ending = [b for b, c in enumerate(chunks) if c.last]  # the rows whose sequence's tokens end here
        first = self._live[chunks[0].seq.seq_id]
        if first.request.prompt_logprobs and not first.started:  # alone: every position's logits
            logits = self.model(idx, input_pos, input_pos_maxp1=end, block_table=table)[0]  # (T, V_padded)
            self._prompt_logprobs(first, chunks[0], logits)
            logits = logits[-1:]  # (1, V_padded)
        else:  # the LM head maps the last position of the ending rows, nothing else
            batch_rows = torch.tensor(ending, dtype=torch.int64, device=self.device)  # (N,)
            with head_at(self.model, batch_rows, torch.full_like(batch_rows, T - 1)):
                logits = self.model(idx, input_pos, input_pos_maxp1=end, block_table=table)  # (N, V_padded)
        for chunk in chunks:
            self.scheduler.computed(chunk.seq, end)
        if not ending:
            return
        items = [self._live[chunks[b].seq.seq_id] for b in ending]
        p = self.row_params
        rows = torch.tensor([item.seq.row for item in items], device=self.device)  # (N,) their sampler rows
        position = torch.full((len(items), 1), end, dtype=torch.int64, device=self.device)  # (N, 1)
        tokens = sample_rows(logits, position, p.temperature[rows], p.top_k[rows], p.top_p[rows], p.row_seeds[rows],
                             self._token_hash, widest_draw(items))  # (N, 1)
        for n, (item, token) in enumerate(zip(items, tokens.view(-1).tolist())):
            logprob, top = None, None
            if item.request.logprobs is not None:
                k = item.request.logprobs
                top_ids = torch.zeros(1, k, dtype=torch.int64, device=self.device)
                values = token_logprobs(logits[n : n + 1], tokens[n : n + 1], top_ids, self.vocab_size)[0].tolist()
                logprob, top = values[0], dict(zip(top_ids[0].tolist(), values[1:]))
            item.seq.tokens.append(token)
            self.scheduler.prefilled(item.seq)
            self._emit(item, token, logprob, top)

    def _prompt_logprobs(self, item: _Live, chunk: PrefillChunk, logits: torch.Tensor) -> None:
        """The logprobs of the prompt tokens this chunk's logits (T, V_padded) predict (the first prompt token has
        none), and with logprobs n each position's n likeliest tokens."""
        seq = item.seq
        if chunk.start == 0:
            item.prompt_logprobs, item.prompt_top = [None], [None]
        end = min(chunk.end, seq.prompt_len - 1)  # positions start..end-1 predict prompt tokens start+1..end
        if end <= chunk.start:
            return
        logprobs = torch.log_softmax(logits[: end - chunk.start, : self.vocab_size].float(), dim=-1)  # (t, V)
        targets = torch.tensor(seq.tokens[chunk.start + 1 : end + 1], device=self.device).view(-1, 1)  # (t, 1)
        item.prompt_logprobs.extend(logprobs.gather(-1, targets).view(-1).tolist())
        n = item.request.logprobs
        if n:
            values, ids = logprobs.topk(min(n, self.vocab_size), dim=-1)  # (t, n)
            item.prompt_top.extend(dict(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist()))

    def row_bucket(self, rows_in_use: int) -> int:
        """The rows a decode step runs when rows 0..rows_in_use-1 may hold sequences: the next power of 2, at most
        max_batch_size (rows are handed out lowest first, so the step follows the load, not the capacity)."""
        return min(self.max_batch_size, 1 << max(rows_in_use - 1, 0).bit_length())

    def _decode_step(self, draw: str, top_logprobs: int, rows: int) -> DecodeStep:
        key = (draw, top_logprobs, rows)
        if key not in self._steps:
            first_call = partial(fold_for_decode, self.model) if self._fold_pending else None
            self._fold_pending = False
            sampler = RowSampler(self.row_params, draw, top_logprobs, rows)
            self._steps[key] = DecodeStep(self.model, sampler, self.mode, first_call=first_call,
                                          graph_pool=self._graph_pool)
        return self._steps[key]

    def capture(self) -> None:
        """Prepare the greedy decode step of every row bucket now (its CUDA graph or compiled code), rather than
        at each bucket's first use while requests wait; nothing to do in eager mode. Before `start`: the steps run
        on the scratch page."""
        if self.mode == "eager":
            return
        with self._cond:
            if self._thread is not None:
                raise RuntimeError("capture the decode steps before starting the engine")
        buckets = sorted({self.row_bucket(n) for n in range(1, self.max_batch_size + 1)}, reverse=True)
        for rows in buckets:  # the largest first: the shared pool takes its size, the smaller ones fit in it
            self._decode_step("greedy", 0, rows).prepare(rows, self.max_pages)

    def _queue_decode(self, decoding: list[Seq]) -> "_Queued":
        """Queue one decode step for every decoding sequence, in one forward over the rows of its bucket
        (`row_bucket`), without waiting for it: its tokens come to the host at the next `_read_back`. A sequence's
        input is its last token: from the host on its first decode step, else the last step's output on the device."""
        by_row = {seq.row: seq for seq in decoding}
        for row, seq in list(self._table_rows.items()):
            if by_row.get(row) is not seq:
                self.block_tables.clear(row)
                del self._table_rows[row]
        items = []
        for seq in decoding:
            self.block_tables.assign(seq.row, seq.pages)
            self._table_rows[seq.row] = seq
            items.append(self._live[seq.seq_id])
        rows = self.row_bucket(max(seq.row for seq in decoding) + 1)
        host = self._host_view[:, :rows]  # (3, rows): idle rows decode their last token again at position 0
        host.fill(0)
        fresh = [seq for seq in decoding if not seq.inflight]
        fresh_rows = [seq.row for seq in fresh]
        host[0, fresh_rows] = [seq.tokens[-1] for seq in fresh]
        host[2, fresh_rows] = 1
        host[1, list(by_row)] = [len(seq.tokens) - 1 + seq.inflight for seq in decoding]
        staged = self._staged[:, :rows]  # (3, rows, 1)
        staged.view(3, rows).copy_(self._host_inputs[:, :rows], non_blocking=True)
        self.row_params.sync()
        table = self.block_tables.sync()
        if self.device.type == "cuda":
            self._staging_done = torch.cuda.Event()
            self._staging_done.record()
        tokens = self._tokens[:rows]  # (rows, 1)
        torch.where(staged[2].bool(), staged[0], tokens, out=tokens)
        top_logprobs = MAX_TOP_LOGPROBS if any(item.request.logprobs is not None for item in items) else 0
        step = self._decode_step(widest_draw(items), top_logprobs, rows)
        next_tokens = step(tokens, staged[1], table[:rows])  # (rows, 1), queued on the device
        tokens.copy_(next_tokens)  # the next step's inputs
        for seq in decoding:
            seq.inflight += 1
        out = next(o for o in self._outputs if self._queued is None or o is not self._queued.out)  # the free one
        out.copy_from(next_tokens, step.sampler if top_logprobs else None)
        return _Queued([(item, item.seq.row) for item in items], out)

    def _read_back(self) -> None:
        """Hand out the tokens of the queued decode step (waiting for it): each sequence's token is appended and
        emitted, unless it finished meanwhile (its token is dropped). A sequence preempted meanwhile keeps its token
        (it is recomputed with it)."""
        queued, self._queued = self._queued, None
        if queued is None:
            return
        tokens, logprobs, top_ids = queued.out.read()
        for item, row in queued.entries:
            seq = item.seq
            if seq.status is Status.FINISHED:  # a stop token or stop string ended it, or it was aborted
                continue
            seq.inflight -= 1
            if seq.status is Status.DECODE:
                self.scheduler.computed(seq, len(seq.tokens))
            token = tokens[row]
            seq.tokens.append(token)
            logprob = top = None
            if item.request.logprobs is not None:
                values, n = logprobs[row], item.request.logprobs
                logprob, top = values[0], dict(zip(top_ids[row][:n], values[1 : 1 + n]))
            self._emit(item, token, logprob, top)

    # ------------------------------------------------------------------------------------------------ events
    def _emit(self, item: _Live, token: int, logprob: Optional[float], top: Optional[dict[int, float]]) -> None:
        """Hand the request its new token (the last of seq.tokens) and retire it if it is done."""
        self.generated_tokens += 1
        request, seq = item.request, item.seq
        first = {}
        if not item.started:
            item.started = True
            if request.prompt_logprobs:
                first = dict(prompt_logprobs=item.prompt_logprobs,
                             prompt_top_logprobs=item.prompt_top if request.logprobs else None)
        if token in self.stop_token_ids and not request.ignore_eos:
            text, _ = self._release(item, item.decoder.flush())
            self._finish(item, TokenEvent(None, text + item.pending, finish_reason="stop", **first))
            return
        text, stopped = self._release(item, item.decoder.push(token))
        finish = "stop" if stopped else "length" if seq.num_generated >= request.max_tokens else None
        if finish == "length":
            rest, stopped = self._release(item, item.decoder.flush())
            text += rest if stopped else rest + item.pending
            finish = "stop" if stopped else finish
        event = TokenEvent(token, text, logprob, top, finish_reason=finish, **first)
        if finish is None:
            self._outbox.put(item.stream, event)
        else:
            self._finish(item, event)

    def _release(self, item: _Live, text: str) -> tuple[str, bool]:
        """The part of newly decoded `text` that can go out, and whether a stop string ended it (the text then ends
        before the stop string). Without stop strings, all of it; with them, what cannot begin one is released and
        the rest waits in item.pending."""
        if item.matcher is None:
            return text, False
        for ch in text:
            item.pending += ch
            n = item.matcher.push(ord(ch))
            if n:
                out, item.pending = item.pending[: len(item.pending) - n], ""
                return out, True
        safe = len(item.pending) - item.matcher.held
        out, item.pending = item.pending[:safe], item.pending[safe:]
        return out, False

    def _finish(self, item: _Live, event: TokenEvent) -> None:
        """Retire a request: its row and pages go back, its stream gets its last event."""
        self.scheduler.finish(item.seq)
        with self._cond:
            self._live.pop(item.seq.seq_id, None)
            if item in self._inbox:
                self._inbox.remove(item)
        item.pending = ""
        self._outbox.put(item.stream, event)
