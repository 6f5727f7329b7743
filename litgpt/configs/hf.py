"""Hugging Face config.json -> our `Config` fields: the one mapping behind both the named configs
(`litgpt.configs`) and the checkpoint converter (`litgpt.scripts.convert_hf_checkpoint`).

Architectures taken: GPT-NeoX; Llama (unscaled, linear or llama3 rope), Qwen2 (Llama with q/k/v biases), Mistral
(Llama where the sliding window covers the whole context); DeepSeek-V2/V3 and the families transformers builds from
DeepSeek-V3's modules unchanged: GLM-4.7-Flash (Glm4MoeLiteForCausalLM, its dense/sparse pattern `mlp_layer_types`)
and Youtu-LLM (YoutuForCausalLM, dense, tied). The other MLA families of transformers are refused with the reason
(`REFUSED_ARCHITECTURES`).
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any, Optional

from litgpt.config import Config
from litgpt.rope import rope_attention_factor

GPT_NEOX = "GPTNeoXForCausalLM"
LLAMA = "LlamaForCausalLM"
QWEN2 = "Qwen2ForCausalLM"
MISTRAL = "MistralForCausalLM"
DEEPSEEK_V2 = "DeepseekV2ForCausalLM"
DEEPSEEK_V3 = "DeepseekV3ForCausalLM"
GLM4_MOE_LITE = "Glm4MoeLiteForCausalLM"
YOUTU = "YoutuForCausalLM"
SUPPORTED_ARCHITECTURES = (GPT_NEOX, LLAMA, QWEN2, MISTRAL, DEEPSEEK_V2, DEEPSEEK_V3, GLM4_MOE_LITE, YOUTU)
LLAMA_LIKE = (LLAMA, QWEN2, MISTRAL)  # Llama's modules; Qwen2 adds q/k/v biases
DEEPSEEK_V3_LIKE = (DEEPSEEK_V3, GLM4_MOE_LITE, YOUTU)  # transformers builds these from DeepseekV3's modules
DEEPSEEK_FAMILY = (DEEPSEEK_V2, *DEEPSEEK_V3_LIKE)
MODEL_TYPES = {
    "gpt_neox": GPT_NEOX, "llama": LLAMA, "qwen2": QWEN2, "mistral": MISTRAL, "deepseek_v2": DEEPSEEK_V2,
    "deepseek_v3": DEEPSEEK_V3, "glm4_moe_lite": GLM4_MOE_LITE, "youtu": YOUTU,
}
# transformers' other MLA families (models with kv_lora_rank), by architecture and model_type: what we cannot express
REFUSED_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "MiniCPM3ForCausalLM": ("minicpm3", "longrope rope scaling and its scale_emb/scale_depth residual scaling"),
    "LongcatFlashForCausalLM": ("longcat_flash", "zero-computation experts and two attention/MLP pairs per layer"),
    "DeepseekV32ForCausalLM": ("deepseek_v32", "the sparse-attention indexer (index_topk) choosing the keys"),
    "GlmMoeDsaForCausalLM": ("glm_moe_dsa", "the sparse-attention indexer (index_topk) choosing the keys"),
    "AXK1ForCausalLM": ("axk1", "RMSNorm on the MoE output (post_mlp_layernorm)"),
    "AXK2ForCausalLM": ("axk2", "the sparse-attention indexer (index_topk) and gated norms"),
    "KimiLinearForCausalLM": ("kimi_linear", "linear-attention (KDA) layers between the MLA layers"),
    "BailingHybridForCausalLM": ("bailing_hybrid", "linear-attention (KDA) layers between the MLA layers"),
    "HYV4ForCausalLM": ("hy_v4", "the sparse-attention indexer, hyper-connections and attention sinks"),
    "Mistral4ForCausalLM": ("mistral4", "Llama 4's position-dependent query scaling and softmax group routing"),
    "Glm5NextForConditionalGeneration": ("glm5_next", "a multimodal model with linear-attention layers and an indexer"),
    "MistralLarge4ForConditionalGeneration": ("mistral_large4", "a multimodal model with an indexer and no-rope layers"),
    "HYV4VLForConditionalGeneration": ("hy_v4_vl", "a multimodal model (vision encoder) over hy_v4"),
    "Dots3NoteForConditionalGeneration": ("dots3_note", "a multimodal model (vision and audio encoders)"),
    "Dots3NoteForCausalLM": ("dots3_note", "a multimodal model (vision and audio encoders)"),
}
REFUSED_MODEL_TYPES = {family: arch for arch, (family, _) in REFUSED_ARCHITECTURES.items()}
GELU_APPROXIMATE = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh"}
# HF's DeepSeek q_a_layernorm/kv_a_layernorm are built with their default eps, not config.rms_norm_eps.
DEEPSEEK_LATENT_NORM_EPS = 1e-6
V2_TOPK_METHODS = {"greedy": False, "group_limited_greedy": True}  # transformers' DeepseekV2: group-limited or not
V3_GROUP_SCORES = 2  # transformers' DeepseekV3 scores a group by its best two experts
TIED_BY_DEFAULT = (YOUTU,)  # transformers' default tie_word_embeddings where config.json omits it


def architecture_of(hf_config: dict) -> str:
    """The supported architecture named by config.json (`architectures`, else `model_type`)."""
    names = list(hf_config.get("architectures") or [])
    model_type = hf_config.get("model_type")
    if not names and model_type in MODEL_TYPES:
        names = [MODEL_TYPES[model_type]]
    if not names and model_type in REFUSED_MODEL_TYPES:
        names = [REFUSED_MODEL_TYPES[model_type]]
    arch = names[0] if len(names) == 1 else ", ".join(names) or "<none given>"
    if arch in REFUSED_ARCHITECTURES:
        family, reason = REFUSED_ARCHITECTURES[arch]
        raise ValueError(f"unsupported architecture {arch} (transformers' {family}): our model has no {reason}")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"unsupported architecture {arch}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    return arch


def _rope_params(hf: dict) -> tuple[str, dict]:
    """The rope type and settings from `rope_parameters` (transformers >= 5) over the legacy `rope_scaling`."""
    params = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
    return params.get("rope_type") or params.get("type") or "default", params


def _theta(hf: dict, params: dict, legacy_key: str = "rope_theta") -> float:
    theta = float(params.get("rope_theta", hf.get(legacy_key, hf.get("rope_theta", 10000.0))))
    return int(theta) if theta.is_integer() else theta


def _rope(hf: dict, arch: str, legacy_key: str = "rope_theta") -> dict:
    """rope_base, rope_condense_ratio and rope_adjustments for a dense model's config.json: unscaled rope, linear
    scaling (positions divided by an integer factor: our condense ratio) or Llama 3's scaling."""
    rope_type, params = _rope_params(hf)
    fields: dict[str, Any] = dict(rope_base=_theta(hf, params, legacy_key))
    if rope_type == "default":
        return fields
    factor = params.get("factor")
    if rope_type == "linear":
        if not isinstance(factor, (int, float)) or factor < 1 or not float(factor).is_integer():
            raise ValueError(f"{arch}: linear rope scaling factor {factor!r} is not supported; rope_condense_ratio "
                             "takes a whole number >= 1")
        return dict(fields, rope_condense_ratio=int(factor))
    if rope_type == "llama3":
        original = params.get("original_max_position_embeddings")
        return dict(fields, rope_adjustments=dict(
            factor=float(factor), low_freq_factor=float(params.get("low_freq_factor")),
            high_freq_factor=float(params.get("high_freq_factor")), original_max_seq_len=int(original),
        ))
    raise ValueError(f"{arch}: rope scaling {rope_type!r} is not supported (only unscaled, 'linear' and 'llama3' rope "
                     "convert for this architecture)")


