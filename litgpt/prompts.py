"""Prompt styles: how a user's message is framed before it reaches the model, and which tokens end a reply.

A base model (everything `litgpt pretrain` writes) sees the text as it is: the `default` style. Fine-tuning data
frames each instruction (and its optional input) with a style too, `alpaca` or `plain`, and `litgpt finetune_*`
save that style with the checkpoint, so generation frames prompts exactly as training did.

A checkpoint names its style in `prompt_style.yaml`: `name: alpaca`, or upstream litgpt's layout `class_path:
litgpt.prompts.Llama3` (the model families upstream litgpt names: Llama2, Llama3, ChatML, Qwen2_5, SmolLM2, Phi3,
Gemma, TinyLlama, CodeLlama for Mistral, ...; `save_prompt_style` writes both keys). Without that file a
checkpoint's own chat template (tokenizer_config.json's `chat_template`, or chat_template.jinja) frames messages:
`ChatTemplate` renders it with jinja2 as transformers' `apply_chat_template` does. `litgpt generate/chat
--prompt_style NAME` overrides both (`chat_template`: the checkpoint's template). New styles subclass `PromptStyle`
and are added to `prompt_styles`.
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
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a mapping; write `name: default` or `class_path: litgpt.prompts.Default`")
        name = data.get("name")
        if name is None and isinstance(data.get("class_path"), str):
            return _from_class_path(data["class_path"], path)
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
        """Write `checkpoint_dir/prompt_style.yaml`: the style's `name` and, for the styles upstream litgpt has too,
        its `class_path` (`litgpt.prompts.Llama3`), which upstream litgpt reads."""
        data = {"name": self.name}
        class_name = "Default" if type(self) is PromptStyle else type(self).__name__
        if class_name in upstream_class_names():
            data["class_path"] = f"litgpt.prompts.{class_name}"
        with open(Path(checkpoint_dir) / "prompt_style.yaml", "w", encoding="utf-8") as f:
            yaml.safe_dump(data, f, sort_keys=False)


class Default(PromptStyle):
    """The prompt as it is (upstream litgpt's `Default`)."""


class Alpaca(PromptStyle):
    """The Stanford Alpaca template: a preamble, `### Instruction:`, `### Input:` when there is one, `### Response:`."""

    name = "alpaca"

    def apply(self, prompt: str, input: str = "", *, sys_prompt: Optional[str] = None) -> str:
        if input:
            system = sys_prompt or (
                "Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n"
            )
            return f"{system}### Instruction:\n{prompt}\n\n### Input:\n{input}\n\n### Response:\n"
        system = sys_prompt or (
            "Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n"
        )
        return f"{system}### Instruction:\n{prompt}\n\n### Response:\n"


class Plain(PromptStyle):
    """The instruction on its own line (then the input on its own line); the response follows."""

    name = "plain"

    def apply(self, prompt: str, input: str = "") -> str:
        return f"{prompt}\n{input}\n" if input else f"{prompt}\n"


# ---------------------------------------------------------------------------------------------------- model families
class FramedStyle(PromptStyle):
    """A fixed frame around the prompt, as the instruction-tuned model families were trained with.

    `frame` holds `{prompt}` (the message, an input after a blank line) and `{system}`: the system prompt written
    with `system_frame` when there is one (`sys_prompt`, else `default_system`), else nothing. `stop_words` are
    token sequences (each a tuple of token strings) that end a reply besides the tokenizer's stop ids; those the
    vocabulary lacks are left out.
    """

    frame = "{prompt}"
    system_frame = "{system}"
    default_system: Optional[str] = None
    stop_words: tuple[tuple[str, ...], ...] = ()

    def apply(self, prompt: str, input: str = "", *, sys_prompt: Optional[str] = None) -> str:
        message = f"{prompt}\n\n{input}" if input else prompt
        system = sys_prompt or self.default_system
        return self.frame.format(prompt=message, system=self.system_frame.format(system=system) if system else "")

    def stop_tokens(self, tokenizer: Tokenizer) -> list[list[int]]:
        stops = super().stop_tokens(tokenizer)
        for words in self.stop_words:
            ids = [tokenizer.token_to_id(word) for word in words]
            if None not in ids and ids not in stops:
                stops.append(ids)
        return stops


def _family(class_name: str, name: str, frame: str, doc: str, **fields: Any) -> type[FramedStyle]:
    return type(class_name, (FramedStyle,), {"name": name, "frame": frame, "__doc__": doc, "__module__": __name__,
                                             **fields})


INSTRUCTION_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
)
INPUT_PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    "response that appropriately completes the request.\n\n"
)
LLAMA2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe.  "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\nIf a question does not make "
    "any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't "
    "know the answer to a question, please don't share false information."
)
STABLELM_SYSTEM = (
    "# StableLM Tuned (Alpha version)\n- StableLM is a helpful and harmless open-source AI language model developed "
    "by StabilityAI.\n- StableLM is excited to be able to help the user, but will refuse to do anything that could be "
    "considered harmful to the user.\n- StableLM is more than just an information source, StableLM is also able to "
    "write poetry, short stories, and make jokes.\n- StableLM will refuse to participate in anything that could harm "
    "a human."
)
SALAMANDRA_SYSTEM = (
    "I am Salamandra, an AI language model developed at the Barcelona Supercomputing Centre (BSC) by the Language "
    "Technologies Unit. My knowledge base was last updated on August 2023. Today Date: 2024-09-30\nSoy Salamandra, "
    "un modelo lingüístico de IA desarrollado en el Barcelona Supercomputing Centre (BSC) por la Language "
    "Technologies Unit. Mi base de conocimientos se actualizó por última vez en agosto de 2023.\nSoc Salamandra, un "
    "model de llenguatge d'IA desenvolupat al Barcelona Supercomputing Centre (BSC) per la Language Technologies Unit."
)
CHATML_FRAME = "{system}<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
CHATML_SYSTEM = "<|im_start|>system\n{system}<|im_end|>\n"
LLAMA3_FRAME = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
)

