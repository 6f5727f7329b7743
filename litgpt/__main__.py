"""The `litgpt` command: a table of subcommand -> function, parsed by jsonargparse from typed signatures."""

from __future__ import annotations

import os
import sys
from typing import Callable


def commands() -> dict[str, Callable]:
    from litgpt.benchmark.attention import benchmark_attention
    from litgpt.benchmark.compare import compare
    from litgpt.benchmark.decode import benchmark_decode_command
    from litgpt.benchmark.pretrain import benchmark_pretrain
    from litgpt.generate.base import main as generate
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


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import CLI, ArgumentParser, set_parsing_settings

    class OneLineErrorParser(ArgumentParser):
        """Bad arguments end in one line naming the problem, not a page of usage (`--help` shows that)."""

        def error(self, message: str, ex: Exception | None = None) -> None:
            if os.environ.get("LITGPT_DEBUG") and ex is not None:
                raise ex
            detail = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
            sys.stderr.write(f"litgpt: error: {detail} (see --help)\n")
            raise SystemExit(2)

    set_parsing_settings(parse_optionals_as_positionals=True)  # `litgpt pretrain pythia-160m-mla`
    try:
        CLI(commands(), args=argv, parser_class=OneLineErrorParser)
    except (ValueError, FileNotFoundError, NotADirectoryError, ConnectionError) as e:
        if os.environ.get("LITGPT_DEBUG"):
            raise
        sys.stderr.write(f"litgpt: error: {e}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
