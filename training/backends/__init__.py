"""Where runs run: the backend interface (check, launch, poll, logs, cancel) and the backends by name."""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from analysis.types import SpectrascopeError

# name -> module defining BACKEND (a Backend). `local` is the SQLite runner's own processes (training.jobs).
MODULES = {"local": None, "slurm": "training.backends.slurm", "ray": "training.backends.ray_jobs"}
NAMES = tuple(MODULES)
# The remote backends' options, for the CLI's flags and the Train page's fields:
# (backend, option key, CLI flag, field label, type, help). Each backend's check() refuses the others' keys.
OPTIONS = [
    ("slurm", "partition", "--partition", "Partition", str, "the Slurm partition (default: the cluster's default)"),
    ("slurm", "nodes", "--nodes", "Nodes", int, "nodes for a multi-node data-parallel run (default 1)"),
    ("slurm", "gpus_per_node", "--gpus-per-node", "GPUs per node", int, "GPUs on each node (default 0: CPU)"),
    ("slurm", "time", "--time", "Time limit", str, "HH:MM:SS (default: the partition's)"),
    ("slurm", "account", "--account", "Account", str, "the Slurm account to charge"),
    ("ray", "address", "--ray-address", "Ray address", str,
     "the cluster's dashboard address, e.g. http://head:8265 (default $RAY_ADDRESS)"),
]
# A remote run whose engine cannot be reached is marked lost once its worker's heartbeat is this old (seconds).
LOST_AFTER_S = 60.0


@dataclass(frozen=True)
class Remote:
    """What the engine says about one run: `state` is "pending" (waiting for resources), "running", "ended"
    (the engine's job is over, however it ended) or "unreachable" (the engine did not answer); `reason` is the
    engine's own word for why it ended or waits (Slurm's TIMEOUT, NODE_FAIL, Ray's message), else None."""

    state: str
    reason: str | None = None


class Backend:
    """A backend only launches, polls, fetches logs and cancels: the jobs table stays the record of every run.

    The worker it starts (`command`, an argument list, with `env`) runs `python -m training.worker --job ID` on a
    machine that sees the same data directory and code (a shared filesystem); the worker itself writes progress,
    result and final status into the run folder and the jobs table, exactly as a local run does.
    """

    name = "base"
    label = "base"

    def check(self, options: dict, config: dict) -> dict:
        """The validated backend options for a run of `config` (SpectrascopeError: unreachable engine, unknown
        partition, more GPUs than the cluster offers … one line, nothing queued)."""
        raise NotImplementedError

    def launch(self, job, command: list[str], env: dict[str, str]) -> str:
        """Hand the run to the engine; return the engine's id for it (Slurm job id, Ray submission id)."""
        raise NotImplementedError

    def poll(self, job) -> Remote:
        """The engine's view of the run (never raises: an engine that does not answer is "unreachable")."""
        raise NotImplementedError

    def cancel(self, job) -> None:
        """Stop the run on the engine (scancel, ray job stop); leaves no process or job behind."""
        raise NotImplementedError

    def logs(self, job, lines: int = 50) -> str:
        """The last `lines` lines of the run's output as the engine keeps it ('' when there are none)."""
        raise NotImplementedError


def check_name(name: str | None) -> str:
    """`name` if it names a backend (None → "local"), else a SpectrascopeError listing them."""
    name = name or "local"
    if name not in MODULES:
        raise SpectrascopeError(f"unknown backend {name!r}: use one of {', '.join(NAMES)}")
    return name


def get(name: str) -> Backend:
    """The remote backend called `name` (its module is imported on first use: Ray loads only for Ray runs)."""
    name = check_name(name)
    if MODULES[name] is None:
        raise SpectrascopeError("the local backend is the job store's own runner (training.jobs), not a module")
    return importlib.import_module(MODULES[name]).BACKEND


def engine_logs(job, lines: int = 20) -> str:
    """The tail of a remote run's output as its engine keeps it (Ray keeps a job's output itself), or ''."""
    try:
        return get(job.backend).logs(job, lines)
    except Exception:  # noqa: BLE001 - an engine that is gone has no logs to give: the lost message says why
        return ""