FLAN = _family("FLAN", "flan", "{system}### Instruction:\n{prompt}\n\n### Response:\n", "FLAN's instruction frame.",
               default_system=INSTRUCTION_PREAMBLE)
Longform = _family("Longform", "longform", "{system}### Instruction:\n{prompt}\n\n### Response:\n",
                   "LongForm's instruction frame.", default_system=INPUT_PREAMBLE)
StableLMAlpha = _family("StableLMAlpha", "stablelm-alpha", "<|SYSTEM|>{system}<|USER|>{prompt}<|ASSISTANT|>",
                        "StableLM Tuned Alpha.", default_system=STABLELM_SYSTEM,
                        stop_words=(("<|SYSTEM|>",), ("<|ASSISTANT|>",), ("<|USER|>",)))
StableLMZephyr = _family("StableLMZephyr", "stablelm-zephyr", "<|user|>\n{prompt}<|endoftext|>\n<|assistant|>\n",
                         "StableLM Zephyr.")
Falcon = _family("Falcon", "falcon", "{prompt}\nAnswer:", "Falcon instruct.", stop_words=(("User", ":"),))
Falcon3 = _family("Falcon3", "falcon3", "<|user|>\n{prompt}<|endoftext|>\n<|assistant|>\n", "Falcon 3 instruct.",
                  stop_words=(("<|endoftext|>",),))
Llama2 = _family("Llama2", "llama2", "[INST] {system} {prompt} [/INST] ", "Llama 2 chat, with its system prompt.",
                 system_frame="<<SYS>>\n{system}\n<</SYS>>\n\n", default_system=LLAMA2_SYSTEM)
Llama3 = _family("Llama3", "llama3", LLAMA3_FRAME, "Llama 3 instruct: one system and one user turn.",
                 system_frame="{system}", default_system="You are a helpful assistant.",
                 stop_words=(("<|eot_id|>",),))
R1Base = _family("R1Base", "r1-base", "{system}<｜User｜>{prompt}<｜Assistant｜>", "DeepSeek R1.",
                 stop_words=(("<｜end▁of▁sentence｜>",),))
FreeWilly2 = _family("FreeWilly2", "freewilly2", "### System:\n{system}\n\n### User:\n{prompt}\n\n### Assistant:\n",
                     "FreeWilly 2.", default_system="This is a system prompt, please behave and help the user.")
Platypus = _family("Platypus", "platypus", "### Instruction:\n\n{prompt}\n\n### Response:\n", "Platypus.")
StableCode = _family("StableCode", "stablecode", "###Instruction\n{prompt}###Response\n", "StableCode instruct.")
CodeLlama = _family("CodeLlama", "codellama", "[INST] {system}{prompt} [/INST]",
                    "CodeLlama and Mistral / Mixtral instruct (a system prompt only when given).",
                    system_frame="<<SYS>>\n{system}\n<</SYS>>\n\n")
Phi1 = _family("Phi1", "phi-1", "{prompt}\n\nAnswer:", "Phi-1.", stop_words=(("Answer", ":"),))
Phi2 = _family("Phi2", "phi-2", "Instruct: {prompt}\nOutput:", "Phi-2.")
Phi3 = _family("Phi3", "phi-3", "<|system|>\n{system}<|end|>\n<|user|>\n{prompt}<|end|>\n<|assistant|>\n", "Phi-3.",
               default_system="You are a helpful assistant.", stop_words=(("<|end|>",),))
Phi4 = _family("Phi4", "phi-4", "{system}<|im_start|>user<|im_sep|>{prompt}<|im_end|><|im_start|>assistant<|im_sep|>",
               "Phi-4.", system_frame="<|im_start|>system<|im_sep|>{system}<|im_end|>", stop_words=(("<|im_end|>",),))
