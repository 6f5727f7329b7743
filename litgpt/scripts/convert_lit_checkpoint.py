"""Convert our checkpoint (`lit_model.pth` + `model_config.yaml`) into a Hugging Face model directory.

    python -m litgpt.scripts.convert_lit_checkpoint out/pretrain/final out/hf

Writes `model.safetensors` and `config.json` for the HF architecture that computes the same function:
GPTNeoXForCausalLM (LayerNorm + GptNeoxMLP, MHA), LlamaForCausalLM (sequential RMSNorm + LLaMAMLP; Llama 3 rope
scaling as rope_type llama3, rope_condense_ratio as rope_type linear), Qwen2ForCausalLM (the same with q/k/v biases
only: attn_bias without bias) or DeepseekV3ForCausalLM (MLA, sequential RMSNorm + LLaMAMLP or V3-routed LLaMAMoE, YaRN); DeepseekV2ForCausalLM
on request, and by default for MoE models with V2's softmax routing. Routed experts are written per expert
(`mlp.experts.{i}.gate_proj.weight`, what `save_pretrained` writes and every reader takes) or, with
`--expert_layout fused`, in transformers 5's fused tensors (`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`).

Tied embeddings: when the checkpoint's `lm_head.weight` is `transformer.wte.weight` (one tensor, as in upstream
litgpt conversions of tied models such as SmolLM2) or equals it, the HF model is written tied the way
transformers saves one: `tie_word_embeddings: true` and the embedding stored once, without the head.
`--tie_embeddings false` writes two separate copies instead.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from pathlib import Path
from typing import Any, Literal, Optional

import torch

from litgpt.checkpoint import extract_state_dict, read_checkpoint_file
from litgpt.config import Config
from litgpt.scripts.convert_hf_checkpoint import (
    DEEPSEEK_LATENT_NORM_EPS,
    DEEPSEEK_V2,
    DEEPSEEK_V3,
    EXPERT_PARTS,
    GPT_NEOX,
    LAYOUTS,
    V3_GROUP_SCORES,
    LLAMA,
    LLAMA_QKV,
    NEOX_QKV,
    QWEN2,
    copy_tokenizer_files,
)
from litgpt.rope import is_llama3
from litgpt.utils import atomic_write, check_output_spares_inputs

log = logging.getLogger(__name__)

MODEL_TYPE = {GPT_NEOX: "gpt_neox", LLAMA: "llama", QWEN2: "qwen2", DEEPSEEK_V2: "deepseek_v2",
              DEEPSEEK_V3: "deepseek_v3"}
EXPORT_ARCHITECTURES = tuple(MODEL_TYPE)
_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_SHARED_EXPERTS = ("mlp.shared_experts.gate_proj", "mlp.shared_experts.up_proj", "mlp.shared_experts.down_proj")
OUR_EXPERT = re.compile(r"mlp\.experts\.(\d+)\.(fc_1|fc_2|proj)")
HF_EXPERT_PARTS = {ours: theirs for theirs, ours in EXPERT_PARTS.items()}
EXPERT_LAYOUTS = ("per_expert", "fused")


# ---------------------------------------------------------------------------------------------------- architecture
def default_architecture(config: Config) -> str:
    """The HF architecture a config maps to (checked afterwards by `unsupported_properties`)."""
    if config.mla is not None:
        return DEEPSEEK_V2 if config.moe_scoring == "softmax" else DEEPSEEK_V3
    if config.parallel_residual or config.norm_class_name == "LayerNorm" or config.mlp_class_name == "GptNeoxMLP":
        return GPT_NEOX
    return QWEN2 if config.attn_bias and not config.bias else LLAMA  # Qwen2: q/k/v biases only


def unsupported_properties(config: Config, arch: str) -> list[str]:
    """Our config's properties that `arch` cannot express, as 'field=value' strings (empty: convertible)."""
    c = config
    llama3 = is_llama3(c.rope_adjustments)
    checks: list[tuple[bool, str]] = [
        (not c.scale_embeddings, "scale_embeddings=True"),
        # Llama's "linear" rope type divides positions like our condense ratio, but not on top of Llama 3 scaling
        (c.rope_condense_ratio == 1 or (arch in (LLAMA, QWEN2) and not llama3),
         f"rope_condense_ratio={c.rope_condense_ratio}"),
        (not c.lm_head_bias, "lm_head_bias=True"),
    ]
    if arch in (GPT_NEOX, LLAMA, QWEN2):
        checks.append((c.mla is None, "latent_attention (MLA)"))
        checks.append((c.rope_adjustments is None or llama3, "rope_adjustments (YaRN)"))
        checks.append((not llama3 or arch != GPT_NEOX, "rope_adjustments (Llama 3 scaling)"))
    else:
        checks.append((not llama3, "rope_adjustments (Llama 3 scaling)"))
        checks.append((c.mla is not None, "latent_attention=None (no MLA)"))
        checks.append((c.mla is None or c.mla.o_latent_dim is None, "latent_attention.o_latent_dim (MLA-o)"))
        checks += _deepseek_moe_checks(c, arch)
        yarn = None if llama3 else c.rope_adjustments
        if yarn is not None:  # without mscale_all_dim transformers scales the rope by mscale(factor, 1) whatever mscale
            checks.append((yarn["mscale_all_dim"] or yarn["mscale"] == 1, f"rope_adjustments.mscale={yarn['mscale']} "
                           "with mscale_all_dim=0"))
    if arch == GPT_NEOX:
        checks += [
            (c.norm_class_name == "LayerNorm", f"norm_class_name={c.norm_class_name!r}"),
            (c.mlp_class_name == "GptNeoxMLP", f"mlp_class_name={c.mlp_class_name!r}"),
            (c.n_query_groups == c.n_head, f"n_query_groups={c.n_query_groups} (GQA/MQA)"),
            (c.head_size * c.n_head == c.n_embd, f"head_size={c.head_size} != n_embd/n_head"),
        ]
    else:
        checks += [
            (not c.parallel_residual, "parallel_residual=True"),
            (c.norm_class_name == "RMSNorm", f"norm_class_name={c.norm_class_name!r}"),
            (c.mlp_class_name == "LLaMAMLP" or (c.mlp_class_name == "LLaMAMoE" and arch not in (LLAMA, QWEN2)),
             f"mlp_class_name={c.mlp_class_name!r}"),
        ]
    if arch in (LLAMA, QWEN2):
        checks.append((c.rope_n_elem == c.head_size, f"rotary_percentage={c.rotary_percentage} (partial rope)"))
    if arch == QWEN2:  # q/k/v always carry biases (zero-filled where ours lack them), o_proj and the MLP none
        checks.append((not c.bias, "bias=True (Qwen2 has no o_proj or MLP biases)"))
    if arch == DEEPSEEK_V2:
        checks.append((c.rope_interleave, "rope_interleave=False"))
    return [what for ok, what in checks if not ok]


