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
    assert sorted(prompt_styles) == ["alpaca", "default", "plain"]


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
