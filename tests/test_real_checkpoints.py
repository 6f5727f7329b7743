"""Real checkpoints the way a user meets them, offline: a tiny random model of each published layout
(`litgpt.scripts.make_tiny_hf_model`: transformers' own save_pretrained output beside a tokenizer with the family's
special tokens and chat template) goes through `litgpt download ORG/NAME --source_dir DIR`, and the checkpoint it
converts computes transformers' logits, tokenizes as transformers' tokenizer does, frames a chat prompt with exactly
`apply_chat_template`'s ids and continues it greedily as transformers' `generate` does; quantized, it decodes as
the model holding its dequantized weights."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from litgpt.api import LLM
from litgpt.checkpoint import load_checkpoint
from litgpt.prompts import ChatTemplate, load_prompt_style
from litgpt.scripts.download import download
from litgpt.scripts.make_tiny_hf_model import LAYOUTS, make_tiny_hf_model
from litgpt.tokenizer import Tokenizer
from test_convert_hf_checkpoint import randomize_
from test_quantize import cpu_kernels_missing, needs_bnb_cpu

# every layout, and DeepSeek-V3's with its projections stored as FP8 blocks, as DeepSeek-V3/R1 and Moonlight ship
CASES = [*LAYOUTS, "deepseek_v3-fp8"]
FP8_BLOCK = (16, 16)  # partial blocks at the edges of the 40- and 48-wide maps; published checkpoints use 128 x 128
VOCAB = 512
SEQ = 80  # past the original context (64) of the llama3 and YaRN rope scalings, within max_position_embeddings
TEXTS = ["def main(argv):\n    return len(argv)", "Hello, world! The cat saw the dog.", "  import os  "]
CONVERSATIONS = [
    [{"role": "user", "content": "What does the Python builtin len do?"}],
    [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": "Define the word class."}],
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Return the number of items."},
     {"role": "user", "content": "And print?"}],
]


def store_fp8(hf_model, hf_dir) -> None:
    """Rewrite hf_dir's weights with every projection matrix as e4m3 + weight_scale_inv blocks, and load the
    dequantized values (rounded to bfloat16, as the converter writes them) back into hf_model."""
    from safetensors.torch import save_file

    from test_fp8 import dequantize_by_loop, quantize_blocks

    stored, reference = {}, {}
    for name, tensor in hf_model.state_dict().items():
        if tensor.ndim == 2 and name.endswith("proj.weight"):
            q, scale_inv = quantize_blocks(tensor, FP8_BLOCK)
            stored[name], stored[name + "_scale_inv"] = q, scale_inv
            reference[name] = dequantize_by_loop(q, scale_inv, FP8_BLOCK).to(torch.bfloat16).float()
        else:
            stored[name] = tensor.contiguous()
    assert sum(t.dtype == torch.float8_e4m3fn for t in stored.values()) >= 10
    save_file(stored, str(hf_dir / "model.safetensors"))
    config = json.loads((hf_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": list(FP8_BLOCK)}
    (hf_dir / "config.json").write_text(json.dumps(config))
    hf_model.load_state_dict(reference, strict=False)


@pytest.fixture(scope="module", params=CASES)
def downloaded(request, tmp_path_factory):
    """(case, the transformers model, its tokenizer, the converted checkpoint directory): the tiny model of the
    case's layout with noticeable random weights, saved by transformers, then `download --source_dir`."""
    case = request.param
    layout = case.split("-")[0]
    root = tmp_path_factory.mktemp(case)
    hf_dir = make_tiny_hf_model(root / "hf", layout=layout, vocab_size=VOCAB)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    torch.manual_seed(0)
    randomize_(hf_model)
    hf_model.save_pretrained(hf_dir)
    if case.endswith("-fp8"):
        store_fp8(hf_model, hf_dir)
    checkpoint = download(f"tiny-org/{case}", checkpoint_dir=root / "checkpoints", source_dir=hf_dir)
    assert checkpoint == root / "checkpoints" / "tiny-org" / case
    return case, hf_model, transformers.AutoTokenizer.from_pretrained(str(hf_dir)), checkpoint


def test_converted_checkpoint_gives_transformers_logits(downloaded):
    case, hf_model, _, checkpoint = downloaded
    model = load_checkpoint(checkpoint, dtype=torch.float32).eval()
    assert model.config.vocab_size == VOCAB and (model.config.latent_attention is not None) == (
        LAYOUTS[case.split("-")[0]].model_type not in ("llama", "qwen2", "mistral"))
    idx = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(idx), hf_model(idx).logits
    scale = theirs.abs().max()
    assert theirs.std() > 1.0  # weights that matter (a near-uniform output would hide a wrong layer)
    # to 1e-5 of the largest logit: float32 on both sides (transformers' eager attention takes its softmax, and its
    # RMSNorm its statistics, in float32 even in a float64 model), whose rounding here reaches about 2.5e-5 absolute
    torch.testing.assert_close(ours, theirs, atol=1e-5 * scale, rtol=0)


def test_converted_tokenizer_and_chat_template_give_transformers_ids(downloaded):
    """The checkpoint's tokenizer encodes as transformers' (its BOS where the family adds one), and its chat template
    renders and tokenizes every conversation to `apply_chat_template`'s ids."""
    case, _, hf_tokenizer, checkpoint = downloaded
    tokenizer = Tokenizer(checkpoint)
    assert tokenizer.add_bos == LAYOUTS[case.split("-")[0]].prepend_bos
    for text in TEXTS:
        assert tokenizer.encode(text, bos=tokenizer.add_bos).tolist() == hf_tokenizer(text)["input_ids"]
        assert tokenizer.decode(tokenizer.encode(text)) == text
    style = load_prompt_style(checkpoint)
    assert isinstance(style, ChatTemplate)
    for messages in CONVERSATIONS:
        expected = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        expected = list(expected["input_ids"] if not isinstance(expected, list) else expected)
        assert style.render(messages) == hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                                          tokenize=False)
        assert tokenizer.encode(style.render(messages)).tolist() == expected


