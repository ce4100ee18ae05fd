"""The layout of a run folder, `<data>/runs/<id>-<name>/`: every file name and path in it, defined once."""
from __future__ import annotations

import re
from pathlib import Path

RUNS = "runs"                          # <data>/runs holds one folder per job
RUN_DIR = re.compile(r"^(\d+)-(.+)$")  # <id>-<name>
MANIFEST = "manifest.json"             # the trainer: config, seed, model folder, versions, data hash
RESULT = "result.json"                 # the worker: the job's outcome (status, metrics, steps, error)
PREDICTIONS = "predictions.json"       # the trainer: per-row test labels and predictions (paired comparisons)
PROGRESS = "progress.jsonl"            # the worker: one JSON line per progress report
LOG = "worker.log"                     # the worker process's stdout and stderr
HEARTBEAT = "heartbeat"                # the worker: the time of its last beat
CANCEL_FLAG = "cancel"                 # the job store: created to ask the trainer to stop
ARTIFACTS = "artifacts"                # the saved weights: artifacts/<Method.artifact_dir>
CHECKPOINTS = "checkpoints"            # the trainer: checkpoints/step-<n>/ while a run goes (training.checkpoint)
CHECKPOINT_PREFIX = "step-"            # checkpoints/step-000010: the state after optimizer step 10
MLFLOW_RUN = "mlflow_run.json"         # the worker: the MLflow run this run logs to (training.tracking)


def runs_root(data: str | Path) -> Path:
    """The folder holding every run folder of a data directory."""
    return Path(data) / RUNS


def run_dir(runs: str | Path, job_id: int, name: str) -> Path:
    """The run folder of job `job_id` called `name` under `runs` (runs_root)."""
    return Path(runs) / f"{job_id}-{name}"


def parse_run_dir(folder: str | Path) -> tuple[int, str] | None:
    """(job id, name) of a run folder's name, or None when it is not `<id>-<name>`."""
    m = RUN_DIR.match(Path(folder).name)
    return (int(m.group(1)), m.group(2)) if m else None


def manifest(run: str | Path) -> Path:
    return Path(run) / MANIFEST


def result(run: str | Path) -> Path:
    return Path(run) / RESULT


def predictions(run: str | Path) -> Path:
    return Path(run) / PREDICTIONS


def progress(run: str | Path) -> Path:
    return Path(run) / PROGRESS


def log(run: str | Path) -> Path:
    return Path(run) / LOG


def heartbeat(run: str | Path) -> Path:
    return Path(run) / HEARTBEAT


def cancel_flag(run: str | Path) -> Path:
    return Path(run) / CANCEL_FLAG


def artifacts(run: str | Path) -> Path:
    """<run>/artifacts: the parent of the method's weights folder."""
    return Path(run) / ARTIFACTS


def checkpoints(run: str | Path) -> Path:
    """<run>/checkpoints: the last few training states (training.checkpoint), removed when the run is done."""
    return Path(run) / CHECKPOINTS


def checkpoint(run: str | Path, step: int) -> Path:
    """The checkpoint folder of optimizer step `step`: <run>/checkpoints/step-000010."""
    return checkpoints(run) / f"{CHECKPOINT_PREFIX}{int(step):06d}"


def mlflow_run(run: str | Path) -> Path:
    return Path(run) / MLFLOW_RUN


def artifact_folder(run: str | Path, method: str) -> Path:
    """Where a run's weights live: <run>/artifacts/<Method.artifact_dir> (SpectrascopeError for an unknown method)."""
    from training import registry

    return artifacts(run) / registry.get(method).artifact_dir
