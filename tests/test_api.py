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


# ------------------------------------------------------------------------------------------------ upstream's LLM API
def test_generate_stream_yields_the_pieces_of_the_same_text_lazily(llm):
    full = llm.generate("The cat", max_new_tokens=12, temperature=0)
    stream = llm.generate("The cat", max_new_tokens=12, temperature=0, stream=True)
    assert not isinstance(stream, (str, list))
    pieces = list(stream)
    assert len(pieces) > 1 and all(pieces) and "".join(pieces) == full
    sampled = dict(max_new_tokens=15, temperature=1.0, seed=7)
    assert "".join(llm.generate("The dog", stream=True, **sampled)) == llm.generate("The dog", **sampled)


def test_a_stream_left_unfinished_stops_when_generate_is_called_again(llm):
    stream = llm.generate("The cat", max_new_tokens=20, temperature=0, stream=True)
    next(stream)
    llm.generate("Moon", max_new_tokens=3, temperature=0)
    with pytest.raises(RuntimeError, match="taken by a later generate call"):
        list(stream)
    with pytest.raises(ValueError, match="stream=True streams one prompt"):
        llm.generate(["The cat", "Moon"], stream=True)


@pytest.mark.parametrize("stream", [False, True])
def test_benchmark_with_a_prompt_times_generate_with_upstreams_keys(llm, stream):
    expected = llm.generate("The cat", max_new_tokens=6, temperature=0)
    text, stats = llm.benchmark(num_iterations=3, prompt="The cat", max_new_tokens=6, temperature=0, stream=stream)
    assert text == expected
    # on the CPU there is no GPU memory to report
    assert list(stats) == ["Seconds total", "Seconds to first token", "Tokens generated",
                           "Inference speed in tokens/sec"]
    assert all(len(values) == 3 for values in stats.values())
    n_tokens = len(llm.tokenizer.encode(expected))
    assert stats["Tokens generated"] == [6] * 3 or all(t >= n_tokens for t in stats["Tokens generated"])
    for total, first, tokens, speed in zip(*stats.values()):
        assert 0 < first <= total and speed == pytest.approx(tokens / total)
    assert llm.benchmark(prompt="The cat", max_new_tokens=2)[1]["Tokens generated"] in ([1], [2])
    with pytest.raises(ValueError, match="needs prompt="):
        llm.benchmark(num_iterations=2)
    with pytest.raises(ValueError, match="num_iterations must be a positive int"):
        llm.benchmark(num_iterations=0, prompt="The cat")


def test_benchmark_dict_to_markdown_table():
    from litgpt.api import benchmark_dict_to_markdown_table

    table = benchmark_dict_to_markdown_table({"Seconds total": [1.0, 3.0], "Seconds to first token": [None],
                                              "Tokens generated": [5]})
    assert table.splitlines() == ["| Metric | Mean | Std Dev |", "|---|---|---|", "| Seconds total | 2.00 | 1.41 |",
                                  "| Seconds to first token | n/a | n/a |", "| Tokens generated | 5.00 | 0.00 |"]


def test_save_writes_a_checkpoint_that_loads_back_to_the_same_model(tmp_path):
    checkpoint_dir = make_checkpoint(tmp_path)
    llm = LLM.load(checkpoint_dir, device="cpu", precision="32-true", prompt_style="plain")
    llm.generate("The cat", max_new_tokens=8, temperature=0)  # decoded first: the folded copy is not saved
    with torch.no_grad():
        llm.model.lm_head.weight.mul_(1.5)  # a modified model is saved as it is now
    changed = llm.generate("The cat", max_new_tokens=8, temperature=0)
    llm.save(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == [
        "lit_model.pth", "model_config.yaml", "prompt_style.yaml", "tokenizer.json", "tokenizer_config.json"]
    reloaded = LLM.load(tmp_path / "saved", device="cpu", precision="32-true")
    assert reloaded.prompt_style.name == "plain"
    torch.testing.assert_close(reloaded.model.state_dict(), llm.model.state_dict())
    assert reloaded.generate("The cat", max_new_tokens=8, temperature=0) == changed
    # saving over the directory the model was loaded from replaces it
    reloaded.save(tmp_path / "saved")
    assert LLM.load(tmp_path / "saved", device="cpu").generate("The cat", max_new_tokens=8, temperature=0) == changed
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"holds files a checkpoint does not \(notes.txt\)"):
        llm.save(tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="has no tokenizer"):
        LLM.from_config("debug-mla", device="cpu").save(tmp_path / "x")


