"""Prompt styles (litgpt/prompts.py): the alpaca and plain templates, the default pass-through, and how a checkpoint
names its style."""

from types import SimpleNamespace

import pytest

from litgpt.prompts import Alpaca, Plain, PromptStyle, load_prompt_style, prompt_styles, prompt_uses_bos


def test_alpaca_template_with_and_without_input():
    assert Alpaca().apply("Name a color.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nName a color.\n\n### Response:\n"
    )
    assert Alpaca().apply("Translate.", "chat") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
        "response that appropriately completes the request.\n\n### Instruction:\nTranslate.\n\n### Input:\nchat\n\n"
        "### Response:\n"
    )


def test_plain_and_default():
    assert Plain().apply("Define cat.") == "Define cat.\n"
    assert Plain().apply("Define cat.", "a pet") == "Define cat.\na pet\n"
    assert PromptStyle().apply("Once upon a time") == "Once upon a time"
    assert PromptStyle().apply("Summarize:", "text") == "Summarize:\n\ntext"
    assert {"alpaca", "default", "plain"} <= set(prompt_styles)


@pytest.mark.parametrize("text, name", [("name: plain\n", "plain"), ("class_path: litgpt.prompts.Alpaca\n", "alpaca")])
def test_checkpoint_names_its_style(tmp_path, text, name):
    (tmp_path / "prompt_style.yaml").write_text(text)
    assert load_prompt_style(tmp_path).name == name
    assert load_prompt_style(tmp_path, "default").name == "default"  # --prompt_style wins
    Plain().save(tmp_path)
    assert load_prompt_style(tmp_path).name == "plain"


def test_prompt_bos_rule():
    # the tokenizer's own configuration decides (tests/test_tokenizer.py compares it with transformers')
    assert prompt_uses_bos(SimpleNamespace(bos_id=1, eos_id=2, add_bos=True))
    assert not prompt_uses_bos(SimpleNamespace(bos_id=1, eos_id=2, add_bos=False))



# ---------------------------------------------------------------------------------------------------- model families
UPSTREAM = {  # upstream litgpt's prompt_style.yaml class paths -> what the prompt "Hi" becomes
    "Default": "Hi",
    "Alpaca": "Below is an instruction that describes a task. Write a response that appropriately completes the "
              "request.\n\n### Instruction:\nHi\n\n### Response:\n",
    "Llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "ChatML": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "Qwen2_5": "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
               "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "Qwen3": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "SmolLM2": "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
               "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "TinyLlama": "<|system|>\nYou are a friendly chatbot who always gives helpful, detailed, and polite answers.</s>\n"
                 "<|user|>\nHi</s>\n<|assistant|>\n",
    "Phi2": "Instruct: Hi\nOutput:",
    "Phi3": "<|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n",
    "Phi4": "<|im_start|>user<|im_sep|>Hi<|im_end|><|im_start|>assistant<|im_sep|>",
    "Gemma": "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "CodeLlama": "[INST] Hi [/INST]",
    "Platypus": "### Instruction:\n\nHi\n\n### Response:\n",
}


@pytest.mark.parametrize("class_name", sorted(UPSTREAM))
def test_upstream_prompt_style_yaml_loads(tmp_path, class_name):
    (tmp_path / "prompt_style.yaml").write_text(f"class_path: litgpt.prompts.{class_name}\n")
    style = load_prompt_style(tmp_path)
    assert type(style).__name__ == class_name
    assert style.apply("Hi") == UPSTREAM[class_name]


def test_system_prompts_and_inputs():
    from litgpt.prompts import Llama2, ChatML, CodeLlama

    assert CodeLlama().apply("Hi", sys_prompt="Be brief.") == "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]"
    assert ChatML("S").apply("Hi", "x {y}") == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi\n\nx {y}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert Llama2().apply("Hi").startswith("[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant.")
    assert Llama2().apply("Hi").endswith("share false information.\n<</SYS>>\n\n Hi [/INST] ")


def test_unknown_class_paths_are_refused_in_one_line(tmp_path):
    for class_path in ("litgpt.prompts.Nope", "mypackage.prompts.Llama3"):
        (tmp_path / "prompt_style.yaml").write_text(f"class_path: {class_path}\n")
        with pytest.raises(ValueError) as error:
            load_prompt_style(tmp_path)
        message = str(error.value)
        assert "\n" not in message and class_path in message and "litgpt.prompts.Llama3" in message


def test_save_and_has_prompt_style_round_trip(tmp_path):
    import yaml

    from litgpt.prompts import has_prompt_style, save_prompt_style

    assert not has_prompt_style(tmp_path)
    for name, cls in prompt_styles.items():
        save_prompt_style(name, tmp_path)
        assert has_prompt_style(tmp_path) and type(load_prompt_style(tmp_path)) is cls
        data = yaml.safe_load((tmp_path / "prompt_style.yaml").read_text())
        if name != "plain":  # upstream litgpt reads class_path
            assert data["class_path"] == f"litgpt.prompts.{cls.__name__}"
            (tmp_path / "prompt_style.yaml").write_text(f"class_path: {data['class_path']}\n")
            assert type(load_prompt_style(tmp_path)) is cls
    save_prompt_style(Plain(), tmp_path)
    assert load_prompt_style(tmp_path).name == "plain"


def test_family_stop_tokens_and_templates_agree_with_transformers(tmp_path):
    """Qwen2_5 and SmolLM2 frame one message as their chat templates do (rendered by transformers); Llama3 and the
    ChatML styles stop at their end-of-turn tokens."""
    from hf_tokenizers import auto_tokenizer, make_hf_tokenizer
    from test_chat_template import FAMILIES

    from litgpt.prompts import Llama3, Qwen2_5, SmolLM2
    from litgpt.tokenizer import Tokenizer

    messages = [{"role": "user", "content": "Hello, how are you today?"}]
    for name, style in (("qwen2.5", Qwen2_5()), ("smollm2", SmolLM2())):
        directory = make_hf_tokenizer(tmp_path / name, **FAMILIES[name])
        hf = auto_tokenizer(directory)
        assert style.apply(messages[0]["content"]) == hf.apply_chat_template(messages, add_generation_prompt=True,
                                                                             tokenize=False)
        tokenizer = Tokenizer(directory)
        assert [tokenizer.token_to_id("<|im_end|>")] in style.stop_tokens(tokenizer)
    tokenizer = Tokenizer(make_hf_tokenizer(tmp_path / "llama3", **FAMILIES["llama3"]))
    stops = Llama3().stop_tokens(tokenizer)
    assert [tokenizer.token_to_id("<|eot_id|>")] in stops and [tokenizer.eos_id] in stops
    # Llama3's text starts with <|begin_of_text|>: encoding it with BOS adds no second one
    ids = tokenizer.encode(Llama3().apply("Hi"), bos=tokenizer.add_bos).tolist()
    assert ids[:2] != [tokenizer.bos_id] * 2 and ids[0] == tokenizer.bos_id
