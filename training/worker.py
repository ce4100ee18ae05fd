"""One background job: `python -m training.worker --job ID` trains, reports progress and records the outcome."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from analysis.types import SpectrascopeError
from training import checkpoint, run_layout, tracking
from training.jobs import JobStore

HEARTBEAT_S = 2.0


class Heartbeat(threading.Thread):
    """Every few seconds: the job's heartbeat in the database and the time in run_dir/heartbeat."""

    def __init__(self, store: JobStore, job_id: int, run_dir: Path):
        super().__init__(daemon=True)
        self.store, self.job_id, self.file = store, job_id, run_layout.heartbeat(run_dir)
        self.done = threading.Event()

    def beat(self) -> None:
        try:
            self.file.write_text(f"{time.time():.3f}\n")
            self.store.beat(self.job_id)
        except Exception as exc:  # noqa: BLE001 - a missed beat must never kill the run
            print(f"heartbeat failed: {exc}", file=sys.stderr)

    def run(self) -> None:
        while not self.done.wait(HEARTBEAT_S):
            self.beat()


def failure_reason(exc: BaseException) -> str:
    """Why a run failed, as one readable line: ours as said, anything else as its type and first line."""
    from training.model_check import one_line

    text = one_line(exc)
    if isinstance(exc, SpectrascopeError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text} (the traceback is in the run's log)" if text else type(exc).__name__


def wait_handed_over(store: JobStore, job_id: int, seconds: float = 30.0):
    """The job row; a remote run's worker can start before its launcher has marked the row running (the
    engine starts it within the launcher's transaction), so a queued remote job is given `seconds` to turn."""
    job = store.get(job_id)
    deadline = time.monotonic() + seconds
    while job.remote and job.status == "queued" and time.monotonic() < deadline:
        time.sleep(0.5)
        job = store.get(job_id)
    return job


def on_sigterm(terminated: threading.Event) -> None:
    """SIGTERM sets `terminated` (the run stops at its next step). Only the main thread may take signals: a rank
    run in another thread (a Ray Train worker) stops through the cancel flag and its engine instead."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: terminated.set())


def run_rank(store: JobStore, job_id: int) -> str:
    """A non-zero rank of a data-parallel job: train alongside rank 0, which records everything."""
    from training.trainer import train

    job = store.get(job_id)
    if job.status != "running":                      # rank 0 makes the same check and stops too
        return job.status
    run_dir = Path(job.run_dir)
    terminated = threading.Event()
    on_sigterm(terminated)
    cancel_flag = run_layout.cancel_flag(run_dir)
    result = train(job.config, run_dir, should_stop=lambda: terminated.is_set() or cancel_flag.exists(),
                   resume_from=checkpoint.latest(run_dir))
    return str(result.get("status"))


def run_job(store: JobStore, job_id: int) -> str:
    """Train job `job_id` (or evaluate the base model) and record progress, result and final status."""
    from training.base_jobs import is_base_eval, run_base_eval
    from training.trainer import train

    job = wait_handed_over(store, job_id)
    run_dir = Path(job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if job.status != "running":
        print(f"job {job_id} is {job.status}, not running: nothing to do", file=sys.stderr)
        return job.status
    terminated = threading.Event()
    on_sigterm(terminated)
    cancel_flag = run_layout.cancel_flag(run_dir)

    def should_stop() -> bool:
        return terminated.is_set() or cancel_flag.exists()

    resume_from = None if is_base_eval(job.config) else checkpoint.latest(run_dir)
    if resume_from is not None:      # progress continues after the checkpoint's step: one line per step
        checkpoint.truncate_progress(run_dir, checkpoint.step_of(resume_from))
    tracker = tracking.start(job.id, job.name, job.config, run_dir)
    progress_file = open(run_layout.progress(run_dir), "a", encoding="utf-8")

    def progress(line: dict) -> None:
        line = {**line, "time": time.time()}
        progress_file.write(json.dumps(line) + "\n")
        progress_file.flush()
        if tracker is not None:
            tracker.progress(line)

    heartbeat = Heartbeat(store, job_id, run_dir)
    heartbeat.beat()
    heartbeat.start()
    print(f"job {job_id} ({job.name}) started, pid {os.getpid()}, config {json.dumps(job.config)}"
          + (f", resuming after step {checkpoint.step_of(resume_from)}" if resume_from else ""), flush=True)
    try:
        resume = {"resume_from": resume_from} if resume_from is not None else {}
        runner = run_base_eval if is_base_eval(job.config) else train
        result = runner(job.config, run_dir, progress=progress, should_stop=should_stop, **resume)
        status = "cancelled" if result.get("status") == "cancelled" else "done"
        error = "cancelled" if status == "cancelled" else None
        if status == "cancelled" and job.remote and terminated.is_set() and not cancel_flag.exists():
            status = "stopped"    # the engine's SIGTERM (time limit, preemption), not a cancel: reconcile says why
        if status == "done" and not is_base_eval(job.config):      # the New-run form's lm-eval pass, if asked
            from training.lm_eval_harness import after_training

            result = {**result, **after_training(job.config, run_dir, job_id)}     # never raises
    except BaseException as exc:  # noqa: BLE001 - every failure must end up in the table
        traceback.print_exc()            # the traceback goes to the run's log only; the table gets one line
        status, error = "failed", failure_reason(exc)
        result = {"status": "failed", "error": error}
    finally:
        heartbeat.done.set()
        progress_file.close()
    result = {"job": job_id, "name": job.name, **result, "status": status}
    run_layout.result(run_dir).write_text(json.dumps(result, indent=2, default=str))
    if tracker is not None:
        tracker.finish(result, status)
    if status == "stopped":          # the row stays running: the job store's reconcile records the engine's reason
        print(f"job {job_id} stopped by {job.backend} (SIGTERM without a cancel request)", flush=True)
        return status
    store.finish(job_id, status, error)
    print(f"job {job_id} {status}" + (f": {error}" if error and status == "failed" else ""), flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.worker", description=__doc__)
    parser.add_argument("--job", type=int, required=True, help="job id in the jobs table")
    args = parser.parse_args(argv)
    store = JobStore()
    if int(os.environ.get("RANK", "0")) > 0:       # torchrun rank of a data-parallel job
        return 0 if run_rank(store, args.job) in ("done", "cancelled") else 1
    status = run_job(store, args.job)
    if store.get(args.job).remote:
        return 0 if status in ("done", "cancelled") else 1      # a cluster node never starts this machine's queue
    try:
        store.schedule()             # start the next queued job even when no UI is running
    except Exception:  # noqa: BLE001 - the job itself is recorded; scheduling is retried by the next caller
        traceback.print_exc()
    return 0 if status in ("done", "cancelled") else 1


if __name__ == "__main__":
    sys.exit(main())
