"""The serving engine (litgpt/serve/engine.py) on tiny float64 models: concurrent requests decode exactly as each does
alone through `LLM.generate` (static cache), greedy and sampled with per-request seeds, for MLA, MHA and GQA; prefix
sharing, chunked prefill and preemption change nothing; every page comes back after completion, abort and preemption;
stop strings, logprobs, the threaded and asyncio streams, refusals and shutdown."""

import asyncio
import copy
import math

import pytest
import torch

from litgpt.api import LLM
from litgpt.serve.engine import Engine, GenerationRequest, QueueFull
from test_generate import make_checkpoint

CASES = ["debug-mla", "debug", "debug-gqa"]  # MLA, MHA, GQA


@pytest.fixture(scope="module")
def llms(tmp_path_factory) -> dict:
    """One LLM per case, its weights in float64 (where paged and static decodes agree to rounding)."""
    out = {}
    for case in CASES:
        llm = LLM.load(make_checkpoint(tmp_path_factory.mktemp(case), case), device="cpu")
        llm.model = llm.model.double()
        out[case] = llm
    return out


def engine_for(llm: LLM, **kwargs) -> Engine:
    """An engine over a copy of the LLM's model, stopping at the tokenizer's EOS as `LLM.generate` does."""
    model = copy.deepcopy(llm.model)
    model.clear_kv_cache()
    kwargs.setdefault("stop_token_ids", [llm.tokenizer.eos_id])
    return Engine(model, llm.tokenizer, **kwargs)


def prompt_ids(n: int, length: int, seed: int = 0) -> tuple[int, ...]:
    g = torch.Generator().manual_seed(seed * 1000 + n)
    return tuple(torch.randint(1, 300, (length,), generator=g).tolist())


def alone(llm: LLM, ids: tuple[int, ...], max_tokens: int, temperature: float = 0.0, top_k=None, top_p=1.0,
          seed: int = 0) -> list[int]:
    """The request decoded alone by `LLM.generate`'s static-cache session (cut before EOS)."""
    session = llm.decode_session(1, len(ids) + max_tokens, _params(temperature, top_k, top_p), "eager")
    session.seed(seed)
    rows, _ = session.generate([torch.tensor(ids)], max_tokens, llm.prompt_style.stop_tokens(llm.tokenizer))
    return rows[0]


def _params(temperature, top_k, top_p):
    from litgpt.generate.base import SamplingParams

    return SamplingParams(temperature, top_k, top_p)


def tokens(events) -> list[int]:
    return [e.token_id for e in events if e.token_id is not None]


def mixed_requests(n: int, sampled: bool) -> list[GenerationRequest]:
    requests = []
    for i in range(n):
        sampling = dict(temperature=0.7 + 0.1 * (i % 4), top_k=[None, 5, 40][i % 3], top_p=[1.0, 0.9][i % 2],
                        seed=100 + i) if sampled else {}
        requests.append(GenerationRequest(prompt_ids(i, 3 + 5 * i % 37), max_tokens=4 + (7 * i) % 13, **sampling))
    return requests


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
def test_concurrent_requests_each_equal_the_request_alone(llms, case, sampled):
    llm = llms[case]
    requests = mixed_requests(16, sampled)
    # 6 rows for 16 requests: they queue; 7-token prefill chunks: long prompts prefill over several steps
    engine = engine_for(llm, max_batch_size=6, page_size=4, max_prefill_tokens=7)
    events = engine.generate(requests)
    for request, out in zip(requests, events):
        expected = alone(llm, request.prompt_ids, request.max_tokens, request.temperature, request.top_k,
                         request.top_p, request.seed if sampled else 0)
        assert tokens(out) == expected
        assert out[-1].finish_reason == ("stop" if len(expected) < request.max_tokens else "length")
        assert "".join(e.text for e in out) == llm.tokenizer.decode(torch.tensor(expected))
    stats = engine.stats()
    assert 1 < stats["peak_running"] <= 6 and stats["free_pages"] == stats["total_pages"] and stats["running"] == 0
    if sampled:  # other seeds, other tokens
        reseeded = engine.generate([GenerationRequest(r.prompt_ids, 12, r.temperature, seed=r.seed + 1, ignore_eos=True)
                                    for r in requests[:4]])
        again = engine.generate([GenerationRequest(r.prompt_ids, 12, r.temperature, seed=r.seed, ignore_eos=True)
                                 for r in requests[:4]])
        assert [tokens(a) for a in again] != [tokens(b) for b in reseeded]