def test_load_random_init_builds_the_named_config_with_the_given_tokenizer(tmp_path):
    checkpoint_dir = make_checkpoint(tmp_path)
    llm = LLM.load("debug-mla", init="random", tokenizer_dir=checkpoint_dir, device="cpu")
    assert llm.model.config == litgpt.Config.from_name("debug-mla") and llm.checkpoint_dir is None
    assert llm.tokenizer.fingerprint == LLM.load(checkpoint_dir, device="cpu").tokenizer.fingerprint
    assert isinstance(llm.generate("The cat", max_new_tokens=3), str)
    llm.save(tmp_path / "random")
    torch.testing.assert_close(LLM.load(tmp_path / "random", device="cpu").model.state_dict(), llm.model.state_dict())
    with pytest.raises(ValueError, match="pass tokenizer_dir=DIR"):
        LLM.load("debug-mla", init="random")
    with pytest.raises(ValueError, match="unknown model name 'nope'"):
        LLM.load("nope", init="random", tokenizer_dir=checkpoint_dir)
    with pytest.raises(ValueError, match="init must be 'pretrained' or 'random'"):
        LLM.load(checkpoint_dir, init="zeros")


def test_load_with_a_tokenizer_dir_uses_that_tokenizer(tmp_path):
    checkpoint_dir = make_checkpoint(tmp_path / "a")
    other = tmp_path / "tok"
    other.mkdir()
    (other / "tokenizer.json").write_bytes((checkpoint_dir / "tokenizer.json").read_bytes())
    llm = LLM.load(checkpoint_dir, tokenizer_dir=other, device="cpu")
    assert llm.tokenizer.checkpoint_dir == other


def test_distribute_none_defers_placing_the_model(tmp_path):
    checkpoint_dir = make_checkpoint(tmp_path)
    expected = LLM.load(checkpoint_dir, device="cpu", precision="32-true").generate("The cat", 10, temperature=0)
    llm = LLM.load(checkpoint_dir, distribute=None)
    assert llm.model is None and llm.config.name == "debug-mla"
    with pytest.raises(RuntimeError, match=r"call llm.distribute\(\) first"):
        llm.generate("The cat")
    with pytest.raises(ValueError, match="pass the device and precision to llm.distribute"):
        LLM.load(checkpoint_dir, distribute=None, device="cpu")
    llm.distribute(accelerator="cpu", precision="64-true")
    assert llm.model.lm_head.weight.dtype == torch.float64
    llm.distribute(accelerator="cpu", devices=1, precision="32-true", fixed_kv_cache_size=40)
    assert llm.generate("The cat", 10, temperature=0) == expected
    assert llm.session.cache_len == 40 and llm.model.transformer.h[0].attn.kv_cache.kv.shape[1] == 40
    with pytest.raises(ValueError, match="exceeds the fixed KV cache of 40 positions"):
        llm.generate("The cat", max_new_tokens=40)
    llm.distribute(accelerator="cpu", fixed_kv_cache_size="max_model_supported")
    llm.generate("The cat", 3)
    assert llm.session.cache_len == llm.model.max_seq_length
    for kwargs, message in [
        (dict(quantize="bnb.int8-training"), "'bnb.int8-training' is not a quantization mode for inference"),
        (dict(generate_strategy="sequential"), "generate_strategy='sequential' is not supported"),
        (dict(devices=2), "devices=2: the LLM runs on one device"),
        (dict(fixed_kv_cache_size=0), "fixed_kv_cache_size must be a positive int"),
        (dict(fixed_kv_cache_size=10_000), "fixed_kv_cache_size 10000 exceeds the model's context of 128"),
    ]:
        with pytest.raises(ValueError, match=message):
            llm.distribute(accelerator="cpu", **kwargs)
    random = LLM.load("debug-mla", init="random", tokenizer_dir=checkpoint_dir, distribute=None)
    assert random.model is None
    random.distribute(accelerator="cpu")
    assert isinstance(random.generate("The cat", 3), str)


