"""Ray backend against a real local Ray head: runs to done, re-attach, logs, cancel, head lost, bad settings."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from analysis.types import SpectrascopeError
from tests.helpers import assert_clear_error, wait_for
from tests.ray_head import free_port, head, ray_session  # noqa: F401 - fixtures
from tests.tiny_models import make_tiny_model
from training import backends
from training.backends import ray_jobs
from training.jobs import JobStore

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SMALL = {"max_train_rows": 32, "max_eval_rows": 16, "max_test_rows": 16, "eval_every": 0}


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTRASCOPE_DATA", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    store = JobStore(tmp_path)
    yield store
    for job in store.list(reconcile=False):          # nothing left running on the cluster or on this machine
        if job.external_id and not job.final:
            try:
                ray_jobs.BACKEND.cancel(job)
            except SpectrascopeError:
                pass
    for proc in workers(store):
        proc.kill()


def lora(model: str, **extra) -> dict:
    return {"method": "lora", "model": model, "max_steps": 3, **SMALL, **extra}


def workers(store: JobStore, job_id: int | None = None) -> list[psutil.Process]:
    """The worker processes of this store's jobs (found by command line and data folder, wherever Ray put them)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "training.worker" not in cmd or (job_id is not None and str(job_id) not in cmd):
            continue
        try:
            if proc.environ().get("SPECTRASCOPE_DATA") == str(store.data) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def ray_status(head, submission_id: str) -> str:
    """The Ray job's status as Ray's own client reports it (the independent reference)."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(head.dashboard).get_job_status(submission_id).value


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=180, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


# ---------------------------------------------------------------- settings refused at submit, nothing queued

def test_unreachable_address_is_one_line_and_queues_nothing(store, tiny_bert):
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SpectrascopeError) as err:
        store.submit(lora(tiny_bert), backend="ray", backend_options={"address": dead})
    assert "cannot reach the Ray cluster" in str(err.value) and dead in str(err.value)
    assert "\n" not in str(err.value)
    assert store.list() == []
    with pytest.raises(SpectrascopeError, match="--ray-address"):            # no address and no $RAY_ADDRESS
        store.submit(lora(tiny_bert), backend="ray")
    proc = cli("submit", "--method", "lora", "--model", tiny_bert, "--max-steps", "3", "--backend", "ray",
               "--ray-address", dead, env={"SPECTRASCOPE_DATA": str(store.data)})
    assert_clear_error(proc, "cannot reach the Ray cluster")
    assert store.list() == []


def test_slurm_options_and_more_gpus_than_the_cluster_are_refused(store, tiny_bert, head, monkeypatch):
    with pytest.raises(SpectrascopeError, match="--partition.*Slurm options") as err:
        store.submit(lora(tiny_bert), backend="ray", backend_options={"address": head.dashboard, "partition": "x"})
    assert "\n" not in str(err.value)
    with pytest.raises(SpectrascopeError, match="gpus=2: the Ray cluster .* has no GPU"):
        store.submit(lora(tiny_bert, gpus=2), backend="ray", backend_options={"address": head.dashboard})
    with pytest.raises(SpectrascopeError, match="cpu_processes=3: .* has 2 CPUs"):
        store.submit(lora(tiny_bert, cpu_processes=3), backend="ray", backend_options={"address": head.dashboard})
    assert store.list() == []
    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{free_port()}")    # Ray's override of a given address
    assert ray_jobs.BACKEND.check({"address": head.dashboard}, {"gpus": 1}) == {
        "address": head.dashboard, "num_gpus": 0, "num_cpus": 1, "processes": 1}
    assert ray_jobs.BACKEND.check({"address": head.address}, {"cpu_processes": 2})["processes"] == 2  # bootstrap


# ---------------------------------------------------------------- a run from submit to done

def test_run_submitted_by_one_process_is_followed_to_done_by_another(store, tiny_bert, head):
    """`python -m training submit --backend ray` hands the run over and exits; this process (a fresh JobStore)
    follows it by its Ray submission id to done; artifacts and Ray's logs read back."""
    proc = cli("submit", "--method", "lora", "--model", tiny_bert, "--max-steps", "3", "--max-train-rows", "32",
               "--max-eval-rows", "16", "--max-test-rows", "16", "--eval-every", "0", "--name", "on-ray",
               "--backend", "ray", env={"SPECTRASCOPE_DATA": str(store.data), "RAY_ADDRESS": head.dashboard})
    assert proc.returncode == 0, proc.stderr
    submitted = json.loads(proc.stdout)
    fresh = JobStore(store.data)
    job = fresh.get(submitted["job"])
    assert job.backend == "ray" and job.external_id.startswith(f"spectrascope-{job.id}-")
    assert job.backend_options["address"] == head.dashboard          # $RAY_ADDRESS was the default
    assert job.where == f"ray {job.external_id}"
    job = fresh.wait(job.id, poll=0.5, timeout=240)
    assert job.status == "done", (job.error, ray_jobs.BACKEND.logs(job))
    # the worker records its outcome, then exits: Ray says SUCCEEDED a moment later
    wait_for(lambda: ray_status(head, job.external_id) == "SUCCEEDED", 30, "Ray to see the job succeed")
    assert [line["step"] for line in job.progress()] == [1, 2, 3]
    result = job.result()
    assert result["status"] == "done" and result["job"] == job.id and "accuracy" in result["test"]
    assert job.path("artifacts/adapter/adapter_model.safetensors").is_file()
    logs = ray_jobs.BACKEND.logs(job, lines=500)
    assert f"job {job.id} (on-ray) started" in logs and f"job {job.id} done" in logs
    shown = cli("logs", str(job.id), "--lines", "500", env={"SPECTRASCOPE_DATA": str(store.data)})
    assert shown.returncode == 0 and f"job {job.id} done" in shown.stdout, shown.stderr
    assert workers(store) == []
    assert ray_jobs.BACKEND.poll(job) == backends.Remote("ended", "SUCCEEDED: Job finished successfully.")


