"""A mixture of experts' routed experts for decode-sized inputs, grouped by expert and read in place: the Triton
kernels of `litgpt.kernels.triton_moe` where they apply (CUDA, bf16/fp16, no autograd, at most MAX_SLOTS
token-expert pairs), else `grouped_experts_reference`, the same function in torch.

Both take the routing (weights and expert indices, (N, k)) as device tensors and have shapes fixed by N, so a decode
step that calls them captures as one static graph: nothing is read back to the host.

    y[t] = sum_j weights[t, j] * proj_e(swiglu(fc_e(x[t]))),  e = indices[t, j]
"""

from __future__ import annotations

from typing import Optional

import torch

from litgpt.activations import swiglu
from litgpt.kernels._ops import define_op
from litgpt.kernels._triton import triton_can_run

MAX_SLOTS = 512  # token-expert pairs the kernels take: each program scans all of them (64 tokens of 8 experts)


def sort_slots_by_expert(indices: torch.Tensor, n_expert: int) -> tuple[torch.Tensor, torch.Tensor]:
    """indices (N, k) -> order (N*k,), the slots (slot s = token s // k's (s % k)-th choice) sorted by expert and,
    within an expert, by slot; and counts (E,), slots per expert. A counting sort of fixed shapes on the device
    (an (N*k, E) one-hot and its prefix sums): for decode-sized inputs."""
    flat = indices.reshape(-1)  # (S,)
    one_hot = (flat[:, None] == torch.arange(n_expert, device=flat.device)).to(torch.int64)  # (S, E)
    counts = one_hot.sum(0)  # (E,)
    rank = one_hot.cumsum(0).gather(1, flat[:, None]).squeeze(1) - 1  # (S,) rank among its expert's slots
    position = (counts.cumsum(0) - counts)[flat] + rank  # (S,) where each slot goes
    order = torch.empty_like(flat).scatter_(0, position, torch.arange(flat.numel(), device=flat.device))  # (S,)
    return order, counts


