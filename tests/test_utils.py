"""litgpt/utils.py: atomic file and directory writes, synchronize, hyperparameters and the command-line helpers."""

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from litgpt.args import OptimizerSpec, TrainArgs
from litgpt.data import TextFiles
from litgpt.utils import (
    WriteError,
    atomic_directory,
    atomic_write,
    check_output_spares_inputs,
    command_line,
    format_number,
    hyperparameters,
    no_space_errors,
    parse_device,
    positive_ints,
    synchronize,
)


# ---------------------------------------------------------------------------------------------- atomic_write
def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic_write(path, lambda tmp: tmp.write_text("one"))  # creates the parent directory
    atomic_write(path, lambda tmp: tmp.write_text("two"))
    assert path.read_text() == "two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # the permissions of an ordinary new file


def test_atomic_write_that_fails_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"new but incomplete")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_atomic_write_of_a_torch_file(tmp_path):
    from litgpt.checkpoint import atomic_torch_save, atomic_write as reexported

    assert reexported is atomic_write
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "x.pth")
    assert torch.load(tmp_path / "x.pth", weights_only=True)["w"].tolist() == [0, 1, 2]


# ---------------------------------------------------------------------------------------------- atomic_directory
def test_atomic_directory_replaces_the_old_directory(tmp_path):
    target = tmp_path / "step-00000002"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    with atomic_directory(target) as tmp:
        assert tmp == tmp_path / ".step-00000002.tmp" and tmp.is_dir()
        (tmp / "lit_model.pth").write_text("new")
        assert (target / "stale.txt").read_text() == "old"  # untouched until the block succeeds
    assert sorted(p.name for p in target.iterdir()) == ["lit_model.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000002"]  # no .tmp, no .old left


def test_atomic_directory_that_fails_keeps_the_old_directory(tmp_path):
    target = tmp_path / "final"
    target.mkdir()
    (target / "a.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_directory(target) as tmp:
            (tmp / "a.txt").write_text("new")
            raise RuntimeError("disk full")
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_atomic_directory_clears_a_stale_temporary_and_creates_new_paths(tmp_path):
    stale = tmp_path / ".new.tmp"
    stale.mkdir()
    (stale / "left_by_a_kill.txt").write_text("x")
    with atomic_directory(tmp_path / "new") as tmp:
        assert list(tmp.iterdir()) == []
        (tmp / "b.txt").write_text("b")
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["b.txt"]


def test_atomic_directory_for_a_process_that_is_not_the_owner(tmp_path):
    with atomic_directory(tmp_path / "ckpt", owner=False) as tmp:
        assert tmp == tmp_path / ".ckpt.tmp" and not tmp.exists()  # the owner creates it, and swaps it in
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- devices
def test_synchronize_on_the_cpu_is_a_no_op():
    assert synchronize(torch.device("cpu")) is None
    assert synchronize("cpu") is None


@pytest.mark.cuda
def test_synchronize_waits_for_cuda():
    x = torch.randn(256, 256, device="cuda")
    y = x @ x
    synchronize(y.device)
    assert torch.cuda.current_stream().query()


def test_parse_device():
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="--device 'gpu0' is not a torch device; use cuda, cuda:N or cpu"):
        parse_device("gpu0")
    with pytest.raises(ValueError, match="--device 'meta' is not supported"):
        parse_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available; use --device cpu"):
            parse_device("cuda")


# ---------------------------------------------------------------------------------------------- command lines
@dataclass
class Group:
    size: int = 3
    where: Path = Path("a/b")


