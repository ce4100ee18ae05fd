"""`python -m training evaluate`: score a run or a base model (our harness or lm-eval); numbers go to SQLite."""
from __future__ import annotations

import json
import sys

from analysis.types import SpectrascopeError
from training.cli_common import add_set_option, add_trust_flag, parse_set

COMMANDS = ("evaluate",)
HARNESSES = ("spectrascope", "lm_eval")
LM_EVAL_SET = ("batch_size", "device")          # --set keys the lm_eval harness takes


def add_parser(sub) -> None:
    """`python -m training evaluate [--run ID | --base MODEL] [--task T] [--split validation|test|both]`, or
    `... --harness lm_eval --tasks T1,T2 [--include-path DIR] [--limit N] [--num-fewshot K] [--json]`."""
    p = sub.add_parser("evaluate", help="evaluate a finished run or a base model's baselines; stored in SQLite")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--run", dest="run_id", type=int, help="job id of a finished run")
    who.add_argument("--base", metavar="MODEL", help="a base model: linear probe + untrained head (encoders), "
                                                     "zero-shot (decoders); default: the embedded MiniLM")
    p.add_argument("--task", help="task name or file (default: the run's task, or rotten_tomatoes)")
    p.add_argument("--split", choices=["validation", "test", "both"],
                   help="validation for selection (default), test to report once")
    p.add_argument("--recompute", action="store_true", help="recompute even when stored numbers exist")
    add_set_option(p, "base models: row limits etc. as training options, e.g. --set max_eval_rows=100; "
                      "--harness lm_eval: batch_size, device")
    add_trust_flag(p, "base models: run the model folder's own Python code (config.json auto_map); a run uses "
                      "the choice recorded in its manifest")
    lm = p.add_argument_group("lm-evaluation-harness (--harness lm_eval; docs/lm_eval.md)")
    lm.add_argument("--harness", choices=HARNESSES, default="spectrascope",
                    help="spectrascope: our own evaluation (default); lm_eval: lm-evaluation-harness on a causal "
                         "LM (run or base); always computed, stored with lm-eval's stderr")
    lm.add_argument("--tasks", help="lm-eval task names, comma-separated (shipped: spectrascope_rotten_tomatoes, "
                                    "spectrascope_trec, spectrascope_hamlet)")
    lm.add_argument("--include-path", metavar="DIR", help="a folder of your own lm-eval task YAMLs (local data)")
    lm.add_argument("--limit", type=int, metavar="N", help="score only the first N documents of each task")
    lm.add_argument("--num-fewshot", type=int, metavar="K", help="few-shot examples (default: the task's, 0 for "
                                                                "the shipped ones)")
    lm.add_argument("--json", action="store_true", help="print one JSON object as the last line: lm-eval's "
                                                       "results and lm_eval_version")


def run(args) -> int:
    """Evaluate and print one JSON object per line: {"run", "task", "split", "metrics"} (lm_eval: see run_lm_eval)."""
    from training import evaluation

    if args.harness == "lm_eval":
        return run_lm_eval(args)
    for flag, value in (("--tasks", args.tasks), ("--include-path", args.include_path), ("--limit", args.limit),
                        ("--num-fewshot", args.num_fewshot), ("--json", args.json or None)):
        if value is not None:
            raise SpectrascopeError(f"{flag} applies to --harness lm_eval; our own evaluation takes --task and "
                                    f"--split")
    splits = evaluation.SPLITS if args.split == "both" else (args.split or "validation",)
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


def run_lm_eval(args) -> int:
    """lm-evaluation-harness on a run or a base model; stored in the lm_eval_results table. Prints a table, or
    with --json one JSON object as the last line: {"run", "results" (lm-eval's own), "lm_eval_version", ...}."""
    import logging

    from training import lm_eval_harness as harness

    if args.task or args.split:
        raise SpectrascopeError("--harness lm_eval takes --tasks T1,T2 (lm-eval task names), not --task / --split: "
                                "the shipped tasks score their test split")
    if args.run_id is None and not args.base:
        raise SpectrascopeError("--harness lm_eval needs --run ID or --base MODEL (e.g. --base SmolLM2-135M-Instruct)")
    if not args.tasks:
        raise SpectrascopeError(f"--harness lm_eval needs --tasks, e.g. --tasks {','.join(harness.SHIPPED[:2])}")
    options = parse_set(args.set)
    bad = sorted(set(options) - set(LM_EVAL_SET))
    if bad:
        raise SpectrascopeError(f"--set {bad[0]} does not apply to --harness lm_eval: it takes "
                                f"{', '.join(LM_EVAL_SET)}")
    if args.run_id is not None and (getattr(args, "trust_remote_code", False) or "device" in options):
        raise SpectrascopeError("--trust-remote-code and --set device apply to --base only: a run uses its manifest")
    logging.getLogger("lm_eval").setLevel(logging.ERROR)       # its notes on pre-loaded models are not for users
    batch = options.get("batch_size", harness.BATCH_SIZE)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise SpectrascopeError(f"--set batch_size must be a positive integer, got {batch!r}")
    if options.get("device", "auto") not in ("auto", "cpu", "cuda"):
        raise SpectrascopeError(f"--set device must be auto, cpu or cuda, got {options['device']!r}")
    if args.run_id is not None:
        out = harness.evaluate_job(args.run_id, args.tasks, args.include_path, args.limit, args.num_fewshot, batch)
    else:
        out = harness.evaluate_base(args.base, args.tasks, args.include_path, args.limit, args.num_fewshot,
                                    bool(getattr(args, "trust_remote_code", False)),
                                    str(options.get("device", "auto")), batch)
    if args.json:
        print(json.dumps(out))
    else:
        print(results_table(out))
    sys.stdout.flush()
    return 0


def results_table(out: dict) -> str:
    """lm-eval's results as plain lines: task, metric, value ± stderr, documents scored."""
    lines = [f"lm-eval {out['lm_eval_version']} · {out['run']}" +
             (f" · --limit {out['limit']}: the first {out['limit']} documents of each task" if out["limit"] else "")]
    for task, metrics in out["results"].items():
        n = (out.get("n-samples", {}).get(task) or {}).get("effective")
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            err = metrics.get(f"{metric}_stderr,{filt}")
            err = f" ± {err:.4f}" if isinstance(err, (int, float)) else ""
            lines.append(f"  {task:<32} {metric + ('' if filt == 'none' else f' ({filt})'):<20} {value:.4f}{err}"
                         + (f"  (n = {n})" if n is not None else ""))
    return "\n".join(lines)
