"""Per-row cross-entropy and its in-place gradient (`litgpt.kernels.cross_entropy`): the chunked torch reference
against autograd on CPU, and the Triton kernels against float64 on CUDA."""

import pytest
import torch
import torch.nn.functional as F

import litgpt.kernels.cross_entropy
from litgpt.kernels.cross_entropy import row_losses, softmax_grad_
from litgpt.loss import linear_cross_entropy


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
