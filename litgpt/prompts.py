"""Prompt styles: how a user's message is framed before it reaches the model, and which tokens end a reply.

A base model (everything `litgpt pretrain` writes) sees the text as it is: the `default` style. Fine-tuning data
frames each instruction (and its optional input) with a style too, `alpaca` or `plain`, and `litgpt finetune_*`
save that style with the checkpoint, so generation frames prompts exactly as training did. A checkpoint names its
style in `prompt_style.yaml` (`name: alpaca`, or upstream litgpt's `class_path: litgpt.prompts.Alpaca` layout);
`litgpt generate/chat --prompt_style NAME` overrides it. New styles subclass `PromptStyle` and are added to
`prompt_styles`.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from litgpt.tokenizer import Tokenizer, _read_json

CHAT_TEMPLATE = "chat_template"  # the style name of a checkpoint's own chat template (`ChatTemplate`)


class PromptStyle:
    """Plain text: the prompt passes through unchanged (an input follows it after a blank line); the tokenizer's EOS
    ends a reply."""

    name = "default"
    renders_special_tokens = False  # True: the framed text writes its own BOS and special tokens (chat templates)

    def apply(self, prompt: str, input: str = "") -> str:
        """The text the model is given for the user message (or instruction) `prompt` with its optional `input`."""
        return f"{prompt}\n\n{input}" if input else prompt

    def stop_tokens(self, tokenizer: Tokenizer) -> list[list[int]]:
        """Token sequences that end a reply (each a list of ids): the tokenizer's stop ids (EOS and
        generation_config's eos_token_id)."""
        return [[i] for i in tokenizer.stop_ids]

    @classmethod
    def from_name(cls, name: str) -> "PromptStyle":
        if name == CHAT_TEMPLATE:
            raise ValueError("prompt style 'chat_template' is a checkpoint's own template: load it with "
                             "load_prompt_style(checkpoint_dir, 'chat_template')")
        if name not in prompt_styles:
            raise ValueError(f"unknown prompt style {name!r}; choose one of {style_names()}")
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
        if name == CHAT_TEMPLATE:
            return ChatTemplate.from_checkpoint(checkpoint_dir)
        if name not in prompt_styles:
            raise ValueError(
                f"{path} names prompt style {name!r}, which this library does not have; "
                f"pass --prompt_style with one of {style_names()}"
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


def style_names() -> list[str]:
    """The names `--prompt_style` / `--data.prompt_style` accept: the named styles and `chat_template`."""
    return sorted([*prompt_styles, CHAT_TEMPLATE])


# ---------------------------------------------------------------------------------------------------- chat templates
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def read_chat_template(checkpoint_dir: Union[str, Path]) -> Optional[str]:
    """The checkpoint's chat template, as transformers' tokenizers find it: chat_template.jinja, else
    tokenizer_config.json's `chat_template` (the `default` one of a list of named templates), else the
    `chat_template` of chat_template.json (as processors save it); None if there is none."""
    checkpoint_dir = Path(checkpoint_dir)
    if (checkpoint_dir / "chat_template.jinja").is_file():
        template: Any = (checkpoint_dir / "chat_template.jinja").read_text(encoding="utf-8")
    else:
        template = _read_json(checkpoint_dir / "tokenizer_config.json").get("chat_template")
        if template is None:
            template = _read_json(checkpoint_dir / "chat_template.json").get("chat_template")
    if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template.strip() else None


def read_special_tokens(checkpoint_dir: Union[str, Path]) -> dict[str, str]:
    """The named special tokens (bos_token, eos_token, ...) of tokenizer_config.json, then special_tokens_map.json:
    the variables a chat template sees besides the messages."""
    tokens: dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        config = _read_json(Path(checkpoint_dir) / name)
        for key in SPECIAL_TOKEN_NAMES:
            value = config.get(key)
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str) and key not in tokens:
                tokens[key] = value
    return tokens


