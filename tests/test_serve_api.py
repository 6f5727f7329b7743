"""litgpt serve: a real server on 127.0.0.1 (uvicorn in a thread, or `python -m litgpt serve` in a subprocess) over
the engine and a tiny random checkpoint, queried with the `openai` client and with raw HTTP (httpx)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest
import torch
import uvicorn

from litgpt.api import LLM
from litgpt.prompts import ChatTemplate, PromptStyle
from litgpt.serve.api import ChatMessage, SamplingDefaults, ServedModel, chat_prompt_ids, create_app, merged_events
from litgpt.serve.cli import listen
from litgpt.serve.engine import Engine, GenerationRequest, QueueFull, RequestStream, TokenEvent
from test_generate import make_checkpoint

PROMPTS = ["The cat", "A big happy dog saw the small sun and then", "Moon", "Once upon a time there was a",
           "The sun", "A dog and a cat", "Big", "The small happy cat saw"]


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_op() -> Iterator[None]:
    """The engine's thread, the event loop and the clients share the machine's cores: torch ops on one thread each
    do not wait on one another's spinning workers (on 2 busy cores a 2-thread op ran 60x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def llm(checkpoint) -> LLM:
    """The model the servers run (the engine gives it a paged KV cache)."""
    return LLM.load(checkpoint, device="cpu", precision="32-true")


@pytest.fixture(scope="module")
def reference(checkpoint) -> LLM:
    """The same weights on their own, for expected values (static-cache generate, full forwards)."""
    return LLM.load(checkpoint, device="cpu", precision="32-true")


def make_engine(llm: LLM, **kwargs) -> Engine:
    stops = [s[0] for s in llm.prompt_style.stop_tokens(llm.tokenizer) if len(s) == 1]
    options = dict(max_batch_size=32, kv_cache_gib=0.02, page_size=8, max_prefill_tokens=256, max_queue=1024)
    return Engine(llm.model, llm.tokenizer, stop_token_ids=stops, **{**options, **kwargs})


@contextlib.contextmanager
def serving(llm: LLM, api_key: str | None = None, **engine_options) -> Iterator[tuple[str, Engine]]:
    """A uvicorn server in a thread on a free port: (its base URL, the engine); stopped (drained) on exit."""
    engine = make_engine(llm, **engine_options)
    model = ServedModel("tiny", llm.tokenizer, llm.prompt_style, llm.model.max_seq_length,
                        llm.model.config.vocab_size)
    app = create_app(engine, model, SamplingDefaults(temperature=0.0), api_key)
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs=dict(sockets=[sock]), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", engine
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


@pytest.fixture(scope="module")
def server(llm) -> Iterator[tuple[str, Engine]]:
    with serving(llm) as served:
        yield served


def client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def settle(engine: Engine, timeout: float = 30.0) -> dict:
    """The engine's stats once nothing runs or waits (within `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = engine.stats()
        if stats["running"] == 0 and stats["waiting"] == 0 or time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


def sse_events(lines: Iterator[str]) -> Iterator:
    """The JSON payloads of a streamed response's lines, and "[DONE]" for its end marker."""
    for line in lines:
        if line.startswith("data: "):
            payload = line[len("data: "):]
            yield payload if payload == "[DONE]" else json.loads(payload)


