"""Hub ids as checkpoint paths: `litgpt generate EleutherAI/pythia-160m` reads `checkpoints/EleutherAI/pythia-160m`,
where `litgpt download EleutherAI/pythia-160m` puts the model.

`resolve_checkpoint_dir` is the one rule; `litgpt.__main__.main` applies it to every checkpoint option of a command
(`CHECKPOINT_OPTIONS`) as the command line is parsed, and `LLM.load` to its argument. A path that exists is taken as
it is; an ORG/NAME that does not exist is `checkpoints/ORG/NAME` when that directory exists, and otherwise a one-line
error naming both paths and the download command. This module imports nothing heavy (it runs before every command).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Union

CHECKPOINTS_ROOT = Path("checkpoints")  # where `litgpt download` puts ORG/NAME (its --checkpoint_dir default)
# options that read a checkpoint (or tokenizer) directory, in the commands that have them
CHECKPOINT_OPTIONS = ("checkpoint_dir", "tokenizer_dir", "initial_checkpoint_dir", "pretrained_checkpoint_dir")
# commands whose option of that name is not a checkpoint to read (`litgpt download`'s --checkpoint_dir is the root
# it writes under)
NOT_RESOLVED = {"download": ("checkpoint_dir",)}
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # ORG/NAME, as the hub spells repository ids


def is_repo_id(text: str) -> bool:
    """Whether `text` is spelled as a hub repository id, ORG/NAME (two relative parts, neither `.` nor `..`)."""
    return bool(REPO_ID.fullmatch(str(text))) and not any(part in (".", "..") for part in str(text).split("/"))


def resolve_checkpoint_dir(
    path: Union[str, Path], option: Optional[str] = "checkpoint_dir", root: Union[str, Path] = CHECKPOINTS_ROOT
) -> Path:
    """`path` when it exists or is not spelled ORG/NAME; else `root/ORG/NAME` when that exists; else a
    FileNotFoundError (one line) naming both paths and `litgpt download ORG/NAME`. `option` names the argument in
    that message (`--checkpoint_dir`; None: "checkpoint directory")."""
    given = Path(path)
    if given.exists() or not is_repo_id(str(path)):
        return given
    downloaded = Path(root) / str(path)
    if downloaded.is_dir():
        return downloaded
    what = f"--{option} {str(path)!r}" if option else f"checkpoint directory {str(path)!r}"
    raise FileNotFoundError(
        f"{what}: neither {path} nor {downloaded} exists; download the model with `litgpt download {path}`, or "
        "point at a checkpoint directory"
    )


def resolve_checkpoint_options(words: list[str], parameters: list[str], args: list[str]) -> list[str]:
    """A command line's checkpoint options (`--checkpoint_dir ORG/NAME`, `--tokenizer_dir=ORG/NAME`) with each value
    resolved by `resolve_checkpoint_dir`; `parameters` are the command's, `words` its subcommand words."""
    skipped = NOT_RESOLVED.get(" ".join(words), ())
    options = {f"--{name}" for name in CHECKPOINT_OPTIONS if name in parameters and name not in skipped}
    out = list(args)
    for i in reversed(range(len(out))):  # a --config yaml's values: resolved ones follow it (later options win)
        option, eq, value = out[i].partition("=")
        if option == "--config" and (eq or i + 1 < len(out)):
            out[i + (0 if eq else 1) + 1:i + (0 if eq else 1) + 1] = _config_overrides(value if eq else out[i + 1],
                                                                                      options)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        option, eq, value = arg.partition("=")
        if option not in options or (not eq and i + 1 >= len(out)):
            continue
        value = value if eq else out[i + 1]
        if value in ("null", "None", ""):
            continue
        resolved = str(resolve_checkpoint_dir(value, option[2:]))
        if eq:
            out[i] = f"{option}={resolved}"
        else:
            out[i + 1] = resolved
    return out


def _config_overrides(config_file: str, options: set[str]) -> list[str]:
    """`--name=checkpoints/ORG/NAME` for each checkpoint option that the yaml `config_file` sets to a hub id naming a
    download (nothing for a file that cannot be read: the parser reports it)."""
    import yaml

    try:
        with open(config_file, encoding="utf-8") as f:
            values = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    if not isinstance(values, dict):
        return []
    out = []
    for option in sorted(options):
        value = values.get(option[2:])
        if isinstance(value, str) and value:
            resolved = resolve_checkpoint_dir(value, option[2:])
            if str(resolved) != value:
                out.append(f"{option}={resolved}")
    return out
