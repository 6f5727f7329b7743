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
from litgpt.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    check_finite,
    load_checkpoint,
    read_checkpoint_file,
    save_checkpoint,
)
from litgpt.scripts.train_tokenizer import train_tokenizer
from test_tokenizer import ListTexts, make_corpus

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


# ------------------------------------------------------------------------------------------------ bad files
def saved(tmp_path: Path, name: str = "debug", **kwargs) -> Path:
    """A checkpoint directory with a freshly initialised model."""
    checkpoint_dir = tmp_path / "ckpt"
    save_checkpoint(GPT.from_name(name, **kwargs), checkpoint_dir)
    return checkpoint_dir


def one_line_error(excinfo: pytest.ExceptionInfo, path: Path, *parts: str) -> str:
    """The error message, checked to be one line naming `path` and every one of `parts`."""
    message = str(excinfo.value)
    assert "\n" not in message and "\x1b" not in message, message
    assert str(path) in message, message
    for part in parts:
        assert part in message, message
    return message


class Arbitrary:
    """A non-tensor object: weights_only=True must refuse to unpickle it."""


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _random_bytes(path: Path) -> None:
    path.write_bytes(b"\x00" + bytes(torch.randint(0, 256, (4095,), dtype=torch.uint8).tolist()))


def _arbitrary_object(path: Path) -> None:
    torch.save({"model": {"w": torch.ones(2)}, "extra": Arbitrary()}, path)


BAD_FILES = [
    pytest.param(_empty, ("is empty (0 bytes",), id="empty"),
    pytest.param(_truncated, ("truncated or corrupt", "PytorchStreamReader failed reading zip archive"),
                 id="truncated"),
    pytest.param(_random_bytes, ("is not a PyTorch checkpoint",), id="random-bytes"),
    pytest.param(_arbitrary_object, ("holds non-tensor objects", "Arbitrary", "not loaded for safety"),
                 id="arbitrary-object"),
]


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("damage, parts", BAD_FILES)
def test_read_checkpoint_file_bad_file(tmp_path, damage, parts, mmap):
    path = saved(tmp_path) / "lit_model.pth"
    damage(path)
    with pytest.raises(CheckpointError) as excinfo:
        read_checkpoint_file(path, mmap=mmap)
    message = one_line_error(excinfo, path, *parts)
    assert "point at another checkpoint" in message


@pytest.mark.parametrize("damage, parts", BAD_FILES)
def test_load_checkpoint_bad_weights_file(tmp_path, damage, parts):
    checkpoint_dir = saved(tmp_path)
    damage(checkpoint_dir / "lit_model.pth")
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(checkpoint_dir)
    one_line_error(excinfo, checkpoint_dir / "lit_model.pth", *parts)


def test_read_checkpoint_file_missing_and_directory(tmp_path):
    with pytest.raises(CheckpointNotFoundError) as excinfo:
        read_checkpoint_file(tmp_path / "gone.pth")
    one_line_error(excinfo, tmp_path / "gone.pth", "does not exist")
    assert isinstance(excinfo.value, FileNotFoundError) and isinstance(excinfo.value, CheckpointError)
    with pytest.raises(CheckpointError) as excinfo:
        read_checkpoint_file(tmp_path)
    one_line_error(excinfo, tmp_path, "is a directory")


def test_missing_weights_file_is_a_checkpoint_error(tmp_path):
    checkpoint_dir = saved(tmp_path)
    (checkpoint_dir / "lit_model.pth").unlink()
    with pytest.raises(CheckpointNotFoundError) as excinfo:
        load_checkpoint(checkpoint_dir)
    one_line_error(excinfo, checkpoint_dir, "has no lit_model.pth")


def test_weights_only_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(1), "payload": Payload()}, path)
    with pytest.raises(CheckpointError) as excinfo:
        read_checkpoint_file(path)
    one_line_error(excinfo, path, "holds non-tensor objects", "mkdir", "not loaded for safety")
    assert not marker.exists()


@pytest.mark.parametrize("mmap", [True, False])
def test_read_checkpoint_file_valid_file_loads(tmp_path, mmap):
    model = GPT.from_name("debug")
    path = saved(tmp_path) / "lit_model.pth"
    torch.save({"model": model.state_dict(), "step": 7, "name": "x"}, path)
    loaded = read_checkpoint_file(path, mmap=mmap)
    assert loaded["step"] == 7 and loaded["name"] == "x"
    assert loaded["model"].keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert loaded["model"][key].device.type == "cpu"
        torch.testing.assert_close(loaded["model"][key], value, atol=0, rtol=0)


