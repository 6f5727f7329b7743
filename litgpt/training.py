"""The training loop that `litgpt pretrain` and `litgpt finetune_*` share.

A command builds its Fabric, data, model and optimizer, then hands them to `run`: warmup + cosine learning rate,
`train_step` (gradient accumulation, clipping, the optimizer step; also what `litgpt benchmark pretrain` times),
validation, progress lines, divergence checks, atomic checkpoints (`Checkpointer`) and exact resume (model or its
trainable part, optimizer, step counters, data position and RNG all live in the checkpoint; `find_resume_checkpoint`
picks the one to continue from). What a batch is and how its loss is computed is the command's `Objective`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import torch
import yaml
from torch.utils.data import Dataset

from litgpt.args import EvalArgs, TrainArgs
from litgpt.checkpoint import CheckpointError, check_finite, extract_state_dict, read_checkpoint_file
from litgpt.config import Config
from litgpt.data.base import make_train_loader, make_val_loader
from litgpt.flops import peak_flops
from litgpt.moe import ExpertBalance, expert_load_metrics
from litgpt.prompts import PromptStyle
from litgpt.tokenizer import Tokenizer
from litgpt.utils import atomic_directory, no_space_errors

PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")
STEP_DIR = "step-{:08d}"
# the counters every training state file holds beside the model and the optimizer
STATE_KEYS = ("model", "optimizer", "step_count", "iter_num", "tokens")


def resolve_precision(precision: Optional[str]) -> str:
    """`--precision`, defaulting to bf16-mixed on CUDA (with bf16) and 32-true elsewhere; warns for bf16 on the CPU."""
    precision = precision or ("bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not supported; choose one of {', '.join(PRECISIONS)}")
    if precision.startswith("bf16") and not torch.cuda.is_available():
        warnings.warn(
            f"precision {precision} on the CPU runs many times slower than 32-true (measured 13x); "
            "pass --precision 32-true for CPU runs", stacklevel=3,
        )
    return precision


# ---------------------------------------------------------------------------------------------- what a batch is
def next_token_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting batch[:, 1:] from batch[:, :-1]; batch is (B, T + 1) token ids.

    The loss is computed inside the model's forward (`targets=`), chunked, so no fp32 copy of the (B, T, vocab)
    logits exists and data-parallel wrappers see one forward.
    """
    return model(batch[:, :-1], targets=batch[:, 1:])  # ()


def window_tokens(batch: torch.Tensor) -> int:
    """Tokens a (B, T + 1) pretraining batch trains on: B * T (read from the shape: no host sync)."""
    return batch.size(0) * (batch.size(1) - 1)


@dataclass(frozen=True)
class Objective:
    """What a run's micro-batches are: `loss(model, batch)` is their mean loss (a 0-d tensor), `tokens(batch)` the
    tokens they train on, read from shapes only (the loop counts them without a host sync)."""

    loss: Callable[[torch.nn.Module, Any], torch.Tensor]
    tokens: Callable[[Any], int]


NEXT_TOKEN = Objective(next_token_loss, window_tokens)


# ---------------------------------------------------------------------------------------------- run directories
@dataclass(frozen=True)
class RunFiles:
    """How a command's run directory is laid out: `step-XXXXXXXX/` and `final/`, each holding `state_file` (model or
    its trainable part, optimizer, counters, RNG). `command` and `weights_option` name the command in messages and
    the option that starts a run from a checkpoint's weights instead of resuming it."""

    command: str = "litgpt pretrain"
    state_file: str = "lit_model.pth"
    weights_option: str = "--initial_checkpoint_dir"


PRETRAIN_FILES = RunFiles()
# the directories a run writes (and `--overwrite` deletes) in its out_dir: an input there would be written over
RUN_DIRS = ("final", "step-*")


def run_checkpoints(out_dir: Path, files: RunFiles = PRETRAIN_FILES) -> list[Path]:
    """The training state files of the run in out_dir, oldest first (`step-*` by step, then `final`)."""
    checkpoints = sorted(out_dir.glob(f"step-*/{files.state_file}"))
    if (out_dir / "final" / files.state_file).is_file():
        checkpoints.append(out_dir / "final" / files.state_file)
    return checkpoints


