"""`litgpt benchmark decode`: output files and columns, throughput numbers, the capacity formula (KV bytes per
token of MHA and MLA), block_size raising, the floor of an MoE model (the experts a step reads), random weights
built in the target dtype, and bad inputs."""

import csv
import math

import pytest
import torch

from litgpt.__main__ import main
from litgpt.benchmark.decode import (
    BANDWIDTH,
    CAPACITY_COLUMNS,
    RESULTS_COLUMNS,
    benchmark_decode_command,
    build_model,
    expected_distinct_experts,
    largest_batch,
    longest_context,
    memory_accounting,
    memory_needed,
    step_weight_bytes,
)
from litgpt.config import Config
from litgpt.model import GPT
from litgpt.rope import build_rope_cache

TINY = dict(models=["debug", "debug-mla"], batch_sizes=[1, 2], context_lengths=[16, 160], decode_steps=2, warmup=1,
            device="cpu", memory_budget_gib=0.5, reserve_gib=0.25, fit_batch_at_context=1000)


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return tuple(reader.fieldnames), list(reader)


def test_outputs_throughput_and_capacity(tmp_path):
    result = benchmark_decode_command(**TINY, out_dir=tmp_path)
    columns, rows = read_csv(tmp_path / "results.csv")
    assert columns == RESULTS_COLUMNS
    assert {(r["model"], int(r["batch"]), int(r["context"])) for r in rows} == {
        (m, b, t) for m in ("debug", "debug-mla") for b in (1, 2) for t in (16, 160)}
    for r in result["results"]:
        assert r["status"] == "ok" and r["mode"] == "eager" and r["kernels"] is True
        assert math.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * 1e3 / r["ms_per_step"])
        assert r["kv_cache_bytes"] == r["batch"] * r["context"] * r["kv_bytes_per_token"]
        assert math.isnan(r["peak_memory_bytes"])  # not measured on CPU, never a stale number
        assert math.isnan(r["decode_peak_memory_bytes"])
        assert r["accounted_bytes"] > r["kv_cache_bytes"]  # the weights and cache at least, on every device

    columns, caps = read_csv(tmp_path / "capacity.csv")
    assert columns == CAPACITY_COLUMNS and [c["model"] for c in caps] == ["debug", "debug-mla"]
    mha, mla = Config.from_name("debug"), Config.from_name("debug-mla")
    f32 = 4
    expected_kv = {"debug": mha.n_layer * 2 * mha.n_query_groups * mha.head_size * f32,
                   "debug-mla": mla.n_layer * (mla.mla.kv_lora_rank + mla.mla.qk_rope_head_dim) * f32}
    assert expected_kv == {"debug": 2 * 2 * 4 * 16 * 4, "debug-mla": 2 * (64 + 8) * 4}  # the dims themselves
    for cap in result["capacity"]:
        config = Config.from_name(cap["model"])
        assert cap["kv_bytes_per_token"] == expected_kv[cap["model"]]
        assert cap["step_bytes_per_token"] == cap["step_bytes_per_row"] == cap["step_bytes_fixed"] == 0  # CPU
        assert cap["rope_bytes_per_position"] == 2 * config.rope_n_elem * 4
        assert cap["weights_bytes"] == 4 * sum(p.numel() for p in GPT(config).parameters())
        budget, reserve = int(0.5 * 2**30), int(0.25 * 2**30)
        per_position = cap["kv_bytes_per_token"] + cap["rope_bytes_per_position"]
        assert cap["longest_context_batch1"] == (budget - cap["weights_bytes"] - reserve) // per_position
        rows_at = (budget - cap["weights_bytes"] - reserve - 1000 * cap["rope_bytes_per_position"])
        assert cap["largest_batch"] == rows_at // (1000 * cap["kv_bytes_per_token"])
        S, B = cap["longest_context_batch1"], cap["largest_batch"]  # the largest that fit: one more does not
        assert memory_needed(cap, 1, S) <= budget < memory_needed(cap, 1, S + 1)
        assert memory_needed(cap, B, 1000) <= budget < memory_needed(cap, B + 1, 1000)
        assert cap["verified"] == cap["verified_batch"] == "skipped (CPU)"
    by_model = {c["model"]: c for c in result["capacity"]}
    assert by_model["debug-mla"]["longest_context_batch1"] > by_model["debug"]["longest_context_batch1"]

    assert (tmp_path / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "summary.md").read_text()
    assert "litgpt benchmark decode --models '[debug, debug-mla]'" in summary
    assert "## What fits in 0.5 GiB" in summary and "skipped on CPU" in summary
    assert "block_size raised" in summary and "debug (was 128)" in summary  # 160 > debug's block_size of 128
    assert sum(line.startswith("| debug-mla |") for line in summary.splitlines()) == 4 + 1


