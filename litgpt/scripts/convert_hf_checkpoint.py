"""Convert a Hugging Face checkpoint directory into ours: `lit_model.pth` + `model_config.yaml`.

    python -m litgpt.scripts.convert_hf_checkpoint checkpoints/EleutherAI/pythia-160m

The `Config` is built from `config.json` alone (no named config is consulted). Supported architectures are
listed in `SUPPORTED_ARCHITECTURES`; the name tables here are shared with `convert_lit_checkpoint` (the
other direction).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from litgpt.checkpoint import atomic_torch_save, read_checkpoint_file, save_config
from litgpt.config import Config
from litgpt.model import GPT
from litgpt.scripts.download import TOKENIZER_FILES

log = logging.getLogger(__name__)

GPT_NEOX = "GPTNeoXForCausalLM"
LLAMA = "LlamaForCausalLM"
DEEPSEEK_V2 = "DeepseekV2ForCausalLM"
DEEPSEEK_V3 = "DeepseekV3ForCausalLM"
SUPPORTED_ARCHITECTURES = (GPT_NEOX, LLAMA, DEEPSEEK_V2, DEEPSEEK_V3)
MODEL_TYPES = {"gpt_neox": GPT_NEOX, "llama": LLAMA, "deepseek_v2": DEEPSEEK_V2, "deepseek_v3": DEEPSEEK_V3}
GELU_APPROXIMATE = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh"}
# HF's DeepSeek q_a_layernorm/kv_a_layernorm are built with their default eps, not config.rms_norm_eps.
DEEPSEEK_LATENT_NORM_EPS = 1e-6


@dataclass(frozen=True)
class Layout:
    """Module names of one HF architecture and ours: `top` outside the blocks, `layer` inside block {i}.

    Fused or split tensors (GPT-NeoX's query_key_value, Llama's q/k/v_proj -> our attn.qkv) are handled
    by the converters, not by these tables.
    """

    top: dict[str, str]
    layer_prefix: str  # HF prefix of block i, formatted with i=...
    layer: dict[str, str]


_LLAMA_LIKE_TOP = {"model.embed_tokens": "transformer.wte", "model.norm": "transformer.ln_f", "lm_head": "lm_head"}
_LLAMA_LIKE_BLOCK = {
    "input_layernorm": "norm_1",
    "post_attention_layernorm": "norm_2",
    "self_attn.o_proj": "attn.proj",
    "mlp.gate_proj": "mlp.fc_1",
    "mlp.up_proj": "mlp.fc_2",
    "mlp.down_proj": "mlp.proj",
}
_DEEPSEEK = Layout(
    top=_LLAMA_LIKE_TOP,
    layer_prefix="model.layers.{i}.",
    layer={
        **_LLAMA_LIKE_BLOCK,
        "self_attn.q_proj": "attn.q_proj",
        "self_attn.q_a_proj": "attn.q_a_proj",
        "self_attn.q_a_layernorm": "attn.q_a_norm",
        "self_attn.q_b_proj": "attn.q_b_proj",
        "self_attn.kv_a_proj_with_mqa": "attn.kv_a_proj_with_mqa",
        "self_attn.kv_a_layernorm": "attn.kv_a_norm",
        "self_attn.kv_b_proj": "attn.kv_b_proj",
    },
)
LAYOUTS: dict[str, Layout] = {
    GPT_NEOX: Layout(
        top={"gpt_neox.embed_in": "transformer.wte", "gpt_neox.final_layer_norm": "transformer.ln_f",
             "embed_out": "lm_head"},
        layer_prefix="gpt_neox.layers.{i}.",
        layer={
            "input_layernorm": "norm_1",
            "post_attention_layernorm": "norm_2",
            "attention.dense": "attn.proj",
            "mlp.dense_h_to_4h": "mlp.fc",
            "mlp.dense_4h_to_h": "mlp.proj",
        },
    ),
    LLAMA: Layout(top=_LLAMA_LIKE_TOP, layer_prefix="model.layers.{i}.", layer=_LLAMA_LIKE_BLOCK),
    DEEPSEEK_V2: _DEEPSEEK,
    DEEPSEEK_V3: _DEEPSEEK,
}
LLAMA_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
NEOX_QKV = "attention.query_key_value"
# Non-persistent buffers that older transformers versions saved; they carry no weights.
IGNORED_SUFFIXES = ("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq")


# ---------------------------------------------------------------------------------------------------- config
def architecture_of(hf_config: dict) -> str:
    """The supported architecture named by config.json (`architectures`, else `model_type`)."""
    names = list(hf_config.get("architectures") or [])
    if not names and hf_config.get("model_type") in MODEL_TYPES:
        names = [MODEL_TYPES[hf_config["model_type"]]]
    arch = names[0] if len(names) == 1 else ", ".join(names) or "<none given>"
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"unsupported architecture {arch}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    return arch


def _rope_base(hf: dict, arch: str, legacy_key: str = "rope_theta") -> float:
    """rope_theta from `rope_parameters` (transformers >= 5) or the legacy top-level keys; scaled rope is refused."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ValueError(
            f"{arch}: rope scaling {rope_type!r} is not supported (only unscaled rope converts); "
            "remove rope_scaling/rope_parameters.rope_type from config.json only if the weights were trained without it"
        )
    theta = float(params.get("rope_theta", hf.get(legacy_key, hf.get("rope_theta", 10000.0))))
    return int(theta) if theta.is_integer() else theta


