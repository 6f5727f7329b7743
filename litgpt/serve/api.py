"""The OpenAI-compatible HTTP API over `litgpt.serve.engine.Engine` (FastAPI, served by uvicorn).

Endpoints: `POST /v1/completions` and `POST /v1/chat/completions` (streamed as server-sent events `data: {...}`
ending in `data: [DONE]`, or whole), `GET /v1/models`, `GET /health` (the engine's counters), and the tokenizer as
vLLM serves it (`POST /tokenize`, `POST /detokenize`, `GET /tokenizer_info`), which lm-eval uses when it finds them.
Completions read the prompt as it is (text, token ids, or a list of either: one choice per prompt); chat frames the
messages with the checkpoint's prompt style (its chat template, or a named style: each user turn framed as `litgpt
chat` frames it, each assistant turn's text and the token that ended it after it). `echo` with `logprobs` gives every
prompt token's log-probability (the first is null) and its likeliest alternatives, which is what lm-eval's
`local-completions` model scores with.

Every refused request gets an OpenAI-style error `{"error": {"message", "type", "param", "code"}}`: 400 for a bad
field (named in `param` and in the message), a prompt that does not fit the context (never truncated) or a field this
server does not implement (never ignored when it would change the output), 401 without the API key, 404 for another
model, 429 when the engine's queue is full. A client that disconnects aborts its requests, which frees their rows.
The API knows the engine only through `submit`, `abort`, `stats`, `start` and `shutdown`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Literal, Optional, Sequence, Union

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from litgpt.prompts import PromptStyle, prompt_uses_bos
from litgpt.serve.engine import GenerationRequest, LoopInbox, QueueFull, RequestStream, TokenEvent
from litgpt.tokenizer import IncrementalDecoder, Tokenizer

logger = logging.getLogger(__name__)

MAX_LOGPROBS = 20  # the most alternatives per token a request may ask for (OpenAI's chat limit)
COMPLETION_MAX_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
# the engine's request fields its refusals name -> the request field (None: the prompt field of the endpoint)
ENGINE_FIELDS = {"max_tokens": "max_tokens", "temperature": "temperature", "top_k": "top_k", "top_p": "top_p",
                 "logprobs": "logprobs", "seed": "seed", "stop": "stop", "prompt_ids": None, "prompt": None}


# ------------------------------------------------------------------------------------------------ errors
class APIError(Exception):
    """A refused request: answered as `{"error": {...}}` with `status`."""

    def __init__(self, status: int, message: str, param: Optional[str] = None,
                 type: str = "invalid_request_error", code: Optional[str] = None,
                 headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(message: str, type: str = "invalid_request_error", param: Optional[str] = None,
               code: Optional[str] = None) -> dict:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def validation_error(errors: Sequence[dict]) -> APIError:
    """FastAPI's list of validation errors as one 400 naming the first bad field (`messages[0].role`)."""
    first = errors[0] if errors else {"loc": (), "msg": "the request is not valid", "type": ""}
    loc = [part for part in first.get("loc", ()) if part != "body"]
    param = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc)) or None
    kind, msg = first.get("type", ""), str(first.get("msg", "")).removeprefix("Value error, ")
    if kind == "json_invalid":
        return APIError(400, f"the request body is not valid JSON ({first.get('ctx', {}).get('error', msg)})")
    if kind in ("model_attributes_type", "dict_type") and param is None:
        return APIError(400, "the request body must be a JSON object")
    named = re.match(r"(\w+): ", msg)
    if param is None and named:  # a check across fields names the one it refuses first
        param = named.group(1)
        return APIError(400, f"'{param}'{msg[len(param):]}", param, code="invalid_value")
    if param is None:
        return APIError(400, f"the request is not valid: {msg}")
    if kind == "missing":
        return APIError(400, f"'{param}' is required", param, code="missing_field")
    if kind == "extra_forbidden":
        return APIError(400, f"'{param}' is not supported by this server; leave it out", param,
                        code="unsupported_field")
    return APIError(400, f"'{param}': {msg}", param, code="invalid_value")


