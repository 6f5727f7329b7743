"""`kv_cache_dtype` wherever a cache is built, on the CPU with tiny checkpoints: `litgpt generate`, `litgpt chat`,
`LLM` (load, distribute, generate, from_config), `litgpt serve` (its engine's paged pool, sized by the fp8 bytes),
`litgpt benchmark decode` and `litgpt benchmark attention`; a bad value is one line naming the field, exit code 2."""

import copy
import io
import sys

import pytest
import torch

from litgpt import GPT, LLM
from litgpt.__main__ import main
from litgpt.generate.base import SamplingParams
from litgpt.kernels.fp8_cache import E4M3
from litgpt.kv_cache import kv_cache_bytes_per_token
from litgpt.serve.engine import Engine, GenerationRequest

from test_generate import make_checkpoint

FP8 = "fp8_e4m3"


@pytest.fixture
def cache_formats(monkeypatch) -> list:
    """Every kv_cache_dtype a static or paged cache is built with, in order."""
    seen = []
    for method in ("set_kv_cache", "set_paged_kv_cache"):
        original = getattr(GPT, method)

        def spy(self, *args, _original=original, **kwargs):
            seen.append(kwargs.get("kv_cache_dtype"))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(GPT, method, spy)
    return seen


def is_fp8(model: GPT) -> bool:
    return all(block.attn.kv_cache.kv_cache_dtype == FP8 and any(b.dtype == E4M3 for b in block.attn.kv_cache.buffers())
               for block in model.transformer.h)


@pytest.mark.parametrize("name", ["debug-mla", "debug"])
def test_generate_command_decodes_with_an_fp8_cache(tmp_path, capsys, cache_formats, name):
    checkpoint_dir = make_checkpoint(tmp_path, name)
    args = ["generate", str(checkpoint_dir), "--prompt", "The cat", "--max_new_tokens", "8", "--temperature", "0",
            "--precision", "32-true", "--device", "cpu"]
    main(args + ["--kv_cache_dtype", FP8])
    assert cache_formats == [FP8]
    llm = LLM.load(checkpoint_dir, device="cpu", precision="32-true", kv_cache_dtype=FP8)
    text = llm.generate("The cat", max_new_tokens=8, temperature=0)
    assert capsys.readouterr().out == "The cat" + text + "\n"
    assert is_fp8(llm.model)


def test_chat_command_keeps_an_fp8_cache_across_turns(tmp_path, capsys, monkeypatch, cache_formats):
    checkpoint_dir = make_checkpoint(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("The cat\nsaw a dog\n\n"))
    main(["chat", str(checkpoint_dir), "--device", "cpu", "--temperature", "0", "--max_new_tokens", "5",
          "--kv_cache_dtype", FP8])
    out = capsys.readouterr().out
    assert out.count(">> Reply: ") == 2
    assert cache_formats == [FP8]  # one cache for the whole conversation: the second turn prefills over the first


def test_llm_load_distribute_and_generate_build_fp8_caches(tmp_path):
    checkpoint_dir = make_checkpoint(tmp_path)
    llm = LLM.load(checkpoint_dir, device="cpu", kv_cache_dtype=FP8)
    _, stats = llm.generate_with_stats(["The cat"], max_new_tokens=6, temperature=0)
    assert is_fp8(llm.model)
    cache_len = llm.session.cache_len
    assert stats["kv_cache_bytes"] == cache_len * kv_cache_bytes_per_token(llm.model.config, torch.float32, FP8)

    llm.distribute(accelerator="cpu")  # the model's dtype again: the session is rebuilt with a dense cache
    llm.generate("The cat", max_new_tokens=6, temperature=0)
    assert llm.model.transformer.h[0].attn.kv_cache.kv_cache_dtype is None

    unplaced = LLM.load(checkpoint_dir, distribute=None)
    unplaced.distribute(accelerator="cpu", kv_cache_dtype=FP8)
    unplaced.generate(["The cat", "A dog"], max_new_tokens=4, temperature=0)
    assert is_fp8(unplaced.model)
    with pytest.raises(ValueError, match="pass the device and precision to llm.distribute.*and kv_cache_dtype too"):
        LLM.load(checkpoint_dir, distribute=None, kv_cache_dtype=FP8)

    bench = LLM.from_config("debug-mla", device="cpu", kv_cache_dtype=FP8)
    result = bench.benchmark(batch_size=2, context_length=32, decode_steps=2, warmup=1, compile=False)
    assert result["kv_cache_bytes"] == 2 * 32 * kv_cache_bytes_per_token(bench.model.config, torch.float32, FP8)


def test_llm_refuses_a_bad_kv_cache_dtype(tmp_path):
    checkpoint_dir = make_checkpoint(tmp_path)
    message = r"kv_cache_dtype must be null \(the model's dtype\) or one of 'fp8_e4m3', got 'int8'"
    with pytest.raises(ValueError, match=message):
        LLM.load(checkpoint_dir, device="cpu", kv_cache_dtype="int8")
    llm = LLM.load(checkpoint_dir, distribute=None)
    with pytest.raises(ValueError, match=message):
        llm.distribute(accelerator="cpu", kv_cache_dtype="int8")