# ---------------------------------------------------------------------------------------------------- endpoints
def test_completion_and_chat_with_the_openai_client(server, reference):
    llm = reference
    url, engine = server
    api = client(url)
    prompt_ids = llm.tokenizer.encode(PROMPTS[1], bos=llm.tokenizer.add_bos).tolist()
    out = api.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=7, temperature=0,
                                 extra_body={"ignore_eos": True})
    assert out.object == "text_completion" and out.model == "tiny" and len(out.choices) == 1
    assert out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (
        len(prompt_ids), 7, len(prompt_ids) + 7)
    # the same greedy continuation as LLM.generate (the static-cache decode) gives
    expected = llm.generate(PROMPTS[1], max_new_tokens=7, temperature=0)
    assert out.choices[0].text.startswith(expected) and (len(expected) == len(out.choices[0].text) or
                                                         llm.tokenizer.eos_id is not None)
    streamed = api.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=7, temperature=0, stream=True,
                                      stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == out.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 7

    messages = [{"role": "user", "content": "The cat"}]
    chat = api.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.usage.completion_tokens == 5 and chat.choices[0].finish_reason == "length"
    framed = llm.tokenizer.encode(llm.prompt_style.apply("The cat"), bos=llm.tokenizer.add_bos).tolist()
    assert chat.usage.prompt_tokens == len(framed)
    stream = api.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0, stream=True,
                                         extra_body={"ignore_eos": True})
    deltas = list(stream)
    assert deltas[0].choices[0].delta.role == "assistant"
    assert "".join(d.choices[0].delta.content or "" for d in deltas) == chat.choices[0].message.content
    assert deltas[-1].choices[0].finish_reason == "length"

    scored = api.chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0, logprobs=True,
                                         top_logprobs=2, extra_body={"ignore_eos": True})
    content = scored.choices[0].logprobs.content
    assert len(content) == 4 and "".join(c.token for c in content) == scored.choices[0].message.content
    for entry in content:  # greedy: the chosen token is the likeliest of its alternatives
        assert 1 <= len(entry.top_logprobs) <= 2 and entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)

    models = api.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["total_pages"] > 0
    assert settle(engine)["free_pages"] == engine.stats()["total_pages"]


@pytest.mark.parametrize("count", [1, 3])
def test_merged_events_hand_over_each_streams_events_then_its_end_or_failure(count):
    """One stream (read directly) and several (a reader task each): every event in order, then (i, None) for a
    stream that finished or (i, the error) for one whose engine failed, after the events that came before it."""

    async def run() -> tuple[dict, dict]:
        streams = [RequestStream(i, 4) for i in range(count)]
        seen, ends = {i: [] for i in range(count)}, {}

        async def feed() -> None:
            for t in range(3):
                for stream in streams:
                    stream._put(TokenEvent(t, str(t)))
                await asyncio.sleep(0)
            streams[0]._put(TokenEvent(None, "", finish_reason="stop"))
            for stream in streams[1:]:
                stream._put(RuntimeError("the device is gone"))

        feeder = asyncio.ensure_future(feed())
        async with contextlib.aclosing(merged_events(streams)) as merged:
            async for items in merged:
                for i, events in items:
                    if isinstance(events, list):
                        seen[i].extend(e.token_id for e in events)
                    else:
                        ends[i] = events
                if len(ends) == count:
                    break
        await feeder
        return seen, ends

    seen, ends = asyncio.run(run())
    assert seen == {0: [0, 1, 2, None], **{i: [0, 1, 2] for i in range(1, count)}}
    assert ends[0] is None
    assert all("the engine failed: the device is gone" in str(ends[i]) for i in range(1, count))


def test_a_streamed_list_of_prompts_gives_each_choice_its_own_text(server):
    url, _ = server
    body = dict(prompt=PROMPTS[:3], max_tokens=6, temperature=0, ignore_eos=True)
    whole = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()["choices"]
    texts = {}
    with httpx.stream("POST", f"{url}/v1/completions", json=dict(body, stream=True), timeout=60) as response:
        for event in sse_events(response.iter_lines()):
            for choice in [] if event == "[DONE]" else event["choices"]:
                texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    assert texts == {c["index"]: c["text"] for c in whole} and len(texts) == 3


def test_stop_strings_end_the_text_before_them(server):
    url, _ = server
    body = dict(prompt=PROMPTS[3], max_tokens=12, temperature=0, ignore_eos=True)
    full = httpx.post(f"{url}/v1/completions", json=body).json()["choices"][0]["text"]
    stop = full[4:6]
    assert len(full) >= 6 and stop
    out = httpx.post(f"{url}/v1/completions", json={**body, "stop": [stop, "never there"]}).json()["choices"][0]
    assert out["text"] == full[: full.index(stop)] and out["finish_reason"] == "stop"


