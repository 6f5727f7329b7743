"""`litgpt chat`: a multi-turn conversation on stdin that keeps the KV cache between turns.

Each turn prefills only the new text (the user's message, framed by the prompt style, after the last token of the
previous reply) at the positions after the conversation so far, then decodes with the same static step as
`litgpt generate`. With a checkpoint's chat template the whole conversation is rendered each turn and only the
tokens after the cached ones are fed; when the rendering no longer starts with what the cache holds (a template
that rewrites earlier turns), the conversation is prefilled again from the start. When the context is full the
conversation starts over. EOF or an empty line ends the session.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional, TextIO

import torch

from litgpt.api import LLM
from litgpt.generate.base import SamplingParams, resolve_device
from litgpt.generate.loading import load_llm
from litgpt.kv_cache import check_kv_cache_dtype
from litgpt.quantize import check_inference_quantize
from litgpt.generate.session import decode_mode
from litgpt.prompts import ChatTemplate
from litgpt.utils import warn_compile_on_cpu


class Conversation:
    """The state of one chat: the cache holds `position` tokens; `pending` ids are sampled but not yet cached."""

    def __init__(
        self, llm: LLM, params: SamplingParams, seed: int, compile: Optional[bool], max_new_tokens: int = 200,
        kernels: bool = True,
    ) -> None:
        self.llm = llm
        self.cache_len = llm.model.max_seq_length
        mode = decode_mode(llm.device, max_new_tokens, compile)
        self.session = llm.decode_session(1, self.cache_len, params, mode, kernels)  # the whole context, kept
        self.session.seed(seed)
        self.stop_tokens = llm.prompt_style.stop_tokens(llm.tokenizer)
        self.position = 0
        self.pending: list[int] = []
        # with a chat template: the messages so far and the ids the cache holds (`position` of them)
        self.template = llm.prompt_style if isinstance(llm.prompt_style, ChatTemplate) else None
        self.messages: list[dict[str, str]] = []
        self.cached: list[int] = []
        self.first_token_s = 0.0
        self.prepare_s = 0.0

    def reply(self, message: str, max_new_tokens: int, out: TextIO) -> tuple[list[int], float]:
        """Stream the reply to `message` to `out`; returns its ids and the seconds it took (`first_token_s`: the
        seconds to its first token; `prepare_s`: those the decode step spent on its compile/capture, on the first
        turn that decodes)."""
        if self.template is not None:
            return self._reply_templated(message, max_new_tokens, out)
        new_ids = self.llm.encode_prompts([message])[0].tolist()
        if len(new_ids) + max_new_tokens > self.cache_len:
            raise ValueError(
                f"message ({len(new_ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context of "
                f"{self.cache_len} tokens; send a shorter message or lower --max_new_tokens"
            )
        ids = self.pending + new_ids
        if self.position + len(ids) + max_new_tokens > self.cache_len:
            sys.stderr.write(f"[context full ({self.cache_len} tokens): starting a new conversation; a lower "
                             "--max_new_tokens leaves room for more turns]\n")
            self.position, ids = 0, new_ids
        t0 = time.perf_counter()
        captured_before = self.session.step.prepare_s
        prompt = torch.tensor(ids, dtype=torch.int64)
        kept, taken, self.first_token_s = self.session.stream(
            prompt, max_new_tokens, self.llm.tokenizer, self.stop_tokens, out, self.position
        )
        # the cache now holds the message and every reply token but the last, which opens the next turn
        self.position += len(ids) + len(taken) - 1
        self.pending = taken[-1:]
        self.prepare_s = self.session.step.prepare_s - captured_before
        return kept, time.perf_counter() - t0

    def _render(self, messages: list[dict[str, str]]) -> list[int]:
        return self.llm.tokenizer.encode(self.template.render(messages)).tolist()

    def _reply_templated(self, message: str, max_new_tokens: int, out: TextIO) -> tuple[list[int], float]:
        """`reply` with the chat template: render the conversation with the new message; feed what follows the
        cached ids (all of it when the rendering changed what the cache holds, or when the context is full: then
        the conversation starts over from the system message, if any, and this message)."""
        messages = self.messages + [{"role": "user", "content": message}]
        full = self._render(messages)
        if full[: self.position] != self.cached:
            self.position, self.cached = 0, []
        if len(full) + max_new_tokens > self.cache_len:
            system = [m for m in self.messages[:1] if m["role"] == "system"]
            messages = system + [{"role": "user", "content": message}]
            full = self._render(messages)
            if len(full) + max_new_tokens > self.cache_len:
                raise ValueError(
                    f"message ({len(full)} tokens with the chat template) + max_new_tokens ({max_new_tokens}) exceeds "
                    f"the context of {self.cache_len} tokens; send a shorter message or lower --max_new_tokens"
                )
            sys.stderr.write(f"[context full ({self.cache_len} tokens): starting a new conversation; a lower "
                             "--max_new_tokens leaves room for more turns]\n")
            self.position, self.cached = 0, []
        ids = full[self.position :]
        t0 = time.perf_counter()
        captured_before = self.session.step.prepare_s
        kept, taken, self.first_token_s = self.session.stream(
            torch.tensor(ids, dtype=torch.int64), max_new_tokens, self.llm.tokenizer, self.stop_tokens, out,
            self.position,
        )
        # the cache holds the rendered conversation and every reply token but the last
        self.cached = full + taken[:-1]
        self.position = len(self.cached)
        self.messages = messages + [{"role": "assistant", "content": self.llm.tokenizer.decode(kept)}]
        self.prepare_s = self.session.step.prepare_s - captured_before
        return kept, time.perf_counter() - t0


def default_max_new_tokens(context: int) -> int:
    """A reply's default length: a quarter of the context, at most 200 tokens, so that about three turns fit before
    the conversation starts over (64 in the quick start's 256-token context, where a fixed 200 made the second turn
    start over)."""
    return max(1, min(200, context // 4))


def main(
    checkpoint_dir: Path,
    max_new_tokens: Optional[int] = None,
    temperature: float = 0.8,
    top_k: Optional[int] = 50,
    top_p: float = 1.0,
    seed: int = 1234,
    precision: Optional[str] = None,
    device: str = "auto",
    compile: Optional[bool] = None,
    kernels: bool = True,
    prompt_style: Optional[str] = None,
    quantize: Optional[str] = None,
    kv_cache_dtype: Optional[str] = None,
) -> None:
    """Chat with a checkpoint: type a message, read the streamed reply; an empty line or EOF (Ctrl-D) quits.

    Args:
        checkpoint_dir: a directory with lit_model.pth, model_config.yaml and tokenizer files.
        max_new_tokens: most tokens per reply (default: a quarter of the model's context, at most 200: 64 for a
            256-token context). When the next message and reply would not fit after the conversation so far, the
            conversation starts over.
        temperature: sampling temperature; 0 is greedy decoding.
        top_k: sample only among the k likeliest tokens (null for all).
        top_p: sample only among the likeliest tokens whose probability adds up to top_p (1.0 for all).
        seed: sampling seed.
        precision: weight precision: 32-true, bf16-true, 16-true, 64-true (default: bf16 on CUDA, else 32-true).
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        compile: compile the decode step (true), or not (false); default: by max_new_tokens (on CUDA, a CUDA graph
            of the eager step for short replies, the compiled step for long ones; on the CPU, eager).
        kernels: on CUDA, decode with the Triton kernels of `litgpt.kernels` (false: pure torch). No effect on CPU.
        prompt_style: how messages are framed (default: the checkpoint's prompt_style.yaml, else its chat
            template, else plain text; chat_template: the checkpoint's chat template).
        quantize: store the linear layers' weights quantized by bitsandbytes: bnb.nf4, bnb.nf4-dq, bnb.fp4,
            bnb.fp4-dq (4-bit) or bnb.int8 (LLM.int8()); the LM head stays in --precision. The weights load in full
            first; a quantized model decodes unfolded (see `litgpt.quantize.quantize_linears`).
        kv_cache_dtype: the KV cache's format: null (the weights' dtype) or fp8_e4m3 (e4m3 values with float32
            scales, `litgpt.kv_cache`); the conversation's later turns read the cached turns in that format.
    """
    params = SamplingParams(temperature, top_k, top_p)
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    warn_compile_on_cpu(compile, resolve_device(device))
    check_inference_quantize(quantize)
    check_kv_cache_dtype(kv_cache_dtype)
    llm = load_llm(checkpoint_dir, device, precision, prompt_style, quantize, kv_cache_dtype)
    if max_new_tokens is None:
        max_new_tokens = default_max_new_tokens(llm.model.max_seq_length)
    conversation = Conversation(llm, params, seed, compile, max_new_tokens, kernels)
    sys.stderr.write("Chat: type a message and press Enter; an empty line or Ctrl-D quits.\n")
    while True:
        sys.stdout.write(">> Prompt: ")
        sys.stdout.flush()
        line = sys.stdin.readline()
        if not line.strip():  # "" is EOF, "\n" an empty line
            sys.stdout.write("\n")
            break
        sys.stdout.write(">> Reply: ")
        try:
            ids, seconds = conversation.reply(line.rstrip("\n"), max_new_tokens, sys.stdout)
        except ValueError as e:
            sys.stderr.write(f"litgpt: error: {e}\n")
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        first, prepare = conversation.first_token_s, conversation.prepare_s
        decode = seconds - first - prepare
        rate = (len(ids) - 1) / decode if len(ids) > 1 and decode > 0 else 0.0
        prepared = f", prepare {prepare:.3f} s" if prepare else ""
        sys.stderr.write(f"[{len(ids)} tokens in {seconds:.2f} s, first token {first:.3f} s{prepared}, {rate:,.1f} "
                         f"tokens/s, {conversation.position} in context]\n")
