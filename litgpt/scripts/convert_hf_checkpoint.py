"""Convert a Hugging Face checkpoint directory into ours: `lit_model.pth` + `model_config.yaml`.

    python -m litgpt.scripts.convert_hf_checkpoint checkpoints/EleutherAI/pythia-160m

The `Config` is built from `config.json` alone by `litgpt.configs.hf.config_from_hf`, the mapping the named configs
are derived with. Supported architectures are listed in `SUPPORTED_ARCHITECTURES` (GPT-NeoX; Llama, Qwen2 and
Mistral with Llama's modules; DeepSeek-V2/V3, GLM-4.7-Flash and Youtu-LLM with DeepSeek's); the name tables here are
shared with `convert_lit_checkpoint` (the other direction). A tied checkpoint (tie_word_embeddings) converts to a
`tie_embeddings` config whose state dict holds the embedding under both keys, as one tensor.

DeepSeek-V2/V3 checkpoints convert with their mixture-of-experts layers (`litgpt.moe`: V2's softmax routing, greedy
or group-limited; V3's sigmoid routing with e_score_correction_bias and expert groups; shared experts; the first
first_k_dense_replace layers dense), routed experts stored per expert (`mlp.experts.{i}.gate_proj.weight`, as
DeepSeek and `save_pretrained` write them) or fused (transformers 5's `mlp.experts.gate_up_proj` (E, 2I, C) and
`mlp.experts.down_proj` (E, C, I)), and with YaRN rope scaling (`rope_parameters` / legacy `rope_scaling`). V3's
multi-token-prediction layer (`num_nextn_predict_layers`, stored as layers past num_hidden_layers) is skipped, with
a warning: it serves speculative decoding, not the model's own next-token logits.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from litgpt import fp8
from litgpt.checkpoint import atomic_torch_save, read_checkpoint_file, save_config
from litgpt.config import Config
from litgpt.configs.hf import (  # noqa: F401  (re-exported: convert_lit_checkpoint and callers import them here)
    DEEPSEEK_FAMILY,
    DEEPSEEK_LATENT_NORM_EPS,
    DEEPSEEK_V2,
    DEEPSEEK_V3,
    GLM4_MOE_LITE,
    GPT_NEOX,
    LLAMA,
    LLAMA_LIKE,
    MISTRAL,
    MODEL_TYPES,
    QWEN2,
    SUPPORTED_ARCHITECTURES,
    V3_GROUP_SCORES,
    YOUTU,
    architecture_of,
    config_from_hf,
)
from litgpt.model import GPT
from litgpt.tokenizer import TOKENIZER_FILES

log = logging.getLogger(__name__)

# the architectures and the config.json mapping live in litgpt.configs.hf (shared with the named configs)

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
        "mlp.gate": "mlp.gate",  # the router: weight, and V3's e_score_correction_bias
        "mlp.shared_experts.gate_proj": "mlp.shared_experts.fc_1",
        "mlp.shared_experts.up_proj": "mlp.shared_experts.fc_2",
        "mlp.shared_experts.down_proj": "mlp.shared_experts.proj",
        "self_attn.q_proj": "attn.q_proj",
        "self_attn.q_a_proj": "attn.q_a_proj",
        "self_attn.q_a_layernorm": "attn.q_a_norm",
        "self_attn.q_b_proj": "attn.q_b_proj",
        "self_attn.kv_a_proj_with_mqa": "attn.kv_a_proj_with_mqa",
        "self_attn.kv_a_layernorm": "attn.kv_a_norm",
        "self_attn.kv_b_proj": "attn.kv_b_proj",
    },
)
_LLAMA_LAYOUT = Layout(top=_LLAMA_LIKE_TOP, layer_prefix="model.layers.{i}.", layer=_LLAMA_LIKE_BLOCK)
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
    **{arch: _LLAMA_LAYOUT for arch in LLAMA_LIKE},
    **{arch: _DEEPSEEK for arch in DEEPSEEK_FAMILY},
}
LLAMA_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
NEOX_QKV = "attention.query_key_value"
# DeepSeek routed experts: HF's per-expert module -> ours (`mlp.experts.{e}.<ours>`), and transformers 5's fused layout
EXPERT_PARTS = {"gate_proj": "fc_1", "up_proj": "fc_2", "down_proj": "proj"}
HF_EXPERT = re.compile(r"mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)")
FUSED_EXPERTS = ("gate_up_proj", "down_proj")  # parameters of the module `mlp.experts`
V2_TOPK_METHODS = {"greedy": False, "group_limited_greedy": True}  # transformers' DeepseekV2: group-limited or not
V3_GROUP_SCORES = 2  # transformers' DeepseekV3 scores a group by its best two experts
# Non-persistent buffers that older transformers versions saved; they carry no weights.
IGNORED_SUFFIXES = ("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq")


# ---------------------------------------------------------------------------------------------------- weights
class HFWeights:
    """Lazy view of a checkpoint's tensors across shards: `names` and `get(name)`, loaded on demand."""

    def __init__(self, checkpoint_dir: Path, dtype: Optional[torch.dtype] = None) -> None:
        self.dtype = dtype
        self.fp8_block = fp8.block_size(checkpoint_dir)  # FP8 checkpoints: weights dequantized as they are read
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
        return sorted(set(self._loaders) - fp8.scale_names(self._loaders))

    def get(self, name: str) -> torch.Tensor:
        scale_inv = self._loaders.get(name + fp8.SCALE_SUFFIX)
        tensor = fp8.dequantize(name, self._loaders[name](), scale_inv and scale_inv(), self.fp8_block, self.dtype)
        return tensor if self.dtype is None else tensor.to(self.dtype)


