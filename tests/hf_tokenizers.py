"""Small Hugging Face tokenizers built offline for the tests that compare with `transformers` (the oracle): a BPE
trained on a few strings with the special tokens of the Llama 2, Llama 3, ChatML and SmolLM2 families, saved as
tokenizer.json beside a tokenizer_config.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from tokenizers import Tokenizer, models, pre_tokenizers, decoders, processors, trainers

SPECIALS = ["<s>", "</s>", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
TEXTS = ["The cat saw the dog. Hello, how are you today?", "You are a helpful assistant named SmolLM.",
         "system user assistant: Define the word sun. A sun is a kind of star.", "Cutting Knowledge Date 2024"]


def make_hf_tokenizer(directory: Path, config: dict, post_processor: Optional[str] = None,
                      chat_template: Optional[str] = None, generation_config: Optional[dict] = None) -> Path:
    """directory/tokenizer.json (+ a TemplateProcessing post-processor prepending the token `post_processor`)
    and tokenizer_config.json = `config` (tokenizer_class PreTrainedTokenizerFast unless given)."""
    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS * 3, trainers.BpeTrainer(vocab_size=400, min_frequency=1, special_tokens=SPECIALS,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if post_processor is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{post_processor} $A", pair=f"{post_processor} $A {post_processor} $B",
            special_tokens=[(post_processor, tok.token_to_id(post_processor))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **config}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    if generation_config is not None:
        (directory / "generation_config.json").write_text(json.dumps(generation_config))
    return directory


def auto_tokenizer(directory: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))