def _deepseek_rope(hf: dict, arch: str) -> tuple[float, Optional[dict]]:
    """rope_theta and our `rope_adjustments` (None without scaling) for a DeepSeek config.json, as transformers
    computes them; only YaRN converts."""
    rope_type, params = _rope_params(hf)
    base = _theta(hf, params)
    if rope_type == "default":
        return base, None
    if rope_type != "yarn":
        raise ValueError(f"{arch}: rope scaling {rope_type!r} is not supported (only 'yarn' and unscaled rope convert)")
    original = params.get("original_max_position_embeddings") or hf.get("max_position_embeddings", 2048)
    factor = params.get("factor") or hf.get("max_position_embeddings", 2048) / original
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
    if not (mscale and mscale_all_dim):
        if mscale_all_dim:
            raise ValueError(
                f"{arch}: YaRN with mscale_all_dim={mscale_all_dim} but mscale={mscale!r} is not supported "
                "(transformers then scales the softmax by mscale_all_dim but the rope by ln(factor) alone)"
            )
        mscale, mscale_all_dim = 1.0, 0.0  # transformers without both: the rope scaled by mscale(factor, 1) alone
    adjustments = dict(
        factor=float(factor), original_max_seq_len=int(original), beta_fast=float(params.get("beta_fast") or 32),
        beta_slow=float(params.get("beta_slow") or 1), mscale=float(mscale), mscale_all_dim=float(mscale_all_dim),
        truncate=bool(params.get("truncate", True)),
    )
    attention_factor = params.get("attention_factor")
    if attention_factor is not None and not math.isclose(attention_factor, rope_attention_factor(adjustments)):
        raise ValueError(
            f"{arch}: YaRN attention_factor={attention_factor} is not supported: ours follows from factor, mscale and "
            f"mscale_all_dim ({rope_attention_factor(adjustments):.6g} here)"
        )
    return base, adjustments


