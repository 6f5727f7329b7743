import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from litgpt.checkpoint import save_checkpoint
from litgpt.config import Config
from litgpt.fold import fold_for_decode
from litgpt.generate.base import DecodeStep, Sampler, SamplingParams, generate, trim_at_stop
from litgpt.model import GPT
from litgpt.scripts.train_tokenizer import train_tokenizer
from test_model import randomize
from test_tokenizer import ListTexts, make_corpus

CASES = ["debug", "debug-gqa", "debug-mqa", "debug-mla"]


def make_model(name: str, **kwargs) -> GPT:
    torch.manual_seed(0)
    return randomize(GPT(Config.from_name(name, **kwargs))).eval()


def make_checkpoint(tmp_path: Path, name: str = "debug-mla") -> Path:
    """A complete checkpoint directory: random weights, model_config.yaml and a 300-token BPE tokenizer."""
    checkpoint_dir = tmp_path / "checkpoint"
    train_tokenizer(ListTexts(texts=make_corpus()), checkpoint_dir, vocab_size=300, min_frequency=1)
    save_checkpoint(make_model(name, vocab_size=300), checkpoint_dir)
    return checkpoint_dir


def run_generate(model: GPT, prompts: list[torch.Tensor], max_new_tokens: int, params: SamplingParams, seed: int = 0,
                 stop_tokens=()) -> list[list[int]]:
    model.set_kv_cache(len(prompts), max_seq_length=max(len(p) for p in prompts) + max_new_tokens)
    sampler = Sampler(params, model.config.vocab_size, len(prompts), torch.device("cpu"))
    sampler.seed(seed)
    fold_for_decode(model)
    rows, _ = generate(model, prompts, max_new_tokens, sampler, DecodeStep(model, sampler), stop_tokens)
    return rows


@torch.inference_mode()
def argmax_reference(model: GPT, prompt: torch.Tensor, max_new_tokens: int) -> list[int]:
    """Repeated argmax of the full (uncached) forward over the whole sequence so far."""
    idx, out = prompt.clone(), []
    for _ in range(max_new_tokens):
        logits = model(idx.unsqueeze(0))[0, -1, : model.config.vocab_size]
        token = int(logits.argmax())
        out.append(token)
        idx = torch.cat((idx, torch.tensor([token])))
    return out


@pytest.mark.parametrize("case", CASES)
def test_greedy_equals_argmax_of_full_forward(case):
    model = make_model(case)
    prompt = torch.randint(model.config.vocab_size, (7,))
    assert run_generate(model, [prompt], 12, SamplingParams(temperature=0.0))[0] == argmax_reference(model, prompt, 12)


@pytest.mark.parametrize("case", ["debug", "debug-gqa", "debug-mla"])
def test_batched_prompts_of_different_lengths_equal_each_alone(case):
    model = make_model(case)
    prompts = [torch.randint(model.config.vocab_size, (n,)) for n in (3, 11, 6)]
    for params in (SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, top_k=20)):
        batched = run_generate(model, prompts, 10, params)
        alone = [run_generate(model, [p], 10, params)[0] for p in prompts]
        if params.greedy:
            assert batched == alone
        else:  # a row's noise depends on its row index: compare row 0 (index 0 alone too)
            assert batched[0] == alone[0]
    # and the batched greedy rows are the reference's
    assert run_generate(model, prompts, 10, SamplingParams(0.0))[1] == argmax_reference(model, prompts[1], 10)


def test_same_seed_same_tokens_and_other_seed_differs():
    model = make_model("debug-mla")
    prompt = [torch.randint(model.config.vocab_size, (5,))]
    params = SamplingParams(temperature=1.0, top_p=0.95)
    first, again = run_generate(model, prompt, 16, params, seed=7), run_generate(model, prompt, 16, params, seed=7)
    assert first == again
    assert run_generate(model, prompt, 16, params, seed=8) != first


