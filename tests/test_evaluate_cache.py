"""`litgpt evaluate --cache_chunk N [--kv_cache_dtype fp8_e4m3]`: log-likelihoods scored through the KV cache equal
the plain forward's with the model-dtype cache, move by a small bounded amount with an fp8 cache, and cache options
that would do nothing are one-line errors."""

from __future__ import annotations

import json
import re

import pytest

from test_evaluate import DOCUMENTS, PAIRS, checkpoint, load, requests, tiny, write_local_tasks

from litgpt.__main__ import main
from litgpt.api import LLM
from litgpt.evaluate import GPTLM, check_cache_options

FP8 = "fp8_e4m3"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return checkpoint(tmp_path_factory.mktemp("ckpt"), tiny("debug-mla"))


def scores(lm: GPTLM) -> list[float]:
    pairs = [s for s, _ in lm.loglikelihood(requests("loglikelihood", PAIRS), disable_tqdm=True)]
    rolling = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(d,) for d in DOCUMENTS]), disable_tqdm=True)
    return pairs + rolling


def test_scores_through_the_model_dtype_cache_equal_the_plain_forwards(ckpt):
    plain = scores(GPTLM(load(ckpt), batch_size=3, max_length=16))
    cached = scores(GPTLM(load(ckpt), batch_size=3, max_length=16, cache_chunk=5))
    assert all(s < -1.0 for s in plain)
    assert cached == pytest.approx(plain, rel=1e-5, abs=1e-5)


def test_scores_through_an_fp8_cache_move_within_the_bound(ckpt):
    """Measured: the scores move by at most 0.4% of themselves on this random model; bound 2%."""
    plain = scores(GPTLM(load(ckpt), batch_size=3, max_length=16))
    llm = LLM.load(ckpt, device="cpu", precision="32-true", kv_cache_dtype=FP8)
    fp8 = scores(GPTLM(llm, batch_size=3, max_length=16, cache_chunk=5))
    moved = [abs(f - p) / abs(p) for f, p in zip(fp8, plain)]
    assert 0 < max(moved) < 0.02, moved
    with pytest.raises(ValueError, match=r"^kv_cache_dtype 'fp8_e4m3' is not read by log-likelihood scores without "
                                         r"cache_chunk \(a plain forward reads no cache\); pass cache_chunk "
                                         r"\(--cache_chunk N\)$"):
        scores(GPTLM(llm, batch_size=3, max_length=16))


def test_the_command_scores_local_tasks_through_the_cache(ckpt, tmp_path):
    tasks = write_local_tasks(tmp_path / "tasks")
    results = {}
    for name, extra in (("plain", []), ("cache", ["--cache_chunk", "8"]),
                        ("fp8", ["--cache_chunk", "8", "--kv_cache_dtype", FP8])):
        main(["evaluate", str(ckpt), "--tasks", "local_mc,local_ppl", "--include_path", str(tasks), "--device", "cpu",
              "--out_dir", str(tmp_path / name), *extra])
        written = json.loads((tmp_path / name / "results.json").read_text())
        results[name] = written["results"]
    assert written["config"]["model_args"] == {"kv_cache_dtype": FP8, "cache_chunk": 8, "max_length": None}
    ppl = {name: r["local_ppl"]["word_perplexity,none"] for name, r in results.items()}
    assert ppl["cache"] == pytest.approx(ppl["plain"], rel=1e-4)
    assert ppl["fp8"] != ppl["cache"] and ppl["fp8"] == pytest.approx(ppl["cache"], rel=0.05)


@pytest.mark.parametrize("args, message", [
    (["--tasks", "local_mc", "--kv_cache_dtype", FP8],
     r"--kv_cache_dtype fp8_e4m3 is not read when tasks \['local_mc'\] are scored by a plain forward; pass "
     r"--cache_chunk N \(e.g. 256\) to score them through the KV cache"),
    (["--tasks", "local_mc", "--cache_chunk", "0"],
     r"--cache_chunk must be a positive number of tokens per prefill through the KV cache, got 0"),
    (["--tasks", "local_mc", "--cache_chunk", "8", "--kv_cache_dtype", "fp8"],
     r"kv_cache_dtype must be null \(the model's dtype\) or one of 'fp8_e4m3', got 'fp8'"),
    (["--cache_chunk", "8"], r"--kv_cache_dtype and --cache_chunk apply to scoring tasks; pass --tasks, or leave them "
                             r"out to list the task names"),
])
def test_cache_options_that_would_do_nothing_are_refused_in_one_line(args, message, ckpt, tmp_path, capsys):
    tasks = write_local_tasks(tmp_path / "tasks")
    with pytest.raises(SystemExit) as exit:
        main(["evaluate", str(ckpt), "--include_path", str(tasks), "--device", "cpu", "--out_dir",
              str(tmp_path / "out"), *args])
    assert exit.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and re.fullmatch(f"litgpt: error: {message}", errors[0]), errors
    assert not (tmp_path / "out").exists()


def test_cache_chunk_with_generation_tasks_only_is_refused():
    with pytest.raises(ValueError, match=r"^--cache_chunk scores log-likelihoods through the KV cache, but tasks "
                                         r"\['gen'\] only generate \(which always decodes through it\); leave "
                                         r"--cache_chunk out$"):
        check_cache_options({"gen": "generate_until"}, None, 8)
    check_cache_options({"gen": "generate_until"}, FP8, None)  # generation decodes through the fp8 cache
    check_cache_options({"gen": "generate_until", "mc": "multiple_choice"}, FP8, 8)