def _weight_files(checkpoint_dir: Path) -> list[Path]:
    """Shards named by an index file, else every *.safetensors, else every pytorch_model*.bin."""
    for index_name, pattern in (("model.safetensors.index.json", "*.safetensors"),
                                ("pytorch_model.bin.index.json", "pytorch_model*.bin")):
        index = checkpoint_dir / index_name
        if index.is_file():
            data = _read_json(index, "a weight index")
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict):
                raise ValueError(f"{index} has no weight_map; re-download the model's index file")
            return [checkpoint_dir / f for f in sorted(set(weight_map.values()))]
        files = sorted(checkpoint_dir.glob(pattern))
        if files:
            return files
    raise FileNotFoundError(f"{str(checkpoint_dir)!r} has no *.safetensors or pytorch_model*.bin weight files")


def _read_json(path: Path, what: str) -> Any:
    """A JSON file's content; a file that is not UTF-8 JSON is a one-line ValueError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); it should be "
                         f"{what}: re-download or fix it") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); it should be "
                         f"{what}: re-download or fix it") from None


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
            if arch in DEEPSEEK_FAMILY:  # multi-token-prediction layers follow the main stack
                skipped_layers.add(i)
                continue
            raise ValueError(f"{arch}: tensor {name!r} belongs to layer {i} but num_hidden_layers is {config.n_layer}")
        prefix = f"transformer.h.{i}."
        expert = HF_EXPERT.fullmatch(sub) if arch in DEEPSEEK_FAMILY else None
        if expert is not None:  # one routed expert's projection
            out[f"{prefix}mlp.experts.{expert.group(1)}.{EXPERT_PARTS[expert.group(2)]}.{param}"] = weights.get(name)
        elif arch in DEEPSEEK_FAMILY and sub == "mlp.experts" and param in FUSED_EXPERTS:
            out.update(split_fused_experts(weights.get(name), param, f"{prefix}mlp.experts."))
        elif arch == GPT_NEOX and sub == NEOX_QKV:
            out[f"{prefix}attn.qkv.{param}"] = neox_qkv_to_ours(weights.get(name), config.n_head)
        elif arch in LLAMA_LIKE and sub in LLAMA_QKV:
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
        warnings.warn(
            f"{arch}: skipped layer(s) {sorted(skipped_layers)} past num_hidden_layers={config.n_layer}: the "
            "multi-token-prediction module (num_nextn_predict_layers) is not converted; the model's next-token logits "
            "do not use it",
            stacklevel=2,
        )
    if tied or "lm_head.weight" not in out:
        if not tied:
            raise ValueError(f"{arch}: the checkpoint has no LM head weight and tie_word_embeddings is false")
        out["lm_head.weight"] = out["transformer.wte.weight"]  # one tensor (config.tie_embeddings), saved once
    return _complete(out, config, arch)


def split_fused_experts(tensor: torch.Tensor, param: str, head: str) -> dict[str, torch.Tensor]:
    """transformers 5's fused experts as our per-expert entries under `head` (`...mlp.experts.`): gate_up_proj
    (E, 2I, C) = [gate; up] -> `{e}.fc_1.weight`, `{e}.fc_2.weight`; down_proj (E, C, I) -> `{e}.proj.weight`."""
    out = {}
    for e, expert in enumerate(tensor):
        if param == "gate_up_proj":
            out[f"{head}{e}.fc_1.weight"], out[f"{head}{e}.fc_2.weight"] = expert.chunk(2, dim=0)
        else:
            out[f"{head}{e}.proj.weight"] = expert
    return out


def _complete(state_dict: dict[str, torch.Tensor], config: Config, arch: str) -> dict[str, torch.Tensor]:
    """Check names and shapes against our model; zero-fill Linear biases the HF model does not have."""
    with torch.device("meta"):
        model = GPT(config)
    expected = model.state_dict()
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    linears |= {_split_name(k)[0] for k in expected if ".experts." in k}  # each routed expert's fc_1, fc_2, proj
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
    hf_config = _read_json(config_file, "a Hugging Face config.json")
    if not isinstance(hf_config, dict):
        raise ValueError(f"{config_file} holds a JSON {type(hf_config).__name__}, not a Hugging Face config object; "
                         "point at a Hugging Face model directory")
    arch = architecture_of(hf_config)
    config = config_from_hf(hf_config, name="" if hf_config.get("_name_or_path") else checkpoint_dir.resolve().name)
    weights = HFWeights(checkpoint_dir, _dtype(dtype))
    state_dict = convert_state_dict(arch, config, weights, tied=config.tie_embeddings)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state_dict, output_dir / "lit_model.pth")
    save_config(config, output_dir)
    copied = copy_tokenizer_files(checkpoint_dir, output_dir)
    log.info("converted %s (%s) to %s; copied %s", checkpoint_dir, arch, output_dir, ", ".join(copied) or "no files")
    return output_dir


if __name__ == "__main__":
    from litgpt.__main__ import run_script

    run_script(convert_hf_checkpoint)