def test_the_decode_step_runs_the_smallest_row_bucket_that_covers_the_rows_in_use(llms):
    """A step runs a power of 2 of rows (at most max_batch_size), not every row: one request decodes in a 1-row
    step, three at once in a 4-row step, and each gives the tokens it gives alone."""
    llm = llms["debug-mla"]
    engine = engine_for(llm, max_batch_size=6, page_size=4)
    assert [engine.row_bucket(n) for n in range(1, 7)] == [1, 2, 4, 4, 6, 6]
    one = GenerationRequest(prompt_ids(1, 9), max_tokens=5, ignore_eos=True)
    assert tokens(engine.generate([one])[0]) == alone(llm, one.prompt_ids, 5)
    assert sorted(engine._steps) == [("greedy", 0, 1)]
    three = [GenerationRequest(prompt_ids(i, 4 + i), max_tokens=6, ignore_eos=True) for i in range(3)]
    for request, out in zip(three, engine.generate(three)):
        assert tokens(out) == alone(llm, request.prompt_ids, 6)
    assert ("greedy", 0, 4) in engine._steps and all(rows <= 4 for _, _, rows in engine._steps)
    assert engine.pool.free_pages == engine.pool.capacity


def test_the_next_step_is_queued_before_the_last_one_is_read(llms):
    """The host queues a decode step before it reads the last one's tokens: between steps each decoding sequence
    has one token in flight. A stop token read back ends its sequence though the step queued meanwhile drew one more
    token for it (dropped, and read the step after); max_tokens is known ahead, so no step draws past it."""
    llm = llms["debug-mla"]
    ids = prompt_ids(3, 7)
    drawn = tokens(engine_for(llm).generate([GenerationRequest(ids, max_tokens=12, ignore_eos=True)])[0])
    stop = drawn[4]
    engine = engine_for(llm, max_batch_size=2, page_size=4, stop_token_ids=[stop])
    stream = engine.submit(GenerationRequest(ids, max_tokens=12))
    seq = engine._live[stream.request_id].seq
    engine._step()  # the prefill draws the first token; the first decode step is queued, not read
    assert (len(seq.tokens), seq.inflight) == (7 + 1, 1) and engine._queued is not None
    engine._step()  # the second step queued, the first read
    assert (len(seq.tokens), seq.inflight) == (7 + 2, 1)
    while not stream.finished:
        engine._step()
    events = list(stream)
    assert tokens(events) == drawn[: drawn.index(stop)] and events[-1].finish_reason == "stop"
    assert engine._queued is not None  # the step that drew past the stop token, still to be read
    engine._step()
    assert engine._queued is None and engine.pool.free_pages == engine.pool.capacity
    assert len(seq.tokens) == 7 + drawn.index(stop) + 1  # the dropped token never joined the sequence

    capped = engine.submit(GenerationRequest(ids, max_tokens=3, ignore_eos=True))
    seq = engine._live[capped.request_id].seq
    engine._step()  # prefill (token 1) and the step of token 2 queued
    engine._step()  # token 2 read, the step of token 3 queued: the last
    assert seq.inflight == 1 and not seq.drawing
    engine._step()  # token 3 read: nothing queued after it
    assert capped.finished and engine._queued is None and tokens(list(capped)) == drawn[:3]