# ------------------------------------------------------------------------------------------------ request bodies
class Body(BaseModel):
    """Strict request bodies: a field of the wrong JSON type or one this server does not know is refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(Body):
    include_usage: bool = False  # a last chunk with the usage counts (and no choices)


class SamplingFields(Body):
    """The fields both endpoints share. `top_k` and `ignore_eos` extend OpenAI's (as vLLM's do)."""

    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=0)
    temperature: Optional[float] = Field(None, ge=0.0, allow_inf_nan=False)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: Optional[int] = Field(None, ge=1)
    seed: Optional[int] = None
    stop: Optional[Any] = None  # a string or a list of strings (checked below, for a one-line message)
    n: int = 1
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None  # an end-user id for the operator's records: it does not change the output
    presence_penalty: float = Field(0.0, allow_inf_nan=False)
    frequency_penalty: float = Field(0.0, allow_inf_nan=False)
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: Any) -> Optional[tuple[str, ...]]:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise ValueError("must be a string or a list of strings")
        if any(not s for s in stops):
            raise ValueError("a stop string must not be empty")
        return tuple(stops)

    @field_validator("n")
    @classmethod
    def _n(cls, value: int) -> int:
        if value != 1:
            raise ValueError(f"this server returns one choice per prompt (n=1), got {value}; send the request "
                             "again for more samples (with another seed)")
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _penalty(cls, value: float) -> float:
        if value != 0.0:
            raise ValueError(f"penalties are not implemented by this server: only 0 is accepted, got {value}")
        return value

    @model_validator(mode="after")
    def _stream_options(self) -> "SamplingFields":
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only with stream=true")
        return self


class CompletionRequest(SamplingFields):
    prompt: Any  # text, token ids, or a list of texts or of token id lists (checked in `completion_prompts`)
    echo: bool = False
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: Optional[int] = None
    suffix: Optional[str] = None

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, value: Optional[int]) -> Optional[int]:
        if value not in (None, 1):
            raise ValueError(f"this server returns the one sample it draws (best_of=1), got {value}")
        return value

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value: Optional[str]) -> Optional[str]:
        if value:
            raise ValueError("insertion after a suffix is not implemented by this server; leave suffix out")
        return value


class TextPart(Body):
    type: Literal["text"]
    text: str


class ChatMessage(Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Any  # a string or a list of {"type": "text", "text": ...} parts

    @field_validator("content")
    @classmethod
    def _content(cls, value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            try:
                return "".join(TextPart.model_validate(part).text for part in value)
            except Exception:
                pass
        raise ValueError('must be a string or a list of {"type": "text", "text": "..."} parts')


class ResponseFormat(Body):
    type: Literal["text"]


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    response_format: Optional[ResponseFormat] = None

    @model_validator(mode="after")
    def _chat_fields(self) -> "ChatCompletionRequest":
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: only with logprobs=true")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("max_tokens and max_completion_tokens: give one of them")
        if self.max_tokens == 0:
            raise ValueError("max_tokens: must be >= 1")
        return self


class TokenizeRequest(Body):
    prompt: str
    add_special_tokens: bool = True  # the BOS the tokenizer's own files add, if any


class DetokenizeRequest(Body):
    tokens: list[int]


# ------------------------------------------------------------------------------------------------ the served model
@dataclass(frozen=True)
class SamplingDefaults:
    """What a request that leaves a field out gets. max_tokens None: 16 for completions (OpenAI's default), the rest
    of the context for chat."""

    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: float = 1.0
    max_tokens: Optional[int] = None


@dataclass
class ServedModel:
    """What the API needs to know of the model: its name, tokenizer, prompt style, context and vocabulary."""

    name: str
    tokenizer: Tokenizer
    prompt_style: PromptStyle
    max_seq_length: int
    vocab_size: int
    aliases: tuple[str, ...] = ()  # other names a request's `model` may use (the checkpoint path)
    memory: Optional[Callable[[], dict]] = None  # peak memory counters for /health
    created: int = field(default_factory=lambda: int(time.time()))


def completion_prompts(prompt: Any, tokenizer: Tokenizer, vocab_size: int) -> list[list[int]]:
    """The token ids of each prompt of a completion request: a text, a list of token ids, or a list of either."""
    def is_ids(value: Any) -> bool:
        return isinstance(value, list) and bool(value) and all(type(v) is int for v in value)

    if isinstance(prompt, str) or is_ids(prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or is_ids(p) for p in prompt):
        prompts = prompt
    else:
        raise APIError(400, "'prompt' must be a non-empty string, a list of token ids, or a list of either",
                       "prompt", code="invalid_value")
    bos = prompt_uses_bos(tokenizer)
    out = []
    for i, p in enumerate(prompts):
        where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
        if isinstance(p, str):
            if not p:
                raise APIError(400, f"'{where}' is empty; send some text", where, code="invalid_value")
            ids = tokenizer.encode(p, bos=bos).tolist()
        else:
            bad = [t for t in p if not 0 <= t < vocab_size]
            if bad:
                raise APIError(400, f"'{where}' has token id {bad[0]}, outside the vocabulary of {vocab_size} ids",
                               where, code="invalid_value")
            ids = list(p)
        out.append(ids)
    return out


def chat_prompt_ids(messages: Sequence[ChatMessage], style: PromptStyle, tokenizer: Tokenizer) -> list[int]:
    """The token ids the model reads for a conversation that ends in a user message.

    A chat template renders the whole conversation with its generation prompt. A named style frames each user turn
    (`style.apply`, the system message passed to the first one as `sys_prompt` where the style has a system turn)
    and follows it with the assistant's reply and the token that ended it, as `litgpt chat` holds a conversation.
    """
    turns = [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in messages]
    if turns[-1]["role"] != "user":
        raise APIError(400, f"'messages' must end with a user message, got {turns[-1]['role']!r} last",
                       f"messages[{len(turns) - 1}].role", code="invalid_value")
    bos = prompt_uses_bos(tokenizer, style)
    if hasattr(style, "render"):  # a chat template
        try:
            text = style.render(turns)
        except ValueError as e:
            raise APIError(400, f"'messages': {e}", "messages", code="invalid_value") from None
        return tokenizer.encode(text, bos=bos).tolist()
    system = None
    if turns[0]["role"] == "system":
        system = turns.pop(0)["content"]
        if "sys_prompt" not in inspect.signature(style.apply).parameters:
            raise APIError(400, f"the '{style.name}' prompt style of this model has no system turn; leave the "
                           "system message out", "messages[0].role", code="invalid_value")
    offset = len(messages) - len(turns)
    for i, turn in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn["role"] != expected:
            raise APIError(400, f"the '{style.name}' prompt style takes user and assistant turns in turn (a system "
                           f"message only first); message {i + offset} should be {expected!r}",
                           f"messages[{i + offset}].role", code="invalid_value")
    stops = [s[0] for s in style.stop_tokens(tokenizer) if len(s) == 1]
    ids: list[int] = []
    for i, turn in enumerate(turns):
        if turn["role"] == "user":
            framed = style.apply(turn["content"], sys_prompt=system) if i == 0 and system else style.apply(
                turn["content"])
            ids += tokenizer.encode(framed, bos=bos).tolist()
        else:
            ids += tokenizer.encode(turn["content"]).tolist() + stops[:1]
    return ids


# ------------------------------------------------------------------------------------------------ results
class TokenTexts:
    """The text each token adds (joined: the decoded text), for `logprobs.tokens` and `text_offset`."""

    def __init__(self, tokenizer: Tokenizer, offset: int = 0) -> None:
        self.decoder = IncrementalDecoder(tokenizer)
        self.tokenizer = tokenizer
        self.offset = offset  # characters of the text before the next token's

    def push(self, token_id: int) -> tuple[str, int]:
        """(the token's text, where it starts in the text)."""
        piece, start = self.decoder.push(token_id), self.offset
        self.offset += len(piece)
        return piece, start

    def alternatives(self, top: Optional[dict[int, float]]) -> Optional[dict[str, float]]:
        """{token text: logprob}, likeliest first (ids that decode alike keep the likeliest)."""
        if top is None:
            return None
        out: dict[str, float] = {}
        for token_id, logprob in sorted(top.items(), key=lambda kv: -kv[1]):
            out.setdefault(self.tokenizer.decode([token_id]), logprob)
        return out


@dataclass
class Choice:
    """One request's outcome, gathered from its events."""

    pieces: list[str] = field(default_factory=list)  # the events' texts (joined once, by `text`)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[Optional[float]] = field(default_factory=list)
    top_logprobs: list[Optional[dict[int, float]]] = field(default_factory=list)
    prompt_logprobs: Optional[list[Optional[float]]] = None
    prompt_top_logprobs: Optional[list[Optional[dict[int, float]]]] = None
    finish_reason: Optional[str] = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def add(self, event: TokenEvent) -> None:
        self.pieces.append(event.text)
        if event.prompt_logprobs is not None:
            self.prompt_logprobs = list(event.prompt_logprobs)
            self.prompt_top_logprobs = event.prompt_top_logprobs
        if event.token_id is not None:
            self.token_ids.append(event.token_id)
            self.logprobs.append(event.logprob)
            self.top_logprobs.append(event.top_logprobs)
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason


def usage(prompts: Sequence[Sequence[int]], choices: Sequence[Choice]) -> dict:
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(len(c.token_ids) for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


StreamItem = tuple[int, Union[list[TokenEvent], Exception, None]]  # (stream index, events | the failure | None: end)


async def stream_items(i: int, stream: RequestStream) -> AsyncIterator[StreamItem]:
    """Stream i's items: (i, events) per batch that came at once, then (i, None), or (i, exception) if the engine
    failed (the client gets an error event, not a silent end)."""
    try:
        async for batch in stream.batches():  # a step's events at once
            yield i, batch
        yield i, None
    except Exception as e:
        yield i, e


async def merged_events(streams: Sequence[RequestStream]) -> AsyncIterator[list[StreamItem]]:
    """The items of several streams (`stream_items`) as they come, in lists of every item already there (a server
    behind the engine catches up in fewer, larger sends). One stream, the common case, is read directly; several
    through a reader task each into one inbox."""
    if len(streams) == 1:
        async with contextlib.aclosing(stream_items(0, streams[0])) as items:
            async for item in items:
                yield [item]
        return
    inbox: LoopInbox[StreamItem] = LoopInbox()

    async def read(i: int) -> None:
        async with contextlib.aclosing(stream_items(i, streams[i])) as items:
            async for item in items:
                inbox.put(item)

    tasks = [asyncio.ensure_future(read(i)) for i in range(len(streams))]
    try:
        while True:
            yield await inbox.take()
    finally:
        for task in tasks:
            task.cancel()


def sse(data: Any) -> bytes:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


class ChunkEncoder:
    """The events of one streamed response: its envelope (id, object, created, model) is serialized once, each chunk
    only what follows it (a chunk per token: this is the server's per-token work)."""

    def __init__(self, envelope: dict) -> None:
        self.head = b"data: " + json.dumps(envelope)[:-1].encode() + b", "  # the envelope without its closing brace

    def choice(self, choice: dict) -> bytes:
        return b"".join((self.head, b'"choices": [', json.dumps(choice).encode(), b"]}\n\n"))

    def usage(self, counts: dict) -> bytes:
        return b"".join((self.head, b'"choices": [], "usage": ', json.dumps(counts).encode(), b"}\n\n"))


# ------------------------------------------------------------------------------------------------ the server
class ClosingStreamingResponse(StreamingResponse):
    """A streamed response that calls `on_close` however it ends: sent to the end, or cut by the client."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


class OpenAIServer:
    """The routes' logic: requests to `GenerationRequest`s, the engine's events to OpenAI's responses."""

    def __init__(self, engine: Any, model: ServedModel, defaults: SamplingDefaults = SamplingDefaults(),
                 api_key: Optional[str] = None) -> None:
        self.engine, self.model, self.defaults, self.api_key = engine, model, defaults, api_key

    # -------------------------------------------------------------------------------------------- checks
    def check_api_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>' with the "
                           "server's --api_key", type="authentication_error", code="invalid_api_key")

    def check_model(self, name: Optional[str]) -> None:
        if name is not None and name not in (self.model.name, *self.model.aliases):
            raise APIError(404, f"model {name!r} is not served here; this server serves {self.model.name!r}",
                           "model", code="model_not_found")

    def generation_request(self, body: SamplingFields, prompt_ids: list[int], max_tokens: Optional[int],
                           where: str, logprobs: Optional[int] = None, prompt_logprobs: bool = False,
                           ) -> GenerationRequest:
        """The engine's request for one prompt; a prompt that does not fit the context with max_tokens is refused.
        `max_tokens` None: the rest of the context."""
        if not prompt_ids:
            raise APIError(400, f"'{where}' gives no tokens; send some text", where, code="invalid_value")
        context, n = self.model.max_seq_length, len(prompt_ids)
        if max_tokens is None:
            if n >= context:
                raise APIError(400, f"the prompt has {n} tokens, which leaves no room in the model's context of "
                               f"{context} tokens; shorten it", where, code="context_length_exceeded")
            max_tokens = context - n
        elif n + max_tokens > context:
            raise APIError(400, f"the prompt has {n} tokens and max_tokens is {max_tokens}: {n + max_tokens} exceeds "
                           f"the model's context of {context} tokens; shorten the prompt or lower max_tokens",
                           "max_tokens", code="context_length_exceeded")
        d = self.defaults
        return GenerationRequest(
            prompt_ids=tuple(prompt_ids), max_tokens=max_tokens,
            temperature=d.temperature if body.temperature is None else body.temperature,
            top_k=d.top_k if body.top_k is None else body.top_k,
            top_p=d.top_p if body.top_p is None else body.top_p,
            seed=body.seed, stop=body.stop or (), ignore_eos=body.ignore_eos, logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
        )

    def submit(self, requests: Sequence[GenerationRequest], where: str) -> list[RequestStream]:
        """Submit every request, or none: a refusal aborts those already submitted. `where`: the request's prompt
        field, for a refusal that names the prompt."""
        streams: list[RequestStream] = []
        try:
            for request in requests:
                streams.append(self.engine.submit(request))
        except QueueFull:
            self.abort(streams)
            raise APIError(429, "the server's queue of waiting requests is full; retry later", type="rate_limit_error",
                           code="queue_full", headers={"Retry-After": "1"}) from None
        except ValueError as e:  # the engine's one-line refusal names the field
            self.abort(streams)
            message = str(e)
            field = next((f for f in ENGINE_FIELDS if re.search(rf"\b{f}\b", message)), None)
            raise APIError(400, message, ENGINE_FIELDS.get(field, where), code="invalid_value") from None
        except RuntimeError as e:  # the engine is shutting down
            self.abort(streams)
            raise APIError(503, f"the server is not taking requests: {e}", type="server_error",
                           code="unavailable") from None
        return streams

    def abort(self, streams: Sequence[RequestStream], finished: Sequence[bool] = ()) -> None:
        for i, stream in enumerate(streams):
            if i >= len(finished) or not finished[i]:
                self.engine.abort(stream)

    async def collect(self, request: Request, streams: list[RequestStream]) -> list[Choice]:
        """Every stream's events gathered; a client that disconnects meanwhile aborts them all."""
        choices = [Choice() for _ in streams]
        finished = [False] * len(streams)

        async def drain(i: int) -> None:
            async for event in streams[i]:
                choices[i].add(event)
            finished[i] = True

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        gathered = asyncio.ensure_future(asyncio.gather(*(drain(i) for i in range(len(streams)))))
        watcher = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({gathered, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not gathered.done():
                gathered.cancel()
                self.abort(streams, finished)
                with contextlib.suppress(BaseException):
                    await gathered
        if not gathered.done() or gathered.cancelled():
            raise APIError(499, "the client closed the request", code="client_closed")
        gathered.result()
        if any(c.finish_reason == "abort" for c in choices):
            raise APIError(503, "the server stopped the request before it finished", type="server_error",
                           code="aborted")
        return choices

    def streaming(self, streams: list[RequestStream], chunks: Callable[[int, TokenEvent], list[bytes]],
                  first: Sequence[bytes] = (), last: Callable[[], list[bytes]] = lambda: []) -> StreamingResponse:
        """An SSE response: the `first` events, then `chunks(i, event)` for each event of stream i as it comes,
        `last()`, then `[DONE]`. The streams are aborted when the response ends before they do (a client that
        disconnects)."""
        finished = [False] * len(streams)

        async def events() -> AsyncIterator[bytes]:
            if first:
                yield b"".join(first)
            open_streams = len(streams)
            async with contextlib.aclosing(merged_events(streams)) as merged:  # its readers end with the response
                async for items in merged:
                    out = []
                    for i, events in items:
                        if events is None:
                            finished[i] = True
                            open_streams -= 1
                        elif isinstance(events, Exception):
                            logger.error("a streamed request failed: %s", events)
                            yield b"".join(out) + sse(error_body(f"the request failed: {events}", "server_error"))
                            return
                        else:
                            for event in events:
                                out.extend(chunks(i, event))
                    if open_streams == 0:
                        out.extend(last())
                        out.append(sse("[DONE]"))
                    if out:
                        yield b"".join(out)
                    if open_streams == 0:
                        return

        return ClosingStreamingResponse(events(), lambda: self.abort(streams, finished),
                                        media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    def envelope(self, kind: str) -> dict:
        prefix = "cmpl" if kind == "text_completion" else "chatcmpl"
        return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
                "model": self.model.name}

    # -------------------------------------------------------------------------------------------- completions
    async def completions(self, body: CompletionRequest, request: Request) -> Any:
        self.check_model(body.model)
        prompts = completion_prompts(body.prompt, self.model.tokenizer, self.model.vocab_size)
        max_tokens = body.max_tokens if body.max_tokens is not None else (
            self.defaults.max_tokens or COMPLETION_MAX_TOKENS)
        if max_tokens == 0 and not body.echo:
            raise APIError(400, "'max_tokens' must be >= 1 (0 only with echo=true: the prompt's logprobs alone)",
                           "max_tokens", code="invalid_value")
        echo_logprobs = body.echo and body.logprobs is not None
        requests = [self.generation_request(body, ids, max(max_tokens, 1),
                                            "prompt" if len(prompts) == 1 else f"prompt[{i}]", body.logprobs,
                                            echo_logprobs)
                    for i, ids in enumerate(prompts)]
        streams = self.submit(requests, "prompt")
        hide = max_tokens == 0  # echo of the prompt alone: the one token drawn is not returned
        if body.stream:
            return self.stream_completions(body, prompts, streams, hide)
        choices = await self.collect(request, streams)
        if hide:
            choices = [Choice(prompt_logprobs=c.prompt_logprobs, prompt_top_logprobs=c.prompt_top_logprobs,
                              finish_reason="length") for c in choices]
        out = self.envelope("text_completion")
        out["choices"] = [self.completion_choice(i, body, prompts[i], c) for i, c in enumerate(choices)]
        out["usage"] = usage(prompts, choices)
        return out

    def completion_choice(self, index: int, body: CompletionRequest, prompt_ids: list[int], choice: Choice) -> dict:
        tokenizer = self.model.tokenizer
        prefix = tokenizer.decode(prompt_ids) if body.echo else ""
        logprobs = None
        if body.logprobs is not None:
            texts = TokenTexts(tokenizer)
            logprobs = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
            if body.echo:
                self._append_prompt_logprobs(logprobs, texts, prompt_ids, choice)
                texts.offset = len(prefix)
            for token_id, lp, top in zip(choice.token_ids, choice.logprobs, choice.top_logprobs):
                self._append_logprob(logprobs, texts, token_id, lp, top)
        return {"index": index, "text": prefix + choice.text, "logprobs": logprobs,
                "finish_reason": choice.finish_reason}

    @classmethod
    def _append_prompt_logprobs(cls, logprobs: dict, texts: TokenTexts, prompt_ids: list[int], choice: Choice) -> None:
        """The echoed prompt's tokens: each one's logprob given those before (the first has none) and, with
        logprobs n >= 1, the n likeliest tokens at its position."""
        n = len(prompt_ids)
        values = choice.prompt_logprobs or [None] * n
        tops = choice.prompt_top_logprobs or [None] * n
        for token_id, lp, top in zip(prompt_ids, values, tops):
            cls._append_logprob(logprobs, texts, token_id, lp, top)

    @staticmethod
    def _append_logprob(logprobs: dict, texts: TokenTexts, token_id: int, lp: Optional[float],
                        top: Optional[dict[int, float]]) -> None:
        piece, start = texts.push(token_id)
        logprobs["tokens"].append(piece)
        logprobs["token_logprobs"].append(lp)
        logprobs["top_logprobs"].append(texts.alternatives(top))
        logprobs["text_offset"].append(start)

    def stream_completions(self, body: CompletionRequest, prompts: list[list[int]], streams: list[RequestStream],
                           hide: bool) -> StreamingResponse:
        encoder = ChunkEncoder(self.envelope("text_completion"))
        tokenizer = self.model.tokenizer
        texts = [TokenTexts(tokenizer) for _ in streams]
        choices = [Choice() for _ in streams]
        echoed = [False] * len(streams)

        def chunk(index: int, text: str, logprobs: Optional[dict], finish: Optional[str]) -> bytes:
            return encoder.choice({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish})

        def events(i: int, event: TokenEvent) -> list[bytes]:
            out = []
            choices[i].add(event)
            if body.echo and not echoed[i]:  # the first event: the prompt first (with its logprobs when asked)
                echoed[i] = True
                prompt = tokenizer.decode(prompts[i])
                lp = None
                if body.logprobs is not None:
                    lp = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
                    self._append_prompt_logprobs(lp, texts[i], prompts[i], choices[i])
                    texts[i].offset = len(prompt)
                out.append(chunk(i, prompt, lp, None))
            if hide:
                return out + ([chunk(i, "", None, "length")] if event.finish_reason else [])
            lp = None
            if body.logprobs is not None and event.token_id is not None:
                lp = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
                self._append_logprob(lp, texts[i], event.token_id, event.logprob, event.top_logprobs)
            if event.text or lp is not None or event.finish_reason is not None:
                out.append(chunk(i, event.text, lp, event.finish_reason))
            return out

        def last() -> list[bytes]:
            if body.stream_options is None or not body.stream_options.include_usage:
                return []
            counted = [Choice() for _ in choices] if hide else choices
            return [encoder.usage(usage(prompts, counted))]

        return self.streaming(streams, events, last=last)

    # -------------------------------------------------------------------------------------------- chat
    async def chat(self, body: ChatCompletionRequest, request: Request) -> Any:
        self.check_model(body.model)
        prompt = chat_prompt_ids(body.messages, self.model.prompt_style, self.model.tokenizer)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        room = self.model.max_seq_length - len(prompt)
        if max_tokens is None and self.defaults.max_tokens is not None and self.defaults.max_tokens < room:
            max_tokens = self.defaults.max_tokens  # the server's default caps a reply; None: the rest of the context
        top = (body.top_logprobs or 0) if body.logprobs else None
        streams = self.submit([self.generation_request(body, prompt, max_tokens, "messages", top)], "messages")
        if body.stream:
            return self.stream_chat(body, prompt, streams)
        choice = (await self.collect(request, streams))[0]
        out = self.envelope("chat.completion")
        logprobs = None
        if body.logprobs:
            texts = TokenTexts(self.model.tokenizer)
            logprobs = {"content": [self.chat_logprob(texts, t, lp, top, body.top_logprobs or 0)
                                    for t, lp, top in zip(choice.token_ids, choice.logprobs, choice.top_logprobs)]}
        out["choices"] = [{"index": 0, "message": {"role": "assistant", "content": choice.text},
                           "logprobs": logprobs, "finish_reason": choice.finish_reason}]
        out["usage"] = usage([prompt], [choice])
        return out

    @staticmethod
    def chat_logprob(texts: TokenTexts, token_id: int, lp: Optional[float], top: Optional[dict[int, float]],
                     k: int) -> dict:
        piece, _ = texts.push(token_id)
        alternatives = texts.alternatives(top) or {}
        return {"token": piece, "logprob": lp, "bytes": list(piece.encode()),
                "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())}
                                 for t, v in list(alternatives.items())[:k]]}

    def stream_chat(self, body: ChatCompletionRequest, prompt: list[int], streams: list[RequestStream],
                    ) -> StreamingResponse:
        encoder = ChunkEncoder(self.envelope("chat.completion.chunk"))
        texts = TokenTexts(self.model.tokenizer)
        choice = Choice()

        def chunk(delta: dict, logprobs: Optional[dict] = None, finish: Optional[str] = None) -> bytes:
            return encoder.choice({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish})

        def events(_: int, event: TokenEvent) -> list[bytes]:
            choice.add(event)
            logprobs = None
            if body.logprobs and event.token_id is not None:
                logprobs = {"content": [self.chat_logprob(texts, event.token_id, event.logprob, event.top_logprobs,
                                                          body.top_logprobs or 0)]}
            out = []
            if event.text or logprobs is not None:
                out.append(chunk({"content": event.text}, logprobs))
            if event.finish_reason is not None:
                out.append(chunk({}, None, event.finish_reason))
            return out

        def last() -> list[bytes]:
            if body.stream_options is None or not body.stream_options.include_usage:
                return []
            return [encoder.usage(usage([prompt], [choice]))]

        return self.streaming(streams, events, first=[chunk({"role": "assistant", "content": ""})], last=last)

    # -------------------------------------------------------------------------------------------- others
    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model.name, "object": "model", "created": self.model.created,
                                            "owned_by": "litgpt", "max_model_len": self.model.max_seq_length}]}

    def tokenizer_info(self) -> dict:
        """The tokenizer's special tokens, context and chat template (what lm-eval's remote tokenizer reads)."""
        tk = self.model.tokenizer

        def token(i: Optional[int]) -> Optional[str]:
            return None if i is None else tk.decode([i])

        style = self.model.prompt_style
        return {"eos_token": token(tk.eos_id), "bos_token": token(tk.bos_id), "pad_token": None,
                "add_bos_token": bool(tk.add_bos), "model_max_length": self.model.max_seq_length,
                "chat_template": getattr(style, "template", None)}

    def tokenize(self, body: TokenizeRequest) -> dict:
        tk = self.model.tokenizer
        ids = tk.encode(body.prompt, bos=body.add_special_tokens and prompt_uses_bos(tk)).tolist()
        return {"tokens": ids, "count": len(ids), "max_model_len": self.model.max_seq_length}

    def detokenize(self, body: DetokenizeRequest) -> dict:
        bad = [t for t in body.tokens if not 0 <= t < self.model.vocab_size]
        if bad:
            raise APIError(400, f"'tokens' has token id {bad[0]}, outside the vocabulary of {self.model.vocab_size} "
                           "ids", "tokens", code="invalid_value")
        return {"prompt": self.model.tokenizer.decode(body.tokens)}

    def health(self) -> dict:
        stats = dict(self.engine.stats())
        if self.model.memory is not None:
            stats.update(self.model.memory())
        return {"status": "ok", "model": self.model.name, **stats}


