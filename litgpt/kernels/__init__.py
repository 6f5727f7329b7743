"""Triton kernels (on CUDA) with their pure-torch references; every entry point falls back to its reference itself.

`mla_decode_attention` is the absorbed MLA decode over `KVCacheCompressed`, `mla_cache_write` its cache write (the
new latent's norm, the key's rope and, in the same launch, the query's rope); `gqa_decode_attention` the MHA/GQA/MQA
decode over `KVCache`, `gqa_cache_write` its cache write (the query's and key's rope and the key and value writes in
one launch). `linear` is the small-batch GEMV (+ norm, activation, bias, residual) of folded decode steps.
`litgpt.kernels.sampling.fused_top_k_sample` is the decode step's top-k with its Gumbel-max draw, and
`gumbel_top_k_sample` the draw among given candidates (both used by `litgpt.generate.base.Sampler`).
`litgpt.kernels.cross_entropy` holds the training loss's passes over the logits (used by `litgpt.loss`).
`litgpt.kernels.moe_grouped.grouped_experts` is a mixture of experts' decode-sized routed experts, grouped by expert
on the device and read in place (used by `litgpt.moe.Experts`).
Each decode entry point also takes a `block_table` for the paged caches (`litgpt.kv_cache.PagedKVCache`,
`PagedKVCacheCompressed`): the same kernels then walk each row's pages; `write_pages` and `gather_pages` are the
torch path's paged write and read. `set_kernels(model, False)` switches every block back to the torch path.
"""

from litgpt.kernels._triton import KERNEL_DTYPES, TRITON_AVAILABLE
from litgpt.kernels.decode_attention import (
    gather_pages,
    gqa_cache_write,
    gqa_decode_attention,
    gqa_decode_attention_reference,
    key_mask,
    latent_entries,
    mla_cache_write,
    mla_decode_attention,
    mla_decode_attention_reference,
    roped_heads,
    set_kernels,
    split_heads,
    write_entries,
    write_pages,
    write_positions,
)
from litgpt.kernels.linear import linear

__all__ = [
    "KERNEL_DTYPES",
    "TRITON_AVAILABLE",
    "gather_pages",
    "gqa_cache_write",
    "gqa_decode_attention",
    "gqa_decode_attention_reference",
    "key_mask",
    "latent_entries",
    "linear",
    "mla_cache_write",
    "mla_decode_attention",
    "mla_decode_attention_reference",
    "roped_heads",
    "set_kernels",
    "split_heads",
    "write_entries",
    "write_pages",
    "write_positions",
]