def test_prefill_maps_only_the_last_prompt_position_through_the_lm_head(llms):
    """Without prompt logprobs a prefill chunk's LM head maps its last position if the prompt ends there and none
    otherwise (a 40-token prompt in 16-token chunks: 0, 0, 1 rows), never (T, vocab) logits; with prompt logprobs,
    every position."""
    llm = llms["debug-mla"]
    engine = engine_for(llm, max_batch_size=2, max_prefill_tokens=16)
    mapped = []
    hook = engine.model.lm_head.register_forward_hook(lambda m, args, out: mapped.append(args[0].shape[:-1].numel()))
    try:
        request = GenerationRequest(prompt_ids(3, 40), max_tokens=3, ignore_eos=True)
        assert tokens(engine.generate([request])[0]) == alone(llm, request.prompt_ids, 3)
        assert mapped == [0, 0, 1, 1, 1]  # three prefill chunks, then two decode steps of the 1-row bucket
        mapped.clear()
        scored = GenerationRequest(prompt_ids(3, 40), max_tokens=3, ignore_eos=True, prompt_logprobs=True)
        assert tokens(engine.generate([scored])[0]) == alone(llm, request.prompt_ids, 3)
        assert mapped == [16, 16, 8, 1, 1]
    finally:
        hook.remove()


@pytest.mark.parametrize("case", CASES)
def test_a_steps_prompts_of_one_length_prefill_in_one_forward(llms, case):
    """Five 12-token prompts and two 7-token ones arriving together prefill in one forward per length (rows 5 and
    2), the one that asks for prompt logprobs alone; greedy, sampled and filtered draws and logprobs come out as
    each request's own alone."""
    llm = llms[case]
    same = [GenerationRequest(prompt_ids(i, 12), max_tokens=5, ignore_eos=True, **sampling) for i, sampling in
            enumerate([{}, dict(temperature=0.9, seed=3), dict(temperature=0.8, top_k=5, seed=4), {},
                       dict(temperature=1.1, top_p=0.9, seed=5)])]
    same[3] = GenerationRequest(same[3].prompt_ids, max_tokens=5, ignore_eos=True, logprobs=3)
    short = [GenerationRequest(prompt_ids(10 + i, 7), max_tokens=5, ignore_eos=True) for i in range(2)]
    scored = GenerationRequest(prompt_ids(20, 12), max_tokens=5, ignore_eos=True, prompt_logprobs=True)
    requests = same + short + [scored]
    engine = engine_for(llm, max_batch_size=8, max_prefill_tokens=128)
    shapes = []
    hook = engine.model.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    try:
        out = engine.generate(requests)
    finally:
        hook.remove()
    assert shapes[:3] == [(5, 12), (2, 7), (1, 12)] and all(s[1] == 1 for s in shapes[3:])
    for request, events in zip(requests, out):
        own = engine_for(llm, max_batch_size=1).generate([request])[0]
        assert tokens(events) == tokens(own) and len(tokens(events)) == 5
        if request.logprobs is not None:
            assert [e.logprob for e in events] == pytest.approx([e.logprob for e in own], abs=1e-9)
            assert all(e.top_logprobs == pytest.approx(o.top_logprobs, abs=1e-9) for e, o in zip(events, own))
        if request.prompt_logprobs:
            assert events[0].prompt_logprobs[1:] == pytest.approx(own[0].prompt_logprobs[1:], abs=1e-9)
    assert tokens(out[0]) == alone(llm, same[0].prompt_ids, 5) and tokens(out[5]) == alone(llm, short[0].prompt_ids, 5)


def test_a_seeded_request_draws_the_same_beside_anything(llms):
    llm = llms["debug-mla"]
    target = GenerationRequest(prompt_ids(1, 9), max_tokens=12, temperature=1.0, top_p=0.95, seed=7,
                               ignore_eos=True)
    engine = engine_for(llm, max_batch_size=4, page_size=4)
    (solo,) = engine.generate([target])
    crowd = engine.generate([GenerationRequest(prompt_ids(i, 5 + i), 10, temperature=1.3, seed=i) for i in range(3)]
                            + [target])
    assert tokens(crowd[-1]) == tokens(solo) and len(tokens(solo)) == 12


