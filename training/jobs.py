"""SQLite job queue for background fine-tunes: submit, list, cancel, reconcile lost workers, schedule."""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import psutil

from analysis.config import data_dir
from analysis.types import SpectrascopeError
from training import backends, run_layout
from training.model_check import one_line

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FINAL = ("done", "failed", "cancelled", "lost")
PROJECT_ROOT = Path(__file__).resolve().parents[1]

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled', 'lost')),
    config TEXT NOT NULL,
    pid INTEGER,
    proc_create_time REAL,
    heartbeat REAL,
    run_dir TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    devices TEXT,
    backend TEXT NOT NULL DEFAULT 'local',
    backend_options TEXT,
    external_id TEXT
)"""
# Columns added after the first release: (name, SQL type) added to older tables on open.
ADDED_COLUMNS = (("backend", "TEXT NOT NULL DEFAULT 'local'"), ("backend_options", "TEXT"), ("external_id", "TEXT"))

# Children this process started: polled so that finished ones are reaped instead of lingering as zombies.
_CHILDREN: dict[int, subprocess.Popen] = {}


@dataclass
class Job:
    """One row of the jobs table; `config` is the validated training config (a dict)."""

    id: int
    name: str
    status: str
    config: dict
    pid: int | None
    proc_create_time: float | None
    heartbeat: float | None
    run_dir: str | None
    created: float
    started: float | None
    finished: float | None
    error: str | None
    devices: str | None = None
    backend: str = "local"            # training.backends: local (this machine's processes), slurm, ray
    backend_options: dict | None = None
    external_id: str | None = None    # the engine's id of a remote run (Slurm job id, Ray submission id)

    @property
    def remote(self) -> bool:
        return self.backend != "local"

    @property
    def where(self) -> str:
        """Where the run runs or ran: "local" (with its GPUs), or the backend and the engine's id for it."""
        if not self.remote:
            return "local" + (f" gpu {self.devices}" if self.devices else "")
        return f"{self.backend} {self.external_id or '(not handed over)'}"

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def path(self, name: str) -> Path:
        """A file in the run folder (a training.run_layout name: progress, result, manifest, log, artifacts…)."""
        return Path(self.run_dir or ".") / name

    def progress(self) -> list[dict]:
        """The progress lines the worker has written so far (oldest first)."""
        return read_jsonl(self.path(run_layout.PROGRESS))

    def result(self) -> dict | None:
        """The worker's final result (run_layout.RESULT), or None before it exists."""
        try:
            return json.loads(self.path(run_layout.RESULT).read_text())
        except (OSError, ValueError):
            return None

    def log_tail(self, lines: int = 20) -> str:
        """The last `lines` lines of the worker log."""
        return log_tail(self.path(run_layout.LOG), lines)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def name_problem(name, taken=()) -> str | None:
    """Why `name` cannot name a new run (not a safe name, or a run has it already), or None."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return (f"bad run name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit "
                "(no '/', spaces or '..')")
    if name in taken:
        return f"a run named {name!r} exists already: pick another name, e.g. {fresh_name(name, taken)!r}"
    return None


def validate_name(name: str, taken=()) -> str:
    """`name` if it is a safe run name (letters, digits, `_.-`, ≤ 64 chars, no leading dot) that no run in
    `taken` has, else a SpectrascopeError."""
    problem = name_problem(name, taken)
    if problem:
        raise SpectrascopeError(problem)
    return name


def fresh_name(base: str, taken=()) -> str:
    """`base`, or `base-2`, `base-3`, … : the first that is not in `taken` (still at most 64 characters); a taken
    `x-2` goes on to `x-3`."""
    taken = set(taken)
    if base not in taken:
        return base
    numbered = re.fullmatch(r"(.+)-(\d{1,6})", base)
    stem, n = (numbered[1], int(numbered[2]) + 1) if numbered else (base, 2)
    while True:
        suffix = f"-{n}"
        name = stem[:64 - len(suffix)].rstrip("._-") + suffix
        if name not in taken:
            return name
        n += 1


def read_jsonl(path: Path) -> list[dict]:
    """Parsed lines of a JSONL file, skipping a partly written last line; [] if the file is missing."""
    try:
        text = path.read_text()
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def log_tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a text file ('' if it is missing)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def process_alive(pid: int | None, create_time: float | None) -> bool:
    """Whether `pid` is still the process we started: it exists, has the same start time and is no zombie."""
    _reap_children()
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 0.5:
            return False                  # the pid was reused by another process
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _reap_children() -> None:
    for pid, popen in list(_CHILDREN.items()):
        if popen.poll() is not None:
            del _CHILDREN[pid]


@lru_cache(maxsize=1)
def gpu_count() -> int:
    """Number of CUDA devices this machine can use (0 on CPU-only machines)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def max_concurrent() -> int:
    """How many jobs may run at once: one per GPU, else $SPECTRASCOPE_MAX_JOBS (default 1) on CPU."""
    if gpu_count():
        return gpu_count()
    raw = os.environ.get("SPECTRASCOPE_MAX_JOBS", "1")
    try:
        return max(1, int(raw))
    except ValueError:
        raise SpectrascopeError(f"SPECTRASCOPE_MAX_JOBS must be a positive integer, got {raw!r}") from None


