import pytest
import torch
import torch.nn.functional as F

import litgpt.kernels.cross_entropy
from litgpt import GPT, Config
from litgpt.loss import linear_cross_entropy


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(litgpt.kernels.cross_entropy, "CHUNK_BYTES", 7 * 50 * 8)  # 7 tokens of a 50-word vocab in float64 per chunk


@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_unfused_loss_and_gradients(small_chunks: None, with_bias: bool) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(30, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(50, dtype=torch.float64, requires_grad=True) if with_bias else None
    targets = torch.randint(0, 50, (30,))

    loss = linear_cross_entropy(hidden, weight, bias, targets)
    (2.5 * loss).backward()  # a non-unit upstream gradient must scale the stored gradients
    fused = [hidden.grad, weight.grad] + ([bias.grad] if with_bias else [])

    params = [hidden, weight] + ([bias] if with_bias else [])
    for p in params:
        p.grad = None
    expected = F.cross_entropy(F.linear(hidden, weight, bias), targets)
    (2.5 * expected).backward()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(fused, [p.grad for p in params]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


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