@pytest.mark.parametrize("case", CASES)
def test_prefix_shared_pages_give_the_same_outputs_and_are_freed_by_the_last_sharer(llms, case):
    llm = llms[case]
    system = prompt_ids(50, 13)
    requests = [GenerationRequest(system + prompt_ids(i, 2 + i), max_tokens=6, ignore_eos=True) for i in range(4)]
    engine = engine_for(llm, max_batch_size=4, page_size=4)
    first = engine.submit(requests[0])
    engine._step()  # the first request's prompt is prefilled: its three full system pages are registered
    rest = [engine.submit(r) for r in requests[1:]]
    engine._step()
    stats = engine.stats()
    assert stats["prefix_cached_tokens"] == 3 * 12  # three later requests each took 3 pages of 4 tokens
    shared = engine._live[first.request_id].seq.pages[:3]
    assert [engine.pool.refs(p) for p in shared] == [4, 4, 4]
    engine.abort(first)
    engine._step()
    assert [engine.pool.refs(p) for p in shared] == [3, 3, 3]
    while not all(s.finished for s in rest):
        engine._step()
    assert engine.pool.free_pages == engine.pool.capacity and all(engine.pool.refs(p) == 0 for p in shared)
    assert list(first)[-1].finish_reason == "abort"
    shared_outputs = [tokens(list(stream)) for stream in rest]
    # the same outputs as without the cache
    plain = engine_for(llm, max_batch_size=4, page_size=4, prefix_caching=False)
    cached = engine_for(llm, max_batch_size=4, page_size=4)
    cached.generate(requests[:1])
    with_cache = cached.generate(requests)
    assert cached.stats()["prefix_cached_tokens"] >= 4 * 12
    without = [tokens(e) for e in plain.generate(requests)]
    assert [tokens(e) for e in with_cache] == without and shared_outputs == without[1:]


def test_a_tiny_pool_preempts_and_recomputes_and_every_page_comes_back(llms):
    llm = llms["debug-gqa"]
    requests = [GenerationRequest(prompt_ids(i, 6 + i), max_tokens=20, ignore_eos=True) for i in range(5)]
    engine = engine_for(llm, max_batch_size=5, page_size=4, prefix_caching=False,
                        kv_cache_gib=12 * 4 * engine_bytes(llm) / 2**30)  # 12 pages of 4 tokens: about two sequences
    out = engine.generate(requests)
    stats = engine.stats()
    assert stats["total_pages"] == 11 and stats["preemptions"] > 0
    assert stats["free_pages"] == stats["total_pages"]
    for request, events in zip(requests, out):
        assert tokens(events) == alone(llm, request.prompt_ids, 20)  # no EOS in these 20 tokens
        assert sum(e.finish_reason is not None for e in events) == 1


def engine_bytes(llm: LLM) -> int:
    from litgpt.kv_cache import kv_cache_bytes_per_token

    return kv_cache_bytes_per_token(llm.model.config, torch.float64)


def test_chunked_prefill_gives_the_same_outputs(llms):
    llm = llms["debug-mla"]
    requests = [GenerationRequest(prompt_ids(i, 30 + 11 * i), max_tokens=5, ignore_eos=True) for i in range(3)]
    whole = engine_for(llm, max_batch_size=3).generate(requests)
    chunked = engine_for(llm, max_batch_size=3, max_prefill_tokens=3, page_size=8).generate(requests)
    assert [tokens(e) for e in chunked] == [tokens(e) for e in whole]


def test_abort_mid_stream_from_another_thread_frees_the_row_and_pages(llms):
    llm = llms["debug"]
    engine = engine_for(llm, max_batch_size=2, page_size=4)
    engine.start()
    try:
        stream = engine.submit(GenerationRequest(prompt_ids(3, 10), max_tokens=100, ignore_eos=True))
        other = engine.submit(GenerationRequest(prompt_ids(4, 10), max_tokens=5, ignore_eos=True))
        seen = []
        for event in stream:
            seen.append(event)
            if len(seen) == 3:
                engine.abort(stream)
        assert seen[-1].finish_reason == "abort" and 3 <= len(seen) < 100
        assert len(tokens(list(other))) == 5
    finally:
        engine.shutdown()
    assert engine.pool.free_pages == engine.pool.capacity and engine.stats()["running"] == 0