def test_read_checkpoint_file_legacy_format_loads(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.arange(4.0)}, path, _use_new_zipfile_serialization=False)
    torch.testing.assert_close(read_checkpoint_file(path)["w"], torch.arange(4.0))  # mmap=True falls back


def test_config_weights_shape_mismatch(tmp_path):
    checkpoint_dir = saved(tmp_path, n_embd=64)
    Config.from_name("debug", n_embd=32).save(checkpoint_dir / "model_config.yaml")
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(checkpoint_dir)
    weights = checkpoint_dir / "lit_model.pth"
    saved_state = torch.load(weights, weights_only=True)
    expected = GPT(Config.from_name("debug", n_embd=32)).state_dict()
    first = next(k for k, v in saved_state.items() if v.shape != expected[k].shape)
    one_line_error(excinfo, weights, f"tensor {first!r}", str(tuple(saved_state[first].shape)),
                   str(tuple(expected[first].shape)), "model_config.yaml does not match lit_model.pth")


@pytest.mark.parametrize("value, dtype", [
    (float("nan"), torch.float32), (float("inf"), torch.float32), (float("-inf"), torch.float32),
    (float("nan"), torch.bfloat16),
])
def test_non_finite_weights_are_refused(tmp_path, value, dtype):
    checkpoint_dir = saved(tmp_path)
    weights = checkpoint_dir / "lit_model.pth"
    state = {k: v.to(dtype) for k, v in torch.load(weights, weights_only=True).items()}
    keys = list(state)
    bad_first, bad_later = keys[len(keys) // 2], keys[-1]
    state[bad_first].view(-1)[3] = value
    state[bad_later].view(-1)[0] = float("nan")
    torch.save(state, weights)
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(checkpoint_dir)
    kind = "1 NaN, 0 inf" if value != value else "0 NaN, 1 inf"
    message = one_line_error(excinfo, weights, f"tensor {bad_first!r}", "holds NaN/inf values", kind,
                             "use an earlier checkpoint")
    assert bad_later not in message


def test_check_finite_passes_finite_and_integer_tensors():
    check_finite({"w": torch.randn(3, 3), "steps": torch.tensor([1, 2]), "flag": torch.tensor([True])}, "x.pth")
    with pytest.raises(CheckpointError, match=r"x\.pth: tensor 'w' holds NaN/inf"):
        check_finite({"steps": torch.tensor([1]), "w": torch.tensor([1.0, float("inf")])}, "x.pth")


@pytest.mark.parametrize("text, parts", [
    ("n_layer: [2\nn_head: : 4\n", ("is not valid YAML", "line 2")),
    ("name: debug\nbogus_field: 1\n", ("unknown config field 'bogus_field'",)),
    ("name: debug\nn_embd: abc\n", ("n_embd must be a positive integer",)),
])
def test_mangled_model_config(tmp_path, text, parts):
    checkpoint_dir = saved(tmp_path)
    (checkpoint_dir / "model_config.yaml").write_text(text)
    with pytest.raises(ValueError) as excinfo:
        load_checkpoint(checkpoint_dir)
    one_line_error(excinfo, checkpoint_dir / "model_config.yaml", *parts)


# ------------------------------------------------------------------------------------------------ the CLI
def _nan_weights(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    next(iter(state.values())).view(-1)[0] = float("nan")
    torch.save(state, path)


@pytest.mark.parametrize("damage, parts", [
    pytest.param(_nan_weights, ("holds NaN/inf values", "use an earlier checkpoint"), id="nan"),
    pytest.param(_truncated, ("truncated or corrupt",), id="truncated"),
])
def test_cli_generate_refuses_bad_weights(tmp_path, damage, parts):
    checkpoint_dir = tmp_path / "checkpoint"
    train_tokenizer(ListTexts(texts=make_corpus()), checkpoint_dir, vocab_size=300, min_frequency=1)
    save_checkpoint(GPT.from_name("debug", vocab_size=300), checkpoint_dir)
    damage(checkpoint_dir / "lit_model.pth")
    result = subprocess.run([sys.executable, "-m", "litgpt", "generate", str(checkpoint_dir), "--max_new_tokens", "3"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("litgpt: error: "), result.stderr
    assert str(checkpoint_dir / "lit_model.pth") in lines[0]
    for part in parts:
        assert part in lines[0]
