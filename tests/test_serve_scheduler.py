"""The scheduler (litgpt/serve/scheduler.py) as pure bookkeeping: admission in queue order, chunked prefill within the
token budget, page growth, preemption of the newest sequence and its recompute, prefix sharing, and every page and
row returned at the end. The engine loop is simulated: a token's value is a function of the tokens before it."""

import pytest

from litgpt.serve.paged import PagePool
from litgpt.serve.scheduler import Scheduler, Sequence, Status


def next_token(tokens: list[int]) -> int:
    return (sum(tokens) * 31 + len(tokens)) % 97


def simulate(scheduler: Scheduler, max_tokens: dict[int, int], max_steps: int = 1000) -> dict:
    """Run the engine's loop over the scheduler until every sequence has max_tokens[seq_id] new tokens; return what
    happened per step (the prefill tokens, the decoding rows) and the finished sequences."""
    finished, steps = [], []
    for _ in range(max_steps):
        if not scheduler.has_work():
            break
        chunks = scheduler.schedule_prefill()
        for chunk in chunks:
            seq = chunk.seq
            assert seq.num_computed == chunk.start and len(seq.pages) * scheduler.pool.page_size >= chunk.end
            scheduler.computed(seq, chunk.end)
            if chunk.last:
                seq.tokens.append(next_token(seq.tokens))
                scheduler.prefilled(seq)
                if seq.num_generated == max_tokens[seq.seq_id]:
                    scheduler.finish(seq)
                    finished.append(seq)
        decoding, preempted = scheduler.schedule_decode()
        rows = sorted(s.row for s in decoding)
        assert len(set(rows)) == len(rows) and all(0 <= r < scheduler.max_batch for r in rows)
        for seq in decoding:
            position = len(seq.tokens) - 1
            assert seq.num_computed == position and len(seq.pages) > position // scheduler.pool.page_size
            scheduler.computed(seq, position + 1)
            seq.tokens.append(next_token(seq.tokens))
            if seq.num_generated == max_tokens[seq.seq_id]:
                scheduler.finish(seq)
                finished.append(seq)
        steps.append(dict(prefill=sum(c.end - c.start for c in chunks), decoding=len(decoding),
                          preempted=[s.seq_id for s in preempted]))
    return dict(steps=steps, finished=finished)


