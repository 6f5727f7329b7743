"""Small helpers shared by several modules: the atomic writes of `litgpt.files` (re-exported), device
synchronization (and the warning for a decode step compiled on the CPU), the yaml-safe record of a command's
arguments, command-line argument checks (an output that would write over an input), and when the process started.

At import time this module imports only `litgpt.files` (the helpers upstream litgpt's users call, at the end,
import theirs when called), so any other module can import it without an import cycle.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import torch

from litgpt.files import (  # noqa: F401  (re-exported: the writes are used through litgpt.utils too)
    NO_SPACE_ERRNOS, TORCH_WRITE_FAILURES, PathLike, WriteError, atomic_directory, atomic_write, no_space_errors,
)

_IMPORTED_AT = time.time()  # the last fallback of `process_start_time`


# ---------------------------------------------------------------------------------------------- devices
def synchronize(device: Union[torch.device, str]) -> None:
    """Wait for the work queued on `device` (CUDA); a no-op on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_device(device: Optional[str]) -> torch.device:
    """`--device`: None (CUDA when available, else the CPU), cuda, cuda:N or cpu; anything else is a ValueError."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a torch device; use cuda, cuda:N or cpu") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} was asked for but CUDA is not available; use --device cpu")
    if parsed.type not in ("cuda", "cpu"):
        raise ValueError(f"--device {device!r} is not supported; use cuda, cuda:N or cpu")
    return parsed


def warn_compile_on_cpu(compile: Optional[bool], device: torch.device) -> None:
    """`--compile true` on the CPU (`litgpt generate`, `litgpt chat`): warn, before the weights load, that the compile
    comes first and takes minutes (inductor builds the step's C++ after the first token: 506 s were measured for a
    5-token run)."""
    if compile and torch.device(device).type == "cpu":
        warnings.warn(
            "--compile true on the CPU: torch.compile builds the decode step in C++ after the first token, which takes "
            "minutes (506 s measured for 5 tokens) before the text goes on; leave --compile unset (the CPU then "
            "decodes eagerly, at once) unless a long generation repays it", stacklevel=2,
        )


# ---------------------------------------------------------------------------------------------- command lines
def hyperparameters(args: Mapping[str, Any]) -> dict[str, Any]:
    """A command's arguments as a yaml-safe dict that the command's `--config` reads back.

    Paths become strings; an object with an `as_dict()` method (a data module, an `OptimizerSpec`) becomes what
    that returns (its `{class_path, init_args}`); other dataclasses (`TrainArgs`) become dicts of their fields;
    dicts, lists and tuples are converted item by item.
    """

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if not isinstance(value, type) and callable(getattr(value, "as_dict", None)):
            return plain(value.as_dict())
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {k: plain(v) for k, v in dataclasses.asdict(value).items()}
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return {k: plain(v) for k, v in args.items()}


def command_line(args: Mapping[str, Any], command: str) -> str:
    """`command --key value ...` reproducing `args` (None values left out, lists written as '[a, b]', a None in a
    list as null)."""
    parts = [command]
    for key, value in args.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = "'[" + ", ".join("null" if v is None else str(v) for v in value) + "]'"
        parts.append(f"--{key} {value}")
    return " ".join(parts)


def check_output_spares_inputs(
    out_option: str, out_dir: PathLike, inputs: Mapping[str, Optional[PathLike]], replaced: Sequence[str] = ("",)
) -> None:
    """Refuse an output directory whose writes would land on one of the command's inputs (a ValueError, one line).

    `inputs` maps each input's option (`--checkpoint_dir`) to its path (None: not given). An input is refused when
    it is out_dir itself, or lies at or under what the command replaces or deletes in out_dir: `replaced` holds glob
    patterns of names directly in out_dir (`"final"`, `"step-*"`), and `""` for out_dir as a whole. Paths are
    compared resolved (relative paths, `..` and symlinks followed), so two spellings of one directory are one.
    """
    out = Path(out_dir).resolve()
    for option, value in inputs.items():
        if value is None:
            continue
        path = Path(value).resolve()
        if path == out:
            raise ValueError(
                f"{out_option} {str(out_dir)!r} is {option} {str(value)!r} itself: the command would write over its "
                f"own input; pass another {out_option}"
            )
        if out not in path.parents:
            continue
        top = path.relative_to(out).parts[0]
        hit = next((p for p in replaced if p == "" or fnmatch.fnmatchcase(top, p)), None)
        if hit == "":
            raise ValueError(
                f"{option} {str(value)!r} lies inside {out_option} {str(out_dir)!r}, which the command replaces as a "
                f"whole: it would delete its own input; pass another {out_option}"
            )
        if hit is not None:
            raise ValueError(
                f"{option} {str(value)!r} lies in {out_option} {str(out_dir)!r} as {top}/, a directory the command "
                f"writes over: it would overwrite its own input; pass another {out_option}, or copy the input elsewhere"
            )


def positive_ints(name: str, values: list[int]) -> list[int]:
    """`--name` as a sorted list of distinct positive integers; an empty list or a value <= 0 is a ValueError."""
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"--{name} must be a non-empty list of positive integers, got {values}")
    return sorted(set(values))


def format_number(value: float, spec: str) -> str:
    """`format(value, spec)`, or "" for a NaN float (a table cell with nothing measured)."""
    return "" if isinstance(value, float) and math.isnan(value) else format(value, spec)


# ---------------------------------------------------------------------------------------------- process timing
START_SLACK_S = 30.0  # the most a process may spend before litgpt's first import and still count as starting


def process_start_time() -> float:
    """When this process started, in seconds since the epoch (the clock of `time.time()`).

    On Linux: `/proc/self/stat`'s start time (clock ticks after boot, so to 1/SC_CLK_TCK s, usually 10 ms)
    against `CLOCK_BOOTTIME` now. Where that cannot be read or is not believed: the time `litgpt.utils` was
    imported, litgpt's first import (the `litgpt` package imports it before `litgpt.__main__` runs).
    """
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        # field 2, the command name, is in parentheses and may hold spaces: count the fields after its ")"
        start_ticks = int(stat[stat.rindex(b")") + 1 :].split()[19])  # field 22, starttime
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
        started = time.time() - age
        # a sandbox's clocks can disagree with /proc (seen: 373 s for a 3 s start); no interpreter takes
        # START_SLACK_S to reach litgpt's first import (litgpt.utils', not litgpt.__main__'s, which a long test
        # collection can delay past it), so an earlier start is not believed; nor one after that import
        if age >= 0 and started >= _IMPORTED_AT - START_SLACK_S:
            return min(started, _IMPORTED_AT)
    except (OSError, ValueError, IndexError, AttributeError):  # no /proc, another format, no CLOCK_BOOTTIME
        pass
    return _IMPORTED_AT


# ---------------------------------------------------------------------------------------------- upstream's helpers
# Functions upstream litgpt's users import from `litgpt.utils`, over this library's own pieces. They import other
# litgpt modules inside the function, so this module still imports none at import time.
def num_parameters(module: torch.nn.Module, requires_grad: Optional[bool] = None) -> int:
    """The number of parameters of `module` (a parameter shared by two modules, such as a tied LM head, once); with
    `requires_grad` True or False only those that do or do not require gradients. A bitsandbytes 4-bit parameter
    (packed two values a byte, with a `quant_state`) counts the values of the weight it stands for."""
    total = 0
    for p in module.parameters():
        if requires_grad is not None and p.requires_grad != requires_grad:
            continue
        quant_state = getattr(p, "quant_state", None)
        total += math.prod(quant_state.shape) if quant_state is not None else p.numel()
    return total


def load_checkpoint(fabric: Any, model: torch.nn.Module, checkpoint_path: PathLike, strict: bool = True) -> None:
    """Load the state dict in `checkpoint_path` (a `lit_model.pth`: plain, or wrapped as {"model": ...}) into
    `model`, strictly or not (strict=False: a base checkpoint into a LoRA model). Under Fabric's FSDP strategy the
    sharded model loads through `fabric.load_raw`; with any other strategy, or `fabric` None, the file is read by
    `litgpt.checkpoint.read_checkpoint_file` (memory-mapped; a missing or corrupt file is one line) and loaded
    with `model.load_state_dict`."""
    if fabric is not None and type(getattr(fabric, "strategy", None)).__name__ == "FSDPStrategy":
        fabric.load_raw(Path(checkpoint_path), model, strict=strict)
        return
    from litgpt.checkpoint import extract_state_dict, read_checkpoint_file

    state_dict = extract_state_dict(read_checkpoint_file(checkpoint_path), source=str(checkpoint_path))
    model.load_state_dict(state_dict, strict=strict)


def chunked_cross_entropy(
    logits: Union[torch.Tensor, list[torch.Tensor]],
    targets: torch.Tensor,
    chunk_size: int = 128,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Mean cross-entropy of `logits` (B, T, V) against `targets` (B, T) over the targets that are not
    `ignore_index` (0 when all are, as `litgpt.loss.linear_cross_entropy`), computed `chunk_size` rows at a time in
    float32 so no float32 copy of all the logits exists at once (chunk_size 0: in one piece). `logits` may also be a
    list of (B, t_i, V) pieces along T (an LM head applied in chunks). Training in this library computes the loss
    inside the model, fused with the LM head (`litgpt.loss`); this is for logits that already exist."""
    if isinstance(logits, (list, tuple)):
        widths = [piece.size(1) for piece in logits]
        if sum(widths) != targets.size(-1):
            raise ValueError(f"the logits pieces cover {sum(widths)} positions but targets has {targets.size(-1)}")
        pieces = [piece.reshape(-1, piece.size(-1)) for piece in logits]
        target_pieces = [t.reshape(-1) for t in targets.split(widths, dim=-1)]
    else:
        if logits.shape[:-1] != targets.shape:
            raise ValueError(f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)}: expected "
                             "logits (..., V) over targets (...)")
        flat, flat_targets = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
        if chunk_size < 0:
            raise ValueError(f"chunk_size must be >= 0, got {chunk_size}")
        step = chunk_size or max(flat.size(0), 1)
        pieces, target_pieces = list(flat.split(step)), list(flat_targets.split(step))
    total = sum(
        torch.nn.functional.cross_entropy(piece.float(), t, ignore_index=ignore_index, reduction="sum")
        for piece, t in zip(pieces, target_pieces)
    )
    count = sum((t != ignore_index).sum() for t in target_pieces)
    return total / torch.clamp(count, min=1)