def _moe_layer_pattern(hf: dict, arch: str) -> tuple[int, int]:
    """(first_k_dense_replace, moe_layer_freq): from `mlp_layer_types` where given (GLM's list of 'dense'/'sparse';
    transformers' Glm4MoeLite default: the first layer dense), else DeepSeek's keys."""
    n_layer = hf["num_hidden_layers"]
    types = hf.get("mlp_layer_types")
    if types is None and arch == GLM4_MOE_LITE:
        types = ["dense"] + ["sparse"] * (n_layer - 1)
    if types is None:
        return hf.get("first_k_dense_replace") or 0, hf.get("moe_layer_freq") or 1
    first = types.index("sparse") if "sparse" in types else len(types)
    if len(types) != n_layer or types != ["dense"] * first + ["sparse"] * (n_layer - first):
        raise ValueError(f"{arch}: mlp_layer_types {types} is not supported; our layers are dense up to "
                         "first_k_dense_replace and MoE after it ('dense', ..., 'sparse', ...), one per layer")
    return first, 1


def _deepseek_moe(hf: dict, arch: str, warn: bool) -> dict:
    """Our MoE fields for a DeepSeek config.json, or {} when no layer is MoE (n_routed_experts null or 0, or every
    layer dense)."""
    n_layer, experts = hf["num_hidden_layers"], hf.get("n_routed_experts")
    first_dense, every = _moe_layer_pattern(hf, arch)
    if not experts or not any(i % every == 0 for i in range(first_dense, n_layer)):
        return {}
    fields: dict[str, Any] = dict(
        mlp_class_name="LLaMAMoE",
        n_expert=experts,
        n_expert_per_token=hf["num_experts_per_tok"],
        moe_intermediate_size=hf["moe_intermediate_size"],
        n_shared_expert=hf.get("n_shared_experts") or None,
        first_k_dense_replace=first_dense or None,
        moe_layer_freq=every,
        routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
        norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
    )
    if arch == DEEPSEEK_V2:
        method = hf.get("topk_method") or "greedy"
        if method not in V2_TOPK_METHODS:
            raise ValueError(f"{arch}: topk_method {method!r} is not supported; use one of {sorted(V2_TOPK_METHODS)}")
        fields.update(moe_scoring="softmax")
        if V2_TOPK_METHODS[method]:
            fields.update(n_expert_groups=hf["n_group"], n_topk_groups=hf["topk_group"], n_topk_scores_per_group=1)
        if fields["norm_topk_prob"] and warn:
            warnings.warn(
                f"{arch}: norm_topk_prob=true, which transformers' DeepseekV2 ignores; the converted model "
                "renormalises the routing weights as DeepSeek's reference code does, so its outputs differ from "
                "transformers'",
                stacklevel=4,
            )
    else:
        fields.update(moe_scoring="sigmoid")
        if (hf.get("n_group") or 1) > 1:  # one group keeps every expert: no group limit
            fields.update(n_expert_groups=hf["n_group"], n_topk_groups=hf["topk_group"],
                          n_topk_scores_per_group=V3_GROUP_SCORES)
    return fields


def _require_silu(hf: dict, arch: str) -> None:
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{arch}: hidden_act {hf['hidden_act']!r} is not supported; the gated MLP uses silu")


