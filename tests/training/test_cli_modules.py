"""`python -m training`: the sub-commands live in training/cli_*.py; the library modules import no CLI code (no cycle)."""
from __future__ import annotations

import ast
import importlib
import importlib.util
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training import __main__ as cli_main

ROOT = Path(__file__).resolve().parents[2]
# The sub-commands other tools call, in help order: none may disappear or be renamed.
COMMANDS = ["submit", "list", "show", "cancel", "resume", "logs", "evaluate", "study", "study-show", "study-list"]
LIBRARY = ["training.evaluation", "training.study", "training.study_plan", "training.study_report",
           "training.base_jobs", "training.jobs"]


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)


@pytest.mark.parametrize("order", list(itertools.permutations(["training.__main__", "training.evaluation",
                                                                 "training.study"])), ids="-".join)
def test_imports_in_any_order_in_a_fresh_interpreter(order):
    code = "import importlib\n" + "".join(f"importlib.import_module({name!r})\n" for name in order) + \
        "import training.__main__ as m\nm.build_parser()\n"
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", LIBRARY)
def test_library_modules_import_no_cli_code(name):
    """Neither at import time nor inside a function: the CLI depends on the library, never the other way round."""
    tree = ast.parse(Path(importlib.util.find_spec(name).origin).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module} | \
        {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    froms = {(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
             for alias in node.names}
    cli = {m for m in imported if m == "argparse" or m == "training.__main__" or m.startswith("training.cli_")}
    cli |= {f"{m}.{n}" for m, n in froms if m == "training" and (n == "__main__" or n.startswith("cli_"))}
    assert not cli, f"{name} imports CLI code: {sorted(cli)}"


def test_every_command_module_adds_and_runs_its_commands():
    modules = {path: importlib.import_module(path) for path in dict.fromkeys(cli_main.SUBCOMMANDS.values())}
    for path, module in modules.items():
        assert list(module.COMMANDS) == [c for c, p in cli_main.SUBCOMMANDS.items() if p == path]
        assert callable(module.add_parser) and callable(module.run)
        assert (module.__doc__ or "").strip() and "\n" not in module.__doc__.strip()


def test_help_lists_the_same_sub_commands_as_before():
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "training", "--help"], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "{" + ",".join(COMMANDS) + "}" in proc.stdout
    parser = cli_main.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == COMMANDS


@pytest.mark.parametrize("argv, flags", [
    (["submit", "--method", "lora"], {"model", "task", "allocation_file", "rank", "epochs", "max_steps", "lr", "seed",
                                      "batch_size", "max_length", "max_train_rows", "max_eval_rows", "max_test_rows",
                                      "eval_every", "gpus", "cpu_processes", "set", "name", "trust_remote_code",
                                      "wait", "backend", "partition", "nodes", "gpus_per_node", "time",
                                      "account", "address", "mlflow_uri", "no_mlflow", "checkpoint_every",
                                      "keep_checkpoints"}),
    (["list"], {"json"}), (["show", "1"], {"id"}), (["cancel", "1"], {"id", "grace"}), (["logs", "1"], {"id", "lines"}),
    (["evaluate"], {"run_id", "base", "task", "split", "recompute", "set", "trust_remote_code", "harness", "tasks",
                    "include_path", "limit", "num_fewshot", "json"}),
    (["study"], {"model", "task", "budget", "seeds", "max_steps", "beta", "methods", "set", "no_base", "wait", "json",
                 "trust_remote_code"}),
    (["study-show", "1"], {"id", "json", "test_only"}), (["study-list"], set()),
])
def test_each_command_keeps_its_options(argv, flags):
    args = vars(cli_main.build_parser().parse_args(argv))
    assert set(args) - {"command", "method"} == flags


def test_set_values_are_json_when_they_can_be():
    from analysis.types import SpectrascopeError
    from training.cli_common import parse_set

    assert parse_set(["a=1", "b=true", "c=text", "d=[1, 2]", " e =x=y"]) == \
        {"a": 1, "b": True, "c": "text", "d": [1, 2], "e": "x=y"}
    with pytest.raises(SpectrascopeError, match="KEY=VALUE"):
        parse_set(["novalue"])
