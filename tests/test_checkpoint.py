"""Checkpoint directories: our own round trip and upstream litgpt 0.5.13 parity.

The fixtures in tests/data/upstream were written by upstream litgpt itself
(tests/upstream/make_upstream_checkpoints.py, run in a separate venv): weights, model_config.yaml and the
logits upstream computed for fixed input ids, both without a cache and through its KV cache.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from litgpt import GPT, Config
from litgpt.checkpoint import load_checkpoint, save_checkpoint

UPSTREAM = Path(__file__).parent / "data" / "upstream"
CASES = ["mha", "gqa", "mqa", "mla", "mla_interleave"]


@pytest.mark.parametrize("case", CASES)
def test_upstream_checkpoint_logits(case):
    model = load_checkpoint(UPSTREAM / case).eval()
    expected = torch.load(UPSTREAM / case / "expected.pt", weights_only=True)
    ids = expected["input_ids"]
    with torch.no_grad():
        logits = model(ids)
        model.set_kv_cache(batch_size=ids.size(0))
        prefill = model(ids[:, :8], input_pos=torch.arange(8))
        cached = torch.cat([model(ids[:, i : i + 1], input_pos=torch.tensor([i])) for i in range(8, ids.size(1))], 1)
    torch.testing.assert_close(logits, expected["logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prefill, expected["prefill_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached, expected["cached_logits"], atol=1e-5, rtol=1e-5)
    assert expected["logits"].abs().max() > 0.1  # fixtures are not degenerate


def test_upstream_mla_cache_holds_only_the_latent():
    model = load_checkpoint(UPSTREAM / "mla")
    model.set_kv_cache(batch_size=2, max_seq_length=32)
    # upstream caches per-head K (4 heads x 12) and V (4 x 6) = 72 values; we cache 16 + 4 = 20
    assert model.kv_cache_bytes() == 2 * 32 * 2 * (16 + 4) * 4


def test_upstream_config_with_unimplemented_option_is_an_error(tmp_path):
    shutil.copytree(UPSTREAM / "gqa", tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model_config.yaml"
    path.write_text(path.read_text().replace("sliding_window_size: null", "sliding_window_size: 16"))
    with pytest.raises(ValueError, match="sliding_window_size.*does not implement"):
        load_checkpoint(tmp_path / "ckpt")


@pytest.mark.parametrize("name", ["debug", "debug-gqa", "debug-mla"])
def test_round_trip(tmp_path, name):
    model = GPT.from_name(name).eval()
    save_checkpoint(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lit_model.pth", "model_config.yaml"]
    loaded = load_checkpoint(tmp_path).eval()
    assert loaded.config == model.config
    ids = torch.randint(0, 100, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)


def test_wrapped_state_dict_and_prefixes(tmp_path):
    model = GPT.from_name("debug").eval()
    save_checkpoint(model, tmp_path)
    state = {"_orig_mod." + k: v for k, v in model.state_dict().items()}
    torch.save({"model": state, "iter_num": 3}, tmp_path / "lit_model.pth")
    loaded = load_checkpoint(tmp_path)
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no lit_model.pth"):
        load_checkpoint(tmp_path)
    save_checkpoint(GPT.from_name("debug"), tmp_path)
    Config.from_name("debug-mla").save(tmp_path / "model_config.yaml")
    with pytest.raises(ValueError, match="does not match model_config.yaml"):
        load_checkpoint(tmp_path)
    torch.save([1, 2], tmp_path / "lit_model.pth")
    with pytest.raises(ValueError, match="does not hold a model state dict"):
        load_checkpoint(tmp_path)


def test_interrupted_save_keeps_previous_checkpoint(tmp_path):
    """A process killed in the middle of torch.save leaves the old lit_model.pth intact."""
    old = GPT.from_name("debug")
    save_checkpoint(old, tmp_path)
    script = f"""
import os, torch
from litgpt import GPT
from litgpt.checkpoint import save_checkpoint
real_save = torch.save
def dying_save(obj, f, *a, **k):
    real_save(obj, f, *a, **k)
    os._exit(9)  # killed after writing the temporary file, before the rename
torch.save = dying_save
save_checkpoint(GPT.from_name("debug", n_layer=3), {str(tmp_path)!r})
"""
    result = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 9
    loaded = load_checkpoint(tmp_path)
    assert loaded.config.n_layer == 2
    torch.testing.assert_close(loaded.lm_head.weight, old.lm_head.weight)
