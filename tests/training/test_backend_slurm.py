"""Slurm backend against a real one-node Slurm (scripts/slurm_local.sh): runs, cancel, time limit, lost, re-attach."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from analysis.types import SpectrascopeError
from tests.helpers import assert_clear_error, wait_for
from training import backends
from training.backends import slurm
from training.jobs import JobStore

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "slurm_local.sh"
SMALL = {"max_train_rows": 32, "max_eval_rows": 16, "max_test_rows": 16, "eval_every": 0, "mlflow": False}
LONG = 100000                      # steps of a run that only ends when something stops it

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("slurmctld") is None or shutil.which("munged") is None,
                       reason="Slurm is not installed (scripts/setup.sh --dev installs Debian's slurm-wlm and munge)"),
]


def free_port_pair() -> int:
    """A port p with p and p+1 free on 127.0.0.1 (slurmctld and slurmd)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000:
            with socket.socket() as s2:
                try:
                    s2.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair")


def cluster(command: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def slurm_env(tmp_path_factory):
    """A private one-node Slurm for the session (slurm_local.sh up; down at the end, even on failure); the Slurm
    clients of this process and its children find it through SLURM_CONF."""
    if os.geteuid() != 0:
        pytest.skip("the local test cluster runs its daemons as root (SlurmUser=root)")
    env = dict(os.environ, SPECTRASCOPE_SLURM_DIR=str(tmp_path_factory.mktemp("slurm")),
               SPECTRASCOPE_SLURM_PORT=str(free_port_pair()))
    env["SLURM_CONF"] = str(Path(env["SPECTRASCOPE_SLURM_DIR"]) / "slurm.conf")
    old = {key: os.environ.get(key) for key in ("SLURM_CONF", "OMP_NUM_THREADS")}
    os.environ["SLURM_CONF"] = env["SLURM_CONF"]
    os.environ["OMP_NUM_THREADS"] = "1"            # tiny models: one thread each is faster on a few shared cores
    try:
        proc = cluster("up", env)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        yield env
    finally:
        cluster("down", env)
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def store(tmp_path, monkeypatch, slurm_env):
    monkeypatch.setenv("SPECTRASCOPE_DATA", str(tmp_path))
    store = JobStore(tmp_path)
    yield store
    for job in store.list(reconcile=False):            # nothing a test started outlives it
        if job.external_id and not job.final:
            subprocess.run(["scancel", job.external_id], capture_output=True)


def config(tiny_bert: str, **extra) -> dict:
    return {"method": "lora", "model": tiny_bert, "max_steps": 3, **SMALL, **extra}


def squeue(job_id: str) -> tuple[str, str]:
    """(state, reason) of a Slurm job, straight from squeue."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T|%r"], capture_output=True, text=True,
                         check=True).stdout.strip()
    state, _, reason = out.partition("|")
    return state, reason


def scontrol_job(job_id: str) -> dict:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    return dict(pair.split("=", 1) for pair in out.split() if "=" in pair)


def worker_processes(store: JobStore, job_id: int) -> list[psutil.Process]:
    """Live processes running the worker of `job_id` of this store (Slurm starts them; their command line names
    the job, their environment the data folder: other tests' workers may have the same job id)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if "training.worker" in cmd and str(job_id) in cmd and proc.info["status"] != psutil.STATUS_ZOMBIE:
            try:
                if proc.environ().get("SPECTRASCOPE_DATA") == str(store.data):
                    found.append(proc)
            except psutil.Error:
                continue
    return found


def wait_training(store: JobStore, job_id: int):
    return wait_for(lambda: store.get(job_id).progress(), 90, f"job {job_id} to start training")


@pytest.fixture(scope="session")
def time_limited(slurm_env, tiny_bert, tmp_path_factory):
    """A long run with a one-minute limit whose end Slurm brings forward to now, started by the first test so that
    Slurm's time-limit check (every 30 s) overlaps the other tests; test_..._time_limit_... reads the outcome."""
    store = JobStore(tmp_path_factory.mktemp("slurm-time-limit"))
    job = store.submit(config(tiny_bert, max_steps=LONG), name="slurm-timeout", backend="slurm",
                       backend_options={"time": "00:01:00"})
    assert scontrol_job(job.external_id)["TimeLimit"] == "00:01:00"
    wait_for(lambda: squeue(job.external_id)[0] == "RUNNING", 60, "the time-limited job to start")
    # Slurm's smallest limit is a minute: with the job's end time brought to now, Slurm's periodic time-limit
    # check ends it exactly as a limit that ran out would
    subprocess.run(["scontrol", "update", f"JobId={job.external_id}", "EndTime=now"], check=True, capture_output=True)
    yield store, job
    if not store.get(job.id).final:
        subprocess.run(["scancel", job.external_id], capture_output=True)


def test_slurm_runs_go_to_done_and_their_artifacts_reload(store, tiny_bert, time_limited):
    from training.trainer import evaluate_artifacts

    job = store.submit(config(tiny_bert), name="slurm-lora", backend="slurm", backend_options={"time": "00:10:00"})
    ddp = store.submit(config(tiny_bert, cpu_processes=2, batch_size=8), name="slurm-ddp", backend="slurm")
    assert job.status == "running" and job.external_id and job.where == f"slurm {job.external_id}"
    assert scontrol_job(job.external_id)["TimeLimit"] == "00:10:00"
    assert scontrol_job(ddp.external_id)["NumCPUs"] == "2"          # --cpus-per-task 2: one core per rank
    job, ddp = (store.wait(j.id, poll=0.3, timeout=150) for j in (job, ddp))
    for run in (job, ddp):
        assert run.status == "done", (run.error, run.log_tail(40))
        wait_for(lambda: squeue(run.external_id)[0] == "COMPLETED", 30, "Slurm to record the job COMPLETED")
        assert [line["step"] for line in run.progress()] == [1, 2, 3]
        assert f"job {run.id} done" in backends.get("slurm").logs(run)   # Slurm's output file is the log
    result = job.result()
    reloaded = evaluate_artifacts(job.run_dir)                       # a fresh base + the saved adapter, here
    assert reloaded["accuracy"] == pytest.approx(result["test"]["accuracy"])
    assert reloaded["loss"] == pytest.approx(result["test"]["loss"], rel=1e-4)
    assert ddp.result()["processes"] == 2                            # torchrun's two ranks trained together
    assert json.loads(ddp.path("manifest.json").read_text())["processes"] == 2
    from app.page_train import runs_frame

    assert list(runs_frame(store.list())["where"]) == [f"slurm {ddp.external_id}", f"slurm {job.external_id}"]


def test_bad_settings_say_one_line_and_queue_nothing(store, tiny_bert):
    before = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], capture_output=True, text=True,
                            check=True).stdout
    cases = [({"partition": "nope"}, "unknown slurm partition 'nope'"),
             ({"nodes": 2}, "--nodes 2"),
             ({"gpus_per_node": 1}, "--gpus-per-node 1"),
             ({"address": "127.0.0.1:8265"}, "--ray-address"),
             ({"time": "soon"}, "--time")]
    for options, needle in cases:
        with pytest.raises(SpectrascopeError) as err:
            store.submit(config(tiny_bert), backend="slurm", backend_options=options)
        assert needle.lower() in str(err.value).lower() and "\n" not in str(err.value)
    proc = subprocess.run([sys.executable, "-m", "training", "submit", "--method", "lora", "--model", tiny_bert,
                           "--max-steps", "3", "--backend", "slurm", "--partition", "gpu-a100"],
                          capture_output=True, text=True, cwd=ROOT, env=dict(os.environ), timeout=120)
    assert_clear_error(proc, "partition", "gpu-a100", "debug")
    assert store.list() == []                                      # nothing queued
    after = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], capture_output=True, text=True,
                            check=True).stdout
    assert after == before                                         # nothing reached Slurm


