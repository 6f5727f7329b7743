"""Decode-time weight folding: a block's cached one-token step in two GEMMs.

At small batch a decode step is bound by kernel launches, not by bytes: pythia-160m-mla at batch 1 runs about nine
small GEMMs per layer, each a few microseconds of mostly latency. `fold_for_decode(model)` precomputes, from the
current weights, products that let each block's one-token step run fewer, larger GEMMs:

  - the gain and shift of a norm go into the linear maps that read its output (W diag(gain) and W shift + bias),
    so the step normalises once, to unit gain, for both the attention and the MLP (inside the input map's GEMV,
    `litgpt.kernels.linear(norm=...)`, as is the MLP activation inside the output map's);
  - MLA: W_UK goes into the query projection and W_UV into the output projection: the absorbed path with its
    two per-head products done once, ahead of time (`MultiheadLatentAttention.decode_projections`);
  - with a parallel residual (GPT-NeoX, Pythia) the attention and MLP input maps stack into one GEMM and their
    output maps into another: x + [W_o | W_proj] [attention(h_a); act(h_m)] + biases.

The folded weights are non-persistent buffers of `Block.folded` (never in the state dict) and a snapshot of the
weights they came from: fold again after changing the weights (`DecodeStep` folds when it is built). Training,
prefill and steps of more than one token never use them. They cost memory beside the weights they fold: for
pythia-160m-mla about 1.4x the blocks' own weights (the folded MLA query map is d_c/d_n times q_proj's size).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from litgpt.kernels.linear import linear

if TYPE_CHECKING:
    from litgpt.model import GPT, Block

Projection = tuple[torch.Tensor, Optional[torch.Tensor]]  # a linear map: weight (out, in) and bias (out,) or None


def _as(linear: Projection, dtype: torch.dtype) -> Projection:
    weight, bias = linear
    return weight.to(dtype), None if bias is None else bias.to(dtype)


def stack_outputs(*maps: Projection) -> Projection:
    """One map computing several maps of the same input side by side: outputs concatenated (missing biases: 0)."""
    dtype = maps[0][0].dtype
    maps = tuple(_as(m, dtype) for m in maps)
    weight = torch.cat([w for w, _ in maps], dim=0)  # (sum of outs, in)
    if all(b is None for _, b in maps):
        return weight, None
    return weight, torch.cat([w.new_zeros(w.size(0)) if b is None else b for w, b in maps])


def stack_inputs(*maps: Projection) -> Projection:
    """One map of the concatenated inputs of several maps that returns the sum of their outputs."""
    dtype = maps[0][0].dtype
    maps = tuple(_as(m, dtype) for m in maps)
    weight = torch.cat([w for w, _ in maps], dim=1)  # (out, sum of ins)
    biases = [b for _, b in maps if b is not None]
    return weight, (torch.stack(biases).sum(0) if biases else None)


def fold_norm(norm: nn.Module, linear: Projection) -> Projection:
    """`linear(norm(x))` as a map of the unit-gain normalised x: weight * gain, bias + weight @ shift."""
    weight, bias = linear
    folded = weight * norm.weight.to(weight.dtype)  # (out, in) * (in,)
    shift = getattr(norm, "bias", None)
    if shift is not None:
        shifted = weight @ shift.to(weight.dtype)  # (out,)
        bias = shifted if bias is None else bias + shifted
    return folded, bias


class FoldedBlock(nn.Module):
    """A block's folded decode weights and its one-token step (see the module docstring)."""

    def __init__(self, block: "Block") -> None:
        super().__init__()
        dtype = block.attn.proj.weight.dtype
        compute = torch.promote_types(dtype, torch.float32)
        attn_in, attn_out = (_as(m, compute) for m in block.attn.decode_projections())
        mlp_in, mlp_out = block.mlp.projections()
        attn_in = fold_norm(block.norm_1, attn_in)
        mlp_in = fold_norm(block.norm_1 if block.norm_2 is None else block.norm_2, _as(mlp_in, compute))
        self.parallel = block.config.parallel_residual
        self.use_kernel = True  # the maps run as Triton GEMVs on CUDA at small batch (`litgpt.kernels.linear`)
        self.widths = (attn_in[0].size(0), mlp_in[0].size(0))
        if self.parallel:  # one GEMM in, one out
            maps = {"in": stack_outputs(attn_in, mlp_in), "out": stack_inputs(attn_out, mlp_out)}  # in compute dtype
        else:  # the MLP reads the attention's residual: its output map stays `block.mlp.proj`
            maps = {"attn_in": attn_in, "attn_out": attn_out, "mlp_in": mlp_in}
        for name, (weight, bias) in maps.items():
            self.register_buffer(f"{name}_weight", weight.to(dtype), persistent=False)
            self.register_buffer(f"{name}_bias", None if bias is None else bias.to(dtype), persistent=False)

    def forward(
        self,
        block: "Block",
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: Optional[torch.Tensor],
        input_pos: torch.Tensor,
        input_pos_maxp1: Optional[int],
    ) -> torch.Tensor:
        """The block's output (B, 1, n_embd) for x (B, 1, n_embd) at input_pos, as `Block.forward` computes it."""
        attn, mlp, kernel = block.attn, block.mlp, self.use_kernel
        if self.parallel:  # the norm runs inside the input map, the MLP activation inside the output map
            h = linear(x, self.in_weight, self.in_bias, norm=block.norm_1, use_kernel=kernel)  # (B, 1, F_a + F_m)
            h_attn, h_mlp = h.split(self.widths, dim=-1)
            a = attn.attend_projected(h_attn, cos, sin, mask, input_pos, input_pos_maxp1)  # (B, 1, F_attn_out)
            return linear(a, self.out_weight, self.out_bias, residual=x, tail=h_mlp, activation=mlp.activation,
                          use_kernel=kernel)  # (B, 1, n_embd)
        h = linear(x, self.attn_in_weight, self.attn_in_bias, norm=block.norm_1, use_kernel=kernel)
        a = attn.attend_projected(h, cos, sin, mask, input_pos, input_pos_maxp1)  # (B, 1, F_attn_out)
        x = linear(a, self.attn_out_weight, self.attn_out_bias, residual=x, use_kernel=kernel)
        h = linear(x, self.mlp_in_weight, self.mlp_in_bias, norm=block.norm_2, use_kernel=kernel)  # (B, 1, F_mlp)
        return linear(None, mlp.proj.weight, mlp.proj.bias, residual=x, tail=h, activation=mlp.activation,
                      use_kernel=kernel)


@torch.no_grad()
def fold_for_decode(model: "GPT") -> None:
    """Give every block folded decode weights computed from its current weights (replacing older ones)."""
    for block in model.transformer.h:
        block.folded = FoldedBlock(block)


def unfold(model: "GPT") -> None:
    """Drop the folded weights: one-token steps run the blocks' own modules again."""
    for block in model.transformer.h:
        block.folded = None


def is_folded(model: "GPT") -> bool:
    return any(block.folded is not None for block in model.transformer.h)