def test_concurrent_requests_equal_each_alone(server):
    """16 requests of different prompts and lengths, sent at once, give what each gives alone: greedy, and sampled
    with a per-request seed."""
    url, engine = server
    bodies = [dict(prompt=PROMPTS[i % len(PROMPTS)], max_tokens=3 + (5 * i) % 13, temperature=0.0 if i < 8 else 1.0,
                   seed=100 + i, ignore_eos=True) for i in range(16)]
    with httpx.Client(timeout=60) as http:
        alone = [http.post(f"{url}/v1/completions", json=b).json()["choices"][0]["text"] for b in bodies]

    async def together() -> list[str]:
        async with httpx.AsyncClient(timeout=60) as http:
            responses = await asyncio.gather(*(http.post(f"{url}/v1/completions", json=b) for b in bodies))
        return [r.json()["choices"][0]["text"] for r in responses]

    assert asyncio.run(together()) == alone
    assert len(set(alone[8:])) > 1  # sampled texts differ from one another
    assert engine.stats()["peak_running"] > 1  # they did run side by side


def test_echo_logprobs_in_the_shape_lm_eval_reads(server, reference):
    llm = reference
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    url, _ = server
    ids = llm.tokenizer.encode("The small happy cat saw the sun").tolist()
    body = dict(model="tiny", prompt=[ids], max_tokens=1, temperature=0, logprobs=1, echo=True, seed=1234)
    out = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()
    choice = out["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == \
        len(ids) + 1
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"] == sorted(lp["text_offset"]) and lp["text_offset"][0] == 0
    # each prompt token's logprob is the model's log-softmax at the position before it
    with torch.inference_mode():
        logits = llm.model(torch.tensor([ids]))[0, :, : llm.model.config.vocab_size]
    expected = torch.log_softmax(logits.double(), dim=-1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    torch.testing.assert_close(torch.tensor(lp["token_logprobs"][1:len(ids)], dtype=torch.float64), expected,
                               atol=1e-4, rtol=0)
    # the generated token is the argmax after the prompt, with its own logprob among its alternatives
    assert max(lp["top_logprobs"][-1].values()) == pytest.approx(lp["token_logprobs"][-1])
    (logprob, _), = LocalCompletionsAPI.parse_logprobs(out, tokens=[ids], ctxlens=[3])
    assert logprob == pytest.approx(float(expected[2:].sum()), abs=1e-3)
    assert out["usage"]["prompt_tokens"] == len(ids) and out["usage"]["completion_tokens"] == 1


def test_lm_eval_local_completions_scores_through_the_server(server, reference):
    """lm-eval's `local-completions` model finds the server's tokenizer endpoints and scores continuations through
    echo + logprobs: each score is the model's own log-likelihood of the continuation, and "greedy" whether every
    continuation token is the argmax."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    url, _ = server
    lm = LocalCompletionsAPI(base_url=f"{url}/v1/completions", model="tiny", max_retries=1)
    assert lm.tokenizer_backend == "remote"
    tk = reference.tokenizer
    pairs = [("The cat", " saw the sun"), ("A dog", " and a cat"), ("Moon", " and")]
    scores = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)])
    for (context, continuation), (logprob, greedy) in zip(pairs, scores):
        context_ids, continuation_ids = tk.encode(context).tolist(), tk.encode(continuation).tolist()
        ids = context_ids + continuation_ids
        with torch.inference_mode():
            logits = reference.model(torch.tensor([ids]))[0, :, : reference.model.config.vocab_size]
        logprobs = torch.log_softmax(logits.double(), dim=-1)[len(context_ids) - 1 : -1]  # (continuation, V)
        targets = torch.tensor(continuation_ids)
        assert logprob == pytest.approx(float(logprobs[torch.arange(len(targets)), targets].sum()), abs=1e-3)
        assert greedy == bool((logprobs.argmax(-1) == targets).all())


# ---------------------------------------------------------------------------------------------------- refusals
MALFORMED = [
    ({"prompt": "hi", "max_tokens": "five"}, "max_tokens"),
    ({"prompt": "hi", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 500}, "max_tokens"),  # over the 128-token context: refused, not truncated
    ({"prompt": "hi", "temperature": -0.5}, "temperature"),
    ({"prompt": "hi", "top_p": 0}, "top_p"),
    ({"prompt": "hi", "top_k": 0}, "top_k"),
    ({"prompt": "hi", "n": 3}, "n"),
    ({"prompt": "hi", "best_of": 2}, "best_of"),
    ({"prompt": "hi", "logprobs": 99}, "logprobs"),
    ({"prompt": "hi", "stop": [""]}, "stop"),
    ({"prompt": "hi", "stop": 5}, "stop"),
    ({"prompt": "hi", "presence_penalty": 0.5}, "presence_penalty"),
    ({"prompt": "hi", "logit_bias": {"5": 1}}, "logit_bias"),
    ({"prompt": "hi", "suffix": "end"}, "suffix"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": [1, 99999]}, "prompt"),
    ({"max_tokens": 3}, "prompt"),
    ({"prompt": "hi", "model": "another-model"}, "model"),
    ({"prompt": "hi", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"prompt": "hi", "temperature": "hot"}, "temperature"),
]


def test_burst_of_500_with_20_malformed(server):
    """Every good request is answered, every bad one gets a 4xx whose error names the field; the server stays
    healthy and every page is back in the pool."""
    url, engine = server
    good = [dict(prompt=PROMPTS[i % len(PROMPTS)], max_tokens=1 + i % 4, temperature=0) for i in range(480)]
    bodies: list[tuple[dict, str | None]] = [(b, None) for b in good]
    for k, (body, field) in enumerate(MALFORMED):
        bodies.insert(k * 25 + 7, (body, field))
    assert len(bodies) == 500

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=120, limits=limits) as http:
            return await asyncio.gather(*(http.post(f"{url}/v1/completions", json=b) for b, _ in bodies))

    responses = asyncio.run(burst())
    for (body, field), response in zip(bodies, responses):
        if field is None:
            assert response.status_code == 200, response.text
            assert response.json()["usage"]["completion_tokens"] >= 1
        else:
            assert 400 <= response.status_code < 500, (body, response.text)
            error = response.json()["error"]
            assert error["param"] == field and field in error["message"], (body, error)
            assert set(error) == {"message", "type", "param", "code"}
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    stats = settle(engine)
    assert stats["free_pages"] == stats["total_pages"]


def test_chat_and_transport_refusals(server):
    url, _ = server
    cases = [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
        ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}},
         "response_format.type"),
    ]
    for body, field in cases:
        response = httpx.post(f"{url}/v1/chat/completions", json=body)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert error["param"] == field, (body, error)
    bad_json = httpx.post(f"{url}/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]["message"]
    missing = httpx.get(f"{url}/v1/engines")
    assert missing.status_code == 404 and "/v1/completions" in missing.json()["error"]["message"]


def test_disconnect_mid_stream_frees_the_sequence(server):
    url, engine = server
    before = engine.stats()["generated_tokens"]
    body = dict(prompt=PROMPTS[2], max_tokens=120, temperature=0, ignore_eos=True, stream=True)
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{url}/v1/completions", json=body) as response:
            assert next(line for line in response.iter_lines() if line.startswith("data: "))
    # the client hung up after its first token: the row and every page come back, short of 120 tokens
    stats = settle(engine)
    assert stats["running"] == 0 and stats["free_pages"] == stats["total_pages"]
    assert stats["generated_tokens"] - before < 120


def test_disconnect_while_waiting_for_a_whole_response_aborts_it(server):
    url, engine = server
    before = engine.stats()["generated_tokens"]
    body = dict(prompt=PROMPTS[2], max_tokens=120, temperature=0, ignore_eos=True)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up (and closes the connection) after 0.05 s
        httpx.post(f"{url}/v1/completions", json=body, timeout=httpx.Timeout(60, read=0.05))
    stats = settle(engine)
    assert stats["free_pages"] == stats["total_pages"]
    assert stats["generated_tokens"] - before < 120  # aborted, not run to its end


def test_full_queue_is_429_and_the_api_key_is_checked(llm):
    with serving(llm, api_key="sesame", max_batch_size=1, max_queue=2) as (url, engine):
        assert httpx.get(f"{url}/v1/models").status_code == 401
        wrong = httpx.post(f"{url}/v1/completions", json={"prompt": "hi"}, headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").completions.create(model="tiny", prompt="hi", max_tokens=1)
        assert httpx.get(f"{url}/health").status_code == 200  # probes need no key
        auth = {"Authorization": "Bearer sesame"}
        # one request runs (the only row) and max_queue=2 wait: submitted to the engine directly, the waiting ones
        # once the first runs, so that the queue stays full for the ~120 decode steps of the running one
        ids = tuple(llm.tokenizer.encode(PROMPTS[0]).tolist())
        held = [engine.submit(GenerationRequest(ids, max_tokens=120, ignore_eos=True))]
        deadline = time.monotonic() + 30
        while engine.stats()["running"] < 1:
            assert time.monotonic() < deadline, "the first request never ran"
            time.sleep(0.001)
        with pytest.raises(QueueFull):
            while True:
                held.append(engine.submit(GenerationRequest(ids, max_tokens=120, ignore_eos=True)))
        assert len(held) == 3
        full = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 1}, headers=auth)
        for stream in held:
            engine.abort(stream)
        assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full"
        assert full.headers["retry-after"] == "1"
        out = client(url, "sesame").completions.create(model="tiny", prompt="hi", max_tokens=2, temperature=0)
        assert out.usage.completion_tokens >= 1
        stats = settle(engine)
        assert stats["free_pages"] == stats["total_pages"]


# ---------------------------------------------------------------------------------------------------- chat prompts
def test_chat_prompts_follow_the_prompt_style(llm):
    tk = llm.tokenizer
    messages = [ChatMessage(role="user", content="hi"), ChatMessage(role="assistant", content="hello"),
                ChatMessage(role="user", content=[{"type": "text", "text": "and "}, {"type": "text", "text": "you"}])]
    style = PromptStyle.from_name("alpaca")
    ids = chat_prompt_ids(messages, style, tk)
    bos = [tk.bos_id] if tk.add_bos else []
    stop = style.stop_tokens(tk)[0]
    assert ids == (bos + tk.encode(style.apply("hi")).tolist() + tk.encode("hello").tolist() + stop + bos
                   + tk.encode(style.apply("and you")).tolist())
    system = [ChatMessage(role="system", content="Be brief.")] + messages[:1]
    assert tk.decode(chat_prompt_ids(system, style, tk)).endswith(style.apply("hi", sys_prompt="Be brief."))
    template = ChatTemplate("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>")
    assert chat_prompt_ids(system, template, tk) == tk.encode("<system>Be brief.<user>hi<assistant>").tolist()


# ---------------------------------------------------------------------------------------------------- the command
def test_sigterm_finishes_the_requests_in_flight(checkpoint):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    port = listen("127.0.0.1", 0)
    number = port.getsockname()[1]
    port.close()
    process = subprocess.Popen([sys.executable, "-m", "litgpt", "serve", str(checkpoint), "--port", str(number),
                                "--accelerator", "cpu", "--kv_cache_gib", "0.01", "--max_batch_size", "4"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{number}"
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "the server did not start"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            time.sleep(0.2)
        body = dict(prompt=PROMPTS[0], max_tokens=100, temperature=0, ignore_eos=True, stream=True,
                    stream_options={"include_usage": True})
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
            events = sse_events(response.iter_lines())
            first = next(events)
            process.send_signal(signal.SIGTERM)
            events = [first, *events]
        assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] == 100
        assert [e["choices"][0]["finish_reason"] for e in events[:-2]] == [None] * (len(events) - 3) + ["length"]
        process.wait(60)
        assert process.returncode in (0, -signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_model_names(tmp_path, monkeypatch):
    from litgpt.serve.cli import model_names

    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints" / "EleutherAI" / "pythia-160m").mkdir(parents=True)
    assert model_names(Path("checkpoints/EleutherAI/pythia-160m")) == (
        "EleutherAI/pythia-160m", ("checkpoints/EleutherAI/pythia-160m",))
    assert model_names(Path("out/pretrain/final")) == ("out/pretrain/final", ())


def test_serve_refuses_bad_options_in_one_line(checkpoint, capsys):
    from litgpt.__main__ import main

    taken = listen("127.0.0.1", 0)
    cases = [(["--port", str(taken.getsockname()[1])], "cannot listen on 127.0.0.1"),
             (["--accelerator", "tpu"], "--accelerator must be auto, cpu, cuda, gpu or cuda:N"),
             (["--temperature", "-1"], "temperature must be >= 0"),
             (["--api_key", " "], "--api_key is empty")]
    try:
        for options, message in cases:
            with pytest.raises(SystemExit) as exit:
                main(["serve", str(checkpoint), *options])
            assert exit.value.code == 2
            err = capsys.readouterr().err.strip()
            assert err.count("\n") == 0 and message in err, err
    finally:
        taken.close()
