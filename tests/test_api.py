import pytest
import torch

import litgpt
from litgpt import LLM
from test_generate import argmax_reference, make_checkpoint


@pytest.fixture
def llm(tmp_path) -> LLM:
    return LLM.load(make_checkpoint(tmp_path), device="cpu", precision="32-true")


def test_generate_greedy_batched_prompts_equal_alone_and_reference(llm):
    prompts = ["The cat", "A big happy dog saw the small sun and then", "Moon"]
    batched = llm.generate(prompts, max_new_tokens=6, temperature=0)
    assert isinstance(batched, list) and len(batched) == 3
    assert batched == [llm.generate(p, max_new_tokens=6, temperature=0) for p in prompts]
    ids = argmax_reference(llm.model, llm.tokenizer.encode(prompts[1]), 6)
    eos = llm.tokenizer.eos_id
    assert batched[1] == llm.tokenizer.decode(ids[: ids.index(eos)] if eos in ids else ids)


def test_generate_sampling_is_reproducible(llm):
    kwargs = dict(max_new_tokens=10, temperature=1.0, top_k=50, top_p=0.9)
    assert llm.generate("The dog", seed=1, **kwargs) == llm.generate("The dog", seed=1, **kwargs)


def test_generate_seed_picks_the_samples(llm):
    """The seed picks the samples: another seed draws other text, the same seed the same text again (20 tokens of a
    random model, nearly uniform over 300 tokens: two streams that agree by chance are out of the question). Row i of
    a batch draws from its own stream (seed, i), so a batch of copies of one prompt gives different samples, none of
    them another seed's, and the first prompt's text is the same alone or with any other prompts after it."""
    kwargs = dict(max_new_tokens=20, temperature=1.0)
    first = llm.generate("The dog", seed=1, **kwargs)
    other = llm.generate("The dog", seed=2, **kwargs)
    assert first != other
    assert llm.generate("The dog", seed=1, **kwargs) == first
    batches = {seed: llm.generate(["The dog"] * 3, seed=seed, **kwargs) for seed in (1, 2, 3)}
    samples = [text for texts in batches.values() for text in texts]
    assert len(set(samples)) == len(samples) == 9, samples  # no two (seed, row) streams alike
    assert batches[1][0] == first and batches[2][0] == other
    assert llm.generate(["The dog", "Moon", "A big happy dog saw the sun"], seed=1, **kwargs)[0] == first
    assert llm.generate(["The dog", "Moon"], seed=2, **kwargs)[0] == other


def test_load_precision_and_exports(tmp_path):
    llm = LLM.load(make_checkpoint(tmp_path), device="cpu", precision="64-true")
    assert llm.model.lm_head.weight.dtype == torch.float64
    assert litgpt.LLM is LLM and litgpt.Tokenizer is type(llm.tokenizer)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-1.0), "temperature must be >= 0"),
        (dict(top_p=0.0), "top_p must be in (0, 1]"),
        (dict(top_p=1.01), "top_p must be in (0, 1]"),
        (dict(top_k=0), "top_k must be a positive integer"),
        (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
        (dict(max_new_tokens=200), "exceeds the model's context of 128 tokens"),
    ],
)
def test_generate_bad_arguments(llm, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        llm.generate("The cat", **kwargs)


def test_generate_empty_prompts(llm):
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        llm.generate("")
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        llm.generate(["The cat", ""])
    with pytest.raises(ValueError, match="no prompts given"):
        llm.generate([])


def test_load_missing_pieces(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LLM.load(tmp_path / "nowhere")
    checkpoint_dir = make_checkpoint(tmp_path)
    (checkpoint_dir / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or tokenizer.model"):
        LLM.load(checkpoint_dir)
    (checkpoint_dir / "lit_model.pth").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete: it has no lit_model.pth"):
        LLM.load(checkpoint_dir)
    with pytest.raises(ValueError, match="unknown prompt style"):
        LLM.load(make_checkpoint(tmp_path / "other"), prompt_style="nope")


def test_benchmark_reports_the_issue_numbers():
    llm = LLM.from_config("debug-mla", device="cpu")
    result = llm.benchmark(batch_size=2, context_length=64, decode_steps=4, warmup=1, compile=False)
    config = llm.model.config
    expected_kv = 2 * 64 * config.mla.cache_width * config.n_layer * 4  # float32
    assert result["kv_cache_bytes"] == expected_kv
    assert result["batch"] == 2 and result["context"] == 64 and result["mode"] == "eager"
    assert result["decode_tokens_per_s"] > 0 and result["ms_per_step"] > 0 and result["time_to_first_token_s"] > 0
    assert result["decode_tokens_per_s"] == pytest.approx(2 * 1000 / result["ms_per_step"])
    assert result["peak_memory_bytes"] > 0 and result["gap"] > 1
    with pytest.raises(ValueError, match="exceeds the model's block_size"):
        llm.benchmark(context_length=config.block_size + 1)


# ------------------------------------------------------------------------------------------------ out-of-range inputs
def test_a_token_id_outside_the_vocabulary_is_a_value_error_naming_it():
    model = litgpt.GPT.from_name("debug-mla").eval()
    vocab = model.config.padded_vocab_size
    for bad in (vocab, -1):
        with pytest.raises(ValueError) as info:
            model(torch.tensor([[1, bad, 2]]))
        assert str(info.value) == (f"token id {bad} is outside the model's vocabulary of {vocab} ids (0..{vocab - 1}); "
                                   "encode the text with the checkpoint's own tokenizer")
    assert model(torch.tensor([[0, vocab - 1]])).shape == (1, 2, vocab)


def test_decoding_past_the_kv_cache_is_a_value_error_naming_the_position_and_the_fix():
    model = litgpt.GPT.from_name("debug-mla").eval()
    model.set_kv_cache(batch_size=1, max_seq_length=16)
    with torch.no_grad():
        model(torch.tensor([[1]]), input_pos=torch.tensor([15]))  # the last position: fine
        with pytest.raises(ValueError) as info:
            model(torch.tensor([[1]]), input_pos=torch.tensor([16]))
        assert str(info.value) == ("input_pos 16 is outside the KV cache of 16 positions (0..15); build a longer cache "
                                   "with model.set_kv_cache(batch_size, max_seq_length=...) (at most block_size 128), "
                                   "or start a new sequence")
        with pytest.raises(ValueError, match="input_pos_maxp1 20 is past the KV cache of 16 positions"):
            model(torch.tensor([[1, 2]]), input_pos=torch.tensor([0, 1]), input_pos_maxp1=20)


def test_the_input_checks_stay_out_of_a_compiled_step():
    """Compiled as one graph (fullgraph: a data-dependent check would break it), the step runs without the checks."""
    model = litgpt.GPT.from_name("debug-mla").eval()
    model.set_kv_cache(batch_size=1, max_seq_length=16)
    step = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        expected = model(torch.tensor([[3]]), input_pos=torch.tensor([0]))
        torch.testing.assert_close(step(torch.tensor([[3]]), input_pos=torch.tensor([0])), expected)


def test_llm_checks_its_prompts_ids_on_the_host(llm):
    llm.model.config.padded_vocab_size = 10  # as if the tokenizer were another model's
    with pytest.raises(ValueError, match=r"^the tokenizer gave token id \d+, outside the model's vocabulary of 10 ids; "
                                         r"load the tokenizer the checkpoint was trained with$"):
        llm.generate("The cat sat on the mat", max_new_tokens=2)
