"""The `litgpt` command: a table of subcommand -> function, parsed by jsonargparse from typed signatures.

The table names each command by import path (`"litgpt.generate.cli:main"`): the subcommand words are resolved
first and only that command's module is imported, so `litgpt generate` does not pay for the modules of the
other commands. Only the help screens that list commands (`litgpt --help`, `litgpt benchmark --help`) import
every command below them, for the one-line descriptions.

Exit codes: 0 done; 2 an error the command reports in one line `litgpt: error: ...` (bad input, a path that does not
exist, an output that would write over an input, a disk with no space left for a checkpoint); 130 interrupted
(Ctrl-C: what was printed so far stays, without a traceback). `python -m litgpt.scripts.X` behaves the same
(`run_script`). LITGPT_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import inspect
import json
import logging
import math
import os
import re
import sys
import typing
from typing import Any, Callable, Iterator, Optional, Union

# jsonargparse's own options, valid for every command
PARSER_OPTIONS = ("config", "print_config", "help")
FLAG_OPTIONS = ("--help", "-h", "--print_config")  # options that need no value after them

# Commands whose process has nothing left to clean up once they return: the `litgpt` executable ends them without the
# interpreter's teardown (module finalizers, captured CUDA graphs, the CUDA context), which took 0.5-0.6 s after
# `litgpt generate`'s last token on an H200 (benchmarks/results/history.md).
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
    "convert_to_litgpt": "litgpt.scripts.convert_hf_checkpoint:convert_hf_checkpoint",
    "convert_from_litgpt": "litgpt.scripts.convert_lit_checkpoint:convert_lit_checkpoint",
    "convert_pretrained_checkpoint": "litgpt.scripts.convert_pretrained_checkpoint:convert_pretrained_checkpoint",
    "train_tokenizer": "litgpt.scripts.train_tokenizer:train_tokenizer",
    "download": "litgpt.scripts.download:download",
    "generate": "litgpt.generate.cli:main",
    "chat": "litgpt.generate.chat:main",
    "serve": "litgpt.serve.cli:serve",
    "benchmark": {
        "attention": "litgpt.benchmark.attention:benchmark_attention",
        "decode": "litgpt.benchmark.decode:benchmark_decode_command",
        "pretrain": "litgpt.benchmark.pretrain:benchmark_pretrain",
        "generate": "litgpt.benchmark.generate:benchmark_generate",
        "finetune": "litgpt.benchmark.finetune:benchmark_finetune",
        "serve": "litgpt.benchmark.serve:benchmark_serve",
        "cache_loss": "litgpt.benchmark.cache_loss:benchmark_cache_loss",
    },
    "compare": "litgpt.benchmark.compare:compare",
    "evaluate": "litgpt.evaluate:evaluate",
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


# Mapping options whose whole value merges into what is there (the --config yaml's) field by field; their command
# converts each field's command-line text to the field's type (`litgpt.pretrain.typed_model_config`)
MERGED_MAPPINGS = ("model_config",)


def mapping_options(fn: Callable) -> set[str]:
    """`--name` of every parameter of `fn` typed as a mapping and named in MERGED_MAPPINGS (`model_config`)."""
    hints = typing.get_type_hints(fn)
    return {f"--{name}" for name in inspect.signature(fn).parameters
            if name in MERGED_MAPPINGS and _is_mapping(hints.get(name))}


def _is_mapping(hint: Any) -> bool:
    if hint is dict or typing.get_origin(hint) is dict:
        return True
    return typing.get_origin(hint) is Union and any(_is_mapping(arg) for arg in typing.get_args(hint))


def expand_mappings(fn: Callable, args: list[str]) -> list[str]:
    """`--model_config '{n_layer: 2}'` -> `--model_config.n_layer=2`: a mapping given whole overrides the fields it
    names and keeps the others (of the --config yaml or an earlier option), as `--model_config.n_layer 2` does.

    Values are passed as command-line text (a string as it is, anything else as JSON); the command converts each to
    its field's type. A value that is not a mapping (`null`, a file) is passed on unchanged."""
    import yaml

    options = mapping_options(fn)
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        option, eq, value = arg.partition("=")
        if arg == "--":
            out += args[i:]
            break
        if option not in options or (not eq and i + 1 >= len(args)):
            out.append(arg)
            i += 1
            continue
        if not eq:
            value = args[i + 1]
        try:
            mapping = yaml.safe_load(value)
        except yaml.YAMLError:
            mapping = None
        if isinstance(mapping, dict) and all(isinstance(k, str) for k in mapping):
            out += [f"{option}.{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in mapping.items()]
        else:
            out += [arg] if eq else [arg, value]
        i += 1 if eq else 2
    return out


# What jsonargparse says about a value of the wrong type: the lines that only repeat "not that type" (the useful
# line, if any, is another one: a class's own ValueError)
_TYPE_NOISE = ("Expected a", "Does not validate against", "Parser key", "Not a valid subclass",
               "Problem with given class_path", "Unable to load config", "Given value", "Subtypes:", "Errors:")
_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text", "NoneType": "null",
               "tuple": "a list like [a, b]", "list": "a list like [a, b]", "dict": "a mapping like {key: value}",
               "Path": "a path", "PathLike": "a path"}


