"""The small-batch GEMV of folded decode steps against F.linear: the torch path on CPU, the Triton kernel on CUDA and,
without a GPU, under the Triton interpreter on CPU tensors (skipped only when triton is not installed)."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from litgpt.kernels import linear
from test_kernels import interpreted_copy, interpreter_gate, route_to_interpreted


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


# ---------------------------------------------------------------- the GEMV under the Triton interpreter (CPU)

@pytest.fixture(scope="module")
def interpreted_linear():
    return interpreted_copy("triton_linear")


@pytest.fixture
def interpreted(interpreted_linear, monkeypatch):
    """Route `linear`'s kernel path (`litgpt::gemv`) to the interpreted launcher on CPU tensors for this test (its
    check `triton_can_run` becomes `interpreter_gate`: any one float dtype, no autograd); returns the list that records
    every launch."""
    return route_to_interpreted(monkeypatch, interpreted_linear, "triton_linear",
                                importlib.import_module("litgpt.kernels.linear"), "_gemv_op", interpreter_gate,
                                gate_name="triton_can_run")


def one_tile_config(interpreted_linear, monkeypatch, block_n: int, block_k: int) -> None:
    """The autotuner's configs cut to its (block_n, block_k) one: without a GPU it cannot time the others."""
    config = next(c for c in interpreted_linear._CONFIGS if c.kwargs == {"BLOCK_N": block_n, "BLOCK_K": block_k})
    monkeypatch.setattr(interpreted_linear._gemv_kernel, "configs", [config])


GEMV_CASES = [  # (norm, activation, with x, N, K1 = x's width, K2 = the activated width, (BLOCK_N, BLOCK_K), dtype,
    # with bias, with residual)
    (None, None, True, 50, 300, 0, (32, 256), torch.float32, True, True),  # K over two tiles, N over two blocks
    (None, None, True, 40, 200, 0, (16, 512), torch.bfloat16, False, False),
    ("layer", None, True, 40, 200, 0, (32, 256), torch.float32, True, True),  # one tile holds the row: statistics
    # from registers
    ("layer", None, True, 40, 600, 0, (32, 256), torch.bfloat16, True, False),  # three tiles: statistics in passes
    ("rms", None, True, 40, 200, 0, (32, 256), torch.bfloat16, False, True),
    ("rms", None, True, 40, 600, 0, (32, 256), torch.float32, True, True),
    (None, "gelu", True, 30, 100, 60, (32, 256), torch.bfloat16, True, True),  # [x | gelu(tail)] in one tile
    (None, "gelu_tanh", True, 30, 200, 150, (32, 256), torch.float32, True, True),  # x ends inside the second tile
    (None, "swiglu", True, 30, 96, 64, (16, 512), torch.float32, True, True),
    (None, "swiglu", False, 30, 0, 300, (32, 256), torch.bfloat16, True, True),  # swiglu(tail) alone, two tiles
    (None, "gelu", False, 30, 0, 48, (32, 256), torch.float32, False, False),
    ("rms", "gelu", True, 30, 200, 100, (32, 256), torch.bfloat16, True, True),  # normalised after the activation
    ("layer", "swiglu", True, 30, 64, 64, (32, 256), torch.float32, True, True),
]


@pytest.mark.parametrize("norm, activation, with_x, n, k1, k2, tile, dtype, with_bias, with_residual", GEMV_CASES)
def test_gemv_kernel_matches_float64_reference_interpreted(interpreted, interpreted_linear, monkeypatch, norm,
                                                           activation, with_x, n, k1, k2, tile, dtype, with_bias,
                                                           with_residual):
    """`linear` at one row through the GEMV (Triton interpreter, CPU; one tile config each, chosen for the branch)
    against float64 on the same inputs: float32 to 1e-5, bfloat16 within one rounding of the output (the kernel
    computes in fp32 and rounds once); its output starts as NaN, and F.linear (the torch path) never runs."""
    one_tile_config(interpreted_linear, monkeypatch, *tile)
    torch.manual_seed(n + k1 + k2)
    x = (torch.randn(1, 1, k1) * 2 + 0.5).to(dtype) if with_x else None
    tail = None if activation is None else torch.randn(1, 1, k2 * (2 if activation == "swiglu" else 1)).to(dtype)
    w = (torch.randn(n, k1 + k2) / (k1 + k2) ** 0.5).to(dtype)
    b = torch.randn(n).to(dtype) if with_bias else None
    r = torch.randn(1, 1, n).to(dtype) if with_residual else None
    ref = reference_input(None if x is None else x.double(), None if tail is None else tail.double(), norm,
                          activation).double() @ w.double().T
    ref = ref + (0 if b is None else b.double()) + (0 if r is None else r.double())  # (1, 1, n)
    torch_linear, fallbacks = F.linear, []
    monkeypatch.setattr(F, "linear", lambda *a, **kw: fallbacks.append(1) or torch_linear(*a, **kw))
    original_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: original_empty(*a, **kw).fill_(float("nan")))
    out = linear(x, w, b, residual=r, norm=norm, eps=1e-5, tail=tail, activation=activation)
    monkeypatch.setattr(torch, "empty", original_empty)
    assert interpreted == ["_gemv_op"] and fallbacks == [], "the GEMV did not run"
    assert out.shape == (1, 1, n) and out.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(out, ref.to(dtype))  # bfloat16 tolerance: one rounding


def test_gemv_kernel_is_right_for_several_rows_interpreted(interpreted, interpreted_linear, monkeypatch):
    """The launcher itself (which `linear` sends one row only) for 3 rows in a block of 4, LayerNorm over three
    tiles, bias and residual, in float32 against float64."""
    one_tile_config(interpreted_linear, monkeypatch, 32, 256)
    torch.manual_seed(3)
    x, w = torch.randn(3, 600) * 2 + 0.5, torch.randn(50, 600) / 600**0.5
    b, r = torch.randn(50), torch.randn(3, 50)
    ref = F.layer_norm(x.double(), (600,), eps=1e-5) @ w.double().T + b.double() + r.double()
    out = interpreted_linear.gemv(x, w, b, r, None, "layer", 1e-5, None)
    assert out.shape == (3, 50)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
