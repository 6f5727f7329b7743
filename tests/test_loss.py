from typing import Optional

import pytest
import torch
import torch.nn.functional as F

import litgpt.kernels.cross_entropy
from litgpt import GPT, Config
from litgpt.loss import linear_cross_entropy
from test_kernels import interpreted_copy
from test_kernels_cross_entropy import route_cross_entropy


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(litgpt.kernels.cross_entropy, "CHUNK_BYTES", 7 * 50 * 8)  # 7 tokens of a 50-word vocab in float64 per chunk


def float64_problem(with_bias: bool) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """hidden (30, 16), weight (50, 16), bias (50,) or None, all float64 leaves, and targets (30,) of a 50-word vocab."""
    torch.manual_seed(0)
    hidden = torch.randn(30, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(50, dtype=torch.float64, requires_grad=True) if with_bias else None
    return hidden, weight, bias, torch.randint(0, 50, (30,))


def assert_matches_unfused(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                           targets: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The fused loss and its gradients (upstream gradient 2.5, which must scale the stored gradients) equal
    F.cross_entropy's over the unfused logits (ignore_index -100); returns the fused gradients and that loss."""
    params = [p for p in (hidden, weight, bias) if p is not None]
    loss = linear_cross_entropy(hidden, weight, bias, targets)
    (2.5 * loss).backward()
    fused = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    expected = F.cross_entropy(F.linear(hidden, weight, bias), targets, ignore_index=-100)
    (2.5 * expected).backward()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(fused, [p.grad for p in params]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    return fused, expected


@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_unfused_loss_and_gradients(small_chunks: None, with_bias: bool) -> None:
    assert_matches_unfused(*float64_problem(with_bias))


def test_no_grad_path_gives_same_loss(small_chunks: None) -> None:
    torch.manual_seed(0)
    hidden, weight = torch.randn(30, 16, dtype=torch.float64), torch.randn(50, 16, dtype=torch.float64)
    targets = torch.randint(0, 50, (30,))
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, None, targets)
    torch.testing.assert_close(loss, F.cross_entropy(hidden @ weight.t(), targets), rtol=1e-12, atol=1e-12)


def test_autocast_bf16_computes_in_bf16_and_accumulates_in_fp32() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(64, 32, requires_grad=True)
    weight = torch.randn(100, 32, requires_grad=True)
    targets = torch.randint(0, 100, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, None, targets)
    loss.backward()
    assert loss.dtype == torch.float32 and hidden.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32
    logits = hidden.detach().bfloat16().float() @ weight.detach().bfloat16().float().t()
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets), rtol=2e-2, atol=2e-2)


def test_gpt_forward_with_targets_equals_cross_entropy_of_logits() -> None:
    torch.manual_seed(0)
    for name in ("pythia-14m", "pythia-14m-mla"):
        model = GPT(Config.from_name(name, n_layer=2)).double()
        idx = torch.randint(0, 1000, (2, 12))
        targets = torch.randint(0, 1000, (2, 12))
        expected = F.cross_entropy(model(idx).flatten(0, 1), targets.flatten())
        torch.testing.assert_close(model(idx, targets=targets), expected, rtol=1e-12, atol=1e-12)


def test_the_loss_stays_outside_compiled_graphs():
    """`linear_cross_entropy` is disabled for dynamo (applied at its first call, so importing litgpt does not import
    torch._dynamo): a compiled training forward is one graph that ends where the loss is called."""
    import torch._dynamo

    from litgpt import GPT, Config

    model = GPT(Config.from_name("pythia-14m-mla", n_layer=2))
    idx = torch.randint(0, 1000, (2, 16))
    explanation = torch._dynamo.explain(model)(idx, targets=idx)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0)
    assert any("skip" in str(reason.reason).lower() for reason in explanation.break_reasons)


# ---------------------------------------------------------------------------------------------- ignore_index
@pytest.mark.parametrize("with_bias", [False, True])
def test_ignored_targets_carry_no_weight(small_chunks: None, with_bias: bool) -> None:
    hidden, weight, bias, targets = float64_problem(with_bias)
    targets[::3] = -100  # a third ignored, spread over the chunks
    fused, expected = assert_matches_unfused(hidden, weight, bias, targets)
    assert torch.all(fused[0][::3] == 0)  # an ignored row's hidden state gets no gradient
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, bias, targets), expected, rtol=1e-12,
                                   atol=1e-12)
    other = targets.where(targets != -100, torch.tensor(-1))  # another ignore_index
    torch.testing.assert_close(linear_cross_entropy(hidden, weight, bias, other, ignore_index=-1), expected,
                               rtol=1e-12, atol=1e-12)


