"""Who runs, who waits, who is preempted: the engine's scheduling, as host bookkeeping over a `PagePool`.

A sequence waits (first come, first served) until a batch row and the pages for its whole prompt are free, then
prefills in chunks (at most `max_prefill_tokens` tokens per step over all sequences), then decodes one token a step
in its row. Before each decode step every decoding sequence gets the page its next token goes to; when the pool has
none left, the newest running sequence is preempted: its pages go back to the pool and it waits again at the front of
the queue, to be recomputed (prompt and the tokens generated so far prefilled again) when pages allow. Nothing is
dropped. With prefix caching, full pages are registered as they fill, and a sequence admitted with a known prefix
takes those pages and prefills only the rest (a preempted sequence usually finds its own pages still cached).
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from litgpt.serve.paged import PagePool, PrefixKey, page_keys


class Status(Enum):
    WAITING = "waiting"
    PREFILL = "prefill"
    DECODE = "decode"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One request's tokens and where they live. `tokens` is the prompt then the tokens generated so far (as the host
    knows them); the cache holds the first `num_computed` of them. While decoding, num_computed == len(tokens) - 1:
    the last token is the next step's input. `inflight`: tokens drawn by decode steps queued on the device and not
    yet read back (the engine queues a step before reading the last one's tokens), which the next step's position
    and pages count. `max_len`: the prompt and every token it may draw (prompt_len + max_tokens; None: no bound).
    `cacheable`: whether its prompt may be taken from the prefix cache (False while its prompt's logprobs are still
    to be computed, which need every prompt position's logits)."""

    seq_id: int
    tokens: list[int]
    prompt_len: int
    max_len: Optional[int] = None  # None: no bound
    cacheable: bool = True
    status: Status = Status.WAITING
    row: Optional[int] = None
    pages: list[int] = field(default_factory=list)
    num_computed: int = 0
    cached_tokens: int = 0  # tokens of the last admission taken from the prefix cache
    keys: list[PrefixKey] = field(default_factory=list)  # prefix keys of its registered full pages, in order
    admitted: int = -1  # admission order: the largest is the newest running sequence
    preemptions: int = 0
    inflight: int = 0

    @property
    def num_generated(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def drawing(self) -> bool:
        """It has tokens left to draw beyond those known and in flight."""
        return self.max_len is None or len(self.tokens) + self.inflight < self.max_len


@dataclass(frozen=True)
class PrefillChunk:
    """Prefill tokens[start:end] of `seq` this step; `last`: the chunk reaches the end of its tokens, so its last
    position's logits give the next token."""

    seq: Sequence
    start: int
    end: int

    @property
    def last(self) -> bool:
        return self.end == len(self.seq.tokens)


class Scheduler:
    """Admission, chunked prefill, page growth and preemption over `max_batch` rows and a `PagePool`."""

    def __init__(self, pool: PagePool, max_batch: int, max_prefill_tokens: int, prefix_caching: bool = True) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch}")
        if max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens must be >= 1, got {max_prefill_tokens}")
        self.pool, self.max_batch, self.max_prefill_tokens = pool, max_batch, max_prefill_tokens
        self.prefix_caching = prefix_caching
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self._free_rows = list(range(max_batch))  # a heap: the lowest free row first
        self._admissions = 0
        self.preemptions = 0
        self.cached_tokens = 0  # prompt tokens taken from the prefix cache instead of prefilled
        self.peak_running = 0

    # ------------------------------------------------------------------------------------------------ queue
    def add(self, seq: Sequence) -> None:
        """Queue a new sequence behind those waiting."""
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ------------------------------------------------------------------------------------------------ prefill
    def schedule_prefill(self) -> list[PrefillChunk]:
        """This step's prefill chunks, at most max_prefill_tokens tokens in all: first the sequences already
        prefilling (oldest first), then new admissions in queue order while a row, the pages and the budget allow.
        The queue is never overtaken: admission stops at the first sequence that cannot be admitted."""
        budget, chunks = self.max_prefill_tokens, []
        for seq in self.running:
            if budget == 0:
                return chunks
            if seq.status is Status.PREFILL:
                chunks.append(self._chunk(seq, budget))
                budget -= chunks[-1].end - chunks[-1].start
        while budget > 0 and self.waiting and self._admit(self.waiting[0]):
            seq = self.waiting.popleft()
            chunks.append(self._chunk(seq, budget))
            budget -= chunks[-1].end - chunks[-1].start
        return chunks

    def _chunk(self, seq: Sequence, budget: int) -> PrefillChunk:
        return PrefillChunk(seq, seq.num_computed, min(len(seq.tokens), seq.num_computed + budget))

    def _admit(self, seq: Sequence) -> bool:
        """Give seq a row and the pages for all its tokens (cached prefix pages first), or change nothing and return
        False. Admission leaves one free page per running sequence, so that the next decode step's page growth does
        not preempt what was just admitted."""
        if not self._free_rows:
            return False
        pool, n = self.pool, len(seq.tokens)
        keys = self._keys(seq, (n - 1) // pool.page_size) if self.prefix_caching and seq.cacheable else []
        cached = pool.match_prefix(keys)  # at least the last token is computed: its logits give the next token
        needed = pool.pages_for(n) - len(cached)
        fresh = pool.allocate(needed) if pool.free_pages - needed >= len(self.running) else None
        if fresh is None:
            pool.free(cached)
            return False
        seq.pages = cached + fresh
        seq.keys = keys[: len(cached)]
        seq.num_computed = seq.cached_tokens = len(cached) * pool.page_size
        self.cached_tokens += seq.cached_tokens
        seq.row = heapq.heappop(self._free_rows)
        seq.status = Status.PREFILL
        seq.admitted = self._admissions
        self._admissions += 1
        self.running.append(seq)
        self.peak_running = max(self.peak_running, len(self.running))
        return True

    def _keys(self, seq: Sequence, num_pages: int) -> list[PrefixKey]:
        """Prefix keys of seq's first num_pages full pages, reusing the ones it registered before."""
        known = seq.keys[:num_pages]
        parent = known[-1] if known else None
        return known + page_keys(seq.tokens, self.pool.page_size, num_pages - len(known), parent, len(known))

    def computed(self, seq: Sequence, end: int) -> None:
        """seq's cache now holds tokens[:end]: a prefill chunk ran, or a decode step wrote token end - 1. Registers
        the pages that filled (with prefix caching)."""
        seq.num_computed = end
        if not self.prefix_caching:
            return
        full = end // self.pool.page_size
        if full > len(seq.keys):
            new = self._keys(seq, full)[len(seq.keys) :]
            for page, key in zip(seq.pages[len(seq.keys) : full], new):
                self.pool.register(page, key)
            seq.keys.extend(new)

    def prefilled(self, seq: Sequence) -> None:
        """seq's prefill has ended and its next token was appended: it decodes from the next step on."""
        seq.status = Status.DECODE
        seq.cacheable = True  # its prompt's logprobs are out: a recompute may take cached pages

    # ------------------------------------------------------------------------------------------------ decode
    def schedule_decode(self) -> tuple[list[Sequence], list[Sequence]]:
        """The sequences that decode this step (each with the page its input token goes to: the one at position
        len(tokens) - 1 + inflight), and those preempted to make room. A sequence whose last token is already in
        flight does not decode. Pages are found oldest sequence first; when none is free the newest running sequence
        is preempted, possibly the one asking."""
        preempted: list[Sequence] = []
        for seq in list(self.running):
            if seq.status is not Status.DECODE or not seq.drawing:
                continue
            while seq.status is Status.DECODE and len(seq.pages) < self.pool.pages_for(len(seq.tokens) + seq.inflight):
                page = self.pool.allocate(1)
                if page is not None:
                    seq.pages.extend(page)
                    break
                victim = max(self.running, key=lambda s: s.admitted)
                self.preempt(victim)
                preempted.append(victim)
        return [s for s in self.running if s.status is Status.DECODE and s.drawing], preempted

    def preempt(self, seq: Sequence) -> None:
        """Free seq's row and pages and queue it first, to be recomputed from its tokens."""
        self._release(seq)
        seq.status = Status.WAITING
        seq.num_computed = 0
        seq.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(seq)

    # ------------------------------------------------------------------------------------------------ retire
    def finish(self, seq: Sequence) -> None:
        """seq is done (finished or aborted): its row and pages go back, wherever it was."""
        if seq.status is Status.WAITING:
            self.waiting.remove(seq)
        elif seq.status is not Status.FINISHED:
            self._release(seq)
        seq.status = Status.FINISHED

    def _release(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.pool.free(seq.pages)
        seq.pages = []
        heapq.heappush(self._free_rows, seq.row)
        seq.row = None
