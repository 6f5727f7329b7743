"""Decode-time weight folding: a block's cached one-token step in two GEMMs.

At small batch a decode step is bound by kernel launches, not by bytes: pythia-160m-mla at batch 1 runs about nine
small GEMMs per layer, each a few microseconds of mostly latency. `fold_for_decode(model)` precomputes, from the
current weights, products that let each block's one-token step (`Block.folded_step`) run fewer, larger GEMMs:

  - the gain and shift of a norm go into the linear maps that read its output (W diag(gain) and W shift + bias),
    so the step normalises once, to unit gain, for both the attention and the MLP (inside the input map's GEMV,
    `litgpt.kernels.linear(norm=...)`, as is the MLP activation inside the output map's);
  - MLA: W_UK goes into the query projection and W_UV into the output projection: the absorbed path with its
    two per-head products done once, ahead of time (`MultiheadLatentAttention.decode_projections`), where that
    keeps the maps small (`folds_absorption`: pythia-160m-mla yes; DeepSeek-V2-Lite, whose folded maps would read
    1.2 GB more a step, and DeepSeek-V3 no: their step applies the two products to the unfolded maps' outputs);
  - with a parallel residual (GPT-NeoX, Pythia) the attention and MLP input maps stack into one GEMM and their
    output maps into another: x + [W_o | W_proj] [attention(h_a); act(h_m)] + biases.
  - a mixture-of-experts MLP (`litgpt.moe.LLaMAMoE`) is not folded: which experts run depends on the token, so an
    MoE block folds its attention's two maps and runs the MoE on its own modules (static shapes all the same).

Folding is an explicit call by whoever owns the model for decoding (`litgpt.generate`, `litgpt.api.LLM`, the decode
benchmark). The folded weights are `Block.folded` (`litgpt.model.FoldedMaps`: non-persistent buffers, never in the
state dict) and a snapshot of the weights they came from: fold again after changing the weights. Being a snapshot of
plain weights, folding refuses a model with an unmerged LoRA update (`litgpt.lora.merge_lora` it first; the decode
session does) and one with quantized weights. Training, prefill and steps of more than one token never use them.
They cost memory beside the weights they fold: for pythia-160m-mla about 1.4x the blocks' own weights (the folded
MLA query map is d_c/d_n times q_proj's size).
"""

from __future__ import annotations

import torch

from litgpt.lora import lora_modules
from litgpt.model import GPT, Block, FoldedMaps
from litgpt.moe import LLaMAMoE
from litgpt.norm import RMSNorm
from litgpt.projection import as_dtype, fold_norm, stack_inputs, stack_outputs


def fold_block(block: Block) -> FoldedMaps:
    """A block's folded decode maps, computed in float32 or wider and stored in the block's dtype."""
    dtype = next(p.dtype for n, p in block.attn.named_parameters() if "lora_" not in n)  # the attention's weights
    compute = torch.promote_types(dtype, torch.float32)
    attn_in, attn_out = (as_dtype(m, compute) for m in block.attn.decode_projections())
    attn_in = fold_norm(block.norm_1, attn_in)
    norm = "rms" if isinstance(block.norm_1, RMSNorm) else "layer"
    if isinstance(block.mlp, LLaMAMoE):  # attention only: `Block.folded_step` runs the MoE itself
        maps = {"attn_in": attn_in, "attn_out": attn_out}
        widths = (attn_in[0].size(0), 0)
        return FoldedMaps({name: as_dtype(m, dtype) for name, m in maps.items()}, norm, block.norm_1.eps, widths)
    mlp_in, mlp_out = block.mlp.projections()
    mlp_in = fold_norm(block.norm_1 if block.norm_2 is None else block.norm_2, as_dtype(mlp_in, compute))
    widths = (attn_in[0].size(0), mlp_in[0].size(0))
    if block.config.parallel_residual:  # one GEMM in, one out
        maps = {"in": stack_outputs(attn_in, mlp_in), "out": stack_inputs(attn_out, mlp_out)}
    else:  # the MLP reads the attention's residual: its output map stays `block.mlp.proj`
        maps = {"attn_in": attn_in, "attn_out": attn_out, "mlp_in": mlp_in}
    return FoldedMaps({name: as_dtype(m, dtype) for name, m in maps.items()}, norm, block.norm_1.eps, widths)


@torch.no_grad()
def fold_for_decode(model: GPT) -> None:
    """Give every block folded decode weights computed from its current weights (replacing older ones)."""
    check_foldable(model)
    for block in model.transformer.h:
        block.folded = fold_block(block)


def check_foldable(model: GPT) -> None:
    """Raise a one-line ValueError for weights a fold would get wrong: an unmerged LoRA update (a snapshot of it
    would go stale as it trains, and merging is the owner's call) or quantized (non-floating) weights."""
    unmerged = [name for name, m in lora_modules(model) if not m.merged]
    if unmerged:
        more = f" and {len(unmerged) - 1} more layers" if len(unmerged) > 1 else ""
        raise ValueError(
            f"fold_for_decode: {unmerged[0]}{more} hold an unmerged LoRA update that folded weights would drop; call "
            "litgpt.lora.merge_lora(model) first, or decode without folding"
        )
    quantized = next(((n, p.dtype) for n, p in model.named_parameters() if not p.is_floating_point()), None)
    if quantized is not None:
        raise ValueError(
            f"fold_for_decode: {quantized[0]} is quantized ({quantized[1]}); fold a full-precision model (merge a "
            "QLoRA fine-tune with `litgpt merge_lora`)"
        )


def unfold(model: GPT) -> None:
    """Drop the folded weights: one-token steps run the blocks' own modules again."""
    for block in model.transformer.h:
        block.folded = None


def is_folded(model: GPT) -> bool:
    return any(block.folded is not None for block in model.transformer.h)