def test_all_targets_ignored_gives_zero_with_a_gradient_path() -> None:
    hidden = torch.randn(6, 8, requires_grad=True)
    weight = torch.randn(20, 8, requires_grad=True)
    targets = torch.full((6,), -100)
    loss = linear_cross_entropy(hidden, weight, None, targets)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(hidden.grad == 0) and torch.all(weight.grad == 0)
    with torch.no_grad():
        assert linear_cross_entropy(hidden, weight, None, targets).item() == 0.0


def test_a_frozen_weight_gets_no_gradient() -> None:
    """A LoRA fine-tune's frozen LM head: the (V, d) weight gradient is not computed at all."""
    hidden = torch.randn(12, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(20, 8, dtype=torch.float64)
    targets = torch.randint(0, 20, (12,))
    linear_cross_entropy(hidden, weight, None, targets).backward()
    want = hidden.grad.clone()
    hidden.grad = None
    F.cross_entropy(hidden @ weight.t(), targets).backward()
    torch.testing.assert_close(want, hidden.grad, rtol=1e-12, atol=1e-12)
    assert weight.grad is None


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_ignored_targets_on_the_cuda_kernels(dtype: torch.dtype) -> None:
    """The Triton row-loss and gradient kernels: ignored rows give loss 0 and gradient 0, the rest as before."""
    from litgpt.kernels.cross_entropy import row_losses, softmax_grad_

    torch.manual_seed(0)
    n, vocab = 37, 50304
    logits = (torch.randn(n, vocab, device="cuda") * 3).to(dtype)
    targets = torch.randint(0, vocab, (n,), device="cuda")
    targets[::4] = -100
    valid = targets != -100
    x = logits.double().requires_grad_(True)
    want = F.cross_entropy(x, targets, ignore_index=-100, reduction="sum")
    want.backward()
    lse, losses = row_losses(logits, targets, -100)
    assert torch.all(losses[~valid] == 0)
    torch.testing.assert_close(losses.double().sum(), want.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(lse.double(), torch.logsumexp(x.detach(), dim=-1), rtol=1e-5, atol=1e-5)
    grad = softmax_grad_(logits, targets, lse, torch.ones(1, device="cuda"), -100)
    assert torch.all(grad[~valid] == 0)
    tol = dict(rtol=1e-5, atol=1e-8) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-5)
    torch.testing.assert_close(grad.double(), x.grad, **tol)

    hidden = torch.randn(512, 64, device="cuda", requires_grad=True)
    weight = (torch.randn(5000, 64, device="cuda") / 8).requires_grad_(True)
    targets = torch.randint(0, 5000, (512,), device="cuda")
    targets[:200] = -100
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, None, targets)
    loss.backward()
    ref = F.cross_entropy((hidden.detach().bfloat16() @ weight.detach().bfloat16().t()).float(), targets)
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-4)
    assert torch.all(hidden.grad[:200] == 0)
    every = torch.full((512,), -100, device="cuda")
    zero = linear_cross_entropy(hidden, weight, None, every)
    zero.backward()
    assert zero.item() == 0.0


# ---------------------------------------------------------------------------------------------- Triton interpreter
@pytest.fixture(scope="module")
def interpreted_cross_entropy():
    return interpreted_copy("triton_cross_entropy")


def test_fused_loss_on_the_interpreted_kernels(interpreted_cross_entropy, monkeypatch: pytest.MonkeyPatch) -> None:
    """`linear_cross_entropy` on the Triton kernels (interpreter, CPU, float32 logits) against F.cross_entropy in
    float64, a third of the targets ignored: the training forward and backward (the row losses, then the gradient
    written over the saved logits, scaled by the upstream gradient / counted tokens) and the no-grad forward."""
    launches = route_cross_entropy(monkeypatch, interpreted_cross_entropy)
    torch.manual_seed(0)
    params = [torch.randn(30, 16), torch.randn(50, 16), torch.randn(50)]  # hidden, weight, bias
    params = [p.requires_grad_(True) for p in params]
    targets = torch.randint(0, 50, (30,))
    targets[::3] = -100
    loss = linear_cross_entropy(*params, targets)
    (2.5 * loss).backward()
    assert launches == ["row_losses", "softmax_grad_"], "the kernel path did not run"
    exact = [p.detach().double().requires_grad_(True) for p in params]
    want = F.cross_entropy(F.linear(*exact), targets, ignore_index=-100)
    (2.5 * want).backward()
    torch.testing.assert_close(loss.double(), want.detach(), rtol=1e-6, atol=1e-6)
    for got, ref in zip(params, exact):
        torch.testing.assert_close(got.grad.double(), ref.grad, rtol=1e-5, atol=1e-6)
    assert torch.all(params[0].grad[::3] == 0)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(*params, targets).double(), want.detach(), rtol=1e-6,
                                   atol=1e-6)
    assert launches == ["row_losses", "softmax_grad_", "row_losses"]