def test_async_iteration_gets_every_event_in_order(llms):
    llm = llms["debug-mla"]
    engine = engine_for(llm, max_batch_size=4)
    engine.start()
    requests = [GenerationRequest(prompt_ids(i, 4 + i), max_tokens=6, ignore_eos=True) for i in range(3)]

    async def collect():
        async def one(request):
            return [e async for e in engine.submit(request)]

        return await asyncio.gather(*(one(r) for r in requests))

    try:
        got = asyncio.run(collect())
    finally:
        engine.shutdown()
    assert [tokens(e) for e in got] == [alone(llm, r.prompt_ids, 6) for r in requests]
    assert all(e[-1].finish_reason == "length" for e in got)


def test_a_steps_events_reach_an_asyncio_loop_in_one_wake_up(llms):
    """Eight streams consumed in one asyncio loop: the engine posts each step's events to the loop together, so the
    loop is woken at most about once per step, not once per event, and every stream still gets its events in
    order."""
    llm = llms["debug-mla"]
    engine = engine_for(llm, max_batch_size=8)
    requests = [GenerationRequest(prompt_ids(i, 4 + i), max_tokens=12, ignore_eos=True) for i in range(8)]
    wake_ups = []

    async def collect():
        loop = asyncio.get_running_loop()
        post = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *args: wake_ups.append(args) or post(*args)
        streams = [engine.submit(r) for r in requests]  # all queued before the engine starts: one batch
        engine.start()

        async def one(stream):
            return [e async for e in stream]

        return await asyncio.gather(*(one(s) for s in streams))

    try:
        got = asyncio.run(collect())
    finally:
        engine.shutdown()
    assert [tokens(e) for e in got] == [alone(llm, r.prompt_ids, 12) for r in requests]
    events = sum(len(e) for e in got)
    assert events == 8 * 12
    assert 0 < len(wake_ups) <= engine.steps + 1 < events / 4


def test_stop_strings_end_the_text_before_them(llms):
    llm = llms["debug-mla"]
    engine = engine_for(llm, max_batch_size=2)
    base = GenerationRequest(prompt_ids(7, 5), max_tokens=20, ignore_eos=True)
    (full,) = engine.generate([base])
    text = "".join(e.text for e in full)
    stop = text[7:10]
    cut = text.index(stop)
    (stopped,) = engine.generate([GenerationRequest(base.prompt_ids, 20, ignore_eos=True, stop=("\x00never", stop))])
    assert "".join(e.text for e in stopped) == text[:cut] and stopped[-1].finish_reason == "stop"
    assert len(tokens(stopped)) < 20
    assert engine.pool.free_pages == engine.pool.capacity


@torch.inference_mode()
def test_logprobs_and_prompt_logprobs_are_the_models_distribution(llms):
    llm = llms["debug-mla"]
    engine = engine_for(llm, max_batch_size=2, max_prefill_tokens=4)
    ids = prompt_ids(9, 9)
    (events,) = engine.generate([GenerationRequest(ids, 4, logprobs=3, prompt_logprobs=True, ignore_eos=True)])
    full = list(ids) + tokens(events)
    model = copy.deepcopy(llm.model)
    model.clear_kv_cache()
    reference = torch.log_softmax(model(torch.tensor([full]))[0, :, :300], dim=-1)  # (T, V)
    prompt_lp = events[0].prompt_logprobs
    assert prompt_lp[0] is None and len(prompt_lp) == len(ids)
    for i in range(1, len(ids)):
        assert math.isclose(prompt_lp[i], reference[i - 1, ids[i]].item(), abs_tol=1e-5)
        top = events[0].prompt_top_logprobs[i]
        assert list(top) == reference[i - 1].topk(3).indices.tolist()
    for n, event in enumerate(events):
        position = len(ids) - 1 + n
        assert math.isclose(event.logprob, reference[position, event.token_id].item(), abs_tol=1e-5)
        assert list(event.top_logprobs) == reference[position].topk(3).indices.tolist()
        assert event.token_id == next(iter(event.top_logprobs))  # greedy: the likeliest
    assert all(e.prompt_logprobs is None for e in events[1:])