def worker_command(job_id: int, processes: int = 1) -> list[str]:
    """The argument list that runs one job: the worker module, or torchrun of it as `processes` data-parallel
    ranks (one per GPU; see training.distributed for why torchrun rather than accelerate launch)."""
    if processes > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                "-m", "training.worker", "--job", str(job_id)]
    return [sys.executable, "-m", "training.worker", "--job", str(job_id)]


def job_processes(config: dict) -> int:
    """How many processes a job runs as: its GPUs on a GPU machine, else its cpu_processes."""
    key = "gpus" if gpu_count() else "cpu_processes"
    return max(1, int(config.get(key) or 1))


def check_machine(config: dict) -> None:
    """A job asking for more GPUs than this machine has can never start: say so at submit."""
    gpus = int(config.get("gpus") or 1)
    have = gpu_count()
    if gpus > 1 and gpus > have:
        where = f"this machine has {have} GPU{'s' if have != 1 else ''}" if have else "this machine has no GPU"
        hint = "; for data-parallel processes on CPU use cpu_processes (--cpu-processes)" if not have else ""
        raise SpectrascopeError(f"gpus={gpus}: {where}; ask for at most {max(have, 1)}{hint}")


class JobStore:
    """The job table in `<data>/spectrascope.db` (WAL mode); run folders live in `<data>/runs/<id>-<name>/`
    (training.run_layout)."""

    def __init__(self, data: str | Path | None = None):
        self.data = Path(data).resolve() if data else data_dir()
        self.data.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data / "spectrascope.db"
        self.runs_dir = run_layout.runs_root(self.data)
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(SCHEMA)
            have = {row[1] for row in con.execute("PRAGMA table_info(jobs)")}
            for column, kind in ADDED_COLUMNS:
                if column not in have:
                    con.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")

    def _connect(self) -> "_Closing":
        con = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        con.row_factory = sqlite3.Row
        return _Closing(con)

    # ---- reading -------------------------------------------------------------------------------------------
    def get(self, job_id: int) -> Job:
        """The job with this id, or a SpectrascopeError naming the id."""
        with self._connect() as con:
            row = con.execute("SELECT * FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
        if row is None:
            raise SpectrascopeError(f"no job with id {job_id}: see `python -m training list`")
        return _job(row)

    def names(self) -> set[str]:
        """The names of all runs so far (a new run's name must differ from each)."""
        with self._connect() as con:
            return {row[0] for row in con.execute("SELECT name FROM jobs")}

    def list(self, reconcile: bool = True) -> list[Job]:
        """All jobs, oldest first, after marking running jobs whose worker vanished as lost."""
        if reconcile:
            self.reconcile()
        with self._connect() as con:
            return [_job(r) for r in con.execute("SELECT * FROM jobs ORDER BY id")]

    # ---- submitting and cancelling -------------------------------------------------------------------------
    def submit(self, config: dict, name: str | None = None, start: bool = True, backend: str | None = None,
               backend_options: dict | None = None) -> Job:
        """Validate `config` and its data, queue the job and (with `start`) start queued jobs if slots are free.

        `backend` (training.backends: local, slurm, ray) says where it runs, `backend_options` how (partition,
        address, …). Nothing is queued when the config, the model, the task data, the name or the backend
        settings are bad: a SpectrascopeError says what was wrong.
        """
        from training.base_jobs import check_base_eval, is_base_eval
        from training.trainer import prepare_config

        given = (config or {}).get("name") if name is None else name
        if given is not None:
            validate_name(given, self.names())      # cheap checks first: a bad name never loads the data
        clean = check_base_eval(config) if is_base_eval(config) else prepare_config(config)
        clean.pop("name", None)
        backend = backends.check_name(backend)
        if backend == "local":
            if backend_options:
                raise SpectrascopeError(f"the local backend takes no options (got {sorted(backend_options)})")
            check_machine(clean)
            options = None
        else:
            options = backends.get(backend).check(dict(backend_options or {}), clean)
        now = time.time()
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")           # the name check and the insert as one step
            taken = {row[0] for row in con.execute("SELECT name FROM jobs")}      # (an error rolls back)
            name = validate_name(given, taken) if given is not None else default_name(clean, taken)
            cur = con.execute(
                "INSERT INTO jobs (name, status, config, created, backend, backend_options) "
                "VALUES (?, 'queued', ?, ?, ?, ?)",
                (name, json.dumps(clean), now, backend, json.dumps(options) if options is not None else None),
            )
            job_id = cur.lastrowid
            run_dir = run_layout.run_dir(self.runs_dir, job_id, name)
            con.execute("UPDATE jobs SET run_dir = ? WHERE id = ?", (str(run_dir), job_id))
            con.execute("COMMIT")
        run_dir.mkdir(parents=True, exist_ok=True)
        if start:
            self.schedule()
        return self.get(job_id)

    def cancel(self, job_id: int, grace: float = 10.0) -> Job:
        """Cancel a job: a queued one at once; a running one by cancel flag, then SIGTERM, then SIGKILL."""
        job = self.get(job_id)
        if job.final:
            raise SpectrascopeError(f"job {job.id} has already ended ({job.status})")
        if job.status == "queued" and self._set_final(job.id, "cancelled", "cancelled before it started", "queued"):
            return self.get(job_id)
        job = self.get(job_id)             # it may have started meanwhile
        if job.status == "running" and job.remote:
            self._cancel_remote(job, grace)
        elif job.status == "running":
            job.path(run_layout.CANCEL_FLAG).touch()
            if not _wait_gone(job, grace):
                _signal_group(job.pid, signal.SIGTERM)
                if not _wait_gone(job, max(2.0, grace / 2)):
                    _signal_group(job.pid, signal.SIGKILL)
                    _wait_gone(job, 5.0)
            self._set_final(job.id, "cancelled", "cancelled", only_from="running")
        self.schedule()
        return self.get(job_id)

    def resume(self, job_id: int, start: bool = True) -> Job:
        """Queue a cancelled, lost or failed run again with the same id and run folder: its worker continues from
        the latest checkpoint (training.checkpoint). A SpectrascopeError for a run that is done, has not ended,
        or has no checkpoint."""
        from training import checkpoint

        self.reconcile()                   # a worker that just died is lost, and so resumable
        job = self.get(job_id)
        if not job.final or job.status == "done":
            raise SpectrascopeError(f"job {job.id} is {job.status}: only cancelled, lost or failed runs can be resumed")
        if not job.run_dir or checkpoint.latest(job.run_dir) is None:
            raise SpectrascopeError(f"job {job.id} has no checkpoint to resume from (it stopped before its first "
                                    "one): submit it again")
        job.path(run_layout.CANCEL_FLAG).unlink(missing_ok=True)
        with self._connect() as con:
            cur = con.execute("UPDATE jobs SET status = 'queued', pid = NULL, proc_create_time = NULL, "
                              "finished = NULL, error = NULL WHERE id = ? AND status = ?", (job.id, job.status))
        if cur.rowcount != 1:
            raise SpectrascopeError(f"job {job.id} changed meanwhile (now {self.get(job.id).status}): try again")
        if start:
            self.schedule()
        return self.get(job.id)

    # ---- keeping the table true ----------------------------------------------------------------------------
    def reconcile(self) -> list[int]:
        """Mark running jobs whose worker is gone as lost (with the log tail); return their ids. A local worker is
        gone when its process is; a remote one when its engine says the job ended without the worker recording
        an outcome, or when the engine cannot be reached and the heartbeat is older than LOST_AFTER_S."""
        with self._connect() as con:
            rows = con.execute("SELECT * FROM jobs WHERE status = 'running'").fetchall()
        lost = []
        for job in map(_job, rows):
            if job.remote:
                error = self._remote_gone(job)
                if error is None:
                    continue
            elif process_alive(job.pid, job.proc_create_time):
                continue
            else:
                error = f"worker process {job.pid} ended without reporting a result"
            tail = job.log_tail(20) or (backends.engine_logs(job) if job.remote else "")
            if self._set_final(job.id, "lost", f"{error}; log tail:\n{tail}" if tail else error,
                               only_from="running"):
                lost.append(job.id)
        return lost

    def schedule(self) -> list[int]:
        """Start queued jobs in id order while fewer than `max_concurrent()` run; return the started ids."""
        self.reconcile()
        limit = max_concurrent()
        started = []
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")   # one scheduler at a time, across processes
            try:
                running = [_job(r) for r in con.execute("SELECT * FROM jobs WHERE status = 'running'")]
                queued = [_job(r) for r in con.execute("SELECT * FROM jobs WHERE status = 'queued' ORDER BY id")]
                for job in [j for j in queued if j.remote]:      # the cluster queues them: hand each over now
                    self._launch_remote(con, job)
                    started.append(job.id)
                running = [j for j in running if not j.remote]
                queued = [j for j in queued if not j.remote]
                busy = {d for j in running for d in (j.devices or "").split(",") if d}
                for job in queued:
                    if len(running) + len(started) >= limit:
                        break
                    devices = self._pick_devices(job, busy)
                    if devices is None:
                        break                      # keep the order: wait for GPUs rather than skip ahead
                    busy.update(devices)
                    self._launch(con, job, devices)
                    started.append(job.id)
            finally:
                con.execute("COMMIT")
        return started

    # ---- remote backends (training.backends) ----------------------------------------------------------------
    def _worker_env(self) -> dict[str, str]:
        env = dict(os.environ, SPECTRASCOPE_DATA=str(self.data), PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
        env.setdefault("HF_HUB_OFFLINE", "1")
        return env

    def _launch_remote(self, con: sqlite3.Connection, job: Job) -> None:
        Path(job.run_dir).mkdir(parents=True, exist_ok=True)
        now = time.time()
        try:
            external = backends.get(job.backend).launch(job, worker_command(job.id), self._worker_env())
        except Exception as exc:  # noqa: BLE001 - a refused hand-over is the run's outcome, said in one line
            con.execute("UPDATE jobs SET status = 'failed', finished = ?, error = ? WHERE id = ?",
                        (now, f"{job.backend} did not take the run: {one_line(exc)}", job.id))
            return
        con.execute("UPDATE jobs SET status = 'running', external_id = ?, started = ?, heartbeat = ? WHERE id = ?",
                    (str(external), now, now, job.id))

    def _remote_gone(self, job: Job) -> str | None:
        """Why a running remote job is lost, or None while its engine still has it (or a result is coming)."""
        state = backends.get(job.backend).poll(job)
        if state.state == "ended":
            time.sleep(0.2)
            if self.get(job.id).final:        # the worker recorded its outcome just before the job ended
                return None
            why = f" ({state.reason})" if state.reason else ""
            return f"{job.backend} job {job.external_id} ended{why} without the worker reporting a result"
        if state.state == "unreachable":
            age = time.time() - (job.heartbeat or job.started or time.time())
            if age > backends.LOST_AFTER_S:
                why = f": {state.reason}" if state.reason else ""
                return (f"{job.backend} could not be reached{why}, and the worker's last heartbeat was "
                        f"{age:.0f} s ago")
        return None

    def _cancel_remote(self, job: Job, grace: float) -> None:
        job.path(run_layout.CANCEL_FLAG).touch()          # the worker stops at its next step and records it
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not self.get(job.id).final:
            time.sleep(0.2)
        backends.get(job.backend).cancel(job)             # then the engine's own cancel: nothing left behind
        self._set_final(job.id, "cancelled", "cancelled", only_from="running")

    def _pick_devices(self, job: Job, busy: set[str]) -> list[str] | None:
        if not gpu_count():
            return []
        want = max(1, int(job.config.get("gpus") or 1))
        free = [str(i) for i in range(gpu_count()) if str(i) not in busy]
        return free[:want] if len(free) >= want else None

    def _launch(self, con: sqlite3.Connection, job: Job, devices: list[str]) -> None:
        run_dir = Path(job.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        env = self._worker_env()
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        processes = job_processes(job.config)
        if processes > 1 and not devices:   # CPU ranks share the cores instead of each taking all of them
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
        now = time.time()
        try:
            with open(run_layout.log(run_dir), "ab") as log:
                popen = subprocess.Popen(worker_command(job.id, processes), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=PROJECT_ROOT, env=env,
                                         start_new_session=True)
        except OSError as exc:
            con.execute("UPDATE jobs SET status = 'failed', finished = ?, error = ? WHERE id = ?",
                        (now, f"could not start the worker: {exc}", job.id))
            return
        _CHILDREN[popen.pid] = popen
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            create_time = None
        con.execute(
            "UPDATE jobs SET status = 'running', pid = ?, proc_create_time = ?, started = ?, heartbeat = ?,"
            " devices = ? WHERE id = ?",
            (popen.pid, create_time, now, now, ",".join(devices) or None, job.id),
        )

    # ---- used by the worker --------------------------------------------------------------------------------
    def beat(self, job_id: int) -> None:
        """Record that the worker of `job_id` is alive now."""
        with self._connect() as con:
            con.execute("UPDATE jobs SET heartbeat = ? WHERE id = ?", (time.time(), int(job_id)))

    def finish(self, job_id: int, status: str, error: str | None = None) -> bool:
        """Set a running job's final status (done, failed, cancelled); False if it had already ended."""
        return self._set_final(job_id, status, error, only_from="running")

    def _set_final(self, job_id: int, status: str, error: str | None, only_from: str) -> bool:
        assert status in FINAL
        with self._connect() as con:
            cur = con.execute("UPDATE jobs SET status = ?, finished = ?, error = ? WHERE id = ? AND status = ?",
                              (status, time.time(), error, int(job_id), only_from))
            return cur.rowcount == 1

    def wait(self, job_id: int, poll: float = 1.0, on_progress=None, timeout: float | None = None) -> Job:
        """Block until the job ends (checking for a lost worker as it goes); `on_progress(job, lines)` each poll."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = 0
        while True:
            self.reconcile()
            job = self.get(job_id)
            if on_progress is not None:
                lines = job.progress()
                if len(lines) > seen or job.final:
                    on_progress(job, lines[seen:])
                    seen = len(lines)
            if job.final:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
            time.sleep(poll)


def default_name(config: dict, taken=()) -> str:
    """A run name from the config: `<method>-<task>` reduced to the characters run names allow, suffixed -2, -3, …
    when a run in `taken` has it already."""
    task = Path(str(config.get("task") or "task")).stem
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{config.get('method', 'run')}-{task}").strip("._-")
    return fresh_name((name or "run")[:64], taken)


def _job(row: sqlite3.Row) -> Job:
    values = dict(row)
    values["config"] = json.loads(values["config"])
    values["backend_options"] = json.loads(values["backend_options"]) if values.get("backend_options") else None
    return Job(**values)


def _signal_group(pid: int | None, sig: int) -> None:
    if not pid:
        return
    try:
        os.killpg(pid, sig)                # the worker leads its own session and process group
    except (ProcessLookupError, PermissionError):
        pass


def _wait_gone(job: Job, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not process_alive(job.pid, job.proc_create_time):
            return True
        time.sleep(0.1)
    return not process_alive(job.pid, job.proc_create_time)


class _Closing:
    """A sqlite3 connection used as `with`: closes on exit (sqlite3's own `with` only commits)."""

    def __init__(self, con: sqlite3.Connection):
        self.con = con

    def __enter__(self) -> sqlite3.Connection:
        return self.con

    def __exit__(self, *exc) -> None:
        if exc[0] is not None and self.con.in_transaction:
            self.con.execute("ROLLBACK")
        self.con.close()
