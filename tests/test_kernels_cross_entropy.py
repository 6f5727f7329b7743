"""Per-row cross-entropy and its in-place gradient (`litgpt.kernels.cross_entropy`): the chunked torch reference
against autograd on CPU, and the Triton kernels against float64 on CUDA and, without a GPU, under the Triton
interpreter on CPU tensors (skipped only when triton is not installed)."""

import pytest
import torch
import torch.nn.functional as F

import litgpt.kernels.cross_entropy
from litgpt.kernels.cross_entropy import row_losses, softmax_grad_
from litgpt.loss import linear_cross_entropy
from test_kernels import interpreted_copy, route_to_interpreted


def expected(logits: torch.Tensor, targets: torch.Tensor, factor: float) -> tuple[torch.Tensor, ...]:
    """lse, losses and factor * d(sum of losses)/d(logits), in float64 through autograd."""
    x = logits.double().requires_grad_(True)
    losses = F.cross_entropy(x, targets, reduction="none")
    (factor * losses.sum()).backward()
    return torch.logsumexp(x.detach(), dim=-1), losses.detach(), x.grad


@pytest.mark.parametrize("chunk_rows", [1, 3, 100])
def test_reference_rows_and_gradient_match_autograd(chunk_rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(litgpt.kernels.cross_entropy, "CHUNK_BYTES", chunk_rows * 37 * 4)  # rows of fp32 logits
    logits = torch.randn(10, 37) * 4
    targets = torch.tensor([0, 36, 5, 5, 17, 1, 35, 0, 2, 30])
    lse, losses = row_losses(logits, targets)
    want_lse, want_losses, want_grad = expected(logits, targets, 0.3)
    assert lse.dtype == losses.dtype == torch.float32
    torch.testing.assert_close(lse.double(), want_lse, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(losses.double(), want_losses, rtol=1e-6, atol=1e-6)
    grad = softmax_grad_(logits, targets, lse, torch.tensor([0.3]))
    assert grad.data_ptr() == logits.data_ptr()  # in place
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-5, atol=1e-7)


def test_backward_twice_is_a_clear_error() -> None:
    hidden = torch.randn(6, 8, requires_grad=True)
    weight = torch.randn(20, 8, requires_grad=True)
    loss = linear_cross_entropy(hidden, weight, None, torch.randint(0, 20, (6,)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice.*compute the loss again"):
        loss.backward()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("n, vocab", [(7, 50304), (33, 1000), (4, 4096), (3, 9000)])
def test_kernels_match_float64(n: int, vocab: int, dtype: torch.dtype) -> None:
    torch.manual_seed(n + vocab)
    logits = (torch.randn(n, vocab, device="cuda") * 3).to(dtype)
    logits[0, 5] = 60.0  # one dominant logit: the running maximum must rescale the sum
    targets = torch.randint(0, vocab, (n,), device="cuda")
    targets[0], targets[-1] = 0, vocab - 1
    want_lse, want_losses, want_grad = expected(logits, targets, 2.5 / n)
    lse, losses = row_losses(logits, targets)
    torch.testing.assert_close(lse.double(), want_lse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses.double(), want_losses, rtol=1e-5, atol=1e-5)
    grad = softmax_grad_(logits, targets, lse, torch.tensor([2.5 / n], device="cuda"))
    tol = dict(rtol=1e-5, atol=1e-8) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-5)
    torch.testing.assert_close(grad.double(), want_grad, **tol)


@pytest.mark.cuda
def test_linear_cross_entropy_on_cuda_matches_unfused_loss_under_autocast() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(2048, 64, device="cuda", requires_grad=True)
    weight = (torch.randn(5000, 64, device="cuda") / 8).requires_grad_(True)
    targets = torch.randint(0, 5000, (2048,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, None, targets)
    (3.0 * loss).backward()
    grads = hidden.grad, weight.grad
    hidden.grad = weight.grad = None
    logits = (hidden.bfloat16() @ weight.bfloat16().t()).float()  # the same bf16 matmul, then an fp32 loss
    want = F.cross_entropy(logits, targets)
    (3.0 * want).backward()
    torch.testing.assert_close(loss, want, rtol=1e-4, atol=1e-4)
    for got, ref in zip(grads, (hidden.grad, weight.grad)):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, ref, rtol=3e-2, atol=3e-2 * ref.abs().max().item())


# ---------------------------------------------------------------- the kernels under the Triton interpreter (CPU)

@pytest.fixture(scope="module")
def interpreted_module():
    return interpreted_copy("triton_cross_entropy")


def route_cross_entropy(monkeypatch: pytest.MonkeyPatch, copy) -> list:
    """Route `row_losses`' and `softmax_grad_`'s kernel path to the interpreted launchers of `copy` on CPU tensors
    for this test (the check `_kernel_applies` accepts the kernels' dtypes with unit last stride on any device);
    returns the names of the launchers called, in order."""
    return route_to_interpreted(
        monkeypatch, copy, "triton_cross_entropy", litgpt.kernels.cross_entropy, ("row_losses", "softmax_grad_"),
        lambda logits: logits.dtype in (torch.bfloat16, torch.float16, torch.float32) and logits.stride(-1) == 1,
        gate_name="_kernel_applies", launcher=copy)


@pytest.fixture
def interpreted(interpreted_module, monkeypatch) -> list:
    return route_cross_entropy(monkeypatch, interpreted_module)


@pytest.mark.parametrize("n, vocab, dtype", [
    (5, 37, torch.float32),  # one block of 4,096 logits, mostly masked
    (3, 5000, torch.bfloat16),  # two blocks: the dominant logit in the second rescales the first block's sum
    (4, 4096, torch.float16),  # exactly one full block
    (3, 9000, torch.float32),  # three blocks
])
def test_kernels_match_float64_interpreted(interpreted, n: int, vocab: int, dtype: torch.dtype) -> None:
    """Both kernels (Triton interpreter, CPU) against float64 autograd: each row's lse and loss (fp32, written for
    every row: their buffers start as NaN), then the gradient written over the logits in place; rows whose target is
    ignore_index get loss 0 and gradient 0; the logits are a view into wider rows whose other columns stay as they
    are."""
    torch.manual_seed(n + vocab)
    buffer = (torch.randn(n, vocab + 5) * 3).to(dtype)
    logits = buffer[:, :vocab]  # (n, vocab), row stride vocab + 5
    logits[0, vocab - 3] = 60.0  # one dominant logit, in the last block
    targets = torch.randint(0, vocab, (n,))
    targets[0], targets[1], targets[-1] = vocab - 3, -100, vocab - 1
    padding = buffer[:, vocab:].clone()
    want_lse, want_losses, want_grad = expected(logits, targets, 2.5 / n)
    original_empty = torch.empty
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "empty", lambda *a, **kw: original_empty(*a, **kw).fill_(float("nan")))
        lse, losses = row_losses(logits, targets)
    assert interpreted == ["row_losses"], "the kernel path did not run"
    assert lse.dtype == losses.dtype == torch.float32 and losses[1] == 0
    torch.testing.assert_close(lse.double(), want_lse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses.double(), want_losses, rtol=1e-5, atol=1e-5)
    grad = softmax_grad_(logits, targets, lse, torch.tensor([2.5 / n]))
    assert interpreted == ["row_losses", "softmax_grad_"]
    assert grad.data_ptr() == logits.data_ptr() and torch.equal(buffer[:, vocab:], padding)  # in place, in its rows
    assert not grad[1].any()
    tol = dict(rtol=1e-5, atol=1e-8) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-5)
    torch.testing.assert_close(grad.double(), want_grad, **tol)
