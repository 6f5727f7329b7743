"""The fused top-k Gumbel-max draw (`litgpt.kernels.sampling`): its Triton kernel under the Triton interpreter on
CPU against the torch reference, the Sampler's kernel path against its torch path (CUDA), and the CPU fallback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import litgpt.kernels.sampling as sampling
from litgpt.generate.base import Sampler, SamplingParams
from litgpt.kernels.sampling import (
    FUSED_MAX_K,
    fused_top_k_sample,
    gumbel_top_k_sample,
    gumbel_top_k_sample_reference,
    inverse_temperature,
    top_k_candidates,
)
from test_kernels import interpreted_copy, route_to_interpreted


@pytest.fixture(scope="module")
def interpreted_module():
    return interpreted_copy("triton_sampling")


@pytest.fixture
def interpreted(interpreted_module, monkeypatch):
    """Route `gumbel_top_k_sample`'s kernel path (`litgpt::gumbel_top_k_sample`) to the interpreted launcher on CPU
    tensors for this test; returns the list that records every launch."""
    return route_to_interpreted(monkeypatch, interpreted_module, "triton_sampling", sampling, "_gumbel_top_k_op",
                                lambda values, *_: values.stride(-1) == 1)


def candidates(B: int, V: int, k: int, dtype: torch.dtype, device: str = "cpu", scale: float = 3.0):
    """The top-k (values (B, k) in dtype, ids (B, k)) of random logits (B, V), as the Sampler's kernel path takes."""
    logits = (torch.randn(B, V, device=device) * scale).to(dtype)
    return torch.topk(logits, k, dim=-1)


def seeded_sampler(params: SamplingParams, V: int, B: int, device: str, use_kernel: bool, seed: int) -> Sampler:
    sampler = Sampler(params, V, B, torch.device(device), use_kernel=use_kernel)
    sampler.seed(seed)
    return sampler


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 7, 50, 1000])
@pytest.mark.parametrize("B", [1, 3, 8])
def test_kernel_matches_reference_interpreted(interpreted, B: int, k: int, dtype: torch.dtype) -> None:
    torch.manual_seed(B * 1000 + k)
    V = max(2 * k, 64)
    for temperature, seed, start in ((1.0, 0, 0), (0.7, 12345, 2**31 - 3), (1.9, 2**32 - 1, 77)):
        values, ids = candidates(B, V, k, dtype)
        sampler = seeded_sampler(SamplingParams(temperature, top_k=k), V, B, "cpu", False, seed)
        position = torch.arange(start, start + B).view(B, 1)  # (B, 1): a position per row, one past 2**31 too
        inv = inverse_temperature(temperature)
        want = gumbel_top_k_sample_reference(values, ids, sampler.row_seeds, position, inv)  # (B, 1)
        launches = len(interpreted)
        got = gumbel_top_k_sample(values, ids, sampler.row_seeds, position, inv)
        assert len(interpreted) == launches + 1, "the kernel path did not run"
        assert got.shape == (B, 1) and got.dtype == torch.int64
        assert torch.equal(got, want)
        if k > 1:  # zero logits: the choice is the argmax of the noise alone, the hash must agree bit for bit
            zeros = torch.zeros_like(values)
            assert torch.equal(gumbel_top_k_sample(zeros, ids, sampler.row_seeds, position, inv),
                               gumbel_top_k_sample_reference(zeros, ids, sampler.row_seeds, position, inv))


def test_kernel_masks_lanes_past_k_and_breaks_ties_left_interpreted(interpreted) -> None:
    """k = 5 in a block of 8: the padded lanes never win; equal scores (huge equal logits drown the noise) give the
    first candidate, as torch.argmax; one shared position (1, 1) broadcasts over the rows."""
    B, k = 4, 5
    ids = torch.tensor([[10, 11, 12, 13, 14]] * B)
    seeds = torch.tensor([[1], [2], [3], [4]])
    values = torch.full((B, k), -1e30)
    values[:, 3] = 0.0  # every row must take token 13: the other candidates are impossible
    assert torch.equal(gumbel_top_k_sample(values, ids, seeds, torch.tensor([[9]]), 1.0), torch.full((B, 1), 13))
    tied = torch.full((B, k), 1e30)
    assert torch.equal(gumbel_top_k_sample(tied, ids, seeds, torch.tensor([[9]]), 1.0),
                       gumbel_top_k_sample_reference(tied, ids, seeds, torch.tensor([[9]]), 1.0))
    assert torch.equal(gumbel_top_k_sample(tied, ids, seeds, torch.tensor([[9]]), 1.0), torch.full((B, 1), 10))


