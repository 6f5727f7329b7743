"""Decode-attention kernels (Triton, on CUDA) with their pure-torch references.

`mla_decode_attention` is the absorbed MLA decode over `KVCacheCompressed` (`mla_decode_step` the same with the
query rope, latent norm and cache write fused in front); `gqa_decode_attention` the MHA/GQA/MQA
decode over `KVCache`. `linear` is the small-batch GEMV (+ bias + residual) of folded decode steps (`litgpt.fold`).
`litgpt.kernels.cross_entropy` holds the training loss's passes over the logits (used by `litgpt.loss`).
`set_kernels(model, False)` switches every module back to the torch path.
"""

from litgpt.kernels.decode_attention import (
    gqa_decode_attention,
    gqa_decode_attention_reference,
    mla_decode_attention,
    mla_decode_attention_reference,
    mla_decode_step,
    mla_decode_step_applies,
    set_kernels,
)
from litgpt.kernels.linear import linear

__all__ = [
    "gqa_decode_attention",
    "gqa_decode_attention_reference",
    "linear",
    "mla_decode_attention",
    "mla_decode_attention_reference",
    "mla_decode_step",
    "mla_decode_step_applies",
    "set_kernels",
]
