"""litgpt/rope.py: the cos/sin cache at known positions, both layouts against a float64 complex-number rotation,
partial rope, per-row positions, YaRN (its ramp, its attention factor, and transformers' as the oracle) and Llama 3
scaling (its three bands, and transformers' as the oracle)."""

import math

import pytest
import torch

from litgpt.rope import apply_partial_rope, apply_rope, build_rope_cache

N, T, BASE = 8, 6, 10000


def complex_rotation(x: torch.Tensor, positions: torch.Tensor, interleave: bool, base: float = BASE) -> torch.Tensor:
    """x (..., T, n) rotated in float64: pair k (dims (k, k + n/2) in rotate-half order, (2k, 2k + 1) interleaved)
    as a complex number times exp(i * position * base^(-2k/n))."""
    n = x.size(-1)
    x = x.double()
    real, imag = (x[..., 0::2], x[..., 1::2]) if interleave else (x[..., : n // 2], x[..., n // 2 :])
    theta = base ** (-torch.arange(0, n, 2, dtype=torch.float64) / n)  # (n/2,)
    angle = positions.double().unsqueeze(-1) * theta  # (T, n/2) or (B, T, n/2)
    if angle.dim() == 3 and x.dim() == 4:
        angle = angle.unsqueeze(1)  # (B, 1, T, n/2): the same positions for every head
    rotated = torch.complex(real, imag) * torch.polar(torch.ones_like(angle), angle)
    if interleave:
        return torch.stack((rotated.real, rotated.imag), dim=-1).flatten(-2)
    return torch.cat((rotated.real, rotated.imag), dim=-1)


def test_cache_values_at_known_positions():
    cos, sin = build_rope_cache(T, N, base=BASE)
    assert cos.shape == sin.shape == (T, N) and cos.dtype == sin.dtype == torch.float32
    assert torch.equal(cos[0], torch.ones(N)) and torch.equal(sin[0], torch.zeros(N))  # position 0: no rotation
    # frequency k of n = 8 is 10000^(-2k/8): 1, 0.1, 0.01, 0.001; rotate-half order repeats them
    theta = [1.0, 0.1, 0.01, 0.001]
    for position in (1, 5):
        expected_cos = [math.cos(position * t) for t in theta] * 2
        expected_sin = [math.sin(position * t) for t in theta] * 2
        assert cos[position].tolist() == pytest.approx(expected_cos, abs=1e-6)
        assert sin[position].tolist() == pytest.approx(expected_sin, abs=1e-6)
    assert cos[1, 0].item() == pytest.approx(0.5403023, abs=1e-6) and sin[1, 0].item() == pytest.approx(0.8414710, abs=1e-6)


def test_condense_ratio_divides_the_positions():
    cos, sin = build_rope_cache(T, N)
    cos2, sin2 = build_rope_cache(2 * T, N, condense_ratio=2)
    torch.testing.assert_close(cos2[0::2], cos, rtol=0, atol=1e-6)  # position 2p condensed is position p
    torch.testing.assert_close(sin2[0::2], sin, rtol=0, atol=1e-6)
    assert sin2[1, 0].item() == pytest.approx(math.sin(0.5), abs=1e-6)


def test_base_sets_the_frequencies():
    _, sin = build_rope_cache(2, 4, base=100)
    assert sin[1].tolist() == pytest.approx([math.sin(1.0), math.sin(0.1)] * 2, abs=1e-6)  # 100^(-2k/4)


@pytest.mark.parametrize("interleave", [False, True], ids=["rotate-half", "interleaved"])
def test_layouts_match_a_complex_rotation(interleave):
    x = torch.randn(2, 3, T, N)  # (B, H, T, n)
    cos, sin = build_rope_cache(T, N)
    out = apply_rope(x, cos, sin, interleave=interleave)
    expected = complex_rotation(x, torch.arange(T), interleave)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=2e-6)
    # a rotation: the length of every pair is kept
    pairs = lambda t: t.double().unflatten(-1, (N // 2, 2)) if interleave else t.double().unflatten(-1, (2, N // 2))
    norms = lambda t: pairs(t).pow(2).sum(-1 if interleave else -2)
    torch.testing.assert_close(norms(out), norms(x), rtol=1e-5, atol=1e-6)


def test_layouts_differ_by_a_permutation_only():
    """Interleaved rope of x equals rotate-half rope of x with its pairs moved to (k, k + n/2), moved back."""
    x = torch.randn(2, 3, T, N)
    cos, sin = build_rope_cache(T, N)
    to_half = torch.cat((torch.arange(0, N, 2), torch.arange(1, N, 2)))  # [0, 2, 4, 6, 1, 3, 5, 7]
    back = torch.argsort(to_half)
    via_half = apply_rope(x[..., to_half], cos, sin, interleave=False)[..., back]
    torch.testing.assert_close(via_half, apply_rope(x, cos, sin, interleave=True), rtol=0, atol=1e-6)
    assert not torch.allclose(apply_rope(x, cos, sin, interleave=False), apply_rope(x, cos, sin, interleave=True))


@pytest.mark.parametrize("interleave", [False, True], ids=["rotate-half", "interleaved"])
def test_partial_rope_leaves_the_rest_unchanged(interleave):
    head_size, n_elem = 12, 4
    x = torch.randn(2, 3, T, head_size)
    cos, sin = build_rope_cache(T, n_elem)
    out = apply_partial_rope(x, cos, sin, n_elem, interleave)
    assert torch.equal(out[..., n_elem:], x[..., n_elem:])  # bitwise: the non-rotary dims pass through
    assert torch.equal(out[..., :n_elem], apply_rope(x[..., :n_elem], cos, sin, interleave))
    torch.testing.assert_close(out[..., :n_elem].double(), complex_rotation(x[..., :n_elem], torch.arange(T), interleave),
                               rtol=0, atol=2e-6)
    assert apply_partial_rope(x, cos, sin, 0) is x  # no rotary dims: x itself
    full_cos, full_sin = build_rope_cache(T, head_size)
    assert torch.equal(apply_partial_rope(x, full_cos, full_sin, head_size, interleave),
                       apply_rope(x, full_cos, full_sin, interleave))


@pytest.mark.parametrize("interleave", [False, True], ids=["rotate-half", "interleaved"])
def test_positions_per_row_equal_gathering_rows(interleave):
    """cos/sin of shape (B, T, n), rows of the cache gathered at each row's positions, rotate row b as a (T, n)
    cache of those positions would, for every head."""
    cos, sin = build_rope_cache(32, N)
    positions = torch.tensor([[0, 1, 2, 3], [7, 8, 9, 10], [31, 5, 0, 17]])  # (B, T): any positions per row
    x = torch.randn(3, 2, 4, N)  # (B, H, T, n)
    out = apply_rope(x, cos[positions], sin[positions], interleave)  # (B, T, n) cos/sin
    for b in range(3):
        assert torch.equal(out[b], apply_rope(x[b], cos[positions[b]], sin[positions[b]], interleave))
    torch.testing.assert_close(out.double(), complex_rotation(x, positions, interleave), rtol=0, atol=2e-6)


def test_rope_computes_in_the_inputs_dtype():
    cos, sin = build_rope_cache(T, N)
    x = torch.randn(1, 1, T, N, dtype=torch.float64)
    out = apply_rope(x, cos, sin)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, complex_rotation(x, torch.arange(T), False), rtol=0, atol=1e-6)  # fp32 cache
    assert apply_rope(x.bfloat16(), cos, sin).dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------ YaRN
YARN = dict(factor=8.0, original_max_seq_len=64, beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=0.8,
            truncate=True)


def test_yarn_keeps_fast_frequencies_and_interpolates_slow_ones():
    from litgpt.rope import rope_attention_factor, softmax_scale_multiplier, yarn_frequencies, yarn_mscale

    n, base = 32, 10000
    plain = 1.0 / (base ** (torch.arange(0, n, 2, dtype=torch.float32) / n))
    yarn = {**YARN, "original_max_seq_len": 4096}
    theta = yarn_frequencies(n, base, yarn)
    # the correction range: the dims that turn beta_fast (32) and beta_slow (1) times over 4096 positions,
    # n ln(4096 / (turns 2 pi)) / (2 ln base) = 5.24 and 11.26, floored and ceiled: 5 and 12
    assert torch.equal(theta[:6], plain[:6])  # fast: turn often within the original context, kept
    torch.testing.assert_close(theta[12:], plain[12:] / 8.0)  # slow: interpolated by the factor
    ramp = (torch.arange(6, 12, dtype=torch.float32) - 5) / 7  # linear in between
    torch.testing.assert_close(theta[6:12], plain[6:12] / 8.0 * ramp + plain[6:12] * (1 - ramp))
    assert torch.equal(yarn_frequencies(n, base, {**yarn, "factor": 1.0}), plain)

    attention = yarn_mscale(8.0, 1.0) / yarn_mscale(8.0, 0.8)  # (0.1 ln 8 + 1) / (0.08 ln 8 + 1)
    assert rope_attention_factor(YARN) == pytest.approx(attention) and rope_attention_factor(None) == 1.0
    assert softmax_scale_multiplier(YARN) == pytest.approx((0.08 * math.log(8.0) + 1) ** 2)
    cos, sin = build_rope_cache(T, n, adjustments=yarn)
    angles = torch.outer(torch.arange(T, dtype=torch.float32), theta).repeat(1, 2)
    torch.testing.assert_close(cos, torch.cos(angles) * attention)
    torch.testing.assert_close(sin, torch.sin(angles) * attention)


@pytest.mark.parametrize("overrides", [
    {}, {"truncate": False}, {"factor": 40.0, "mscale": 0.707, "mscale_all_dim": 0.707},
    {"mscale": 1.0, "mscale_all_dim": 0.0, "beta_fast": 16.0, "beta_slow": 2.0},
])
def test_yarn_matches_transformers(overrides):
    """Frequencies and attention factor equal transformers' YaRN for a DeepSeek-V3 config (its rope head width)."""
    transformers = pytest.importorskip("transformers", reason="the oracle for YaRN is transformers' rope init")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from litgpt.rope import rope_attention_factor, yarn_frequencies

    yarn = {**YARN, **overrides}
    rope_parameters = dict(rope_type="yarn", rope_theta=10000.0, factor=yarn["factor"], truncate=yarn["truncate"],
                           original_max_position_embeddings=yarn["original_max_seq_len"], beta_fast=yarn["beta_fast"],
                           beta_slow=yarn["beta_slow"], mscale=yarn["mscale"], mscale_all_dim=yarn["mscale_all_dim"])
    config = transformers.DeepseekV3Config(hidden_size=64, num_attention_heads=4, qk_rope_head_dim=16,
                                           max_position_embeddings=512, rope_parameters=rope_parameters)
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](config, torch.device("cpu"))
    torch.testing.assert_close(yarn_frequencies(16, 10000, yarn), inv_freq, rtol=1e-6, atol=0)
    assert rope_attention_factor(yarn) == pytest.approx(attention_factor, rel=1e-9)


# ------------------------------------------------------------------------------------------------ Llama 3
LLAMA3 = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=64)