def delete_run(fabric: Any, out_dir: Path, files: RunFiles = PRETRAIN_FILES) -> None:
    """`--overwrite`: delete the checkpoint directories of an earlier run in out_dir (rank 0; every rank waits)."""
    if fabric.global_rank == 0:
        for old in run_checkpoints(out_dir, files):
            shutil.rmtree(old.parent)
            fabric.print(f"--overwrite: deleted {old.parent}")
    fabric.barrier()


def find_resume_checkpoint(
    resume: Union[bool, str, Path], out_dir: Path, overwrite: bool = False, files: RunFiles = PRETRAIN_FILES
) -> Optional[Path]:
    """The checkpoint a run continues from, or None to start at step 0.

    `auto`/`true` take the newest readable checkpoint in out_dir, skipping unreadable ones with a warning;
    `false` refuses to start over an earlier run unless `overwrite`; a path must be readable itself.
    """
    if isinstance(resume, Path):
        path = resume / files.state_file if resume.is_dir() else resume
        check_training_state(path, files)
        return path
    existing = run_checkpoints(out_dir, files)
    if resume is False:
        if existing and not overwrite:
            raise ValueError(
                f"{str(out_dir)!r} already holds a run (latest checkpoint {existing[-1].parent}); pass --resume auto "
                "to continue it, --resume false --overwrite true to delete its checkpoints and start over, or "
                "another --out_dir"
            )
        return None
    for path in reversed(existing):
        try:
            check_training_state(path, files)
        except CheckpointError as e:
            warnings.warn(f"--resume {resume}: skipping unreadable checkpoint ({e})", stacklevel=2)
            continue
        return path
    if existing:
        raise ValueError(
            f"--resume {resume}: none of the {len(existing)} checkpoints in {str(out_dir)!r} can be read; pass "
            "--resume false --overwrite true to start over"
        )
    if resume == "auto":
        return None
    raise FileNotFoundError(f"--resume true: no checkpoint found in {str(out_dir)!r}; use --resume auto to start fresh")


def check_training_state(path: Path, files: RunFiles = PRETRAIN_FILES) -> None:
    """A CheckpointError unless `path` reads as a training state of `files.command` (weights, optimizer, counters)."""
    state = read_checkpoint_file(path)
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"{path} is not a training checkpoint of `{files.command}` (it has no {', '.join(missing)}); to start "
            f"from its weights pass its directory as {files.weights_option} instead of --resume"
        )
    check_finite(extract_state_dict(state, str(path)), str(path))


def check_same_config(checkpoint_dir: Path, config: Config) -> None:
    """Refuse to resume a checkpoint trained with another model config than `config`."""
    saved = Config.from_checkpoint(checkpoint_dir)
    if saved != config:
        now, then = dataclasses.asdict(config), dataclasses.asdict(saved)
        diff = ", ".join(f"{k}: {then[k]!r} in the checkpoint, {now[k]!r} now" for k in now if now[k] != then.get(k))
        raise ValueError(
            f"cannot resume {checkpoint_dir}: it was trained with another model config ({diff}); resume with the "
            "run's model settings, or train into another --out_dir"
        )