Phi4Mini = _family("Phi4Mini", "phi-4-mini", "{system}<|user|>{prompt}<|end|><|assistant|>", "Phi-4 mini.",
                   system_frame="<|system|>{system}<|end|>", stop_words=(("<|end|>",),))
Phi4MiniReasoning = _family("Phi4MiniReasoning", "phi-4-mini-reasoning",
                            "<|system|>{system}<|end|><|user|>{prompt}<|end|><|assistant|>", "Phi-4 mini reasoning.",
                            default_system="Your name is Phi, an AI math expert developed by Microsoft.",
                            stop_words=(("<|end|>",),))
TinyLlama = _family("TinyLlama", "tinyllama", "<|system|>\n{system}</s>\n<|user|>\n{prompt}</s>\n<|assistant|>\n",
                    "TinyLlama chat.",
                    default_system="You are a friendly chatbot who always gives helpful, detailed, and polite answers.")
Gemma = _family("Gemma", "gemma", "<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n",
                "Gemma instruct.", stop_words=(("<end_of_turn>",),))
OLMo = _family("OLMo", "olmo", "<|endoftext|><|user|>\n{prompt}\n<|assistant|>\n", "OLMo instruct.")


class ChatML(FramedStyle):
    """ChatML (`<|im_start|>role ... <|im_end|>`): a system turn when there is a system message."""

    name = "chatml"
    frame = CHATML_FRAME
    system_frame = CHATML_SYSTEM
    stop_words = (("<|im_end|>",),)

    def __init__(self, system_message: Optional[str] = None) -> None:
        if system_message is not None:
            self.default_system = system_message


def _chatml(class_name: str, name: str, system: Optional[str], doc: str) -> type[ChatML]:
    return type(class_name, (ChatML,), {"name": name, "default_system": system, "__doc__": doc, "__module__": __name__})


Qwen2_5 = _chatml("Qwen2_5", "qwen2.5", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
                  "Qwen2.5 instruct.")
Qwen2_5_Math = _chatml("Qwen2_5_Math", "qwen2.5-math",
                       "Please reason step by step, and put your final answer within \\boxed{}.", "Qwen2.5 math.")
QwQ = _chatml("QwQ", "qwq", "You are a helpful and harmless assistant. You are Qwen developed by Alibaba. You should "
              "think step-by-step.", "QwQ.")
Qwen3 = _chatml("Qwen3", "qwen3", None, "Qwen3 (no system turn).")
SmolLM2 = _chatml("SmolLM2", "smollm2", "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
                  "SmolLM2 instruct.")
Salamandra = _chatml("Salamandra", "salamandra", SALAMANDRA_SYSTEM, "Salamandra instruct.")

prompt_styles: dict[str, type[PromptStyle]] = {
    style.name: style
    for style in (
        Default, Alpaca, Plain, FLAN, Longform, StableLMAlpha, StableLMZephyr, Falcon, Falcon3, Llama2, Llama3, R1Base,
        FreeWilly2, Platypus, StableCode, CodeLlama, Phi1, Phi2, Phi3, Phi4, Phi4Mini, Phi4MiniReasoning, TinyLlama,
        Gemma, OLMo, ChatML, Qwen2_5, Qwen2_5_Math, QwQ, Qwen3, SmolLM2, Salamandra,
    )
}
OWN_STYLES = ("Plain",)  # ours only: saved by name, without an upstream class_path


def upstream_class_names() -> dict[str, type[PromptStyle]]:
    """Class name -> style, for the `class_path: litgpt.prompts.NAME` of upstream litgpt's prompt_style.yaml."""
    return {cls.__name__: cls for cls in prompt_styles.values() if cls.__name__ not in OWN_STYLES}


def _from_class_path(class_path: str, path: Path) -> PromptStyle:
    module, _, class_name = class_path.rpartition(".")
    classes = upstream_class_names()
    if module != "litgpt.prompts" or class_name not in classes:
        raise ValueError(
            f"{path}: class_path {class_path!r} is not a prompt style this library has; known: "
            f"{', '.join('litgpt.prompts.' + n for n in sorted(classes))} (or write `name:` with one of "
            f"{style_names()})"
        )
    return classes[class_name]()


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


def has_prompt_style(checkpoint_dir: Union[str, Path]) -> bool:
    """Whether the checkpoint names its prompt style (a prompt_style.yaml)."""
    return (Path(checkpoint_dir) / "prompt_style.yaml").is_file()


def save_prompt_style(style: Union[str, PromptStyle], checkpoint_dir: Union[str, Path]) -> None:
    """Write `checkpoint_dir/prompt_style.yaml` for `style` (a name or a PromptStyle)."""
    (PromptStyle.from_name(style) if isinstance(style, str) else style).save(checkpoint_dir)


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