def _require_silu(hf: dict, arch: str) -> None:
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{arch}: hidden_act {hf['hidden_act']!r} is not supported; the gated MLP uses silu")


def _vocab(hf: dict) -> dict:
    # The HF embedding has vocab_size rows; it is already padded as the checkpoint needs it.
    return dict(vocab_size=hf["vocab_size"], padded_vocab_size=hf["vocab_size"])


def _neox_config(hf: dict) -> dict:
    act = hf.get("hidden_act", "gelu")
    if act not in GELU_APPROXIMATE:
        raise ValueError(f"{GPT_NEOX}: hidden_act {act!r} is not supported; use one of {sorted(GELU_APPROXIMATE)}")
    params = hf.get("rope_parameters") or {}
    return dict(
        block_size=hf.get("max_position_embeddings", 2048),
        n_layer=hf["num_hidden_layers"],
        n_embd=hf["hidden_size"],
        n_head=hf["num_attention_heads"],
        head_size=hf["hidden_size"] // hf["num_attention_heads"],
        rotary_percentage=float(params.get("partial_rotary_factor", hf.get("rotary_pct", 0.25))),
        rope_base=_rope_base(hf, GPT_NEOX, legacy_key="rotary_emb_base"),
        parallel_residual=hf.get("use_parallel_residual", True),
        bias=True,  # the MLP and the norms always carry biases; attention's follow attention_bias (zero-filled)
        norm_class_name="LayerNorm",
        norm_eps=hf.get("layer_norm_eps", 1e-5),
        mlp_class_name="GptNeoxMLP",
        gelu_approximate=GELU_APPROXIMATE[act],
        intermediate_size=hf.get("intermediate_size") or 4 * hf["hidden_size"],
        **_vocab(hf),
    )


def _llama_config(hf: dict) -> dict:
    _require_silu(hf, LLAMA)
    n_head = hf["num_attention_heads"]
    return dict(
        block_size=hf.get("max_position_embeddings", 2048),
        n_layer=hf["num_hidden_layers"],
        n_embd=hf["hidden_size"],
        n_head=n_head,
        n_query_groups=hf.get("num_key_value_heads") or n_head,
        head_size=hf.get("head_dim") or hf["hidden_size"] // n_head,
        rotary_percentage=1.0,
        rope_base=_rope_base(hf, LLAMA),
        parallel_residual=False,
        # attention_bias covers q/k/v/o, mlp_bias the MLP; our `bias` covers both, missing ones are zero-filled
        bias=bool(hf.get("attention_bias", False) or hf.get("mlp_bias", False)),
        norm_class_name="RMSNorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        mlp_class_name="LLaMAMLP",
        intermediate_size=hf["intermediate_size"],
        **_vocab(hf),
    )


