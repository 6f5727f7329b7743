"""`litgpt pretrain`: train a GPT from scratch with Lightning Fabric.

`setup()` checks the arguments, builds Fabric (devices, precision, strategy, loggers) and launches `fit()`,
the loop: warmup + cosine learning rate, `train_step` (gradient accumulation, clipping, the optimizer step; also
what `litgpt benchmark pretrain` times), validation, atomic checkpoints and exact resume (model, optimizer, step
counters, data position and RNG all live in the checkpoint).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Union

import torch
import yaml

from litgpt.args import EvalArgs, OptimizerArg, OptimizerSpec, TrainArgs, check_devices
from litgpt.checkpoint import CheckpointError, check_finite, extract_state_dict, read_checkpoint_file
from litgpt.config import Config
from litgpt.data import DataModule, TinyStories
from litgpt.data.base import make_train_loader, make_val_loader
from litgpt.flops import flops_per_token, peak_flops
from litgpt.model import GPT, Block, init_weights
from litgpt.tokenizer import Tokenizer
from litgpt.utils import atomic_directory, hyperparameters

PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")
STEP_DIR = "step-{:08d}"


def setup(
    model_name: Optional[str] = None,
    model_config: Optional[dict] = None,
    out_dir: Path = Path("out/pretrain"),
    precision: Optional[str] = None,
    initial_checkpoint_dir: Optional[Path] = None,
    resume: Union[bool, Literal["auto"], Path] = "auto",
    overwrite: bool = False,
    data: Optional[DataModule] = None,
    train: TrainArgs = TrainArgs(),
    eval: EvalArgs = EvalArgs(),
    optimizer: OptimizerArg = "AdamW",
    devices: Union[int, str] = "auto",
    num_nodes: int = 1,
    strategy: Literal["auto", "ddp", "fsdp"] = "auto",
    tokenizer_dir: Optional[Path] = None,
    logger_name: Literal["csv", "tensorboard", "wandb"] = "csv",
    seed: int = 42,
    compile: bool = False,
) -> None:
    """Pretrain a model.

    Args:
        model_name: a named config (`litgpt.Config.names()`); optional when `model_config` is given.
        model_config: config fields; with `model_name` they override that config's fields, alone they define it.
        out_dir: where checkpoints (`step-XXXXXXXX/`, `final/`) and logs go.
        precision: `32-true`, `bf16-mixed`, `bf16-true`, `16-mixed`... (default: bf16-mixed on CUDA, else 32-true).
        initial_checkpoint_dir: start from the weights in this checkpoint directory.
        resume: `auto` (continue the run in out_dir from its latest readable checkpoint, or start one), `true`
            (the same, but a run must exist), `false` (start from step 0) or a checkpoint path.
        overwrite: with `--resume false`, delete the checkpoints of an earlier run in out_dir and start over
            (without it, an earlier run there is an error rather than overwritten).
        data: the data module (default: TinyStories).
        train: training loop settings.
        eval: validation settings.
        optimizer: the optimizer and its arguments: `--optimizer AdamW --optimizer.lr 3e-4`,
            `--optimizer.init_args.weight_decay 0.1`, or {class_path, init_args}; later options override earlier
            ones and the --config yaml, in command-line order.
        devices: devices per node, or "auto".
        num_nodes: number of nodes.
        strategy: `auto`, `ddp`, or `fsdp` (sharded per Block).
        tokenizer_dir: directory with tokenizer.json / tokenizer.model; if omitted, a byte-level BPE with the
            model's vocab_size is trained on the training text and saved to out_dir/tokenizer.
        logger_name: `csv`, `tensorboard` or `wandb` (the last two need their package installed).
        seed: random seed for weights and data order.
        compile: compile the model with torch.compile.
    """
    optimizer = OptimizerSpec.resolve(optimizer)
    devices = check_devices(devices)
    hparams = hyperparameters(locals())
    train.validate()
    eval.validate()
    config = resolve_config(model_name, model_config)
    precision = precision or ("bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not supported; choose one of {', '.join(PRECISIONS)}")
    if precision.startswith("bf16") and not torch.cuda.is_available():
        warnings.warn(
            f"precision {precision} on the CPU runs many times slower than 32-true (measured 13x); "
            "pass --precision 32-true for CPU runs", stacklevel=2,
        )
    if strategy == "fsdp" and not torch.cuda.is_available():
        raise ValueError(
            "--strategy fsdp needs CUDA GPUs (Lightning Fabric runs FSDP on GPU only); on CPU use --strategy ddp"
        )
    if isinstance(resume, Path) and not resume.exists():
        raise FileNotFoundError(f"--resume {str(resume)!r} does not exist")
    if overwrite and resume is not False:
        raise ValueError("--overwrite true starts the run over, so it needs --resume false")
    if initial_checkpoint_dir is not None and not (initial_checkpoint_dir / "lit_model.pth").is_file():
        raise FileNotFoundError(f"--initial_checkpoint_dir {str(initial_checkpoint_dir)!r} has no lit_model.pth")
    if tokenizer_dir is not None and not tokenizer_dir.is_dir():
        raise FileNotFoundError(f"--tokenizer_dir {str(tokenizer_dir)!r} is not a directory")
    # which checkpoint a resume starts from, decided before any work: a bad choice fails here in one line
    checkpoint = find_resume_checkpoint(resume, out_dir, overwrite)
    if checkpoint is not None:
        check_resume_matches(checkpoint.parent, config, tokenizer_dir or out_dir / "tokenizer")
    seq_len = train.max_seq_length or config.block_size
    if seq_len > config.block_size:
        raise ValueError(f"train.max_seq_length ({seq_len}) exceeds the model's block_size ({config.block_size})")
    data = TinyStories() if data is None else data

    import lightning as L

    fabric = L.Fabric(
        devices=devices,
        num_nodes=num_nodes,
        strategy=_strategy(strategy),
        precision=precision,
        loggers=[_logger(logger_name, out_dir)],
    )
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    fabric.launch(
        fit, config=config, out_dir=out_dir, initial_checkpoint_dir=initial_checkpoint_dir, checkpoint=checkpoint,
        overwrite=overwrite, data=data, train=train, eval=eval, optimizer=optimizer, tokenizer_dir=tokenizer_dir,
        seed=seed, compile=compile, seq_len=seq_len, hparams=hparams,
    )


def resolve_config(model_name: Optional[str], model_config: Optional[dict]) -> Config:
    """A named config with `model_config` overriding its fields, or a config built from `model_config` alone."""
    if model_name is None and model_config is None:
        raise ValueError("pass a model name (e.g. `litgpt pretrain pythia-160m-mla`) or --model_config")
    if model_name is None:
        return Config.from_dict(dict(model_config), source="--model_config")
    return Config.from_name(model_name, **(model_config or {}))


def fit(
    fabric: Any,
    config: Config,
    out_dir: Path,
    initial_checkpoint_dir: Optional[Path],
    checkpoint: Optional[Path],
    overwrite: bool,
    data: DataModule,
    train: TrainArgs,
    eval: EvalArgs,
    optimizer: OptimizerSpec,
    tokenizer_dir: Optional[Path],
    seed: int,
    compile: bool,
    seq_len: int,
    hparams: dict,
) -> None:
    """The training loop, run by every process that `setup` launches (arguments as `setup` resolved them)."""
    fabric.seed_everything(seed)
    if overwrite and fabric.global_rank == 0:
        for old in run_checkpoints(out_dir):
            shutil.rmtree(old.parent)
            fabric.print(f"--overwrite: deleted {old.parent}")
    fabric.barrier()
    tokenizer = _tokenizer(fabric, tokenizer_dir, data, config, out_dir)
    data.connect(tokenizer, max_seq_length=seq_len)
    with fabric.rank_zero_first():
        data.prepare_data()
    data.setup()
    train_data, val_data = data.train_dataset(), data.val_dataset()

    model = GPT(config)
    init_weights(model)
    if initial_checkpoint_dir is not None:
        weights = initial_checkpoint_dir / "lit_model.pth"
        model.load_state_dict(extract_state_dict(read_checkpoint_file(weights), str(weights)))
    model.max_seq_length = seq_len
    n_params = sum(p.numel() for p in model.parameters())
    fabric.print(f"model {config.name or '(custom)'}: {n_params / 1e6:.1f}M parameters, sequence length {seq_len}")
    if compile:
        model = torch.compile(model)
    model = fabric.setup(model)
    opt = fabric.setup_optimizers(optimizer.build(model.parameters(), fabric.device))

    base_lr = opt.param_groups[0]["lr"]  # before a resume overwrites the param groups with the last step's lr
    state: dict[str, Any] = dict(model=model, optimizer=opt, step_count=0, iter_num=0, tokens=0, train_time=0.0)
    if checkpoint is not None:
        fabric.print(f"resuming from {checkpoint}")
        remainder = fabric.load(checkpoint, state, weights_only=True)
        _set_rng(remainder.get("rng"))

    accum = train.gradient_accumulation_iters(fabric.world_size)
    # Windows this rank has consumed, derived from the global count: rank r reads every world_size-th window of
    # the seeded order, so step s trains on the same global_batch windows whatever the device count, and a run
    # can resume on another number of devices (exactly while epochs, world_size * (n // world_size), agree).
    consumed = state["step_count"] * train.global_batch_size // fabric.world_size
    train_loader = fabric.setup_dataloaders(
        make_train_loader(
            train_data, train.micro_batch_size, seed, fabric.global_rank, fabric.world_size,
            consumed_samples=consumed, num_workers=data.loader_workers,
        ),
        use_distributed_sampler=False,
    )
    val_loader = fabric.setup_dataloaders(
        make_val_loader(val_data, train.micro_batch_size, eval.max_iters, num_workers=data.loader_workers),
        use_distributed_sampler=False,
    )
    tokens_per_step = train.global_batch_size * seq_len
    total_steps = _total_steps(train, tokens_per_step)
    flops = flops_per_token(config, seq_len)
    peak = peak_flops(fabric.device)
    checkpoint_dir_args = dict(fabric=fabric, state=state, tokenizer=tokenizer, config=config, hparams=hparams)

    if eval.initial_validation and state["step_count"] == 0:
        _validate(fabric, model, val_loader, state, eval)
    run_start_tokens, run_start_time, run_start_step = state["tokens"], state["train_time"], state["step_count"]
    divergence = Divergence.for_run(fabric, train.max_norm)
    window = _Window()
    lr = opt.param_groups[0]["lr"]
    batches = iter(train_loader)
    model.train()
    while not _done(state, train, total_steps):
        lr = _lr(state["step_count"], base_lr, train, total_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        loss_sum = train_step(fabric, model, opt, batches, accum, train.max_norm, divergence, state["step_count"] + 1)
        state["iter_num"] += accum
        state["step_count"] += 1
        state["tokens"] += tokens_per_step
        window.tokens += tokens_per_step
        window.steps += 1
        step = state["step_count"]
        done = _done(state, train, total_steps, extra_time=window.elapsed())

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
                metrics["mfu"] = flops * tokens_per_sec / (peak * fabric.world_size)
            fabric.log_dict(metrics, step=step)
            fabric.print(_progress_line(state, metrics, total_steps, train))
            window = _Window()
            done = _done(state, train, total_steps)
        with window.paused():
            if step % eval.interval == 0 and not (done and eval.final_validation):
                _validate(fabric, model, val_loader, state, eval)
            if train.save_interval is not None and step % train.save_interval == 0 and not done:
                divergence.check(fabric, out_dir, lr)  # never write the weights of a diverged run
                save_training_checkpoint(out_dir / STEP_DIR.format(step), **checkpoint_dir_args)

    divergence.check(fabric, out_dir, lr)
    if eval.final_validation:
        _validate(fabric, model, val_loader, state, eval)
    save_training_checkpoint(out_dir / "final", **checkpoint_dir_args)
    run_tokens, run_time = state["tokens"] - run_start_tokens, state["train_time"] - run_start_time
    if run_time > 0:
        fabric.print(
            f"done: {state['step_count']} steps, {state['tokens']:,} tokens; this run trained {run_tokens:,} tokens "
            f"in {run_time:.1f}s of training time ({run_tokens / run_time:,.0f} tokens/s). Checkpoint: {out_dir / 'final'}"
        )
    if torch.cuda.is_available():
        fabric.print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


# ---------------------------------------------------------------------------------------------- loop helpers
def next_token_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting batch[:, 1:] from batch[:, :-1]; batch is (B, T + 1) token ids.

    The loss is computed inside the model's forward (`targets=`), chunked, so no fp32 copy of the (B, T, vocab)
    logits exists and data-parallel wrappers see one forward.
    """
    return model(batch[:, :-1], targets=batch[:, 1:])  # ()