def test_llm_frames_a_prompt_with_the_template_as_apply_chat_template(downloaded):
    """`LLM.load` reads the checkpoint's chat template: the ids it feeds for a prompt are apply_chat_template's."""
    _, _, hf_tokenizer, checkpoint = downloaded
    llm = LLM.load(checkpoint, device="cpu")
    assert isinstance(llm.prompt_style, ChatTemplate)
    for messages in CONVERSATIONS[:2]:
        *system, user = messages
        expected = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        expected = list(expected["input_ids"] if not isinstance(expected, list) else expected)
        sys_prompt = system[0]["content"] if system else None
        assert llm.encode_prompts([user["content"]], sys_prompt=sys_prompt)[0].tolist() == expected


def first_stop(ids: list[int], stops: set[int]) -> list[int]:
    """ids up to (without) the first stop id."""
    return next((ids[:i] for i, t in enumerate(ids) if t in stops), ids)


@pytest.mark.parametrize("downloaded", ["llama", "deepseek_v3-fp8"], indirect=True)
def test_llm_continues_a_chat_prompt_greedily_as_transformers_generate(downloaded):
    """The greedy continuation of a chat-templated prompt is transformers' greedy `generate` of the same ids, up to
    the first of the checkpoint's stop tokens (generation_config's eos ids among them)."""
    _, hf_model, hf_tokenizer, checkpoint = downloaded
    llm = LLM.load(checkpoint, device="cpu")
    prompt = CONVERSATIONS[0][0]["content"]
    expected = hf_tokenizer.apply_chat_template(CONVERSATIONS[0], add_generation_prompt=True, tokenize=True)
    expected = list(expected["input_ids"] if not isinstance(expected, list) else expected)
    ours = llm.generate(prompt, max_new_tokens=10, temperature=0, return_as_token_ids=True).tolist()
    with torch.no_grad():  # every token (no eos), cut at our stop ids below
        out = hf_model.generate(torch.tensor([expected]), max_new_tokens=10, do_sample=False, eos_token_id=None,
                                pad_token_id=0)
    stops = {s[0] for s in llm.prompt_style.stop_tokens(llm.tokenizer) if len(s) == 1}
    assert stops >= set(torch.tensor(hf_model.generation_config.eos_token_id).flatten().tolist())
    theirs = first_stop(out[0, len(expected):].tolist(), stops)
    assert ours == theirs and len(ours) >= 3, (ours, theirs)


@needs_bnb_cpu
@pytest.mark.parametrize("downloaded, mode", [("llama", "bnb.nf4"), ("deepseek_v3", "bnb.fp4-dq")],
                         indirect=["downloaded"])
def test_quantized_generate_of_a_converted_checkpoint_is_the_dequantized_models(downloaded, mode, tmp_path):
    """Llama 3's and DeepSeek-V3's layouts, converted from their transformers files and quantized on bitsandbytes'
    CPU backend: `litgpt generate --quantize` prints the chat-templated prompt and the same greedy text as the model
    whose weights are the dequantized ones."""
    from litgpt.__main__ import main
    from test_quantize import _dequantized_checkpoint

    _, _, _, checkpoint = downloaded
    reference, names = _dequantized_checkpoint(checkpoint, mode, tmp_path / "dequantized")
    assert len(names) >= 6 and "lm_head" not in names
    framed = load_prompt_style(checkpoint).apply("What does len do?")
    texts = [generate_text(main, directory, extra)
             for directory, extra in ((checkpoint, ["--quantize", mode]), (reference, []))]
    assert texts[0] == texts[1], texts
    assert texts[0].startswith(framed) and len(texts[0]) >= len(framed) + 5, texts[0]


def generate_text(main, directory, extra: list[str]) -> str:
    """What `litgpt generate DIR --prompt "What does len do?"` prints, greedy, 10 tokens."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["generate", str(directory), "--prompt", "What does len do?", "--max_new_tokens", "10",
              "--temperature", "0", "--device", "cpu", *extra])
    return out.getvalue()


@pytest.mark.parametrize(
    "args, installed, message",
    [
        (["--layout", "gpt2"], True, "--layout 'gpt2' is not a tiny layout; choose one of llama, qwen2, mistral, "
                                     "deepseek_v2, deepseek_v3, glm4_moe_lite, youtu"),
        (["--vocab_size", "300"], True, "--vocab_size must be at least 512 (the 256 bytes, the special tokens, "
                                        "merges), got 300"),
        ([], True, "holds a model already (config.json); pass a new --out_dir"),
        (["--layout", "qwen2"], False, "make_tiny_hf_model builds the model with transformers, which is not "
                                       "installed; run `pip install transformers`"),
    ],
)
def test_make_tiny_hf_model_bad_input_is_one_line(args, installed, message, tmp_path, capsys, monkeypatch):
    """Refused in one line (exit 2) before anything is written: an unknown layout, a vocabulary too small, a
    directory that holds a model (no arguments but --out_dir), an environment without transformers."""
    import importlib.util

    from litgpt.__main__ import run_script

    (tmp_path / "config.json").write_text("{}")
    out_dir = tmp_path if not args else tmp_path / "new"
    if not installed:
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *rest: None if name == "transformers" else find_spec(name, *rest))
    with pytest.raises(SystemExit) as info:
        run_script(make_tiny_hf_model, ["--out_dir", str(out_dir), *args], as_positional=False)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "new").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
