"""Atomic file and directory writes, and the one-line error of a write that fails for want of space.

Imports no other litgpt module, so every module that writes files (checkpoints, configs, results) can use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import Callable, Iterator, Union

PathLike = Union[str, Path]

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
