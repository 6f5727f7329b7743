"""`litgpt evaluate`: our model behind lm-eval's `LM`, against lm-eval's Hugging Face model (the oracle) on the same
tiny random weights converted to HF, against hand computations on local tasks, and its one-line refusals."""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance

from hf_tokenizers import make_hf_tokenizer
from test_convert_lit_checkpoint import LLAMA, MLA, make_ours
from test_model import randomize

from litgpt import GPT, Config
from litgpt.__main__ import main
from litgpt.api import LLM
from litgpt.checkpoint import save_checkpoint
from litgpt.evaluate import GPTLM
from litgpt.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
VOCAB = 400  # the test tokenizer's (hf_tokenizers.make_hf_tokenizer)
NEOX_TOKENS = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}  # GPT-NeoX's: no BOS added
LLAMA_TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}  # with a post-processor prepending <s>
# layout: (config overrides, HF architecture, tokenizer config, BOS post-processor)
LAYOUTS = {
    "neox-mha": (dict(), None, NEOX_TOKENS, None),
    "llama-gqa": (dict(LLAMA, n_query_groups=2), None, LLAMA_TOKENS, "<s>"),
    "deepseek-v2-mla": (dict(LLAMA, latent_attention=MLA, rope_interleave=True), "DeepseekV2ForCausalLM",
                        LLAMA_TOKENS, "<s>"),
}
PAIRS = [  # (context, continuation): an empty context, shared contexts, a context longer than max_length (16)
    ("The cat saw", " the dog."), ("Hello, how", " are you today?"), ("", "A sun is a kind of star."),
    ("You are a helpful", " assistant"), ("You are a helpful", " system"), ("You are a helpful", " star"),
    ("The cat saw the dog. Hello, how are you today? The cat saw the dog.", " Hello"), ("Define the word sun. ", "A"),
]
DOCUMENTS = ["The cat saw the dog. Hello, how are you today? " * 3, "A sun is a kind of star.", "You"]


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def checkpoint(directory: Path, model: GPT, tokens: dict = NEOX_TOKENS, post_processor=None) -> Path:
    """A checkpoint directory: the model's weights and config beside a small BPE tokenizer (400 ids)."""
    make_hf_tokenizer(directory, tokens, post_processor=post_processor)
    save_checkpoint(model, directory)
    return directory


def tiny(name: str = "debug", **overrides) -> GPT:
    torch.manual_seed(0)
    fields = dict(block_size=32, n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, padding_multiple=32)
    return randomize(GPT(Config.from_name(name, **{**fields, **overrides}))).eval()


def load(directory: Path) -> LLM:
    return LLM.load(directory, device="cpu", precision="32-true")


@torch.no_grad()
def reference_loglikelihood(model: GPT, context: list[int], continuation: list[int]) -> float:
    """log p(continuation | context) from the model's full forward over their concatenation."""
    ids = torch.tensor(context + continuation)
    logprobs = torch.log_softmax(model(ids[None, :-1])[0].double(), dim=-1)  # (T - 1, V)
    targets = ids[len(context):]
    return float(logprobs[len(context) - 1:].gather(1, targets[:, None]).sum())