def _deepseek_config(hf: dict, arch: str) -> dict:
    _require_silu(hf, arch)
    n_layer = hf["num_hidden_layers"]
    first_dense = hf.get("first_k_dense_replace") or 0
    every = hf.get("moe_layer_freq") or 1
    moe_layers = [i for i in range(first_dense, n_layer) if i % every == 0] if hf.get("n_routed_experts") else []
    if moe_layers:
        raise ValueError(
            f"{arch}: layers {moe_layers[0]}..{moe_layers[-1]} are mixture-of-experts (first_k_dense_replace="
            f"{first_dense} < num_hidden_layers={n_layer}, n_routed_experts={hf['n_routed_experts']}); "
            "MoE layers are not supported, only dense ones"
        )
    eps = hf.get("rms_norm_eps", 1e-6)
    if not math.isclose(eps, DEEPSEEK_LATENT_NORM_EPS):
        warnings.warn(
            f"{arch}: rms_norm_eps={eps} but HF's q_a/kv_a norms use eps={DEEPSEEK_LATENT_NORM_EPS}; our model uses "
            "norm_eps for every norm, so outputs differ slightly",
            stacklevel=3,
        )
    nope, rope = hf["qk_nope_head_dim"], hf["qk_rope_head_dim"]
    attention_bias = bool(hf.get("attention_bias", False))
    return dict(
        block_size=hf.get("max_position_embeddings", 2048),
        n_layer=n_layer,
        n_embd=hf["hidden_size"],
        n_head=hf["num_attention_heads"],
        head_size=nope + rope,  # informational for MLA: the query/key head width
        # rotary_percentage stays at its default: MLA rotates the whole decoupled key, qk_rope_head_dim wide
        rope_base=_rope_base(hf, arch),
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
        mlp_class_name="LLaMAMLP",
        intermediate_size=hf["intermediate_size"],
        latent_attention=dict(
            q_lora_rank=hf.get("q_lora_rank"),
            kv_lora_rank=hf["kv_lora_rank"],
            qk_rope_head_dim=rope,
            qk_nope_head_dim=nope,
            v_head_dim=hf["v_head_dim"],
        ),
        **_vocab(hf),
    )


def config_from_hf(hf_config: dict, name: str = "") -> Config:
    """Our `Config` for a Hugging Face config.json dict. `name` defaults to the last part of `_name_or_path`."""
    arch = architecture_of(hf_config)
    if arch == GPT_NEOX:
        fields = _neox_config(hf_config)
    elif arch == LLAMA:
        fields = _llama_config(hf_config)
    else:
        fields = _deepseek_config(hf_config, arch)
    name_or_path = str(hf_config.get("_name_or_path") or "")
    hf_id = {}
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name_or_path) and not Path(name_or_path).exists():
        org, repo = name_or_path.split("/")
        hf_id = dict(org=org, name=repo)
    return Config(name=name or Path(name_or_path).name, hf_config=hf_id, **fields)


# ---------------------------------------------------------------------------------------------------- weights
class HFWeights:
    """Lazy view of a checkpoint's tensors across shards: `names` and `get(name)`, loaded on demand."""

    def __init__(self, checkpoint_dir: Path, dtype: Optional[torch.dtype] = None) -> None:
        self.dtype = dtype
        self._loaders: dict[str, Callable[[], torch.Tensor]] = {}
        for file in _weight_files(checkpoint_dir):
            if file.suffix == ".safetensors":
                from safetensors import safe_open

                handle = safe_open(str(file), framework="pt")
                items = {k: (lambda h=handle, k=k: h.get_tensor(k)) for k in handle.keys()}
            else:
                sd = read_checkpoint_file(file)
                items = {k: (lambda t=t: t) for k, t in sd.items()}
            duplicated = sorted(set(items) & set(self._loaders))
            if duplicated:
                raise ValueError(f"{file.name}: tensor {duplicated[0]!r} is also in another weight file")
            self._loaders.update(items)

    @property
    def names(self) -> list[str]:
        return sorted(self._loaders)

    def get(self, name: str) -> torch.Tensor:
        tensor = self._loaders[name]()
        return tensor if self.dtype is None else tensor.to(self.dtype)


