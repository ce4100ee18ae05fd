"""`python -m training {study,study-show,study-list}`: queue a study, wait for it, print its comparison table."""
from __future__ import annotations

import json
import sys
import time

from analysis.config import DEFAULT_MODEL
from training.cli_common import add_set_option, add_trust_flag, parse_set, progress_bar

COMMANDS = ("study", "study-show", "study-list")


def add_parser(sub) -> None:
    """`python -m training study …`, `study-show ID`, `study-list`."""
    from training.study_plan import DEFAULT_ARMS, METHODS

    p = sub.add_parser("study", help="queue the standard comparison: LoRA, MoE-LoRA uniform / MoLA / AlphaLoRA, "
                                     "full fine-tune, × seeds")
    p.add_argument("--model", help="model folder or built-in name (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--task", default="rotten_tomatoes", help="task name or file (default: rotten_tomatoes)")
    p.add_argument("--budget", type=int, help="MoE-LoRA experts over all layers (default: 5 × layers)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per method (default 3)")
    p.add_argument("--max-steps", type=int, help="optimizer steps per run (default: one epoch)")
    p.add_argument("--beta", type=float, default=2.5, help="AlphaLoRA β (default 2.5)")
    p.add_argument("--methods", help=f"comma-separated arms (default {','.join(DEFAULT_ARMS)}); any of "
                                     f"{','.join(METHODS)}")
    add_set_option(p, "training option for every job, e.g. --set max_train_rows=200 (repeatable)")
    p.add_argument("--no-base", action="store_true", help="skip the base model's baseline evaluation")
    p.add_argument("--wait", action="store_true", help="show progress on stderr and print the table at the end")
    p.add_argument("--json", action="store_true", help="with --wait: end with one JSON line (arms, paired "
                                                       "differences vs their reference, baselines with Wilson CIs)")
    add_trust_flag(p)                          # every job of the study (and its base evaluation) gets the opt-in

    p = sub.add_parser("study-show", help="the comparison table of a study (partial while it runs)")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true", help="the numeric table as JSON records")
    p.add_argument("--test-only", action="store_true", help="only the test metrics")

    sub.add_parser("study-list", help="studies, oldest first")


def run(args) -> int:
    """Run the study sub-command `args.command`."""
    return {"study": run_study, "study-show": run_show, "study-list": run_list}[args.command](args)


def run_study(args) -> int:
    from training import study
    from training.study_plan import DEFAULT_ARMS, StudySpec

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else list(DEFAULT_ARMS)
    options = parse_set(args.set)
    if getattr(args, "trust_remote_code", False):
        options["trust_remote_code"] = True
    spec = StudySpec(model=args.model, task=args.task, budget=args.budget, seeds=args.seeds,
                     max_steps=args.max_steps, beta=args.beta, methods=methods, options=options)
    record = study.start_study(spec, base_eval=not args.no_base)
    base = " and the base evaluation" if record.get("base_job") else ""
    print(f"study {record['id']}: {len(record['jobs'])} runs ({len(methods)} arms × {spec.seeds} seeds){base} "
          f"queued, roughly {record['plan']['seconds'] / 60:.0f} min on this machine; folder {record['folder']}",
          file=sys.stderr)
    if not args.wait:
        print(json.dumps({"study": record["id"], "jobs": [j["job"] for j in record["jobs"]],
                          "folder": record["folder"]}))
        return 0
    wait_study(record["id"])
    print(study.to_markdown(study.format_table(study.study_table(record["id"]), ("test",), describe=True)))
    if getattr(args, "json", False):
        from training.study_report import study_report

        print(json.dumps(study_report(record["id"])), flush=True)
    jobs = study.study_jobs(study.load_study(record["id"]))
    return 0 if all(j.status == "done" for j in jobs) else 1


def wait_study(study_id: int, poll: float = 1.0, out=None) -> dict:
    """Block until every job and the base evaluation of a study have ended, with a progress bar on stderr."""
    from training import study
    from training.jobs import JobStore

    store = JobStore()
    record = study.load_study(study_id)
    with progress_bar(f"study {study_id}", f"stopped waiting; study {study_id} goes on (python -m training "
                                           f"study-show {study_id})", out) as bar:
        while True:
            store.reconcile()
            jobs = study.study_jobs(record, store)
            totals, done_steps, current = 0, 0, None
            for job in jobs:
                lines = job.progress()
                total = ((lines[-1].get("total_steps") if lines else None) or job.config.get("max_steps")
                         or (record.get("plan") or {}).get("steps") or 0)
                totals += total
                done_steps += total if job.final else (lines[-1]["step"] if lines else 0)
                if job.status == "running":
                    current = job
            finished = sum(j.final for j in jobs)
            base_running = study.base_eval_running(record, store)
            bar.total, bar.n = max(totals, 1), done_steps
            what = f"running {current.name}" if current else ("base evaluation" if base_running else "")
            done, cancelled = sum(j.status == "done" for j in jobs), sum(j.status == "cancelled" for j in jobs)
            counts = f"{done} done / {len(jobs)} planned" + (f" ({cancelled} cancelled)" if cancelled else "")
            bar.set_description(f"study {study_id}: {counts} {what}".rstrip())
            bar.refresh()
            if finished == len(jobs) and not base_running:
                return record
            time.sleep(poll)


def run_show(args) -> int:
    from training import study

    table = study.study_table(args.id)
    if args.json:
        print(table.to_json(orient="records"))
        return 0
    from training.study_report import comparison_frame, paired_comparisons

    record = study.load_study(args.id)
    running = study.study_running(record)
    print(study.to_markdown(study.format_table(table, ("test",) if args.test_only else ("validation", "test"),
                                               describe=True)))
    pairs = paired_comparisons(record, study.study_jobs(record))
    if pairs:
        print("\nPaired test-accuracy differences (arm − reference; bootstrap over the same test rows and seeds):")
        print(study.to_markdown(comparison_frame(pairs)))
    if running:
        print(f"(partial: study {args.id} is still running)", file=sys.stderr)
    return 0


def run_list(args) -> int:
    from training import study

    print(f"{'id':>4}  {'jobs':>4}  {'model':<24}  {'task':<16}  created")
    for record in study.list_studies():
        spec = record["spec"]
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(record["created"]))
        print(f"{record['id']:>4}  {len(record['jobs']):>4}  {spec['model'] or DEFAULT_MODEL:<24}  "
              f"{spec['task']:<16}  {created}")
    return 0
