"""Prompt styles: how a user's message is framed before it reaches the model, and which tokens end a reply.

A base model (everything `litgpt pretrain` writes) sees the text as it is: the `default` style. A checkpoint
can name its style in `prompt_style.yaml` (`name: default`, or upstream litgpt's `class_path: litgpt.prompts.X`
layout); `litgpt generate/chat --prompt_style NAME` overrides it. New styles subclass `PromptStyle` and are
added to `prompt_styles`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import yaml

from litgpt.tokenizer import Tokenizer


class PromptStyle:
    """Plain text: the prompt passes through unchanged; the tokenizer's EOS ends a reply."""

    name = "default"

    def apply(self, prompt: str) -> str:
        """The text the model is given for the user message `prompt`."""
        return prompt

    def stop_tokens(self, tokenizer: Tokenizer) -> list[list[int]]:
        """Token sequences that end a reply (each a list of ids)."""
        return [[tokenizer.eos_id]] if tokenizer.eos_id is not None else []

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


prompt_styles: dict[str, type[PromptStyle]] = {"default": PromptStyle}


def load_prompt_style(checkpoint_dir: Union[str, Path], name: Optional[str] = None) -> PromptStyle:
    """`name` when given, else the checkpoint's own style."""
    return PromptStyle.from_name(name) if name is not None else PromptStyle.from_checkpoint(checkpoint_dir)
