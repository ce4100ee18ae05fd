"""`python -m training {submit,list,show,cancel,resume,logs}`: queue background fine-tunes and follow them from the shell."""
from __future__ import annotations

import json
import sys
import time

from training.cli_common import add_set_option, add_trust_flag, parse_set, wait_for_job

COMMANDS = ("submit", "list", "show", "cancel", "resume", "logs")
# Options of `submit` that map one-to-one onto TrainConfig fields: (flag, field, type, help).
SUBMIT_OPTIONS = [
    ("--model", "model", str, "model folder or built-in name (default: the embedded all-MiniLM-L6-v2)"),
    ("--task", "task", str, "built-in task name or task file (default: rotten_tomatoes)"),
    ("--allocation", "allocation_file", str, "allocation JSON (rank_pattern for lora, experts for moe_lora)"),
    ("--rank", "rank", int, "LoRA / expert rank (default 8)"),
    ("--epochs", "epochs", int, "epochs over the training rows (default 1)"),
    ("--max-steps", "max_steps", int, "stop after this many optimizer steps (overrides --epochs)"),
    ("--lr", "lr", float, "learning rate (default: the method's, picked on validation: docs/methods_intruders.md)"),
    ("--seed", "seed", int, "random seed (default 0)"),
    ("--batch-size", "batch_size", int, "batch size (default 16)"),
    ("--max-length", "max_length", int, "tokens per example (default 64)"),
    ("--max-train-rows", "max_train_rows", int, "use at most this many training rows (default 1000)"),
    ("--max-eval-rows", "max_eval_rows", int, "validation rows (default 300)"),
    ("--max-test-rows", "max_test_rows", int, "test rows (default 1000)"),
    ("--eval-every", "eval_every", int, "steps between validation passes (default 50, 0: only at the end)"),
    ("--gpus", "gpus", int, "GPUs for this job; more than one runs data-parallel processes under torchrun"),
    ("--cpu-processes", "cpu_processes", int, "data-parallel processes on a machine without GPUs (default 1)"),
    ("--checkpoint-every", "checkpoint_every", int,
     "steps between checkpoints for `resume` (default: at each validation pass; 0: none)"),
    ("--keep-checkpoints", "keep_checkpoints", int, "newest checkpoints kept while the run goes (default 2)"),
    ("--mlflow-uri", "mlflow_uri", str,
     "MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///<data>/mlflow.db)"),
]


def backend_option_specs() -> list[tuple[str, str, type, str]]:
    """(flag, option key, type, help) of every remote backend's options (training.backends.OPTIONS)."""
    from training.backends import OPTIONS

    return [(flag, key, kind, f"{backend}: {text}") for backend, key, flag, _, kind, text in OPTIONS]


def backend_names() -> tuple[str, ...]:
    from training.backends import NAMES

    return NAMES


def backend_options(args) -> dict:
    """The backend options given on the command line (flags left unset are not passed)."""
    return {key: getattr(args, key) for _, key, _, _ in backend_option_specs() if getattr(args, key, None) is not None}


def add_parser(sub) -> None:
    """The job sub-commands: submit, list, show, cancel, logs."""
    from training import registry

    p = sub.add_parser("submit", help="queue a fine-tune and start it when a slot is free")
    p.add_argument("--method", required=True, choices=registry.names(),
                   help="; ".join(f"{m.name}: {m.summary}" for m in registry.all_methods()))
    for flag, dest, kind, text in SUBMIT_OPTIONS:
        p.add_argument(flag, dest=dest, type=kind, help=text)
    add_set_option(p, "any other training option (value parsed as JSON when it can be), repeatable")
    p.add_argument("--name", help="run name: letters, digits, '_', '.', '-' (default: <method>-<task>)")
    add_trust_flag(p)
    p.add_argument("--no-mlflow", action="store_true", help="do not log this run to MLflow")
    p.add_argument("--wait", action="store_true", help="block until the job ends; print its result as JSON")
    p.add_argument("--backend", default="local", choices=backend_names(),
                   help="where the run runs: local (this machine, default), slurm (one Slurm job), ray (a Ray job)")
    for flag, dest, kind, text in backend_option_specs():
        p.add_argument(flag, dest=dest, type=kind, help=text)

    p = sub.add_parser("list", help="jobs, oldest first")
    p.add_argument("--json", action="store_true", help="one JSON array instead of a table")

    p = sub.add_parser("show", help="one job: row, last progress and result")
    p.add_argument("id", type=int)

    p = sub.add_parser("cancel", help="cancel a queued or running job")
    p.add_argument("id", type=int)
    p.add_argument("--grace", type=float, default=10.0, help="seconds before SIGTERM, then SIGKILL (default 10)")

    p = sub.add_parser("resume", help="continue a cancelled, lost or failed run from its last checkpoint")
    p.add_argument("id", type=int)
    p.add_argument("--wait", action="store_true", help="block until the job ends; print its result as JSON")

    p = sub.add_parser("logs", help="the worker log of a job")
    p.add_argument("id", type=int)
    p.add_argument("--lines", type=int, default=50)