def test_cancel_leaves_no_slurm_job_and_no_worker(store, tiny_bert):
    job = store.submit(config(tiny_bert, max_steps=LONG), name="slurm-cancel", backend="slurm")
    wait_training(store, job.id)
    assert worker_processes(store, job.id)
    job = store.cancel(job.id, grace=0.0)                          # straight to scancel
    assert job.status == "cancelled"
    state, _ = squeue(job.external_id)
    assert state in ("CANCELLED", "COMPLETED")                     # ended, not COMPLETING or RUNNING
    running = subprocess.run(["squeue", "-h", "-j", job.external_id, "-t", "pending,running,completing"],
                             capture_output=True, text=True, check=True).stdout
    assert running.strip() == ""
    assert worker_processes(store, job.id) == []


def test_a_restarted_app_follows_a_run_still_going_on_the_cluster(store, tiny_bert, tmp_path):
    args = [sys.executable, "-m", "training", "submit", "--method", "lora", "--model", tiny_bert, "--max-steps", "600",
            "--set", "max_train_rows=32", "--set", "max_eval_rows=16", "--set", "max_test_rows=16",
            "--set", "eval_every=0", "--set", "mlflow=false", "--batch-size", "4", "--name", "slurm-reattach",
            "--backend", "slurm", "--wait"]
    app = subprocess.Popen(args, cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        job = wait_for(lambda: next(iter(store.list(reconcile=False)), None), 60, "the submit")
        wait_training(store, job.id)
    finally:
        app.send_signal(signal.SIGKILL)                            # the app dies; the run goes on in Slurm
        app.wait(10)
    assert store.get(job.id).status == "running" and squeue(store.get(job.id).external_id)[0] == "RUNNING"
    follow = ("import json, sys; from training.jobs import JobStore; j = JobStore().wait(int(sys.argv[1]), poll=0.3,"
              " timeout=400); print(json.dumps({'status': j.status, 'steps': len(j.progress()), 'where': j.where}))")
    out = subprocess.run([sys.executable, "-c", follow, str(job.id)], cwd=ROOT, env=dict(os.environ),
                         capture_output=True, text=True, timeout=450)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"status": "done", "steps": 600, "where": f"slurm {job.external_id}"}
    wait_for(lambda: squeue(job.external_id)[0] == "COMPLETED", 30, "Slurm to record the job COMPLETED")