def test_hyperparameters_are_yaml_safe(tmp_path):
    data = TextFiles(train_data_path=tmp_path, cache_dir=tmp_path / "c", tokenize_workers=3, loader_workers=2)
    hparams = hyperparameters({
        "out_dir": Path("out/x"), "train": TrainArgs(max_steps=5), "group": Group(), "data": data,
        "optimizer": OptimizerSpec.resolve({"class_path": "SGD", "init_args": {"lr": 0.1}}), "devices": 1,
        "nested": {"paths": (Path("p"), Path("q"))}, "none": None,
    })
    assert hparams["out_dir"] == "out/x" and hparams["devices"] == 1 and hparams["none"] is None
    assert hparams["train"]["max_steps"] == 5 and hparams["train"]["global_batch_size"] == 512
    assert hparams["group"] == {"size": 3, "where": "a/b"}
    assert hparams["nested"] == {"paths": ["p", "q"]}
    assert hparams["optimizer"] == {"class_path": "torch.optim.sgd.SGD", "init_args": {"lr": 0.1}}
    assert hparams["data"] == {
        "class_path": "litgpt.data.text_files.TextFiles",
        "init_args": {"train_data_path": [str(tmp_path)], "val_data_path": None, "cache_dir": str(tmp_path / "c"),
                      "val_split_fraction": 0.01, "tokenize_workers": 3, "seed": 42, "loader_workers": 2},
    }


def test_command_line():
    args = {"models": ["a", "b"], "batch": 4, "skip": None, "compile": True}
    assert command_line(args, "litgpt benchmark x") == "litgpt benchmark x --models '[a, b]' --batch 4 --compile True"


def test_positive_ints():
    assert positive_ints("batch_sizes", [4, 1, 4, 2]) == [1, 2, 4]
    for bad in ([], [1, 0], [-3]):
        with pytest.raises(ValueError, match="--batch_sizes must be a non-empty list of positive integers"):
            positive_ints("batch_sizes", bad)


def test_format_number():
    assert format_number(1234.5678, ",.1f") == "1,234.6"
    assert format_number(float("nan"), ".2f") == ""
    assert format_number(7, "d") == "7"


def test_process_start_time_does_not_believe_a_start_long_before_litgpt_was_imported(monkeypatch):
    """A sandbox whose clocks disagree with /proc: an implausible age falls back to the import time."""
    import time as time_module

    import litgpt.utils as utils

    assert utils.process_start_time() <= utils._IMPORTED_AT  # the real start: before litgpt.utils was imported
    boottime = time_module.clock_gettime(time_module.CLOCK_BOOTTIME)
    monkeypatch.setattr(utils.time, "clock_gettime", lambda clock: boottime + 10 * utils.START_SLACK_S)
    assert utils.process_start_time() == utils._IMPORTED_AT


def test_process_start_time_does_not_believe_a_start_after_litgpt_was_imported(monkeypatch):
    """Clocks that put the process start after litgpt.utils was imported (seen on a loaded 2-core machine: 0.12-0.33 s
    after) give that import time, the latest the start can be: no process starts after its own imports."""
    import time as time_module

    import litgpt.utils as utils

    now = time_module.time()
    # the boot clock read just after the process started, the wall clock much later: /proc's start lands after import
    monkeypatch.setattr(utils.time, "time", lambda: now + 10 * utils.START_SLACK_S)
    assert utils.process_start_time() == utils._IMPORTED_AT


# ---------------------------------------------------------------------------------------------- full disks
def test_a_write_refused_for_want_of_space_is_one_line_naming_the_path_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.json"
    atomic_write(path, lambda tmp: tmp.write_text("old"))

    def full(tmp: Path) -> None:
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError) as info:
        atomic_write(path, full)
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == (f"[Errno 28] no space left to write {path} (No space left on device); free some space "
                               "on that disk or write somewhere else")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]