def test_generate_return_as_token_ids_gives_the_ids_of_the_text(llm):
    text = llm.generate("The cat", max_new_tokens=8, temperature=0)
    ids = llm.generate("The cat", max_new_tokens=8, temperature=0, return_as_token_ids=True)
    assert isinstance(ids, torch.Tensor) and ids.dtype == torch.int64 and ids.dim() == 1 and 1 <= len(ids) <= 8
    assert llm.tokenizer.decode(ids) == text
    batch = llm.generate(["The cat", "Moon"], max_new_tokens=5, temperature=0, return_as_token_ids=True)
    assert [llm.tokenizer.decode(t) for t in batch] == llm.generate(["The cat", "Moon"], max_new_tokens=5,
                                                                    temperature=0)
    with pytest.raises(ValueError, match="stream=True streams text"):
        llm.generate("The cat", stream=True, return_as_token_ids=True)


def test_generate_after_the_weights_change_decodes_the_new_weights(tmp_path):
    """The session's folded decode weights are a snapshot: an in-place edit or an optimizer step after a generate
    rebuilds the session, so the text is the one a fresh load of the changed weights gives."""
    llm = LLM.load(make_checkpoint(tmp_path), device="cpu", precision="32-true")
    llm.generate("The cat", max_new_tokens=10, temperature=0)
    session = llm.session
    llm.generate("The cat", max_new_tokens=10, temperature=0)
    assert llm.session is session  # unchanged weights: the session is reused
    with torch.no_grad():
        for block in llm.model.transformer.h:
            block.mlp.fc.weight.mul_(3)
            block.attn.proj.weight.mul_(-2)
    edited = llm.generate("The cat", max_new_tokens=10, temperature=0)
    assert llm.session is not session
    llm.save(tmp_path / "edited")
    fresh = LLM.load(tmp_path / "edited", device="cpu", precision="32-true")
    assert edited == fresh.generate("The cat", max_new_tokens=10, temperature=0)
    optimizer = torch.optim.SGD(llm.model.parameters(), lr=0.5)
    llm.model.train()
    llm.model(torch.tensor([[1, 2, 3]])).sum().backward()
    optimizer.step()
    llm.model.eval()
    stepped = llm.generate("The cat", max_new_tokens=10, temperature=0)
    llm.save(tmp_path / "stepped")
    assert stepped == LLM.load(tmp_path / "stepped", device="cpu", precision="32-true").generate(
        "The cat", max_new_tokens=10, temperature=0)


# ------------------------------------------------------------------------------------------------ the LLM as a module
def test_llm_is_a_module_whose_call_gives_logits_and_the_shifted_loss(llm):
    assert isinstance(llm, torch.nn.Module) and dict(llm.named_children()) == {"model": llm.model}
    assert llm.state_dict().keys() == llm.model.state_dict().keys()  # no "model." prefix, as upstream
    ids = torch.randint(0, 300, (2, 9))
    targets = ids.clone()
    targets[0, :4] = -100
    logits = llm(input_ids=ids)
    torch.testing.assert_close(logits, llm.model(ids))
    logits, loss = llm(input_ids=ids, target_ids=targets)
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), targets[:, 1:].flatten())
    torch.testing.assert_close(loss, expected)
    _, other = llm(ids, targets, loss_fn=lambda lg, t: lg.sum() * 0 + t.numel())
    assert other.item() == 2 * 8