# ------------------------------------------------------------------------------------------------ against HFLM
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_loglikelihood_and_rolling_agree_with_lm_evals_hf_model(layout, tmp_path):
    from lm_eval.models.huggingface import HFLM

    from litgpt.scripts.convert_lit_checkpoint import convert_lit_checkpoint

    overrides, architecture, tokens, post_processor = LAYOUTS[layout]
    torch.manual_seed(0)
    model = make_ours(dict(overrides, vocab_size=VOCAB, block_size=32))
    lit = checkpoint(tmp_path / "lit", model, tokens, post_processor)
    hf = convert_lit_checkpoint(lit, tmp_path / "hf", architecture=architecture)
    ours = GPTLM(load(lit), batch_size=3, max_length=16)
    theirs = HFLM(pretrained=str(hf), batch_size=3, max_length=16, device="cpu", dtype="float32")
    assert ours.prefix_token_id == theirs.prefix_token_id
    for text in [c for c, _ in PAIRS if c] + DOCUMENTS:  # the same tokens, BOS framing included
        assert ours.tok_encode(text) == theirs.tok_encode(text)

    got = ours.loglikelihood(requests("loglikelihood", PAIRS), disable_tqdm=True)
    want = theirs.loglikelihood(requests("loglikelihood", PAIRS), disable_tqdm=True)
    assert [g for _, g in got] == [w for _, w in want]
    for (g, _), (w, _) in zip(got, want):
        assert abs(g - w) < 1e-4 and g < -1.0  # a real score, not a degenerate zero

    rolling = requests("loglikelihood_rolling", [(d,) for d in DOCUMENTS])
    assert len(ours.tok_encode(DOCUMENTS[0])) > 2 * 16  # three windows of at most 16 tokens
    got = ours.loglikelihood_rolling(rolling, disable_tqdm=True)
    want = theirs.loglikelihood_rolling(rolling, disable_tqdm=True)
    for g, w in zip(got, want):
        assert abs(g - w) < 1e-4 and g < -1.0


def test_a_continuation_merged_into_the_contexts_last_token_is_scored_as_its_own_tokens(tmp_path):
    """"The ca" + "t": the whole encodes "cat" as one token, so lm-eval's split would leave the continuation no token
    (or start it mid-merge); the pair is then encoded apart and the continuation's own tokens are scored."""
    model = tiny()
    lm = GPTLM(load(checkpoint(tmp_path / "ckpt", model)), batch_size=2, max_length=16)
    context, continuation = "The ca", "t saw"
    assert lm.tok_encode(context + continuation)[: len(lm.tok_encode(context))] != lm.tok_encode(context)  # merged
    context_enc, continuation_enc = lm._encode_pair(context, continuation)
    assert context_enc == lm.tok_encode(context)
    assert continuation_enc == lm.tok_encode(continuation, add_special_tokens=False) and continuation_enc
    whole, cut = lm.tok_encode("The cat saw"), len(lm.tok_encode("The cat"))  # no merge: lm-eval's split as is
    assert lm._encode_pair("The cat", " saw") == (whole[:cut], whole[cut:])
    (score, _), = lm.loglikelihood(requests("loglikelihood", [(context, continuation)]), disable_tqdm=True)
    assert score == pytest.approx(reference_loglikelihood(model, context_enc, continuation_enc), abs=1e-5)


# ------------------------------------------------------------------------------------------------ generation
def test_generate_until_equals_llm_generate_greedy(tmp_path):
    llm = load(checkpoint(tmp_path, tiny("debug-mla")))
    lm = GPTLM(llm, batch_size=2)
    scored = lm.loglikelihood(requests("loglikelihood", PAIRS), disable_tqdm=True)
    contexts = ["The cat saw the dog.", "Hello", "You are a helpful assistant named"]
    expected = [llm.generate(c, max_new_tokens=12, temperature=0.0) for c in contexts]
    assert len(set(expected)) == 3 and all(expected)
    texts = lm.generate_until(requests("generate_until", [(c, {"until": [], "max_gen_toks": 12}) for c in contexts]),
                              disable_tqdm=True)
    assert texts == expected
    # a stop string cuts the text before it (and may end decoding early)
    stop = expected[0][3:6]
    cut = lm.generate_until(requests("generate_until", [(contexts[0], {"until": [stop], "max_gen_toks": 12})]),
                            disable_tqdm=True)
    assert cut == [expected[0].split(stop)[0]] and len(cut[0]) < len(expected[0])
    # scoring after decoding (a KV cache set, folded decode weights) is unchanged
    assert lm.loglikelihood(requests("loglikelihood", PAIRS), disable_tqdm=True) == scored
    with pytest.raises(ValueError, match=r"generation settings \['num_beams'\] are not supported"):
        lm.generate_until(requests("generate_until", [(contexts[0], {"until": [], "num_beams": 4})]))