def _deepseek_moe_checks(c: Config, arch: str) -> list[tuple[bool, str]]:
    """What transformers' DeepseekV2/V3 MoE can express: shared experts, every layer past first_k_dense_replace
    MoE, V2's softmax routing (groups scored by their best expert, no renormalisation) or V3's sigmoid routing (groups
    scored by their best two)."""
    if c.mlp_class_name != "LLaMAMoE":
        return []
    checks = [
        (c.moe_layer_freq == 1, f"moe_layer_freq={c.moe_layer_freq}"),
        (bool(c.n_shared_expert), f"n_shared_expert={c.n_shared_expert} (no shared experts)"),
    ]
    scoring, group_scores = ("softmax", 1) if arch == DEEPSEEK_V2 else ("sigmoid", V3_GROUP_SCORES)
    checks.append((c.moe_scoring == scoring, f"moe_scoring={c.moe_scoring!r}"))
    if c.n_expert_groups:
        checks.append((c.n_topk_scores_per_group == group_scores,
                       f"n_topk_scores_per_group={c.n_topk_scores_per_group}"))
    if arch == DEEPSEEK_V2:
        checks.append((not c.norm_topk_prob, "norm_topk_prob=True"))
    return checks


def check_convertible(config: Config, arch: str) -> None:
    """Raise a one-line ValueError naming what `arch` has no equivalent for."""
    if arch not in EXPORT_ARCHITECTURES:
        raise ValueError(f"unsupported architecture {arch}; supported: {', '.join(EXPORT_ARCHITECTURES)}")
    problems = unsupported_properties(config, arch)
    if problems:
        only = " (the HF architecture with MLA)" if config.mla is not None and arch == DEEPSEEK_V3 else ""
        raise ValueError(
            f"cannot convert {config.name or 'the model'!r} to {arch}{only}: it has no equivalent of "
            f"{', '.join(problems)}"
        )