def test_no_space_errors_maps_torch_writer_failures_and_passes_others_through(tmp_path):
    with pytest.raises(WriteError, match=r"could not write x\.pth \(torch: \[enforce fail at "
                                         r"inline_container\.cc:672\] \. unexpected pos 704 vs 598\); the disk may "
                                         r"be full: free it"):
        with no_space_errors("x.pth", "free it"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    with pytest.raises(PermissionError):
        with no_space_errors("x.pth"):
            raise PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(RuntimeError, match="something else"):
        with no_space_errors("x.pth"):
            raise RuntimeError("something else")


# ---------------------------------------------------------------------------------------------- outputs and inputs
def test_an_output_that_is_an_input_is_refused_however_spelled(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "link").symlink_to(src)
    monkeypatch.chdir(tmp_path)
    for out in ("src", "./src/", "link", "src/../src", str(src)):
        with pytest.raises(ValueError) as info:
            check_output_spares_inputs("--out_dir", out, {"--checkpoint_dir": "src"})
        assert str(info.value) == (f"--out_dir {out!r} is --checkpoint_dir 'src' itself: the command would write over "
                                   "its own input; pass another --out_dir")


def test_an_output_replaced_as_a_whole_may_not_hold_an_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"^--checkpoint_dir 'a/b/c' lies inside --out_dir 'a', which the command "
                                         r"replaces as a whole: it would delete its own input; pass another "
                                         r"--out_dir$"):
        check_output_spares_inputs("--out_dir", "a", {"--checkpoint_dir": "a/b/c"})
    check_output_spares_inputs("--out_dir", "a/b", {"--checkpoint_dir": "a", "--data": None})  # inside the input: ok
    check_output_spares_inputs("--out_dir", "ab", {"--checkpoint_dir": "a"})  # a prefix is not a parent


def test_a_run_directory_may_not_hold_an_input_in_what_the_run_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = ("final", "step-*")
    for inside in ("out/final", "out/step-00000010/", "out/final/sub"):
        with pytest.raises(ValueError, match=r"lies in --out_dir 'out' as (final|step-00000010)/, a directory the "
                                             r"command writes over: it would overwrite its own input"):
            check_output_spares_inputs("--out_dir", "out", {"--checkpoint_dir": inside}, runs)
    check_output_spares_inputs("--out_dir", "out", {"--checkpoint_dir": "out/base"}, runs)  # not written there



# ---------------------------------------------------------------------------------------------- upstream's helpers
import litgpt.utils as utils  # noqa: E402


def test_num_parameters_counts_shared_and_4bit_parameters_and_filters_by_requires_grad():
    import litgpt.lora as lora
    from litgpt import GPT, Config

    model = GPT.from_name("debug")
    assert utils.num_parameters(model) == sum(p.numel() for p in model.parameters())
    tied = GPT(Config.from_name("debug", tie_embeddings=True))
    assert utils.num_parameters(tied) == utils.num_parameters(model) - model.lm_head.weight.numel()
    lora_model = lora.GPT.from_name("debug", lora_r=2, lora_query=True)
    lora.mark_only_lora_as_trainable(lora_model)
    trainable = sum(p.numel() for n, p in lora_model.named_parameters() if lora.lora_filter(n, p))
    assert utils.num_parameters(lora_model, requires_grad=True) == trainable > 0
    assert utils.num_parameters(lora_model, requires_grad=False) == utils.num_parameters(model)
    packed = torch.nn.Linear(8, 4)
    packed.weight.quant_state = type("QuantState", (), {"shape": torch.Size([4, 16])})()  # as bitsandbytes' 4-bit
    assert utils.num_parameters(packed) == 64 + 4


def test_load_checkpoint_loads_plain_wrapped_and_lora_and_uses_fsdp_load_raw(tmp_path):
    import litgpt.lora as lora
    from litgpt import GPT

    torch.manual_seed(0)
    source = GPT.from_name("debug")
    torch.save(source.state_dict(), tmp_path / "plain.pth")
    torch.save({"model": source.state_dict()}, tmp_path / "wrapped.pth")
    for name in ("plain.pth", "wrapped.pth"):
        model = GPT.from_name("debug")
        utils.load_checkpoint(None, model, tmp_path / name)
        torch.testing.assert_close(model.state_dict(), source.state_dict())
    lora_model = lora.GPT.from_name("debug", lora_r=2, lora_value=True)
    with pytest.raises(RuntimeError, match="Missing key"):
        utils.load_checkpoint(None, lora_model, tmp_path / "plain.pth")
    utils.load_checkpoint(None, lora_model, tmp_path / "plain.pth", strict=False)
    torch.testing.assert_close(lora_model.transformer.h[0].attn.qkv.weight, source.transformer.h[0].attn.qkv.weight)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        utils.load_checkpoint(None, GPT.from_name("debug"), tmp_path / "nope.pth")

    class FSDPStrategy:
        pass

    calls = []
    fabric = type("Fabric", (), {"strategy": FSDPStrategy(), "load_raw": lambda self, *a, **k: calls.append((a, k))})()
    utils.load_checkpoint(fabric, lora_model, tmp_path / "plain.pth", strict=False)
    assert calls == [((tmp_path / "plain.pth", lora_model), {"strict": False})]