def _vocab(hf: dict, arch: str) -> dict:
    # The HF embedding has vocab_size rows; it is already padded as the checkpoint needs it.
    tied = bool(hf.get("tie_word_embeddings", arch in TIED_BY_DEFAULT))
    return dict(vocab_size=hf["vocab_size"], padded_vocab_size=hf["vocab_size"], tie_embeddings=tied)


def _neox_config(hf: dict) -> dict:
    act = hf.get("hidden_act", "gelu")
    if act not in GELU_APPROXIMATE:
        raise ValueError(f"{GPT_NEOX}: hidden_act {act!r} is not supported; use one of {sorted(GELU_APPROXIMATE)}")
    params = hf.get("rope_parameters") or {}
    rope = _rope(hf, GPT_NEOX, legacy_key="rotary_emb_base")
    if set(rope) != {"rope_base"}:
        raise ValueError(f"{GPT_NEOX}: rope scaling is not supported (only unscaled rope converts)")
    return dict(
        block_size=hf.get("max_position_embeddings", 2048),
        n_layer=hf["num_hidden_layers"],
        n_embd=hf["hidden_size"],
        n_head=hf["num_attention_heads"],
        head_size=hf["hidden_size"] // hf["num_attention_heads"],
        rotary_percentage=float(params.get("partial_rotary_factor", hf.get("rotary_pct", 0.25))),
        parallel_residual=hf.get("use_parallel_residual", True),
        bias=True,  # the MLP and the norms always carry biases; attention's follow attention_bias (zero-filled)
        norm_class_name="LayerNorm",
        norm_eps=hf.get("layer_norm_eps", 1e-5),
        mlp_class_name="GptNeoxMLP",
        gelu_approximate=GELU_APPROXIMATE[act],
        intermediate_size=hf.get("intermediate_size") or 4 * hf["hidden_size"],
        **rope,
        **_vocab(hf, GPT_NEOX),
    )


def _refuse_sliding_window(hf: dict, arch: str) -> None:
    """Mistral attends through `sliding_window` (default 4096), Qwen2 where use_sliding_window (layers from
    max_window_layers on): refused unless the window covers max_position_embeddings, where it changes nothing."""
    if arch == MISTRAL:
        window = hf.get("sliding_window", 4096)
    elif arch == QWEN2 and (hf.get("use_sliding_window") or "sliding_attention" in (hf.get("layer_types") or ())):
        window = hf.get("sliding_window")
    else:
        return
    context = hf.get("max_position_embeddings", 2048)
    if window is not None and window < context:
        raise ValueError(
            f"{arch}: sliding_window={window} < max_position_embeddings={context} is not supported (no sliding-window "
            f"attention here); set max_position_embeddings to {window} in config.json to convert it for contexts up "
            "to its window, where it is exact"
        )


def _llama_config(hf: dict, arch: str) -> dict:
    _require_silu(hf, arch)
    _refuse_sliding_window(hf, arch)
    n_head = hf["num_attention_heads"]
    if arch == QWEN2:  # q/k/v always carry biases, o_proj and the MLP none
        biases = dict(bias=False, attn_bias=True)
    else:  # attention_bias covers q/k/v/o, mlp_bias the MLP; our `bias` covers both, missing ones are zero-filled
        biases = dict(bias=bool(hf.get("attention_bias", False) or hf.get("mlp_bias", False)))
    return dict(
        block_size=hf.get("max_position_embeddings", 2048),
        n_layer=hf["num_hidden_layers"],
        n_embd=hf["hidden_size"],
        n_head=n_head,
        n_query_groups=hf.get("num_key_value_heads") or n_head,
        head_size=hf.get("head_dim") or hf["hidden_size"] // n_head,
        rotary_percentage=1.0,
        parallel_residual=False,
        **biases,
        norm_class_name="RMSNorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        mlp_class_name="LLaMAMLP",
        intermediate_size=hf["intermediate_size"],
        **_rope(hf, arch),
        **_vocab(hf, arch),
    )