def test_a_run_slurm_ends_at_its_time_limit_is_lost_with_slurms_reason(time_limited):
    store, job = time_limited
    job = store.wait(job.id, poll=0.5, timeout=90)
    assert squeue(job.external_id) == ("TIMEOUT", "TimeLimit")      # Slurm's own word
    assert job.status == "lost" and "TIMEOUT" in job.error and "time limit" in job.error, job.error
    assert worker_processes(store, job.id) == []


def test_a_cluster_that_stops_mid_run_leaves_the_run_lost_with_a_message(store, tiny_bert, slurm_env, monkeypatch):
    job = store.submit(config(tiny_bert, max_steps=LONG), name="slurm-lost", backend="slurm")
    wait_training(store, job.id)
    state_dir = Path(slurm_env["SPECTRASCOPE_SLURM_DIR"])
    try:
        os.kill(int((state_dir / "slurmctld.pid").read_text()), signal.SIGKILL)     # the controller dies …
        assert store.reconcile() == [] and store.get(job.id).status == "running"   # a fresh heartbeat: not yet
        with pytest.raises(SpectrascopeError, match="not reachable.*slurmctld"):     # nothing new is queued
            store.submit(config(tiny_bert), backend="slurm")
        assert [j.id for j in store.list(reconcile=False)] == [job.id]
        proc = cluster("down", slurm_env)                          # … then the node and every job process with it
        assert proc.returncode == 0, proc.stderr
        assert worker_processes(store, job.id) == []
        monkeypatch.setattr(backends, "LOST_AFTER_S", 1.0)         # instead of waiting a minute
        time.sleep(1.5)
        assert store.reconcile() == [job.id]
        job = store.get(job.id)
        assert job.status == "lost"
        assert "slurm could not be reached" in job.error and "heartbeat" in job.error, job.error
        assert "slurmctld" in job.error                           # the hint of what to check
    finally:
        proc = cluster("up", slurm_env)                            # the session's cluster for later tests
        assert proc.returncode == 0, proc.stderr


def test_the_batch_script_of_a_multi_node_run_is_srun_of_torchrun_with_c10d_rendezvous():
    """Not runnable on one node without GPUs: the generated script is checked word by word."""
    command = [sys.executable, "-m", "training.worker", "--job", "7"]
    script = slurm.batch_script(7, command, {"nodes": 2, "gpus_per_node": 4}, {})
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    last = shlex.split(script.strip().splitlines()[-1])
    assert last[:12] == ["exec", "srun", "--nodes", "2", "--ntasks-per-node", "1", "--kill-on-bad-exit=1",
                         "--cpus-per-task", "4", "--gpus-per-node", "4", sys.executable]
    torchrun = last[12:]
    assert torchrun[:2] == ["-m", "torch.distributed.run"]
    assert torchrun[torchrun.index("--nnodes") + 1] == "2" and torchrun[torchrun.index("--nproc_per_node") + 1] == "4"
    assert torchrun[torchrun.index("--rdzv_backend") + 1] == "c10d"
    assert torchrun[torchrun.index("--rdzv_endpoint") + 1] == "$first:$port"
    assert torchrun[-4:] == ["-m", "training.worker", "--job", "7"]
    assert slurm._sbatch_options({"nodes": 2, "gpus_per_node": 4, "partition": "gpu"}, {}) == [
        "--nodes", "2", "--ntasks-per-node", "1", "--cpus-per-task", "4", "--gpus-per-node", "4", "--partition", "gpu"]
    one = slurm.batch_script(7, command, {}, {})
    assert shlex.split(one.strip().splitlines()[-1]) == ["exec", *command]
