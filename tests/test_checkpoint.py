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


# ------------------------------------------------------------------------------------------------ device and dtype
def _random_checkpoint(tmp_path: Path, **kwargs) -> tuple[Path, dict[str, torch.Tensor]]:
    """A debug-mla checkpoint with random float32 weights (a short block_size keeps the rope cache small)."""
    torch.manual_seed(0)
    model = GPT(Config.from_name("debug-mla", block_size=8, **kwargs))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    save_checkpoint(model, tmp_path / "ckpt")
    return tmp_path / "ckpt", {k: v.clone() for k, v in model.state_dict().items()}


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_load_checkpoint_puts_weights_on_the_device_in_the_dtype(tmp_path, device, dtype):
    checkpoint_dir, saved_state = _random_checkpoint(tmp_path)
    model = load_checkpoint(checkpoint_dir, device=device, dtype=dtype)
    state = model.state_dict()
    assert state.keys() == saved_state.keys()
    for name, value in state.items():
        assert value.device.type == device and value.dtype == dtype, name
        torch.testing.assert_close(value.cpu(), saved_state[name].to(dtype), atol=0, rtol=0, msg=name)
    for name in ("cos", "sin"):  # rebuilt on the device, in the dtype `model.to(device, dtype)` leaves buffers in
        buffer = getattr(model, name)
        assert buffer.device.type == device and buffer.dtype == dtype and buffer.shape == (8, model.config.rope_n_elem)
    reference = GPT(Config.from_name("debug-mla", block_size=8))
    reference.load_state_dict(saved_state)
    reference.to(device=device, dtype=dtype)
    torch.testing.assert_close(model.cos, reference.cos, atol=0, rtol=0)
    ids = torch.randint(0, 100, (1, 5), device=device)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference(ids), atol=0, rtol=0)


def test_load_checkpoint_keeps_the_checkpoint_dtype_by_default(tmp_path):
    checkpoint_dir, saved_state = _random_checkpoint(tmp_path)
    state = {k: v.to(torch.bfloat16) for k, v in saved_state.items()}
    torch.save(state, checkpoint_dir / "lit_model.pth")
    model = load_checkpoint(checkpoint_dir)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and model.lm_head.weight.device.type == "cpu"


class _Allocations(torch.utils._python_dispatch.TorchDispatchMode):
    """Bytes of the new (non-meta) storages that aten ops create while active, by dtype; `to_copy` counts the
    tensors `aten._to_copy` (Tensor.to with a dtype or device change) makes."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes: dict[torch.dtype, int] = {}
        self.to_copy: list[tuple[tuple[int, ...], torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = set()
        for a in torch.utils._pytree.tree_leaves((args, kwargs or {})):
            if isinstance(a, torch.Tensor) and a.device.type != "meta":
                inputs.add(a.untyped_storage().data_ptr())
            elif isinstance(a, torch.UntypedStorage):
                inputs.add(a.data_ptr())
        for t in torch.utils._pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            if storage.nbytes() and storage.data_ptr() not in inputs:  # not a view or an in-place result
                inputs.add(storage.data_ptr())
                self.bytes[t.dtype] = self.bytes.get(t.dtype, 0) + storage.nbytes()
            if func is torch.ops.aten._to_copy.default:
                self.to_copy.append((tuple(t.shape), t.dtype))
        return out


def test_loading_in_bfloat16_converts_each_tensor_once_and_makes_no_float32_copy(tmp_path):
    """From a float32 checkpoint, a bfloat16 load allocates the bfloat16 weights once (one conversion per tensor,
    straight from the memory-mapped file) and no float32 tensors the size of the weights: no float32 copy made on
    the way, not even one tensor at a time (the NaN/inf check included)."""
    checkpoint_dir, saved_state = _random_checkpoint(tmp_path)
    float32_bytes = sum(v.numel() * 4 for v in saved_state.values())
    with _Allocations() as allocations:
        model = load_checkpoint(checkpoint_dir, device="cpu", dtype=torch.bfloat16)
    rope_values = 2 * model.cos.numel()  # cos and sin: built in float32, then cast
    assert allocations.bytes.get(torch.float32, 0) < 0.05 * float32_bytes, allocations.bytes
    # beyond the weights and the rope cache, only the NaN/inf check's aminmax scalars (a few bytes per tensor)
    extra = allocations.bytes.get(torch.bfloat16, 0) - (float32_bytes // 2 + 2 * rope_values)
    assert 0 <= extra <= 8 * len(saved_state), allocations.bytes
    weight_copies = sorted(shape for shape, dtype in allocations.to_copy if dtype == torch.bfloat16)
    assert weight_copies == sorted([tuple(v.shape) for v in saved_state.values()] + [tuple(model.cos.shape)] * 2)
    assert set(allocations.bytes) <= {torch.float32, torch.bfloat16, torch.bool, torch.int64}, allocations.bytes


def test_loading_in_the_checkpoint_dtype_on_the_cpu_copies_nothing(tmp_path):
    """float32 onto the CPU from a float32 file: the parameters are the memory-mapped tensors themselves."""
    checkpoint_dir, saved_state = _random_checkpoint(tmp_path)
    float32_bytes = sum(v.numel() * 4 for v in saved_state.values())
    with _Allocations() as allocations:
        model = load_checkpoint(checkpoint_dir, device="cpu", dtype=torch.float32)
    assert sum(allocations.bytes.values()) < 0.05 * float32_bytes, allocations.bytes
    torch.testing.assert_close(model.lm_head.weight, saved_state["lm_head.weight"], atol=0, rtol=0)


@pytest.mark.cuda
def test_loading_in_bfloat16_on_cuda_allocates_only_the_bfloat16_weights(tmp_path):
    checkpoint_dir, saved_state = _random_checkpoint(tmp_path, n_embd=256, vocab_size=4096)
    bf16_bytes = sum(v.numel() * 2 for v in saved_state.values())
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    model = load_checkpoint(checkpoint_dir, device="cuda", dtype=torch.bfloat16)
    peak = torch.cuda.max_memory_allocated() - before
    assert model.lm_head.weight.is_cuda and model.lm_head.weight.dtype == torch.bfloat16
    assert peak < 1.1 * bf16_bytes + (1 << 20), (peak, bf16_bytes)  # no float32 weights on the device, ever