def test_llama3_keeps_short_wavelengths_divides_long_ones_and_blends_between():
    from litgpt.rope import is_llama3, llama3_frequencies, rope_attention_factor, softmax_scale_multiplier

    n, base = 16, 10000
    plain = 1.0 / (base ** (torch.arange(0, n, 2, dtype=torch.float32) / n))  # (8,)
    wavelength = 2 * math.pi / plain
    theta = llama3_frequencies(n, base, LLAMA3)
    # wavelengths 6.3, 20, 63, 199, 628, ...: < 64/4 = 16 kept, > 64/1 = 64 divided by 8, between blended
    assert wavelength[0] < 16 and 16 < wavelength[1] < 64 and 16 < wavelength[2] < 64 and wavelength[3] > 64
    assert theta[0].item() == plain[0].item()
    torch.testing.assert_close(theta[3:], plain[3:] / 8.0, rtol=0, atol=0)
    blend = (64 / wavelength[1:3] - 1.0) / 3.0  # 64/19.87 = 3.22 -> 0.74; 64/62.83 = 1.02 -> 0.006
    assert blend.tolist() == pytest.approx([0.7403, 0.0062], abs=1e-4)
    torch.testing.assert_close(theta[1:3], plain[1:3] / 8.0 * (1 - blend) + plain[1:3] * blend)
    assert is_llama3(LLAMA3) and not is_llama3(YARN) and not is_llama3(None)
    assert rope_attention_factor(LLAMA3) == 1.0 and softmax_scale_multiplier(LLAMA3) == 1.0
    cos, _ = build_rope_cache(T, n, adjustments=LLAMA3)
    torch.testing.assert_close(cos, torch.cos(torch.outer(torch.arange(T, dtype=torch.float32), theta).repeat(1, 2)))


@pytest.mark.parametrize("overrides", [{}, {"factor": 32.0, "original_max_seq_len": 8192}, {"high_freq_factor": 2.0}])
def test_llama3_matches_transformers(overrides):
    """Frequencies equal transformers' llama3 rope init (attention factor 1) for a Llama config."""
    transformers = pytest.importorskip("transformers", reason="the oracle for Llama 3 scaling is transformers'")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from litgpt.rope import llama3_frequencies

    ours = {**LLAMA3, **overrides}
    rope_parameters = dict(rope_type="llama3", rope_theta=500000.0, factor=ours["factor"],
                           low_freq_factor=ours["low_freq_factor"], high_freq_factor=ours["high_freq_factor"],
                           original_max_position_embeddings=ours["original_max_seq_len"])
    config = transformers.LlamaConfig(hidden_size=256, num_attention_heads=4, max_position_embeddings=131072,
                                      rope_parameters=rope_parameters)
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
    assert attention_factor == 1.0
    torch.testing.assert_close(llama3_frequencies(64, 500000, ours), inv_freq, rtol=1e-6, atol=0)