def test_reference_equals_the_sampler_torch_path() -> None:
    """The reference on top-k candidates of the raw logits draws what the Sampler's torch path draws (on CPU the
    path divides by the temperature, the reference multiplies by its fp32 inverse: equal but for near ties)."""
    torch.manual_seed(0)
    B, V, k = 64, 500, 40
    for temperature in (1.0, 0.8):
        sampler = seeded_sampler(SamplingParams(temperature, top_k=k), V, B, "cpu", False, 3)
        logits = torch.randn(B, V) * 2
        position = torch.randint(0, 10_000, (B, 1))
        values, ids = torch.topk(logits, k, dim=-1)
        want = sampler(logits, position)
        got = gumbel_top_k_sample(values, ids, sampler.row_seeds, position, inverse_temperature(temperature))
        assert torch.equal(got, want)


def test_sampler_with_kernel_on_cpu_is_the_torch_path() -> None:
    """use_kernel=True on CPU logits runs the unchanged torch path: the same tokens exactly, for every setting."""
    torch.manual_seed(1)
    B, V = 6, 300
    for params in (SamplingParams(0.9, top_k=20), SamplingParams(1.3, top_k=1), SamplingParams(0.7, top_k=20, top_p=0.5),
                   SamplingParams(1.0), SamplingParams(0.0, top_k=5)):
        for dtype in (torch.float32, torch.bfloat16):
            logits = (torch.randn(B, V + 4) * 3).to(dtype)  # padded vocabulary
            position = torch.randint(0, 1000, (B, 1))
            want = seeded_sampler(params, V, B, "cpu", False, 5)(logits, position)
            assert torch.equal(seeded_sampler(params, V, B, "cpu", True, 5)(logits, position), want)


def distinct_bf16_logits(B: int, device: str) -> torch.Tensor:
    """(B, 2560) bf16 logits, each row a permutation of 2560 distinct values (|x| in [2**-8, 4)): no ties, so the
    top-k of the raw bf16 logits and of the scaled fp32 ones are the same candidates whatever topk does on ties."""
    magnitudes = torch.arange(0x3B80, 0x4080, dtype=torch.int16).view(torch.bfloat16)  # bit patterns 2**-8 .. < 4
    values = torch.cat([magnitudes, -magnitudes]).to(device)  # (2560,)
    return values[torch.argsort(torch.rand(B, values.numel(), device=device), dim=1)]  # (B, 2560)


# ---------------------------------------------------------------------------------------------- the fused top-k
def tied_logits(B: int, V: int, pad: int, dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    """(B, V + pad) logits on a grid of halves (many equal values, at the k-th place too); the padded columns, above
    every real logit, must never be drawn."""
    logits = (torch.randn(B, V + pad, device=device) * 6).round() / 2
    logits[:, V:] = 100.0
    return logits.to(dtype)


def fused_reference(logits, V, k, seeds, position, inv) -> torch.Tensor:
    values, ids = top_k_candidates(logits, V, k)
    return gumbel_top_k_sample_reference(values, ids, seeds, position, inv)


def test_top_k_candidates_rank_equal_logits_by_smaller_token_id() -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, 9.0]])  # the last column: padding, beyond vocab_size 5
    values, ids = top_k_candidates(logits, 5, 2)
    assert values.tolist() == [[3.0, 3.0]] and ids.tolist() == [[1, 2]]