@pytest.mark.parametrize("chunk_size", [0, 1, 5, 128])
def test_chunked_cross_entropy_equals_the_mean_over_counted_targets(chunk_size):
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 11, requires_grad=True)
    targets = torch.randint(0, 11, (2, 7))
    targets[0, :3] = -100
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    loss = utils.chunked_cross_entropy(logits, targets, chunk_size=chunk_size)
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad)
    pieces = list(logits.split([3, 4], dim=1))  # an LM head applied in chunks along T
    torch.testing.assert_close(utils.chunked_cross_entropy(pieces, targets), expected)
    assert utils.chunked_cross_entropy(logits, torch.full_like(targets, -100)).item() == 0.0
    with pytest.raises(ValueError, match="do not match targets"):
        utils.chunked_cross_entropy(logits, targets[:, :-1])


def test_cycle_iterator_restarts_counts_epochs_and_refuses_an_empty_iterable():
    iterator = utils.CycleIterator([1, 2, 3])
    assert iter(iterator) is iterator
    assert [next(iterator) for _ in range(7)] == [1, 2, 3, 1, 2, 3, 1] and iterator.epoch == 2
    with pytest.raises(ValueError, match="yields nothing"):
        next(utils.CycleIterator([]))


def test_get_default_supported_precision_and_parse_devices():
    cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    assert utils.get_default_supported_precision(training=True) == ("bf16-mixed" if cuda_bf16 else "32-true")
    assert utils.get_default_supported_precision(training=False) == ("bf16-true" if cuda_bf16 else "32-true")
    assert utils.parse_devices("auto") == utils.parse_devices(-1) == (torch.cuda.device_count() or 1)
    assert utils.parse_devices(3) == 3 and utils.parse_devices("0,1") == 2
    for bad in (0, "x", True):
        with pytest.raises(ValueError, match="--devices must be"):
            utils.parse_devices(bad)


def test_check_valid_checkpoint_dir(tmp_path, capsys):
    from test_generate import make_checkpoint

    checkpoint_dir = make_checkpoint(tmp_path)
    utils.check_valid_checkpoint_dir(checkpoint_dir)
    (checkpoint_dir / "tokenizer.json").unlink()
    utils.check_valid_checkpoint_dir(checkpoint_dir, ignore_tokenizer_files=True)
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json or tokenizer.model"):
        utils.check_valid_checkpoint_dir(checkpoint_dir, raise_error=True, verbose=False)
    assert capsys.readouterr().err == ""
    (checkpoint_dir / "lit_model.pth").rename(checkpoint_dir / "lit_model.pth.lora")
    with pytest.raises(SystemExit) as info:
        utils.check_valid_checkpoint_dir(checkpoint_dir, ignore_tokenizer_files=True)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "has no lit_model.pth; it holds LoRA weights: run `litgpt merge_lora" in err and err.count("\n") == 1
    with pytest.raises(FileNotFoundError, match="does not exist"):
        utils.check_valid_checkpoint_dir(tmp_path / "nowhere", raise_error=True)


def test_copy_config_files_and_save_config(tmp_path):
    from litgpt import Config
    from test_generate import make_checkpoint

    checkpoint_dir = make_checkpoint(tmp_path)
    (checkpoint_dir / "generation_config.json").write_text("{}")
    utils.copy_config_files(checkpoint_dir, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in checkpoint_dir.iterdir() if p.name != "lit_model.pth")
    for p in (tmp_path / "out").iterdir():
        assert p.read_bytes() == (checkpoint_dir / p.name).read_bytes()
    config = Config.from_name("debug-mla", n_layer=3)
    utils.save_config(config, tmp_path / "saved")
    assert Config.from_checkpoint(tmp_path / "saved") == config
