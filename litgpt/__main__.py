"""The `litgpt` command: a table of subcommand -> function, parsed by jsonargparse from typed signatures.

The table names each command by import path (`"litgpt.generate.cli:main"`): the subcommand words are resolved
first and only that command's module is imported, so `litgpt generate` does not pay for the modules of the
other commands. Only the help screens that list commands (`litgpt --help`, `litgpt benchmark --help`) import
every command below them, for the one-line descriptions.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import logging
import os
import sys
import typing
from typing import Callable, Union

# jsonargparse's own options, valid for every command
PARSER_OPTIONS = ("config", "print_config", "help")
FLAG_OPTIONS = ("--help", "-h", "--print_config")  # options that need no value after them

# Commands whose process has nothing left to clean up once they return: the `litgpt` executable ends them without the
# interpreter's teardown (module finalizers, captured CUDA graphs, the CUDA context), which took 0.5-0.6 s after
# `litgpt generate`'s last token on an H200 (benchmarks/RESULTS.md, issue 15).
EXIT_WITHOUT_TEARDOWN = ("generate", "chat")

# a command is a function, or the import path "package.module:function" of one
Command = Union[Callable, str]
CommandTable = dict[str, Union[Command, "CommandTable"]]

COMMANDS: CommandTable = {
    "pretrain": "litgpt.pretrain:setup",
    "finetune_lora": "litgpt.finetune.lora:setup",
    "finetune": "litgpt.finetune.lora:setup",  # upstream litgpt's alias of finetune_lora
    "finetune_full": "litgpt.finetune.full:setup",
    "merge_lora": "litgpt.scripts.merge_lora:merge_lora",
    "convert_to_mla": "litgpt.scripts.convert_to_mla:convert_to_mla",
    "train_tokenizer": "litgpt.scripts.train_tokenizer:train_tokenizer",
    "download": "litgpt.scripts.download:download",
    "generate": "litgpt.generate.cli:main",
    "chat": "litgpt.generate.chat:main",
    "benchmark": {
        "attention": "litgpt.benchmark.attention:benchmark_attention",
        "decode": "litgpt.benchmark.decode:benchmark_decode_command",
        "pretrain": "litgpt.benchmark.pretrain:benchmark_pretrain",
        "generate": "litgpt.benchmark.generate:benchmark_generate",
        "finetune": "litgpt.benchmark.finetune:benchmark_finetune",
    },
    "compare": "litgpt.benchmark.compare:compare",
}


def commands() -> CommandTable:
    """The command table: subcommand word -> import path of its function (or a table of subcommands).

    Nothing is imported; `load_command` imports one entry, `load_table` every entry of a (sub)table.
    """
    def copy(table: CommandTable) -> CommandTable:
        return {word: copy(node) if isinstance(node, dict) else node for word, node in table.items()}

    return copy(COMMANDS)


def load_command(command: Command) -> Callable:
    """The function a table entry names: imported from its `"module:function"` path, or the entry itself."""
    if callable(command):
        return command
    module_name, sep, attribute = command.partition(":")
    if not sep or not module_name or not attribute:
        raise TypeError(f"a command is a function or a 'package.module:function' path, got {command!r}")
    function = getattr(importlib.import_module(module_name), attribute)
    if not callable(function):
        raise TypeError(f"{command!r} names {type(function).__name__}, not a function")
    return function


def load_table(table: CommandTable) -> dict:
    """A copy of `table` with every entry imported (what jsonargparse needs to list the commands)."""
    return {word: load_table(node) if isinstance(node, dict) else load_command(node) for word, node in table.items()}


class CommandLineError(ValueError):
    """A command line that names an option the command does not have, or a command that does not exist."""


def resolve_command(table: CommandTable, argv: list[str]) -> tuple[list[str], Callable | None, list[str]]:
    """Walk the subcommand words of argv: (the words, the function they name or None, the remaining arguments).

    Only the named function's module is imported; None when the words stop at a table (`litgpt benchmark`).
    """
    words: list[str] = []
    node: Union[Command, CommandTable] = table
    rest = list(argv)
    while isinstance(node, dict) and rest and not rest[0].startswith("-"):
        word = rest.pop(0)
        if word not in node:
            close = difflib.get_close_matches(word, list(node), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            where = " ".join(["litgpt", *words])
            raise CommandLineError(f"`{where}` has no command {word!r}{hint}; choose one of {', '.join(node)}")
        words.append(word)
        node = node[word]
    return words, (None if isinstance(node, dict) else load_command(node)), rest


def option_names(fn: Callable) -> dict[str, list[str]]:
    """Top-level option names of a command -> the field names of those that are dataclass groups (`--train.*`)."""
    hints = typing.get_type_hints(fn)
    names: dict[str, list[str]] = {name: [] for name in PARSER_OPTIONS}
    for name in inspect.signature(fn).parameters:
        annotation = hints.get(name)
        fields = [f.name for f in dataclasses.fields(annotation)] if dataclasses.is_dataclass(annotation) else []
        names[name] = fields
    return names


def check_options(words: list[str], fn: Callable, args: list[str]) -> None:
    """Reject an option the command does not have, naming the closest one (jsonargparse checks the values).

    Nested names are checked where the group is a dataclass (`--train.max_steps`); subclass groups (`--data.*`,
    `--optimizer.*`) depend on the class chosen, and jsonargparse rejects their unknown keys itself.
    """
    names = option_names(fn)
    command = " ".join(["litgpt", *words])
    for arg in args:
        if arg == "--":
            break
        if not arg.startswith("--"):
            continue
        name = arg[2:].split("=", 1)[0]
        head, _, nested = name.partition(".")
        if head in names and (not nested or not names[head] or nested.split(".")[0] in names[head]):
            continue
        candidates = list(names) + [f"{group}.{f}" for group, fields in names.items() for f in fields]
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
        hint = f" (did you mean '--{close[0]}'?)" if close else ""
        raise CommandLineError(f"unrecognized option '--{name}' for `{command}`{hint}; see `{command} --help`")


def qualify_optimizer_names(fn: Callable, args: list[str]) -> list[str]:
    """`--optimizer AdamW` -> `--optimizer torch.optim.AdamW` for every optimizer option of the command: jsonargparse
    resolves a bare class name among all loaded Optimizer subclasses, which is ambiguous once another library defining
    an `AdamW` (bitsandbytes) has been imported in the process; a name means torch.optim's, as in `OptimizerSpec`."""
    import torch.optim

    hints = typing.get_type_hints(fn)
    from litgpt.args import OptimizerArg

    options = {f"--{name}" for name in inspect.signature(fn).parameters if hints.get(name) == OptimizerArg}
    out = list(args)
    for i, arg in enumerate(out):
        option, eq, value = arg.partition("=")
        if option not in options:
            continue
        index = i if eq else i + 1
        value = value if eq else (out[i + 1] if i + 1 < len(out) else "")
        cls = getattr(torch.optim, value, None) if value.isidentifier() else None
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer):
            out[index] = f"{option}=torch.optim.{value}" if eq else f"torch.optim.{value}"
    return out