def run(args) -> int:
    """Run the job sub-command `args.command`."""
    return {"submit": run_submit, "list": run_list, "show": run_show, "cancel": run_cancel,
            "resume": run_resume, "logs": run_logs}[args.command](args)


def submit_config(args) -> dict:
    """The training config a `submit` command line describes (unset flags keep the trainer's defaults)."""
    config = {"method": args.method}
    config.update({dest: getattr(args, dest) for _, dest, _, _ in SUBMIT_OPTIONS if getattr(args, dest) is not None})
    config.update(parse_set(args.set))
    if getattr(args, "trust_remote_code", False):
        config["trust_remote_code"] = True
    if getattr(args, "no_mlflow", False):
        config["mlflow"] = False
    return config


def run_submit(args) -> int:
    from training.jobs import JobStore

    store = JobStore()
    job = store.submit(submit_config(args), name=args.name, backend=args.backend, backend_options=backend_options(args))
    print(f"job {job.id} ({job.name}) {job.status}; run folder {job.run_dir}", file=sys.stderr)
    if not args.wait:
        print(json.dumps({"job": job.id, "name": job.name, "status": job.status, "run_dir": job.run_dir}))
        return 0
    return wait_and_summarise(store, job.id)


def wait_and_summarise(store, job_id: int) -> int:
    """`--wait`: follow the job to its end, print its outcome as one JSON line; 0 when it is done."""
    job = wait_for_job(store, job_id)
    result = job.result() or {}
    summary = {"job": job.id, "name": job.name, "status": job.status, "run_dir": job.run_dir,
               "metrics": result.get("test") or {}, "validation": result.get("validation") or {},
               "steps": result.get("steps"), "error": job.error}
    print(json.dumps(summary))
    return 0 if job.status == "done" else 1


def _ago(t: float | None) -> str:
    return "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def run_list(args) -> int:
    from training.jobs import JobStore

    jobs = JobStore().list()
    if args.json:
        print(json.dumps([j.to_dict() for j in jobs], default=str))
        return 0
    print(f"{'id':>4}  {'status':<9}  {'method':<8}  {'created':<19}  {'where':<14}  name")
    for job in jobs:
        print(f"{job.id:>4}  {job.status:<9}  {job.config.get('method', ''):<8}  {_ago(job.created):<19}  "
              f"{job.where:<14}  {job.name}")
    return 0


def run_show(args) -> int:
    from training.jobs import JobStore

    job = JobStore().get(args.id)
    if not job.final:
        JobStore().reconcile()
        job = JobStore().get(args.id)
    progress = job.progress()
    print(json.dumps({**job.to_dict(), "last_progress": progress[-1] if progress else None,
                      "result": job.result()}, indent=2, default=str))
    return 0


def run_cancel(args) -> int:
    from training.jobs import JobStore

    job = JobStore().cancel(args.id, grace=args.grace)
    print(f"job {job.id} {job.status}")
    return 0


def run_resume(args) -> int:
    from training.jobs import JobStore

    store = JobStore()
    job = store.resume(args.id)
    print(f"job {job.id} ({job.name}) {job.status}: resuming in {job.run_dir}", file=sys.stderr)
    if not args.wait:
        print(json.dumps({"job": job.id, "name": job.name, "status": job.status, "run_dir": job.run_dir}))
        return 0
    return wait_and_summarise(store, job.id)


def run_logs(args) -> int:
    from training.jobs import JobStore

    job = JobStore().get(args.id)
    text = ""
    if job.remote:           # the engine keeps a remote run's output (Ray's job logs); else the run folder's log
        from training import backends

        text = backends.get(job.backend).logs(job, args.lines)
    print(text or job.log_tail(args.lines))
    return 0
