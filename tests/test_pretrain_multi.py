"""`litgpt pretrain --devices 2` on the CPU (gloo, through the real CLI): 2-process DDP trains exactly what one
process with gradient accumulation trains (an MoE model too), writes one log and one normal checkpoint, resumes a
1-process checkpoint and is resumed by one process; `--strategy fsdp` without CUDA is a one-line error."""

import csv
from pathlib import Path

import pytest
import torch

from litgpt.__main__ import main
from litgpt.checkpoint import load_checkpoint
from test_pretrain import run_cli, tiny_args, write_stories

# bias: false because the key bias has a zero true gradient: Adam turns its rounding noise into +-lr steps that
# differ between any two summation orders, which would hide everything else under a loose tolerance.
MODEL = "{n_layer: 1, n_embd: 32, n_head: 2, block_size: 32, vocab_size: 384, padding_multiple: 64, bias: false}"
STEPS = {"model_config": MODEL, "train.max_steps": "6", "train.save_interval": "3"}  # global 4, micro 2, 32 tokens
FINAL_FILES = ["hyperparameters.yaml", "lit_model.pth", "model_config.yaml", "tokenizer.json", "tokenizer_config.json"]


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    return write_stories(tmp_path_factory.mktemp("text"), (8, 2), 60)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, text_dir) -> dict[str, Path]:
    """A 2-process DDP run (micro batch 2, no accumulation) and a 1-process run (accumulation 2) of the same
    6 steps of global batch 4, with the tokenizer the DDP run trained."""
    root = tmp_path_factory.mktemp("runs")
    ddp = run_cli(tiny_args(text_dir, root / "ddp", devices="2", strategy="ddp", **STEPS))
    assert ddp.returncode == 0, ddp.stderr
    one = run_cli(tiny_args(text_dir, root / "one", devices="1", tokenizer_dir=str(root / "ddp" / "tokenizer"), **STEPS))
    assert one.returncode == 0, one.stderr
    return {"ddp": root / "ddp", "one": root / "one"}


def metrics(out_dir: Path) -> list[dict[str, str]]:
    versions = sorted(p.name for p in (out_dir / "logs" / "csv").iterdir())
    assert versions == ["version_0"], versions  # one logger wrote: rank 0
    with open(out_dir / "logs" / "csv" / "version_0" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def train_losses(out_dir: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["loss"]) for r in metrics(out_dir) if r["loss"]}


def test_ddp_writes_one_log_and_a_normal_checkpoint(runs):
    out = runs["ddp"]
    assert sorted(p.name for p in out.iterdir()) == ["final", "logs", "step-00000003", "tokenizer"]
    for name in ("step-00000003", "final"):
        assert sorted(p.name for p in (out / name).iterdir()) == FINAL_FILES
    rows = [r for r in metrics(out) if r["loss"]]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]  # each step logged once
    for r in rows:  # tokens and tokens/s count both ranks: 4 sequences x 32 tokens per step, not 2 x 32
        assert int(r["tokens"]) == int(r["step"]) * 4 * 32
        assert float(r["tokens_per_sec"]) * float(r["step_time"]) == pytest.approx(4 * 32, rel=1e-6)
    state = torch.load(out / "final" / "lit_model.pth", weights_only=True)
    assert (state["step_count"], state["iter_num"], state["tokens"]) == (6, 6, 6 * 4 * 32)  # iter_num: per rank
    model = load_checkpoint(out / "final")  # a plain 1-process GPT: no "module." / "_forward_module." keys
    assert model.config.bias is False and model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 384)


def test_ddp_matches_one_process_with_gradient_accumulation(runs):
    ddp_losses, one_losses = train_losses(runs["ddp"]), train_losses(runs["one"])
    assert ddp_losses.keys() == one_losses.keys() == set(range(1, 7))
    assert [ddp_losses[s] for s in range(1, 7)] == pytest.approx([one_losses[s] for s in range(1, 7)], rel=1e-5)
    assert ddp_losses[6] < ddp_losses[1]
    ddp_model = load_checkpoint(runs["ddp"] / "final").state_dict()
    one_model = load_checkpoint(runs["one"] / "final").state_dict()
    assert ddp_model.keys() == one_model.keys()
    for name in one_model:
        torch.testing.assert_close(ddp_model[name], one_model[name], rtol=1e-4, atol=1e-6, msg=name)
    # the weights moved: equal finals are not just two copies of the same initialization
    first = torch.load(runs["one"] / "step-00000003" / "lit_model.pth", weights_only=True)["model"]
    assert max((first[k] - one_model[k]).abs().max().item() for k in one_model) > 1e-3


