"""Chat templates (litgpt.prompts.ChatTemplate): a checkpoint's jinja2 template renders, and tokenizes, exactly as
transformers' `apply_chat_template` does; `load_prompt_style` finds it; `litgpt chat` keeps its KV cache across
templated turns; instruction data frames records with it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from hf_tokenizers import auto_tokenizer, make_hf_tokenizer
from litgpt.prompts import ChatTemplate, load_prompt_style
from litgpt.tokenizer import Tokenizer

# Templates of the shapes of Llama 3's, Qwen2.5's and SmolLM2's (written for these tests)
LLAMA3_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content'] | trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_message = '' %}\n"
    "{%- endif %}\n"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}\n"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: ' + strftime_now('%Y') + '\\n\\n' }}\n"
    "{{- system_message }}{{- '<|eot_id|>' }}\n"
    "{%- for message in messages %}\n"
    "    {%- if message['role'] not in ['user', 'assistant'] %}\n"
    "        {{- raise_exception('roles after the first must be user or assistant') }}\n"
    "    {%- endif %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim "
    "+ '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.' + "
    "'<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.role == 'system' and loop.first %}{%- continue %}{%- endif %}\n"
    "    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "{%- endfor %}\n"
    "{%- if tools %}{{- tools | tojson }}{%- endif %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
FAMILIES = {
    "llama3": dict(config={"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"},
                   post_processor="<|begin_of_text|>", chat_template=LLAMA3_TEMPLATE,
                   generation_config={"eos_token_id": [3, 4]}),
    "qwen2.5": dict(config={"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
                    chat_template=QWEN25_TEMPLATE, generation_config={"bos_token_id": 9, "eos_token_id": [8, 9]}),
    "smollm2": dict(config={"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}, chat_template=SMOLLM2_TEMPLATE),
}
CONVERSATIONS = [
    [{"role": "user", "content": "Hello, how are you today?"}],
    [{"role": "system", "content": "You are a cat."}, {"role": "user", "content": "Define the word sun."}],
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": " A sun is a kind of star. "},
     {"role": "user", "content": "The cat saw the dog."}],
]


def ids_of(output) -> list[int]:
    return list(output["input_ids"] if not isinstance(output, list) else output)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    directory = make_hf_tokenizer(tmp_path_factory.mktemp(request.param), **FAMILIES[request.param])
    return request.param, directory, Tokenizer(directory), auto_tokenizer(directory)


def test_rendered_text_and_ids_equal_transformers_apply_chat_template(family):
    _, directory, tokenizer, hf = family
    style = load_prompt_style(directory)
    assert isinstance(style, ChatTemplate)
    for messages in CONVERSATIONS:
        for generation_prompt in (True, False):
            text = style.render(messages, add_generation_prompt=generation_prompt)
            assert text == hf.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
        expected = ids_of(hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
        assert tokenizer.encode(style.render(messages)).tolist() == expected
    # one user turn as `litgpt generate` frames a prompt: no second BOS, whatever the tokenizer adds to plain text
    from litgpt.prompts import prompt_uses_bos

    prompt = "Hello, how are you today?"
    ids = tokenizer.encode(style.apply(prompt), bos=prompt_uses_bos(tokenizer, style)).tolist()
    assert ids == ids_of(hf.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                tokenize=True))
    assert style.apply("Define cat.", "a pet") == style.render([{"role": "user", "content": "Define cat.\n\na pet"}])


def test_stop_tokens_are_the_stop_ids_and_the_end_of_turn_token(family):
    name, _, tokenizer, _ = family
    style = ChatTemplate.from_checkpoint(tokenizer.checkpoint_dir)
    end = {"llama3": "<|eot_id|>", "qwen2.5": "<|im_end|>", "smollm2": "<|im_end|>"}[name]
    stops = [s[0] for s in style.stop_tokens(tokenizer)]
    assert stops[: len(tokenizer.stop_ids)] == tokenizer.stop_ids
    assert tokenizer.token_to_id(end) in stops and tokenizer.eos_id in stops


def test_template_files_beside_the_config_as_transformers_saves_them(tmp_path):
    config = dict(FAMILIES["smollm2"])
    config.pop("chat_template")
    from_file = SMOLLM2_TEMPLATE.replace("SmolLM", "SmolLM-from-file")
    messages = CONVERSATIONS[0]
    # chat_template.jinja wins over tokenizer_config.json's template, as in transformers
    directory = make_hf_tokenizer(tmp_path / "jinja", chat_template=SMOLLM2_TEMPLATE, **config)
    (directory / "chat_template.jinja").write_text(from_file)
    text = load_prompt_style(directory).render(messages)
    assert "SmolLM-from-file" in text
    assert text == auto_tokenizer(directory).apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert (directory / "chat_template.jinja") in Tokenizer(directory).files  # travels with checkpoints
    # a processor's chat_template.json is read when the tokenizer files hold no template
    directory = make_hf_tokenizer(tmp_path / "json", **config)
    (directory / "chat_template.json").write_text(json.dumps({"chat_template": from_file}))
    assert load_prompt_style(directory).render(messages) == text
    assert (directory / "chat_template.json") in Tokenizer(directory).files


def test_template_errors_are_one_line(tmp_path):
    style = ChatTemplate(LLAMA3_TEMPLATE, {"bos_token": "<s>"}, "the test template")
    with pytest.raises(ValueError, match="^the test template refused the conversation: roles after the first must be"):
        style.render([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}])
    with pytest.raises(ValueError, match="does not parse"):
        ChatTemplate("{% for m in messages %}")
    with pytest.raises(ValueError, match="has no chat template"):
        load_prompt_style(make_hf_tokenizer(tmp_path, config={"eos_token": "</s>"}), "chat_template")
    # a prompt_style.yaml wins over the template; --prompt_style too
    directory = make_hf_tokenizer(tmp_path / "t", **FAMILIES["qwen2.5"])
    assert load_prompt_style(directory, "alpaca").name == "alpaca"
    (directory / "prompt_style.yaml").write_text("name: plain\n")
    assert load_prompt_style(directory).name == "plain"
    (directory / "prompt_style.yaml").write_text("name: chat_template\n")
    assert isinstance(load_prompt_style(directory), ChatTemplate)


# ---------------------------------------------------------------------------------------------------- chat
def make_template_checkpoint(directory: Path, family: str = "qwen2.5") -> Path:
    from litgpt.checkpoint import save_checkpoint
    from litgpt.config import Config
    from litgpt.model import GPT, init_weights

    make_hf_tokenizer(directory, **FAMILIES[family])
    torch.manual_seed(0)
    model = GPT(Config.from_name("debug", n_layer=1, n_embd=32, n_head=4, block_size=256, vocab_size=400,
                                 padding_multiple=64))
    init_weights(model)
    save_checkpoint(model, directory)
    return directory


@pytest.mark.parametrize("family_name", ["qwen2.5", "llama3"])
@pytest.mark.parametrize("constant", [False, True], ids=["random", "constant"])
def test_chat_with_a_template_equals_uncached_greedy_and_feeds_only_new_tokens(tmp_path, family_name, constant):
    """Each reply equals greedy decoding of the whole rendered conversation without a cache. A model whose replies
    re-tokenize as sampled (`constant`: it always says `<s>`) is fed only the tokens after its cache; a random
    one's replies may re-tokenize otherwise, and then the rendering is prefilled again."""
    from test_generate import argmax_reference

    from litgpt import LLM
    from litgpt.generate.base import SamplingParams, trim_at_stop
    from litgpt.generate.chat import Conversation

    llm = LLM.load(make_template_checkpoint(tmp_path, family_name), device="cpu")
    if constant:
        with torch.no_grad():
            llm.model.lm_head.weight.zero_()  # every logit 0: greedy takes id 0, <s>
    assert isinstance(llm.prompt_style, ChatTemplate)
    hf = auto_tokenizer(tmp_path)
    conversation = Conversation(llm, SamplingParams(0.0), seed=0, compile=False)
    fed = []
    stream = conversation.session.stream
    conversation.session.stream = lambda prompt, *args: fed.append((len(prompt), args[-1])) or stream(prompt, *args)
    stops = llm.prompt_style.stop_tokens(llm.tokenizer)
    messages = []
    for turn, text in enumerate(["Hello, how are you today?", "Define the word sun.", "The cat saw the dog."]):
        messages.append({"role": "user", "content": text})
        prompt = ids_of(hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
        before, cached = conversation.position, list(conversation.cached)
        reply, _ = conversation.reply(text, 6, io.StringIO())
        expected = trim_at_stop(argmax_reference(llm.model, torch.tensor(prompt), 6), stops)[0]
        assert reply == expected, turn
        messages.append({"role": "assistant", "content": llm.tokenizer.decode(reply)})
        if before and prompt[:before] == cached:
            assert fed[-1] == (len(prompt) - before, before)  # only the new tokens, after the cached ones
        else:
            assert fed[-1] == (len(prompt), 0)
        if constant and turn:
            assert fed[-1][1] == before > 0
        assert conversation.position == len(prompt) + len(reply) + (len(reply) < 6) - 1 or reply == []


# ---------------------------------------------------------------------------------------------------- data
def test_instruction_data_with_the_chat_template(tmp_path):
    from litgpt.data import JSON

    directory = make_hf_tokenizer(tmp_path / "tok", **FAMILIES["llama3"])
    hf = auto_tokenizer(directory)
    records = [{"instruction": "Define the word sun.", "input": "", "output": "A sun is a kind of star."},
               {"instruction": "Hello", "input": "The cat saw the dog.", "output": "How are you today?"}]
    (tmp_path / "data").mkdir()
    for split in ("train", "val"):
        (tmp_path / "data" / f"{split}.json").write_text(json.dumps(records))
    data = JSON(tmp_path / "data", mask_prompt=True, prompt_style="chat_template")
    data.connect(Tokenizer(directory), max_seq_length=1000)
    assert isinstance(data.style, ChatTemplate)
    dataset = data.train_dataset()
    for record, sample in zip(records, dataset):
        user = record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")
        turns = [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
        full = ids_of(hf.apply_chat_template(turns, tokenize=True))
        prompt = ids_of(hf.apply_chat_template(turns[:1], add_generation_prompt=True, tokenize=True))
        assert sample["input_ids"].tolist() == full
        assert sample["labels"].tolist() == [-100] * len(prompt) + full[len(prompt):]
    with pytest.raises(ValueError, match="unknown prompt_style 'nope'; choose one of .*chat_template"):
        JSON(tmp_path / "data", prompt_style="nope")


def test_cli_chat_and_generate_with_the_template(tmp_path):
    from test_generate import cli

    from litgpt import LLM

    checkpoint_dir = make_template_checkpoint(tmp_path, "llama3")
    result = cli("chat", str(checkpoint_dir), "--device", "cpu", "--temperature", "0", "--max_new_tokens", "4",
                 stdin="Hello\nThe cat\n\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(">> Reply: ") == 2
    result = cli("generate", str(checkpoint_dir), "--prompt", "Hello", "--max_new_tokens", "4", "--temperature", "0",
                 "--device", "cpu", "--prompt_style", "chat_template")
    assert result.returncode == 0, result.stderr
    llm = LLM.load(checkpoint_dir, device="cpu")
    rendered = auto_tokenizer(checkpoint_dir).apply_chat_template([{"role": "user", "content": "Hello"}],
                                                                   add_generation_prompt=True, tokenize=False)
    assert result.stdout == rendered + llm.generate("Hello", max_new_tokens=4, temperature=0) + "\n"


def test_finetune_with_the_chat_template_saves_it_and_generation_uses_it(tmp_path):
    from litgpt import LLM
    from litgpt.__main__ import main

    base = make_template_checkpoint(tmp_path / "base", "qwen2.5")
    records = [{"instruction": f"Define the word {w}.", "input": "", "output": f"A {w} is a kind of star."}
               for w in ("sun", "cat", "dog", "tree", "house", "moon")]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.json").write_text(json.dumps(records[:4]))
    (tmp_path / "data" / "val.json").write_text(json.dumps(records[4:]))
    out = tmp_path / "out"
    main(["finetune_full", str(base), f"--out_dir={out}", "--precision=32-true", "--data=JSON",
          f"--data.json_path={tmp_path / 'data'}", "--data.prompt_style=chat_template", "--data.mask_prompt=true",
          "--train.global_batch_size=2", "--train.micro_batch_size=2", "--train.max_steps=2",
          "--train.lr_warmup_steps=1", "--eval.interval=1000", "--eval.max_iters=1"])
    final = out / "final"
    assert (final / "prompt_style.yaml").read_text().strip() == "name: chat_template"
    llm = LLM.load(final, device="cpu")
    assert isinstance(llm.prompt_style, ChatTemplate)
    prompt = "Define the word sun."
    expected = auto_tokenizer(base).apply_chat_template([{"role": "user", "content": prompt}],
                                                        add_generation_prompt=True, tokenize=True)
    assert llm.encode_prompts([prompt])[0].tolist() == ids_of(expected)