def hf_bias_flags(config: Config, arch: str) -> dict[str, bool]:
    """HF bias flags for our config: an HF projection gets a bias if the one of ours it maps to has one (Qwen2 has
    no flags: its q/k/v biases are always there)."""
    if arch == QWEN2:
        return {}
    flags = dict(attention_bias=config.bias or config.attn_bias)
    if arch in (LLAMA, DEEPSEEK_V2):
        flags["mlp_bias"] = config.bias
    return flags


def hf_bias_modules(arch: str, hf_config: dict) -> set[str]:
    """HF block modules (Linear layers) that carry a bias under hf_config's flags."""
    attention = bool(hf_config.get("attention_bias"))
    if arch == QWEN2:
        return set(LLAMA_QKV)
    if arch == GPT_NEOX:  # GPT-NeoX's MLP always has biases
        return {"mlp.dense_h_to_4h", "mlp.dense_4h_to_h"} | ({NEOX_QKV, "attention.dense"} if attention else set())
    mlp = set()
    if hf_config.get("mlp_bias"):  # DeepseekV2's shared experts are one MLP like the dense ones
        mlp = set(_MLP) | (set(_SHARED_EXPERTS) if arch == DEEPSEEK_V2 else set())
    if arch == LLAMA:
        return mlp | ({*LLAMA_QKV, "self_attn.o_proj"} if attention else set())
    return mlp | ({"self_attn.q_a_proj", "self_attn.kv_a_proj_with_mqa", "self_attn.o_proj"} if attention else set())


def hf_config_for(
    config: Config, arch: str, dtype: torch.dtype, tie_word_embeddings: bool = False
) -> dict[str, Any]:
    """config.json content for `arch`; rope is written in both the transformers 5 and the legacy keys."""
    c = config
    rope = dict(rope_type="default", rope_theta=float(c.rope_base))
    hf: dict[str, Any] = dict(
        architectures=[arch],
        model_type=MODEL_TYPE[arch],
        vocab_size=c.padded_vocab_size,
        hidden_size=c.n_embd,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        max_position_embeddings=c.block_size,
        tie_word_embeddings=tie_word_embeddings,
        dtype=str(dtype).removeprefix("torch."),
    )
    hf.update(hf_bias_flags(c, arch))
    if arch == GPT_NEOX:
        rope["partial_rotary_factor"] = c.rotary_percentage
        hf.update(
            hidden_act="gelu" if c.gelu_approximate == "none" else "gelu_pytorch_tanh",
            layer_norm_eps=c.norm_eps,
            use_parallel_residual=c.parallel_residual,
            rotary_pct=c.rotary_percentage,
            rotary_emb_base=c.rope_base,
        )
    else:
        hf.update(hidden_act="silu", rms_norm_eps=c.norm_eps, rope_theta=c.rope_base,
                  num_key_value_heads=c.n_query_groups)
    if arch in (LLAMA, QWEN2):
        hf.update(head_dim=c.head_size)
        if is_llama3(c.rope_adjustments):
            a = c.rope_adjustments
            rope.update(rope_type="llama3", factor=a["factor"], low_freq_factor=a["low_freq_factor"],
                        high_freq_factor=a["high_freq_factor"], original_max_position_embeddings=a["original_max_seq_len"])
        elif c.rope_condense_ratio != 1:  # positions divided by the ratio: transformers' "linear" rope type
            rope.update(rope_type="linear", factor=float(c.rope_condense_ratio))
    if arch == QWEN2:
        hf.update(use_sliding_window=False, sliding_window=None)
    if arch in (DEEPSEEK_V2, DEEPSEEK_V3):
        d = c.mla
        assert d is not None
        hf.update(
            q_lora_rank=d.q_lora_rank,
            kv_lora_rank=d.kv_lora_rank,
            qk_rope_head_dim=d.qk_rope_head_dim,
            qk_nope_head_dim=d.qk_nope_head_dim,
            v_head_dim=d.v_head_dim,
            # a dense model: every layer within first_k_dense_replace
            **(_deepseek_moe_config(c, arch) if c.moe_layers else dict(first_k_dense_replace=c.n_layer)),
        )
        if c.rope_adjustments is not None:
            yarn = c.rope_adjustments
            rope.update(
                rope_type="yarn", factor=yarn["factor"], original_max_position_embeddings=yarn["original_max_seq_len"],
                beta_fast=yarn["beta_fast"], beta_slow=yarn["beta_slow"], mscale=yarn["mscale"],
                mscale_all_dim=yarn["mscale_all_dim"], truncate=yarn["truncate"],
            )
        if arch == DEEPSEEK_V3:
            hf.update(rope_interleave=c.rope_interleave, num_nextn_predict_layers=0)
        if not math.isclose(c.norm_eps, DEEPSEEK_LATENT_NORM_EPS):
            warnings.warn(
                f"{arch}'s q_a/kv_a norms use eps={DEEPSEEK_LATENT_NORM_EPS}, ours norm_eps={c.norm_eps}; "
                "outputs differ slightly",
                stacklevel=3,
            )
    hf["rope_parameters"] = rope
    return hf