def test_top_k_one_is_greedy():
    model = make_model("debug")
    prompt = [torch.randint(model.config.vocab_size, (5,))]
    assert run_generate(model, prompt, 8, SamplingParams(1.0, top_k=1)) == run_generate(model, prompt, 8,
                                                                                         SamplingParams(0.0))


def test_sampler_draws_from_the_filtered_softmax():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().view(1, 4).expand(4000, 4)
    positions = torch.arange(4000).view(-1, 1)

    def frequencies(params: SamplingParams) -> torch.Tensor:
        sampler = Sampler(params, 4, 4000, torch.device("cpu"))
        tokens = sampler(logits, positions)  # every row is its own stream, every position its own draw
        return torch.bincount(tokens.view(-1), minlength=4).float() / tokens.numel()

    torch.testing.assert_close(frequencies(SamplingParams(1.0)), probs, atol=0.03, rtol=0)
    hot = torch.softmax(probs.log() / 2.0, dim=0)  # temperature 2 flattens the distribution
    torch.testing.assert_close(frequencies(SamplingParams(2.0)), hot, atol=0.03, rtol=0)
    top2 = frequencies(SamplingParams(1.0, top_k=2))
    torch.testing.assert_close(top2, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=0.03, rtol=0)
    nucleus = frequencies(SamplingParams(1.0, top_p=0.7))  # 0.5 < 0.7 <= 0.8: the two likeliest tokens
    assert nucleus[2:].sum() == 0 and nucleus[1] > 0.3
    assert frequencies(SamplingParams(1.0, top_p=0.4))[0] == 1.0


def test_stops_at_eos_per_row():
    model = make_model("debug")
    prompts = [torch.randint(model.config.vocab_size, (n,)) for n in (4, 9)]
    free = run_generate(model, prompts, 10, SamplingParams(0.0))
    stop = free[0][3]
    rows = run_generate(model, prompts, 10, SamplingParams(0.0), stop_tokens=[[stop]])
    assert rows[0] == free[0][: free[0].index(stop)]
    assert rows[1] == (free[1][: free[1].index(stop)] if stop in free[1] else free[1])
    assert trim_at_stop([1, 2, 3, 4, 2, 3], [[2, 3]]) == ([1], True)
    assert trim_at_stop([1, 2, 4], [[2, 3], [9]]) == ([1, 2, 4], False)