def train_step(
    fabric: Any,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[torch.Tensor],
    accum: int,
    max_norm: Optional[float],
    divergence: Optional[Divergence] = None,
    step: int = 0,
) -> torch.Tensor:
    """One optimizer step over `accum` micro-batches taken from `batches`; returns their summed loss, a 0-d tensor
    on the device (no host sync).

    Every micro-batch runs forward and `fabric.backward(loss / accum)`, all but the last without the data-parallel
    gradient sync; then the gradients are clipped to `max_norm` (None: not clipped), `divergence` records whether
    the loss and gradient norm of step number `step` were finite, and the optimizer steps and zeroes the gradients.
    """
    loss_sum = torch.zeros((), device=fabric.device)
    for micro in range(accum):
        batch = next(batches)  # (micro_batch, seq_len + 1)
        with fabric.no_backward_sync(model, enabled=micro < accum - 1):
            loss = next_token_loss(model, batch)
            fabric.backward(loss / accum)
        loss_sum += loss.detach()
    grad_norm = None
    if max_norm is not None:
        grad_norm = fabric.clip_gradients(model, optimizer, max_norm=max_norm, error_if_nonfinite=False)
    if divergence is not None:
        divergence.record(step, loss_sum, grad_norm)  # on the device: no host sync
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum


