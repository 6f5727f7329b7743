"""Prompt styles: how a user's message is framed before it reaches the model, and which tokens end a reply.

A base model (everything `litgpt pretrain` writes) sees the text as it is: the `default` style. Fine-tuning data
frames each instruction (and its optional input) with a style too, `alpaca` or `plain`, and `litgpt finetune_*`
save that style with the checkpoint, so generation frames prompts exactly as training did. A checkpoint names its
style in `prompt_style.yaml` (`name: alpaca`, or upstream litgpt's `class_path: litgpt.prompts.Alpaca` layout);
`litgpt generate/chat --prompt_style NAME` overrides it. New styles subclass `PromptStyle` and are added to
`prompt_styles`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import yaml

from litgpt.tokenizer import Tokenizer


class PromptStyle:
    """Plain text: the prompt passes through unchanged (an input follows it after a blank line); the tokenizer's EOS
    ends a reply."""

    name = "default"

    def apply(self, prompt: str, input: str = "") -> str:
        """The text the model is given for the user message (or instruction) `prompt` with its optional `input`."""
        return f"{prompt}\n\n{input}" if input else prompt

    def stop_tokens(self, tokenizer: Tokenizer) -> list[list[int]]:
        """Token sequences that end a reply (each a list of ids): the tokenizer's stop ids (EOS and
        generation_config's eos_token_id)."""
        return [[i] for i in tokenizer.stop_ids]

    @classmethod
    def from_name(cls, name: str) -> "PromptStyle":
        if name not in prompt_styles:
            raise ValueError(f"unknown prompt style {name!r}; choose one of {sorted(prompt_styles)}")
        return prompt_styles[name]()

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: Union[str, Path]) -> "PromptStyle":
        """The style named in `checkpoint_dir/prompt_style.yaml`, or `default` when there is none."""
        path = Path(checkpoint_dir) / "prompt_style.yaml"
        if not path.is_file():
            return cls.from_name("default")
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        name: Optional[str] = data.get("name") if isinstance(data, dict) else None
        if name is None and isinstance(data, dict) and isinstance(data.get("class_path"), str):
            name = data["class_path"].rsplit(".", 1)[-1].lower()
        if name is None:
            raise ValueError(f"{path} names no prompt style; write `name: default` (or delete the file)")
        if name not in prompt_styles:
            raise ValueError(
                f"{path} names prompt style {name!r}, which this library does not have; "
                f"pass --prompt_style with one of {sorted(prompt_styles)}"
            )
        return prompt_styles[name]()

    def save(self, checkpoint_dir: Union[str, Path]) -> None:
        with open(Path(checkpoint_dir) / "prompt_style.yaml", "w", encoding="utf-8") as f:
            yaml.safe_dump({"name": self.name}, f)


class Alpaca(PromptStyle):
    """The Stanford Alpaca template: a preamble, `### Instruction:`, `### Input:` when there is one, `### Response:`."""

    name = "alpaca"

    def apply(self, prompt: str, input: str = "") -> str:
        if input:
            return (
                "Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n"
                f"### Instruction:\n{prompt}\n\n### Input:\n{input}\n\n### Response:\n"
            )
        return (
            "Below is an instruction that describes a task. Write a response that appropriately completes the "
            f"request.\n\n### Instruction:\n{prompt}\n\n### Response:\n"
        )


class Plain(PromptStyle):
    """The instruction on its own line (then the input on its own line); the response follows."""

    name = "plain"

    def apply(self, prompt: str, input: str = "") -> str:
        return f"{prompt}\n{input}\n" if input else f"{prompt}\n"


prompt_styles: dict[str, type[PromptStyle]] = {style.name: style for style in (PromptStyle, Alpaca, Plain)}


def prompt_uses_bos(tokenizer: Tokenizer) -> bool:
    """Whether a prompt starts with the tokenizer's BOS: as its own configuration says (`Tokenizer.add_bos`).
    Generation and fine-tuning data frame prompts alike."""
    return bool(tokenizer.add_bos)


def load_prompt_style(checkpoint_dir: Union[str, Path], name: Optional[str] = None) -> PromptStyle:
    """`name` when given, else the checkpoint's own style."""
    return PromptStyle.from_name(name) if name is not None else PromptStyle.from_checkpoint(checkpoint_dir)