def first_positional(fn: Callable, args: list[str]) -> list[str]:
    """A command's first parameter may come as a bare first argument (`litgpt generate out/final`, `litgpt pretrain
    pythia-160m-mla`); it is passed on as `--checkpoint_dir=out/final`. Any other bare argument is an error."""
    first = next(iter(inspect.signature(fn).parameters))
    out, expects_value, seen_bare = [], False, False
    for i, arg in enumerate(args):
        if arg == "--":
            out += args[i + 1 :]
            break
        if arg.startswith("-") and not _is_number(arg):
            expects_value = "=" not in arg and arg not in FLAG_OPTIONS
            out.append(arg)
        elif expects_value:
            expects_value = False
            out.append(arg)
        elif not seen_bare:
            seen_bare = True
            out.append(f"--{first}={arg}")
        else:
            raise CommandLineError(f"unexpected argument {arg!r}; options are written --name value (see --help)")
    return out


def _is_number(arg: str) -> bool:
    try:
        float(arg)
    except ValueError:
        return False
    return True


def command_subtable(table: CommandTable, words: list[str], fn: Callable | None) -> dict:
    """What jsonargparse needs for `litgpt WORDS ...`: the path of words down to `fn` alone, as nested one-entry
    tables (so the parser's prog still reads `litgpt generate`), or, where the words stop at a table, every
    command below it, imported for the help screen's one-line descriptions."""
    node: Union[Command, CommandTable] = table
    for word in words:
        node = node[word]  # type: ignore[index]  (resolve_command checked every word)
    sub: Union[Callable, dict] = fn if fn is not None else load_table(node)  # type: ignore[arg-type]
    for word in reversed(words):
        sub = {word: sub}
    return sub  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> list[str]:
    """Run the command argv names (default: sys.argv[1:]); returns its subcommand words (`["benchmark", "decode"]`)."""
    from jsonargparse import CLI, ArgumentParser

    class OneLineErrorParser(ArgumentParser):
        """Bad arguments end in one line naming the problem, not a page of usage (`--help` shows that)."""

        def error(self, message: str, ex: Exception | None = None) -> None:
            if os.environ.get("LITGPT_DEBUG") and ex is not None:
                raise ex
            detail = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
            sys.stderr.write(f"litgpt: error: {detail} (see --help)\n")
            raise SystemExit(2)

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        table = commands()
        words, fn, rest = resolve_command(table, argv)
        if fn is not None:
            check_options(words, fn, rest)
            argv = words + qualify_optimizer_names(fn, first_positional(fn, rest))
        CLI(command_subtable(table, words, fn), args=argv, parser_class=OneLineErrorParser, as_positional=False)
    except (ValueError, FileNotFoundError, NotADirectoryError, ConnectionError) as e:
        if os.environ.get("LITGPT_DEBUG"):
            raise
        detail = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        sys.stderr.write(f"litgpt: error: {detail}\n")
        raise SystemExit(2) from None
    return words


def cli() -> None:
    """The `litgpt` executable (and `python -m litgpt`): `main`, then, after a command of `EXIT_WITHOUT_TEARDOWN` that
    returned, the streams and logs flushed and the process ended at once (errors exit the usual way)."""
    words = main()
    if words[:1] and words[0] in EXIT_WITHOUT_TEARDOWN:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing more can be written anyway
                pass
        os._exit(0)


if __name__ == "__main__":
    cli()