@dataclass
class Checkpointer:
    """Writes a run's checkpoint directories, each atomically (`atomic_directory`): a kill at any point leaves the
    previous directory or the new, complete one.

    A directory holds `files.state_file` (the training state: the model's entries that `model_filter(name, tensor)`
    keeps, all when None, the optimizer, the counters and the RNG), model_config.yaml, hyperparameters.yaml, the
    tokenizer files and, when given, prompt_style.yaml. `finalize(tmp_dir)` runs on rank 0 on the complete final
    directory before it is moved into place (LoRA: writing the merged lit_model.pth).
    """

    fabric: Any
    tokenizer: Tokenizer
    config: Config
    hparams: dict
    files: RunFiles = PRETRAIN_FILES
    model_filter: Optional[Callable[[str, Any], bool]] = None
    prompt_style: Optional[PromptStyle] = None
    finalize: Optional[Callable[[Path], None]] = None

    def save(self, checkpoint_dir: Path, state: dict, final: bool = False) -> None:
        """Write `state` and the checkpoint's files into a temporary directory that then replaces `checkpoint_dir`
        (rank 0 does the file-system work, every rank joins the save)."""
        fabric = self.fabric
        owner = fabric.global_rank == 0
        filter = None if self.model_filter is None else {"model": self.model_filter}
        # a disk that fills up mid-save: one line (the directory there before is left as it was, so rerunning the
        # command resumes from the last complete checkpoint)
        fix = ("free some space and rerun the command (it resumes from the last complete checkpoint), or pass another "
               "--out_dir")
        with no_space_errors(checkpoint_dir, fix), atomic_directory(checkpoint_dir, owner=owner) as tmp:
            fabric.barrier()  # rank 0 has created tmp
            fabric.save(tmp / self.files.state_file, {**state, "rng": get_rng()}, filter=filter)
            if owner:
                self.config.save(tmp / "model_config.yaml")
                with open(tmp / "hyperparameters.yaml", "w", encoding="utf-8") as f:
                    yaml.safe_dump(self.hparams, f, sort_keys=False)
                self.tokenizer.save(tmp)
                if self.prompt_style is not None:
                    self.prompt_style.save(tmp)
                if final and self.finalize is not None:
                    self.finalize(tmp)
        fabric.barrier()
        fabric.print(f"saved checkpoint {checkpoint_dir}")


def get_rng() -> dict[str, torch.Tensor]:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    return rng


def set_rng(rng: Optional[dict]) -> None:
    if not rng:
        return
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