def test_bad_requests_are_refused_in_one_line_naming_the_field(llms):
    llm = llms["debug-mla"]
    engine = engine_for(llm, max_batch_size=2, max_queue=2)
    for request, message in [
        (GenerationRequest((), 4), "prompt_ids is empty"),
        (GenerationRequest((1, 2), 0), "max_tokens must be an integer >= 1"),
        (GenerationRequest((1,) * 120, 20), "exceeds the model's context of 128 tokens"),
        (GenerationRequest((1, 2), 4, temperature=-1.0), "temperature must be"),
        (GenerationRequest((1, 2), 4, top_p=0.0), "top_p must be in"),
        (GenerationRequest((1, 2), 4, top_k=0), "top_k must be"),
        (GenerationRequest((1, 2), 4, logprobs=21), "logprobs must be between 0 and 20"),
        (GenerationRequest((1, 999), 4), "token id 999, outside"),
    ]:
        with pytest.raises(ValueError, match=message):
            engine.submit(request)
    engine.submit(GenerationRequest((1, 2), 4))
    engine.submit(GenerationRequest((1, 2), 4))
    with pytest.raises(QueueFull, match="max_queue"):
        engine.submit(GenerationRequest((1, 2), 4))
    engine.shutdown(drain=True)  # never started: the accepted requests are finished here
    assert engine.stats()["generated_tokens"] > 0 and engine.pool.free_pages == engine.pool.capacity
    with pytest.raises(RuntimeError, match="shutting down"):
        engine.submit(GenerationRequest((1, 2), 4))
    with pytest.raises(ValueError, match="holds 0 page"):
        engine_for(llm, kv_cache_gib=1e-9)


def test_shutdown_without_drain_aborts_what_is_accepted(llms):
    llm = llms["debug"]
    engine = engine_for(llm, max_batch_size=2)
    streams = [engine.submit(GenerationRequest(prompt_ids(i, 5), 50, ignore_eos=True)) for i in range(3)]
    engine.shutdown(drain=False)
    assert [list(s)[-1].finish_reason for s in streams] == ["abort"] * 3
    assert engine.pool.free_pages == engine.pool.capacity


@pytest.mark.cuda
@pytest.mark.parametrize("case", CASES)
def test_the_captured_step_on_cuda_decodes_as_the_eager_one(llms, case):
    """On CUDA each row bucket's decode step is one CUDA graph: greedy and seeded requests (with top-k, top-p and
    logprobs mixed in) give the eager step's tokens, and every page comes back."""
    llm = llms[case]
    requests = [GenerationRequest(r.prompt_ids, r.max_tokens, r.temperature, r.top_k, r.top_p, r.seed,
                                  ignore_eos=True, logprobs=2 if i % 5 == 0 else None)
                for i, r in enumerate(mixed_requests(12, sampled=False)[:6] + mixed_requests(12, sampled=True)[6:])]
    outputs = {}
    for mode in ("eager", "cuda_graph"):
        model = copy.deepcopy(llm.model).float().cuda()
        model.clear_kv_cache()
        engine = Engine(model, llm.tokenizer, max_batch_size=5, page_size=16, max_prefill_tokens=24,
                        kv_cache_gib=0.01, mode=mode)
        engine.capture()  # the greedy step of rows 1, 2, 4 and 5 before any request (nothing in eager mode)
        assert sorted(engine._steps) == ([] if mode == "eager" else [("greedy", 0, n) for n in (1, 2, 4, 5)])
        outputs[mode] = [tokens(e) for e in engine.generate(requests)]
        assert engine.pool.free_pages == engine.pool.capacity
    assert outputs["cuda_graph"] == outputs["eager"]
    assert [len(t) for t in outputs["eager"]] == [r.max_tokens for r in requests]


def test_generate_feeds_more_requests_than_the_queue_holds(llms):
    llm = llms["debug-gqa"]
    requests = [GenerationRequest(prompt_ids(i, 4), 3, ignore_eos=True) for i in range(5)]
    for threaded in (False, True):
        engine = engine_for(llm, max_batch_size=1, max_queue=2)
        if threaded:
            engine.start()
        out = engine.generate(requests)
        engine.shutdown()
        assert [len(tokens(e)) for e in out] == [3] * 5 and engine.stats()["peak_running"] == 1
