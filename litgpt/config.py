"""Model configuration: the `Config` dataclass, its validation, and the named configs.

Field names follow upstream litgpt wherever the same concept exists, so `model_config.yaml` files move
between the two. Everything derived (head size, padded vocabulary, MLA dimensions) is filled in and
checked in one place, `Config.__post_init__`.
"""

from __future__ import annotations

import math
import warnings
from copy import deepcopy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

NORM_CLASSES = ("LayerNorm", "RMSNorm")
MLP_CLASSES = ("GptNeoxMLP", "LLaMAMLP", "LLaMAMoE")
# How a router scores experts (`litgpt.moe.Router`): DeepSeek-V2 (softmax over all experts, then top-k), DeepSeek-V3
# (sigmoid, top-k of sigmoid + e_score_correction_bias) and Mixtral/Switch (top-k of the logits, softmax over those k).
MOE_SCORINGS = ("softmax", "sigmoid", "topk_softmax")
MOE_AUX_LOSSES = ("switch", "sequence")  # over the whole batch (Switch Transformer) or per sequence (DeepSeek-V3)
# MoE fields at the values that mean "no MoE": a config whose MLP is not LLaMAMoE must leave them there
MOE_DEFAULTS: dict[str, Any] = dict(
    moe_intermediate_size=None, n_expert=0, n_expert_per_token=0, n_shared_expert=None, n_expert_groups=None,
    n_topk_groups=None, n_topk_scores_per_group=None, first_k_dense_replace=None, routed_scaling_factor=1.0,
    norm_topk_prob=False, moe_scoring=None, moe_layer_freq=1, moe_bias_update_rate=0.0, moe_aux_loss=None,
    moe_aux_loss_weight=0.0,
)
# Our fields that upstream litgpt's Config does not have: `save` leaves each out of model_config.yaml while it means
# what upstream litgpt assumes without it (`upstream_implied`): no MoE extras, scoring as upstream derives it from
# n_expert_groups, every layer past first_k_dense_replace MoE, untied embeddings. So the yaml of every dense model
# and of every MoE model upstream can express stays loadable by upstream litgpt, which rejects unknown keys.
LITGPT_ONLY_FIELDS = (
    "moe_scoring", "moe_layer_freq", "moe_bias_update_rate", "moe_aux_loss", "moe_aux_loss_weight", "tie_embeddings"
)
# rope_adjustments (upstream litgpt's name and keys): YaRN, as DeepSeek defines it. Required keys, then the optional
# ones with their defaults (DeepSeek's: mscale 1, mscale_all_dim 0, truncated correction range).
YARN_REQUIRED_KEYS = ("factor", "original_max_seq_len", "beta_fast", "beta_slow")
YARN_DEFAULTS: dict[str, Any] = dict(mscale=1.0, mscale_all_dim=0.0, truncate=True)
# ... or Llama 3.1's scaling (upstream litgpt's keys; `litgpt.rope.llama3_frequencies`), told apart from YaRN by
# low_freq_factor / high_freq_factor
LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_seq_len")
LATENT_ATTENTION_KEYS = ("q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
# Optional latent_attention keys (ours, MLA-o): a low-rank output map h*d_v -> o_latent_dim -> n_embd, with an
# optional RMSNorm on that output latent. Absent or None/false: MLA's one output map `proj`.
LATENT_ATTENTION_OPTIONAL_KEYS = ("o_latent_dim", "o_latent_norm")
DEFAULT_ROTARY_PERCENTAGE = 0.25
# rotary_percentage values an MLA config may carry, although MLA sets its rope width with qk_rope_head_dim: the
# default, and 1.0 (the whole decoupled rope key rotated), which upstream litgpt's MLA model_config.yaml files hold.
MLA_ROTARY_PERCENTAGES = (DEFAULT_ROTARY_PERCENTAGE, 1.0)
# The largest block_size accepted: 16,777,216 positions, past every released model's context (10M at most). GPT builds
# its rope cache for block_size positions at once, so a typo like 10**9 would otherwise allocate many GB.
MAX_BLOCK_SIZE = 2**24


@dataclass(frozen=True)
class LatentAttentionDims:
    """Resolved MLA dimensions (DeepSeek-V2 notation in comments)."""

    q_lora_rank: Optional[int]  # d_q; None means a full-rank query projection
    kv_lora_rank: int  # d_c, the width of the cached latent
    qk_rope_head_dim: int  # d_R, the decoupled rope key shared by all heads
    qk_nope_head_dim: int  # d_n
    v_head_dim: int  # d_v
    o_latent_dim: Optional[int] = None  # MLA-o: the output latent's width (None: one output map `proj`)
    o_latent_norm: bool = False  # MLA-o: RMSNorm on the output latent

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def cache_width(self) -> int:
        """Values cached per token per layer: the latent plus the rope key."""
        return self.kv_lora_rank + self.qk_rope_head_dim


@dataclass
class Config:
    """Architecture of a GPT. Derived fields left as None are computed from the others."""

    name: str = ""
    hf_config: dict = field(default_factory=dict)
    block_size: int = 4096
    n_layer: int = 16
    n_embd: int = 4096
    vocab_size: int = 50254
    padding_multiple: int = 512
    padded_vocab_size: Optional[int] = None
    n_head: int = 32
    head_size: Optional[int] = None
    n_query_groups: Optional[int] = None
    rotary_percentage: float = DEFAULT_ROTARY_PERCENTAGE
    rope_base: int = 10000
    rope_condense_ratio: int = 1
    rope_interleave: bool = False
    parallel_residual: bool = True
    shared_attention_norm: bool = False
    bias: bool = True
    attn_bias: bool = False
    lm_head_bias: bool = False
    norm_class_name: Literal["LayerNorm", "RMSNorm"] = "LayerNorm"
    norm_eps: float = 1e-5
    mlp_class_name: Literal["GptNeoxMLP", "LLaMAMLP", "LLaMAMoE"] = "GptNeoxMLP"
    gelu_approximate: str = "none"
    intermediate_size: Optional[int] = None
    scale_embeddings: bool = False
    latent_attention: Optional[Union[bool, dict]] = None
    rope_adjustments: Optional[dict] = None  # YaRN (YARN_REQUIRED_KEYS, YARN_DEFAULTS) or Llama 3 (LLAMA3_ROPE_KEYS)
    # mixture of experts (mlp_class_name "LLaMAMoE", `litgpt.moe`); upstream litgpt's names first, then ours
    moe_intermediate_size: Optional[int] = None  # routed and shared expert width (default: intermediate_size)
    n_expert: int = 0  # routed experts
    n_expert_per_token: int = 0  # top-k
    n_shared_expert: Optional[int] = None  # always-on experts, run as one MLP n_shared_expert times as wide
    n_expert_groups: Optional[int] = None  # group-limited routing: experts in groups, tokens pick n_topk_groups
    n_topk_groups: Optional[int] = None
    n_topk_scores_per_group: Optional[int] = None  # a group's score: its best this many (V2: 1, V3: 2)
    first_k_dense_replace: Optional[int] = None  # the first k layers keep a dense LLaMAMLP
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = False  # renormalise the k routing weights to sum to one
    moe_scoring: Optional[Literal["softmax", "sigmoid", "topk_softmax"]] = None  # MOE_SCORINGS; default as upstream
    moe_layer_freq: int = 1  # past first_k_dense_replace, every moe_layer_freq-th layer is MoE
    moe_bias_update_rate: float = 0.0  # DeepSeek-V3's auxiliary-loss-free balancing step size (sigmoid scoring)
    moe_aux_loss: Optional[Literal["switch", "sequence"]] = None  # MOE_AUX_LOSSES
    moe_aux_loss_weight: float = 0.0
    # lm_head's weight is the embedding's Parameter (Llama 3.2, Qwen2.5-0.5B, SmolLM2); state dicts keep both keys
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            self.name = self.hf_config.get("name", "")
        _require_positive(self, ("block_size", "n_layer", "n_embd", "vocab_size", "padding_multiple", "n_head"))
        if self.head_size is None:
            if self.n_embd % self.n_head:
                raise ValueError(
                    f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}), or set head_size explicitly"
                )
            self.head_size = self.n_embd // self.n_head
        if self.padded_vocab_size is None:
            self.padded_vocab_size = _find_multiple(self.vocab_size, self.padding_multiple)
        else:
            self.vocab_size = min(self.vocab_size, self.padded_vocab_size)
        if self.n_query_groups is None:
            self.n_query_groups = self.n_head
        if self.intermediate_size is None:
            if self.mlp_class_name in ("LLaMAMLP", "LLaMAMoE"):
                raise ValueError(f"intermediate_size must be set when mlp_class_name is {self.mlp_class_name!r}")
            self.intermediate_size = 4 * self.n_embd
        if self.mlp_class_name == "LLaMAMoE":
            self._resolve_moe()
        if self.rope_adjustments is not None:
            if not isinstance(self.rope_adjustments, dict):
                raise ValueError(
                    f"rope_adjustments must be a dict of YaRN or Llama 3 settings, got {self.rope_adjustments!r}"
                )
            given = self.rope_adjustments
            if not _is_llama3(given):
                self.rope_adjustments = {**given, **{k: given.get(k, v) for k, v in YARN_DEFAULTS.items()}}
        if self.latent_attention is True:
            hs = self.head_size
            self.latent_attention = dict(
                q_lora_rank=None, kv_lora_rank=4 * hs, qk_rope_head_dim=hs // 2, qk_nope_head_dim=hs, v_head_dim=hs
            )
        elif self.latent_attention is False:
            self.latent_attention = None
        self._validate()
        self._check_sizes()

    def _check_sizes(self) -> None:
        """Refuse an implausible block_size (what its rope cache would allocate), and warn about an MLA latent that
        makes the KV cache larger than MHA's or is wider than the model."""
        if self.block_size > MAX_BLOCK_SIZE:
            rope_bytes = self.block_size * self.rope_n_elem * 2 * 4  # cos and sin, float32
            raise ValueError(
                f"block_size {self.block_size:,} is past any model's context (at most {MAX_BLOCK_SIZE:,} here): the "
                f"rope cache alone would allocate {rope_bytes / 1e9:,.1f} GB at model build; set block_size to the "
                "context the model trains or generates with (e.g. 4096)"
            )
        mla = self.mla
        if mla is None:
            return
        mha_values = 2 * self.n_head * self.head_size  # one layer's K and V per token for MHA with these heads
        if mla.kv_lora_rank <= self.n_embd and mla.cache_width <= mha_values:
            return
        per_token = self.n_layer * 2  # bytes per cached value over all layers, in bf16
        suggested = min(4 * self.head_size, self.n_embd)
        wide = ", and a latent wider than n_embd holds no more than n_embd values would" if (
            mla.kv_lora_rank > self.n_embd) else ""
        warnings.warn(
            f"latent_attention.kv_lora_rank={mla.kv_lora_rank} is implausible for n_embd={self.n_embd}: the MLA KV "
            f"cache takes {mla.cache_width * per_token:,} bytes per token (bf16, {self.n_layer} layers) against "
            f"{mha_values * per_token:,} for MHA ({mla.cache_width / mha_values:.2f}x){wide}; set kv_lora_rank so that "
            f"kv_lora_rank + qk_rope_head_dim stays well below MHA's {mha_values} values a layer and kv_lora_rank <= "
            f"n_embd, e.g. {suggested}{' (4 x head_size, as DeepSeek-V2)' if suggested == 4 * self.head_size else ''}",
            stacklevel=4,
        )

    def _resolve_moe(self) -> None:
        """Fill the MoE fields left to defaults: scoring as upstream litgpt reads its configs (grouped experts:
        sigmoid, else top-k softmax), expert width, and a group's score (V2's best expert, V3's best two)."""
        if self.moe_scoring is None:
            self.moe_scoring = "sigmoid" if self.n_expert_groups else "topk_softmax"
        if self.moe_intermediate_size is None:
            self.moe_intermediate_size = self.intermediate_size
        if self.n_expert_groups and self.n_topk_scores_per_group is None:
            self.n_topk_scores_per_group = 2 if self.moe_scoring == "sigmoid" else 1

    def _validate(self) -> None:
        _require_positive(self, ("head_size", "padded_vocab_size", "n_query_groups", "intermediate_size"))
        self._validate_moe()
        if self.rope_adjustments is not None:
            (_validate_llama3 if _is_llama3(self.rope_adjustments) else _validate_yarn)(self.rope_adjustments)
        if self.padded_vocab_size < self.vocab_size:
            raise ValueError(f"padded_vocab_size ({self.padded_vocab_size}) must be >= vocab_size ({self.vocab_size})")
        if self.n_head % self.n_query_groups:
            raise ValueError(
                f"n_head ({self.n_head}) must be divisible by n_query_groups ({self.n_query_groups})"
            )
        if self.norm_class_name not in NORM_CLASSES:
            raise ValueError(f"norm_class_name must be one of {NORM_CLASSES}, got {self.norm_class_name!r}")
        if self.mlp_class_name not in MLP_CLASSES:
            raise ValueError(f"mlp_class_name must be one of {MLP_CLASSES}, got {self.mlp_class_name!r}")
        if self.gelu_approximate not in ("none", "tanh"):
            raise ValueError(f"gelu_approximate must be 'none' or 'tanh', got {self.gelu_approximate!r}")
        if not 0.0 <= self.rotary_percentage <= 1.0:
            raise ValueError(f"rotary_percentage must be in [0, 1], got {self.rotary_percentage}")
        if self.rope_base <= 0 or self.rope_condense_ratio <= 0:
            raise ValueError("rope_base and rope_condense_ratio must be positive")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps must be positive, got {self.norm_eps}")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"tie_embeddings must be true or false, got {self.tie_embeddings!r}")
        if self.tie_embeddings and self.lm_head_bias:
            raise ValueError("tie_embeddings=True shares the embedding as lm_head's weight; set lm_head_bias=False")
        if self.shared_attention_norm and not self.parallel_residual:
            raise ValueError("shared_attention_norm=True requires parallel_residual=True")
        if self.latent_attention is None:
            if self.rope_n_elem % 2:
                raise ValueError(
                    f"rotary_percentage * head_size = {self.rope_n_elem} rotary dims; the rope dimension must be even"
                )
            return
        if not isinstance(self.latent_attention, dict):
            raise ValueError(
                f"latent_attention must be true, false/null or a dict with keys {LATENT_ATTENTION_KEYS}, "
                f"got {self.latent_attention!r}"
            )
        unknown = sorted(set(self.latent_attention) - set(LATENT_ATTENTION_KEYS) - set(LATENT_ATTENTION_OPTIONAL_KEYS))
        missing = sorted(set(LATENT_ATTENTION_KEYS[1:]) - set(self.latent_attention))
        if unknown or missing:
            raise ValueError(
                f"latent_attention: unknown keys {unknown} / missing keys {missing}; expected {LATENT_ATTENTION_KEYS}"
                f" (optional: {LATENT_ATTENTION_OPTIONAL_KEYS})"
            )
        self._validate_output_latent()
        for key in LATENT_ATTENTION_KEYS:
            value = self.latent_attention.get(key)
            if key == "q_lora_rank" and value is None:
                continue
            if key == "qk_nope_head_dim" and value == 0 and not isinstance(value, bool):
                continue  # every query/key dim roped (no nope part): allowed
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                what = "a non-negative" if key == "qk_nope_head_dim" else "a positive"
                raise ValueError(f"latent_attention.{key} must be {what} integer, got {value!r}")
        if self.latent_attention["qk_rope_head_dim"] % 2:
            raise ValueError(
                f"latent_attention.qk_rope_head_dim must be even, got {self.latent_attention['qk_rope_head_dim']}"
            )
        if self.n_query_groups != self.n_head:
            raise ValueError(
                f"latent attention needs n_query_groups == n_head (got {self.n_query_groups} and {self.n_head}): "
                "MLA shares one latent across all heads, so grouping does not apply"
            )
        if not _mla_rotary_percentage(self.rotary_percentage):
            raise ValueError(
                f"rotary_percentage does not apply to latent attention (got {self.rotary_percentage}); set the rope "
                f"width with latent_attention.qk_rope_head_dim and leave rotary_percentage at {DEFAULT_ROTARY_PERCENTAGE}"
            )

    def _validate_output_latent(self) -> None:
        """One-line errors for the MLA-o keys: o_latent_dim a positive int <= n_embd (or None), o_latent_norm a bool
        that needs o_latent_dim."""
        o_dim = self.latent_attention.get("o_latent_dim")
        if o_dim is not None and (not isinstance(o_dim, int) or isinstance(o_dim, bool) or o_dim <= 0):
            raise ValueError(f"latent_attention.o_latent_dim must be a positive integer or null, got {o_dim!r}")
        if o_dim is not None and o_dim > self.n_embd:
            raise ValueError(f"latent_attention.o_latent_dim ({o_dim}) must be <= n_embd ({self.n_embd})")
        o_norm = self.latent_attention.get("o_latent_norm")
        if o_norm is not None and not isinstance(o_norm, bool):
            raise ValueError(f"latent_attention.o_latent_norm must be true or false, got {o_norm!r}")
        if o_norm and o_dim is None:
            raise ValueError("latent_attention.o_latent_norm needs latent_attention.o_latent_dim (the latent it norms)")

    def _validate_moe(self) -> None:
        """One-line errors naming the field for MoE settings that cannot work (or would be ignored)."""
        if self.mlp_class_name != "LLaMAMoE":
            for name, default in MOE_DEFAULTS.items():
                if not _same_value(getattr(self, name), default):
                    raise ValueError(
                        f"{name}={getattr(self, name)!r} needs mlp_class_name 'LLaMAMoE' (got {self.mlp_class_name!r})"
                    )
            return
        if self.moe_scoring not in MOE_SCORINGS:
            raise ValueError(f"moe_scoring must be one of {MOE_SCORINGS}, got {self.moe_scoring!r}")
        _require_positive(self, ("n_expert", "moe_intermediate_size", "moe_layer_freq"))
        e, k = self.n_expert, self.n_expert_per_token
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= e:
            raise ValueError(f"n_expert_per_token must be between 1 and n_expert ({e}), got {k!r}")
        _require_non_negative(self, ("n_shared_expert", "first_k_dense_replace"))
        if not self.moe_layers:
            raise ValueError(
                f"first_k_dense_replace={self.first_k_dense_replace} and moe_layer_freq={self.moe_layer_freq} leave "
                f"none of the {self.n_layer} layers MoE; use mlp_class_name 'LLaMAMLP'"
            )
        if self.n_expert_groups is None:
            for name in ("n_topk_groups", "n_topk_scores_per_group"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}={getattr(self, name)!r} needs n_expert_groups (group-limited routing)")
        else:
            if self.moe_scoring == "topk_softmax":
                raise ValueError("n_expert_groups needs moe_scoring 'softmax' or 'sigmoid'; 'topk_softmax' has no "
                                 "group-limited form")
            _require_positive(self, ("n_expert_groups",))
            groups = self.n_expert_groups
            if e % groups:
                raise ValueError(f"n_expert_groups ({groups}) must divide n_expert ({e})")
            per_group = e // groups
            topk_groups = self.n_topk_groups
            if not isinstance(topk_groups, int) or isinstance(topk_groups, bool) or not 1 <= topk_groups <= groups:
                raise ValueError(f"n_topk_groups must be between 1 and n_expert_groups ({groups}), got {topk_groups!r}")
            if topk_groups * per_group < k:
                raise ValueError(
                    f"n_topk_groups ({topk_groups}) groups of {per_group} experts hold fewer than n_expert_per_token "
                    f"({k}) experts"
                )
            scores = self.n_topk_scores_per_group
            if not isinstance(scores, int) or isinstance(scores, bool) or not 1 <= scores <= per_group:
                raise ValueError(
                    f"n_topk_scores_per_group must be between 1 and the {per_group} experts of a group, got {scores!r}"
                )
        if self.norm_topk_prob and self.moe_scoring == "topk_softmax":
            raise ValueError("norm_topk_prob has no effect with moe_scoring 'topk_softmax' (its weights already sum "
                             "to one); leave it false")
        if not self.routed_scaling_factor > 0:
            raise ValueError(f"routed_scaling_factor must be positive, got {self.routed_scaling_factor!r}")
        if not self.moe_bias_update_rate >= 0:
            raise ValueError(f"moe_bias_update_rate must be >= 0, got {self.moe_bias_update_rate!r}")
        if self.moe_bias_update_rate > 0 and self.moe_scoring != "sigmoid":
            raise ValueError(
                f"moe_bias_update_rate={self.moe_bias_update_rate} needs moe_scoring 'sigmoid' (the bias it updates, "
                f"e_score_correction_bias, is DeepSeek-V3's); got {self.moe_scoring!r}"
            )
        if self.moe_aux_loss is not None and self.moe_aux_loss not in MOE_AUX_LOSSES:
            raise ValueError(f"moe_aux_loss must be one of {MOE_AUX_LOSSES} or null, got {self.moe_aux_loss!r}")
        if not self.moe_aux_loss_weight >= 0:
            raise ValueError(f"moe_aux_loss_weight must be >= 0, got {self.moe_aux_loss_weight!r}")
        if (self.moe_aux_loss is None) != (self.moe_aux_loss_weight == 0):
            raise ValueError(
                f"moe_aux_loss ({self.moe_aux_loss!r}) and moe_aux_loss_weight ({self.moe_aux_loss_weight}) go "
                "together: set both (a kind and a positive weight) or neither"
            )

    # ------------------------------------------------------------------ derived properties
    @property
    def moe_layers(self) -> list[int]:
        """Indices of the layers whose MLP is the mixture of experts (DeepSeek's rule: from first_k_dense_replace on,
        every moe_layer_freq-th layer); empty for dense models."""
        if self.mlp_class_name != "LLaMAMoE":
            return []
        first = self.first_k_dense_replace or 0
        return [i for i in range(first, self.n_layer) if i % self.moe_layer_freq == 0]

    @property
    def mla(self) -> Optional[LatentAttentionDims]:
        """Resolved MLA dimensions, or None for MHA/GQA/MQA."""
        if self.latent_attention is None:
            return None
        la = self.latent_attention
        return LatentAttentionDims(
            **{k: la.get(k) for k in LATENT_ATTENTION_KEYS},
            o_latent_dim=la.get("o_latent_dim"),
            o_latent_norm=bool(la.get("o_latent_norm")),
        )

    @property
    def rope_n_elem(self) -> int:
        """Rotary dims per head: the decoupled rope key for MLA, a fraction of head_size otherwise."""
        if self.latent_attention is not None:
            return self.latent_attention["qk_rope_head_dim"]
        return int(self.rotary_percentage * self.head_size)

    @property
    def kv_values_per_token(self) -> int:
        """Values one layer's KV cache holds per token: 2*groups*head_size, or kv_lora_rank+rope for MLA."""
        if self.mla is not None:
            return self.mla.cache_width
        return 2 * self.n_query_groups * self.head_size

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_name(cls, name: str, **kwargs: Any) -> "Config":
        """A named config (see `Config.names()`), or the one whose Hugging Face id (`ORG/NAME`, its hf_config) is
        `name`, with fields overridden by `kwargs`.

        When `kwargs` turn the config into latent attention, the named config's rotary_percentage is not carried
        over (as in the `-mla` variants); one passed in `kwargs` is validated as usual.
        """
        row = named_config(name)
        if row is None:
            close = [n for n in cls.names() if name.split("/")[-1].split("-")[0].lower() in n.lower()][:8]
            hint = f" Similar: {', '.join(close)}." if close else ""
            raise ValueError(f"unknown model name {name!r}.{hint} See litgpt.Config.names() for all of them.")
        conf = deepcopy(row)
        conf.update(kwargs)
        if _is_mla(conf) and "rotary_percentage" not in kwargs:
            conf["rotary_percentage"] = DEFAULT_ROTARY_PERCENTAGE
        return cls.from_dict(conf, source=f"config {name!r}")

    @classmethod
    def names(cls) -> list[str]:
        """Every name `from_name` takes (besides Hugging Face ids): the built-in families (Pythia, debug and their
        -gqa/-mqa/-mla variants) and the published models of `litgpt.configs`."""
        from litgpt.configs import NAMES

        return sorted({*name_to_config, *NAMES})

    @classmethod
    def from_file(cls, path: Union[str, Path], **kwargs: Any) -> "Config":
        """Load a `model_config.yaml` (ours or upstream litgpt's)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model config file {str(path)!r} does not exist")
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
        data.update(kwargs)
        _warn_upstream_yarn(data.get("rope_adjustments"), path)
        rotary = data.get("rotary_percentage", DEFAULT_ROTARY_PERCENTAGE)
        if _is_mla(data) and "rotary_percentage" not in kwargs and not _mla_rotary_percentage(rotary):
            # written before MLA configs refused it; it never had an effect there, so the model loads unchanged
            warnings.warn(
                f"{path}: rotary_percentage={rotary} has no effect with latent attention (the rope width is "
                f"latent_attention.qk_rope_head_dim); loading it as {DEFAULT_ROTARY_PERCENTAGE}; re-save the config "
                "to silence this", stacklevel=2,
            )
            data["rotary_percentage"] = DEFAULT_ROTARY_PERCENTAGE
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "Config":
        """Build from a mapping, rejecting unknown keys and upstream options we do not implement."""
        known = {f.name for f in fields(cls)}
        data = dict(data)
        for key in list(data):
            if key in known:
                continue
            if key in UPSTREAM_UNSUPPORTED_DEFAULTS:
                if _same_value(data[key], UPSTREAM_UNSUPPORTED_DEFAULTS[key]):
                    del data[key]
                    continue
                raise ValueError(
                    f"{source}: field {key!r}={data[key]!r} is an upstream litgpt option this library does not "
                    f"implement; remove it or set it to {UPSTREAM_UNSUPPORTED_DEFAULTS[key]!r}"
                )
            raise ValueError(f"{source}: unknown config field {key!r}; valid fields: {', '.join(sorted(known))}")
        special = [s for s in UPSTREAM_NAME_SPECIFIC if s in str(data.get("name", ""))]
        if special:
            raise ValueError(
                f"{source}: name {data['name']!r} selects upstream litgpt's {special[0]}-specific norms, which this "
                "library does not implement; rename the model if its norms are standard"
            )
        return cls(**data)

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: Union[str, Path], **kwargs: Any) -> "Config":
        """Load `checkpoint_dir/model_config.yaml`."""
        checkpoint_dir = Path(checkpoint_dir)
        path = checkpoint_dir / "model_config.yaml"
        if not path.is_file():
            raise FileNotFoundError(
                f"{str(checkpoint_dir)!r} has no model_config.yaml; point at a directory written by "
                "`litgpt pretrain` or a conversion script"
            )
        return cls.from_file(path, **kwargs)

    def to_dict(self) -> dict:
        return asdict(self)

    def upstream_implied(self) -> dict[str, Any]:
        """For each of `LITGPT_ONLY_FIELDS`, the value upstream litgpt assumes for this config without the field:
        the "no MoE" defaults, but moe_scoring as upstream derives it (grouped experts: sigmoid, else top-k softmax)."""
        implied = {k: MOE_DEFAULTS[k] for k in LITGPT_ONLY_FIELDS if k in MOE_DEFAULTS}
        implied["tie_embeddings"] = False
        if self.mlp_class_name == "LLaMAMoE":
            implied["moe_scoring"] = "sigmoid" if self.n_expert_groups else "topk_softmax"
        return implied

    def save(self, path: Union[str, Path]) -> None:
        """Write as yaml (the `model_config.yaml` format), without our own fields where they mean what upstream
        litgpt assumes without them (`upstream_implied`): upstream litgpt rejects keys it does not know."""
        implied = self.upstream_implied()
        data = {k: v for k, v in self.to_dict().items() if not (k in implied and _same_value(v, implied[k]))}
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(data, f, sort_keys=False)


# What upstream litgpt's build_rope_cache does with YaRN rope_adjustments (read from Lightning-AI/litgpt's model.py):
# its ramp weights the unscaled frequencies, so it divides the fast ones by `factor` and keeps the slow ones, the
# reverse of DeepSeek's reference and transformers (which keep the fast and interpolate the slow), and it clamps the
# ramp's upper end at n_elem/2 - 1 instead of n_elem - 1.
UPSTREAM_YARN_DIFFERENCE = (
    "upstream litgpt computes YaRN differently from DeepSeek and transformers: its ramp keeps the slow rope frequencies "
    "and divides the fast ones by `factor` (DeepSeek and transformers keep the fast ones and interpolate the slow ones), "
    "so upstream litgpt gives this model other logits; this library follows DeepSeek"
)
_warned_upstream_yarn = False


def _warn_upstream_yarn(adjustments: Any, path: Path) -> None:
    """Warn once per process when a model_config.yaml holds YaRN rope_adjustments (see UPSTREAM_YARN_DIFFERENCE)."""
    global _warned_upstream_yarn
    if _warned_upstream_yarn or not isinstance(adjustments, dict) or _is_llama3(adjustments):
        return
    if "beta_fast" not in adjustments and "beta_slow" not in adjustments:
        return
    _warned_upstream_yarn = True
    warnings.warn(f"{path}: rope_adjustments are YaRN's; {UPSTREAM_YARN_DIFFERENCE}", stacklevel=3)


def named_config(name: str) -> Optional[dict]:
    """The fields (a row, not to be modified) of a named config: built-in, then `litgpt.configs` (derived from published config.json files, on first
    use), then by Hugging Face id `ORG/NAME`; None if there is none."""
    if name in name_to_config:
        return name_to_config[name]
    from litgpt import configs as published

    if name in published.HF_CONFIG_JSON:
        return published.rows()[name]
    if "/" in name:
        for row in (*configs, *published.rows().values()):
            hf = row.get("hf_config") or {}
            if hf and f"{hf.get('org')}/{hf.get('name')}" == name:
                return row
    return None


def _find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


def _require_positive(config: Config, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _require_non_negative(config: Config, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{name} must be a non-negative integer or null, got {value!r}")


def _is_llama3(adjustments: dict) -> bool:
    """Whether rope_adjustments hold Llama 3's settings rather than YaRN's (litgpt.rope.is_llama3)."""
    return "low_freq_factor" in adjustments or "high_freq_factor" in adjustments


def _require_scaling_numbers(adjustments: dict, keys: tuple[str, ...]) -> None:
    """The rope-scaling settings `keys` are finite numbers (not booleans), and `factor` is at least 1."""
    for key in keys:
        value = adjustments[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"rope_adjustments.{key} must be a number, got {value!r}")
    if adjustments["factor"] < 1:
        raise ValueError(f"rope_adjustments.factor must be >= 1, got {adjustments['factor']}")


def _validate_llama3(adjustments: dict) -> None:
    """Llama 3 rope scaling: exactly LLAMA3_ROPE_KEYS, numbers, factor >= 1, 0 < low_freq_factor < high_freq_factor."""
    unknown = sorted(set(adjustments) - set(LLAMA3_ROPE_KEYS))
    missing = [k for k in LLAMA3_ROPE_KEYS if k not in adjustments]
    if unknown or missing:
        raise ValueError(
            f"rope_adjustments (Llama 3 scaling): unknown keys {unknown} / missing keys {missing}; expected exactly "
            f"{LLAMA3_ROPE_KEYS}"
        )
    _require_scaling_numbers(adjustments, LLAMA3_ROPE_KEYS)
    if adjustments["original_max_seq_len"] <= 0 or not 0 < adjustments["low_freq_factor"] < adjustments[
            "high_freq_factor"]:
        raise ValueError(
            "rope_adjustments: Llama 3 scaling needs original_max_seq_len > 0 and 0 < low_freq_factor < "
            f"high_freq_factor, got {adjustments}"
        )


def _validate_yarn(adjustments: dict) -> None:
    """rope_adjustments without Llama 3's keys must be YaRN's settings."""
    known = (*YARN_REQUIRED_KEYS, *YARN_DEFAULTS)
    unknown = sorted(set(adjustments) - set(known))
    missing = [k for k in YARN_REQUIRED_KEYS if k not in adjustments]
    if unknown or missing:
        raise ValueError(
            f"rope_adjustments: unknown keys {unknown} / missing keys {missing}; YaRN takes {YARN_REQUIRED_KEYS} and "
            f"optional {tuple(YARN_DEFAULTS)}, Llama 3 scaling {LLAMA3_ROPE_KEYS}"
        )
    _require_scaling_numbers(adjustments, (*YARN_REQUIRED_KEYS, "mscale", "mscale_all_dim"))
    if adjustments["original_max_seq_len"] <= 0 or adjustments["beta_fast"] <= 0 or adjustments["beta_slow"] <= 0:
        raise ValueError("rope_adjustments.original_max_seq_len, beta_fast and beta_slow must be positive")
    if not isinstance(adjustments["truncate"], bool):
        raise ValueError(f"rope_adjustments.truncate must be true or false, got {adjustments['truncate']!r}")


def _is_mla(fields: dict) -> bool:
    """Whether config fields (before `Config` resolves them) select latent attention."""
    return fields.get("latent_attention") not in (None, False)


def _mla_rotary_percentage(value: Any) -> bool:
    """Whether an MLA config may carry this rotary_percentage (see MLA_ROTARY_PERCENTAGES)."""
    return any(_same_value(value, ok) for ok in MLA_ROTARY_PERCENTAGES)


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b))
        except (TypeError, ValueError):
            return False
    return a == b


# Upstream litgpt 0.5.13 Config fields that this library does not implement, with upstream's default.
# A yaml that sets one of them to its default loads fine; any other value is an error, never a silent ignore.
UPSTREAM_UNSUPPORTED_DEFAULTS: dict[str, Any] = {
    "norm_qk": False,
    "norm_qk_type": "default",
    "post_attention_norm": False,
    "post_mlp_norm": False,
    "norm_1": True,
    "norm_2": True,
    "attention_scores_scalar": None,
    "sliding_window_size": None,
    "sliding_window_indices": None,
    "attention_logit_softcapping": None,
    "final_logit_softcapping": None,
    "rope_local_base_freq": None,
    "rope_indices": None,
}
# Upstream switches norm behaviour on these substrings of `name` (unit-offset RMSNorm, affine-free LayerNorm).
UPSTREAM_NAME_SPECIFIC = ("Gemma", "OLMo")

# ---------------------------------------------------------------------------------------------------- named configs
_pythia = dict(
    vocab_size=50254,
    padding_multiple=128,
    rotary_percentage=0.25,
    parallel_residual=True,
    bias=True,
    norm_class_name="LayerNorm",
    mlp_class_name="GptNeoxMLP",
)
_base_configs: list[dict] = [
    dict(name="pythia-14m", block_size=512, n_layer=6, n_embd=128, n_head=4, **_pythia),
    dict(name="pythia-31m", block_size=1024, n_layer=6, n_embd=256, n_head=8, **_pythia),
    dict(name="pythia-70m", block_size=2048, n_layer=6, n_embd=512, n_head=8, **_pythia),
    dict(name="pythia-160m", block_size=2048, n_layer=12, n_embd=768, n_head=12, **_pythia),
    dict(name="pythia-410m", block_size=2048, n_layer=24, n_embd=1024, n_head=16, **_pythia),
]
for _c in _base_configs:
    _c["hf_config"] = dict(org="EleutherAI", name=_c["name"])
_base_configs += [
    # tiny family for tests and CPU smoke runs
    dict(
        name="debug",
        block_size=128,
        n_layer=2,
        n_embd=64,
        n_head=4,
        vocab_size=1024,
        padding_multiple=64,
        rotary_percentage=0.5,
        parallel_residual=True,
        bias=True,
    ),
]


# A small DeepSeek-MoE family: fine-grained routed experts (top-2 of 8) beside one shared expert, the first layer
# dense, V3 routing (sigmoid, auxiliary-loss-free bias balancing, a tiny sequence-wise aux loss). pythia-70m-moe's
# active MLP (2 routed + 1 shared SwiGLU of 512) matches its dense first layer (SwiGLU of 1536); 96M parameters
# in all, 72M active per token (pythia-70m: 70M).
_deepseek_moe = dict(
    mlp_class_name="LLaMAMoE",
    n_expert=8,
    n_expert_per_token=2,
    n_shared_expert=1,
    first_k_dense_replace=1,
    moe_scoring="sigmoid",
    norm_topk_prob=True,
    moe_bias_update_rate=0.001,
    moe_aux_loss="sequence",
    moe_aux_loss_weight=0.0001,
)
_dense = {c["name"]: c for c in _base_configs}
_base_configs += [
    dict(_dense["pythia-70m"], name="pythia-70m-moe", hf_config={}, intermediate_size=1536, moe_intermediate_size=512,
         **_deepseek_moe),
    # tiny, for tests: a dense layer, then an MoE layer with two groups of two experts
    dict(_dense["debug"], name="debug-moe", intermediate_size=96, moe_intermediate_size=32,
         **{**_deepseek_moe, "n_expert": 4, "n_expert_groups": 2, "n_topk_groups": 1, "moe_bias_update_rate": 0.01}),
]


def _variants(base: dict) -> list[dict]:
    """A base config plus its -gqa (n_head/4 groups), -mqa, -mla (latent_attention: true) and MLA-o variants: -mla-o2
    and -mla-o4, the -mla shapes with an output latent of n_embd/2 and n_embd/4 (`o_latent_dim`).

    The MLA variants take the default rotary_percentage: MLA's rope width is latent_attention.qk_rope_head_dim.
    """
    out = [base]
    hs = base.get("head_size") or base["n_embd"] // base["n_head"]
    mla = dict(q_lora_rank=None, kv_lora_rank=4 * hs, qk_rope_head_dim=hs // 2, qk_nope_head_dim=hs, v_head_dim=hs)
    for suffix, override in (
        ("gqa", dict(n_query_groups=max(1, base["n_head"] // 4))),
        ("mqa", dict(n_query_groups=1)),
        ("mla", dict(latent_attention=True, rotary_percentage=DEFAULT_ROTARY_PERCENTAGE)),
        *(
            (f"mla-o{d}", dict(latent_attention={**mla, "o_latent_dim": base["n_embd"] // d},
                               rotary_percentage=DEFAULT_ROTARY_PERCENTAGE))
            for d in (2, 4)
        ),
    ):
        variant = deepcopy(base)
        variant.update(override, name=f"{base['name']}-{suffix}")
        out.append(variant)
    return out


configs: list[dict] = [variant for base in _base_configs for variant in _variants(base)]
name_to_config: dict[str, dict] = {c["name"]: c for c in configs}
