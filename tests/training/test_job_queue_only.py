"""Work starts only through the job queue: no module but jobs, worker and distributed launches a process."""
from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training import study

ROOT = Path(__file__).resolve().parents[2]
# … and the Slurm backend, whose launch is sbatch (called only by the job store's hand-over, training.jobs)
LAUNCHERS = {"training/jobs.py", "training/worker.py", "training/distributed.py", "training/backends/slurm.py"}
CALLS = {"Popen", "run", "call", "check_call", "check_output", "spawnv", "spawnl", "execv", "execl", "system",
         "startfile", "fork"}


def _python_files():
    for folder in ("training", "app"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), path


@pytest.mark.parametrize("rel, path", [p for p in _python_files() if p[0] not in LAUNCHERS], ids=lambda v: str(v))
def test_no_process_launch_outside_the_job_runner(rel, path):
    tree = ast.parse(path.read_text())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names} | \
        {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not modules & {"subprocess", "multiprocessing"}, f"{rel}: launch work as a job (training.jobs)"
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                isinstance(node.func.value, ast.Name) and node.func.value.id == "os":
            assert node.func.attr not in CALLS, f"{rel}: os.{node.func.attr} — launch work as a job (training.jobs)"


def test_an_older_study_whose_base_evaluation_was_a_process_still_reads(tmp_path, monkeypatch):
    """Studies from before the base evaluation became a job recorded its pid: running while that process lives."""
    from training.jobs import JobStore

    monkeypatch.setenv("SPECTRASCOPE_DATA", str(tmp_path))
    store = JobStore(tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        import psutil

        info = {"pid": sleeper.pid, "create_time": psutil.Process(sleeper.pid).create_time()}
        record = {"id": 1, "jobs": [], "base_eval": info}
        assert study.base_eval_running(record, store) and study.study_running(record, store)
    finally:
        sleeper.kill()
        sleeper.wait()
    deadline = time.monotonic() + 10
    while study.base_eval_running(record, store) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not study.base_eval_running(record, store) and not study.study_running(record, store)
    assert not study.base_eval_running({"id": 2, "jobs": [], "base_eval": None, "base_job": None}, store)
