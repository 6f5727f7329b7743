"""benchmarks/serve_engine.py: the engine alone at a concurrency, its steps' time split into prefill, queueing the
decode step, reading it back and the rest, on a tiny checkpoint (CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from litgpt.api import LLM
from litgpt.serve.engine import Engine, GenerationRequest
from test_generate import make_checkpoint

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import serve_engine  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("serve_engine"))


def test_a_level_decodes_every_token_and_splits_its_steps(checkpoint):
    prompts = [[5 + (i * 7 + j) % 200 for j in range(12)] for i in range(8)]
    row = serve_engine.run_level(checkpoint, prompts, concurrency=2, max_tokens=6, kv_cache_gib=None, device="cpu")
    assert row["output_tokens"] == 8 * 6 and row["requests"] == 8 and row["peak_running"] == 2
    assert row["prefill_chunks"] == 8  # one chunk per 12-token prompt
    assert row["prefill_forwards"] == 4  # the two prompts of a round arrive together: one forward
    parts = (row["prefill_ms_per_step"] + row["queue_ms_per_step"] + row["read_ms_per_step"]
             + row["other_ms_per_step"])
    assert parts == pytest.approx(row["ms_per_step"], abs=0.004)
    assert row["queue_ms_per_step"] > 0 and row["read_ms_per_step"] > 0 and row["prefill_ms_per_step"] > 0
    # 2 rows x 6 tokens x 4 rounds: the first token of each comes from its prefill, the other 5 from decode steps
    assert row["decode_steps"] == 4 * 5
    assert row["output_tokens_per_s"] == pytest.approx(row["output_tokens"] / row["wall_s"], rel=0.02)


def test_the_timed_engine_decodes_as_the_engine(checkpoint):
    requests = [GenerationRequest(tuple(range(3 + i, 12 + 2 * i)), max_tokens=7, ignore_eos=True) for i in range(5)]
    outputs = []
    for cls in (Engine, serve_engine.TimedEngine):
        llm = LLM.load(checkpoint, device="cpu")
        engine = cls(llm.model, llm.tokenizer, max_batch_size=3)
        outputs.append([[e.token_id for e in events if e.token_id is not None] for events in engine.generate(requests)])
    assert outputs[0] == outputs[1] and all(len(t) == 7 for t in outputs[0])


def test_the_script_writes_its_table(checkpoint, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 20)
    out = tmp_path / "engine.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve_engine.py"), "--checkpoint_dir", str(checkpoint),
                    "--text_file", str(text), "--concurrency", "1", "3", "--prompt_tokens", "16", "--max_tokens", "4",
                    "--device", "cpu", "--profile", "1", "3", "--out", str(out)], check=True, capture_output=True,
                   cwd=tmp_path)
    record = json.loads(out.read_text())
    for c in (1, 3):  # each profiled level's host and kernel tables
        assert "tottime" in (tmp_path / f"engine_profile_{c}_host.txt").read_text()
        assert "Self CPU" in (tmp_path / f"engine_profile_{c}_device.txt").read_text()
    assert [r["concurrency"] for r in record["rows"]] == [1, 3]
    assert [r["output_tokens"] for r in record["rows"]] == [4 * 4, 12 * 4]
    table = out.with_suffix(".md").read_text()
    assert "| 1 |" in table and "| 3 |" in table and "prefill ms/step" in table
