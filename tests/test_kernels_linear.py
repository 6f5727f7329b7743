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