def test_a_data_parallel_run_on_ray_train_trains_exactly_like_one_process(store, head, tmp_path_factory):
    """cpu_processes=2 on Ray: two Ray Train workers (gloo) are the job's ranks; without dropout their averaged
    half-batch gradients give the single local process's losses and weights (the path a run takes when it asks
    for more GPUs than one node has, there with NCCL)."""
    import numpy as np
    from safetensors.numpy import load_file

    model = str(make_tiny_model(tmp_path_factory.mktemp("bert-nodrop-ray"), "bert", hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0))
    config = {"method": "full", "model": model, "max_steps": 4, "lr": 1e-3, "keep_best": False, **SMALL}
    one = store.wait(store.submit({**config, "name": "local-one"}).id, timeout=300)
    job = store.submit({**config, "cpu_processes": 2, "name": "ray-train-two"}, backend="ray",
                       backend_options={"address": head.dashboard})
    assert job.backend_options["processes"] == 2
    two = store.wait(job.id, poll=0.5, timeout=400)
    assert (one.status, two.status) == ("done", "done"), (two.error, ray_jobs.BACKEND.logs(two, lines=60))
    assert two.result()["processes"] == 2 and len(two.progress()) == 4          # rank 0 alone writes progress
    np.testing.assert_allclose([p["loss"] for p in two.progress()], [p["loss"] for p in one.progress()], rtol=1e-5)
    w1 = load_file(str(one.path("artifacts/model/model.safetensors")))
    w2 = load_file(str(two.path("artifacts/model/model.safetensors")))
    assert w1.keys() == w2.keys() and max(float(np.abs(w1[k] - w2[k]).max()) for k in w1) < 1e-5
    assert (Path(two.run_dir) / "ray_train" / f"spectrascope-{two.id}").is_dir()     # Ray Train's own run record
    wait_for(lambda: ray_status(head, two.external_id) == "SUCCEEDED", 60, "Ray to see the job succeed")


# ---------------------------------------------------------------- cancel and faults

def test_cancel_stops_the_ray_job_and_leaves_no_worker(store, tiny_bert, head):
    job = store.submit(lora(tiny_bert, max_steps=100000, checkpoint_every=0), backend="ray",
                       backend_options={"address": head.dashboard})
    wait_for(lambda: store.get(job.id).progress(), 180, "the Ray run to train")
    assert ray_jobs.BACKEND.poll(job).state == "running"
    assert len(workers(store, job.id)) == 1
    job = store.cancel(job.id, grace=0)       # no grace: Ray's own stop (SIGTERM to the entrypoint) ends it
    assert job.status == "cancelled"
    assert ray_status(head, job.external_id) == "STOPPED"
    wait_for(lambda: not workers(store, job.id), 10, "the worker process to be gone")
    assert store.get(job.id).status == "cancelled"


def test_head_stopped_mid_run_marks_the_run_lost(store, tiny_bert, head, monkeypatch):
    """The documented bound: lost once Ray does not answer and the heartbeat is older than LOST_AFTER_S."""
    monkeypatch.setattr(backends, "LOST_AFTER_S", 3.0)
    job = store.submit(lora(tiny_bert, max_steps=100000, checkpoint_every=0), backend="ray",
                       backend_options={"address": head.dashboard})
    wait_for(lambda: store.get(job.id).progress(), 180, "the Ray run to train")
    head.stop()
    stopped = time.monotonic()
    assert ray_jobs.BACKEND.poll(job).state == "unreachable"
    job = store.wait(job.id, poll=0.5, timeout=60)
    took = time.monotonic() - stopped
    assert job.status == "lost" and "ray could not be reached" in job.error
    assert took < backends.LOST_AFTER_S + 10, took       # + one heartbeat period and the poll interval
    wait_for(lambda: not workers(store, job.id), 15, "the orphaned worker to be killed with its Ray job")
