"""Decode attention: the torch references against explicit loops and the model; the Triton kernel (GPU) against
the float32 reference on fresh random inputs, with poisoned outputs. Without a GPU the kernels run under the Triton
interpreter on CPU tensors (skipped only when triton is not installed): split-KV decode attention (MLA and
MHA/GQA/MQA, with and without the split merge) and both cache writes (MLA and MHA/GQA), small shapes that reach each
branch. `interpreted_copy` and `route_to_interpreted` serve the other kernels' tests too.

All GPU checks: `python -m pytest -q -m cuda tests/test_kernels.py`.
"""

import contextlib
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator, Optional, Union

import pytest
import torch

import litgpt.kernels
import litgpt.kernels.decode_attention as dispatch
from litgpt import GPT, Config
from litgpt.kernels import (
    TRITON_AVAILABLE,
    gqa_cache_write,
    gqa_decode_attention,
    gqa_decode_attention_reference,
    mla_cache_write,
    mla_decode_attention,
    mla_decode_attention_reference,
    set_kernels,
    split_heads,
)
from litgpt.kv_cache import KVCache
from litgpt.rope import apply_partial_rope, apply_rope_last, build_rope_cache

from test_model import MLA_DIMS, randomize


def explicit_mla(q, kv, input_pos, d_c, scale):
    """Loop-by-loop absorbed attention in float64: row b, head, token t sees keys 0..input_pos[b, t]."""
    B, h, T, _ = q.shape
    pos = input_pos.expand(B, T) if input_pos.dim() == 1 else input_pos
    out = torch.empty(B, h, T, d_c, dtype=torch.float64)
    for b in range(B):
        for head in range(h):
            for t in range(T):
                visible = int(pos[b, t]) + 1
                scores = torch.tensor([scale * float(q[b, head, t] @ kv[b, s]) for s in range(visible)], dtype=torch.float64)
                weights = torch.softmax(scores, 0)
                out[b, head, t] = sum(weights[s] * kv[b, s, :d_c] for s in range(visible))
    return out


def test_mla_reference_against_explicit_loops():
    B, h, T, S, d_c, d_r = 2, 3, 2, 7, 8, 4
    q = torch.randn(B, h, T, d_c + d_r, dtype=torch.float64)
    kv = torch.randn(B, S, d_c + d_r, dtype=torch.float64)
    input_pos = torch.tensor([[3, 4], [5, 6]])  # ragged: row 0 has 5 valid tokens, row 1 has 7; causal within T
    out = mla_decode_attention_reference(q, kv, input_pos, d_c, scale=0.3)
    torch.testing.assert_close(out, explicit_mla(q, kv, input_pos, d_c, 0.3), atol=1e-12, rtol=1e-12)
    shared = mla_decode_attention_reference(q, kv, torch.tensor([2, 3]), d_c, scale=0.3)  # (T,) for all rows
    torch.testing.assert_close(shared, explicit_mla(q, kv, torch.tensor([2, 3]), d_c, 0.3), atol=1e-12, rtol=1e-12)


def test_gqa_reference_equals_sdpa():
    B, H, G, T, S, d = 2, 6, 2, 3, 9, 8
    q, k, v = torch.randn(B, H, T, d).double(), torch.randn(B, G, S, d).double(), torch.randn(B, G, S, d).double()
    input_pos = torch.tensor([[2, 3, 4], [6, 7, 8]])
    mask = torch.arange(S) <= input_pos.unsqueeze(-1)  # (B, T, S)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(H // G, 1), v.repeat_interleave(H // G, 1), attn_mask=mask.unsqueeze(1), scale=0.4
    )
    torch.testing.assert_close(gqa_decode_attention_reference(q, k, v, input_pos, 0.4), expected)


def test_cpu_dispatch_runs_the_reference_and_rejects_bad_shapes():
    q, kv = torch.randn(2, 4, 1, 40), torch.randn(2, 16, 40)
    pos = torch.tensor([9])
    torch.testing.assert_close(mla_decode_attention(q, kv, pos, 32, 0.2), mla_decode_attention_reference(q, kv, pos, 32, 0.2))
    with pytest.raises(ValueError, match="input_pos must have shape"):
        mla_decode_attention(q, kv, torch.tensor([[1, 2]]), 32, 0.2)
    with pytest.raises(ValueError, match="kv_lora_rank"):
        mla_decode_attention(q, kv, pos, 40, 0.2)
    with pytest.raises(ValueError, match="same B and D"):
        mla_decode_attention(q, kv[..., :32], pos, 16, 0.2)
    with pytest.raises(ValueError, match="multiple of the KV groups"):
        gqa_decode_attention(torch.randn(1, 3, 1, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), pos, 0.2)


def mla_model(dtype: torch.dtype, device: str = "cpu") -> GPT:
    config = Config.from_name("debug", block_size=96, latent_attention={**MLA_DIMS, "kv_lora_rank": 64,
                                                                        "qk_rope_head_dim": 16})
    return randomize(GPT(config)).to(device=device, dtype=dtype)


def cached_decode(model: GPT, idx: torch.Tensor, prefill: int, use_kernel: bool) -> torch.Tensor:
    """Prefill `prefill` tokens, then decode the rest one at a time with per-row (B, 1) positions."""
    set_kernels(model, use_kernel)
    B, T = idx.shape
    model.set_kv_cache(batch_size=B, max_seq_length=model.config.block_size)
    logits = [model(idx[:, :prefill], input_pos=torch.arange(prefill, device=idx.device))[:, -1:]]
    for t in range(prefill, T):
        pos = torch.full((B, 1), t, device=idx.device)
        logits.append(model(idx[:, t : t + 1], input_pos=pos))
    return torch.cat(logits, 1)


def test_absorbed_decode_with_per_row_positions_equals_naive_float64():
    model = mla_model(torch.float64)
    idx = torch.randint(0, model.config.padded_vocab_size, (2, 12))
    with torch.no_grad():
        absorbed = cached_decode(model, idx, prefill=5, use_kernel=True)  # CPU: the reference path
        for block in model.transformer.h:
            block.attn.absorb = False
        naive = cached_decode(model, idx, prefill=5, use_kernel=True)
    assert (absorbed - naive).abs().max().item() < 1e-10


def test_set_kernels_switches_every_mla_module():
    model = mla_model(torch.float32)
    assert set_kernels(model, False) == model.config.n_layer
    assert all(block.attn.use_kernel is False for block in model.transformer.h)
    set_kernels(model, True)
    assert all(block.attn.use_kernel is True for block in model.transformer.h)


# ---------------------------------------------------------------- GPU: the Triton kernel

