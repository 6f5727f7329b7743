"""The GPT model, top to bottom: embedding, blocks (attention + MLP), final norm, LM head.

State-dict keys equal upstream litgpt's, so `lit_model.pth` files load in both directions.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from litgpt.activations import ACTIVATIONS
from litgpt.attention import AttentionInputs, CausalSelfAttention, MultiheadLatentAttention
from litgpt.config import Config
from litgpt.kernels import linear
from litgpt.kernels.linear import NormKind
from litgpt.kv_cache import PagedCache
from litgpt.loss import linear_cross_entropy
from litgpt.moe import Experts, LLaMAMoE, Router, split_expert_keys, stack_expert_keys
from litgpt.norm import RMSNorm, build_norm
from litgpt.projection import Projection, linear_inputs, linear_map, stack_outputs
from litgpt.rope import build_rope_cache


class GPT(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=config.lm_head_bias)
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
                ln_f=build_norm(config, config.n_embd),
            )
        )
        if config.tie_embeddings:  # one Parameter: lm_head.weight stays in state dicts, as upstream litgpt expects
            self.tie_embeddings()
            self.register_load_state_dict_pre_hook(_check_tied_weights)
            self.register_load_state_dict_post_hook(lambda module, incompatible: module.tie_embeddings())
        if config.moe_layers:  # stacked experts inside, upstream litgpt's per-expert keys in the state dict
            self.register_state_dict_post_hook(split_expert_keys)
            self.register_load_state_dict_pre_hook(stack_expert_keys)
        self._max_seq_length = 0
        self.max_seq_length = config.block_size

    def tie_embeddings(self) -> None:
        """Make lm_head's weight the embedding's Parameter (again): after `to`/`to_empty` and an `assign=True`
        load, which give each module its own Parameter. The head may be wrapped (LoRA's `linear`); a quantized head
        (a bitsandbytes layer, not a plain nn.Linear) keeps its own quantized copy."""
        head = getattr(self.lm_head, "linear", self.lm_head)
        if type(head) is nn.Linear and head.weight is not self.transformer.wte.weight:
            head.weight = self.transformer.wte.weight

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "GPT":
        out = super()._apply(fn, *args, **kwargs)
        if self.config.tie_embeddings:
            self.tie_embeddings()
        return out

    @classmethod
    def from_name(cls, name: str, **kwargs: Any) -> "GPT":
        return cls(Config.from_name(name, **kwargs))

    # ------------------------------------------------------------------ rope cache and sequence length
    @property
    def max_seq_length(self) -> int:
        """Longest sequence the rope cache (and a KV cache built without an explicit length) covers."""
        return self._max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        if value > self.config.block_size:
            raise ValueError(
                f"max_seq_length {value} exceeds the model's block_size {self.config.block_size}; "
                "use a shorter length or a config with a larger block_size"
            )
        if value == self._max_seq_length:
            return
        self._max_seq_length = value
        self.reset_rope_cache()

    def reset_rope_cache(self) -> None:
        """(Re)build the cos/sin buffers (max_seq_length, rope_n_elem) on the device of the weights."""
        c = self.config
        device = self.lm_head.weight.device
        device = torch.device("cpu") if device.type == "meta" else device
        cos, sin = build_rope_cache(
            self._max_seq_length, c.rope_n_elem, device, c.rope_base, c.rope_condense_ratio, c.rope_adjustments
        )
        self.register_buffer("cos", cos, persistent=False)  # (max_seq_length, rope_n_elem)
        self.register_buffer("sin", sin, persistent=False)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        idx: torch.Tensor,
        input_pos: Optional[torch.Tensor] = None,
        input_pos_maxp1: Optional[int] = None,
        targets: Optional[torch.Tensor] = None,
        block_table: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Logits (B, T, padded_vocab_size) for token ids idx (B, T), or with `targets` the training loss.

        Without input_pos: a causal pass over idx alone (training). With input_pos ((T,) or per-row (B, T)
        positions): the tokens are written into the KV cache at those positions and attend to every cached
        position <= their own. input_pos_maxp1, if given, bounds the cache read to its first input_pos_maxp1
        positions (fewer FLOPs, but the shape then changes with it).
        targets (B, T), if given, makes forward return the mean cross-entropy of the logits against them, computed
        in chunks by `litgpt.loss.linear_cross_entropy` without an fp32 copy of the (B, T, vocab) logits; targets
        equal to -100 (`litgpt.loss.IGNORE_INDEX`: prompt and padding tokens of fine-tuning data) carry no weight.
        block_table (B, P) int32, with a paged cache (`set_paged_kv_cache`) and per-row input_pos (B, T): row b's
        token at position p is written to page block_table[b, p // page_size], slot p % page_size, and attends to
        positions 0..p of its row, read through the same table (an idle row: table all 0, the scratch page, at
        input_pos 0; its logits mean nothing).
        """
        B, T = idx.shape
        if T > self.max_seq_length:
            raise ValueError(f"cannot forward a sequence of length {T}: max_seq_length is {self.max_seq_length}")
        if not torch.compiler.is_compiling():
            self._check_inputs(idx, input_pos, input_pos_maxp1, block_table)
        if input_pos is None:
            if block_table is not None:
                raise TypeError("block_table was given without input_pos: pass each row's positions (B, T) with it")
            ctx = AttentionInputs(self.cos[:T], self.sin[:T])  # (T, rope_n_elem): a causal pass, no cache
        else:
            if self.transformer.h[0].attn.kv_cache is None:
                raise TypeError("input_pos was given but no KV cache is set: call `model.set_kv_cache(batch_size)` first")
            # rope rows at the positions, (T, n) or (B, T, n); the cache read stops at input_pos_maxp1
            ctx = AttentionInputs(self.cos[input_pos], self.sin[input_pos], input_pos, input_pos_maxp1, block_table)
        x = self.transformer.wte(idx)  # (B, T, n_embd)
        if self.config.scale_embeddings:
            x = x * torch.tensor(self.config.n_embd**0.5, dtype=x.dtype)
        for block in self.transformer.h:
            x = block(x, ctx)
        x = self.transformer.ln_f(x)
        if targets is not None:
            hidden, weight, bias = linear_inputs(self.lm_head, x.flatten(0, 1))  # a LoRA head appends its branch
            return linear_cross_entropy(hidden, weight, bias, targets.flatten())
        return self.lm_head(x)  # (B, T, padded_vocab_size)

    def _check_inputs(
        self, idx: torch.Tensor, input_pos: Optional[torch.Tensor], input_pos_maxp1: Optional[int],
        block_table: Optional[torch.Tensor] = None,
    ) -> None:
        """One-line ValueErrors for token ids outside the vocabulary and positions past the KV cache, instead of an
        index error deep in the embedding or the cache (a device-side assert on CUDA). Host values are checked
        always; tensor values only on the CPU, where reading them costs no device sync (the CUDA decode step stays
        sync-free: `LLM` checks its prompts' ids on the host)."""
        cache_len = getattr(self, "kv_cache_length", self.max_seq_length) if input_pos is not None else None
        cache = self.transformer.h[0].attn.kv_cache
        longer = (f"build a longer cache with model.set_kv_cache(batch_size, max_seq_length=...) (at most block_size "
                  f"{self.config.block_size}), or start a new sequence")
        if isinstance(cache, PagedCache) and input_pos is not None:
            cache_len = self._check_block_table(cache, idx, block_table)
            longer = "give the rows more pages (block_table columns), up to max_seq_length"
        elif block_table is not None and input_pos is not None:
            raise TypeError("block_table addresses a paged KV cache, but the model's cache is static: call "
                            "model.set_paged_kv_cache(num_pages, page_size) first, or leave block_table out")
        if cache_len is not None and input_pos_maxp1 is not None and input_pos_maxp1 > cache_len:
            raise ValueError(f"input_pos_maxp1 {input_pos_maxp1} is past the KV cache of {cache_len} positions; {longer}")
        if idx.device.type != "cpu" or idx.numel() == 0:
            return
        vocab = self.config.padded_vocab_size
        low, high = int(idx.min()), int(idx.max())
        if low < 0 or high >= vocab:
            bad = low if low < 0 else high
            raise ValueError(
                f"token id {bad} is outside the model's vocabulary of {vocab} ids (0..{vocab - 1}); encode the text "
                "with the checkpoint's own tokenizer"
            )
        if cache_len is not None and input_pos.numel() and input_pos.device.type == "cpu":
            last = int(input_pos.max())
            if last >= cache_len or int(input_pos.min()) < 0:
                bad = last if last >= cache_len else int(input_pos.min())
                raise ValueError(
                    f"input_pos {bad} is outside the KV cache of {cache_len} positions (0..{cache_len - 1}); {longer}"
                )

    # ------------------------------------------------------------------ KV cache
    def set_kv_cache(
        self,
        batch_size: int,
        max_seq_length: Optional[int] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        kv_cache_dtype: Optional[str] = None,
    ) -> None:
        """Preallocate every layer's static KV cache for batch_size rows of max_seq_length tokens, in the model's
        dtype (kv_cache_dtype None) or "fp8_e4m3" (e4m3 values with float32 scales, `litgpt.kv_cache`)."""
        if max_seq_length is None:
            max_seq_length = self.max_seq_length
        if max_seq_length > self.max_seq_length:
            raise ValueError(
                f"KV cache length {max_seq_length} exceeds max_seq_length {self.max_seq_length}; "
                "raise model.max_seq_length first (up to block_size)"
            )
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        device = self.lm_head.weight.device if device is None else device
        # the embedding's dtype: the compute dtype also where bitsandbytes stores the linears quantized (QLoRA)
        dtype = self.transformer.wte.weight.dtype if dtype is None else dtype
        for block in self.transformer.h:
            block.attn.kv_cache = block.attn.build_kv_cache(batch_size, max_seq_length, device, dtype, kv_cache_dtype)
        self.kv_cache_length = max_seq_length

    def set_paged_kv_cache(
        self,
        num_pages: int,
        page_size: int,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        kv_cache_dtype: Optional[str] = None,
    ) -> None:
        """Give every layer a paged KV cache: a pool of num_pages pages of page_size tokens each (page 0 is scratch,
        never handed to a sequence), `litgpt.kv_cache.PagedKVCache` or, for MLA, `PagedKVCacheCompressed`, in the
        model's dtype or kv_cache_dtype ("fp8_e4m3", as `set_kv_cache`). A forward
        then takes a block table (see `forward`); `clear_kv_cache` removes it. Positions stay below max_seq_length
        (the rope tables)."""
        device = self.lm_head.weight.device if device is None else device
        dtype = self.transformer.wte.weight.dtype if dtype is None else dtype
        for block in self.transformer.h:
            block.attn.kv_cache = block.attn.build_paged_kv_cache(num_pages, page_size, device, dtype, kv_cache_dtype)
        self.kv_cache_length = self.max_seq_length

    def _check_block_table(self, cache: PagedCache, idx: torch.Tensor, block_table: Optional[torch.Tensor]) -> int:
        """The positions a row of this forward can hold, after one-line errors for a missing or misshapen block
        table and (on the CPU) page ids outside the pool."""
        if block_table is None:
            raise TypeError("the KV cache is paged: pass block_table= (B, pages) int32 page ids with input_pos")
        if block_table.dim() != 2 or block_table.size(0) != idx.size(0) or block_table.is_floating_point():
            raise ValueError(f"block_table must be integer page ids of shape ({idx.size(0)}, pages), one row per row "
                             f"of idx, got {block_table.dtype} {tuple(block_table.shape)}")
        if block_table.device.type == "cpu" and block_table.numel():
            low, high = int(block_table.min()), int(block_table.max())
            if low < 0 or high >= cache.num_pages:
                raise ValueError(f"block_table holds page {low if low < 0 else high}, outside the pool's "
                                 f"{cache.num_pages} pages (0..{cache.num_pages - 1})")
        return min(self.max_seq_length, block_table.size(1) * cache.page_size)

    def clear_kv_cache(self) -> None:
        for block in self.transformer.h:
            block.attn.kv_cache = None

    def kv_cache_bytes(self) -> int:
        """Bytes held by all layers' KV caches (0 when none is set)."""
        return sum(block.attn.kv_cache_bytes() for block in self.transformer.h)


def _check_tied_weights(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """A tied model loads one embedding: a state dict whose lm_head.weight differs from transformer.wte.weight
    would silently keep only one of them."""
    wte, head = state_dict.get(f"{prefix}transformer.wte.weight"), state_dict.get(f"{prefix}lm_head.weight")
    if wte is None or head is None or head is wte or wte.device.type == "meta" or head.device.type == "meta":
        return
    if wte.shape != head.shape or not torch.equal(wte, head.to(wte.dtype)):
        raise ValueError(
            "tie_embeddings=True but the state dict's lm_head.weight differs from transformer.wte.weight; load it "
            "into a model with tie_embeddings=False (model_config.yaml) to keep both"
        )


class Block(nn.Module):
    """Pre-norm transformer block, with a parallel (GPT-NeoX) or sequential (Llama) residual.

    Beside its own forward it has a folded one-token step: with `folded` set (`litgpt.fold.fold_for_decode`), a
    cached step of one token runs on those maps instead of its modules, the norms and the MLP activation inside
    the GEMVs (`litgpt.kernels.linear`). An MoE MLP (`litgpt.moe.LLaMAMoE`, in the layers `config.moe_layers`
    lists) stays unfolded: its experts depend on the token, so only the attention's maps fold.
    """

    def __init__(self, config: Config, block_idx: int = 0) -> None:
        super().__init__()
        self.config = config
        self.norm_1 = build_norm(config, config.n_embd)
        attention_class = MultiheadLatentAttention if config.latent_attention is not None else CausalSelfAttention
        self.attn = attention_class(config)
        self.norm_2 = None if config.shared_attention_norm else build_norm(config, config.n_embd)
        self.mlp = build_mlp(config, block_idx)
        self.folded: Optional[FoldedMaps] = None  # decode-time folded weights, a snapshot

    def forward(self, x: torch.Tensor, ctx: AttentionInputs) -> torch.Tensor:
        if self.folded is not None and ctx.cached and x.size(1) == 1:
            return self.folded_step(x, ctx)
        x_normed = self.norm_1(x)  # (B, T, n_embd)
        attention_output = self.attn(x_normed, ctx)
        if self.config.parallel_residual:
            mlp_input = x_normed if self.norm_2 is None else self.norm_2(x)
            return self.mlp(mlp_input) + attention_output + x
        x = attention_output + x
        return self.mlp(self.norm_2(x)) + x

    def folded_step(self, x: torch.Tensor, ctx: AttentionInputs) -> torch.Tensor:
        """What `forward` computes for one cached token (B, 1, n_embd), on the folded maps: parallel residual, one
        GEMV in ([attention | MLP] input, the norm inside) and one out (the activation inside); sequential, three
        in turn, then the MLP's own output map. An MoE block folds its attention alone and runs the MoE as is."""
        maps, kernel = self.folded, self.attn.use_kernel
        norm = dict(norm=maps.norm, eps=maps.eps, use_kernel=kernel)
        if isinstance(self.mlp, LLaMAMoE):
            h = linear(x, *maps.projection("attn_in"), **norm)
            a = linear(self.attn.attend_projected(h, ctx), *maps.projection("attn_out"), residual=x, use_kernel=kernel)
            if self.config.parallel_residual:  # x + attention + MoE of the normed x
                return a + self.mlp(self.norm_1(x) if self.norm_2 is None else self.norm_2(x))
            return a + self.mlp(self.norm_2(a))
        act = self.mlp.activation
        if self.config.parallel_residual:
            h = linear(x, *maps.projection("in"), **norm)  # (B, 1, F_attn_in + F_mlp)
            h_attn, h_mlp = h.split(maps.widths, dim=-1)
            a = self.attn.attend_projected(h_attn, ctx)  # (B, 1, F_attn_out)
            return linear(a, *maps.projection("out"), residual=x, tail=h_mlp, activation=act, use_kernel=kernel)
        h = linear(x, *maps.projection("attn_in"), **norm)
        x = linear(self.attn.attend_projected(h, ctx), *maps.projection("attn_out"), residual=x, use_kernel=kernel)
        h = linear(x, *maps.projection("mlp_in"), **norm)  # (B, 1, F_mlp)
        return linear(None, *linear_map(self.mlp.proj), residual=x, tail=h, activation=act, use_kernel=kernel)


class FoldedMaps(nn.Module):
    """A block's folded decode weights as data: named linear maps held as non-persistent buffers (so they follow
    the model across devices but never enter the state dict), the norm they expect their input normalised by, and
    the widths of the parallel input map's two parts. Built by `litgpt.fold.fold_block`."""

    def __init__(self, maps: dict[str, Projection], norm: NormKind, eps: float, widths: tuple[int, int]) -> None:
        super().__init__()
        self.norm, self.eps, self.widths = norm, eps, widths
        for name, (weight, bias) in maps.items():
            self.register_buffer(f"{name}_weight", weight, persistent=False)
            self.register_buffer(f"{name}_bias", bias, persistent=False)

    def projection(self, name: str) -> Projection:
        return getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias")


class GptNeoxMLP(nn.Module):
    """fc -> GELU -> proj."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.intermediate_size, bias=config.bias)
        self.proj = nn.Linear(config.intermediate_size, config.n_embd, bias=config.bias)
        self.activation = "gelu" if config.gelu_approximate == "none" else "gelu_tanh"  # a key of ACTIVATIONS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.activate(self.fc(x)))

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.activation](h)

    def projections(self) -> tuple[Projection, Projection]:
        """The input map (fc) and output map (proj) around `activate`."""
        return linear_map(self.fc), linear_map(self.proj)


class LLaMAMLP(nn.Module):
    """SwiGLU: proj(silu(fc_1 x) * fc_2 x), intermediate_size wide (default: config.intermediate_size)."""

    activation = "swiglu"  # a key of ACTIVATIONS

    def __init__(self, config: Config, intermediate_size: Optional[int] = None) -> None:
        super().__init__()
        width = config.intermediate_size if intermediate_size is None else intermediate_size
        self.fc_1 = nn.Linear(config.n_embd, width, bias=config.bias)
        self.fc_2 = nn.Linear(config.n_embd, width, bias=config.bias)
        self.proj = nn.Linear(width, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.silu(self.fc_1(x)) * self.fc_2(x))

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        """h = [fc_1 x | fc_2 x] (..., 2 * intermediate) -> the gated activation (..., intermediate)."""
        return ACTIVATIONS[self.activation](h)

    def projections(self) -> tuple[Projection, Projection]:
        """The input map [fc_1 | fc_2] and output map (proj) around `activate`."""
        return stack_outputs(linear_map(self.fc_1), linear_map(self.fc_2)), linear_map(self.proj)


def build_mlp(config: Config, block_idx: int) -> nn.Module:
    """Block block_idx's MLP: the mixture of experts in the layers `config.moe_layers` lists (the other layers of an
    MoE config keep a dense LLaMAMLP), else config.mlp_class_name's."""
    if block_idx in config.moe_layers:
        n_shared = config.n_shared_expert
        shared = LLaMAMLP(config, n_shared * config.moe_intermediate_size) if n_shared else None
        return LLaMAMoE(config, shared)
    return GptNeoxMLP(config) if config.mlp_class_name == "GptNeoxMLP" else LLaMAMLP(config)


def init_weights(model: GPT) -> None:
    """GPT-NeoX "small init": N(0, sqrt(2/(5 d))) everywhere, output projections scaled by 1/(sqrt(d) n_layer)
    (experts' included); DeepSeek-V3's selection bias starts at zero."""
    n_embd, n_layer = model.config.n_embd, model.config.n_layer
    std = math.sqrt(2.0 / (5 * n_embd))
    out_std = 1 / math.sqrt(n_embd) / n_layer
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            is_output = name.endswith(("attn.proj", "attn.o_b_proj", "mlp.proj", "shared_experts.proj"))
            nn.init.normal_(module.weight, mean=0.0, std=out_std if is_output else std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, RMSNorm)):
            module.reset_parameters()
        elif isinstance(module, Experts):
            nn.init.normal_(module.fc_weight, mean=0.0, std=std)
            nn.init.normal_(module.proj_weight, mean=0.0, std=out_std)
            for bias in (module.fc_bias, module.proj_bias):
                if bias is not None:
                    nn.init.zeros_(bias)
        elif isinstance(module, Router):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.e_score_correction_bias is not None:
                nn.init.zeros_(module.e_score_correction_bias)