class Divergence:
    """The first optimizer step whose loss or gradient norm was NaN/inf, tracked on the device.

    `record` costs no host sync; `check` reads the flag (one sync) and raises a one-line error naming the step.
    The loop checks at every progress line and before every checkpoint, so a diverged run stops within one
    logging interval and never writes non-finite weights. With 16-mixed the gradient scaler skips steps whose
    gradients overflow, so there only the loss is checked.
    """

    def __init__(self, device: torch.device, check_grad_norm: bool, clipping: bool) -> None:
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.check_grad_norm = check_grad_norm
        self.fix = "lower --optimizer.lr" + ("" if clipping else " or set --train.max_norm 1.0")

    @classmethod
    def for_run(cls, fabric: Any, max_norm: Optional[float]) -> "Divergence":
        """The tracker for a run on `fabric` clipping at max_norm (16-mixed: the loss alone, see above)."""
        return cls(fabric.device, fabric.strategy.precision.precision != "16-mixed", clipping=max_norm is not None)

    def record(self, step: int, loss: torch.Tensor, grad_norm: Optional[torch.Tensor]) -> None:
        finite = torch.isfinite(loss)
        if grad_norm is not None and self.check_grad_norm:
            finite = finite & torch.isfinite(grad_norm)
        self.first_bad = torch.where((self.first_bad < 0) & ~finite, self.first_bad.new_full((), step), self.first_bad)

    def check(self, fabric: Any, out_dir: Path, lr: float) -> None:
        bad = int(fabric.all_reduce(self.first_bad, reduce_op="max").item())
        if bad < 0:
            return
        latest = run_checkpoints(out_dir)
        resume = (f"the last good checkpoint is {latest[-1].parent} (rerun with --resume auto to continue from it)"
                  if latest else "no checkpoint of this run was written")
        raise ValueError(
            f"training stopped: the loss or gradient norm became NaN/inf at step {bad} (lr {lr:.2e}); nothing was "
            f"saved after it and {resume}; {self.fix}"
        )


