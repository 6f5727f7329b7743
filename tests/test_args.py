"""litgpt/args.py: optimizer specs from every spelling, --devices validation, train/eval checks."""

import functools
import re

import pytest
import torch

from litgpt.args import OptimizerSpec, TrainArgs, check_devices


def test_optimizer_spec_from_a_name_a_dict_and_a_callable():
    assert OptimizerSpec.resolve("AdamW") == OptimizerSpec(torch.optim.AdamW, {})
    assert OptimizerSpec.resolve("torch.optim.SGD").cls is torch.optim.SGD
    spec = OptimizerSpec.resolve({"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5, "momentum": 0.9}})
    assert (spec.cls, spec.init_args, spec.lr) == (torch.optim.SGD, {"lr": 0.5, "momentum": 0.9}, 0.5)
    # what the command line hands over: a callable params -> optimizer; its class and arguments are read back
    spec = OptimizerSpec.resolve(functools.partial(torch.optim.Adam, lr=0.25, betas=(0.8, 0.9)))
    assert spec.cls is torch.optim.Adam and spec.init_args["lr"] == 0.25 and spec.init_args["betas"] == (0.8, 0.9)
    assert spec.as_dict()["class_path"] == "torch.optim.adam.Adam" and spec.as_dict()["init_args"]["betas"] == [0.8, 0.9]
    assert OptimizerSpec.resolve(spec.as_dict()) == OptimizerSpec(torch.optim.Adam, spec.as_dict()["init_args"])


def test_optimizer_spec_builds_with_its_arguments():
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = OptimizerSpec.resolve({"class_path": "SGD", "init_args": {"lr": 0.125}}).build(params, torch.device("cpu"))
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.125
    adamw = OptimizerSpec.resolve("AdamW").build(params, torch.device("cpu"))
    assert adamw.defaults["fused"] is None  # fused only on CUDA


@pytest.mark.parametrize("spec, message", [
    ("Adamm", "optimizer 'Adamm' is not a torch.optim class"),
    ("torch.nn.Linear", "optimizer 'torch.nn.Linear' is not a torch.optim class"),
    ({"class_path": "AdamW", "lr": 3}, "optimizer dict keys must be class_path and init_args, got ['lr']"),
    (42, "--optimizer must be a class name or {class_path, init_args}, got 42"),
])
def test_bad_optimizer_specs(spec, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("{", r"\{")
                       .replace("}", r"\}")):
        OptimizerSpec.resolve(spec)


def test_bad_optimizer_arguments_fail_when_built():
    spec = OptimizerSpec.resolve({"class_path": "SGD", "init_args": {"lrr": 1}})
    with pytest.raises(ValueError, match="optimizer SGD: bad init_args"):
        spec.build([torch.nn.Parameter(torch.zeros(1))], torch.device("cpu"))
    with pytest.raises(ValueError, match="--optimizer: Invalid momentum value: -1.0"):
        OptimizerSpec.resolve(functools.partial(torch.optim.SGD, lr=0.1, momentum=-1.0))


@pytest.mark.parametrize("lr", [-1.0, -1e-9, float("nan"), float("inf"), "3e-4", True])
def test_a_learning_rate_must_be_a_finite_number_from_zero_in_every_spelling(lr):
    message = rf"^--optimizer\.lr must be a finite number >= 0 \(e\.g\. 3e-4\), got {re.escape(repr(lr))}$"
    with pytest.raises(ValueError, match=message):
        OptimizerSpec.resolve(functools.partial(torch.optim.SGD, lr=lr))
    with pytest.raises(ValueError, match=message):
        OptimizerSpec.resolve({"class_path": "AdamW", "init_args": {"lr": lr}})


@pytest.mark.parametrize("devices, expected", [(1, 1), (4, 4), (-1, -1), ("auto", "auto"), ("2", 2), ("0,1", "0,1")])
def test_good_devices(devices, expected):
    assert check_devices(devices) == expected


@pytest.mark.parametrize("devices", [0, -2, "abc", "", "0,x", True])
def test_bad_devices(devices):
    with pytest.raises(ValueError, match="--devices must be a positive number of devices"):
        check_devices(devices)


def test_train_args_need_a_limit():
    with pytest.raises(ValueError, match="set at least one of train.max_tokens"):
        TrainArgs().validate()
