"""Command line: `python -m analysis {analyze,allocate,intruders} ...` (see each sub-command's --help)."""
from __future__ import annotations

import argparse
import importlib
import sys

from analysis.cli_common import pipe_safe

SUBCOMMANDS = {"analyze": "analysis.cli_analyze", "allocate": "analysis.cli_allocate",
               "intruders": "analysis.cli_intruders"}


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the sub-command; a closed output pipe (`| head`) ends it quietly (pipe_safe)."""
    return pipe_safe(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis",
                                     description="Spectrascope: weight spectra, heavy-tail α, allocations, intruders")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {cmd: importlib.import_module(path) for cmd, path in SUBCOMMANDS.items()}
    for mod in modules.values():
        mod.add_parser(sub)
    args = parser.parse_args(argv)
    return modules[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
