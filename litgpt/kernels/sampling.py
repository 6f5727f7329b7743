"""The decode step's top-k Gumbel-max draw: the Triton kernels of `litgpt.kernels.triton_sampling` on CUDA (the draw
among given candidates, `gumbel_top_k_sample`, and the top-k with the draw, `fused_top_k_sample`), pure-torch
references everywhere else, and the counter-based hash (`mix32`) that both draw their noise from.

The noise of a candidate is a hash of (row seed, position, token id), so the draw needs no RNG state: the same
seed gives the same tokens eager, compiled, under a CUDA graph, with the kernel or without it.
"""

from __future__ import annotations

import torch

from litgpt.kernels._ops import define_op
from litgpt.kernels._triton import TRITON_AVAILABLE

M32 = 0xFFFFFFFF
TOKEN_SALT = 0x9E3779B9  # token id t hashes to mix32(t ^ TOKEN_SALT)
MAX_K = 1024  # candidates per row the kernel takes (`litgpt.kernels.triton_sampling.MAX_K`)
FUSED_MAX_K = 128  # the largest k of the fused top-k (`litgpt.kernels.triton_sampling.FUSED_MAX_K`)
VALUE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xorshift-multiply rounds) on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & M32  # products stay below 2**63: no signed overflow
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & M32
    return x ^ (x >> 16)


def mix32_int(x: int) -> int:
    """`mix32` of one Python int (taken modulo 2**32)."""
    return int(mix32(torch.tensor([x & M32]))[0])


def token_hashes(token_ids: torch.Tensor) -> torch.Tensor:
    """The per-token hash (same shape, int64) that a token's noise starts from."""
    return mix32(token_ids ^ TOKEN_SALT)


def gumbel_noise(token_hash: torch.Tensor, row_seeds: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise in fp32 for token hashes (B, n) or (1, n), row seeds (B, 1) and positions (B, 1)."""
    key = mix32(row_seeds ^ mix32(position & M32))  # (B, 1)
    bits = mix32(token_hash ^ key)  # (B, n) uniform 32-bit integers
    uniform = ((bits >> 8).float() + 0.5) * (1.0 / (1 << 24))  # in (0, 1)
    return -torch.log(-torch.log(uniform))  # (B, n)


def inverse_temperature(temperature: float) -> float:
    """1 / temperature rounded to fp32, the factor torch's CUDA `logits / temperature` multiplies by (a division by
    a scalar runs as a multiplication by its fp32 reciprocal there), so the kernel scales the logits identically."""
    return torch.tensor(temperature, dtype=torch.float32).reciprocal().item()


def gumbel_top_k_sample_reference(values: torch.Tensor, token_ids: torch.Tensor, row_seeds: torch.Tensor,
                                  position: torch.Tensor, inv_temperature: float) -> torch.Tensor:
    """The draw in torch: token_ids[argmax(values * inv_temperature + noise)] per row, (B, 1) int64, in fp32."""
    scores = values.float() * inv_temperature + gumbel_noise(token_hashes(token_ids), row_seeds, position)  # (B, k)
    return token_ids.gather(-1, scores.argmax(dim=-1, keepdim=True))  # (B, 1)


def _draw_applies(values: torch.Tensor, row_seeds: torch.Tensor, position: torch.Tensor) -> bool:
    """What both draws' kernels need: Triton installed, bf16/fp16/fp32 values (B, n) on CUDA with a unit last stride
    and no autograd, and one int64 seed and position per row (or one position for all) on the same device."""
    B = values.size(0) if values.dim() == 2 else -1
    return (
        TRITON_AVAILABLE
        and values.is_cuda
        and values.dim() == 2
        and values.dtype in VALUE_DTYPES
        and values.stride(-1) == 1
        and row_seeds.dtype == position.dtype == torch.int64
        and all(t.device == values.device for t in (row_seeds, position))
        and row_seeds.numel() == B
        and position.numel() in (1, B)
        and not (torch.is_grad_enabled() and values.requires_grad)
    )


def kernel_applies(values: torch.Tensor, token_ids: torch.Tensor, row_seeds: torch.Tensor,
                   position: torch.Tensor) -> bool:
    """True where the Triton kernel takes these inputs: `_draw_applies`, and int64 ids of the values' (B, k) shape
    with k <= MAX_K, on their device, with a unit last stride."""
    return (
        _draw_applies(values, row_seeds, position)
        and token_ids.shape == values.shape
        and 0 < values.size(1) <= MAX_K
        and token_ids.dtype == torch.int64
        and token_ids.device == values.device
        and token_ids.stride(-1) == 1
    )


def gumbel_top_k_sample(values: torch.Tensor, token_ids: torch.Tensor, row_seeds: torch.Tensor,
                        position: torch.Tensor, inv_temperature: float) -> torch.Tensor:
    """Draw one of each row's k candidates: values (B, k) logits in their own dtype, token_ids (B, k) int64,
    row_seeds (B, 1) int64, position (B, 1) int64 (the position sampled for) -> token ids (B, 1) int64.

    One Triton launch on CUDA (`kernel_applies`), else `gumbel_top_k_sample_reference`; both scale the logits by
    inv_temperature in fp32 and add the same hashed Gumbel noise (equal up to the rounding of log).
    """
    if not kernel_applies(values, token_ids, row_seeds, position):
        return gumbel_top_k_sample_reference(values, token_ids, row_seeds, position, inv_temperature)
    B = values.size(0)
    seeds = row_seeds.reshape(B)  # (B,)
    positions = position.reshape(-1).expand(B)  # (B,): stride 0 when one position is shared
    return _gumbel_top_k_op(values, token_ids, seeds, positions, float(inv_temperature))  # (B, 1)


def _launch(values: torch.Tensor, token_ids: torch.Tensor, row_seeds: torch.Tensor, positions: torch.Tensor,
            inv_temperature: float) -> torch.Tensor:
    """The Triton launcher, imported at the first launch (Triton loads only when a kernel runs)."""
    from litgpt.kernels import triton_sampling

    return triton_sampling.gumbel_top_k_sample(values, token_ids, row_seeds, positions, inv_temperature)


def _gumbel_top_k_fake(values: torch.Tensor, *_: object) -> torch.Tensor:
    return values.new_empty(values.size(0), 1, dtype=torch.int64)  # (B, 1)


# The launch as an operator (`litgpt.kernels._ops`): torch.compile and CUDA graphs see one opaque node.
_gumbel_top_k_op = define_op("gumbel_top_k_sample", (
    "(Tensor values, Tensor token_ids, Tensor row_seeds, Tensor positions, float inv_temperature) -> Tensor"),
    _launch, _gumbel_top_k_fake)


# ------------------------------------------------------------------------------------------------ top-k and draw
def top_k_candidates(logits: torch.Tensor, vocab_size: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's k largest logits among the first vocab_size columns and their token ids, (B, k) each, ranked by
    logit and, on equal logits, smaller token id first (a stable descending sort): the candidates the fused kernel
    draws among."""
    values, ids = torch.sort(logits[:, :vocab_size], dim=-1, descending=True, stable=True)  # (B, V), (B, V)
    return values[:, :k], ids[:, :k]