MLA_CASES = [  # (B, h, T, S_max, d_c, d_R, valid lengths of the last new token per row)
    (1, 16, 1, 64, 512, 64, [1]),
    (2, 12, 1, 300, 256, 32, [17, 300]),
    (3, 16, 1, 4096, 512, 64, [4096, 2048, 1000]),  # block multiples and non-multiples
    (4, 32, 1, 2048, 256, 32, [5, 64, 1999, 2048]),
    (8, 12, 1, 16384, 256, 32, [16384, 1, 8191, 33, 12000, 16383, 512, 77]),
    (2, 16, 3, 1024, 512, 64, [3, 1024]),  # q_len > 1: causal within the new tokens
    (2, 128, 2, 700, 512, 64, [700, 123]),  # more rows than one program holds
    (2, 8, 1, 333, 320, 48, [333, 200]),  # widths that are multiples of 16, not powers of 2
]


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref).norm() / ref.norm()).item()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B, h, T, S, d_c, d_r, lengths", MLA_CASES)
def test_mla_kernel_matches_float32_reference(B, h, T, S, d_c, d_r, lengths, dtype, monkeypatch):
    torch.manual_seed(sum(lengths) + h)
    q = torch.randn(B, h, T, d_c + d_r, device="cuda", dtype=dtype)
    kv = torch.randn(B, S, d_c + d_r, device="cuda", dtype=dtype)
    input_pos = torch.tensor([[n - T + t for t in range(T)] for n in lengths], device="cuda")
    ref = mla_decode_attention_reference(q.float(), kv.float(), input_pos, d_c, 0.07)
    original_empty = torch.empty

    def poisoned_empty(*args, **kwargs):  # the kernel's output and partial buffers start as NaN, not stale zeros
        return original_empty(*args, **kwargs).fill_(float("nan"))

    monkeypatch.setattr(torch, "empty", poisoned_empty)
    out = mla_decode_attention(q, kv, input_pos, d_c, 0.07)
    monkeypatch.undo()
    assert out.shape == (B, h, T, d_c) and out.dtype == dtype
    assert not out.isnan().any(), "some output elements were never written"
    assert rel_error(out, ref) < 1e-2