def create_app(engine: Any, model: ServedModel, defaults: SamplingDefaults = SamplingDefaults(),
               api_key: Optional[str] = None) -> FastAPI:
    """The FastAPI app: starts the engine with the app and, at shutdown (after uvicorn has let the requests in flight
    finish), drains and stops it."""
    server = OpenAIServer(engine, model, defaults, api_key)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.shutdown, True)

    app = FastAPI(title="litgpt serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        return validation_error(e.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        routes = "/v1/completions, /v1/chat/completions, /v1/models, /tokenize, /detokenize, /tokenizer_info, /health"
        message = (f"no route {request.method} {request.url.path}; this server has {routes}"
                   if e.status_code in (404, 405) else str(e.detail))
        return APIError(e.status_code, message, code="not_found" if e.status_code == 404 else None).response()

    @app.exception_handler(Exception)
    async def failure(_: Request, e: Exception) -> JSONResponse:
        logger.exception("request failed")
        return APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error").response()

    authorized = [Depends(server.check_api_key)]

    @app.post("/v1/completions", dependencies=authorized)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        return await server.completions(body, request)

    @app.post("/v1/chat/completions", dependencies=authorized)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        return await server.chat(body, request)

    @app.get("/v1/models", dependencies=authorized)
    async def models() -> dict:
        return server.models()

    @app.get("/tokenizer_info", dependencies=authorized)
    async def tokenizer_info() -> dict:
        return server.tokenizer_info()

    @app.post("/tokenize", dependencies=authorized)
    async def tokenize(body: TokenizeRequest) -> dict:
        return server.tokenize(body)

    @app.post("/detokenize", dependencies=authorized)
    async def detokenize(body: DetokenizeRequest) -> dict:
        return server.detokenize(body)

    @app.get("/health")
    async def health() -> dict:
        return server.health()

    return app