# ---------------------------------------------------------------------------------------------- the loop
def run(
    fabric: Any,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    checkpoint: Optional[Path],
    train_data: Dataset,
    val_data: Dataset,
    *,
    train: TrainArgs,
    eval: EvalArgs,
    seed: int,
    out_dir: Path,
    checkpointer: Checkpointer,
    objective: Objective = NEXT_TOKEN,
    collate_fn: Optional[Callable] = None,
    loader_workers: int = 0,
    tokens_per_step: Optional[int] = None,
    flops_per_token: Optional[float] = None,
    after_validation: Optional[Callable[[int], None]] = None,
) -> None:
    """Train the Fabric-wrapped `model` with `optimizer` until train.max_steps / max_tokens / max_time / epochs.

    `checkpoint`: the training state file to resume from (None: step 0). The data is read in `ResumableSampler`
    order, so a resumed run trains on exactly the batches the uninterrupted run would have. `tokens_per_step` (a
    constant, when known) turns train.max_tokens into a step count; `flops_per_token` adds MFU to the progress lines.
    `after_validation(step)` runs in every process after each validation (a fine-tune's sample answer).
    """
    files = checkpointer.files
    base_lr = optimizer.param_groups[0]["lr"]  # before a resume overwrites the param groups with the last step's lr
    state: dict[str, Any] = dict(model=model, optimizer=optimizer, step_count=0, iter_num=0, tokens=0, train_time=0.0)
    if checkpoint is not None:
        fabric.print(f"resuming from {checkpoint}")
        remainder = fabric.load(checkpoint, state, strict=checkpointer.model_filter is None, weights_only=True)
        set_rng(remainder.get("rng"))

    accum = train.gradient_accumulation_iters(fabric.world_size)
    # Samples this rank has consumed, derived from the global count: rank r reads every world_size-th sample of
    # the seeded order, so step s trains on the same global_batch samples whatever the device count, and a run
    # can resume on another number of devices (exactly while epochs, world_size * (n // world_size), agree).
    consumed = state["step_count"] * train.global_batch_size // fabric.world_size
    train_loader = fabric.setup_dataloaders(
        make_train_loader(
            train_data, train.micro_batch_size, seed, fabric.global_rank, fabric.world_size,
            consumed_samples=consumed, num_workers=loader_workers, collate_fn=collate_fn,
        ),
        use_distributed_sampler=False,
    )
    val_loader = fabric.setup_dataloaders(
        make_val_loader(val_data, train.micro_batch_size, eval.max_iters, num_workers=loader_workers,
                        collate_fn=collate_fn),
        use_distributed_sampler=False,
    )
    total_steps = total_steps_of(train, tokens_per_step, len(train_data))
    # the warmup in optimizer steps, once the epoch's length is known (train.lr_warmup_fraction)
    train = dataclasses.replace(train, lr_warmup_steps=train.warmup_steps(len(train_data)), lr_warmup_fraction=None)
    peak = peak_flops(fabric.device) if flops_per_token is not None else None

    def validate_now() -> float:
        val_loss = validate(fabric, model, val_loader, state["step_count"], objective.loss)
        if after_validation is not None:
            after_validation(state["step_count"])
        return val_loss

    if eval.initial_validation and state["step_count"] == 0:
        validate_now()
    run_start_tokens, run_start_time, run_start_step = state["tokens"], state["train_time"], state["step_count"]
    divergence = Divergence.for_run(fabric, train.max_norm, files)
    window = Window()
    lr = optimizer.param_groups[0]["lr"]
    batches = _Counted(iter(train_loader), objective.tokens)
    model.train()
    while not is_done(state, train, total_steps):
        lr = learning_rate(state["step_count"], base_lr, train, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        counted = batches.tokens
        loss_sum = train_step(fabric, model, optimizer, batches, accum, train.max_norm, divergence,
                              state["step_count"] + 1, loss_fn=objective.loss)
        step_tokens = (batches.tokens - counted) * fabric.world_size
        state["iter_num"] += accum
        state["step_count"] += 1
        state["tokens"] += step_tokens
        window.tokens += step_tokens
        window.steps += 1
        step = state["step_count"]
        done = is_done(state, train, total_steps, extra_time=window.elapsed())

        if step == run_start_step + 1 and train.log_interval > 1 and not done:
            # the first step includes compilation and warm-up: say it finished, long before the first log line
            divergence.check(fabric, out_dir, lr)
            fabric.print(f"step {step} done after {window.elapsed():.1f}s (the first includes warm-up); "
                         f"progress every {train.log_interval} steps")
        if step % train.log_interval == 0 or done:
            divergence.check(fabric, out_dir, lr)
            loss_value = fabric.all_reduce(loss_sum / accum, reduce_op="mean").item()  # syncs the device
            elapsed = window.elapsed()
            state["train_time"] += elapsed
            tokens_per_sec = window.tokens / elapsed
            metrics = dict(loss=loss_value, lr=lr, tokens=state["tokens"], tokens_per_sec=tokens_per_sec,
                           step_time=elapsed / window.steps)
            if peak is not None:
                metrics["mfu"] = flops_per_token * tokens_per_sec / (peak * fabric.world_size)
            metrics.update(expert_load_metrics(model))  # MoE: per-expert load since the last line
            fabric.log_dict(metrics, step=step)
            fabric.print(progress_line(state, metrics, total_steps, train))
            window = Window()
            done = is_done(state, train, total_steps)
        with window.paused():
            if step % eval.interval == 0 and not (done and eval.final_validation):
                validate_now()
            if train.save_interval is not None and step % train.save_interval == 0 and not done:
                divergence.check(fabric, out_dir, lr)  # never write the weights of a diverged run
                checkpointer.save(out_dir / STEP_DIR.format(step), state)

    divergence.check(fabric, out_dir, lr)
    if eval.final_validation:
        validate_now()
    checkpointer.save(out_dir / "final", state, final=True)
    run_tokens, run_time = state["tokens"] - run_start_tokens, state["train_time"] - run_start_time
    if run_time > 0:
        fabric.print(
            f"done: {state['step_count']} steps, {state['tokens']:,} tokens; this run trained {run_tokens:,} tokens "
            f"in {run_time:.1f}s of training time ({run_tokens / run_time:,.0f} tokens/s). Checkpoint: {out_dir / 'final'}"
        )
    if torch.cuda.is_available():
        fabric.print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


class _Counted:
    """An iterator of batches that adds up `tokens(batch)` of every batch it hands out."""

    def __init__(self, batches: Iterator[Any], tokens: Callable[[Any], int]) -> None:
        self.batches, self.count_tokens, self.tokens = batches, tokens, 0

    def __iter__(self) -> "_Counted":
        return self

    def __next__(self) -> Any:
        batch = next(self.batches)
        self.tokens += self.count_tokens(batch)
        return batch


def train_step(
    fabric: Any,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[Any],
    accum: int,
    max_norm: Optional[float],
    divergence: Optional["Divergence"] = None,
    step: int = 0,
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor] = next_token_loss,
) -> torch.Tensor:
    """One optimizer step over `accum` micro-batches taken from `batches`; returns their summed loss, a 0-d tensor
    on the device (no host sync).

    Every micro-batch runs `loss_fn(model, batch)` and `fabric.backward(loss / accum)`, all but the last without the
    data-parallel gradient sync; then the gradients are clipped to `max_norm` (None: not clipped), `divergence`
    records whether the loss and gradient norm of step number `step` were finite, and the optimizer steps and zeroes
    the gradients. A model with MoE layers also backpropagates their auxiliary losses (not in the returned loss) and
    balances its experts after the optimizer step (`litgpt.moe.ExpertBalance`).
    """
    loss_sum = torch.zeros((), device=fabric.device)
    experts = ExpertBalance(model)  # MoE layers: their aux losses and load balancing (nothing for dense models)
    for micro in range(accum):
        batch = next(batches)  # e.g. (micro_batch, seq_len + 1) token ids
        with fabric.no_backward_sync(model, enabled=micro < accum - 1):
            loss = loss_fn(model, batch)
            aux_loss = experts.take_aux_loss()
            fabric.backward((loss if aux_loss is None else loss + aux_loss) / accum)
        loss_sum += loss.detach()
    grad_norm = None
    if max_norm is not None:
        grad_norm = fabric.clip_gradients(model, optimizer, max_norm=max_norm, error_if_nonfinite=False)
    if divergence is not None:
        divergence.record(step, loss_sum, grad_norm)  # on the device: no host sync
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    experts.end_step(lambda tokens: fabric.all_reduce(tokens, reduce_op="sum"))
    return loss_sum


