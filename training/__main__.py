"""CLI `python -m training {submit,list,show,cancel,resume,logs,evaluate,study,…}`: the parser and main()."""
from __future__ import annotations

import argparse
import importlib
import sys

from analysis.cli_common import pipe_safe
from analysis.types import SpectrascopeError

# sub-command -> the module whose add_parser(subparsers) adds it and whose run(args) -> int runs it, in help order.
# A new command module lists its COMMANDS here.
SUBCOMMANDS = {"submit": "training.cli_jobs", "list": "training.cli_jobs", "show": "training.cli_jobs",
               "cancel": "training.cli_jobs", "resume": "training.cli_jobs", "logs": "training.cli_jobs",
               "evaluate": "training.cli_evaluate",
               "study": "training.cli_study", "study-show": "training.cli_study", "study-list": "training.cli_study"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description="Background fine-tunes.")
    sub = parser.add_subparsers(dest="command", required=True)
    for path in dict.fromkeys(SUBCOMMANDS.values()):
        importlib.import_module(path).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the sub-command; a closed output pipe (`| head`) ends it quietly (pipe_safe)."""
    return pipe_safe(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return importlib.import_module(SUBCOMMANDS[args.command]).run(args)
    except SpectrascopeError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
