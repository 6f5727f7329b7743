"""`litgpt benchmark attention`: output files and columns, the float64 --check (passing and catching injected
errors), Pythia-160M defaults, bad inputs, and the fused kernel on CUDA."""

import csv
import math

import pytest
import torch

import litgpt.attention
from litgpt.__main__ import main
from litgpt.attention import AttentionBase
from litgpt.benchmark.attention import CSV_COLUMNS, TOLERANCE, _implementations, _shapes, benchmark_attention
from litgpt.config import Config

TINY = dict(n_head=4, head_size=16, gqa_groups=2, kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16,
            v_head_dim=16, batch_sizes=[1, 2], seq_lens=[8, 24], warmup=1, trials=2, device="cpu", dtype="float32")
REQUIRED = {"impl", "mode", "batch", "seq_len", "n_head", "head_size", "kv_lora_rank", "qk_rope_head_dim",
            "qk_nope_head_dim", "v_head_dim", "q_lora_rank", "dtype", "latency_ms", "tokens_per_s", "peak_mem_mib",
            "kv_cache_bytes", "max_abs_err", "max_rel_err"}


def read_rows(out_dir):
    with open(out_dir / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_outputs_and_check_pass(tmp_path):
    rows = benchmark_attention(**TINY, check=True, out_dir=tmp_path)
    columns, written = read_rows(tmp_path)
    assert REQUIRED <= set(columns) and tuple(columns) == CSV_COLUMNS
    impls = ["mha", "gqa", "mqa", "mla-naive", "mla-absorbed"]  # no mla-fused without CUDA
    expected = {(i, m, b, t) for m in ("prefill", "decode") for i in impls for b in (1, 2) for t in (8, 24)}
    assert {(r["impl"], r["mode"], int(r["batch"]), int(r["seq_len"])) for r in written} == expected
    assert len(written) == len(rows) == 40
    for r in rows:
        assert r["status"] == "ok"
        assert 0 < r["max_rel_err"] <= TOLERANCE[torch.float32], r  # float32 differs from float64, within tolerance
        new_tokens = r["batch"] * (r["seq_len"] if r["mode"] == "prefill" else 1)
        assert r["tokens_per_s"] == pytest.approx(new_tokens / (r["latency_ms"] / 1e3))
        assert 0 < r["latency_min_ms"] <= r["latency_ms"]
        assert math.isnan(r["peak_mem_mib"])  # not measured on CPU, never a stale number
        values = {"mha": 2 * 4 * 16, "gqa": 2 * 2 * 16, "mqa": 2 * 16}.get(r["impl"], 32 + 8)
        assert (r["kv_values_per_token"], r["kv_cache_bytes"]) == (values, r["batch"] * r["seq_len"] * values * 4)
    for name in ("latency.png", "throughput.png", "memory.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "summary.md").read_text()
    assert "## prefill" in summary and "## decode" in summary and "All configurations passed" in summary
    assert sum(line.startswith("| mla-absorbed |") for line in summary.splitlines()) == 8
    assert "not measured on CPU" in summary


def perturb_output(function, factor=1.01):
    def perturbed(*args, **kwargs):
        return function(*args, **kwargs) * factor

    return perturbed


def drop_newest_key(function):
    """An off-by-one bug: each query misses its own (newest) position."""

    def buggy(q, kv, input_pos, kv_lora_rank, scale, *args):
        return function(q, kv, input_pos - 1, kv_lora_rank, scale, *args)

    return buggy


@pytest.mark.parametrize("inject", [perturb_output, drop_newest_key])
def test_check_fails_on_injected_error_in_absorbed_path(tmp_path, monkeypatch, inject):
    reference = litgpt.attention.mla_decode_attention_reference  # the torch path of mla-absorbed
    monkeypatch.setattr(litgpt.attention, "mla_decode_attention_reference", inject(reference))
    args = {**TINY, "batch_sizes": [2], "seq_lens": [16]}
    with pytest.raises(ValueError, match=r"--check failed .*mla-absorbed (prefill|decode) batch 2 seq_len 16: max rel"):
        benchmark_attention(**args, implementations=["mla-naive", "mla-absorbed"], modes=["decode"], check=True,
                            out_dir=tmp_path)
    _, rows = read_rows(tmp_path)  # the outputs are still written, with the failure marked
    status = {r["impl"]: r["status"] for r in rows}
    assert status == {"mla-naive": "ok", "mla-absorbed": "check failed"}
    assert float(next(r for r in rows if r["impl"] == "mla-absorbed")["max_rel_err"]) > 1e-3
    assert "**CHECK FAILED**" in (tmp_path / "summary.md").read_text()


def test_check_fails_on_injected_error_in_sdpa(tmp_path, monkeypatch):
    monkeypatch.setattr(AttentionBase, "attend", staticmethod(perturb_output(AttentionBase.attend, 1.001)))
    with pytest.raises(ValueError, match="--check failed for 2 configuration.*: gqa prefill"):
        benchmark_attention(**{**TINY, "batch_sizes": [1], "seq_lens": [8]}, implementations=["gqa"], check=True,
                            out_dir=tmp_path)
    benchmark_attention(**{**TINY, "batch_sizes": [1], "seq_lens": [8]}, implementations=["gqa"], check=False,
                        out_dir=tmp_path)  # without --check nothing is compared, so nothing fails


def test_defaults_are_pythia_160m_attention():
    shapes = _shapes(12, 64, None, None, None, None, None, None, None)
    assert shapes.n_embd == Config.from_name("pythia-160m").n_embd == 768
    assert shapes.gqa_groups == Config.from_name("pythia-160m-gqa").n_query_groups == 3
    assert shapes.mla == Config.from_name("pythia-160m-mla").latent_attention
    assert (shapes.mla["kv_lora_rank"], shapes.mla["qk_rope_head_dim"]) == (256, 32)
    assert shapes.config("mla-absorbed", 4096).kv_values_per_token == 288
    assert shapes.config("mha", 4096).kv_values_per_token == 1536
    assert _implementations(None, cuda=False) == ["mha", "gqa", "mqa", "mla-naive", "mla-absorbed"]
    assert _implementations(None, cuda=True)[-1] == "mla-fused"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown without CUDA")
@pytest.mark.parametrize(
    "args, message",
    [
        (["--implementations", "[mla-fused]"], "mla-fused runs a Triton kernel that needs a CUDA device"),
        (["--implementations", "[mha, flash]"], "--implementations: unknown"),
        (["--modes", "[train]"], "--modes: unknown"),
        (["--seq_lens", "[0]"], "--seq_lens must be a non-empty list of positive integers"),
        (["--n_head", "12", "--gqa_groups", "5"], "bad attention dimensions for gqa"),
        (["--dtype", "int8"], "--dtype 'int8' is not supported"),
        (["--device", "cuda"], "CUDA is not available"),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", "attention", *args, "--out_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "results.csv").exists()


@pytest.mark.cuda
def test_mla_fused_matches_reference_on_cuda(tmp_path):
    rows = benchmark_attention(
        implementations=["mla-absorbed", "mla-fused"], modes=["decode"], batch_sizes=[1, 4], seq_lens=[100, 2048],
        warmup=2, trials=3, check=True, device="cuda", dtype="bfloat16", out_dir=tmp_path,
    )
    assert {r["impl"] for r in rows} == {"mla-absorbed", "mla-fused"} and len(rows) == 8
    for r in rows:
        assert r["status"] == "ok" and r["max_rel_err"] <= TOLERANCE[torch.bfloat16]
        assert r["peak_mem_mib"] > 0 and r["latency_ms"] > 0