def test_capacity_helpers_with_step_overheads():
    cap = dict(memory_budget_bytes=10_000, weights_bytes=1_000, reserve_bytes=500, step_bytes_fixed=100,
               kv_bytes_per_token=10, step_bytes_per_token=2, step_bytes_per_row=50, rope_bytes_per_position=4)
    assert memory_needed(cap, 3, 20) == 1_000 + 3 * 20 * 12 + 3 * 50 + 100 + 20 * 4 + 500
    assert longest_context(cap) == (10_000 - 1_600 - 50) // 16
    assert largest_batch(cap, 100) == (10_000 - 1_600 - 400) // (100 * 12 + 50)
    cap["memory_budget_bytes"] = 1_000
    assert longest_context(cap) == 0 and largest_batch(cap, 100) == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--models", "[]"], "--models must be a non-empty list"),
        (["--models", "[nope]"], "unknown model name 'nope'"),
        (["--context_lengths", "[1]"], "--context_lengths: 1 is too short"),
        (["--context_lengths", "[4]", "--decode_steps", "5"], "--context_lengths: 4 is too short"),
        (["--batch_sizes", "[0]"], "--batch_sizes must be a non-empty list of positive integers"),
        (["--mode", "cuda_graph"], "--mode 'cuda_graph' is not available on cpu"),
        (["--memory_budget_gib", "0"], "--memory_budget_gib must be positive"),
    ],
)
def test_bad_input_is_one_line(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", "decode", "--device", "cpu", "--out_dir", str(tmp_path), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("litgpt: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "results.csv").exists()


def test_expected_distinct_experts():
    assert expected_distinct_experts(8, 2, 1) == 2.0  # one token reads its k experts
    assert expected_distinct_experts(8, 2, 3) == pytest.approx(8 * (1 - 0.75**3))  # 4.625
    assert expected_distinct_experts(64, 6, 8) == pytest.approx(34.88, abs=0.01)  # DeepSeek-V2-Lite at batch 8
    assert expected_distinct_experts(64, 6, 1000) == pytest.approx(64)


def test_floor_counts_the_experts_a_step_reads():
    """By hand on a small config: 3 layers, the first dense, 2 MoE layers of 8 experts (2 a token, width 16, C 32,
    with biases) and one shared expert; float32. A step of B tokens reads 8 (1 - (3/4)^B) experts a layer and B embedding rows."""
    config = Config.from_name("debug", n_layer=3, n_embd=32, n_head=4, vocab_size=100, padding_multiple=64,
                              block_size=64, mlp_class_name="LLaMAMoE", intermediate_size=48, first_k_dense_replace=1,
                              moe_intermediate_size=16, n_expert=8, n_expert_per_token=2, n_shared_expert=1)
    model = GPT(config)
    total = 4 * sum(p.numel() for p in model.parameters())
    assert config.bias  # debug's: the experts' biases count with them
    routed = 8 * (2 * 16 * 32 + 32 * 16 + 2 * 16 + 32) * 4  # one layer's experts: (E, 2I, C), (E, C, I), biases
    rows = 128 * 32 * 4  # the embedding table: 128 padded rows of 32
    assert step_weight_bytes(model, 1) == total - 2 * routed * (1 - 2 / 8) - rows + 1 * 32 * 4
    assert step_weight_bytes(model, 3) == pytest.approx(total - 2 * routed * (1 - 4.625 / 8) - rows + 3 * 32 * 4)
    assert step_weight_bytes(model, 500) == pytest.approx(total, abs=1e-6 * total)  # all experts, all rows

    with torch.device("meta"):  # DeepSeek-V2-Lite in bf16: about 4.9 GB at batch 1, all 29.3 GiB at a large batch
        lite = GPT(Config.from_name("DeepSeek-V2-Lite")).to(torch.bfloat16)
    lite_routed = 26 * 64 * 3 * 2048 * 1408 * 2
    lite_total = 15_706_484_224 * 2
    one = lite_total - lite_routed * (1 - 6 / 64) - (102400 - 1) * 2048 * 2
    assert step_weight_bytes(lite, 1) == pytest.approx(one) and 4.8e9 < one < 5.0e9
    assert step_weight_bytes(lite, 4096) == pytest.approx(lite_total - (102400 - 4096) * 2048 * 2)