FUSED_CASES = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from litgpt.kernels import triton_sampling
from test_kernels_sampling import fused_reference, tied_logits
from litgpt.kernels.sampling import FUSED_MAX_K, inverse_temperature
cases = [
    (1, 100, 1, torch.float32, 64),
    (3, 1000, 50, torch.bfloat16, 256),  # 4 chunks a row, the last one partial
    (2, 700, FUSED_MAX_K, torch.float32, 256),
    (2, 900, 7, torch.float16, 128),
    (1, 2100, 50, torch.bfloat16, triton_sampling.CHUNK),  # the launch's own chunk (2048): two chunks
]
for B, V, k, dtype, chunk in cases:
    torch.manual_seed(B * 100 + k)
    logits = tied_logits(B, V, 13, dtype)
    seeds = torch.randint(0, 2**32, (B, 1))
    inv = inverse_temperature(0.8)
    for position in (torch.arange(5, 5 + B).view(B, 1), torch.tensor([[2**31 + 1]])):
        want = fused_reference(logits, V, k, seeds, position, inv)
        got = triton_sampling.fused_top_k_sample(logits, V, k, seeds.view(B), position.view(-1).expand(B), inv,
                                                 chunk=chunk)
        assert got.shape == (B, 1) and torch.equal(got, want) and got.max() < V, (B, V, k, dtype, got, want)
    flat = torch.zeros_like(logits)  # every logit equal: the tie rule alone picks the candidates, ids 0..k-1
    flat[:, 1::2] = -0.0  # equal to +0.0 as well
    flat[:, V:] = 100.0
    position = torch.arange(B).view(B, 1)
    got = triton_sampling.fused_top_k_sample(flat, V, k, seeds.view(B), position.view(B), inv, chunk=chunk)
    assert torch.equal(got, fused_reference(flat, V, k, seeds, position, inv)) and got.max() < k, (got, k)
    print("ok", B, V, k, dtype)
"""


def test_fused_top_k_matches_reference_interpreted() -> None:
    """The two kernels (top-k per chunk, then merge and draw) under the Triton interpreter against a stable sort's
    top-k and the reference draw: equal ids on tied logits, the padded columns never drawn, per-row and shared
    positions. In a fresh interpreter with TRITON_INTERPRET=1 from the start: `tl.topk` is jitted when triton is
    imported, so only then does the interpreter run it (an interpreted copy of our module alone cannot call it)."""
    if not sampling.TRITON_AVAILABLE:
        pytest.skip("needs triton (pip install triton) for its interpreter")
    tests = Path(__file__).resolve().parent
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(
        [str(tests.parent), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    result = subprocess.run([sys.executable, "-c", FUSED_CASES, str(tests)], capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("ok ") == 5, result.stdout


def test_fused_top_k_sample_off_cuda_is_the_reference() -> None:
    torch.manual_seed(3)
    logits = tied_logits(4, 300, 4, torch.bfloat16)
    seeds, position = torch.randint(0, 2**32, (4, 1)), torch.randint(0, 1000, (4, 1))
    inv = inverse_temperature(1.3)
    assert torch.equal(fused_top_k_sample(logits, 300, 20, seeds, position, inv),
                       fused_reference(logits, 300, 20, seeds, position, inv))


@pytest.mark.cuda
@pytest.mark.parametrize("k", [1, 50, FUSED_MAX_K])
def test_fused_top_k_matches_reference_on_cuda(k: int) -> None:
    """pythia's vocabulary (50,254 of 50,304 padded columns), bf16 logits with many ties, batch 64."""
    torch.manual_seed(k)
    B, V = 64, 50254
    logits = tied_logits(B, V, 50, torch.bfloat16, "cuda")
    seeds = torch.randint(0, 2**32, (B, 1), device="cuda")
    position = torch.randint(0, 2**20, (B, 1), device="cuda")
    inv = inverse_temperature(0.8)
    got = fused_top_k_sample(logits, V, k, seeds, position, inv)
    assert torch.equal(got, fused_reference(logits, V, k, seeds, position, inv))