def expected(prompt: list[int], n: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(n):
        tokens.append(next_token(tokens))
    return tokens


def prompts(lengths: list[int]) -> list[list[int]]:
    return [[(i * 7 + j) % 50 + 1 for j in range(n)] for i, n in enumerate(lengths)]


def test_chunked_prefill_keeps_to_the_budget_and_admits_in_queue_order():
    scheduler = Scheduler(PagePool(64, 4), max_batch=2, max_prefill_tokens=8)
    for i, prompt in enumerate(prompts([10, 3, 5])):
        scheduler.add(Sequence(i, list(prompt), len(prompt)))
    chunks = scheduler.schedule_prefill()
    assert [(c.seq.seq_id, c.start, c.end, c.last) for c in chunks] == [(0, 0, 8, False)]
    for chunk in chunks:
        scheduler.computed(chunk.seq, chunk.end)
    chunks = scheduler.schedule_prefill()  # the running prefill first, then the next in line; no row for the third
    assert [(c.seq.seq_id, c.start, c.end) for c in chunks] == [(0, 8, 10), (1, 0, 3)]
    assert [s.seq_id for s in scheduler.waiting] == [2] and [s.row for s in scheduler.running] == [0, 1]


def test_every_sequence_finishes_with_its_tokens_and_every_page_and_row_returns():
    pool = PagePool(64, 4)
    scheduler = Scheduler(pool, max_batch=3, max_prefill_tokens=6)
    lengths, news = [9, 2, 14, 5, 1], [4, 7, 1, 3, 6]
    for i, prompt in enumerate(prompts(lengths)):
        scheduler.add(Sequence(i, list(prompt), len(prompt)))
    result = simulate(scheduler, dict(enumerate(news)))
    assert all(step["prefill"] <= 6 and step["decoding"] <= 3 for step in result["steps"])
    assert {s.seq_id: s.tokens for s in result["finished"]} == {
        i: expected(p, n) for i, (p, n) in enumerate(zip(prompts(lengths), news))}
    assert pool.free_pages == pool.capacity and scheduler._free_rows and sorted(scheduler._free_rows) == [0, 1, 2]
    assert scheduler.peak_running == 3 and scheduler.preemptions == 0


def test_a_full_pool_preempts_the_newest_sequence_which_is_recomputed_later():
    pool = PagePool(9, 4)  # 8 pages of 4 tokens; each sequence needs 7 pages by its end
    scheduler = Scheduler(pool, max_batch=3, max_prefill_tokens=64, prefix_caching=False)
    ps = prompts([6, 6, 6])
    for i, prompt in enumerate(ps):
        scheduler.add(Sequence(i, list(prompt), len(prompt)))
    result = simulate(scheduler, {0: 22, 1: 22, 2: 22})
    assert scheduler.preemptions > 0
    preempted = [i for step in result["steps"] for i in step["preempted"]]
    assert 0 not in preempted  # the oldest always runs on
    assert {s.seq_id: s.tokens for s in result["finished"]} == {i: expected(p, 22) for i, p in enumerate(ps)}
    assert [s.seq_id for s in result["finished"]][0] == 0
    assert pool.free_pages == pool.capacity and not scheduler.running and not scheduler.waiting


def test_a_recompute_takes_its_own_pages_back_from_the_prefix_cache():
    pool = PagePool(9, 4)
    scheduler = Scheduler(pool, max_batch=3, max_prefill_tokens=64, prefix_caching=True)
    ps = prompts([6, 6, 6])
    for i, prompt in enumerate(ps):
        scheduler.add(Sequence(i, list(prompt), len(prompt)))
    result = simulate(scheduler, {0: 22, 1: 22, 2: 22})
    assert scheduler.preemptions > 0 and scheduler.cached_tokens > 0
    assert {s.seq_id: s.tokens for s in result["finished"]} == {i: expected(p, 22) for i, p in enumerate(ps)}
    assert pool.free_pages == pool.capacity


def test_a_shared_prefix_is_prefilled_once_and_its_pages_freed_by_the_last_holder():
    pool = PagePool(32, 4)
    scheduler = Scheduler(pool, max_batch=4, max_prefill_tokens=64)
    system = list(range(1, 11))  # 10 tokens: two full pages
    first = Sequence(0, system + [40, 41], 12)
    scheduler.add(first)
    chunks = scheduler.schedule_prefill()
    scheduler.computed(first, chunks[0].end)  # registers its three full pages
    first.tokens.append(next_token(first.tokens))
    scheduler.prefilled(first)
    second = Sequence(1, system + [50], 11)
    scheduler.add(second)
    chunks = scheduler.schedule_prefill()
    assert [(c.start, c.end) for c in chunks] == [(8, 11)]  # two pages from the cache
    assert second.pages[:2] == first.pages[:2] and [pool.refs(p) for p in first.pages[:2]] == [2, 2]
    assert second.pages[2] != first.pages[2]  # its third page holds other tokens
    scheduler.computed(second, 11)
    scheduler.finish(first)
    assert [pool.refs(p) for p in second.pages[:2]] == [1, 1]
    scheduler.finish(second)
    assert pool.free_pages == pool.capacity
    no_cache = Sequence(2, system + [50], 11, cacheable=False)  # e.g. its prompt logprobs are asked for
    scheduler.add(no_cache)
    assert [(c.start, c.end) for c in scheduler.schedule_prefill()] == [(0, 11)]
    scheduler.finish(no_cache)


def test_finish_frees_a_waiting_or_running_sequence():
    pool = PagePool(16, 4)
    scheduler = Scheduler(pool, max_batch=1, max_prefill_tokens=64)
    a, b = Sequence(0, [1, 2, 3], 3), Sequence(1, [4, 5], 2)
    scheduler.add(a)
    scheduler.add(b)
    scheduler.schedule_prefill()
    assert a.status is Status.PREFILL and b.status is Status.WAITING
    scheduler.finish(b)  # aborted while waiting
    scheduler.finish(a)  # aborted mid-prefill
    assert not scheduler.has_work() and pool.free_pages == pool.capacity and a.row is None
    with pytest.raises(ValueError, match="max_prefill_tokens must be >= 1"):
        Scheduler(pool, 1, 0)