def _weight_files(checkpoint_dir: Path) -> list[Path]:
    """Shards named by an index file, else every *.safetensors, else every pytorch_model*.bin."""
    for index_name, pattern in (("model.safetensors.index.json", "*.safetensors"),
                                ("pytorch_model.bin.index.json", "pytorch_model*.bin")):
        index = checkpoint_dir / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return [checkpoint_dir / f for f in sorted(set(weight_map.values()))]
        files = sorted(checkpoint_dir.glob(pattern))
        if files:
            return files
    raise FileNotFoundError(f"{str(checkpoint_dir)!r} has no *.safetensors or pytorch_model*.bin weight files")


def neox_qkv_to_ours(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """GPT-NeoX rows [h0: q k v | h1: q k v | ...] -> ours [q h0..hn | k h0..hn | v h0..hn] (weight or bias)."""
    return t.reshape(n_head, 3, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def _split_name(name: str) -> tuple[str, str]:
    module, _, param = name.rpartition(".")
    return module, param


def convert_state_dict(arch: str, config: Config, weights: HFWeights, tied: bool = False) -> dict[str, torch.Tensor]:
    """Our state dict from HF tensors. Every HF tensor must be used; our biases HF lacks are zero-filled."""
    layout = LAYOUTS[arch]
    layer_re = re.compile(re.escape(layout.layer_prefix).replace(r"\{i\}", r"(\d+)") + r"(.+)")
    out: dict[str, torch.Tensor] = {}
    qkv_parts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}  # (layer, param) -> {hf module: tensor}
    skipped_layers: set[int] = set()
    for name in weights.names:
        if name.endswith(IGNORED_SUFFIXES):
            continue
        module, param = _split_name(name)
        if module in layout.top:
            out[f"{layout.top[module]}.{param}"] = weights.get(name)
            continue
        match = layer_re.fullmatch(module)
        if match is None:
            raise ValueError(f"{arch}: unexpected tensor {name!r} in the checkpoint")
        i, sub = int(match.group(1)), match.group(2)
        if i >= config.n_layer:
            if arch in (DEEPSEEK_V2, DEEPSEEK_V3):  # multi-token-prediction layers follow the main stack
                skipped_layers.add(i)
                continue
            raise ValueError(f"{arch}: tensor {name!r} belongs to layer {i} but num_hidden_layers is {config.n_layer}")
        prefix = f"transformer.h.{i}."
        if arch == GPT_NEOX and sub == NEOX_QKV:
            out[f"{prefix}attn.qkv.{param}"] = neox_qkv_to_ours(weights.get(name), config.n_head)
        elif arch == LLAMA and sub in LLAMA_QKV:
            qkv_parts.setdefault((i, param), {})[sub] = weights.get(name)
        elif sub in layout.layer:
            out[f"{prefix}{layout.layer[sub]}.{param}"] = weights.get(name)
        else:
            raise ValueError(f"{arch}: unexpected tensor {name!r} in the checkpoint (is this layer MoE?)")
    for (i, param), parts in qkv_parts.items():
        if len(parts) != 3:
            raise ValueError(f"{arch}: layer {i} has {param}s for {sorted(parts)} only; need q, k and v projections")
        out[f"transformer.h.{i}.attn.qkv.{param}"] = torch.cat([parts[m] for m in LLAMA_QKV])  # [Q | K | V] rows
    if skipped_layers:
        log.info("skipped layers %s beyond num_hidden_layers (multi-token prediction)", sorted(skipped_layers))
    if tied or "lm_head.weight" not in out:
        if not tied:
            raise ValueError(f"{arch}: the checkpoint has no LM head weight and tie_word_embeddings is false")
        out["lm_head.weight"] = out["transformer.wte.weight"].clone()
    return _complete(out, config, arch)


def _complete(state_dict: dict[str, torch.Tensor], config: Config, arch: str) -> dict[str, torch.Tensor]:
    """Check names and shapes against our model; zero-fill Linear biases the HF model does not have."""
    with torch.device("meta"):
        model = GPT(config)
    expected = model.state_dict()
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    unexpected = sorted(set(state_dict) - set(expected))
    if unexpected:
        raise ValueError(f"{arch}: converted tensors {unexpected[:3]} have no place in our model")
    dtype = state_dict["transformer.wte.weight"].dtype
    for key, ref in expected.items():
        if key not in state_dict:
            module, param = _split_name(key)
            if param != "bias" or module not in linears:
                raise ValueError(f"{arch}: the checkpoint has no tensor for our {key!r}")
            state_dict[key] = torch.zeros(ref.shape, dtype=dtype)
        elif state_dict[key].shape != ref.shape:
            raise ValueError(
                f"{arch}: {key!r} has shape {tuple(state_dict[key].shape)} but config.json implies {tuple(ref.shape)}"
            )
    return {key: state_dict[key].contiguous() for key in expected}


# ---------------------------------------------------------------------------------------------------- entry point
def _dtype(name: Optional[str]) -> Optional[torch.dtype]:
    if name is None:
        return None
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must name a torch floating point type (e.g. float32, bfloat16), got {name!r}")
    return dtype


def copy_tokenizer_files(source: Path, destination: Path) -> list[str]:
    """Copy the tokenizer/generation files present in source; returns the names copied."""
    copied = []
    for name in TOKENIZER_FILES:
        src, dst = source / name, destination / name
        if src.is_file() and not (dst.exists() and dst.samefile(src)):
            shutil.copyfile(src, dst)
            copied.append(name)
    return copied


def convert_hf_checkpoint(
    checkpoint_dir: Path, *, output_dir: Optional[Path] = None, dtype: Optional[str] = None
) -> Path:
    """Convert a Hugging Face model directory into `lit_model.pth` + `model_config.yaml`.

    Args:
        checkpoint_dir: directory with config.json and *.safetensors or pytorch_model*.bin weights (sharded or not).
        output_dir: where to write the converted checkpoint and tokenizer files (default: checkpoint_dir).
        dtype: cast the weights to this torch dtype, e.g. float32 or bfloat16 (default: keep the stored dtype).

    Returns:
        The output directory.
    """
    checkpoint_dir = Path(checkpoint_dir)
    output_dir = checkpoint_dir if output_dir is None else Path(output_dir)
    config_file = checkpoint_dir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{str(checkpoint_dir)!r} has no config.json; point at a Hugging Face model directory")
    hf_config: dict[str, Any] = json.loads(config_file.read_text(encoding="utf-8"))
    arch = architecture_of(hf_config)
    config = config_from_hf(hf_config, name="" if hf_config.get("_name_or_path") else checkpoint_dir.resolve().name)
    weights = HFWeights(checkpoint_dir, _dtype(dtype))
    state_dict = convert_state_dict(arch, config, weights, tied=bool(hf_config.get("tie_word_embeddings", False)))
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state_dict, output_dir / "lit_model.pth")
    save_config(config, output_dir)
    copied = copy_tokenizer_files(checkpoint_dir, output_dir)
    log.info("converted %s (%s) to %s; copied %s", checkpoint_dir, arch, output_dir, ", ".join(copied) or "no files")
    return output_dir


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(convert_hf_checkpoint)