class CycleIterator:
    """Iterates over `iterable` again and again (a new `iter(iterable)` each time, nothing cached: a data loader
    reshuffles each epoch); `epoch` counts the completed passes. An empty iterable is a ValueError."""

    def __init__(self, iterable: Any) -> None:
        self.iterable = iterable
        self.epoch = 0
        self._iterator: Optional[Iterator] = None

    def __next__(self) -> Any:
        if self._iterator is None:
            self._iterator = iter(self.iterable)
        try:
            return next(self._iterator)
        except StopIteration:
            self._iterator = iter(self.iterable)
            self.epoch += 1
            try:
                return next(self._iterator)
            except StopIteration:
                raise ValueError("CycleIterator: the iterable yields nothing; give it at least one item") from None

    def __iter__(self) -> "CycleIterator":
        return self


def get_default_supported_precision(training: bool) -> str:
    """The precision this library defaults to here: on CUDA with bf16, "bf16-mixed" for training and "bf16-true"
    for inference; otherwise (the CPU, or a GPU without bf16) "32-true", as `litgpt.training.resolve_precision` and
    `litgpt.generate.base.resolve_dtype` choose (bf16 on the CPU runs many times slower)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed" if training else "bf16-true"
    return "32-true"


def check_valid_checkpoint_dir(
    checkpoint_dir: PathLike,
    model_filename: str = "lit_model.pth",
    verbose: bool = True,
    raise_error: bool = False,
    ignore_tokenizer_files: bool = False,
) -> None:
    """Check that `checkpoint_dir` holds `model_filename`, model_config.yaml and (unless `ignore_tokenizer_files`)
    tokenizer.json or tokenizer.model. When something is missing: with `verbose` the one-line reason goes to
    stderr; then `raise_error` raises FileNotFoundError with it, else the process exits with status 1."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        problem = f"checkpoint directory {str(checkpoint_dir)!r} does not exist"
    else:
        missing = [name for name in (model_filename, "model_config.yaml") if not (checkpoint_dir / name).is_file()]
        if not ignore_tokenizer_files and not any((checkpoint_dir / n).is_file() for n in ("tokenizer.json",
                                                                                           "tokenizer.model")):
            missing.append("tokenizer.json or tokenizer.model")
        if not missing:
            return
        problem = f"checkpoint directory {str(checkpoint_dir)!r} has no {', '.join(missing)}"
        if model_filename in missing and (checkpoint_dir / f"{model_filename}.lora").is_file():
            problem += f"; it holds LoRA weights: run `litgpt merge_lora {checkpoint_dir}` to write {model_filename}"
    problem += "; download a model with `litgpt download ORG/NAME` or point at a `litgpt pretrain` output"
    if verbose:
        print(problem, file=sys.stderr)
    if raise_error:
        raise FileNotFoundError(problem)
    raise SystemExit(1)