def test_generation_ends_at_the_first_look_after_every_row_has_stopped():
    """Stops are looked for every `check_every` tokens: once each row has met one, no further step runs."""
    model = make_model("debug")
    prompts = [torch.randint(model.config.vocab_size, (n,)) for n in (4, 9)]
    free = run_generate(model, prompts, 12, SamplingParams(0.0))
    model.set_kv_cache(2, max_seq_length=9 + 40)
    sampler = Sampler(SamplingParams(0.0), model.config.vocab_size, 2, torch.device("cpu"))
    step, calls = DecodeStep(model, sampler), []
    counted = lambda token, pos: calls.append(1) or step(token, pos)  # noqa: E731
    stops = [[free[0][1]], [free[1][5]]]  # row 0 stops at its 2nd token, row 1 at its 6th (or earlier)
    rows, _ = generate(model, prompts, 40, sampler, counted, stops, check_every=4)
    ids = {s[0] for s in stops}
    stopped_at = [next(n for n, t in enumerate(row, start=1) if t in ids) for row in free]  # token count at the stop
    last_look = -(-max(stopped_at) // 4) * 4  # the first multiple of 4 at or after the later row's stop
    assert len(calls) == last_look - 1 < 39  # the first token comes from the prefill, every later one from a step
    assert rows == [row[: n - 1] for row, n in zip(free, stopped_at)]

def test_a_streamed_batch_writes_the_first_rows_text_and_returns_every_row(tmp_path):
    """With a stream, the first row's text is written (up to its stop sequence) while the other rows run on: the
    rows returned are those of the unstreamed batch, and the text written is the first row's."""
    from litgpt import LLM

    llm = LLM.load(make_checkpoint(tmp_path), device="cpu", precision="32-true")
    model, tokenizer = llm.model, llm.tokenizer
    prompts = [tokenizer.encode(text) for text in ("The cat", "A dog sat on the")]
    free = run_generate(model, prompts, 12, SamplingParams(0.0))
    stops = [free[0][2:4]]  # a two-token stop that ends the first row by its 4th token
    expected = [trim_at_stop(row, stops)[0] for row in free]
    assert len(expected[0]) <= 2 and len(expected[1]) > len(expected[0])
    model.set_kv_cache(2, max_seq_length=len(prompts[1]) + 12)
    sampler = Sampler(SamplingParams(0.0), model.config.vocab_size, 2, torch.device("cpu"))
    out = io.StringIO()
    rows, _ = generate(model, prompts, 12, sampler, DecodeStep(model, sampler), stops, stream=out, tokenizer=tokenizer)
    assert rows == expected
    assert out.getvalue() == tokenizer.decode(torch.tensor(expected[0]))
    with pytest.raises(ValueError, match="needs the tokenizer"):
        generate(model, prompts, 12, sampler, DecodeStep(model, sampler), stops, stream=out)


@pytest.mark.parametrize("case", ["debug", "debug-mla"])
def test_compiled_step_does_not_recompile_per_token(case):
    """The decode step keeps its shapes: one compiled graph serves every position (dynamo would raise otherwise)."""
    import torch._dynamo

    torch._dynamo.reset()
    model = make_model(case)
    prompt = [torch.randint(model.config.vocab_size, (6,))]
    expected = run_generate(model, prompt, 6, SamplingParams(0.0))
    model.set_kv_cache(1, max_seq_length=12)
    sampler = Sampler(SamplingParams(0.0), model.config.vocab_size, 1, torch.device("cpu"))
    fold_for_decode(model)
    step = DecodeStep(model, sampler)
    step.compile(backend="eager", fullgraph=True, dynamic=False)
    with torch._dynamo.config.patch(error_on_recompile=True):
        rows, _ = generate(model, prompt, 6, sampler, step)
    assert rows == expected
    torch._dynamo.reset()


def test_mla_decode_uses_absorbed_path_and_prefill_naive(monkeypatch):
    from litgpt.attention import MultiheadLatentAttention

    calls = []  # the absorbed path attends the latent in `absorbed`, folded (the default) or not
    for path in ("naive", "absorbed"):
        original = getattr(MultiheadLatentAttention, path)

        def spy(self, *args, _original=original, _path=path, **kwargs):
            calls.append((_path, args[0].size(2)))  # (path, T)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(MultiheadLatentAttention, path, spy)
    model = make_model("debug-mla")
    run_generate(model, [torch.randint(model.config.vocab_size, (5,))], 3, SamplingParams(0.0))
    n_layer = model.config.n_layer
    assert calls == [("naive", 5)] * n_layer + [("absorbed", 1)] * (2 * n_layer)


# ------------------------------------------------------------------------------------------------ the CLI
def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "litgpt", *args], input=stdin, capture_output=True, text=True,
                          timeout=120)


