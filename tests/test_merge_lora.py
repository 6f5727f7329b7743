"""`litgpt merge_lora` (litgpt/scripts/merge_lora.py): a fine-tune directory's lit_model.pth.lora plus its base
checkpoint become a plain lit_model.pth that loads like any checkpoint; bad inputs end in one line."""

import copy
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from litgpt import GPT, Config
from litgpt.__main__ import main
from litgpt.checkpoint import load_checkpoint, save_checkpoint, save_config
from litgpt.lora import LoRASpec, apply_lora, lora_modules, lora_state_dict
from litgpt.lora import merge_lora as merge_lora_weights
from litgpt.scripts.merge_lora import merge_lora
from test_model import MLA_DIMS, randomize

SPEC = LoRASpec(r=4, alpha=8, dropout=0.1, query=True, key=True, value=True, projection=True, mlp=True)


def make_run(tmp_path: Path, wrapped: bool = True, precision: str = "32-true") -> tuple[Path, Path, GPT]:
    """(a base checkpoint dir, a LoRA fine-tune's output dir on it, the fine-tuned LoRA model in eval mode)."""
    torch.manual_seed(0)
    config = Config.from_name("debug", block_size=32, vocab_size=100, padding_multiple=64, latent_attention=MLA_DIMS)
    base = randomize(GPT(config))
    base_dir, run_dir = tmp_path / "base", tmp_path / "out" / "final"
    save_checkpoint(base, base_dir)
    model = copy.deepcopy(base)
    apply_lora(model, SPEC)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.normal_(0.0, 0.2)
    run_dir.mkdir(parents=True)
    lora = lora_state_dict(model)
    torch.save({"model": lora} if wrapped else lora, run_dir / "lit_model.pth.lora")  # as fabric.save writes it
    hparams = {"checkpoint_dir": str(base_dir), "precision": precision, **SPEC.hyperparameters()}
    (run_dir / "hyperparameters.yaml").write_text(yaml.safe_dump(hparams))
    save_config(config, run_dir)
    return base_dir, run_dir, model.eval()


def test_merge_writes_a_plain_checkpoint_that_computes_the_fine_tuned_model(tmp_path):
    base_dir, run_dir, model = make_run(tmp_path)
    base_bytes = (base_dir / "lit_model.pth").read_bytes()
    merge_lora(run_dir)
    merged = load_checkpoint(run_dir)  # strict: exactly the plain keys
    assert set(torch.load(run_dir / "lit_model.pth", weights_only=True)) == set(GPT(model.config).state_dict())
    idx = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(idx), model(idx), rtol=1e-5, atol=1e-5)
    assert (base_dir / "lit_model.pth").read_bytes() == base_bytes  # the base stays as it was
    assert not list(run_dir.glob(".*.tmp"))  # written atomically, nothing left behind


def test_merge_through_the_cli_with_an_explicit_base_and_precision(tmp_path):
    base_dir, run_dir, model = make_run(tmp_path, wrapped=False)
    moved = tmp_path / "elsewhere"
    base_dir.rename(moved)  # the recorded checkpoint_dir is gone: name the base explicitly
    main(["merge_lora", str(run_dir), "--pretrained_checkpoint_dir", str(moved), "--precision", "bf16-true"])
    merged = torch.load(run_dir / "lit_model.pth", weights_only=True)
    assert all(t.dtype == torch.bfloat16 for t in merged.values())
    merge_lora_weights(model)  # the update is added in float32 and rounded once
    assert set(merged) == set(model.state_dict())
    assert all(torch.equal(merged[k], v.bfloat16()) for k, v in model.state_dict().items())


def test_a_bf16_base_merges_in_float32_and_stays_bf16(tmp_path):
    base_dir, run_dir, model = make_run(tmp_path)
    base = torch.load(base_dir / "lit_model.pth", weights_only=True)
    torch.save({k: v.bfloat16() for k, v in base.items()}, base_dir / "lit_model.pth")
    hparams = yaml.safe_load((run_dir / "hyperparameters.yaml").read_text())
    hparams.pop("precision")
    (run_dir / "hyperparameters.yaml").write_text(yaml.safe_dump(hparams))
    merge_lora(run_dir)
    merged = torch.load(run_dir / "lit_model.pth", weights_only=True)
    assert all(t.dtype == torch.bfloat16 for t in merged.values())
    with torch.no_grad():  # the fp32 model's weights rounded to bf16, then the fp32 update, rounded once
        for _, m in lora_modules(model):
            m.linear.weight.copy_(m.linear.weight.bfloat16().float())
    merge_lora_weights(model)
    assert all(torch.equal(merged[k], v.bfloat16()) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("no_lora", r"lit_model.pth.lora does not exist; point at a `litgpt finetune_lora` output directory"),
        ("merged", r"lit_model.pth exists already \(merged before\?\); use it as it is, or delete it to merge again"),
        ("no_base", r"base checkpoint '.*base/lit_model.pth' does not exist; pass --pretrained_checkpoint_dir"),
        ("no_hparams", r"hyperparameters.yaml does not exist; merge_lora reads the run's lora_\* settings from it"),
        ("other_r", r"lit_model.pth.lora: LoRA tensor '.*lora_A' is \(4, .*\) in the state dict but \(2, .*\) in the "
                    r"model; apply_lora with the r"),
        ("other_config", r"model_config.yaml differs from the base checkpoint .* in n_layer"),
    ],
)
def test_bad_inputs_end_in_one_line(tmp_path, capsys, breakage, message):
    base_dir, run_dir, _ = make_run(tmp_path)
    if breakage == "no_lora":
        (run_dir / "lit_model.pth.lora").unlink()
    elif breakage == "merged":
        merge_lora(run_dir)
    elif breakage == "no_base":
        (base_dir / "lit_model.pth").unlink()
    elif breakage == "no_hparams":
        (run_dir / "hyperparameters.yaml").unlink()
    elif breakage == "other_r":
        hparams = yaml.safe_load((run_dir / "hyperparameters.yaml").read_text())
        (run_dir / "hyperparameters.yaml").write_text(yaml.safe_dump({**hparams, "lora_r": 2}))
    elif breakage == "other_config":
        save_config(Config.from_name("debug", n_layer=3, block_size=32, vocab_size=100, padding_multiple=64,
                                     latent_attention=MLA_DIMS), run_dir)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as e:
        merge_lora(run_dir)
    assert "\n" not in str(e.value)
    with pytest.raises(SystemExit):
        main(["merge_lora", str(run_dir)])
    err = capsys.readouterr().err.strip()
    assert err.startswith("litgpt: error: ") and len(err.splitlines()) == 1


def test_a_base_that_is_the_fine_tunes_own_directory_is_refused(tmp_path, capsys, monkeypatch):
    """The merged lit_model.pth goes into the fine-tune's directory: a base checkpoint there (its lit_model.pth) would
    be written over by the weights made from it, however the path is spelled."""
    base_dir, run_dir, _ = make_run(tmp_path)
    shutil.copyfile(base_dir / "lit_model.pth", run_dir / "lit_model.pth")
    before = (run_dir / "lit_model.pth").read_bytes()
    monkeypatch.chdir(run_dir)
    with pytest.raises(SystemExit) as exit_info:
        main(["merge_lora", str(run_dir), "--pretrained_checkpoint_dir", "."])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "litgpt: error: the base checkpoint '.' is the fine-tune's directory itself: the merged lit_model.pth would be "
        "written over the base weights it is made from; pass --pretrained_checkpoint_dir with the checkpoint the LoRA "
        "run started from\n")
    assert (run_dir / "lit_model.pth").read_bytes() == before
