"""Small assertions and clean-ups shared by several test packages."""
import base64
import os
import signal
import time

import numpy as np


def arr(value) -> np.ndarray:
    """A trace attribute as an array (Plotly 6+ ships numeric arrays as base64 typed arrays)."""
    if isinstance(value, dict) and "bdata" in value:
        out = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape")
        if isinstance(shape, str):
            shape = [int(n) for n in shape.split(",")]
        return out.reshape(shape) if shape else out
    return np.asarray(value)


def assert_clear_error(proc, *needles) -> None:
    """A CLI bad-input contract: exit 2, exactly one 'error: …' line on stderr naming the needles, no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("\r")]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]


def private_job_data(monkeypatch, folder, **env):
    """Point SPECTRASCOPE_DATA at `folder` for one test, one job at a time with one thread each (tiny models: faster
    and fairer on 2 cores), plus any `env`; returns the folder."""
    monkeypatch.setenv("SPECTRASCOPE_DATA", str(folder))
    monkeypatch.setenv("SPECTRASCOPE_MAX_JOBS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return folder


def kill_job_processes(store) -> None:
    """Kill every worker a JobStore's jobs (or this process) started, so no test leaves processes behind."""
    from training import jobs
    for job in store.list(reconcile=False):
        if job.pid and jobs.process_alive(job.pid, job.proc_create_time):
            os.killpg(job.pid, signal.SIGKILL)
    for popen in list(jobs._CHILDREN.values()):
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(10)
    jobs._CHILDREN.clear()


def ok(at) -> None:
    """An AppTest run raised no exception (the messages are shown if it did)."""
    assert not at.exception, [e.message for e in at.exception]


def wait_for(predicate, timeout: float = 60.0, what: str = "condition", poll: float = 0.2):
    """The first truthy value of predicate(), polled every `poll` seconds; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