# ------------------------------------------------------------------------------------------------ no HF layout
@pytest.mark.parametrize("case", ["mla-o", "moe", "lora"])
def test_models_without_an_hf_layout_score_their_own_forward(case, tmp_path):
    """MLA-o, DeepSeek MoE (with MLA) and an unmerged LoRA model: scores equal the plain forward's."""
    if case == "mla-o":
        model = tiny("debug", latent_attention={**MLA, "o_latent_dim": 20, "o_latent_norm": True})
    elif case == "moe":
        model = tiny("debug", **dict(LLAMA, latent_attention=MLA, mlp_class_name="LLaMAMoE", n_expert=4,
                                     n_expert_per_token=2, moe_intermediate_size=16, n_shared_expert=1,
                                     moe_scoring="softmax", intermediate_size=48))
        assert model.config.moe_layers
    else:
        from litgpt.lora import LoRASpec, apply_lora

        model = tiny("debug-mla")
        apply_lora(model, LoRASpec(r=4, alpha=8, dropout=0.0, query=True, value=True, projection=True, mlp=True,
                                   head=True))
        model.eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.3)  # a fine-tune that changed the outputs
    tokenizer_dir = make_hf_tokenizer(tmp_path, NEOX_TOKENS)
    tokenizer = Tokenizer(tokenizer_dir)
    pairs = PAIRS[:4] + [("The cat saw the dog.", " Hello, how are you today?")]
    encoded = []
    for context, continuation in pairs:  # what lm-eval's TemplateLM scores: the whole text split after the context
        whole = tokenizer.encode(context + continuation).tolist()
        head = tokenizer.encode(context).tolist() if context else [tokenizer.eos_id]
        encoded.append((head, whole[len(head):] if context else whole))
    expected = [reference_loglikelihood(model, c, x) for c, x in encoded]
    if case == "lora":
        with pytest.warns(UserWarning, match="merging the model's LoRA weights"):
            lm = GPTLM(LLM(model, tokenizer), batch_size=2)
    else:
        lm = GPTLM(LLM(model, tokenizer), batch_size=2)
    got = lm.loglikelihood(requests("loglikelihood", pairs), disable_tqdm=True)
    for (g, _), w in zip(got, expected):
        assert abs(g - w) < 1e-4 * max(1.0, abs(w))
    text = lm.generate_until(requests("generate_until", [("The cat", {"until": [], "max_gen_toks": 6})]),
                             disable_tqdm=True)[0]
    assert text == LLM(model, tokenizer).generate("The cat", max_new_tokens=6, temperature=0.0)


# ------------------------------------------------------------------------------------------------ local tasks
MC_DOCS = [
    {"question": "The cat saw the", "choices": ["dog", "sun", "star", "cat"], "label": 0},
    {"question": "Hello, how are you", "choices": ["today", "named", "star", "dog"], "label": 0},
    {"question": "A sun is a kind of", "choices": ["dog", "star", "word", "cat"], "label": 1},
]
PPL_DOCS = ["The cat saw the dog. Hello, how are you today? A sun is a kind of star. " * 2, "Define the word sun."]


