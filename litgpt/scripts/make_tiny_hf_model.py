"""Write a tiny Hugging Face model directory with random weights, offline: what `save_pretrained` writes for a
model of a published family (config.json, generation_config.json, model.safetensors) beside a tokenizer with that
family's special tokens and a chat template of its shape (tokenizer.json, tokenizer_config.json).

    python -m litgpt.scripts.make_tiny_hf_model --out_dir hf/tiny-llama --layout llama

It stands in for a hub download where there is no network: `litgpt download ORG/NAME --source_dir DIR` and
`litgpt convert_to_litgpt DIR` take the directory as they take a real checkpoint's. The tokenizer is a byte-level
BPE trained on the Python standard library's source (`litgpt.data.StdlibText`, the quick start's corpus). The model
is built by transformers from its config classes (`pip install transformers`), initialised as transformers
initialises a new model, from `seed`.

Layouts (the architecture, the settings that make it that family, and the chat template's shape):
  llama          LlamaForCausalLM, GQA, Llama 3 rope scaling (`rope_type: llama3`), Llama 3's header template
  qwen2          Qwen2ForCausalLM, GQA with q/k/v biases, tied embeddings, ChatML
  mistral        MistralForCausalLM, GQA, a sliding window covering the context, [INST] turns
  deepseek_v2    DeepseekV2ForCausalLM, MLA without a query latent, softmax-routed experts, YaRN, "User:" turns
  deepseek_v3    DeepseekV3ForCausalLM, MLA with a query latent, sigmoid-routed grouped experts, YaRN,
                 <｜User｜> turns
  glm4_moe_lite  Glm4MoeLiteForCausalLM (GLM-4.7-Flash's layout: DeepSeek-V3's modules), GLM's <|user|> turns
  youtu          YoutuForCausalLM (Youtu-LLM's layout: dense MLA, tied embeddings), ChatML
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

logger = logging.getLogger(__name__)

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
MISTRAL_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{- '[INST] ' + message['content'] + ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token }}"
    "{%- else %}{{- message['content'] + '\\n\\n' }}{%- endif %}"
    "{%- endfor %}"
)
DEEPSEEK_V2_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{- 'User: ' + message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'assistant' %}{{- 'Assistant: ' + message['content'] + eos_token }}"
    "{%- else %}{{- message['content'] + '\\n\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- 'Assistant:' }}{%- endif %}"
)
DEEPSEEK_V3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{- '<｜User｜>' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' %}{{- '<｜Assistant｜>' + message['content'] + eos_token }}"
    "{%- else %}{{- message['content'] }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<｜Assistant｜>' }}{%- endif %}"
)
GLM_TEMPLATE = (
    "[gMASK]<sop>"
    "{%- for message in messages %}{{- '<|' + message['role'] + '|>\\n' + message['content'] }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class TinyLayout:
    """One layout: transformers' model_type and its config values, the tokenizer's special tokens and template."""

    model_type: str
    config: dict[str, Any]
    special_tokens: tuple[str, ...]
    bos_token: Optional[str]
    eos_token: str
    chat_template: str
    stop_tokens: tuple[str, ...] = ()  # generation_config's eos_token_id besides eos_token (the end of a turn)
    prepend_bos: bool = False  # the tokenizer puts bos_token before every text (its post-processor), as Llama 3's
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    # the family's split of a text before BPE (its tokenizer.json's Split pre-tokenizer; None: GPT-2's) and NFC
    pretokenize_regex: Optional[str] = None
    nfc: bool = False


# Qwen2's pre-tokenizer pattern (as its tokenizer.json and transformers' Qwen2Tokenizer have it)
QWEN2_PRETOKENIZE_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                           r"\s*[\r\n]+|\s+(?!\S)|\s+")
_DENSE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=128, max_position_embeddings=256, rms_norm_eps=1e-5)
_MLA = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, intermediate_size=128,
            max_position_embeddings=256, kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
            rms_norm_eps=1e-6)
# the second layer's MLP: 8 routed experts of width 32, top 2 (the first layer dense)
_MOE = dict(first_k_dense_replace=1, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32)
_YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=64, beta_fast=32.0,
             beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0)
_CHATML = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_DEEPSEEK = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>")
LAYOUTS: dict[str, TinyLayout] = {
    "llama": TinyLayout(
        "llama",
        dict(_DENSE, rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=4.0, low_freq_factor=1.0,
                                          high_freq_factor=4.0, original_max_position_embeddings=64)),
        ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", chat_template=LLAMA3_TEMPLATE,
        stop_tokens=("<|eot_id|>",), prepend_bos=True,
    ),
    "qwen2": TinyLayout(
        "qwen2", dict(_DENSE, rope_parameters=dict(rope_type="default", rope_theta=1000000.0), tie_word_embeddings=True,
                      rms_norm_eps=1e-6),
        _CHATML, bos_token=None, eos_token="<|im_end|>", chat_template=CHATML_TEMPLATE, stop_tokens=("<|endoftext|>",),
        tokenizer_config=dict(pad_token="<|endoftext|>", tokenizer_class="Qwen2Tokenizer"),
        pretokenize_regex=QWEN2_PRETOKENIZE_REGEX, nfc=True,
    ),
    "mistral": TinyLayout(
        "mistral", dict(_DENSE, sliding_window=256),
        ("<s>", "</s>", "[INST]", "[/INST]"), bos_token="<s>", eos_token="</s>", chat_template=MISTRAL_TEMPLATE,
        prepend_bos=True,
    ),
    "deepseek_v2": TinyLayout(
        "deepseek_v2",
        dict(_MLA, **_MOE, q_lora_rank=None, n_shared_experts=2, topk_method="greedy", rope_parameters=_YARN),
        _DEEPSEEK, bos_token=_DEEPSEEK[0], eos_token=_DEEPSEEK[1], chat_template=DEEPSEEK_V2_TEMPLATE,
        prepend_bos=True,
    ),
    "deepseek_v3": TinyLayout(
        "deepseek_v3",
        dict(_MLA, **_MOE, q_lora_rank=48, n_shared_experts=1, n_group=4, topk_group=2, norm_topk_prob=True,
             routed_scaling_factor=2.5, rope_parameters=_YARN),
        (*_DEEPSEEK, "<｜User｜>", "<｜Assistant｜>"), bos_token=_DEEPSEEK[0], eos_token=_DEEPSEEK[1],
        chat_template=DEEPSEEK_V3_TEMPLATE, prepend_bos=True,
    ),
    "glm4_moe_lite": TinyLayout(
        "glm4_moe_lite",
        dict(_MLA, **_MOE, q_lora_rank=48, n_shared_experts=1, n_group=1, topk_group=1, norm_topk_prob=True,
             routed_scaling_factor=1.8, tie_word_embeddings=False),
        ("<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>"), bos_token=None,
        eos_token="<|endoftext|>", chat_template=GLM_TEMPLATE, stop_tokens=("<|user|>",),
    ),
    "youtu": TinyLayout(
        "youtu", dict(_MLA, q_lora_rank=48, tie_word_embeddings=True),
        _CHATML, bos_token=None, eos_token="<|im_end|>", chat_template=CHATML_TEMPLATE,
    ),
}
TOKENIZER_TEXT_BYTES = 1_000_000  # of the standard library's source: a 1,024-token BPE learns from it in seconds


def make_tokenizer(out_dir: Path, layout: TinyLayout, vocab_size: int) -> "Any":
    """tokenizer.json (a `vocab_size`-token BPE trained by `litgpt.scripts.train_tokenizer`, then the layout's
    special tokens) and tokenizer_config.json (its BOS/EOS and chat template) in `out_dir`; returns the
    `tokenizers.Tokenizer`."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors

    from litgpt.data.stdlib_text import StdlibText
    from litgpt.scripts.train_tokenizer import ENDOFTEXT, train_tokenizer

    added = [t for t in layout.special_tokens if t != ENDOFTEXT]  # the trained BPE has ENDOFTEXT (id 0)
    # StdlibText only reads the library's files here (its cache_dir is for tokenized splits, which are not made)
    train_tokenizer(StdlibText(max_bytes=TOKENIZER_TEXT_BYTES), out_dir, vocab_size=vocab_size - len(added),
                    min_frequency=2, max_chars=None)
    tokenizer = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    tokenizer.add_special_tokens(added)
    if layout.pretokenize_regex is not None:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(layout.pretokenize_regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if layout.nfc:
        tokenizer.normalizer = normalizers.NFC()
    if layout.prepend_bos:
        bos = layout.bos_token
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))])
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": layout.bos_token,
        "eos_token": layout.eos_token,
        **layout.tokenizer_config,
        "model_max_length": layout.config["max_position_embeddings"],
        "chat_template": layout.chat_template,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                                   encoding="utf-8")
    return tokenizer