CONFIG_FILE_NAMES = ("config.json", "generation_config.json", "model_config.yaml", "tokenizer.json",
                     "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                     "chat_template.json")


def copy_config_files(source_dir: PathLike, out_dir: PathLike) -> None:
    """Copy the model's config and tokenizer files (`CONFIG_FILE_NAMES`, those present) from `source_dir` into
    `out_dir` (created if missing), each file atomically."""
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in CONFIG_FILE_NAMES:
        source = source_dir / name
        if source.is_file():
            atomic_write(out_dir / name, lambda tmp, source=source: shutil.copyfile(source, tmp))


def save_config(config: Any, checkpoint_dir: PathLike) -> None:
    """Write `checkpoint_dir/model_config.yaml` atomically (`litgpt.checkpoint.save_config`)."""
    from litgpt.checkpoint import save_config as save

    save(config, checkpoint_dir)


def parse_devices(devices: Union[str, int]) -> int:
    """The number of devices `devices` asks for: "auto" or -1 is every CUDA device (1 without CUDA), a positive
    int is itself, GPU indices "0,1" are that many; anything else is a ValueError (`litgpt.args.check_devices`)."""
    from litgpt.args import check_devices

    devices = check_devices(devices)
    if devices in ("auto", -1):
        return torch.cuda.device_count() or 1
    if isinstance(devices, str):
        return len([p for p in devices.split(",") if p.strip()])
    return devices
