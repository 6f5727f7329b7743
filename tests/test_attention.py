"""MLA: the absorbed path equals the naive path; the reference latent attention is right."""

import math

import pytest
import torch

from litgpt.attention import AttentionInputs
from litgpt import GPT, Config

from test_model import MLA_DIMS, randomize


def mla_layer(dtype, **overrides):
    config = Config.from_name("debug", block_size=64, latent_attention=overrides.pop("dims", MLA_DIMS), **overrides)
    model = randomize(GPT(config)).to(dtype)
    return model, model.transformer.h[0].attn


@pytest.mark.parametrize("dims", [MLA_DIMS, {**MLA_DIMS, "q_lora_rank": None}, True])
@pytest.mark.parametrize("interleave", [False, True])
@pytest.mark.parametrize("attn_bias", [False, True])
def test_absorbed_equals_naive_float64(dims, interleave, attn_bias):
    model, attn = mla_layer(torch.float64, dims=dims, rope_interleave=interleave, attn_bias=attn_bias)
    x = torch.randn(3, 11, model.config.n_embd, dtype=torch.float64)
    cos, sin = model.cos[:11], model.sin[:11]
    with torch.no_grad():
        attn.absorb = False
        naive = attn(x, AttentionInputs(cos, sin))
        attn.absorb = True
        absorbed = attn(x, AttentionInputs(cos, sin))
    assert (naive - absorbed).abs().max().item() < 1e-10
    assert naive.abs().max().item() > 1e-2  # the comparison is not between two near-zero tensors


def test_absorbed_equals_naive_cached_decode_float64():
    model, attn = mla_layer(torch.float64)
    idx = torch.randint(0, 100, (2, 9))
    outs = {}
    with torch.no_grad():
        for absorb in (False, True):
            for block in model.transformer.h:
                block.attn.absorb = absorb
            model.set_kv_cache(batch_size=2, max_seq_length=16)
            model(idx[:, :5], input_pos=torch.arange(5))
            outs[absorb] = torch.cat([model(idx[:, i : i + 1], input_pos=torch.tensor([i])) for i in range(5, 9)], 1)
    assert (outs[False] - outs[True]).abs().max().item() < 1e-10


def test_absorbed_equals_naive_bf16():
    model, attn = mla_layer(torch.float32)
    x = torch.randn(2, 16, model.config.n_embd)
    cos, sin = model.cos[:16], model.sin[:16]
    with torch.no_grad():
        attn.absorb = False
        reference = attn(x, AttentionInputs(cos, sin))  # float32
        attn.to(torch.bfloat16)
        results = {}
        for absorb in (False, True):
            attn.absorb = absorb
            results[absorb] = attn(x.bfloat16(), AttentionInputs(cos, sin)).float()
    scale = reference.abs().max()
    # each bf16 path is within bf16 rounding of the float32 truth, and so of each other
    for out in results.values():
        assert ((out - reference).abs().max() / scale).item() < 3e-2
    assert ((results[True] - results[False]).abs().max() / scale).item() < 3e-2


def test_default_path_choice():
    model, attn = mla_layer(torch.float32)
    seen = []
    attn.naive_orig, attn.absorbed_orig = attn.naive, attn.absorbed
    attn.naive = lambda *a, **kw: seen.append("naive") or attn.naive_orig(*a, **kw)
    attn.absorbed = lambda *a, **kw: seen.append("absorbed") or attn.absorbed_orig(*a, **kw)
    with torch.no_grad():
        model(torch.randint(0, 100, (1, 4)))  # training-style forward
        model.set_kv_cache(batch_size=1, max_seq_length=8)
        model(torch.randint(0, 100, (1, 4)), input_pos=torch.arange(4))  # prefill
        model(torch.randint(0, 100, (1, 1)), input_pos=torch.tensor([4]))  # decode
    assert seen == ["naive", "naive", "absorbed"]


def test_mla_scale_is_inverse_sqrt_of_qk_head_dim():
    _, attn = mla_layer(torch.float32)
    assert math.isclose(attn.scale, 1 / math.sqrt(MLA_DIMS["qk_nope_head_dim"] + MLA_DIMS["qk_rope_head_dim"]))


@pytest.mark.cuda
def test_training_attention_with_unpadded_values_matches_float64():
    """On CUDA in bf16 the naive path hands SDPA an unpadded V where cuDNN takes it; forward and gradients match
    float64 on the CPU, and match the padded path (cuDNN off)."""
    from litgpt.attention import cudnn_attention_takes

    dims = dict(kv_lora_rank=64, qk_rope_head_dim=16, qk_nope_head_dim=32, v_head_dim=32)  # cuDNN-sized heads
    model, attn = mla_layer(torch.float64, dims=dims)
    x = torch.randn(2, 64, model.config.n_embd, dtype=torch.float64)
    cos, sin = model.cos[:64], model.sin[:64]
    x64 = x.clone().requires_grad_(True)
    reference = attn(x64, AttentionInputs(cos, sin))
    reference.square().sum().backward()
    attn_gpu = attn.to("cuda", torch.bfloat16)
    results = {}
    for cudnn in (True, False):
        torch.backends.cuda.enable_cudnn_sdp(cudnn)
        try:
            xb = x.to("cuda", torch.bfloat16).requires_grad_(True)
            out = attn_gpu(xb, AttentionInputs(cos.cuda(), sin.cuda()))
            out.float().square().sum().backward()
            results[cudnn] = (out.double().cpu(), xb.grad.double().cpu())
            assert cudnn_attention_takes(xb, None) == (cudnn and torch.cuda.get_device_capability() >= (9, 0))
        finally:
            torch.backends.cuda.enable_cudnn_sdp(True)
    for out, grad in results.values():
        assert ((out - reference.detach()).abs().max() / reference.abs().max()).item() < 3e-2
        assert ((grad - x64.grad).abs().max() / x64.grad.abs().max()).item() < 5e-2


