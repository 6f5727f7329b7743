"""Small helpers shared by several modules: atomic file and directory writes (and the one-line error of a write that
fails for want of space), device synchronization (and the warning for a decode step compiled on the CPU), the
yaml-safe record of a command's arguments, command-line argument checks (an output that would write over an input),
and when the process started.

This module imports no other litgpt module, so any of them can import it without an import cycle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fnmatch
import math
import os
import secrets
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import torch

PathLike = Union[str, Path]

_IMPORTED_AT = time.time()  # the last fallback of `process_start_time`


# ---------------------------------------------------------------------------------------------- atomic writes
# errno values of a write refused for want of space: a full file system, an exhausted quota
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# what torch's zip writer raises (a RuntimeError without an errno) when the file system refuses its bytes
TORCH_WRITE_FAILURES = ("PytorchStreamWriter failed", "file write failed", "unexpected pos")


class WriteError(OSError):
    """A file or directory that could not be written for want of space: its message is one line naming the path and
    the fix. What was there before is left as it was (the writes are atomic)."""


@contextlib.contextmanager
def no_space_errors(
    path: PathLike, fix: str = "free some space on that disk or write somewhere else"
) -> Iterator[None]:
    """Turn a write that fails for want of space (ENOSPC, EDQUOT, or torch's zip writer failing) into a `WriteError`
    naming `path` and `fix`; other errors pass through unchanged."""
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        if e.errno not in NO_SPACE_ERRNOS:
            raise
        raise WriteError(e.errno, f"no space left to write {path} ({e.strerror}); {fix}") from None
    except RuntimeError as e:
        if not any(failure in str(e) for failure in TORCH_WRITE_FAILURES):
            raise
        detail = " ".join(str(e).split())[:160]
        raise WriteError(errno.EIO, f"could not write {path} (torch: {detail}); the disk may be full: {fix}") from None


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` for a temporary file beside `path`, fsync it, then rename it onto `path`.

    A reader, or a run killed at any point, sees the old file or the complete new one, never a partial one. The
    temporary file (`.<name>.<pid>-<random>.tmp`, created by `write` with the usual permissions) is removed if
    `write` raises. A write that fails for want of space raises `WriteError` (one line naming `path`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with no_space_errors(path):
            write(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: PathLike, owner: bool = True) -> Iterator[Path]:
    """A temporary directory beside `path` (`.<name>.tmp`) to fill in the block; it replaces `path` on success.

    The previous `path`, if any, is renamed to `.<name>.old` and deleted only after the new directory is in
    place, so a kill at any point leaves the old directory or the complete new one (between the two renames:
    the old one as `.<name>.old`). A block that raises leaves `path` as it was and deletes the temporary
    directory. In a job of several processes one passes `owner=True` and does all file-system work; the others
    pass `owner=False` and get the same temporary path: they must wait (a barrier) until the owner has entered
    the block before writing into it.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if not owner:
        yield tmp
        return
    shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while writing
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


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
    """`command --key value ...` reproducing `args` (None values left out, lists written as '[a, b]')."""
    parts = [command]
    for key, value in args.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = "'[" + ", ".join(str(v) for v in value) + "]'"
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
