"""The `litgpt` command: a table of subcommand -> function, parsed by jsonargparse from typed signatures."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import sys
import typing
from typing import Callable, Union

# jsonargparse's own options, valid for every command
PARSER_OPTIONS = ("config", "print_config", "help")
FLAG_OPTIONS = ("--help", "-h", "--print_config")  # options that need no value after them

CommandTable = dict[str, Union[Callable, "CommandTable"]]


def commands() -> CommandTable:
    from litgpt.benchmark.attention import benchmark_attention
    from litgpt.benchmark.compare import compare
    from litgpt.benchmark.decode import benchmark_decode_command
    from litgpt.benchmark.pretrain import benchmark_pretrain
    from litgpt.generate.cli import main as generate
    from litgpt.generate.chat import main as chat
    from litgpt.pretrain import setup as pretrain
    from litgpt.scripts.download import download
    from litgpt.scripts.train_tokenizer import train_tokenizer

    return {
        "pretrain": pretrain,
        "train_tokenizer": train_tokenizer,
        "download": download,
        "generate": generate,
        "chat": chat,
        "benchmark": {"attention": benchmark_attention, "decode": benchmark_decode_command, "pretrain": benchmark_pretrain},
        "compare": compare,
    }


class CommandLineError(ValueError):
    """A command line that names an option the command does not have, or a command that does not exist."""


def resolve_command(table: CommandTable, argv: list[str]) -> tuple[list[str], Callable | None, list[str]]:
    """Walk the subcommand words of argv: (the words, the function they name or None, the remaining arguments)."""
    words: list[str] = []
    node: Union[Callable, CommandTable] = table
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
    return words, (node if callable(node) else None), rest


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


def main(argv: list[str] | None = None) -> None:
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
            argv = words + first_positional(fn, rest)
        CLI(table, args=argv, parser_class=OneLineErrorParser, as_positional=False)
    except (ValueError, FileNotFoundError, NotADirectoryError, ConnectionError) as e:
        if os.environ.get("LITGPT_DEBUG"):
            raise
        detail = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        sys.stderr.write(f"litgpt: error: {detail}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