@functools.lru_cache(maxsize=32)
def compile_chat_template(template: str) -> Any:
    """A jinja2 template in the environment transformers renders chat templates in: sandboxed and immutable,
    trim_blocks and lstrip_blocks, loop controls, `{% generation %}` blocks (rendered as their body), the
    `raise_exception` and `strftime_now` globals and a `tojson` filter that does not escape HTML."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                       extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ValueError(f"the chat template does not parse (line {e.lineno}: {e.message})") from None


class ChatTemplate(PromptStyle):
    """A checkpoint's own chat template (a jinja2 template, as in Hugging Face tokenizer files), rendered as
    `tokenizer.apply_chat_template` renders it: the variables are `messages`, `add_generation_prompt`, `tools`,
    `documents` and the named special tokens (`bos_token`, `eos_token`, ...). The text it renders holds its own
    special tokens, so it is tokenized without adding any (`renders_special_tokens`).

    `apply(prompt, input)` is one user turn (the input after a blank line) and the generation prompt; `render`
    renders a whole conversation. A reply ends at the tokenizer's stop ids and at the special token the template
    closes an assistant turn with (`<|eot_id|>`, `<|im_end|>`, ...).
    """

    name = CHAT_TEMPLATE
    renders_special_tokens = True

    def __init__(self, template: str, special_tokens: Optional[dict[str, str]] = None, source: str = "") -> None:
        self.template = template
        self.special_tokens = dict(special_tokens or {})
        self.source = source or "the chat template"
        compile_chat_template(template)  # a template that does not parse fails here, in one line

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: Union[str, Path]) -> "ChatTemplate":
        template = read_chat_template(checkpoint_dir)
        if template is None:
            raise ValueError(
                f"{str(checkpoint_dir)!r} has no chat template (chat_template in tokenizer_config.json, "
                "chat_template.jinja or chat_template.json); choose a named prompt style"
            )
        return cls(template, read_special_tokens(checkpoint_dir), f"the chat template of {str(checkpoint_dir)!r}")

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **variables: Any) -> str:
        """The text of the conversation `messages` ([{"role", "content"}, ...]), with the assistant's header after
        it when `add_generation_prompt`; `variables` are passed to the template too."""
        import jinja2

        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
        context = {**self.special_tokens, "tools": None, "documents": None, **variables}
        try:
            return compile_chat_template(self.template).render(
                messages=messages, add_generation_prompt=add_generation_prompt, **context
            )
        except jinja2.exceptions.TemplateError as e:
            raise ValueError(f"{self.source} refused the conversation: {e}") from None

    def apply(self, prompt: str, input: str = "") -> str:
        content = f"{prompt}\n\n{input}" if input else prompt
        return self.render([{"role": "user", "content": content}])

    def stop_tokens(self, tokenizer: Tokenizer) -> list[list[int]]:
        ids = list(tokenizer.stop_ids)
        end = self.end_of_turn_id(tokenizer)
        if end is not None and end not in ids:
            ids.append(end)
        return [[i] for i in ids]

    def end_of_turn_id(self, tokenizer: Tokenizer) -> Optional[int]:
        """The special token right after an assistant message's text in this template, or None."""
        marker = "\u2063reply\u2063"
        try:
            text = self.render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
                               add_generation_prompt=False)
        except ValueError:
            return None
        if marker not in text:
            return None
        tail = text.split(marker, 1)[1].lstrip(" ")
        for token in self.special_tokens.values():
            if token and tail.startswith(token):
                return tokenizer.token_to_id(token)
        ids = tokenizer.encode(tail).tolist()[:1]
        if ids and tokenizer.backend == "huggingface":
            added = tokenizer.processor.get_added_tokens_decoder()
            if ids[0] in added and added[ids[0]].special:
                return ids[0]
        return None

    def save(self, checkpoint_dir: Union[str, Path]) -> None:
        """`name: chat_template`: the template itself travels in the tokenizer files saved beside it."""
        with open(Path(checkpoint_dir) / "prompt_style.yaml", "w", encoding="utf-8") as f:
            yaml.safe_dump({"name": self.name}, f)


def prompt_uses_bos(tokenizer: Tokenizer, style: Optional[PromptStyle] = None) -> bool:
    """Whether a prompt starts with the tokenizer's BOS: as its own configuration says (`Tokenizer.add_bos`), unless
    the style renders its special tokens itself (a chat template writes `bos_token` where it wants one).
    Generation and fine-tuning data frame prompts alike."""
    return bool(tokenizer.add_bos) and not (style is not None and style.renders_special_tokens)


def load_prompt_style(checkpoint_dir: Union[str, Path], name: Optional[str] = None) -> PromptStyle:
    """`name` when given (`chat_template`: the checkpoint's template), else the checkpoint's prompt_style.yaml, else
    its chat template, else `default`."""
    if name == CHAT_TEMPLATE:
        return ChatTemplate.from_checkpoint(checkpoint_dir)
    if name is not None:
        return PromptStyle.from_name(name)
    if not (Path(checkpoint_dir) / "prompt_style.yaml").is_file() and read_chat_template(checkpoint_dir) is not None:
        return ChatTemplate.from_checkpoint(checkpoint_dir)
    return PromptStyle.from_checkpoint(checkpoint_dir)