@pytest.mark.parametrize("name", ["debug-mla", "debug-gqa"])
def test_serve_engine_sizes_its_fp8_pool_by_the_fp8_bytes(tmp_path, name):
    """The pool of kv_cache_gib holds kv_cache_gib / (fp8 bytes per token) tokens, and each request decodes as it
    does alone with a static fp8 cache (float64 weights: quantization is per token, so paged equals static)."""
    llm = LLM.load(make_checkpoint(tmp_path, name), device="cpu", kv_cache_dtype=FP8)
    llm.model = llm.model.double()
    model = copy.deepcopy(llm.model)
    page_size, gib = 4, 0.001
    engine = Engine(model, llm.tokenizer, max_batch_size=3, kv_cache_gib=gib, page_size=page_size,
                    stop_token_ids=[llm.tokenizer.eos_id], kv_cache_dtype=FP8)
    per_token = kv_cache_bytes_per_token(model.config, torch.float64, FP8)
    assert per_token < kv_cache_bytes_per_token(model.config, torch.float64)
    assert engine.bytes_per_token == per_token
    assert engine.pool.num_pages == int(gib * 2**30 // (per_token * page_size))
    assert model.kv_cache_bytes() == engine.pool.num_pages * page_size * per_token and is_fp8(model)
    assert engine.stats()["kv_cache_bytes"] == model.kv_cache_bytes()
    prompts = [tuple(torch.randint(1, 300, (n,), generator=torch.Generator().manual_seed(n)).tolist())
               for n in (5, 9, 13)]
    events = engine.generate([GenerationRequest(p, max_tokens=6) for p in prompts])
    for prompt, out in zip(prompts, events):
        session = llm.decode_session(1, len(prompt) + 6, SamplingParams(0.0), "eager")  # a static fp8 cache
        rows, _ = session.generate([torch.tensor(prompt)], 6, llm.prompt_style.stop_tokens(llm.tokenizer))
        assert is_fp8(llm.model) and [e.token_id for e in out if e.token_id is not None] == rows[0]
    engine.shutdown()


def test_serve_command_passes_kv_cache_dtype_to_its_engine(tmp_path, monkeypatch):
    """`litgpt serve --kv_cache_dtype fp8_e4m3` builds its engine with it (the server itself is not started)."""
    import uvicorn

    import litgpt.serve.engine as engine_module

    built = []

    class Recorded(engine_module.Engine):
        def __init__(self, *args, **kwargs):
            built.append(kwargs.get("kv_cache_dtype"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(engine_module, "Engine", Recorded)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    main(["serve", str(make_checkpoint(tmp_path)), "--port", "0", "--accelerator", "cpu", "--max_batch_size", "2",
          "--kv_cache_dtype", FP8])
    assert built == [FP8]


def test_benchmark_decode_counts_the_fp8_bytes(tmp_path):
    from litgpt.benchmark.decode import benchmark_decode_command

    result = benchmark_decode_command(models=["debug", "debug-mla"], batch_sizes=[2], context_lengths=[16],
                                      decode_steps=2, warmup=1, device="cpu", kv_cache_dtype=FP8,
                                      memory_budget_gib=0.5, reserve_gib=0.25, out_dir=tmp_path)
    for row in result["results"]:
        config = GPT.from_name(row["model"]).config
        assert row["status"] == "ok" and row["kv_cache_dtype"] == FP8
        assert row["kv_bytes_per_token"] == kv_cache_bytes_per_token(config, torch.float32, FP8)
        assert row["kv_cache_bytes"] == 2 * 16 * row["kv_bytes_per_token"]
    for cap in result["capacity"]:
        assert cap["kv_cache_dtype"] == FP8
        assert cap["kv_bytes_per_token"] == kv_cache_bytes_per_token(GPT.from_name(cap["model"]).config,
                                                                     torch.float32, FP8)
    assert "KV cache fp8_e4m3" in (tmp_path / "summary.md").read_text()


def test_benchmark_attention_decodes_over_an_fp8_cache_and_checks_it(tmp_path):
    from litgpt.benchmark.attention import benchmark_attention

    rows = benchmark_attention(n_head=4, head_size=16, gqa_groups=2, kv_lora_rank=32, qk_rope_head_dim=8,
                               qk_nope_head_dim=16, v_head_dim=16, batch_sizes=[2], seq_lens=[24], warmup=1,
                               trials=2, device="cpu", dtype="float32", modes=["decode"], kv_cache_dtype=FP8,
                               check=True, out_dir=tmp_path)
    assert {r["impl"] for r in rows} == {"mha", "gqa", "mqa", "mla-naive", "mla-absorbed"}
    for r in rows:
        assert r["status"] == "ok" and r["kv_cache_dtype"] == FP8
    by_impl = {r["impl"]: r for r in rows}
    assert by_impl["mla-absorbed"]["kv_cache_bytes"] == 2 * 24 * (32 + 4 + 8 * 4)  # latent, a scale, rope key
    assert by_impl["mha"]["kv_cache_bytes"] == 2 * 24 * 2 * 4 * (16 + 4)  # K and V of 4 heads, a scale each


@pytest.mark.parametrize("command", [
    ["generate", "CHECKPOINT", "--device", "cpu"],
    ["chat", "CHECKPOINT", "--device", "cpu"],
    ["serve", "CHECKPOINT", "--port", "0", "--accelerator", "cpu"],
    ["benchmark", "decode", "--device", "cpu", "--models", "[debug]"],
    ["benchmark", "attention", "--device", "cpu"],
], ids=lambda c: " ".join(c[:2]) if c[0] == "benchmark" else c[0])
def test_a_bad_kv_cache_dtype_is_one_line_and_exit_2(tmp_path, capsys, command):
    args = [str(tmp_path / "nowhere") if a == "CHECKPOINT" else a for a in command]
    if command[0] == "benchmark":
        args += ["--out_dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--kv_cache_dtype", "e4m3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "kv_cache_dtype must be null (the model's dtype) or one of 'fp8_e4m3', got 'e4m3'" in err
