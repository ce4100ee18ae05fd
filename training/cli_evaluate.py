"""`python -m training evaluate`: score a finished run or a base model's baselines; the numbers go to SQLite."""
from __future__ import annotations

import json
import sys

from analysis.types import SpectrascopeError
from training.cli_common import add_set_option, add_trust_flag, parse_set

COMMANDS = ("evaluate",)


def add_parser(sub) -> None:
    """`python -m training evaluate [--run ID | --base MODEL] [--task T] [--split validation|test|both]`."""
    p = sub.add_parser("evaluate", help="evaluate a finished run or a base model's baselines; stored in SQLite")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--run", dest="run_id", type=int, help="job id of a finished run")
    who.add_argument("--base", metavar="MODEL", help="a base model: linear probe + untrained head (encoders), "
                                                     "zero-shot (decoders); default: the embedded MiniLM")
    p.add_argument("--task", help="task name or file (default: the run's task, or rotten_tomatoes)")
    p.add_argument("--split", default="validation", choices=["validation", "test", "both"],
                   help="validation for selection (default), test to report once")
    p.add_argument("--recompute", action="store_true", help="recompute even when stored numbers exist")
    add_set_option(p, "base models: row limits etc. as training options, e.g. --set max_eval_rows=100")
    add_trust_flag(p, "base models: run the model folder's own Python code (config.json auto_map); a run uses "
                      "the choice recorded in its manifest")


def run(args) -> int:
    """Evaluate and print one JSON object per line: {"run", "task", "split", "metrics"}."""
    from training import evaluation

    splits = evaluation.SPLITS if args.split == "both" else (args.split,)
    options = parse_set(args.set)
    if getattr(args, "trust_remote_code", False):
        if args.run_id is not None:
            raise SpectrascopeError("--trust-remote-code applies to --base only: a run uses the choice recorded in "
                                    "its manifest")
        options["trust_remote_code"] = True
    for split in splits:
        if args.run_id is not None:
            if options:
                raise SpectrascopeError("--set applies to --base only: a run is evaluated on its own rows")
            metrics = evaluation.evaluate_run(args.run_id, split, args.task, recompute=args.recompute)
            print(json.dumps({"run": str(args.run_id), "task": evaluation._task_name(args.task) if args.task else None,
                              "split": split, "metrics": metrics}))
        else:
            task = args.task or "rotten_tomatoes"
            for run_id, metrics in evaluation.evaluate_base(args.base, task, split, options,
                                                            recompute=args.recompute).items():
                print(json.dumps({"run": run_id, "task": evaluation._task_name(task), "split": split,
                                  "metrics": metrics}))
        sys.stdout.flush()
    return 0