@pytest.mark.parametrize("source, processes", [("one", {"devices": "2", "strategy": "ddp"}), ("ddp", {"devices": "1"})],
                         ids=["ddp-resumes-one-process", "one-process-resumes-ddp"])
def test_resuming_with_another_process_count_keeps_the_data_position(tmp_path, text_dir, runs, source, processes):
    """The data position is global: 2 processes resuming a 1-process step-3 checkpoint (accumulation 2), or 1
    process resuming the 2-process one, train steps 4-6 on the same windows as the uninterrupted run, to the same
    final weights."""
    out = tmp_path / "resumed"
    step3 = runs[source] / "step-00000003"
    result = run_cli(tiny_args(text_dir, out, resume=str(step3), tokenizer_dir=str(step3), **processes, **STEPS))
    assert result.returncode == 0, result.stderr
    assert f"resuming from {step3}/lit_model.pth" in result.stdout
    resumed, expected = train_losses(out), train_losses(runs[source])
    assert resumed.keys() == {4, 5, 6}
    assert [resumed[s] for s in (4, 5, 6)] == pytest.approx([expected[s] for s in (4, 5, 6)], rel=1e-5)
    final = load_checkpoint(out / "final").state_dict()
    for name, value in load_checkpoint(runs[source] / "final").state_dict().items():
        torch.testing.assert_close(final[name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_ddp_trains_an_moe_model_as_one_process_does(tmp_path, text_dir):
    """A mixture-of-experts model under 2-process DDP: the per-expert counts are summed over the ranks, so the V3
    bias update (and with it every routing choice) is the one of a single process with accumulation 2."""
    moe = {"model_name": "debug-moe",  # bias: false, as MODEL above
           "model_config": "{n_layer: 2, block_size: 32, vocab_size: 384, padding_multiple: 64, bias: false}",
           "train.max_steps": "3", "train.save_interval": "3"}  # an odd count of +-rate steps: the bias is off zero
    ddp = run_cli(tiny_args(text_dir, tmp_path / "ddp", devices="2", strategy="ddp", **moe))
    assert ddp.returncode == 0, ddp.stderr
    one = run_cli(tiny_args(text_dir, tmp_path / "one", devices="1", tokenizer_dir=str(tmp_path / "ddp" / "tokenizer"),
                            **moe))
    assert one.returncode == 0, one.stderr
    ddp_losses, one_losses = train_losses(tmp_path / "ddp"), train_losses(tmp_path / "one")
    assert [ddp_losses[s] for s in range(1, 4)] == pytest.approx([one_losses[s] for s in range(1, 4)], rel=1e-5)
    ddp_state = torch.load(tmp_path / "ddp" / "final" / "lit_model.pth", weights_only=True)["model"]
    one_state = torch.load(tmp_path / "one" / "final" / "lit_model.pth", weights_only=True)["model"]
    biases = [k for k in one_state if k.endswith("e_score_correction_bias")]
    assert biases and all(one_state[k].abs().min() > 0 for k in biases)  # every expert's bias moved
    assert all(torch.equal(ddp_state[k], one_state[k]) for k in biases)  # the same +-rate steps: the same routing
    for name in one_state:  # Adam turns rounding noise in a near-zero gradient into up to lr-sized steps (lr 1e-3)
        torch.testing.assert_close(ddp_state[name], one_state[name], rtol=0, atol=1e-4, msg=name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
def test_fsdp_without_cuda_is_one_line_error(tmp_path, text_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_args(text_dir, tmp_path / "out", devices="2", strategy="fsdp", **STEPS))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("litgpt: error: --strategy fsdp needs CUDA GPUs"), err
    assert "use --strategy ddp" in err[0]
    assert not (tmp_path / "out").exists()  # failed before any work