class _Window:
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


def _total_steps(train: TrainArgs, tokens_per_step: int) -> Optional[int]:
    limits = []
    if train.max_steps is not None:
        limits.append(train.max_steps)
    if train.max_tokens is not None:
        limits.append(math.ceil(train.max_tokens / tokens_per_step))
    return min(limits) if limits else None


def _done(state: dict, train: TrainArgs, total_steps: Optional[int], extra_time: float = 0.0) -> bool:
    if total_steps is not None and state["step_count"] >= total_steps:
        return True
    return train.max_time is not None and state["train_time"] + extra_time >= train.max_time


def _lr(step: int, base_lr: float, train: TrainArgs, total_steps: Optional[int]) -> float:
    """Linear warmup over lr_warmup_steps, then cosine decay to min_lr at total_steps (constant if unknown)."""
    if step < train.lr_warmup_steps:
        return base_lr * (step + 1) / train.lr_warmup_steps
    if total_steps is None:
        return base_lr
    progress = min(1.0, (step - train.lr_warmup_steps) / max(1, total_steps - train.lr_warmup_steps))
    return train.min_lr + 0.5 * (base_lr - train.min_lr) * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def _validate(fabric: Any, model: torch.nn.Module, val_loader: Any, state: dict, eval: EvalArgs) -> float:
    model.eval()
    losses = []
    for batch in val_loader:
        losses.append(next_token_loss(model, batch))
    val_loss = fabric.all_reduce(torch.stack(losses).mean(), reduce_op="mean").item()
    model.train()
    if not math.isfinite(val_loss):
        raise ValueError(
            f"training stopped at step {state['step_count']}: the validation loss is {val_loss} although the training "
            "loss was finite (check the validation data); no checkpoint was written for this step"
        )
    fabric.log_dict(dict(val_loss=val_loss, val_ppl=math.exp(val_loss)), step=state["step_count"])
    fabric.print(f"step {state['step_count']}: val loss {val_loss:.4f}, val ppl {math.exp(val_loss):.2f}")
    return val_loss