def _deepseek_config(hf: dict, arch: str, warn: bool) -> dict:
    _require_silu(hf, arch)
    rope_base, rope_adjustments = _deepseek_rope(hf, arch)
    eps = hf.get("rms_norm_eps", 1e-6)
    if warn and not math.isclose(eps, DEEPSEEK_LATENT_NORM_EPS):
        warnings.warn(
            f"{arch}: rms_norm_eps={eps} but HF's q_a/kv_a norms use eps={DEEPSEEK_LATENT_NORM_EPS}; our model uses "
            "norm_eps for every norm, so outputs differ slightly",
            stacklevel=4,
        )
    nope, rope = hf["qk_nope_head_dim"], hf["qk_rope_head_dim"]
    attention_bias = bool(hf.get("attention_bias", False))
    return dict(
        block_size=hf.get("max_position_embeddings", 2048),
        n_layer=hf["num_hidden_layers"],
        n_embd=hf["hidden_size"],
        n_head=hf["num_attention_heads"],
        head_size=nope + rope,  # informational for MLA: the query/key head width
        # rotary_percentage stays at its default: MLA rotates the whole decoupled key, qk_rope_head_dim wide
        rope_base=rope_base,
        rope_adjustments=rope_adjustments,
        # V2 rotates complex pairs (2i, 2i+1); V3 has a flag. HF's V3 interleaved path writes its output
        # de-interleaved, but q and k alike, so scores equal ours with rope_interleave=True unpermuted.
        rope_interleave=True if arch == DEEPSEEK_V2 else bool(hf.get("rope_interleave", True)),
        parallel_residual=False,
        # HF attention_bias: q_a_proj, kv_a_proj_with_mqa (our attn_bias) and o_proj (our bias); mlp_bias: MLP.
        # Our `bias` also gives q_proj/q_b_proj/kv_b_proj/MLP biases, which are zero-filled.
        attn_bias=attention_bias,
        bias=attention_bias or bool(hf.get("mlp_bias", False)),
        norm_class_name="RMSNorm",
        norm_eps=eps,
        intermediate_size=hf["intermediate_size"],
        **(_deepseek_moe(hf, arch, warn) or dict(mlp_class_name="LLaMAMLP")),
        latent_attention=dict(
            q_lora_rank=hf.get("q_lora_rank"),
            kv_lora_rank=hf["kv_lora_rank"],
            qk_rope_head_dim=rope,
            qk_nope_head_dim=nope,
            v_head_dim=hf["v_head_dim"],
        ),
        **_vocab(hf, arch),
    )


def hf_id(hf_config: dict) -> dict:
    """`hf_config` (org, name) from config.json's `_name_or_path` when it is a hub id, else {}."""
    name_or_path = str(hf_config.get("_name_or_path") or "")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name_or_path) and not Path(name_or_path).exists():
        org, repo = name_or_path.split("/")
        return dict(org=org, name=repo)
    return {}


def config_fields_from_hf(hf_config: dict, name: str = "", warn: bool = True) -> dict[str, Any]:
    """Our `Config` fields for a Hugging Face config.json dict (one-line ValueError for what we cannot express).
    `name` defaults to the last part of `_name_or_path`; `warn=False` leaves out the warnings about small
    differences (the latent norms' eps, V2's norm_topk_prob)."""
    arch = architecture_of(hf_config)
    try:
        if arch == GPT_NEOX:
            fields = _neox_config(hf_config)
        elif arch in LLAMA_LIKE:
            fields = _llama_config(hf_config, arch)
        else:
            fields = _deepseek_config(hf_config, arch, warn)
    except KeyError as e:
        raise ValueError(f"{arch}: config.json has no {e.args[0]!r}, which this architecture needs; use the model's "
                         "complete config.json") from None
    name = name or Path(str(hf_config.get("_name_or_path") or "")).name
    return dict(name=name, hf_config=hf_id(hf_config), **fields)


def config_from_hf(hf_config: dict, name: str = "", warn: bool = True) -> Config:
    """Our `Config` for a Hugging Face config.json dict (see `config_fields_from_hf`)."""
    return Config(**config_fields_from_hf(hf_config, name, warn))


__all__ = [
    "DEEPSEEK_FAMILY", "DEEPSEEK_LATENT_NORM_EPS", "DEEPSEEK_V2", "DEEPSEEK_V3", "DEEPSEEK_V3_LIKE", "GLM4_MOE_LITE",
    "GPT_NEOX", "LLAMA", "LLAMA_LIKE", "MISTRAL", "MODEL_TYPES", "QWEN2", "REFUSED_ARCHITECTURES",
    "SUPPORTED_ARCHITECTURES", "V3_GROUP_SCORES", "YOUTU", "architecture_of", "config_fields_from_hf",
    "config_from_hf", "hf_id",
]
