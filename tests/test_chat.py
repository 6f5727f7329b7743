import io

import torch

from litgpt import LLM
from litgpt.generate.base import SamplingParams
from litgpt.generate.chat import Conversation
from test_generate import argmax_reference, cli, interrupt_when, make_checkpoint


def test_chat_over_stdin_reuses_the_cache_and_exits_on_empty_line(tmp_path):
    checkpoint_dir = make_checkpoint(tmp_path)
    result = cli("chat", str(checkpoint_dir), "--device", "cpu", "--temperature", "0", "--max_new_tokens", "5",
                 stdin="The cat\nsaw a dog\n\nnever read\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(">> Prompt: ") == 3 and result.stdout.count(">> Reply: ") == 2
    assert "never read" not in result.stdout
    # each reply equals greedy decoding of the whole conversation so far without any cache
    llm = LLM.load(checkpoint_dir, device="cpu")
    tk = llm.tokenizer
    first_ids = tk.encode("The cat")
    first = argmax_reference(llm.model, first_ids, 5)
    history = torch.cat((first_ids, torch.tensor(first), tk.encode("saw a dog")))
    second = argmax_reference(llm.model, history, 5)
    replies = [part.split("\n")[0] for part in result.stdout.split(">> Reply: ")[1:]]
    eos = tk.eos_id
    cut = lambda ids: ids[: ids.index(eos)] if eos in ids else ids  # noqa: E731
    assert replies == [tk.decode(cut(first)), tk.decode(cut(second))]


def test_chat_exits_cleanly_on_eof(tmp_path):
    result = cli("chat", str(make_checkpoint(tmp_path)), "--device", "cpu", "--max_new_tokens", "3", stdin="hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(">> Reply: ") == 1 and result.stdout.endswith(">> Prompt: \n")


def test_conversation_starts_over_when_the_context_is_full(tmp_path, capsys):
    llm = LLM.load(make_checkpoint(tmp_path), device="cpu")
    llm.model.max_seq_length = 40
    conversation = Conversation(llm, SamplingParams(0.0), seed=0, compile=False)
    first, _ = conversation.reply("The cat", 15, io.StringIO())
    replies = [conversation.reply("The cat", 15, io.StringIO())[0] for _ in range(3)]
    assert conversation.position <= 40
    assert "context full" in capsys.readouterr().err
    assert first in replies  # the first turn after the reset sees the same (empty) history as the very first


def test_chat_bad_arguments(tmp_path):
    result = cli("chat", str(make_checkpoint(tmp_path)), "--device", "cpu", "--top_p", "2")
    assert result.returncode == 2 and result.stderr.startswith("litgpt: error: top_p must be in (0, 1]")


def test_ctrl_c_during_a_reply_ends_the_chat_quietly_with_130(tmp_path):
    code, out, err = interrupt_when(["chat", str(make_checkpoint(tmp_path)), "--device", "cpu", "--temperature", "0"],
                                    seen=">> Reply: ", stdin="The cat\n")
    assert code == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert out.startswith(">> Prompt: >> Reply: ") and out.endswith("\n")


def test_ctrl_c_at_the_prompt_ends_the_chat_quietly_with_130(tmp_path):
    code, out, err = interrupt_when(["chat", str(make_checkpoint(tmp_path)), "--device", "cpu"], seen=">> Prompt: ")
    assert (code, out) == (130, ">> Prompt: \n") and "Traceback" not in err, err