def test_cli_generate_streams_text_and_reports_stats(tmp_path):
    checkpoint_dir = make_checkpoint(tmp_path)
    result = cli("generate", str(checkpoint_dir), "--prompt", "The cat", "--max_new_tokens", "8", "--temperature",
                 "0", "--precision", "32-true", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("The cat")
    from litgpt import LLM

    llm = LLM.load(checkpoint_dir, device="cpu")
    assert result.stdout == "The cat" + llm.generate("The cat", max_new_tokens=8, temperature=0) + "\n"
    stats = result.stderr.strip().splitlines()[-1]
    for field in ("time to first token", "tokens/s", "peak memory", "KV cache"):
        assert field in stats


def test_cli_same_seed_same_text_and_samples(tmp_path):
    checkpoint_dir = make_checkpoint(tmp_path)
    args = ("generate", str(checkpoint_dir), "--prompt", "A dog", "--max_new_tokens", "6", "--device", "cpu",
            "--temperature", "1.0", "--num_samples", "3", "--batch_size", "2", "--seed", "3")
    first, again = cli(*args), cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout
    assert first.stdout.count("A dog") == 3


def test_cli_batches_stream_their_first_sample_and_print_the_same_text(tmp_path, monkeypatch, capsys):
    """At --batch_size 2 each batch's first sample streams (one `stream_tokens` per batch, writing to stdout); stdout
    is every sample, in order, with separators."""
    import litgpt.generate.base as base
    import litgpt.generate.session as session
    from litgpt import LLM
    from litgpt.__main__ import main

    checkpoint_dir = make_checkpoint(tmp_path)
    streamed, original = [], base.stream_tokens
    spy = lambda tokens, tokenizer, stops, out, **kw: streamed.append(out is sys.stdout) or original(  # noqa: E731
        tokens, tokenizer, stops, out, **kw)
    monkeypatch.setattr(base, "stream_tokens", spy)  # the batch of two
    monkeypatch.setattr(session, "stream_tokens", spy)  # the batch of one (the session's own stream)
    main(["generate", str(checkpoint_dir), "--prompt", "The cat", "--max_new_tokens", "8", "--temperature", "0",
          "--precision", "32-true", "--device", "cpu", "--num_samples", "3", "--batch_size", "2"])
    assert streamed == [True, True]
    text = LLM.load(checkpoint_dir, device="cpu", precision="32-true").generate("The cat", 8, temperature=0)
    assert capsys.readouterr().out == ("The cat" + text + "\n" + "-" * 40 + "\n") * 3


@pytest.mark.parametrize(
    "args, message",
    [
        (("--temperature", "-0.5"), "temperature must be >= 0"),
        (("--top_p", "0"), "top_p must be in (0, 1]"),
        (("--top_p", "1.5"), "top_p must be in (0, 1]"),
        (("--prompt", ""), "prompt is empty"),
        (("--max_new_tokens", "1000"), "exceeds the model's context of 128 tokens"),
    ],
)
def test_cli_bad_generation_arguments(tmp_path, args, message):
    result = cli("generate", str(make_checkpoint(tmp_path)), "--device", "cpu", *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("litgpt: error: ")
    assert message in result.stderr


@pytest.mark.parametrize("remove, message", [
    (None, "does not exist"),
    ("lit_model.pth", "has no lit_model.pth"),
    ("model_config.yaml", "has no model_config.yaml"),
    ("tokenizer.json", "no tokenizer.json or tokenizer.model"),
])
def test_cli_missing_or_incomplete_checkpoint(tmp_path, remove, message):
    checkpoint_dir = make_checkpoint(tmp_path)
    if remove is None:
        checkpoint_dir = tmp_path / "nowhere"
    else:
        (checkpoint_dir / remove).unlink()
    result = cli("generate", str(checkpoint_dir), "--device", "cpu")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("litgpt: error: ")
    assert message in result.stderr


def test_top_k_draws_from_k_candidates_exactly_as_over_the_masked_vocabulary():
    """The sampler makes noise for the k candidates only; the token is the one the Gumbel-max draw over the whole
    vocabulary with everything below the k-th logit masked gives (the same noise per token id), with and without
    top_p."""
    from litgpt.kernels.sampling import M32 as _M32, mix32 as _mix32

    B, V = 6, 1000
    torch.manual_seed(3)
    logits = torch.randn(B, V) * 3  # continuous: no ties at the k-th logit
    position = torch.arange(B).view(B, 1) + 17
    for params in (SamplingParams(0.7, top_k=50), SamplingParams(1.0, top_k=5, top_p=0.6)):
        sampler = Sampler(params, V, B, torch.device("cpu"))
        sampler.seed(11)
        scaled = logits / params.temperature
        kth = torch.topk(scaled, params.top_k, dim=-1).values[:, -1:]
        masked = scaled.masked_fill(scaled < kth, float("-inf"))
        if params.top_p < 1.0:
            ordered, order = torch.sort(masked, dim=-1, descending=True)
            probs = torch.softmax(ordered, dim=-1)
            ordered = ordered.masked_fill((torch.cumsum(probs, dim=-1) - probs) >= params.top_p, float("-inf"))
            masked = torch.full_like(masked, float("-inf")).scatter(-1, order, ordered)
        key = _mix32(sampler.row_seeds ^ _mix32(position & _M32))
        uniform = ((_mix32(sampler.token_hash ^ key) >> 8).float() + 0.5) * (1.0 / (1 << 24))
        expected = (masked - torch.log(-torch.log(uniform))).argmax(dim=-1, keepdim=True)
        assert torch.equal(sampler(logits, position), expected)


# ------------------------------------------------------------------------------------------------ interruptions
# `python -c` this, then the `litgpt` arguments: the executable with a decode step that hangs from its third call
# on (until a signal), so that a test can interrupt a generation that is sure to be running
HANGING_STEP = """
import sys, time
import litgpt.generate.base as base
from litgpt.__main__ import cli

calls, original = [], base.DecodeStep.__call__

def step(self, token, input_pos):
    calls.append(1)
    if len(calls) > 2:
        time.sleep(600)
    return original(self, token, input_pos)

base.DecodeStep.__call__ = step
sys.argv = ["litgpt", *sys.argv[1:]]
cli()
"""


def interrupt_when(args: list[str], seen: str, stdin: str = "") -> tuple[int, str, str]:
    """Run the executable with a hanging decode step, send SIGINT once stdout holds `seen`; (status, stdout, stderr)."""
    import os
    import signal

    proc = subprocess.Popen([sys.executable, "-c", HANGING_STEP, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if stdin:
        proc.stdin.write(stdin.encode())
        proc.stdin.flush()
    out = b""
    while seen.encode() not in out:
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, f"the command ended before printing {seen!r}: {proc.stderr.read().decode()}"
        out += chunk
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=120)
    return proc.returncode, (out + rest).decode(), err.decode()


def test_ctrl_c_during_generate_ends_quietly_with_130_after_the_text_so_far(tmp_path):
    checkpoint_dir = make_checkpoint(tmp_path)
    code, out, err = interrupt_when(["generate", str(checkpoint_dir), "--prompt", "The cat", "--max_new_tokens", "50",
                                     "--temperature", "0", "--device", "cpu"], seen="The cat")
    assert code == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    from litgpt import LLM

    full = "The cat" + LLM.load(checkpoint_dir, device="cpu").generate("The cat", max_new_tokens=50, temperature=0)
    assert out.endswith("\n") and out.startswith("The cat") and full.startswith(out[:-1])


def test_ctrl_c_in_process_exits_130_with_the_streamed_text(tmp_path, monkeypatch, capsys):
    """A KeyboardInterrupt at the third decode step: exit 130, stdout the text streamed so far and a newline."""
    import litgpt.generate.base as base
    from litgpt import LLM
    from litgpt.__main__ import main

    checkpoint_dir = make_checkpoint(tmp_path)
    full = "The cat" + LLM.load(checkpoint_dir, device="cpu").generate("The cat", max_new_tokens=20, temperature=0)
    calls, original = [], base.DecodeStep.__call__

    def step(self, token, input_pos):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, token, input_pos)

    monkeypatch.setattr(base.DecodeStep, "__call__", step)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["generate", str(checkpoint_dir), "--prompt", "The cat", "--max_new_tokens", "20", "--temperature",
                  "0", "--device", "cpu"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C left `litgpt generate` as a KeyboardInterrupt (a traceback)")
    out, err = capsys.readouterr()
    assert exit_info.value.code == 130 and err == "" and len(calls) == 3
    assert out.startswith("The cat") and out.endswith("\n") and full.startswith(out[:-1]) and len(out) < len(full)


# ------------------------------------------------------------------------------------------------ what it refuses
def test_compile_on_the_cpu_warns_before_anything_is_loaded(tmp_path, monkeypatch):
    """--compile true on the CPU: a warning that the compile takes minutes, given before the weights load."""
    import litgpt.generate.chat as chat
    import litgpt.generate.cli as generate_cli
    from litgpt.api import LLM

    checkpoint_dir = make_checkpoint(tmp_path)
    for module in (generate_cli, chat):
        caught: list = []

        def load(*args, **kwargs):
            caught.extend(str(w.message) for w in record)
            raise RuntimeError("stop here")

        monkeypatch.setattr(LLM, "load", load)  # the class both commands load with
        with pytest.warns(UserWarning) as record, pytest.raises(RuntimeError, match="stop here"):
            module.main(checkpoint_dir, compile=True, device="cpu")
        assert len(caught) == 1 and caught[0].startswith("--compile true on the CPU: torch.compile builds the decode "
                                                         "step in C++ after the first token, which takes minutes")
        assert "leave --compile unset" in caught[0]
    import warnings

    from litgpt.utils import warn_compile_on_cpu

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for compile, device in ((None, "cpu"), (False, "cpu"), (True, "cuda")):
            warn_compile_on_cpu(compile, torch.device(device))


def test_generate_on_a_lora_checkpoint_without_merged_weights_says_to_merge(tmp_path):
    checkpoint_dir = make_checkpoint(tmp_path)
    (checkpoint_dir / "lit_model.pth").rename(checkpoint_dir / "lit_model.pth.lora")
    result = cli("generate", str(checkpoint_dir), "--device", "cpu")
    assert (result.returncode, result.stderr) == (2, (
        f"litgpt: error: {str(checkpoint_dir)!r} holds LoRA weights (lit_model.pth.lora) but no merged lit_model.pth; "
        f"run `litgpt merge_lora {checkpoint_dir}` to write it, then load the directory again\n"))
    from litgpt.checkpoint import load_checkpoint

    with pytest.raises(FileNotFoundError, match=r"run `litgpt merge_lora .*` to write it"):
        load_checkpoint(checkpoint_dir)


@pytest.mark.parametrize("case", CASES)
def test_prefill_maps_only_each_prompts_last_position_and_draws_its_first_token(case):
    """Right-padded prompts of 5, 9 and 12 tokens in chunks of 4 positions: the LM head maps, per chunk, only the
    rows whose prompt ends in it (0, 1 and 2 rows), and each first token is the argmax of its prompt's last logits
    from a plain forward."""
    from litgpt.generate.base import prefill

    model = make_model(case)
    prompts = [torch.randint(model.config.vocab_size, (n,)) for n in (5, 9, 12)]
    model.set_kv_cache(3, max_seq_length=16)
    sampler = Sampler(SamplingParams(0.0), model.config.vocab_size, 3, torch.device("cpu"))
    mapped = []
    hook = model.lm_head.register_forward_hook(lambda m, args, out: mapped.append(args[0].shape[:-1].numel()))
    try:
        with torch.inference_mode():
            token, next_pos = prefill(model, prompts, sampler, tokens_per_chunk=12)
    finally:
        hook.remove()
    assert mapped == [0, 1, 2]
    assert next_pos.view(-1).tolist() == [5, 9, 12]
    with torch.inference_mode():
        expected = [int(model(p.view(1, -1))[0, -1, : model.config.vocab_size].argmax()) for p in prompts]
    assert token.view(-1).tolist() == expected