def _progress_line(state: dict, metrics: dict, total_steps: Optional[int], train: TrainArgs) -> str:
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


# ------------------------------------------------------------------------------------ checkpoints and resume
def save_training_checkpoint(
    checkpoint_dir: Path, fabric: Any, state: dict, tokenizer: Tokenizer, config: Config, hparams: dict
) -> None:
    """Write lit_model.pth (full training state), configs and tokenizer into a temporary directory that then
    replaces `checkpoint_dir` (`atomic_directory`; rank 0 does the file-system work, every rank joins the save).

    A kill at any point leaves either the previous checkpoint directory or the new, complete one.
    """
    owner = fabric.global_rank == 0
    with atomic_directory(checkpoint_dir, owner=owner) as tmp:
        fabric.barrier()  # rank 0 has created tmp
        fabric.save(tmp / "lit_model.pth", {**state, "rng": _get_rng()})
        if owner:
            config.save(tmp / "model_config.yaml")
            with open(tmp / "hyperparameters.yaml", "w", encoding="utf-8") as f:
                yaml.safe_dump(hparams, f, sort_keys=False)
            tokenizer.save(tmp)
    fabric.barrier()
    fabric.print(f"saved checkpoint {checkpoint_dir}")


def run_checkpoints(out_dir: Path) -> list[Path]:
    """The `lit_model.pth` files of the run in out_dir, oldest first (`step-*` by step, then `final`)."""
    checkpoints = sorted(out_dir.glob("step-*/lit_model.pth"))
    if (out_dir / "final" / "lit_model.pth").is_file():
        checkpoints.append(out_dir / "final" / "lit_model.pth")
    return checkpoints


def find_resume_checkpoint(resume: Union[bool, str, Path], out_dir: Path, overwrite: bool = False) -> Optional[Path]:
    """The checkpoint a run continues from, or None to start at step 0.

    `auto`/`true` take the newest readable checkpoint in out_dir, skipping unreadable ones with a warning;
    `false` refuses to start over an earlier run unless `overwrite`; a path must be readable itself.
    """
    if isinstance(resume, Path):
        path = resume / "lit_model.pth" if resume.is_dir() else resume
        _check_training_state(path)
        return path
    existing = run_checkpoints(out_dir)
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
            _check_training_state(path)
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