def write_local_tasks(folder: Path) -> Path:
    """Two lm-eval task YAMLs whose data are local json-lines files: 4-way multiple choice and perplexity."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in MC_DOCS))
    (folder / "ppl.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in PPL_DOCS))
    (folder / "mc.yaml").write_text(
        f"task: local_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'mc.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: label\ntarget_delimiter: ' '\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    (folder / "ppl.yaml").write_text(
        f"task: local_ppl\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'ppl.jsonl'}\n"
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n"
        + "".join(f"  - metric: {m}\n    aggregation: {a}\n    higher_is_better: false\n" for m, a in (
            ("word_perplexity", "weighted_perplexity"), ("byte_perplexity", "weighted_perplexity"),
            ("bits_per_byte", "bits_per_byte")))
    )
    return folder


@torch.no_grad()
def rolling_by_hand(model: GPT, ids: list[int], prefix: int, window: int) -> float:
    """Every token predicted once: blocks of `window` tokens, each conditioned on the tokens before it that fit in
    the window with it (the first on `prefix`)."""
    total = 0.0
    for start in range(0, len(ids), window):
        block = ids[start:start + window]
        # the window's input is the `window` tokens ending just before its last prediction (one before a full block)
        context = [prefix] if start == 0 else ids[start + len(block) - window - 1:start]
        total += reference_loglikelihood(model, context, block)
    return total


def evaluate_locally(tmp_path: Path, task_names: str, *options: str) -> tuple[GPT, Path, Path, dict]:
    """`litgpt evaluate` of a tiny random debug-mla checkpoint on the local tasks: (model, checkpoint, out_dir,
    lm-eval's results)."""
    model = tiny("debug-mla")
    ckpt = checkpoint(tmp_path / "ckpt", model)
    tasks = write_local_tasks(tmp_path / "tasks")
    out = tmp_path / "out"
    main(["evaluate", str(ckpt), "--tasks", task_names, "--include_path", str(tasks), "--out_dir", str(out),
          "--device", "cpu", *options])
    return model, ckpt, out, json.loads((out / "results.json").read_text())


def test_local_multiple_choice_and_perplexity_tasks_score_as_computed_by_hand(tmp_path, capsys):
    model, ckpt, out, results = evaluate_locally(tmp_path, "local_mc,local_ppl", "--batch_size", "3")
    tasks = tmp_path / "tasks"
    printed = capsys.readouterr().out
    assert "|local_mc" in printed and "|local_ppl" in printed and (out / "results.md").read_text() in printed

    tokenizer = Tokenizer(ckpt)
    correct = 0
    for doc in MC_DOCS:
        scores = []
        for choice in doc["choices"]:
            head = tokenizer.encode(doc["question"]).tolist()
            whole = tokenizer.encode(doc["question"] + " " + choice).tolist()
            scores.append(reference_loglikelihood(model, head, whole[len(head):]))
        correct += int(max(range(4), key=scores.__getitem__) == doc["label"])
    mc = results["results"]["local_mc"]
    assert mc["acc,none"] == pytest.approx(correct / len(MC_DOCS))
    assert mc["acc_stderr,none"] == pytest.approx(
        math.sqrt(mc["acc,none"] * (1 - mc["acc,none"]) / (len(MC_DOCS) - 1)))

    block = model.config.block_size
    logliks = [rolling_by_hand(model, tokenizer.encode(t).tolist(), tokenizer.eos_id, block) for t in PPL_DOCS]
    assert len(tokenizer.encode(PPL_DOCS[0])) > block  # scored in two windows
    words = sum(len(re.split(r"\s+", t)) for t in PPL_DOCS)
    n_bytes = sum(len(t.encode("utf-8")) for t in PPL_DOCS)
    ppl = results["results"]["local_ppl"]
    assert ppl["word_perplexity,none"] == pytest.approx(math.exp(-sum(logliks) / words), rel=1e-4)
    assert ppl["byte_perplexity,none"] == pytest.approx(math.exp(-sum(logliks) / n_bytes), rel=1e-4)
    assert ppl["bits_per_byte,none"] == pytest.approx(-sum(logliks) / n_bytes / math.log(2), rel=1e-4)
    assert results["n-samples"]["local_mc"]["effective"] == 3

    # --limit: the first examples only
    main(["evaluate", str(ckpt), "--tasks", "local_mc", "--include_path", str(tasks), "--out_dir", str(out),
          "--device", "cpu", "--limit", "1"])
    assert json.loads((out / "results.json").read_text())["n-samples"]["local_mc"]["effective"] == 1


def test_max_length_sets_the_perplexity_window(tmp_path, capsys):
    """--max_length 8: the rolling log-likelihoods are scored in windows of 8 tokens (as computed by hand), not of
    the block size, and the setting is recorded with the scores."""
    model, ckpt, _, results = evaluate_locally(tmp_path, "local_ppl", "--max_length", "8")
    assert results["config"]["model_args"]["max_length"] == 8
    tokenizer = Tokenizer(ckpt)
    logliks = [rolling_by_hand(model, tokenizer.encode(t).tolist(), tokenizer.eos_id, 8) for t in PPL_DOCS]
    full = [rolling_by_hand(model, tokenizer.encode(t).tolist(), tokenizer.eos_id, model.config.block_size)
            for t in PPL_DOCS]
    n_bytes = sum(len(t.encode("utf-8")) for t in PPL_DOCS)
    assert results["results"]["local_ppl"]["bits_per_byte,none"] == pytest.approx(
        -sum(logliks) / n_bytes / math.log(2), rel=1e-4)
    assert abs(sum(logliks) - sum(full)) > 1e-3  # a window of 8 scores the text otherwise


# ------------------------------------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def shared_tasks(tmp_path_factory) -> Path:
    """One task folder for the module: lm-eval's index of it and of its own tasks is built once (seconds)."""
    return write_local_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture
def offline(monkeypatch):
    """The Hugging Face Hub unreachable at once (offline mode), instead of after retries."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("args, message", [
    (["--max_length", "0"], r"--max_length must be >= 1 token, got 0; leave it out for the model's block_size"),
    (["--limit", "0"], r"--limit must be > 0 \(examples per task, or a fraction of each task below 1\), got 0; leave it "
                             r"out to score every example"),
    (["--tasks", "hellaswagg"], r"unknown task 'hellaswagg' \(did you mean 'hellaswag'\?\); run `litgpt evaluate "
                                r"CHECKPOINT_DIR` without --tasks to list the task names, or pass the folder of your "
                                r"own task YAMLs with --include_path"),
    (["--tasks", "local_mc,lambada_openai"], r"task 'lambada_openai' reads its data set from the Hugging Face Hub, "
                                             r"which cannot be reached \(.*\); run it once with network access .*"
                                             r"`dataset_path: json` and local `data_files` and pass its folder with "
                                             r"--include_path"),
    (["--no_tokenizer"], r"no tokenizer.json or tokenizer.model in '.*'; run `litgpt train_tokenizer` to train one or "
                         r"`litgpt download` to fetch a model's into it"),
])
def test_bad_input_is_refused_in_one_line(args, message, tmp_path, capsys, offline, shared_tasks):
    ckpt = checkpoint(tmp_path / "ckpt", tiny())
    if args == ["--no_tokenizer"]:
        (ckpt / "tokenizer.json").unlink()
        args = ["--tasks", "local_mc"]
    with pytest.raises(SystemExit) as exit:
        main(["evaluate", str(ckpt), "--tasks", "local_mc", "--include_path", str(shared_tasks), "--device", "cpu",
              *args])
    assert exit.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # (beside progress bars)
    assert len(errors) == 1 and re.fullmatch(f"litgpt: error: {message}", errors[0]), errors
    assert not (ckpt / "evaluate").exists()


def test_hub_id_names_a_downloaded_checkpoint_and_results_go_beside_it(tmp_path, monkeypatch, shared_tasks, capsys):
    checkpoint(tmp_path / "checkpoints" / "acme" / "tiny", tiny())
    monkeypatch.chdir(tmp_path)
    main(["evaluate", "acme/tiny", "--tasks", "local_mc", "--include_path", str(shared_tasks), "--limit", "2",
          "--device", "cpu"])
    results = json.loads((tmp_path / "checkpoints" / "acme" / "tiny" / "evaluate" / "results.json").read_text())
    assert results["n-samples"]["local_mc"]["effective"] == 2
    assert "wrote checkpoints/acme/tiny/evaluate/results.json" in capsys.readouterr().out


def test_without_tasks_the_task_names_are_listed(tmp_path, capsys, shared_tasks):
    ckpt = checkpoint(tmp_path / "ckpt", tiny())
    main(["evaluate", str(ckpt), "--include_path", str(shared_tasks)])
    names = capsys.readouterr().out.splitlines()
    assert {"local_mc", "local_ppl", "hellaswag", "lambada_openai"} <= set(names) and names == sorted(names)
    assert not (ckpt / "evaluate").exists()


# ------------------------------------------------------------------------------------------------ README
def test_readme_evaluate_command_runs_as_written(tmp_path, monkeypatch, capsys):
    """The README's Evaluate command, run as written in a copy of the repository's task folder, on a tiny
    checkpoint where the quick start's would be: it scores the shipped local tasks."""
    section = (REPO / "README.md").read_text().split("## Evaluate", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"```bash\n(litgpt evaluate [^\n]*)\n```", section).group(1)
    shutil.copytree(REPO / "config_hub" / "evaluate", tmp_path / "config_hub" / "evaluate")
    words = shlex.split(command)
    checkpoint(tmp_path / words[2], tiny("debug-mla"))
    monkeypatch.chdir(tmp_path)
    main(words[1:])
    printed = capsys.readouterr().out
    out_dir = Path(words[words.index("--out_dir") + 1])
    results = json.loads((tmp_path / out_dir / "results.json").read_text())
    tasks = words[words.index("--tasks") + 1].split(",")
    assert sorted(results["results"]) == sorted(tasks)
    for task in tasks:
        shipped = [line for line in (REPO / "config_hub" / "evaluate" / f"{task}.jsonl").read_text().splitlines()
                   if line.strip()]
        assert results["n-samples"][task]["effective"] == len(shipped) >= 20
        assert f"|{task}" in printed


# ------------------------------------------------------------------------------------------------ compare
def test_compare_adds_each_models_task_scores(tmp_path, shared_tasks, capsys):
    from test_compare import compare_args
    from test_pretrain import write_stories

    (tmp_path / "text").mkdir()
    text_dir = write_stories(tmp_path / "text", (4, 1), 40)
    out = tmp_path / "compare"
    args = compare_args(text_dir, out, models="[debug-mla]",
                        **{"evaluate.tasks": "local_mc", "evaluate.include_path": str(shared_tasks)})
    main(args)
    results = json.loads((out / "results.json").read_text())
    assert "evaluate" not in results["settings"]  # not a training setting: other tasks later need no retraining
    table = (out / "results.md").read_text()
    assert "## Task scores" in table and "| model | local_mc acc |" in table
    for name, row in results["models"].items():
        assert row["evaluate"]["settings"]["tasks"] == "local_mc"
        # what `litgpt evaluate` gives for the model's final checkpoint
        main(["evaluate", str(out / name / "final"), "--tasks", "local_mc", "--include_path", str(shared_tasks),
              "--device", "cpu", "--out_dir", str(tmp_path / name)])
        alone = json.loads((tmp_path / name / "results.json").read_text())["results"]["local_mc"]
        assert row["evaluate"]["scores"]["local_mc"]["acc,none"] == alone["acc,none"]
        stderr = row["evaluate"]["scores"]["local_mc"]["acc_stderr,none"]
        assert f"| {name} | {alone['acc,none']:.4f} ± {stderr:.4f} |" in table
    # the same command again: nothing retrained, nothing scored again
    capsys.readouterr()
    main(args)
    again = capsys.readouterr().out
    assert "scoring" not in again and all(f"compare: {n} is finished" in again for n in results["models"])