def fused_kernel_applies(logits: torch.Tensor, vocab_size: int, k: int, row_seeds: torch.Tensor,
                         position: torch.Tensor) -> bool:
    """True where `fused_top_k_sample`'s kernels take these inputs: `_draw_applies` for logits (B, >= vocab_size),
    and 1 <= k <= FUSED_MAX_K, k <= vocab_size."""
    return (
        _draw_applies(logits, row_seeds, position)
        and 1 <= k <= min(FUSED_MAX_K, vocab_size)
        and vocab_size <= logits.size(1)
    )


def fused_top_k_sample(logits: torch.Tensor, vocab_size: int, k: int, row_seeds: torch.Tensor,
                       position: torch.Tensor, inv_temperature: float) -> torch.Tensor:
    """Draw from each row's top k: logits (B, >= vocab_size) (later columns, a padded vocabulary's, never drawn),
    row_seeds (B, 1), position (B, 1) int64 -> token ids (B, 1) int64.

    Two Triton launches on CUDA (`fused_kernel_applies`: the top-k and the draw), else `top_k_candidates` then
    `gumbel_top_k_sample_reference`: the same candidates (ties at the k-th logit go to the smaller token id) and the
    same draw, equal up to the rounding of log.
    """
    if not fused_kernel_applies(logits, vocab_size, k, row_seeds, position):
        values, ids = top_k_candidates(logits, vocab_size, k)
        return gumbel_top_k_sample_reference(values, ids, row_seeds, position, inv_temperature)
    B = logits.size(0)
    positions = position.reshape(-1).expand(B)  # (B,): stride 0 when one position is shared
    return _fused_top_k_op(logits, vocab_size, k, row_seeds.reshape(B), positions, float(inv_temperature))  # (B, 1)


def _launch_fused(logits: torch.Tensor, vocab_size: int, k: int, row_seeds: torch.Tensor, positions: torch.Tensor,
                  inv_temperature: float) -> torch.Tensor:
    """The fused top-k's Triton launcher, imported at the first launch."""
    from litgpt.kernels import triton_sampling

    return triton_sampling.fused_top_k_sample(logits, vocab_size, k, row_seeds, positions, inv_temperature)


_fused_top_k_op = define_op("fused_top_k_sample", (
    "(Tensor logits, int vocab_size, int k, Tensor row_seeds, Tensor positions, float inv_temperature) -> Tensor"),
    _launch_fused, _gumbel_top_k_fake)
