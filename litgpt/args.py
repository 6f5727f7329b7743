"""Argument groups shared by the training commands (`--train.*`, `--eval.*`, `--optimizer`, `--devices`)."""

from __future__ import annotations

import functools
import importlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Optional, Union

import torch

# What `--optimizer` parses to on the command line: jsonargparse builds a callable params -> optimizer from
# `--optimizer AdamW --optimizer.lr 3e-4`, `--optimizer.init_args.lr 3e-4`, a {class_path, init_args} dict or a
# yaml `optimizer:` section, in the order given (later wins). Python callers may also pass a class name or a dict.
OptimizerCallable = Callable[[Iterable], torch.optim.Optimizer]
OptimizerArg = Union[OptimizerCallable, str, dict]
# The valid range of a command-line number, by its option's last part (what `--optimizer.lr nan` is told)
LR_RANGE = "a finite number >= 0 (e.g. 3e-4)"
VALUE_RANGES = {"lr": LR_RANGE}


@dataclass
class TrainArgs:
    """Training loop settings.

    Args:
        save_interval: optimizer steps between checkpoints (None: only the final one).
        log_interval: optimizer steps between progress lines and logged metrics.
        global_batch_size: sequences per optimizer step, across all devices.
        micro_batch_size: sequences per forward/backward on one device.
        lr_warmup_steps: linear learning-rate warmup length, in optimizer steps (null or 0: none).
        max_tokens: stop after this many training tokens.
        max_steps: stop after this many optimizer steps.
        max_time: stop after this many seconds of training (the checkpoint is written at the step it stops).
        epochs: stop after this many passes over the training samples (rounded up to whole optimizer steps).
        max_seq_length: tokens per training sequence (default: the model's block_size).
        max_norm: gradient-norm clipping threshold (None: no clipping).
        min_lr: learning rate at the end of the cosine decay.
        tie_embeddings: share one matrix between the token embedding and the LM head (the model config's
            `tie_embeddings`); None keeps the model's own setting. Pretraining sets it; a fine-tune keeps its
            checkpoint's and refuses another value.
        lr_warmup_fraction: the warmup as a fraction of an epoch's optimizer steps (training samples /
            global_batch_size), instead of lr_warmup_steps, which must then be null or 0.
    """

    save_interval: Optional[int] = 1000
    log_interval: int = 1
    global_batch_size: int = 512
    micro_batch_size: int = 4
    lr_warmup_steps: Optional[int] = 2000
    max_tokens: Optional[int] = None
    max_steps: Optional[int] = None
    max_time: Optional[float] = None
    epochs: Optional[int] = None
    max_seq_length: Optional[int] = None
    max_norm: Optional[float] = 1.0
    min_lr: float = 4e-5
    tie_embeddings: Optional[bool] = None
    lr_warmup_fraction: Optional[float] = None

    def gradient_accumulation_iters(self, world_size: int) -> int:
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ValueError(
                f"train.global_batch_size ({self.global_batch_size}) must be a multiple of "
                f"train.micro_batch_size ({self.micro_batch_size}) x devices ({world_size})"
            )
        return self.global_batch_size // per_step

    def validate(self) -> None:
        for name in ("global_batch_size", "micro_batch_size", "log_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.micro_batch_size > self.global_batch_size:
            raise ValueError(
                f"train.micro_batch_size ({self.micro_batch_size}) cannot exceed train.global_batch_size "
                f"({self.global_batch_size})"
            )
        if self.max_tokens is None and self.max_steps is None and self.max_time is None and self.epochs is None:
            raise ValueError("set at least one of train.max_tokens, train.max_steps, train.max_time or train.epochs")
        for name in ("max_tokens", "max_steps", "max_time", "epochs", "save_interval", "max_seq_length"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"train.{name} must be positive, got {value}")
        if self.lr_warmup_steps is not None and self.lr_warmup_steps < 0:
            raise ValueError(f"train.lr_warmup_steps must be >= 0, got {self.lr_warmup_steps}")
        if self.lr_warmup_fraction is not None:
            if self.lr_warmup_steps:
                raise ValueError(f"train.lr_warmup_fraction ({self.lr_warmup_fraction}) and train.lr_warmup_steps "
                                 f"({self.lr_warmup_steps}) both set the warmup; set train.lr_warmup_steps to null")
            if not 0.0 <= self.lr_warmup_fraction <= 1.0:
                raise ValueError(f"train.lr_warmup_fraction must be in [0, 1] (a share of an epoch's optimizer "
                                 f"steps), got {self.lr_warmup_fraction}")

    def warmup_steps(self, samples: int) -> int:
        """Optimizer steps of the linear warmup: lr_warmup_steps, or lr_warmup_fraction of an epoch of `samples`
        training samples (rounded up)."""
        if self.lr_warmup_fraction is not None:
            return math.ceil(self.lr_warmup_fraction * samples / self.global_batch_size)
        return self.lr_warmup_steps or 0


@dataclass
class EvalArgs:
    """Validation settings.

    Args:
        interval: optimizer steps between validation runs.
        max_iters: validation batches per run (the same held-out batches every time).
        initial_validation: also validate before the first step.
        final_validation: validate after the last step.
        max_new_tokens: after each validation of a fine-tune, generate this many tokens (at most) for an example
            instruction and print them; None generates nothing. Pretraining has no instructions: leave it unset.
        evaluate_example: which validation record's instruction that sample answers: "first", "random" (a new one
            each time) or a record index.
    """

    interval: int = 1000
    max_iters: int = 100
    initial_validation: bool = False
    final_validation: bool = True
    max_new_tokens: Optional[int] = None
    evaluate_example: Union[Literal["first", "random"], int] = "first"

    def validate(self) -> None:
        if self.interval <= 0 or self.max_iters <= 0:
            raise ValueError(f"eval.interval and eval.max_iters must be positive, got {self.interval}, {self.max_iters}")
        if self.max_new_tokens is not None and self.max_new_tokens <= 0:
            raise ValueError(f"eval.max_new_tokens must be positive (or null: no sample), got {self.max_new_tokens}")
        if isinstance(self.evaluate_example, int) and self.evaluate_example < 0:
            raise ValueError(f"eval.evaluate_example must be first, random or a record index >= 0, got "
                             f"{self.evaluate_example}")


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer class and its keyword arguments, resolved from any `--optimizer` spelling."""

    cls: type
    init_args: dict = field(default_factory=dict)

    @classmethod
    def resolve(cls, optimizer: OptimizerArg) -> "OptimizerSpec":
        """From a class name ("AdamW", "torch.optim.SGD"), a {class_path, init_args} dict, or the callable the
        command line builds. Unknown classes and bad arguments raise a one-line ValueError."""
        if isinstance(optimizer, str):
            return cls(_optimizer_class(optimizer), {})
        if isinstance(optimizer, dict):
            unknown = set(optimizer) - {"class_path", "init_args"}
            if unknown:
                raise ValueError(
                    f"optimizer dict keys must be class_path and init_args, got {sorted(unknown)}; "
                    "write e.g. {class_path: AdamW, init_args: {lr: 3e-4}}"
                )
            init_args = dict(optimizer.get("init_args") or {})
            _check_lr(init_args)
            return cls(_optimizer_class(optimizer.get("class_path", "torch.optim.AdamW")), init_args)
        if callable(optimizer):
            if isinstance(optimizer, functools.partial):  # the command line's: its arguments are known before a build
                _check_lr(optimizer.keywords)
            # Build it once on a dummy parameter: the class and every hyperparameter it ended up with are then
            # read off the optimizer itself (`defaults`), whatever spelling produced the callable.
            try:
                probe = optimizer([torch.nn.Parameter(torch.zeros(1))])
            except (TypeError, ValueError) as e:
                raise ValueError(f"--optimizer: {e}") from None
            accepted = inspect.signature(type(probe)).parameters
            return cls(type(probe), {k: v for k, v in probe.defaults.items() if k in accepted})
        raise ValueError(f"--optimizer must be a class name or {{class_path, init_args}}, got {optimizer!r}")

    def build(self, params: Any, device: torch.device) -> torch.optim.Optimizer:
        """The optimizer over `params`; Adam/AdamW run fused on CUDA unless `fused` or `foreach` was set."""
        init_args = dict(self.init_args)
        if self.cls in (torch.optim.AdamW, torch.optim.Adam) and device.type == "cuda":
            if init_args.get("fused") is None and not init_args.get("foreach"):
                init_args["fused"] = True
        try:
            return self.cls(params, **init_args)
        except (TypeError, ValueError) as e:
            raise ValueError(f"optimizer {self.cls.__name__}: bad init_args {self.init_args}: {e}") from None

    @property
    def lr(self) -> float:
        return float(self.init_args.get("lr", 1e-3))

    def as_dict(self) -> dict:
        """{class_path, init_args}: the yaml `optimizer:` section that reproduces this optimizer."""
        init_args = {k: list(v) if isinstance(v, tuple) else v for k, v in self.init_args.items()}
        return {"class_path": f"{self.cls.__module__}.{self.cls.__qualname__}", "init_args": init_args}


def _check_lr(init_args: dict) -> None:
    """A learning rate, where given, must be a finite number >= 0 (torch accepts inf, and refuses NaN unclearly)."""
    lr = init_args.get("lr")
    if lr is None or isinstance(lr, torch.Tensor):
        return
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"--optimizer.lr must be {LR_RANGE}, got {lr!r}")


def _optimizer_class(class_path: str) -> type:
    module_name, _, name = class_path.rpartition(".")
    try:
        module = importlib.import_module(module_name or "torch.optim")
    except ImportError:
        module = None
    cls = getattr(module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"optimizer {class_path!r} is not a torch.optim class (e.g. AdamW, SGD) nor a dotted path to one")
    return cls


def check_devices(devices: Union[int, str]) -> Union[int, str]:
    """`--devices`: a positive count, -1 (all), "auto", or GPU indices like "0,1"; anything else is a ValueError."""
    if isinstance(devices, int) and not isinstance(devices, bool):
        if devices >= 1 or devices == -1:
            return devices
    elif isinstance(devices, str):
        text = devices.strip()
        if text == "auto":
            return text
        if text.lstrip("-").isdigit():
            return check_devices(int(text))
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if parts and all(p.isdigit() for p in parts):
            return text
    raise ValueError(
        f"--devices must be a positive number of devices, -1 (all), 'auto' or GPU indices like '0,1', got {devices!r}"
    )
