"""The decode session (litgpt/generate/session.py): generate, chat, LLM and the decode benchmark all decode through
one `DecodeSession`; the default mode by device and length; sessions are reused while they serve."""

import io
import sys
import time

import pytest
import torch

from litgpt.api import LLM
from litgpt.benchmark.decode import benchmark_decode
from litgpt.generate.base import SamplingParams
from litgpt.generate.chat import Conversation
from litgpt.generate.session import COMPILE_FROM_TOKENS, DecodeSession, decode_mode
from test_generate import make_checkpoint, make_model


@pytest.fixture
def built(monkeypatch) -> list[tuple]:
    """Every DecodeSession built while the test runs, as its key (batch, cache_len, params, mode, kernels)."""
    sessions = []
    original = DecodeSession.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        sessions.append(self.key)

    monkeypatch.setattr(DecodeSession, "__init__", spy)
    return sessions


def test_decode_mode_by_device_and_length():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert decode_mode(cpu, 10_000) == "eager" and decode_mode(cpu, 10, compile=True) == "compile"
    assert decode_mode(cuda, COMPILE_FROM_TOKENS - 1) == "cuda_graph"  # a captured eager step: milliseconds
    assert decode_mode(cuda, COMPILE_FROM_TOKENS) == "compile+cuda_graph"  # long enough to repay a compile
    assert decode_mode(cuda, 1000) == decode_mode(cuda, 1000, batch_size=8) == "cuda_graph"
    assert decode_mode(cuda, COMPILE_FROM_TOKENS // 8, batch_size=8) == "compile+cuda_graph"  # tokens of all rows
    assert decode_mode(cuda, 10, compile=True) == "compile+cuda_graph"
    assert decode_mode(cuda, 10_000, compile=False) == "cuda_graph"


def test_llm_generate_builds_one_session_and_reuses_it(tmp_path, built):
    llm = LLM.load(make_checkpoint(tmp_path), device="cpu")
    llm.generate("the cat", max_new_tokens=4, temperature=0)
    assert built == [(1, llm.session.cache_len, SamplingParams(0.0), "eager", True)]
    first = llm.session
    llm.generate("the cat", max_new_tokens=4, temperature=0)  # same prompt length: the same session serves
    assert llm.session is first and len(built) == 1
    llm.generate(["the cat", "a dog ran"], max_new_tokens=4, temperature=0)  # another batch: a new one
    assert len(built) == 2 and built[-1][0] == 2


def test_compiled_sessions_span_the_context_and_are_kept(tmp_path, built):
    llm = LLM.load(make_checkpoint(tmp_path), device="cpu")
    session = llm.decode_session(1, 20, SamplingParams(0.0), "compile")
    assert session.cache_len == llm.model.max_seq_length  # later calls of any length fit
    assert llm.decode_session(1, 35, SamplingParams(0.0), "compile") is session
    assert llm.decode_session(1, 35, SamplingParams(0.0), "compile", kernels=False) is not session
    assert [key[3] for key in built] == ["compile", "compile"]
    kept = llm.session
    llm.model.set_kv_cache(2, 16)  # someone else replaced the cache: the captured step would read stale buffers
    assert llm.decode_session(1, 35, SamplingParams(0.0), "compile", kernels=False) is not kept


def test_chat_decodes_through_a_session(tmp_path, built):
    llm = LLM.load(make_checkpoint(tmp_path), device="cpu")
    conversation = Conversation(llm, SamplingParams(0.0), seed=0, compile=None)
    conversation.reply("the cat", 5, io.StringIO())
    conversation.reply("a dog", 5, io.StringIO())
    assert built == [(1, llm.model.max_seq_length, SamplingParams(0.0), "eager", True)]  # one, for both turns
    assert conversation.session is llm.session and conversation.first_token_s > 0


def test_generate_command_decodes_through_a_session(tmp_path, built, monkeypatch, capsys):
    from litgpt.__main__ import main

    checkpoint_dir = make_checkpoint(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    main(["generate", str(checkpoint_dir), "--device", "cpu", "--max_new_tokens", "3", "--temperature", "0",
          "--kernels", "false"])
    assert len(built) == 1 and built[0][0] == 1 and built[0][3:] == ("eager", False)
    assert capsys.readouterr().out.strip()


def test_decode_benchmark_decodes_through_a_session(built):
    model = make_model("debug-mla", block_size=64)
    result = benchmark_decode(model, 2, 32, decode_steps=2, warmup=1, mode="eager", kernels=False)
    assert built == [(2, 32, SamplingParams(0.0), "eager", False)]
    assert result["decode_tokens_per_s"] > 0
    assert all(block.attn.use_kernel is False for block in model.transformer.h)  # the session set the switch


class FakeClock:
    """`time.perf_counter` that advances TICK_S at each reading and `advance(s)` when a test says so: durations are
    sums of known steps, whatever the machine's load."""

    TICK_S = 1e-3

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.TICK_S
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_first_streamed_token_comes_before_the_steps_capture_which_counts_as_prepare(tmp_path, monkeypatch):
    """A step that compiles or captures does so at its first call, the first decode step after the prefill: the
    streamed first token is written before it, and its time is reported as prepare, not as decode. The capture is a
    jump of CAPTURE_S on a fake clock (every reading of `time.perf_counter` adds 1 ms): the stats must put that jump
    (and a few readings' ticks) into prepare_s and none of it into decode_s, on any machine."""
    from litgpt.generate.base import DecodeStep

    CAPTURE_S = 1000.0
    llm = LLM.load(make_checkpoint(tmp_path), device="cpu")
    events: list[str] = []
    original = DecodeStep._call
    clock = FakeClock()

    def capturing_first_call(self, token, input_pos):  # stands in for a CUDA-graph capture of CAPTURE_S
        if not self.prepared:
            events.append("capture")
            clock.advance(CAPTURE_S)
        return original(self, token, input_pos)

    class Recorder(io.StringIO):
        def write(self, text: str) -> int:
            events.append("text")
            return super().write(text)

    monkeypatch.setattr(DecodeStep, "_call", capturing_first_call)
    llm.generate_with_stats(["the cat"], max_new_tokens=8, temperature=0)  # builds the session (eager on the CPU)
    assert events == ["capture"]  # its first decode step prepared it (the fold)
    events.clear()
    session = llm.session
    session.step.prepared = False  # an eager step has nothing to prepare; make this one behave like a captured one
    session.step.prepare_s = 0.0
    with monkeypatch.context() as fake_time:
        fake_time.setattr(time, "perf_counter", clock)
        _, stats = llm.generate_with_stats(["the cat"], max_new_tokens=8, temperature=0, stream=Recorder())
    assert llm.session is session
    assert events[:3] == ["text", "text", "capture"]  # the prompt, the first token, then the capture
    assert CAPTURE_S <= session.step.prepare_s < CAPTURE_S + 1.0  # the capture and a few ticks
    assert stats["prepare_s"] == session.step.prepare_s  # a reused session: nothing built, only the capture
    after_first_token = stats["total_s"] - stats["time_to_first_token_s"]
    assert CAPTURE_S < after_first_token < CAPTURE_S + 1.0  # the capture came after the first token
    assert 0 < stats["decode_s"] < 1.0  # a few ticks: none of the capture
    assert stats["decode_s"] == pytest.approx(after_first_token - stats["prepare_s"])
    assert stats["decode_tokens_per_s"] == pytest.approx(7 / stats["decode_s"])
    _, again = llm.generate_with_stats(["the cat"], max_new_tokens=8, temperature=0)  # reused: nothing to prepare
    assert again["prepare_s"] == 0.0 and events.count("capture") == 1


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["debug", "debug-mla"])
def test_an_unfolded_session_captures_the_unfolded_step(name):
    """`litgpt benchmark decode --fold false` builds its session with fold=False on a model folded before: the step
    is captured at its first call on the blocks' own modules and decodes what the eager unfolded step decodes."""
    from litgpt.fold import fold_for_decode, is_folded
    from litgpt.generate.base import DecodeStep, generate_tokens

    model = make_model(name).cuda()  # float32: the torch path in both, the same kernels
    prompt = [torch.randint(model.config.vocab_size, (5,), device="cuda")]
    fold_for_decode(model)
    session = DecodeSession(model, 1, 32, SamplingParams(0.0), "cuda_graph", kernels=False, fold=False)
    assert not is_folded(model) and not session.step.prepared
    captured = [int(t) for t in session.tokens(prompt, 12)]
    model.set_kv_cache(1, max_seq_length=32)
    eager = DecodeStep(model, session.sampler, "eager")
    reference = [int(t) for t in generate_tokens(model, prompt, 12, session.sampler, eager)]
    assert session.step.prepared and captured == reference and not is_folded(model)


@pytest.mark.parametrize("name", ["debug", "debug-mla"])
def test_the_session_folds_at_the_first_decode_step_after_the_first_token(name):
    """Folding is left off the first token's path: the build and the prefill leave the model unfolded, the first
    decode step folds it (counted in prepare_s), and the tokens are those of a model folded before the prefill."""
    from litgpt.fold import fold_for_decode, is_folded
    from litgpt.generate.base import DecodeStep, generate_tokens

    model = make_model(name)
    prompt = [torch.randint(model.config.vocab_size, (5,))]
    session = DecodeSession(model, 1, 32, SamplingParams(0.0))
    assert not is_folded(model) and not session.step.prepared
    tokens = session.tokens(prompt, 6)
    first = [int(next(tokens))]  # the prefill's token
    assert not is_folded(model)
    rest = [int(t) for t in tokens]
    assert is_folded(model) and session.step.prepared and session.step.prepare_s > 0
    assert not any(b.is_inference() for b in model.transformer.h[0].folded.buffers())  # usable outside inference
    model.set_kv_cache(1, max_seq_length=32)
    fold_for_decode(model)  # the old order: folded before the prefill
    reference = [int(t) for t in generate_tokens(model, prompt, 6, session.sampler, DecodeStep(model, session.sampler))]
    assert first + rest == reference and len(reference) == 6