@pytest.mark.cuda
@pytest.mark.parametrize("k", [1, 7, 50, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_sampler_kernel_path_matches_torch_path_on_cuda(k: int, temperature: float) -> None:
    """bf16 logits on CUDA: the kernel path (top-k of the raw logits + one launch) and the torch path draw the same
    tokens over many rows and positions (same fp32 scaling as CUDA's division by a scalar, the noise's log from
    libdevice as torch's logf: equal but for ulp-level near ties, which tie-free inputs make vanishingly rare)."""
    torch.manual_seed(k)
    B, V = 512, 2560
    params = SamplingParams(temperature, top_k=k)
    fused = seeded_sampler(params, V, B, "cuda", True, 42)
    torch_path = seeded_sampler(params, V, B, "cuda", False, 42)
    launches = []
    with pytest.MonkeyPatch.context() as patch:
        for name in ("_gumbel_top_k_op", "_fused_top_k_op"):  # k <= FUSED_MAX_K: the fused top-k, else the draw
            op = getattr(sampling, name)
            patch.setattr(sampling, name, lambda *args, name=name, op=op: launches.append(name) or op(*args))
        for step in range(4):
            padding = torch.randn(B, 64, device="cuda").to(torch.bfloat16) + 10  # padded ids: never sampled
            logits = torch.cat([distinct_bf16_logits(B, "cuda"), padding], dim=1)  # (B, V + 64)
            position = torch.randint(0, 2**20, (B, 1), device="cuda")
            got, want = fused(logits, position), torch_path(logits, position)
            assert got.max() < V and torch.equal(got, want)
    assert launches == ["_fused_top_k_op" if k <= FUSED_MAX_K else "_gumbel_top_k_op"] * 4, launches


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_kernel_matches_reference_on_cuda(dtype: torch.dtype) -> None:
    """The kernel against the reference on CUDA for each value dtype, zero logits included (the noise alone)."""
    torch.manual_seed(7)
    B, V, k = 256, 8000, 64
    values, ids = candidates(B, V, k, dtype, "cuda")
    seeds = torch.randint(0, 2**32, (B, 1), device="cuda")
    position = torch.randint(0, 2**32, (B, 1), device="cuda")
    for v in (values, torch.zeros_like(values)):
        want = gumbel_top_k_sample_reference(v, ids, seeds, position, inverse_temperature(0.8))
        assert torch.equal(gumbel_top_k_sample(v, ids, seeds, position, inverse_temperature(0.8)), want)


# ---------------------------------------------------------------------------------------------- top-p
# probabilities that are powers of two (softmax of their logs is exact in fp32), over shuffled token ids: the sums of
# the likeliest ones, 0.5, 0.75, 0.875, 0.9375, are exact too, so top_p can sit exactly on a boundary
TOP_P_PROBS = torch.tensor([0.125, 0.5, 0.0625, 0.25, 0.0625])


@pytest.mark.parametrize("top_p, kept", [
    (0.5, [1]),  # the likeliest token alone reaches 0.5: the next one (0.25) is not needed
    (0.75, [1, 3]),  # 0.5 + 0.25 reaches 0.75 exactly: the 0.125 token is left out
    (0.875, [0, 1, 3]),
    (0.6, [1, 3]),  # between boundaries: the token that crosses 0.6 is kept
    (0.3, [1]),
    (1.0, [0, 1, 2, 3, 4]),
])
def test_top_p_keeps_the_smallest_set_of_likeliest_tokens_that_reaches_top_p(top_p: float, kept: list[int]) -> None:
    """Top-p (nucleus) as transformers' TopPLogitsWarper and vLLM take it: the smallest set of likeliest tokens whose
    probability adds up to top_p or more; the token whose probability crosses top_p is kept, and one after a set
    that already reaches top_p is not. On the exact boundaries the draws come only from that set, in proportion to
    the probabilities (the torch path: no Triton kernel takes top_p < 1, see `Sampler._fused`)."""
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = TOP_P_PROBS.log().view(1, -1)
    assert torch.equal(torch.softmax(logits, dim=-1), TOP_P_PROBS.view(1, -1))  # exact: the boundary is exact
    hf = TopPLogitsWarper(top_p)(None, logits.clone())  # the oracle: -inf outside its kept set
    assert torch.isfinite(hf[0]).nonzero().view(-1).tolist() == kept
    n = 8000
    sampler = Sampler(SamplingParams(1.0, top_p=top_p), 5, n, torch.device("cpu"))
    sampler.seed(3)
    tokens = sampler(logits.expand(n, -1), torch.arange(n).view(n, 1)).view(-1)  # every row its own draw
    assert sorted(set(tokens.tolist())) == kept
    frequencies = torch.bincount(tokens, minlength=5).float() / n
    expected = torch.zeros(5)
    expected[kept] = TOP_P_PROBS[kept] / TOP_P_PROBS[kept].sum()
    torch.testing.assert_close(frequencies, expected, atol=0.02, rtol=0)