@pytest.mark.cuda
@pytest.mark.parametrize("B, H, G, T, S, d, lengths", [
    (2, 12, 12, 1, 1000, 64, [1000, 17]),  # MHA
    (3, 12, 3, 1, 4096, 64, [4096, 1, 2049]),  # GQA
    (2, 8, 1, 2, 300, 128, [300, 64]),  # MQA, q_len 2
])
def test_gqa_kernel_matches_float32_reference(B, H, G, T, S, d, lengths):
    q = torch.randn(B, H, T, d, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(B, G, S, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    input_pos = torch.tensor([[n - T + t for t in range(T)] for n in lengths], device="cuda")
    ref = gqa_decode_attention_reference(q.float(), k.float(), v.float(), input_pos, 0.125)
    out = gqa_decode_attention(q, k, v, input_pos, 0.125)
    assert not out.isnan().any()
    assert rel_error(out, ref) < 1e-2


@pytest.mark.cuda
def test_mla_kernel_reads_only_valid_tokens():
    """Garbage (inf/NaN) past each row's valid length must not leak into the output."""
    B, h, S, d_c, d_r = 3, 16, 2048, 512, 64
    q = torch.randn(B, h, 1, d_c + d_r, device="cuda", dtype=torch.bfloat16)
    kv = torch.randn(B, S, d_c + d_r, device="cuda", dtype=torch.bfloat16)
    lengths = [100, 1500, 2048]
    for b, n in enumerate(lengths):
        kv[b, n:] = float("nan")
    input_pos = torch.tensor(lengths, device="cuda").unsqueeze(1) - 1
    out = mla_decode_attention(q, kv, input_pos, d_c, 0.05)
    clean = kv.nan_to_num(0.0)
    assert rel_error(out, mla_decode_attention_reference(q.float(), clean.float(), input_pos, d_c, 0.05)) < 1e-2


@pytest.mark.cuda
def test_mla_kernel_is_cuda_graph_capturable():
    B, h, S, d_c, d_r = 4, 16, 4096, 512, 64
    q = torch.randn(B, h, 1, d_c + d_r, device="cuda", dtype=torch.bfloat16)
    kv = torch.randn(B, S, d_c + d_r, device="cuda", dtype=torch.bfloat16)
    input_pos = torch.tensor([[10], [20], [30], [40]], device="cuda")
    mla_decode_attention(q, kv, input_pos, d_c, 0.05)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = mla_decode_attention(q, kv, input_pos, d_c, 0.05)
    for lengths in ([1, 4096, 2000, 17], [4096, 4096, 4096, 4096]):  # new lengths, same captured launch
        input_pos.copy_(torch.tensor(lengths, device="cuda").unsqueeze(1) - 1)
        q.normal_()
        graph.replay()
        ref = mla_decode_attention_reference(q.float(), kv.float(), input_pos, d_c, 0.05)
        assert rel_error(out, ref) < 1e-2


@pytest.mark.cuda
def test_model_decode_with_kernel_matches_torch_path():
    model = mla_model(torch.bfloat16, "cuda")
    idx = torch.randint(0, model.config.padded_vocab_size, (3, 40), device="cuda")
    with torch.no_grad():
        torch_logits = cached_decode(model, idx, prefill=20, use_kernel=False).float()
        kernel_logits = cached_decode(model, idx, prefill=20, use_kernel=True).float()
    assert rel_error(kernel_logits, torch_logits) < 2e-2


@pytest.mark.cuda
def test_mla_kernel_compiles_as_one_opaque_op():
    """torch.compile(fullgraph=True) traces the launch as the `litgpt::decode_attention` op: no graph break, same result."""
    B, h, S, d_c, d_r = 3, 12, 1000, 256, 32
    q = torch.randn(B, h, 1, d_c + d_r, device="cuda", dtype=torch.bfloat16)
    kv = torch.randn(B, S, d_c + d_r, device="cuda", dtype=torch.bfloat16)
    input_pos = torch.tensor([[5], [999], [500]], device="cuda")
    compiled = torch.compile(mla_decode_attention, fullgraph=True, dynamic=False)
    torch.testing.assert_close(compiled(q, kv, input_pos, d_c, 0.07), mla_decode_attention(q, kv, input_pos, d_c, 0.07))


# ---------------------------------------------------------------- GPU: the fused one-token MLA step

STEP_CASES = [  # (B, h, S_max, d_c, d_R, positions: one per row, or one shared by the batch, interleaved rope)
    (1, 12, 1024, 256, 32, [1023], False),
    (3, 16, 300, 512, 64, [0, 17, 299], True),
    (2, 12, 4096, 256, 32, [64], False),
    (2, 8, 333, 320, 48, [5, 332], False),
    (8, 12, 16384, 256, 32, [16383, 1, 8191, 33, 12000, 200, 512, 77], True),
]


@pytest.mark.cuda
@pytest.mark.parametrize("B, h, S, d_c, d_r, positions, interleave", STEP_CASES)
def test_mla_decode_step_matches_torch_path(B, h, S, d_c, d_r, positions, interleave, monkeypatch):
    """The fused step (query rope; new latent's RMSNorm, key rope and cache write; split-KV attention) against
    the same computed in float32 torch: output, the written cache rows, and every other cache row untouched."""
    from litgpt.kernels import mla_cache_write
    from litgpt.norm import RMSNorm
    from litgpt.rope import apply_rope, build_rope_cache

    torch.manual_seed(S + B)
    dtype, D, scale = torch.bfloat16, d_c + d_r, 0.07
    q = torch.randn(B, 1, h, D, device="cuda", dtype=dtype)
    kv_a = torch.randn(B, 1, D, device="cuda", dtype=dtype) * 3
    cache = torch.randn(B, S, D, device="cuda", dtype=dtype)
    norm = RMSNorm(d_c).cuda()
    norm.weight.data = 1 + 0.2 * torch.randn(d_c, device="cuda")
    cos_table, sin_table = build_rope_cache(S, d_r, torch.device("cuda"))
    input_pos = torch.tensor(positions, device="cuda")
    input_pos = input_pos if len(positions) == 1 else input_pos.view(B, 1)  # (1,) shared, or (B, 1) per row
    cos, sin = cos_table[input_pos], sin_table[input_pos]  # (1, d_R) or (B, 1, d_R)

    ref_cache = cache.float().clone()
    new_row = torch.cat((norm(kv_a[..., :d_c].float()), apply_rope(kv_a[..., d_c:].float(), cos, sin, interleave)), -1)
    rows = torch.arange(B, device="cuda")
    ref_cache[rows, input_pos.view(-1).expand(B)] = new_row[:, 0].detach()
    q_ref = q.float().transpose(1, 2)  # (B, h, 1, D)
    q_ref = torch.cat((q_ref[..., :d_c], apply_rope(q_ref[..., d_c:], cos, sin, interleave)), dim=-1)
    ref = mla_decode_attention_reference(q_ref, ref_cache, input_pos, d_c, scale)
    original_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: original_empty(*a, **kw).fill_(float("nan")))
    with torch.no_grad():
        q_roped = mla_cache_write(kv_a, cache, input_pos, cos, sin, norm.weight, norm.eps, interleave, q.transpose(1, 2))
        out = mla_decode_attention(q_roped, cache, input_pos, d_c, scale)
    monkeypatch.undo()
    assert out.shape == (B, h, 1, d_c) and not out.isnan().any()
    assert rel_error(out, ref) < 1e-2
    written = cache[rows, input_pos.view(-1).expand(B)]
    assert rel_error(written, ref_cache[rows, input_pos.view(-1).expand(B)]) < 1e-2
    untouched = torch.ones(B, S, dtype=torch.bool, device="cuda")
    untouched[rows, input_pos.view(-1).expand(B)] = False
    assert torch.equal(cache[untouched].float(), ref_cache[untouched])


@pytest.mark.cuda
@pytest.mark.parametrize("overrides", [
    dict(),
    dict(rope_interleave=True, parallel_residual=False, norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP",
         intermediate_size=128, bias=False),
])
def test_folded_model_takes_the_fused_step_and_matches_torch_path(overrides, monkeypatch):
    """A folded MLA model (no q_lora) decodes through the fused cache write (`mla_cache_write`'s kernel) and the fused
    GEMV prologues, and gives the torch path's logits and caches, batch 1 and batch 3 with per-row positions."""
    import litgpt.kernels.decode_attention
    from litgpt.fold import fold_for_decode

    calls = []
    fused = litgpt.kernels.decode_attention._mla_cache_write_op
    monkeypatch.setattr(litgpt.kernels.decode_attention, "_mla_cache_write_op", lambda *a: calls.append(1) or fused(*a))
    config = Config.from_name("debug", block_size=96, latent_attention={**MLA_DIMS, "q_lora_rank": None,
                                                                        "kv_lora_rank": 64, "qk_rope_head_dim": 16},
                              **overrides)
    torch.manual_seed(0)
    model = randomize(GPT(config)).to(device="cuda", dtype=torch.bfloat16).eval()
    fold_for_decode(model)
    for B in (1, 3):
        idx = torch.randint(0, config.padded_vocab_size, (B, 30), device="cuda")
        with torch.no_grad():
            torch_logits = cached_decode(model, idx, prefill=20, use_kernel=False).float()
            torch_cache = model.transformer.h[1].attn.kv_cache.kv.float()
            calls.clear()
            kernel_logits = cached_decode(model, idx, prefill=20, use_kernel=True).float()
        assert len(calls) == 10 * config.n_layer
        assert rel_error(kernel_logits, torch_logits) < 2e-2
        assert rel_error(model.transformer.h[1].attn.kv_cache.kv, torch_cache) < 2e-2


# ---------------------------------------------------------------- the fused MHA/GQA one-token cache write

def test_write_qkv_on_cpu_is_the_torch_path():
    """Off CUDA (and for T > 1) `KVCache.write_qkv` is today's path: split, partial rope of q and k, cache writes."""
    B, nh, ng, hs, S, n = 2, 4, 2, 8, 10, 4
    cos_table, sin_table = build_rope_cache(S, n)
    for input_pos in (torch.tensor([[3], [7]]), torch.tensor([5]), torch.tensor([[1, 2, 3], [4, 5, 6]])):
        T = input_pos.size(-1)
        qkv = torch.randn(B, T, (nh + 2 * ng) * hs)
        cos, sin = cos_table[input_pos], sin_table[input_pos]
        cache, expected = KVCache(B, ng, S, hs), KVCache(B, ng, S, hs)
        q, k, v = split_heads(qkv, nh, ng, hs)
        q_expected = apply_partial_rope(q, cos, sin, n, True)
        expected(input_pos, apply_partial_rope(k, cos, sin, n, True), v)
        q_out, k_cache, v_cache = cache.write_qkv(input_pos, qkv, cos, sin, nh, n, True)
        assert torch.equal(q_out, q_expected) and k_cache is cache.k and v_cache is cache.v
        assert torch.equal(cache.k, expected.k) and torch.equal(cache.v, expected.v)
    with pytest.raises(ValueError, match="do not hold"):
        cache.write_qkv(input_pos, qkv[..., :-1], cos, sin, nh, n, True)


def interpreted_copy(kernel_module: str) -> ModuleType:
    """A private copy of `litgpt.kernels.<kernel_module>` whose kernels the Triton interpreter runs on CPU tensors
    (the flag is read when @triton.jit decorates); the real module and its GPU launches are left alone.

    The copy's float constants `tl.constexpr(x)` become x, the value the compiler folds in: the interpreter runs
    `constant * tensor` as constexpr arithmetic, which wraps the tensor in a constexpr that tl.sigmoid and the like
    then reject."""
    if not TRITON_AVAILABLE:
        pytest.skip("needs triton (pip install triton) for its interpreter")
    import triton.language as tl

    name = f"_interpreted_{kernel_module}"
    spec = importlib.util.spec_from_file_location(name, Path(litgpt.kernels.__file__).parent / f"{kernel_module}.py")
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_INTERPRET", "1")
        patch.setitem(sys.modules, name, module)  # dataclasses look their module up while the class is made
        spec.loader.exec_module(module)
    for key, value in list(vars(module).items()):
        if isinstance(value, tl.constexpr) and isinstance(value.value, float):
            setattr(module, key, value.value)
    return module


_INTERPRETED_LANGUAGE: dict = {}  # a @triton.jit function of triton.language -> its interpreted twin


def interpret_language(monkeypatch: pytest.MonkeyPatch) -> None:
    """For this test, every @triton.jit function of `triton.language` (tl.sum, tl.max, tl.sigmoid, tl.cdiv, their
    combine functions, the tensor methods such as x.sum()) becomes its interpreted twin, as importing triton with
    TRITON_INTERPRET=1 would have made it: they were jitted when triton was imported, and an interpreted kernel can
    not call a jitted function.

    Every attribute of the `triton.language` modules is restored after the test too: a twin's call swaps
    `triton.language.core`'s builtins (tl.core.load, tl.core.arange, ...) for the interpreter's and leaves them so,
    which would break a later GPU compile in the same process."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    import triton.language as tl

    def twin(function: JITFunction) -> InterpretedFunction:
        if function.fn not in _INTERPRETED_LANGUAGE:  # one twin each: the interpreter's reductions compare identity
            _INTERPRETED_LANGUAGE[function.fn] = InterpretedFunction(function.fn)
        return _INTERPRETED_LANGUAGE[function.fn]

    namespaces = [module for name, module in list(sys.modules.items())
                  if name == "triton.language" or name.startswith("triton.language.")] + [tl.core.tensor]
    for namespace in namespaces:
        for name, value in list(vars(namespace).items()):
            if isinstance(value, JITFunction):
                monkeypatch.setattr(namespace, name, twin(value))
            elif isinstance(namespace, ModuleType):
                monkeypatch.setattr(namespace, name, value)  # as it is now, restored after the test


def route_to_interpreted(monkeypatch: pytest.MonkeyPatch, copy: ModuleType, kernel_module: str, entry: ModuleType,
                         op_name: Union[str, tuple[str, ...]], gate: Callable[..., bool], *,
                         gate_name: str = "kernel_applies", launcher: Optional[ModuleType] = None) -> list:
    """For this test, route `entry`'s kernel path to the interpreted `copy` of `litgpt.kernels.<kernel_module>`: the
    launch imports the copy, and `entry.<gate_name>` (the check that picks the kernel path) becomes `gate`, which
    accepts CPU tensors. Every call of `op_name` (one name or several) of `launcher` (default `entry`: the operator
    the entry point calls through the dispatcher; or `copy`: its launchers) appends its name to the returned list."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # triton asserts it again when it loads its launch helpers
    interpret_language(monkeypatch)
    monkeypatch.setattr(litgpt.kernels, kernel_module, copy, raising=False)
    monkeypatch.setitem(sys.modules, f"litgpt.kernels.{kernel_module}", copy)
    monkeypatch.setattr(entry, gate_name, gate)
    launches = []
    for name in (op_name,) if isinstance(op_name, str) else op_name:
        op = getattr(launcher or entry, name)
        monkeypatch.setattr(launcher or entry, name,
                            lambda *args, _op=op, _name=name: launches.append(_name) or _op(*args))
    return launches


def interpreter_gate(tensors: tuple[torch.Tensor, ...], widths: tuple[int, ...] = ()) -> bool:
    """`litgpt.kernels._triton.kernel_applies` without its CUDA and dtype conditions (the kernels run on CPU tensors
    under the interpreter, in any float dtype they load): one dtype, no autograd, unit last strides, every width a
    positive multiple of 16."""
    return (
        all(t.dtype == tensors[0].dtype for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and all(t.stride(-1) == 1 for t in tensors)
        and all(w % 16 == 0 and w > 0 for w in widths)
    )


@pytest.fixture(scope="module")
def interpreted_module():
    return interpreted_copy("triton_decode")


@pytest.fixture
def interpreted(interpreted_module, monkeypatch):
    """Route `gqa_cache_write`'s kernel path (`litgpt::gqa_cache_write`) to the interpreted launcher on CPU tensors
    for this test; returns the list that records every launch."""
    return route_to_interpreted(monkeypatch, interpreted_module, "triton_decode", dispatch, "_gqa_cache_write_op",
                                interpreter_gate)


GQA_WRITE_CASES = [  # (B, n_head, n_groups, head_size, interleaved rope, roped fraction of each head, dtype)
    (2, 4, 4, 32, False, 0.25, torch.bfloat16),  # MHA, rotate-half over a quarter of each head
    (2, 4, 4, 32, True, 1.0, torch.float32),  # MHA, interleaved over the whole head
    (3, 6, 2, 64, True, 0.25, torch.bfloat16),  # GQA
    (3, 6, 2, 64, False, 1.0, torch.float32),
    (2, 4, 1, 48, False, 1.0, torch.bfloat16),  # MQA, a head width that is not a power of 2 (masked lanes)
    (2, 4, 1, 48, True, 0.25, torch.float32),
    (2, 4, 2, 16, False, 0.0, torch.bfloat16),  # no rope: the heads pass through, the tables are not read
]


def write_inputs(B: int, nh: int, ng: int, hs: int, S: int, dtype: torch.dtype):
    """A qkv row per batch row (B, 1, (nh + 2 ng) hs) and random caches (B, ng, S, hs)."""
    qkv = torch.randn(B, 1, (nh + 2 * ng) * hs, dtype=dtype)
    return qkv, torch.randn(B, ng, S, hs, dtype=dtype), torch.randn(B, ng, S, hs, dtype=dtype)


@contextlib.contextmanager
def poisoned_empty() -> Iterator[None]:
    """torch.empty filled with NaN inside the context, so an output element the kernel never writes shows."""
    original = torch.empty
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "empty", lambda *a, **kw: original(*a, **kw).fill_(float("nan")))
        yield


def assert_rope_close(out: torch.Tensor, exact: torch.Tensor, torch_path: torch.Tensor) -> None:
    """out (the kernel: fp32 rotation, one rounding) against the float32 torch path rounded once (float32: to 1e-6,
    bf16: within assert_close's bf16 tolerance) and against the torch path in out's dtype (bf16: it rounds after
    every op, so a few bf16 ulps)."""
    tight = dict(atol=1e-6, rtol=1e-6) if out.dtype == torch.float32 else {}
    torch.testing.assert_close(out, exact.to(out.dtype), **tight)
    torch.testing.assert_close(out, torch_path, **(tight or dict(atol=5e-2, rtol=2e-2)))


@pytest.mark.parametrize("B, nh, ng, hs, interleave, fraction, dtype", GQA_WRITE_CASES)
def test_gqa_cache_write_kernel_matches_torch_path_interpreted(interpreted, B, nh, ng, hs, interleave, fraction, dtype):
    """The kernel (Triton interpreter, CPU) against the torch path: the roped query, the written k and v cache rows,
    and every other cache row untouched; per-row (B, 1) and shared (1,) positions."""
    S, n = 12, int(fraction * hs)
    cos_table, sin_table = build_rope_cache(S, n)  # float32 tables, as the model builds them
    rows = torch.arange(B)
    for input_pos in (torch.tensor([[0], [S - 1], [5]][:B]), torch.tensor([7])):
        qkv, k_cache, v_cache = write_inputs(B, nh, ng, hs, S, dtype)
        cos, sin = cos_table[input_pos], sin_table[input_pos]  # (B, 1, n) or (1, n)
        k_torch, v_torch = k_cache.clone(), v_cache.clone()
        q_torch = gqa_cache_write(qkv, k_torch, v_torch, input_pos, cos, sin, nh, n, interleave, use_kernel=False)
        k_fp32, v_fp32 = k_cache.float(), v_cache.float()
        q_fp32 = gqa_cache_write(qkv.float(), k_fp32, v_fp32, input_pos, cos, sin, nh, n, interleave, use_kernel=False)
        k_before, v_before = k_cache.clone(), v_cache.clone()
        launches = len(interpreted)
        with poisoned_empty():
            q = gqa_cache_write(qkv, k_cache, v_cache, input_pos, cos, sin, nh, n, interleave)  # (B, nh, 1, hs)
        assert len(interpreted) == launches + 1, "the kernel path did not run"
        assert q.shape == (B, nh, 1, hs) and q.dtype == dtype and not q.isnan().any()
        assert_rope_close(q, q_fp32, q_torch)
        q_new, k_new, v_new = split_heads(qkv, nh, ng, hs)  # (B, nh, 1, hs), (B, ng, 1, hs), (B, ng, 1, hs)
        assert torch.equal(q[..., n:], q_new[..., n:])  # dims past rope_n_elem pass through as they are
        pos = input_pos.view(-1).expand(B)  # (B,)
        written = k_cache[rows, :, pos]  # (B, ng, hs)
        assert_rope_close(written, k_fp32[rows, :, pos], k_torch[rows, :, pos])
        assert torch.equal(written[..., n:], k_new[:, :, 0, n:])
        assert torch.equal(v_cache[rows, :, pos], v_new[:, :, 0]) and torch.equal(v_cache, v_torch)
        untouched = torch.ones(B, S, dtype=torch.bool)
        untouched[rows, pos] = False
        assert torch.equal(k_cache.transpose(1, 2)[untouched], k_before.transpose(1, 2)[untouched])
        assert torch.equal(v_cache.transpose(1, 2)[untouched], v_before.transpose(1, 2)[untouched])


def test_gqa_cache_write_kernel_writes_nothing_outside_the_cache_interpreted(interpreted):
    """A position past the cache (where the torch path raises) writes no memory; the other rows are written."""
    B, nh, ng, hs, S = 2, 4, 2, 16, 8
    qkv, k_cache, v_cache = write_inputs(B, nh, ng, hs, S, torch.bfloat16)
    cos_table, sin_table = build_rope_cache(S + 1, hs)
    input_pos = torch.tensor([[3], [S]])
    k_before, v_before = k_cache.clone(), v_cache.clone()
    gqa_cache_write(qkv, k_cache, v_cache, input_pos, cos_table[input_pos], sin_table[input_pos], nh, hs, False)
    assert interpreted and torch.equal(k_cache[1], k_before[1]) and torch.equal(v_cache[1], v_before[1])
    assert torch.equal(v_cache[0, :, 3], split_heads(qkv, nh, ng, hs)[2][0, :, 0])


def test_gqa_cache_write_op_compiles_with_its_mutations_interpreted(interpreted):
    """torch.compile(fullgraph=True) traces the dispatch as the opaque `litgpt::gqa_cache_write` (its fake gives
    the query's shape; the schema declares the cache writes), and the compiled call writes the same caches."""
    B, nh, ng, hs, S, n = 2, 4, 2, 16, 8, 8
    qkv, k_cache, v_cache = write_inputs(B, nh, ng, hs, S, torch.bfloat16)
    cos_table, sin_table = build_rope_cache(S, n)
    input_pos = torch.tensor([[2], [6]])
    cos, sin = cos_table[input_pos], sin_table[input_pos]
    k_eager, v_eager = k_cache.clone(), v_cache.clone()
    q_eager = gqa_cache_write(qkv, k_eager, v_eager, input_pos, cos, sin, nh, n, False)
    compiled = torch.compile(gqa_cache_write, backend="aot_eager", fullgraph=True, dynamic=False)
    q = compiled(qkv, k_cache, v_cache, input_pos, cos, sin, nh, n, False)
    assert len(interpreted) == 2
    assert torch.equal(q, q_eager) and torch.equal(k_cache, k_eager) and torch.equal(v_cache, v_eager)


# ---------------------------------------------------------------- decode attention and the MLA cache write, interpreted

@pytest.fixture
def interpreted_attention(interpreted_module, monkeypatch) -> tuple[list, list]:
    """Route `mla_decode_attention`'s and `gqa_decode_attention`'s kernel path (`litgpt::decode_attention`) to the
    interpreted launcher on CPU tensors for this test; returns the launch record and the (split_len, n_splits) of
    every launch's split plan."""
    launches = route_to_interpreted(monkeypatch, interpreted_module, "triton_decode", dispatch, "_decode_attention_op",
                                    interpreter_gate)
    plans = []
    plan = interpreted_module.split_plan
    monkeypatch.setattr(interpreted_module, "split_plan", lambda *args: plans.append(plan(*args)) or plans[-1])
    return launches, plans


# Off CUDA the launcher plans for 4 SMs. SMALL_TILES: 16 rows and 16 keys per program, splits of at least 16 keys
# until 4 programs per SM. SMALL_MERGE: the merge takes 2 splits and 64 output columns per tile (on the GPU, more
# than 128 splits, or fewer splits and wider values, give several tiles).
SMALL_TILES = dict(block_h=16, block_n=16, waves=4.0, min_split=16)
SMALL_MERGE = dict(MERGE_BLOCK_S=2, MERGE_TILE=128)
ATTENTION_CASES = [  # (cache, B, heads, groups, T, S_max, d (MLA: d_c), d_R (MLA) or d_v (GQA), valid lengths of the
    # last new token per row (all equal: shared (T,) positions, else per row (B, T)), tiles (None: the default
    # config), merge tiles (None: the module's), KV splits the launch must take)
    ("mla", 2, 4, 1, 1, 200, 64, 16, [200, 17], None, None, 2),  # 2 splits of two 64-key tiles, merged; row 1's
    # second split holds none of its keys
    ("mla", 2, 3, 1, 2, 48, 48, 16, [40, 40], None, None, 1),  # one split: stage 1 writes the output; q_len 2
    # (causal among the new tokens); a latent of 48 in a 64-wide tile; S_max not a multiple of the tile
    ("mla", 1, 20, 1, 1, 100, 128, 16, [77], SMALL_TILES, SMALL_MERGE, 7),  # 20 rows in two blocks of 16; 7 splits,
    # the 5 that hold keys merged 2 at a time (the running maximum rescales), in two programs of 64 columns
    ("gqa", 2, 4, 1, 2, 300, 48, 48, [300, 100], None, None, 2),  # MQA, q_len 2, head width 48 (masked lanes)
    ("gqa", 2, 6, 2, 1, 150, 32, 16, [150, 33], None, None, 1),  # GQA, values narrower than keys
    ("gqa", 2, 2, 2, 1, 80, 16, 16, [80, 1], SMALL_TILES, None, 3),  # MHA, 3 splits merged in a tile of 4 (masked
    # split lanes); row 1 sees one key
]


@pytest.mark.parametrize("cache, B, H, G, T, S, d, d_last, lengths, tiles, merge, splits", ATTENTION_CASES)
def test_decode_attention_kernel_matches_float32_reference_interpreted(interpreted_attention, interpreted_module,
                                                                       monkeypatch, cache, B, H, G, T, S, d, d_last,
                                                                       lengths, tiles, merge, splits):
    """The split-KV kernel (Triton interpreter, CPU; the merge stage where the plan splits the KV) against the
    float32 reference: outputs and partial buffers start as NaN (every output element is written, only the splits
    that hold a row's keys are merged), and the cache holds NaN past each row's valid length (never read).

    In float16: the interpreter keeps bfloat16 as its bit patterns and multiplies those in `tl.dot` (Triton's
    interpreter does not do bfloat16 arithmetic), so the bfloat16 launch is checked on the GPU only."""
    launches, plans = interpreted_attention
    if tiles is not None:
        monkeypatch.setattr(interpreted_module, "default_config", lambda *_: interpreted_module.LaunchConfig(**tiles))
    for name, value in (merge or {}).items():
        monkeypatch.setattr(interpreted_module, name, value)
    torch.manual_seed(S + H)
    dtype = torch.float16
    input_pos = torch.tensor([[n - T + t for t in range(T)] for n in lengths])  # (B, T)
    input_pos = input_pos[0] if len(set(lengths)) == 1 else input_pos  # (T,) shared by the batch
    stale = torch.arange(S) >= torch.tensor(lengths).unsqueeze(1)  # (B, S): past each row's valid length
    if cache == "mla":
        q = torch.randn(B, H, T, d + d_last, dtype=dtype)
        kv = torch.randn(B, S, d + d_last, dtype=dtype)
        ref = mla_decode_attention_reference(q.float(), kv.float(), input_pos, d, 0.07)  # (B, H, T, d_c)
        kv[stale] = float("nan")
        run = lambda: mla_decode_attention(q, kv, input_pos, d, 0.07)  # noqa: E731
        width = d
    else:
        q = torch.randn(B, H, T, d, dtype=dtype)
        k, v = torch.randn(B, G, S, d, dtype=dtype), torch.randn(B, G, S, d_last, dtype=dtype)
        ref = gqa_decode_attention_reference(q.float(), k.float(), v.float(), input_pos, 0.125)  # (B, H, T, d_v)
        k.transpose(1, 2)[stale], v.transpose(1, 2)[stale] = float("nan"), float("nan")
        run = lambda: gqa_decode_attention(q, k, v, input_pos, 0.125)  # noqa: E731
        width = d_last
    with poisoned_empty():
        out = run()
    assert launches == ["_decode_attention_op"], "the kernel path did not run"
    assert plans[-1][1] == splits
    assert out.shape == (B, H, T, width) and out.dtype == dtype and not out.isnan().any()
    assert rel_error(out, ref) < 1e-3  # measured 3e-5 to 3e-4


@pytest.fixture
def interpreted_mla_write(interpreted_module, monkeypatch) -> list:
    """Route `mla_cache_write`'s kernel path (`litgpt::mla_cache_write`) to the interpreted launcher on CPU tensors
    for this test; returns the list that records every launch."""
    return route_to_interpreted(monkeypatch, interpreted_module, "triton_decode", dispatch, "_mla_cache_write_op",
                                interpreter_gate)


MLA_WRITE_CASES = [  # (B, h, d_c, d_R, interleaved rope, dtype)
    (2, 3, 64, 16, False, torch.bfloat16),
    (3, 2, 48, 16, True, torch.float32),  # a latent of 48 in a 64-wide block (masked lanes)
    (1, 4, 32, 32, True, torch.bfloat16),
    (2, 2, 32, 16, False, torch.float32),
]


@pytest.mark.parametrize("B, h, d_c, d_r, interleave, dtype", MLA_WRITE_CASES)
def test_mla_cache_write_kernel_matches_torch_path_interpreted(interpreted_mla_write, B, h, d_c, d_r, interleave,
                                                               dtype):
    """The fused MLA cache write (Triton interpreter, CPU) against the torch path (`latent_entries`,
    `write_positions`, `apply_rope_last`): the query's latent part copied as it is and its rope part rotated, the
    new row [RMSNorm(latent) * gain | roped key] written at each row's position, every other cache row untouched;
    per-row (B, 1) and shared (1,) positions."""
    S, D, eps = 10, d_c + d_r, 1e-5
    cos_table, sin_table = build_rope_cache(S, d_r)
    gain = (1 + 0.2 * torch.randn(d_c)).to(dtype)
    rows = torch.arange(B)
    for input_pos in (torch.tensor([[0], [S - 1], [4]][:B]), torch.tensor([6])):
        kv_a = torch.randn(B, 1, D, dtype=dtype) * 3
        query = torch.randn(B, 1, h, D, dtype=dtype).transpose(1, 2)  # (B, h, 1, D), as the model passes it
        cache = torch.randn(B, S, D, dtype=dtype)
        cos, sin = cos_table[input_pos], sin_table[input_pos]  # (B, 1, d_R) or (1, d_R)
        torch_cache, fp32_cache = cache.clone(), cache.float()
        mla_cache_write(kv_a, torch_cache, input_pos, cos, sin, gain, eps, interleave)  # no query: the torch path
        mla_cache_write(kv_a.float(), fp32_cache, input_pos, cos, sin, gain, eps, interleave)
        q_torch = apply_rope_last(query, cos, sin, interleave)
        q_fp32 = apply_rope_last(query.float(), cos, sin, interleave)
        before = cache.clone()
        launches = len(interpreted_mla_write)
        with poisoned_empty():
            q = mla_cache_write(kv_a, cache, input_pos, cos, sin, gain, eps, interleave, query)  # (B, h, 1, D)
        assert len(interpreted_mla_write) == launches + 1, "the kernel path did not run"
        assert q.shape == (B, h, 1, D) and q.dtype == dtype and not q.isnan().any()
        assert torch.equal(q[..., :d_c], query[..., :d_c])
        assert_rope_close(q, q_fp32, q_torch)
        pos = input_pos.view(-1).expand(B)  # (B,)
        assert_rope_close(cache[rows, pos], fp32_cache[rows, pos], torch_cache[rows, pos])
        untouched = torch.ones(B, S, dtype=torch.bool)
        untouched[rows, pos] = False
        assert torch.equal(cache[untouched], before[untouched])


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # the GEMV's 1 / sqrt(0 + eps 0), unused
# without a norm: the interpreter computes it on the host
@pytest.mark.parametrize("cache", ["mla", "mha"])
def test_folded_decode_on_the_interpreted_kernels(interpreted_module, monkeypatch, cache):
    """A folded model's cached decode in float16 with every kernel of its one-token step under the Triton interpreter
    (CPU): the cache write (MLA or MHA), split-KV attention and the GEMVs with their norm and activation prologues,
    against the same model's torch path: logits and the second block's cache, batch 1 (the GEMVs take one row),
    per-row positions."""
    from litgpt.fold import fold_for_decode

    import litgpt.kernels.linear  # noqa: F401  (the module: `litgpt.kernels.linear` the attribute is the function)

    linear_copy = interpreted_copy("triton_linear")
    tile = next(c for c in linear_copy._CONFIGS if c.kwargs == {"BLOCK_N": 32, "BLOCK_K": 256})
    monkeypatch.setattr(linear_copy._gemv_kernel, "configs", [tile])  # no GPU to time the others on
    if cache == "mla":
        config = Config.from_name("debug", block_size=48, latent_attention={
            **MLA_DIMS, "q_lora_rank": None, "kv_lora_rank": 64, "qk_rope_head_dim": 16})
    else:
        config = Config.from_name("debug", block_size=48, n_embd=128)  # 4 heads of 32, half of each roped
    torch.manual_seed(0)
    model = randomize(GPT(config)).to(dtype=torch.float16).eval()
    fold_for_decode(model)
    routes = (  # (the interpreted copy, its module, the entry point's module, the operator, the entry's check)
        (interpreted_module, "triton_decode", dispatch, "_decode_attention_op", "kernel_applies"),
        (interpreted_module, "triton_decode", dispatch, f"_{'mla' if cache == 'mla' else 'gqa'}_cache_write_op",
         "kernel_applies"),
        (linear_copy, "triton_linear", sys.modules["litgpt.kernels.linear"], "_gemv_op", "triton_can_run"),
    )
    idx = torch.randint(0, config.padded_vocab_size, (1, 7))
    with torch.no_grad():
        records = [route_to_interpreted(monkeypatch, copy, kernel_module, entry, op_name, interpreter_gate,
                                        gate_name=gate_name)
                   for copy, kernel_module, entry, op_name, gate_name in routes]  # each kernel's launch record
        torch_logits = cached_decode(model, idx, prefill=5, use_kernel=False).float()
        assert [len(r) for r in records] == [0, 0, 0], "a kernel ran with the kernels switched off"
        torch_cache = [t.float().clone() for t in model.transformer.h[1].attn.kv_cache.buffers()]
        kernel_logits = cached_decode(model, idx, prefill=5, use_kernel=True).float()
    steps = 2 * config.n_layer  # 2 one-token steps: one attention, one cache write and two GEMVs in each block
    assert [len(r) for r in records] == [steps, steps, 2 * steps], "a kernel path did not run"
    assert rel_error(kernel_logits, torch_logits) < 1e-2
    kernel_cache = list(model.transformer.h[1].attn.kv_cache.buffers())
    assert len(kernel_cache) == len(torch_cache) > 0
    for got, want in zip(kernel_cache, torch_cache):
        assert rel_error(got, want) < 1e-2


def gqa_model(**overrides) -> GPT:
    """A tiny MHA/GQA/MQA model in bf16 on CUDA: 4 heads of 32."""
    config = Config.from_name("debug", block_size=96, n_embd=128, **overrides)
    torch.manual_seed(0)
    return randomize(GPT(config)).to(device="cuda", dtype=torch.bfloat16).eval()


GQA_MODEL_CASES = [
    dict(),  # MHA, rotate-half over half of each head
    dict(n_query_groups=2, rotary_percentage=1.0, rope_interleave=True),  # GQA, interleaved, whole head
    dict(n_query_groups=1, rotary_percentage=0.25, parallel_residual=False, norm_class_name="RMSNorm",
         mlp_class_name="LLaMAMLP", intermediate_size=256, bias=False),  # MQA
]


@pytest.fixture
def fused_writes(monkeypatch) -> list:
    """Records every launch of the fused MHA/GQA cache write."""
    calls = []
    op = dispatch._gqa_cache_write_op
    monkeypatch.setattr(dispatch, "_gqa_cache_write_op", lambda *args: calls.append(1) or op(*args))
    return calls


@pytest.mark.cuda
@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("overrides", GQA_MODEL_CASES)
def test_gqa_model_decode_with_fused_cache_write_matches_torch_path(overrides, fold, fused_writes):
    """Cached decode with kernels on (the fused cache write, then split-KV attention) against kernels off: logits
    and caches, batch 1 and batch 3, per-row positions, plain and folded blocks."""
    from litgpt.fold import fold_for_decode

    import copy

    model = gqa_model(**overrides)
    reference = copy.deepcopy(model).float()  # the same weights in float32: what both bf16 paths approximate
    if fold:
        fold_for_decode(model)
        fold_for_decode(reference)
    n_layer = model.config.n_layer
    for B in (1, 3):
        idx = torch.randint(0, model.config.padded_vocab_size, (B, 30), device="cuda")
        with torch.no_grad():
            exact = cached_decode(reference, idx, prefill=20, use_kernel=False)
            torch_logits = cached_decode(model, idx, prefill=20, use_kernel=False).float()
            torch_k, torch_v = (t.float().clone() for t in (model.transformer.h[1].attn.kv_cache.k,
                                                             model.transformer.h[1].attn.kv_cache.v))
            fused_writes.clear()
            kernel_logits = cached_decode(model, idx, prefill=20, use_kernel=True).float()
        assert len(fused_writes) == 10 * n_layer
        # the kernel ropes in float32 and rounds once, the torch path after every op: its bf16 error against float32
        # is the yardstick (on an H200 the two paths differed by 2.1% in the MQA case, each about 1-2% from float32)
        assert rel_error(kernel_logits, exact) <= 1.25 * rel_error(torch_logits, exact) + 1e-3
        assert rel_error(kernel_logits, torch_logits) < 5e-2
        cache = model.transformer.h[1].attn.kv_cache
        assert rel_error(cache.k, torch_k) < 2e-2 and rel_error(cache.v, torch_v) < 2e-2


@pytest.mark.cuda
def test_gqa_decode_step_with_fused_cache_write_replays_as_a_cuda_graph(fused_writes):
    """The eager one-token step (fused cache write + decode attention, folded GEMVs), captured once as a CUDA graph
    and replayed at new positions, gives the torch path's logits and caches."""
    from litgpt.fold import fold_for_decode

    model = gqa_model(n_query_groups=2)
    fold_for_decode(model)
    B, prefill, total = 2, 20, 30
    idx = torch.randint(0, model.config.padded_vocab_size, (B, total), device="cuda")
    with torch.no_grad():
        expected = cached_decode(model, idx, prefill, use_kernel=False).float()
        expected_k = model.transformer.h[0].attn.kv_cache.k.float().clone()
        set_kernels(model, True)
        model.set_kv_cache(batch_size=B, max_seq_length=model.config.block_size)
        logits = [model(idx[:, :prefill], input_pos=torch.arange(prefill, device="cuda"))[:, -1:]]
        token, pos = idx[:, prefill : prefill + 1].clone(), torch.full((B, 1), prefill, device="cuda")
        fused_writes.clear()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # compile the kernels outside the capture (writes position `prefill` too)
            model(token, input_pos=pos)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = model(token, input_pos=pos)  # (B, 1, V)
        assert len(fused_writes) == 2 * model.config.n_layer  # warm-up and capture took the fused write
        fused_writes.clear()
        for t in range(prefill, total):  # new tokens and positions, the same captured launches
            token.copy_(idx[:, t : t + 1])
            pos.fill_(t)
            graph.replay()
            logits.append(out.clone())
    assert not fused_writes  # replays launch nothing from Python
    assert rel_error(torch.cat(logits, 1).float(), expected) < 2e-2
    assert rel_error(model.transformer.h[0].attn.kv_cache.k, expected_k) < 2e-2


@pytest.mark.cuda
@pytest.mark.parametrize("interleave", [False, True])
def test_gqa_cache_write_kernel_matches_torch_path_and_compiles(interleave):
    """On the GPU: the kernel against the float32 torch path, and torch.compile(fullgraph=True) of the dispatch
    (the opaque `litgpt::gqa_cache_write`) against eager."""
    B, nh, ng, hs, S, n = 4, 32, 8, 128, 1024, 64
    qkv = torch.randn(B, 1, (nh + 2 * ng) * hs, device="cuda", dtype=torch.bfloat16)
    k_cache, v_cache = (torch.randn(B, ng, S, hs, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    cos_table, sin_table = build_rope_cache(S, n, torch.device("cuda"))
    input_pos = torch.tensor([[0], [1023], [17], [500]], device="cuda")
    cos, sin = cos_table[input_pos], sin_table[input_pos]
    k_fp32, v_fp32 = k_cache.float(), v_cache.float()
    q_fp32 = gqa_cache_write(qkv.float(), k_fp32, v_fp32, input_pos, cos, sin, nh, n, interleave, use_kernel=False)
    k_eager, v_eager = k_cache.clone(), v_cache.clone()
    q = gqa_cache_write(qkv, k_eager, v_eager, input_pos, cos, sin, nh, n, interleave)
    torch.testing.assert_close(q, q_fp32.to(torch.bfloat16))
    torch.testing.assert_close(k_eager, k_fp32.to(torch.bfloat16))
    assert torch.equal(v_eager, v_fp32.to(torch.bfloat16))
    compiled = torch.compile(gqa_cache_write, fullgraph=True, dynamic=False)
    q_compiled = compiled(qkv, k_cache, v_cache, input_pos, cos, sin, nh, n, interleave)
    assert torch.equal(q_compiled, q) and torch.equal(k_cache, k_eager) and torch.equal(v_cache, v_eager)


def test_triton_warm_up_hashes_its_key_in_a_background_thread_for_cuda_only():
    """`start_warm_up` computes Triton's per-process cache key (and, with a GPU, makes the CUDA context) off the main
    thread, so that it overlaps loading, and only for a CUDA device."""
    from litgpt.kernels._triton import start_warm_up

    assert start_warm_up(torch.device("cpu")) is None
    if not TRITON_AVAILABLE:
        pytest.skip("needs triton for its cache key")
    from triton.runtime.cache import triton_key

    triton_key.cache_clear()
    thread = start_warm_up(torch.device("cuda"))
    assert thread is not None and thread.daemon and thread is not threading.main_thread()
    thread.join(timeout=120)
    assert triton_key.cache_info().currsize == 1  # computed once; the first launch finds it
    if torch.cuda.is_available():
        assert torch.cuda.is_initialized()


# ------------------------------------------------------------------ the decode kernel compiled for Hopper (no GPU)
SPLIT_VARIANTS = {  # name: (FP8, SHARED_V, D_MAIN, D_ROPE, N_BLK, PAGED, SINGLE_SPLIT)
    "mla": (False, True, 256, 32, 1, True, False),
    "mla-fp8-2-blocks": (True, True, 256, 32, 2, True, False),
    "mla-fp8-3-blocks": (True, True, 384, 64, 3, True, False),
    "mla-fp8-4-blocks": (True, True, 512, 64, 4, False, True),
    "gqa": (False, False, 64, 0, 1, False, True),
    "gqa-fp8": (True, False, 64, 0, 1, True, False),
}


def split_kernel_ptx(variant: str) -> str:
    """`_split_kernel` compiled to PTX for sm_90 (no GPU needed), as `_split_kv` would launch it."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from litgpt.kernels.triton_decode import _split_kernel

    fp8, shared_v, d_main, d_rope, n_blk, paged, single = SPLIT_VARIANTS[variant]
    block_dm = triton.next_power_of_2(d_main)
    constexprs = dict(D_MAIN=d_main, D_ROPE=d_rope, D_V=d_main, BLOCK_DM=block_dm,
                      BLOCK_DR=triton.next_power_of_2(max(d_rope, 16)), BLOCK_DV=block_dm, BLOCK_H=16, BLOCK_N=64,
                      SHARED_V=shared_v, SINGLE_SPLIT=single, PAGED=paged, PAGE_SIZE=16 if paged else 1, FP8=fp8,
                      BLOCK_SB=128 if n_blk > 1 else block_dm, N_BLK=n_blk)
    pointers = {"Q": "*bf16", "OUT": "*bf16", "KR": "*bf16", "K": "*fp8e4nv" if fp8 else "*bf16",
                "V": "*fp8e4nv" if fp8 else "*bf16", "KS": "*fp32", "VS": "*fp32", "PART_O": "*fp32",
                "PART_LSE": "*fp32", "POS": "*i64", "BT": "*i32", "qk_scale": "fp32"}
    signature = {a: "constexpr" if a in constexprs else pointers.get(a, "i32") for a in _split_kernel.arg_names}
    compiled = triton.compile(ASTSource(_split_kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=4, num_stages=3))
    return compiled.asm["ptx"]


@pytest.mark.parametrize("variant", SPLIT_VARIANTS)
def test_the_split_kernel_compiles_for_hopper(variant):
    """The Triton interpreter runs the kernel as Python, so it cannot see what only the compiler rejects (a value
    defined under a constexpr branch, an accumulator per scale block carried through the loop): every variant is
    compiled to PTX for sm_90 here, with no GPU. The fp8 ones convert e4m3, the others never do."""
    ptx = split_kernel_ptx(variant)
    assert "mma" in ptx
    assert ("e4m3" in ptx) == SPLIT_VARIANTS[variant][0]


def test_the_fp8_mla_kernel_runs_one_product_per_scale_block():
    """The scales multiply scores and probabilities, never a K tile: a latent of 512 in 4 blocks of 128 compiles to
    twice the matrix instructions of 256 in 2 (the same tile sizes per product)."""
    two, four = (split_kernel_ptx(v).count("mma") for v in ("mla-fp8-2-blocks", "mla-fp8-4-blocks"))
    assert four == 2 * two