def test_moe_rows_floor_and_weights_built_in_the_target_dtype(tmp_path):
    """An MoE model's rows take the floor of the weights the step reads plus the cache, and the random weights are
    built in the target dtype (bf16 here), the V3 router bias in float32 and the rope tables as a fresh build."""
    result = benchmark_decode_command(models=["debug-moe-mla"], batch_sizes=[1, 4], context_lengths=[16],
                                      decode_steps=2, warmup=1, device="cpu", precision="bf16-true",
                                      memory_budget_gib=0.5, reserve_gib=0.25, out_dir=tmp_path)
    one, four = result["results"]
    config = Config.from_name("debug-moe-mla")
    model = build_model(config, torch.device("cpu"), torch.bfloat16, True, 0)
    for r in (one, four):
        assert r["status"] == "ok" and r["dtype"] == "bfloat16"
        assert r["step_weight_bytes"] == step_weight_bytes(model, r["batch"])
        assert r["floor_ms"] == pytest.approx((r["step_weight_bytes"] + r["kv_cache_bytes"]) / BANDWIDTH * 1e3)
    weights = result["capacity"][0]["weights_bytes"]
    assert one["step_weight_bytes"] < four["step_weight_bytes"] < weights
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    matrices = [p for name, p in model.named_parameters() if p.dim() > 1 and not name.endswith("bias")]
    assert all(p.float().std() > 0 for p in matrices)  # initialised, not left empty (biases start at zero)
    bias = [m.gate.e_score_correction_bias for m in model.modules() if hasattr(m, "gate")]
    assert all(b is None or b.dtype == torch.float32 for b in bias)
    cos, _ = build_rope_cache(model.max_seq_length, config.rope_n_elem, torch.device("cpu"), config.rope_base,
                              config.rope_condense_ratio, config.rope_adjustments)
    assert torch.equal(model.cos, cos.to(torch.bfloat16))


def test_memory_accounting_by_hand():
    """debug-mla in float32, folded for decode, with a 2 x 32 cache: weights + folded maps + cache + rope tables +
    the logits of a batch of 2 (padded vocab, float32 twice)."""
    from litgpt.fold import fold_for_decode

    config = Config.from_name("debug-mla")
    model = GPT(config)
    model.max_seq_length = 32
    model.set_kv_cache(2, 32)
    fold_for_decode(model)
    acc = memory_accounting(model, 2)
    weights = 4 * sum(p.numel() for p in model.parameters())
    folded = 4 * sum(b.numel() for block in model.transformer.h for b in block.folded.buffers())
    cache = 2 * 32 * config.n_layer * (config.mla.kv_lora_rank + config.mla.qk_rope_head_dim) * 4
    rope = 2 * 32 * config.rope_n_elem * 4  # cos and sin, max_seq_length rows
    assert acc == dict(weights=weights, folded=folded, kv_cache=cache, other_buffers=rope,
                       transients=2 * config.padded_vocab_size * (4 + 4))
    assert folded > 0
    model.clear_kv_cache()
    assert memory_accounting(model, 2)["kv_cache"] == 0