def make_tiny_hf_model(out_dir: Path, layout: str = "llama", vocab_size: int = 1024, seed: int = 0) -> Path:
    """Write a tiny random model of `layout` with its tokenizer to `out_dir` (see the module docstring).

    Args:
        out_dir: the Hugging Face model directory to write (created; it must not hold a config.json yet).
        layout: one of `LAYOUTS`: llama, qwen2, mistral, deepseek_v2, deepseek_v3, glm4_moe_lite, youtu.
        vocab_size: the tokenizer's size, special tokens included, which is the model's vocab_size too.
        seed: the random seed of the weights (the tokenizer is the same for the same standard library).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"--layout {layout!r} is not a tiny layout; choose one of {', '.join(LAYOUTS)}")
    spec = LAYOUTS[layout]
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        raise ValueError(f"--out_dir {str(out_dir)!r} holds a model already (config.json); pass a new --out_dir")
    if vocab_size < 512:
        raise ValueError(f"--vocab_size must be at least 512 (the 256 bytes, the special tokens, merges), got "
                         f"{vocab_size}")
    if importlib.util.find_spec("transformers") is None:
        raise ValueError("make_tiny_hf_model builds the model with transformers, which is not installed; run "
                         "`pip install transformers`")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    tokenizer = make_tokenizer(out_dir, spec, vocab_size)
    ids = {token: tokenizer.token_to_id(token) for token in spec.special_tokens}
    bos_id = ids.get(spec.bos_token) if spec.bos_token else None
    eos_ids = [ids[spec.eos_token]] + [ids[t] for t in spec.stop_tokens]
    config = AutoConfig.for_model(spec.model_type, vocab_size=tokenizer.get_vocab_size(), bos_token_id=bos_id,
                                  eos_token_id=eos_ids[0], pad_token_id=None, **spec.config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(bos_token_id=bos_id,
                                               eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0])
    model.save_pretrained(out_dir)
    logger.info("wrote a %s model (%d parameters, vocabulary %d) -> %s", type(model).__name__,
                sum(p.numel() for p in model.parameters()), tokenizer.get_vocab_size(), out_dir)
    return out_dir


if __name__ == "__main__":
    from litgpt.__main__ import run_script

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_script(make_tiny_hf_model, as_positional=False)