class Divergence:
    """The first optimizer step whose loss or gradient norm was NaN/inf, tracked on the device.

    `record` costs no host sync; `check` reads the flag (one sync) and raises a one-line error naming the step.
    The loop checks at every progress line and before every checkpoint, so a diverged run stops within one
    logging interval and never writes non-finite weights. With 16-mixed the gradient scaler skips steps whose
    gradients overflow, so there only the loss is checked.
    """

    def __init__(
        self, device: torch.device, check_grad_norm: bool, clipping: bool, files: RunFiles = PRETRAIN_FILES
    ) -> None:
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.check_grad_norm = check_grad_norm
        self.fix = "lower --optimizer.lr" + ("" if clipping else " or set --train.max_norm 1.0")
        self.files = files

    @classmethod
    def for_run(cls, fabric: Any, max_norm: Optional[float], files: RunFiles = PRETRAIN_FILES) -> "Divergence":
        """The tracker for a run on `fabric` clipping at max_norm (16-mixed: the loss alone, see above)."""
        return cls(fabric.device, fabric.strategy.precision.precision != "16-mixed", clipping=max_norm is not None,
                   files=files)

    def record(self, step: int, loss: torch.Tensor, grad_norm: Optional[torch.Tensor]) -> None:
        finite = torch.isfinite(loss)
        if grad_norm is not None and self.check_grad_norm:
            finite = finite & torch.isfinite(grad_norm)
        self.first_bad = torch.where((self.first_bad < 0) & ~finite, self.first_bad.new_full((), step), self.first_bad)

    def check(self, fabric: Any, out_dir: Path, lr: float) -> None:
        bad = int(fabric.all_reduce(self.first_bad, reduce_op="max").item())
        if bad < 0:
            return
        latest = run_checkpoints(out_dir, self.files)
        resume = (f"the last good checkpoint is {latest[-1].parent} (rerun with --resume auto to continue from it)"
                  if latest else "no checkpoint of this run was written")
        raise ValueError(
            f"training stopped: the loss or gradient norm became NaN/inf at step {bad} (lr {lr:.2e}); nothing was "
            f"saved after it and {resume}; {self.fix}"
        )


class Window:
    """Training time and tokens since the last progress line, excluding validation and checkpoint time."""

    def __init__(self) -> None:
        self.start, self.excluded, self.tokens, self.steps = time.perf_counter(), 0.0, 0, 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start - self.excluded

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.excluded += time.perf_counter() - start