def _deepseek_moe_config(c: Config, arch: str) -> dict[str, Any]:
    """The MoE keys of a DeepSeek config.json (checked by `_deepseek_moe_checks`)."""
    hf: dict[str, Any] = dict(
        n_routed_experts=c.n_expert,
        num_experts_per_tok=c.n_expert_per_token,
        moe_intermediate_size=c.moe_intermediate_size,
        n_shared_experts=c.n_shared_expert,
        first_k_dense_replace=c.first_k_dense_replace or 0,
        moe_layer_freq=1,
        routed_scaling_factor=c.routed_scaling_factor,
        norm_topk_prob=c.norm_topk_prob,
        n_group=c.n_expert_groups or 1,
        topk_group=c.n_topk_groups or 1,
    )
    if arch == DEEPSEEK_V2:
        hf["topk_method"] = "group_limited_greedy" if c.n_expert_groups else "greedy"
    return hf


# ---------------------------------------------------------------------------------------------------- weights
def ours_qkv_to_neox(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """Our qkv rows [q h0..hn | k h0..hn | v h0..hn] -> GPT-NeoX [h0: q k v | h1: q k v | ...]."""
    return t.reshape(3, n_head, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def interleaved_to_half(t: torch.Tensor, n_heads: int, n_elem: int) -> torch.Tensor:
    """Permute each head's first n_elem rows from interleaved pairs (2i, 2i+1) to rotate-half pairs (i, i+n/2).

    Applied to the q and k rows alike, it turns interleaved rope into rotate-half rope with equal scores.
    """
    rows = t.reshape(n_heads, -1, *t.shape[1:])  # (heads, head_size, ...)
    order = torch.cat((torch.arange(0, n_elem, 2), torch.arange(1, n_elem, 2), torch.arange(n_elem, rows.size(1))))
    return rows[:, order].reshape(t.shape)


def convert_state_dict(
    config: Config, state_dict: dict[str, torch.Tensor], arch: str, expert_layout: str = "per_expert"
) -> dict[str, torch.Tensor]:
    """HF tensors for `arch` from our state dict. Our biases HF cannot hold must be zero; HF's extra ones are zeros.
    Routed experts go per expert or fused (`expert_layout`, one of EXPERT_LAYOUTS)."""
    if expert_layout not in EXPERT_LAYOUTS:
        raise ValueError(f"expert_layout must be one of {EXPERT_LAYOUTS}, got {expert_layout!r}")
    c = config
    layout = LAYOUTS[arch]
    with_bias = hf_bias_modules(arch, hf_bias_flags(c, arch))
    top = {ours: theirs for theirs, ours in layout.top.items()}
    block = {ours: theirs for theirs, ours in layout.layer.items()}
    qkv_sizes = (c.n_head * c.head_size, c.n_query_groups * c.head_size, c.n_query_groups * c.head_size)
    out: dict[str, torch.Tensor] = {}
    linears: dict[str, str] = {}  # HF module name -> its block-relative name, for bias filling
    fused: dict[tuple[str, str], dict[int, torch.Tensor]] = {}  # (layer prefix, our part) -> {expert: weight}

    def put(prefix: str, hf_module: str, param: str, tensor: torch.Tensor, linear: bool = True) -> None:
        name = f"{prefix}{hf_module}.{param}"
        if linear:
            linears[f"{prefix}{hf_module}"] = hf_module
        if linear and param == "bias" and hf_module not in with_bias:
            if torch.count_nonzero(tensor):
                raise ValueError(f"cannot convert to {arch}: it has no bias {name!r} and ours is non-zero")
            return
        out[name] = tensor.contiguous()

    for key, tensor in state_dict.items():
        module, _, param = key.rpartition(".")
        if module in top:
            out[f"{top[module]}.{param}"] = tensor.contiguous()
            continue
        if not module.startswith("transformer.h."):
            raise ValueError(f"unexpected tensor {key!r} in the checkpoint")
        i, sub = module.removeprefix("transformer.h.").split(".", 1)
        prefix = layout.layer_prefix.format(i=i)
        expert = OUR_EXPERT.fullmatch(sub)
        if expert is not None:  # transformers' routed experts have no biases: ours must be zero
            e, part = int(expert.group(1)), expert.group(2)
            if param == "bias":
                if torch.count_nonzero(tensor):
                    raise ValueError(f"cannot convert to {arch}: its routed experts have no bias and our {key!r} is "
                                     "non-zero")
            elif expert_layout == "fused":
                fused.setdefault((prefix, part), {})[e] = tensor
            else:  # a copy: ours may be views of one stacked tensor, which safetensors refuses to write
                out[f"{prefix}mlp.experts.{e}.{HF_EXPERT_PARTS[part]}.weight"] = tensor.clone()
            continue
        if sub == "attn.qkv":
            if c.rope_interleave:  # HF's GPT-NeoX and Llama rotate halves: permute the q and k rows instead
                q, k, v = tensor.split(qkv_sizes)
                q = interleaved_to_half(q, c.n_head, c.rope_n_elem)
                k = interleaved_to_half(k, c.n_query_groups, c.rope_n_elem)
                tensor = torch.cat((q, k, v))
            if arch == GPT_NEOX:
                put(prefix, NEOX_QKV, param, ours_qkv_to_neox(tensor, c.n_head))
            else:
                for hf_module, part in zip(LLAMA_QKV, tensor.split(qkv_sizes)):
                    put(prefix, hf_module, param, part)
            continue
        if sub not in block:
            raise ValueError(f"cannot convert to {arch}: it has no equivalent of our {key!r}")
        is_norm = "norm" in sub
        put(prefix, block[sub], param, tensor, linear=not is_norm)
        if sub == "norm_1" and c.shared_attention_norm:  # the MLP reads norm_1's output: give HF's norm a copy
            put(prefix, block["norm_2"], param, tensor.clone(), linear=False)
    for module, hf_module in linears.items():  # biases HF has and we lack (e.g. NeoX MLP with bias=False): zeros
        if hf_module in with_bias and f"{module}.bias" not in out:
            weight = out[f"{module}.weight"]
            out[f"{module}.bias"] = torch.zeros(weight.shape[0], dtype=weight.dtype)
    for prefix in sorted({prefix for prefix, _ in fused}):  # transformers 5: [gate; up] (E, 2I, C), down (E, C, I)
        gate, up, down = (fused[(prefix, part)] for part in ("fc_1", "fc_2", "proj"))
        out[f"{prefix}mlp.experts.gate_up_proj"] = torch.stack([torch.cat((gate[e], up[e])) for e in sorted(gate)])
        out[f"{prefix}mlp.experts.down_proj"] = torch.stack([down[e] for e in sorted(down)])
    return out


def hf_head_name(arch: str) -> str:
    """The HF name of the LM head weight (`lm_head.weight`, GPT-NeoX: `embed_out.weight`)."""
    return next(f"{theirs}.weight" for theirs, ours in LAYOUTS[arch].top.items() if ours == "lm_head")


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when a and b are views of the same memory with the same layout (one tensor under two names)."""
    return (
        a.device == b.device
        and a.dtype == b.dtype
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.data_ptr() == b.data_ptr()
    )


def decide_tied(state_dict: dict[str, torch.Tensor], tie_embeddings: Optional[bool]) -> bool:
    """Whether the HF model is written with tied embeddings.

    None: tied when `lm_head.weight` is `transformer.wte.weight` or equals it exactly (the HF model then computes
    the same logits); True: tied, which needs equal tensors; False: untied (two copies).
    """
    wte, head = state_dict["transformer.wte.weight"], state_dict["lm_head.weight"]
    equal = _same_tensor(wte, head) or (wte.shape == head.shape and torch.equal(wte, head))
    if tie_embeddings is None:
        return equal
    if tie_embeddings and not equal:
        diff = (wte.float() - head.float()).abs().max().item() if wte.shape == head.shape else float("nan")
        raise ValueError(
            f"cannot tie the embeddings: lm_head.weight differs from transformer.wte.weight (max abs difference "
            f"{diff:.3g}); convert without --tie_embeddings true to keep both"
        )
    return bool(tie_embeddings)


def unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Clone every tensor whose memory overlaps an earlier one's (safetensors refuses to write shared memory)."""
    taken: dict[tuple[torch.device, int], list[tuple[int, int]]] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        if size:
            storage = tensor.untyped_storage()
            start = tensor.data_ptr() - storage.data_ptr()
            ranges = taken.setdefault((tensor.device, storage.data_ptr()), [])
            if any(start < end and begin < start + size for begin, end in ranges):
                tensor = tensor.clone()
            else:
                ranges.append((start, start + size))
        out[name] = tensor
    return out


def _check_complete(config: Config, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Raise a one-line ValueError when the checkpoint lacks tensors our model for `config` has."""
    from litgpt.model import GPT

    with torch.device("meta"):
        expected = GPT(config).state_dict()
    missing = sorted(set(expected) - set(state_dict))
    if missing:
        raise ValueError(
            f"{source} does not match model_config.yaml: it has no {', '.join(map(repr, missing[:3]))}"
            f"{' ...' if len(missing) > 3 else ''}; point at the checkpoint directory this config belongs to"
        )


# ---------------------------------------------------------------------------------------------------- entry point
def convert_lit_checkpoint(
    checkpoint_dir: Path,
    output_dir: Path,
    architecture: Optional[str] = None,
    tie_embeddings: Optional[bool] = None,
    expert_layout: Literal["per_expert", "fused"] = "per_expert",
) -> Path:
    """Convert our checkpoint into a Hugging Face directory (`model.safetensors` + `config.json`).

    Args:
        checkpoint_dir: directory with lit_model.pth and model_config.yaml.
        output_dir: where to write the Hugging Face files (tokenizer files are copied along).
        architecture: HF architecture to write, one of GPTNeoXForCausalLM, LlamaForCausalLM, Qwen2ForCausalLM,
            DeepseekV2ForCausalLM, DeepseekV3ForCausalLM (default: the one matching the config).
        tie_embeddings: write `tie_word_embeddings: true` and the embedding once (the LM head is the embedding).
            Default: tie when lm_head.weight is, or equals, transformer.wte.weight. True needs them equal;
            False writes separate copies.
        expert_layout: MoE models: routed experts `per_expert` (`mlp.experts.{i}.gate_proj.weight` ..., as
            `save_pretrained` writes them) or `fused` (transformers 5's `mlp.experts.gate_up_proj` / `down_proj`).

    Returns:
        The output directory.
    """
    from safetensors.torch import save_file

    checkpoint_dir, output_dir = Path(checkpoint_dir), Path(output_dir)
    # the Hugging Face files would go beside lit_model.pth, over any there (the originals of an in-place conversion)
    check_output_spares_inputs("--output_dir", output_dir, {"--checkpoint_dir": checkpoint_dir}, replaced=())
    config = Config.from_checkpoint(checkpoint_dir)
    arch = architecture or default_architecture(config)
    check_convertible(config, arch)
    if expert_layout != "per_expert" and not config.moe_layers:
        raise ValueError(
            f"--expert_layout {expert_layout} applies to mixture-of-experts models; {config.name!r} has none"
        )
    weights = checkpoint_dir / "lit_model.pth"
    if not weights.is_file():
        raise FileNotFoundError(f"{str(checkpoint_dir)!r} has no lit_model.pth")
    state_dict = extract_state_dict(read_checkpoint_file(weights), str(weights))
    _check_complete(config, state_dict, str(weights))
    tied = decide_tied(state_dict, tie_embeddings)
    hf_weights = convert_state_dict(config, state_dict, arch, expert_layout)
    if tied:  # as transformers saves a tied model: the embedding only; from_pretrained points the head at it
        del hf_weights[hf_head_name(arch)]
    hf_weights = unshare(hf_weights)  # e.g. an untied export of a checkpoint whose head and embedding are one tensor
    hf_config = hf_config_for(config, arch, state_dict["transformer.wte.weight"].dtype, tie_word_embeddings=tied)
    output_dir.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt"}  # transformers refuses safetensors files without it
    atomic_write(output_dir / "model.safetensors", lambda tmp: save_file(hf_weights, str(tmp), metadata=metadata))
    atomic_write(output_dir / "config.json", lambda tmp: tmp.write_text(json.dumps(hf_config, indent=2) + "\n"))
    copy_tokenizer_files(checkpoint_dir, output_dir)
    log.info("converted %s to %s (%s%s)", checkpoint_dir, output_dir, arch, ", tied embeddings" if tied else "")
    return output_dir


if __name__ == "__main__":
    from litgpt.__main__ import run_script

    run_script(convert_lit_checkpoint)
