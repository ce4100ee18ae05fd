"""A private local Ray head for tests: `ray start --head` on free ports, stopped by its own process ids."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

RAY = str(Path(sys.executable).with_name("ray"))
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    """One head node (2 CPUs, dashboard with the job API) in a short private temp dir (Ray's unix sockets live there
    and their paths are limited to ~107 characters).

    `ray stop` would stop every Ray process of the machine, other people's too; this head is started in its own
    session (start_new_session), and `stop()` kills exactly the processes of that session and those naming its
    temp dir, by pid.
    """

    def __init__(self, num_cpus: int = 2):
        self.num_cpus = num_cpus
        self.temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
        self.port, self.dashboard_port = free_port(), free_port()
        self.sid: int | None = None

    @property
    def address(self) -> str:
        """The bootstrap (GCS) address: what ray.init and `python -m analysis … --ray` take."""
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        """The dashboard URL: what the Job Submission API (`--ray-address`) takes."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, timeout: float = 120.0) -> "RayHead":
        ports = [free_port() for _ in range(7)]
        command = [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--num-cpus", str(self.num_cpus),
                   "--num-gpus", "0", "--port", str(self.port), "--include-dashboard", "true",
                   "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                   "--ray-client-server-port", str(ports[0]), "--node-manager-port", str(ports[1]),
                   "--object-manager-port", str(ports[2]), "--dashboard-agent-listen-port", str(ports[3]),
                   "--dashboard-agent-grpc-port", str(ports[4]), "--metrics-export-port", str(ports[5]),
                   "--runtime-env-agent-port", str(ports[6]), "--object-store-memory", str(100 * 2**20),
                   "--temp-dir", self.temp, "--disable-usage-stats"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        log = open(Path(self.temp) / "start.log", "wb")
        # cwd: not the project, so that the jobs and tasks find the code only through the PYTHONPATH they are given
        proc = subprocess.Popen(command, cwd=self.temp, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.sid = proc.pid
        try:
            code = proc.wait(timeout)
            if code != 0:
                raise RuntimeError(f"ray start failed ({code}):\n{(Path(self.temp) / 'start.log').read_text()[-3000:]}")
            self._wait_dashboard(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_dashboard(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.dashboard + "/api/version", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray dashboard at {self.dashboard} did not answer in {timeout:.0f} s")
            time.sleep(0.5)

    def processes(self) -> list[psutil.Process]:
        """This head's processes: those in its session, and any naming its temp dir."""
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                mine = self.sid is not None and os.getsid(proc.pid) == self.sid
                mine = mine or any(self.temp in part for part in (proc.info["cmdline"] or ()))
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
            if mine and proc.pid != os.getpid():
                found.append(proc)
        return found

    def alive(self) -> bool:
        return any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in self.processes())

    def stop(self) -> None:
        """Kill the head's processes (SIGKILL, as `ray stop --force`) and wait until they are gone."""
        procs = self.processes()
        for proc in procs:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=15)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.temp, ignore_errors=True)


_HEAD: RayHead | None = None


def shared_head() -> RayHead:
    """The session's one head, started on first use (and again if a test stopped it)."""
    global _HEAD
    if _HEAD is None or not _HEAD.alive():
        if _HEAD is not None:
            _HEAD.cleanup()
        _HEAD = RayHead()
        _HEAD.start()
    return _HEAD


def stop_shared_head() -> None:
    global _HEAD
    if _HEAD is not None:
        _HEAD.cleanup()
        _HEAD = None


@pytest.fixture(scope="session")
def ray_session():
    """Stops the shared head once the session is over (also after failures); import it with `head`."""
    yield
    stop_shared_head()


@pytest.fixture
def head(ray_session) -> RayHead:
    """The session's running Ray head (started once; started again only after a test stopped it)."""
    return shared_head()
