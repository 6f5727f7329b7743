"""Argument groups shared by the training commands (`--train.*`, `--eval.*`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class TrainArgs:
    """Training loop settings.

    Args:
        save_interval: optimizer steps between checkpoints (None: only the final one).
        log_interval: optimizer steps between progress lines and logged metrics.
        global_batch_size: sequences per optimizer step, across all devices.
        micro_batch_size: sequences per forward/backward on one device.
        lr_warmup_steps: linear learning-rate warmup length, in optimizer steps.
        max_tokens: stop after this many training tokens.
        max_steps: stop after this many optimizer steps.
        max_time: stop after this many seconds of training (the checkpoint is written at the step it stops).
        max_seq_length: tokens per training sequence (default: the model's block_size).
        max_norm: gradient-norm clipping threshold (None: no clipping).
        min_lr: learning rate at the end of the cosine decay.
    """

    save_interval: Optional[int] = 1000
    log_interval: int = 1
    global_batch_size: int = 512
    micro_batch_size: int = 4
    lr_warmup_steps: int = 2000
    max_tokens: Optional[int] = None
    max_steps: Optional[int] = None
    max_time: Optional[float] = None
    max_seq_length: Optional[int] = None
    max_norm: Optional[float] = 1.0
    min_lr: float = 4e-5

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
        if self.max_tokens is None and self.max_steps is None and self.max_time is None:
            raise ValueError("set at least one of train.max_tokens, train.max_steps or train.max_time")
        for name in ("max_tokens", "max_steps", "max_time", "save_interval", "max_seq_length"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"train.{name} must be positive, got {value}")
        if self.lr_warmup_steps < 0:
            raise ValueError(f"train.lr_warmup_steps must be >= 0, got {self.lr_warmup_steps}")


@dataclass
class EvalArgs:
    """Validation settings.

    Args:
        interval: optimizer steps between validation runs.
        max_iters: validation batches per run (the same held-out batches every time).
        initial_validation: also validate before the first step.
        final_validation: validate after the last step.
    """

    interval: int = 1000
    max_iters: int = 100
    initial_validation: bool = False
    final_validation: bool = True

    def validate(self) -> None:
        if self.interval <= 0 or self.max_iters <= 0:
            raise ValueError(f"eval.interval and eval.max_iters must be positive, got {self.interval}, {self.max_iters}")