def total_steps_of(train: TrainArgs, tokens_per_step: Optional[int], samples: int) -> Optional[int]:
    """The step count at which the run stops (None: only train.max_time stops it).

    train.max_tokens needs a constant `tokens_per_step`; train.epochs counts passes over `samples` training samples.
    """
    limits = []
    if train.max_steps is not None:
        limits.append(train.max_steps)
    if train.max_tokens is not None:
        if tokens_per_step is None:
            raise ValueError("train.max_tokens needs a constant number of tokens per step; set train.max_steps, "
                             "train.epochs or train.max_time instead")
        limits.append(math.ceil(train.max_tokens / tokens_per_step))
    if train.epochs is not None:
        limits.append(math.ceil(train.epochs * samples / train.global_batch_size))
    return min(limits) if limits else None


def is_done(state: dict, train: TrainArgs, total_steps: Optional[int], extra_time: float = 0.0) -> bool:
    if total_steps is not None and state["step_count"] >= total_steps:
        return True
    return train.max_time is not None and state["train_time"] + extra_time >= train.max_time


def learning_rate(step: int, base_lr: float, train: TrainArgs, total_steps: Optional[int]) -> float:
    """Linear warmup over lr_warmup_steps, then cosine decay to min_lr at total_steps (constant if unknown)."""
    warmup = train.lr_warmup_steps or 0
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if total_steps is None:
        return base_lr
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return train.min_lr + 0.5 * (base_lr - train.min_lr) * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def validate(
    fabric: Any, model: torch.nn.Module, val_loader: Any, step: int,
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor] = next_token_loss,
) -> float:
    """The mean validation loss over `val_loader`'s batches (logged and printed at `step`)."""
    model.eval()
    losses = []
    for batch in val_loader:
        losses.append(loss_fn(model, batch))
    val_loss = fabric.all_reduce(torch.stack(losses).mean(), reduce_op="mean").item()
    model.train()
    if not math.isfinite(val_loss):
        raise ValueError(
            f"training stopped at step {step}: the validation loss is {val_loss} although the training "
            "loss was finite (check the validation data); no checkpoint was written for this step"
        )
    fabric.log_dict(dict(val_loss=val_loss, val_ppl=math.exp(val_loss)), step=step)
    fabric.print(f"step {step}: val loss {val_loss:.4f}, val ppl {math.exp(val_loss):.2f}")
    return val_loss


def progress_line(state: dict, metrics: dict, total_steps: Optional[int], train: TrainArgs) -> str:
    step = state["step_count"]
    parts = [f"step {step}" + (f"/{total_steps}" if total_steps else ""), f"loss {metrics['loss']:.4f}",
             f"{metrics['tokens_per_sec']:,.0f} tok/s"]
    if "mfu" in metrics:
        parts.append(f"MFU {100 * metrics['mfu']:.1f}%")
    parts.append(f"lr {metrics['lr']:.2e}")
    remaining = []
    if total_steps is not None:
        remaining.append((total_steps - step) * state["train_time"] / max(1, step))
    if train.max_time is not None:
        remaining.append(train.max_time - state["train_time"])
    if remaining:
        parts.append(f"ETA {_hms(max(0.0, min(remaining)))}")
    return " | ".join(parts)


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# ---------------------------------------------------------------------------------------------- loggers
def make_logger(name: str, out_dir: Path) -> Any:
    """`--logger_name`: csv (out_dir/logs/csv/version_N/metrics.csv), tensorboard or wandb."""
    if name == "csv":
        from lightning.fabric.loggers import CSVLogger

        return CSVLogger(root_dir=out_dir / "logs", name="csv", flush_logs_every_n_steps=1)
    if name == "tensorboard":
        try:
            from lightning.fabric.loggers import TensorBoardLogger

            return TensorBoardLogger(root_dir=out_dir / "logs", name="tensorboard")
        except ModuleNotFoundError as e:
            raise ValueError(f"--logger_name tensorboard needs `pip install tensorboard` ({e})") from None
    if name == "wandb":
        try:
            from lightning.pytorch.loggers import WandbLogger

            return WandbLogger(project="litgpt-mla", save_dir=str(out_dir / "logs"))
        except ModuleNotFoundError as e:
            raise ValueError(f"--logger_name wandb needs `pip install wandb` ({e})") from None
    raise ValueError(f"--logger_name must be csv, tensorboard or wandb, got {name!r}")