def grouped_experts_reference(
    x: torch.Tensor,
    fc_weight: torch.Tensor,
    proj_weight: torch.Tensor,
    fc_bias: Optional[torch.Tensor],
    proj_bias: Optional[torch.Tensor],
    weights: torch.Tensor,
    indices: torch.Tensor,
) -> torch.Tensor:
    """x (N, C), fc_weight (E, 2I, C) = [W_1; W_2] per expert, proj_weight (E, C, I), biases (E, 2I), (E, C) or None,
    routing weights and indices (N, k) -> (N, C) in x's dtype: the kernels' function in torch, step for step. The
    slots sorted by expert, each multiplied by its expert's weights, the SwiGLU, the down map weighted by its routing
    weight, then each token's k weighted outputs summed (in float32 or wider). Differentiable."""
    N, k = indices.shape
    order, _ = sort_slots_by_expert(indices, fc_weight.size(0))  # (S,)
    experts = indices.reshape(-1)[order]  # (S,) sorted
    rows = x.index_select(0, order // k)  # (S, C)
    h = torch.einsum("sfc,sc->sf", fc_weight[experts], rows)  # (S, 2I)
    if fc_bias is not None:
        h = h + fc_bias[experts]
    y = torch.einsum("sci,si->sc", proj_weight[experts], swiglu(h))  # (S, C)
    if proj_bias is not None:
        y = y + proj_bias[experts]
    wide = torch.promote_types(y.dtype, torch.float32)
    y = y.to(wide) * weights.reshape(-1)[order].to(wide)[:, None]  # (S, C) weighted
    y = torch.zeros_like(y).index_copy(0, order, y)  # (S, C) back in slot order
    return y.view(N, k, -1).sum(dim=1).to(x.dtype)  # (N, C)


def grouped_experts(
    x: torch.Tensor,
    fc_weight: torch.Tensor,
    proj_weight: torch.Tensor,
    fc_bias: Optional[torch.Tensor],
    proj_bias: Optional[torch.Tensor],
    weights: torch.Tensor,
    indices: torch.Tensor,
) -> torch.Tensor:
    """As `grouped_experts_reference`: one launch of each Triton kernel where `kernel_applies`, else the reference."""
    if kernel_applies(x, fc_weight, proj_weight, fc_bias, proj_bias, indices.numel()):
        return _moe_experts_op(x.contiguous(), fc_weight, proj_weight, fc_bias, proj_bias, weights, indices)
    return grouped_experts_reference(x, fc_weight, proj_weight, fc_bias, proj_bias, weights, indices)


def kernel_applies(
    x: torch.Tensor,
    fc_weight: torch.Tensor,
    proj_weight: torch.Tensor,
    fc_bias: Optional[torch.Tensor],
    proj_bias: Optional[torch.Tensor],
    slots: int,
) -> bool:
    """Triton can run on the tensors (one CUDA device, bf16/fp16, no autograd), the weights are contiguous and
    there are at most MAX_SLOTS token-expert pairs (`slots`)."""
    tensors = tuple(t for t in (x, fc_weight, proj_weight, fc_bias, proj_bias) if t is not None)
    return slots <= MAX_SLOTS and triton_can_run(tensors) and all(t.is_contiguous() for t in tensors[1:])


def _moe_experts(x: torch.Tensor, fc_weight: torch.Tensor, proj_weight: torch.Tensor, fc_bias: Optional[torch.Tensor],
                 proj_bias: Optional[torch.Tensor], weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The Triton launches (imported at the first one: Triton loads only when a kernel runs)."""
    from litgpt.kernels.triton_moe import moe_experts

    return moe_experts(x, fc_weight, proj_weight, fc_bias, proj_bias, weights, indices)


def _moe_experts_fake(x: torch.Tensor, fc_weight: torch.Tensor, proj_weight: torch.Tensor,
                      fc_bias: Optional[torch.Tensor], proj_bias: Optional[torch.Tensor], weights: torch.Tensor,
                      indices: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)  # (N, C)


# one opaque operator for torch.compile and CUDA graphs (`litgpt.kernels._ops`)
_moe_experts_op = define_op("moe_experts", (
    "(Tensor x, Tensor fc_weight, Tensor proj_weight, Tensor? fc_bias, Tensor? proj_bias, Tensor weights,"
    " Tensor indices) -> Tensor"), _moe_experts, _moe_experts_fake)


# ------------------------------------------------------------------------------------------------ the router
MAX_ROUTE_TOKENS = 256  # tokens the fused router takes: each of its programs reads the whole router matrix


def route_kernel_applies(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """The fused router runs: Triton on x and the router's weight (one CUDA device, bf16/fp16, no autograd), at
    most MAX_ROUTE_TOKENS tokens and 1,024 experts, unit strides along C."""
    return (
        x.size(0) <= MAX_ROUTE_TOKENS
        and weight.size(0) <= 1024
        and triton_can_run((x, weight))
        and x.stride(-1) == 1
        and weight.is_contiguous()
        and (bias is None or bias.is_cuda)
    )


def _route(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], k: int, scoring: str,
           norm_topk_prob: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    from litgpt.kernels.triton_moe import route

    return route(x, weight, bias, k, scoring, norm_topk_prob, scale)


def _route_fake(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], k: int, scoring: str,
                norm_topk_prob: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    N = x.size(0)
    return x.new_empty(N, k, dtype=torch.float32), x.new_empty(N, k, dtype=torch.int64)


# x (N, C), weight (E, C), bias (E,) float32 or None -> routing weights (N, k) float32, expert indices (N, k)
fused_route = define_op("moe_route", (
    "(Tensor x, Tensor weight, Tensor? bias, int k, str scoring, bool norm_topk_prob, float scale) -> (Tensor, Tensor)"
), _route, _route_fake)