def test_trainer_setup_builds_the_model_from_the_checkpoint_a_trainer_checkpoint_or_random(tmp_path):
    """The tutorial's LightningModule pattern, without Lightning: LLM.load(..., distribute=None), trainer_setup(),
    training through llm(input_ids=..., target_ids=...) on llm.model's parameters; a Trainer checkpoint (the holding
    module's state dict under "state_dict", keys prefixed `llm.`) restores the trained weights."""
    checkpoint_dir = make_checkpoint(tmp_path)
    llm = LLM.load(checkpoint_dir, distribute=None)
    llm.trainer_setup()
    loaded = LLM.load(checkpoint_dir, device="cpu", precision="32-true")
    torch.testing.assert_close(llm.state_dict(), loaded.state_dict())

    class LitLLM(torch.nn.Module):  # what Lightning saves of a LightningModule with `self.llm = llm`
        def __init__(self, llm):
            super().__init__()
            self.llm = llm

    holder = LitLLM(llm)
    optimizer = torch.optim.AdamW(llm.model.parameters(), lr=1e-2)
    batch = llm.tokenizer.encode("The cat sat on the mat").unsqueeze(0)
    llm.train()
    for _ in range(2):
        _, loss = holder.llm(input_ids=batch, target_ids=batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(k.startswith("llm.") for k in holder.state_dict())
    torch.save({"state_dict": holder.state_dict(), "epoch": 1}, tmp_path / "trainer.ckpt")
    trained = llm.generate("The cat", max_new_tokens=6, temperature=0)
    assert not llm.model.training  # generate decodes in eval mode

    resumed = LLM.load(checkpoint_dir, distribute=None)
    resumed.trainer_setup(trainer_ckpt=tmp_path / "trainer.ckpt")
    torch.testing.assert_close(resumed.state_dict(), llm.state_dict())
    assert resumed.generate("The cat", max_new_tokens=6, temperature=0) == trained

    random = LLM.load("debug-mla", init="random", tokenizer_dir=checkpoint_dir, distribute=None)
    random.trainer_setup()
    assert random.model.config == litgpt.Config.from_name("debug-mla")
    torch.save({"epoch": 1}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="has no 'state_dict' entry"):
        random.trainer_setup(trainer_ckpt=tmp_path / "bad.ckpt")


def test_generate_sys_prompt_renders_a_system_turn_with_a_chat_template(llm):
    from litgpt.prompts import ChatTemplate

    with pytest.raises(ValueError, match="sys_prompt needs a prompt style with a system turn.*'default' style has none"):
        llm.generate("The cat", sys_prompt="Be brief.")
    template = ("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
                "{% if add_generation_prompt %}[assistant] {% endif %}")
    llm.prompt_style = ChatTemplate(template)
    assert llm.frame("The cat", "Be brief.") == "[system] Be brief.\n[user] The cat\n[assistant] "
    expected_ids = argmax_reference(llm.model, llm.tokenizer.encode(llm.frame("The cat", "Be brief.")), 5)
    eos = llm.tokenizer.eos_id
    expected = llm.tokenizer.decode(expected_ids[: expected_ids.index(eos)] if eos in expected_ids else expected_ids)
    assert llm.generate("The cat", max_new_tokens=5, temperature=0, sys_prompt="Be brief.") == expected
    streamed = llm.generate("The cat", max_new_tokens=5, temperature=0, sys_prompt="Be brief.", stream=True)
    assert "".join(streamed) == expected
    text, _ = llm.benchmark(prompt="The cat", max_new_tokens=5, temperature=0, sys_prompt="Be brief.")
    assert text == expected
