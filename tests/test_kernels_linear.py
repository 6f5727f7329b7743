"""The small-batch GEMV of folded decode steps against F.linear."""

import pytest
import torch
import torch.nn.functional as F

from litgpt.kernels import linear


def test_linear_falls_back_to_torch_on_cpu():
    torch.manual_seed(0)
    x, w, b, r = torch.randn(2, 1, 24), torch.randn(40, 24), torch.randn(40), torch.randn(2, 1, 40)
    assert torch.allclose(linear(x, w, b, residual=r), F.linear(x, w, b) + r)
    assert torch.allclose(linear(x, w), F.linear(x, w))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows, n, k", [(1, 768, 6144), (1, 770, 3000), (1, 48, 48), (1, 6816, 768), (3, 50, 3840)])
@pytest.mark.parametrize("with_bias, with_residual", [(True, True), (False, False), (True, False)])
def test_linear_matches_float32_and_runs_the_gemv_where_it_applies(rows, n, k, dtype, with_bias, with_residual,
                                                                   monkeypatch):
    torch.manual_seed(rows * n + k)
    x = torch.randn(rows, 1, k, device="cuda", dtype=dtype)
    w = torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5
    b = torch.randn(n, device="cuda", dtype=dtype) if with_bias else None
    r = torch.randn(rows, 1, n, device="cuda", dtype=dtype) if with_residual else None
    ref = F.linear(x.float(), w.float(), None if b is None else b.float())
    ref = ref if r is None else ref + r.float()
    applies = rows == 1
    torch_linear, fallbacks = F.linear, []
    monkeypatch.setattr(F, "linear", lambda *a, **kw: fallbacks.append(1) or torch_linear(*a, **kw))
    original_empty = torch.empty

    def poisoned_empty(*args, **kwargs):  # float outputs start as NaN (integer buffers, e.g. the autotuner's, stay)
        t = original_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", poisoned_empty)
    out = linear(x, w, b, residual=r)
    assert out.shape == ref.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert ((out.float() - ref).norm() / ref.norm()).item() < 1e-2
    assert (fallbacks == []) == applies


@pytest.mark.cuda
@pytest.mark.parametrize("rows", [1, 3, 8])
def test_gemv_kernel_is_right_for_several_rows(rows):
    from litgpt.kernels.triton_linear import gemv

    torch.manual_seed(rows)
    x = torch.randn(rows, 1000, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(300, 1000, device="cuda", dtype=torch.bfloat16) / 1000**0.5
    b = torch.randn(300, device="cuda", dtype=torch.bfloat16)
    r = torch.randn(rows, 300, device="cuda", dtype=torch.bfloat16)
    ref = x.float() @ w.float().T + b.float() + r.float()
    assert ((gemv(x, w, b, r).float() - ref).norm() / ref.norm()).item() < 1e-2


def reference_input(x, tail, norm, activation):
    """The map's input in float32: [x | activation(tail)] (or activation(tail) alone), then normalised."""
    from litgpt.activations import ACTIVATIONS

    parts = ([] if x is None else [x.float()]) + ([] if tail is None else [ACTIVATIONS[activation](tail.float())])
    inputs = torch.cat(parts, dim=-1)
    if norm == "layer":
        return F.layer_norm(inputs, inputs.shape[-1:], eps=1e-5)
    if norm == "rms":
        return inputs * torch.rsqrt(inputs.pow(2).mean(-1, keepdim=True) + 1e-5)
    return inputs


PROLOGUES = [  # (norm, activation, with x)
    ("layer", None, True), ("rms", None, True),
    (None, "gelu", True), (None, "gelu_tanh", True), (None, "swiglu", True), (None, "gelu", False),
    (None, "swiglu", False), ("rms", "gelu", True),
]


@pytest.mark.parametrize("norm, activation, with_x", PROLOGUES)
def test_linear_prologues_on_the_torch_path(norm, activation, with_x):
    """CPU: the normalised or partly activated input, as the float32 reference builds it."""
    torch.manual_seed(0)
    k1, k2 = 20, 12
    x = torch.randn(2, 1, k1) * 3 + 1 if with_x else None
    tail = None if activation is None else torch.randn(2, 1, k2 * (2 if activation == "swiglu" else 1))
    width = (k1 if with_x else 0) + (0 if activation is None else k2)
    w, b, r = torch.randn(7, width), torch.randn(7), torch.randn(2, 1, 7)
    ref = reference_input(x, tail, norm, activation) @ w.T + b + r
    out = linear(x, w, b, residual=r, norm=norm, eps=1e-5, tail=tail, activation=activation)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_linear_rejects_a_tail_without_activation_and_unknown_norms():
    x, w = torch.randn(1, 4), torch.randn(3, 6)
    with pytest.raises(ValueError, match="tail and an activation together"):
        linear(x, w, tail=torch.randn(1, 2))
    with pytest.raises(ValueError, match="norm must be 'layer' or 'rms', got 'group'"):
        linear(x, torch.randn(3, 4), norm="group", eps=1e-5)


def gemv_cases():
    """(norm, activation, with x, N, K1 = x's width, K2 = the activated width) for each prologue of PROLOGUES."""
    for norm, activation, with_x in PROLOGUES:
        if activation is None:
            shapes = [(6816, 768, 0), (770, 1000, 0)]
        elif with_x:
            shapes = [(768, 3072, 3072), (770, 1000, 2000)]
        else:
            shapes = [(768, 0, 3072), (48, 0, 48)]
        yield from ((norm, activation, with_x, *shape) for shape in shapes)


@pytest.mark.cuda
@pytest.mark.parametrize("norm, activation, with_x, n, k1, k2", list(gemv_cases()))
def test_gemv_prologues_match_float32(norm, activation, with_x, n, k1, k2, monkeypatch):
    """GPU: the GEMV with its norm or activation prologue against the float32 reference, outputs poisoned."""
    torch.manual_seed(n + k1 + k2)
    dtype = torch.bfloat16
    x = torch.randn(1, 1, k1, device="cuda", dtype=dtype) * 2 + 0.5 if with_x else None
    tail = None if activation is None else torch.randn(1, 1, k2 * (2 if activation == "swiglu" else 1),
                                                       device="cuda", dtype=dtype)
    w = torch.randn(n, k1 + k2, device="cuda", dtype=dtype) / (k1 + k2) ** 0.5
    b, r = torch.randn(n, device="cuda", dtype=dtype), torch.randn(1, 1, n, device="cuda", dtype=dtype)
    ref = reference_input(x, tail, norm, activation) @ w.float().T + b.float() + r.float()
    original_empty = torch.empty

    def poisoned_empty(*args, **kwargs):
        t = original_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", poisoned_empty)
    fallbacks = []
    torch_linear = F.linear
    monkeypatch.setattr(F, "linear", lambda *a, **kw: fallbacks.append(1) or torch_linear(*a, **kw))
    out = linear(x, w, b, residual=r, norm=norm, eps=1e-5, tail=tail, activation=activation)
    assert fallbacks == [], "the GEMV did not run"
    assert torch.isfinite(out).all()
    assert ((out.float() - ref).norm() / ref.norm()).item() < 1e-2
