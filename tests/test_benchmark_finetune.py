"""`litgpt benchmark finetune` on the CPU through the CLI: tiny cells of 2 modes x 2 attention variants (gqa derived
from mha by mean-pooling K/V heads), a QLoRA cell reported as skipped, results.json / results.md / plots, and a rerun
that skips the finished cells."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from litgpt.__main__ import main
from litgpt.benchmark.finetune import derive_grouped_checkpoint, grouped_heads
from litgpt.checkpoint import load_checkpoint, save_checkpoint
from litgpt.lora import LoRASpec, apply_lora, lora_parameters
from test_data_sft import make_base_checkpoint, write_json_dir


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_base_checkpoint(tmp_path_factory.mktemp("base") / "mha", n_head=8, n_embd=32)


def test_pooled_kv_heads_compute_the_mha_model_when_each_group_agrees(tmp_path, base):
    """Where the K/V heads of each group are equal, the derived GQA model computes exactly what the MHA model does;
    otherwise each group's K/V weights are the mean of its heads'."""
    model = load_checkpoint(base)
    c = model.config
    hs, nh, groups = c.head_size, c.n_head, 2
    with torch.no_grad():
        for block in model.transformer.h:
            for t in (block.attn.qkv.weight, block.attn.qkv.bias):
                kv = t[nh * hs:].view(2, groups, nh // groups, hs, *t.shape[1:])  # (K|V, group, head in group, hs, ...)
                kv.copy_(kv[:, :, :1].expand_as(kv))  # every head of a group = the group's first head
    save_checkpoint(model, tmp_path / "agree")
    (tmp_path / "agree" / "tokenizer.json").write_bytes((base / "tokenizer.json").read_bytes())
    grouped = load_checkpoint(derive_grouped_checkpoint(tmp_path / "agree", groups, tmp_path / "gqa"))
    assert grouped.config.n_query_groups == groups
    ids = torch.randint(0, 320, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(grouped(ids), model(ids), rtol=1e-5, atol=1e-6)

    random_mha = load_checkpoint(base)
    mqa = load_checkpoint(derive_grouped_checkpoint(base, 1, tmp_path / "mqa"))
    w, w1 = random_mha.transformer.h[0].attn.qkv.weight, mqa.transformer.h[0].attn.qkv.weight
    torch.testing.assert_close(w1[nh * hs: nh * hs + hs], w[nh * hs: 2 * nh * hs].view(nh, hs, -1).mean(0))
    torch.testing.assert_close(w1[: nh * hs], w[: nh * hs])  # queries kept
    assert (grouped_heads(12, "gqa"), grouped_heads(4, "gqa"), grouped_heads(8, "mqa")) == (3, 2, 1)


def bench_args(base: Path, data_dir: Path, out: Path, **extra: str) -> list[str]:
    args = {
        "checkpoints": json.dumps({"mha": str(base)}),
        "attention": "[mha, gqa]",
        "modes": "[full, lora, qlora]",
        "data": "JSON",
        "data.json_path": str(data_dir),
        "data.prompt_style": "plain",
        "data.mask_prompt": "true",
        "out_dir": str(out),
        "precision": "32-true",
        "train.max_steps": "4",
        "train.global_batch_size": "4",
        "train.micro_batch_size": "2",
        "train.max_seq_length": "64",
        "train.lr_warmup_steps": "1",
        "train.save_interval": "2",
        "eval.interval": "2",
        "eval.max_iters": "2",
        "full_optimizer.lr": "0.01",
        "lora_optimizer.lr": "0.01",
        "lora": "{lora_r: 4}",
    }
    args.update(extra)
    return ["benchmark", "finetune"] + [f"--{k}={v}" for k, v in args.items()]


def test_benchmark_finetune_cells_results_and_rerun(tmp_path, base, capsys):
    data_dir = write_json_dir(tmp_path / "data", 32, 8)
    out = tmp_path / "bench"
    main(bench_args(base, data_dir, out))
    recorded = json.loads((out / "results.json").read_text())
    cells = recorded["cells"]
    assert sorted(cells) == ["full-gqa", "full-mha", "lora-gqa", "lora-mha", "qlora-gqa", "qlora-mha"]

    mha, gqa = load_checkpoint(base), load_checkpoint(out / "checkpoints" / "gqa")
    assert gqa.config.n_query_groups == 2
    for attn, model in (("mha", mha), ("gqa", gqa)):
        full, lora = cells[f"full-{attn}"], cells[f"lora-{attn}"]
        assert full["trainable_params"] == sum(p.numel() for p in model.parameters())
        apply_lora(model, LoRASpec(r=4))
        assert lora["trainable_params"] == sum(p.numel() for p in lora_parameters(model))
        for row in (full, lora):
            assert row["status"] == "done" and row["steps"] == 4 and [s for s, _ in row["loss"]] == [1, 2, 3, 4]
            assert [s for s, _ in row["val_loss"]] == [0, 2, 4]
            assert row["val_loss_before"] == row["val_loss"][0][1] and row["val_loss_after"] == row["val_loss"][-1][1]
            assert row["samples_per_s"] == pytest.approx(4 * 4 / row["train_time_s"])
            assert row["tokens_per_s"] > 0 and row["peak_memory_gib"] is None  # CPU: not measured
            assert row["wall_s"] > row["train_time_s"]  # the cell's whole run holds its training steps
        assert full["val_loss_after"] < full["val_loss_before"]
        qlora = cells[f"qlora-{attn}"]
        assert qlora["status"] == "skipped" and qlora["reason"].startswith("--quantize bnb.nf4 needs ")
    assert cells["full-mha"]["val_loss_before"] != cells["full-gqa"]["val_loss_before"]  # pooled heads differ

    table = (out / "results.md").read_text()
    assert "| full-mha | " in table and f"| qlora-mha | skipped: {cells['qlora-mha']['reason']}" in table
    assert all((out / name).stat().st_size > 0 for name in ("loss_vs_step.png", "peak_memory.png"))
    capsys.readouterr()

    main(bench_args(base, data_dir, out))  # rerun: nothing trains again
    printed = capsys.readouterr().out
    for cell in ("full-mha", "full-gqa", "lora-mha", "lora-gqa"):
        assert f"{cell} is finished (results recorded), skipping it" in printed
    assert "skipping qlora-mha: --quantize bnb.nf4 needs" in printed  # tried again, still skipped
    again = json.loads((out / "results.json").read_text())["cells"]
    assert all(again[c] == cells[c] for c in cells)
    assert not list((out / "full-mha" / "logs" / "csv").glob("version_1"))


def test_benchmark_finetune_bad_inputs_are_one_line(tmp_path, base, capsys):
    data_dir = write_json_dir(tmp_path / "data", 8, 4)
    cases = [
        (dict(attention="[mha, mla]"), "no checkpoint for the mla cells: pass --checkpoints with an mla entry"),
        (dict(modes="[full, dpo]"), "--modes must be distinct values of full, lora, qlora"),
        (dict(lora="{lora_rank: 4}"), "--lora takes finetune_lora's lora_alpha"),
        (dict(checkpoints=json.dumps({"mla": str(base)}), attention="[mla]"), "holds an mha model, not mla"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit):
            main(bench_args(base, data_dir, tmp_path / "out", **extra))
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