def _check_training_state(path: Path) -> None:
    """A CheckpointError unless `path` reads as a `litgpt pretrain` training state (weights, optimizer, counters)."""
    state = read_checkpoint_file(path)
    missing = [k for k in ("model", "optimizer", "step_count", "iter_num", "tokens") if k not in state]
    if missing:
        raise CheckpointError(
            f"{path} is not a training checkpoint of `litgpt pretrain` (it has no {', '.join(missing)}); to start "
            "from its weights pass its directory as --initial_checkpoint_dir instead of --resume"
        )
    check_finite(extract_state_dict(state, str(path)), str(path))


def check_resume_matches(checkpoint_dir: Path, config: Config, tokenizer_dir: Path) -> None:
    """Refuse to resume a checkpoint with another model config or another tokenizer than the run started with."""
    saved = Config.from_checkpoint(checkpoint_dir)
    if saved != config:
        now, then = dataclasses.asdict(config), dataclasses.asdict(saved)
        diff = ", ".join(f"{k}: {then[k]!r} in the checkpoint, {now[k]!r} now" for k in now if now[k] != then.get(k))
        raise ValueError(
            f"cannot resume {checkpoint_dir}: it was trained with another model config ({diff}); resume with the "
            "run's model settings, or train into another --out_dir"
        )
    started_with = Tokenizer(checkpoint_dir)
    if not (tokenizer_dir / "tokenizer.json").is_file() and not (tokenizer_dir / "tokenizer.model").is_file():
        raise ValueError(
            f"cannot resume {checkpoint_dir}: the run's tokenizer is not in {str(tokenizer_dir)!r}; pass "
            f"--tokenizer_dir {_started_tokenizer_dir(checkpoint_dir)} (a copy is in {checkpoint_dir})"
        )
    if Tokenizer(tokenizer_dir).fingerprint != started_with.fingerprint:
        raise ValueError(
            f"cannot resume {checkpoint_dir}: --tokenizer_dir {str(tokenizer_dir)!r} is not the tokenizer the run "
            f"started with; pass --tokenizer_dir {_started_tokenizer_dir(checkpoint_dir)}, or train into another "
            "--out_dir"
        )


def _started_tokenizer_dir(checkpoint_dir: Path) -> str:
    hparams_file = checkpoint_dir / "hyperparameters.yaml"
    hparams = yaml.safe_load(hparams_file.read_text(encoding="utf-8")) if hparams_file.is_file() else {}
    return str((hparams or {}).get("tokenizer_dir") or checkpoint_dir)


def _get_rng() -> dict[str, torch.Tensor]:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    return rng


def _set_rng(rng: Optional[dict]) -> None:
    if not rng:
        return
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


# ---------------------------------------------------------------------------------------- builders
def _tokenizer(fabric: Any, tokenizer_dir: Optional[Path], data: DataModule, config: Config, out_dir: Path) -> Tokenizer:
    if tokenizer_dir is None:
        tokenizer_dir = out_dir / "tokenizer"
        if fabric.global_rank == 0 and not (tokenizer_dir / "tokenizer.json").is_file():
            from litgpt.scripts.train_tokenizer import train_tokenizer

            fabric.print(f"no --tokenizer_dir: training a {config.vocab_size}-token BPE on the training text")
            train_tokenizer(data=data, out_dir=tokenizer_dir, vocab_size=config.vocab_size)
        fabric.barrier()
    tokenizer = Tokenizer(tokenizer_dir)
    if tokenizer.vocab_size > config.padded_vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model's padded_vocab_size is "
            f"{config.padded_vocab_size}; set --model_config.vocab_size to at least {tokenizer.vocab_size}"
        )
    return tokenizer


def _strategy(name: str) -> Any:
    if name == "fsdp":
        from lightning.fabric.strategies import FSDPStrategy

        return FSDPStrategy(auto_wrap_policy={Block}, state_dict_type="full", sharding_strategy="FULL_SHARD")
    return name


def _logger(name: str, out_dir: Path) -> Any:
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