def one_line_detail(message: str, argv: list[str] = ()) -> str:
    """jsonargparse's several-line report of a bad value, as one line that names the option, what it takes and what
    was given (`--train.max_steps expects an integer or null, got 'abc'`), or, where a class refused the value, the
    class's own one-line message; any other message with its lines joined."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    joined = " ".join(lines)
    key = re.match(r'Parser key "([^"]+)":', joined)
    if key is None and "Does not validate against any of the Union subtypes" not in joined:
        return joined
    own = [line[2:].strip() for line in lines if line.startswith("- ")]
    own = [line for line in own if not line.startswith(_TYPE_NOISE) and "Expected a path but" not in line]
    if own:
        return own[0] if key is None else f"--{_argv_option(key.group(1), argv)}: {own[0]}"
    given = re.search(r"(?:Given value|Got value): (.*)$", str(message).strip())
    if key is None or given is None:
        return joined
    option, value = _argv_option(key.group(1), argv), given.group(1).strip()
    described = re.sub(r"Given value type: <class '[\w.]+'>", "", joined)  # the type of the text given, not wanted
    types = re.findall(r"<class '([\w.]+)'>|typing\.Literal\[([^\]]*)\]", described)
    wanted: list[str] = []
    for cls, literal in types:
        name = cls.rsplit(".", 1)[-1]
        if cls == "torch.Tensor":
            continue
        text = f"one of {literal.replace(chr(39), '')}" if literal else _TYPE_NAMES.get(name) or _subclasses(cls)
        if text not in wanted:
            wanted.append(text)
    if "a number" in wanted and _non_finite(value):
        from litgpt.args import VALUE_RANGES

        what = VALUE_RANGES.get(option.rsplit(".", 1)[-1], "a finite number")
        return f"--{option} must be {what}, got {value}"
    if not wanted:
        return joined
    return f"--{option} expects {' or '.join(wanted)}, got {value!r}"


def _subclasses(class_path: str) -> str:
    """`a litgpt.data.base.DataModule subclass`, with the names of this package's data modules of that kind (what
    `--data NAME` takes; a class_path of upstream litgpt that has none here is refused with this list)."""
    text = f"a {class_path} subclass"
    module_name, _, name = class_path.rpartition(".")
    if not module_name.startswith("litgpt.data"):
        return text
    import litgpt.data

    base = getattr(importlib.import_module(module_name), name, None)
    found, todo = set(), list(base.__subclasses__()) if isinstance(base, type) else []
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo += cls.__subclasses__()
    names = sorted(cls.__name__ for cls in found if getattr(litgpt.data, cls.__name__, None) is cls)
    return f"{text} ({', '.join(names)})" if names else text


def _argv_option(key: str, argv: list[str]) -> str:
    """The option as the command line spelled it: jsonargparse names a subclass's argument by its last part (`lr`
    for `--optimizer.lr` or `--optimizer.init_args.lr`)."""
    if "." in key:
        return key
    for arg in reversed(list(argv)):
        name = arg[2:].partition("=")[0] if arg.startswith("--") else ""
        if name == key or name.endswith(f".{key}"):
            return name
    return key


def _non_finite(value: str) -> bool:
    try:
        return not math.isfinite(float(value))
    except ValueError:
        return False


def one_line_error_parser(prog: str) -> type:
    """An ArgumentParser class whose errors are one line `prog: error: ...` and exit 2, not a page of usage."""
    from jsonargparse import ArgumentParser

    class OneLineErrorParser(ArgumentParser):
        """Bad arguments end in one line naming the problem, not a page of usage (`--help` shows that)."""

        def error(self, message: str, ex: Exception | None = None) -> None:
            if os.environ.get("LITGPT_DEBUG") and ex is not None:
                raise ex
            sys.stderr.write(f"{prog}: error: {one_line_detail(message, self.command_line)} (see --help)\n")
            raise SystemExit(2)

        command_line: list[str] = []  # the arguments parsed, to find an option's spelling in (`one_line_detail`)

    return OneLineErrorParser


# the errors a command reports in one line (ValueError: bad input; the others: a path that is not there, a network
# that is not), besides `litgpt.utils.WriteError` (no space left for a write)
ONE_LINE_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, NotADirectoryError, ConnectionError,
)


@contextlib.contextmanager
def one_line_errors(prog: str = "litgpt", argv: list[str] = ()) -> Iterator[None]:
    """Errors a command reports (`ONE_LINE_ERRORS`, a `WriteError`) end the process in one line `prog: error: ...`
    and exit 2; Ctrl-C ends it quietly with exit 130, after the output printed so far (the current line ended)."""
    from litgpt.utils import WriteError

    try:
        yield
    except KeyboardInterrupt:
        if os.environ.get("LITGPT_DEBUG"):
            raise
        _end_line()
        raise SystemExit(130) from None
    except (*ONE_LINE_ERRORS, WriteError) as e:
        if os.environ.get("LITGPT_DEBUG"):
            raise
        sys.stderr.write(f"{prog}: error: {one_line_detail(str(e), argv)}\n")
        raise SystemExit(2) from None


def _end_line() -> None:
    """After an interruption: end stdout's partial line (streamed text) and flush it; a closed pipe is ignored."""
    try:
        sys.stdout.write("\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> list[str]:
    """Run the command argv names (default: sys.argv[1:]); returns its subcommand words (`["benchmark", "decode"]`)."""
    from jsonargparse import CLI

    from litgpt.hub import resolve_checkpoint_options

    argv = sys.argv[1:] if argv is None else list(argv)
    parser_class = one_line_error_parser("litgpt")
    parser_class.command_line = argv
    with one_line_errors("litgpt", argv):
        table = commands()
        words, fn, rest = resolve_command(table, argv)
        if fn is not None:
            check_options(words, fn, rest)
            args = resolve_checkpoint_options(words, list(inspect.signature(fn).parameters), first_positional(fn, rest))
            argv = words + expand_mappings(fn, qualify_optimizer_names(fn, args))
        CLI(command_subtable(table, words, fn), args=argv, parser_class=parser_class, as_positional=False)
    return words


def run_command(word: str, argv: Optional[list[str]] = None) -> list[str]:
    """`python -m litgpt.scripts.merge_lora ARGS` for a script that is also a `litgpt` command: `litgpt merge_lora
    ARGS`, the same options and errors."""
    return main([word, *(sys.argv[1:] if argv is None else argv)])


def run_script(fn: Callable, argv: Optional[list[str]] = None, as_positional: bool = True) -> Any:
    """`python -m litgpt.scripts.X`: run `fn` as a command line would (jsonargparse), with the errors of `litgpt`
    commands: one line `X: error: ...` and exit 2 (bad arguments, refused input, no space left), exit 130 on Ctrl-C.
    Every script's `if __name__ == "__main__"` calls this."""
    from jsonargparse import CLI

    prog = fn.__name__
    argv = sys.argv[1:] if argv is None else list(argv)
    parser_class = one_line_error_parser(prog)
    parser_class.command_line = argv
    with one_line_errors(prog, argv):
        return CLI(fn, args=argv, parser_class=parser_class, as_positional=as_positional)


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