def test_cudnn_decision_compiles_without_graph_breaks(monkeypatch):
    """The backend flag and device capability behind MLA's unpadded training V are constants under torch.compile:
    reading `cudnn_sdp_enabled()` in traced code broke the graph in every layer and cost the compiled training step
    40% on the GPU. Exercised on the CPU by letting the check past its CUDA-only conditions."""
    import litgpt.attention as attention

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    monkeypatch.setattr(attention, "cudnn_attention_takes",
                        lambda q, mask: mask is None and attention.cudnn_attention_preferred(q.device.index))
    model = GPT(Config.from_name("pythia-14m-mla", n_layer=2))
    explanation = torch._dynamo.explain(model)(torch.randint(0, 1000, (2, 16)))
    assert explanation.graph_break_count == 0, [r.reason for r in explanation.break_reasons]
    assert explanation.graph_count == 1


# ------------------------------------------------------------------------------------------------ AttentionInputs
def test_attention_inputs_mask_and_cache_view():
    cos, sin = torch.zeros(2, 4), torch.ones(2, 4)
    training = AttentionInputs(cos, sin)
    assert not training.cached and training.mask(7) is None  # SDPA's is_causal
    shared = AttentionInputs(cos, sin, torch.tensor([3, 4]))
    assert shared.mask(6).tolist() == [[True] * 4 + [False] * 2, [True] * 5 + [False]]
    per_row = AttentionInputs(cos, sin, torch.tensor([[0], [2]]), input_pos_maxp1=3)
    assert per_row.mask(3).shape == (2, 1, 1, 3)
    assert per_row.mask(3)[:, 0, 0].tolist() == [[True, False, False], [True, True, True]]
    # a prefill from position 0 reading just its own keys: SDPA's causal mask, not a built one
    from_zero = AttentionInputs(cos, sin, torch.arange(4), input_pos_maxp1=4)
    assert from_zero.mask(4) is None and AttentionInputs(cos, sin, torch.arange(4).view(1, 4), 4).mask(4) is None
    assert from_zero.mask(6).tolist() == [[True] * (p + 1) + [False] * (5 - p) for p in range(4)]
    assert AttentionInputs(cos, sin, torch.arange(4)).mask(4).shape == (4, 4)  # no maxp1: nothing promised
    cache = torch.arange(2 * 5).view(1, 2, 5)
    assert per_row.cache_view(cache, seq_dim=2).tolist() == [[[0, 1, 2], [5, 6, 7]]]
    assert shared.cache_view(cache, seq_dim=2) is cache
    with pytest.raises(Exception):  # frozen: one context per forward, shared by every layer
        shared.input_pos = None


@pytest.mark.parametrize("name, fold, masks", [
    ("debug", False, 2),  # MHA on the torch decode path: SDPA reads the mask in each of the 2 layers
    ("debug-mla", False, 0),  # MLA's absorbed decode never reads a mask
    ("debug-mla", True, 0),  # nor does its folded step
])
def test_the_mask_is_built_only_where_sdpa_reads_it(monkeypatch, name, fold, masks):
    import litgpt.attention
    from litgpt.fold import fold_for_decode

    model = randomize(GPT(Config.from_name(name, block_size=32))).eval()
    if fold:
        fold_for_decode(model)
    model.set_kv_cache(1, 16)
    built = []
    key_mask = litgpt.attention.key_mask
    monkeypatch.setattr(litgpt.attention, "key_mask", lambda *a: built.append(a[1]) or key_mask(*a))
    with torch.no_grad():
        model(torch.zeros(1, 5, dtype=torch.long), input_pos=torch.arange(5))  # prefill: SDPA with a mask per layer
        assert built == [16] * model.config.n_layer
        built.clear()
        for block in model.transformer.h:
            block.attn.use_kernel = False  # on CPU the kernels fall back anyway; MHA's torch path is SDPA
        model(torch.zeros(1, 1, dtype=torch.long), input_pos=torch.tensor([5]))
    assert len(built) == masks


@pytest.mark.parametrize("q_lora_rank", [None, 24])
def test_no_nope_part_naive_absorbed_cached_and_folded_agree_float64(q_lora_rank):
    """qk_nope_head_dim 0 (every query/key dim roped, W_UK empty) with a value head wider than the query head: the
    naive path (q and k padded for SDPA), the absorbed path, cached decode and the folded step compute one function."""
    from litgpt.fold import fold_for_decode

    dims = dict(q_lora_rank=q_lora_rank, kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=0, v_head_dim=12)
    model, attn = mla_layer(torch.float64, dims=dims, rope_interleave=True)
    assert attn.dims.qk_head_dim == 8 and attn.scale == pytest.approx(8 ** -0.5)
    x = torch.randn(2, 9, model.config.n_embd, dtype=torch.float64)
    ctx = AttentionInputs(model.cos[:9], model.sin[:9])
    with torch.no_grad():
        attn.absorb = False
        naive = attn(x, ctx)
        attn.absorb = True
        absorbed = attn(x, ctx)
        attn.absorb = None
        assert (naive - absorbed).abs().max().item() < 1e-10 and naive.abs().max().item() > 1e-2
        idx = torch.randint(0, 100, (2, 9))
        full = model(idx)
        for fold in (False, True):
            if fold:
                fold_for_decode(model)
            model.set_kv_cache(batch_size=2, max_seq_length=16)
            steps = [model(idx[:, :5], input_pos=torch.arange(5))]
            steps += [model(idx[:, t : t + 1], input_pos=torch.tensor([t])) for t in range(5, 9)]
            assert (torch.cat(steps, dim=1) - full).abs().max().item() < 1e-10
