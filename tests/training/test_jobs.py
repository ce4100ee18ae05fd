"""Job runner: real worker processes, cancel, lost workers, restarts, queue order, bad names and bad data."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from analysis.types import SpectrascopeError
from training import jobs
from training.jobs import JobStore, max_concurrent, worker_command

ROOT = Path(__file__).resolve().parents[2]
from tests.helpers import kill_job_processes, private_job_data, wait_for
SMALL = {"max_train_rows": 32, "max_eval_rows": 8, "max_test_rows": 8, "eval_every": 0}


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A JobStore on a fresh data folder; every worker process a test started is killed afterwards."""
    private_job_data(monkeypatch, tmp_path)
    store = JobStore(tmp_path)
    yield store
    kill_job_processes(store)


def cheap(tiny_bert: str, **extra) -> dict:
    return {"method": "lora", "model": tiny_bert, "max_steps": 1, **SMALL, **extra}


def wait_training(store: JobStore, job_id: int):
    """Wait until the worker of job_id has written its first progress line (the model is loaded and training)."""
    return wait_for(lambda: store.get(job_id).progress(), 90, f"job {job_id} to start training")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_submit_runs_a_worker_to_done_with_progress_result_manifest_and_artifacts(store, tiny_bert):
    job = store.submit(cheap(tiny_bert, max_steps=3), name="first")
    assert job.status == "running" and job.pid and job.run_dir.endswith(f"runs/{job.id}-first")
    job = store.wait(job.id, poll=0.2, timeout=120)
    assert job.status == "done", job.log_tail()
    assert [line["step"] for line in job.progress()] == [1, 2, 3]
    assert all("time" in line and "loss" in line for line in job.progress())
    result = job.result()
    assert result["status"] == "done" and result["job"] == job.id and "accuracy" in result["test"]
    assert json.loads(job.path("manifest.json").read_text())["config"]["max_steps"] == 3
    assert job.path("artifacts/adapter/adapter_model.safetensors").is_file()
    assert job.path("heartbeat").is_file() and job.heartbeat >= job.started
    assert [j.id for j in store.list()] == [job.id]
    wait_for(lambda: gone(job.pid), 15, "the worker to exit")


def test_cancel_running_job_ends_cancelled_and_its_process_is_gone(store, tiny_bert):
    job = store.submit(cheap(tiny_bert, max_steps=100000), name="long")
    wait_training(store, job.id)
    job = store.cancel(job.id, grace=30)
    assert job.status == "cancelled"
    assert gone(job.pid)
    assert job.result()["status"] == "cancelled"       # the worker saw the flag and stopped by itself
    with pytest.raises(SpectrascopeError, match="already ended"):
        store.cancel(job.id)


def test_cancel_escalates_to_signals_when_the_flag_is_not_seen(store, tiny_bert):
    job = store.submit(cheap(tiny_bert, max_steps=100000), name="stubborn")
    wait_training(store, job.id)
    job = store.cancel(job.id, grace=0)                # SIGTERM at once: the worker stops at the next step
    assert job.status == "cancelled" and gone(job.pid)


def test_cancel_queued_job_never_starts_it(store, tiny_bert):
    first = store.submit(cheap(tiny_bert, max_steps=100000), name="blocker")
    queued = store.submit(cheap(tiny_bert), name="waiting")
    assert queued.status == "queued"
    assert store.cancel(queued.id).status == "cancelled"
    store.cancel(first.id, grace=0)
    assert store.get(queued.id).pid is None


def test_sigkilled_worker_is_marked_lost_within_seconds(store, tiny_bert):
    job = store.submit(cheap(tiny_bert, max_steps=100000), name="victim")
    wait_training(store, job.id)
    os.killpg(job.pid, signal.SIGKILL)
    start = time.monotonic()
    lost = wait_for(lambda: [j for j in store.list() if j.id == job.id and j.status == "lost"], 10, "lost")
    assert time.monotonic() - start < 5
    assert "ended without reporting" in lost[0].error and f"job {job.id} (victim) started" in lost[0].error


def test_restarted_runner_sees_the_running_job_and_it_completes(store, tiny_bert, tmp_path):
    job = store.submit(cheap(tiny_bert, max_steps=40), name="survivor")
    wait_training(store, job.id)
    children = dict(jobs._CHILDREN)
    jobs._CHILDREN.clear()                              # a new runner process knows nothing of the old one's children
    fresh = JobStore(tmp_path)
    assert fresh.get(job.id).status == "running"
    assert fresh.reconcile() == []
    done = fresh.wait(job.id, poll=0.2, timeout=120)
    assert done.status == "done", done.log_tail()
    jobs._CHILDREN.update(children)


def test_ten_queued_jobs_run_one_at_a_time_in_order(store, tiny_bert):
    ids = [store.submit(cheap(tiny_bert, method="full"), name=f"q{i}").id for i in range(10)]  # full: no peft import
    assert [store.get(i).status for i in ids] == ["running"] + ["queued"] * 9
    # Nothing here calls schedule(): each worker starts the next queued job when it ends.
    wait_for(lambda: all(store.get(i).final for i in ids), 170, "the queue to drain")
    done = [store.get(i) for i in ids]
    assert [j.status for j in done] == ["done"] * 10, [j.log_tail() for j in done if j.status != "done"]
    for before, after in zip(done, done[1:]):
        assert before.started < after.started and before.finished <= after.started + 0.05


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "-dash", "", "x" * 65, "a b", "run\n", "ü"])
def test_odd_or_path_traversing_run_names_are_rejected(store, tiny_bert, name):
    with pytest.raises(SpectrascopeError, match="bad run name"):
        store.submit(cheap(tiny_bert), name=name)
    assert store.list() == [] and not (store.data / "runs").exists()


def test_default_names_are_fresh_and_a_taken_name_is_refused(store, tiny_bert):
    config = cheap(tiny_bert)
    first, second = store.submit(config, start=False), store.submit(config, start=False)
    assert (first.name, second.name) == ("lora-rotten_tomatoes", "lora-rotten_tomatoes-2")
    assert store.names() == {"lora-rotten_tomatoes", "lora-rotten_tomatoes-2"}
    assert jobs.default_name(first.config, store.names()) == "lora-rotten_tomatoes-3"     # what the form suggests
    with pytest.raises(SpectrascopeError, match="a run named 'lora-rotten_tomatoes-2' exists already: pick another "
                                                "name, e.g. 'lora-rotten_tomatoes-3'"):
        store.submit(config, name="lora-rotten_tomatoes-2", start=False)
    mine = store.submit(config, name="mine", start=False)
    with pytest.raises(SpectrascopeError, match="'mine' exists already.*'mine-2'"):
        store.submit({**config, "name": "mine"}, start=False)           # the name inside the config: the same
    assert [j.name for j in store.list()] == ["lora-rotten_tomatoes", "lora-rotten_tomatoes-2", "mine"]
    assert not jobs._CHILDREN and mine.status == "queued"


def test_fresh_name_suffixes_within_64_characters():
    assert jobs.fresh_name("a", set()) == "a"
    assert jobs.fresh_name("a", {"a", "a-2", "a-3"}) == "a-4"
    assert jobs.fresh_name("run-7", {"run-7"}) == "run-8"
    long = "x" * 64
    assert jobs.fresh_name(long, {long}) == "x" * 62 + "-2"
    assert jobs.NAME_RE.fullmatch(jobs.fresh_name("a." + "y" * 62, {"a." + "y" * 62}))
    assert jobs.name_problem("ok", {"other"}) is None
    assert "bad run name '../x'" in jobs.name_problem("../x")
    assert jobs.default_name({"method": "moe_lora", "task": "/data/my tasks/reviews.yaml"}) == "moe_lora-reviews"


def test_malformed_data_is_a_clear_error_and_starts_no_process(store, tiny_bert, tmp_path):
    data = tmp_path / "reviews.jsonl"
    data.write_text('{"text": "good", "label": 1}\n{"text": "bad", "label": 0\n')
    task = tmp_path / "reviews.yaml"
    task.write_text(f"name: reviews\nkind: classification\nsource: {data}\nlabel_names: [neg, pos]\nsplit_seed: 0\n")
    before = {p.pid for p in psutil.Process().children(recursive=True)}   # other tests' helpers (browser driver…)
    with pytest.raises(SpectrascopeError, match="line 2 of reviews.jsonl"):
        store.submit(cheap(tiny_bert, task=str(task)), name="bad-data")
    assert store.list() == []
    assert jobs._CHILDREN == {}
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before   # no worker was started


def test_bad_config_is_rejected_before_anything_is_queued(store):
    with pytest.raises(SpectrascopeError, match="unknown method"):
        store.submit({"method": "qlora"})
    with pytest.raises(SpectrascopeError, match="no job with id 42"):
        store.get(42)
    assert store.list() == []


def test_concurrency_limit_and_worker_command(monkeypatch):
    monkeypatch.setenv("SPECTRASCOPE_MAX_JOBS", "3")
    expected = torch.cuda.device_count() if torch.cuda.is_available() else 3
    assert max_concurrent() == expected
    assert worker_command(7) == [sys.executable, "-m", "training.worker", "--job", "7"]
    multi = worker_command(7, processes=2)
    assert multi[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert multi[multi.index("--nproc_per_node") + 1] == "2"
    assert multi[-4:] == ["-m", "training.worker", "--job", "7"] and "--standalone" in multi


def cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_submit_wait_on_the_default_model_prints_json_last(store, tmp_path):
    env = dict(os.environ, SPECTRASCOPE_DATA=str(tmp_path))
    proc = cli("submit", "--method", "lora", "--max-steps", "3", "--max-train-rows", "64", "--max-eval-rows",
               "16", "--max-test-rows", "16", "--name", "cli-run", "--wait", env=env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["status"] == "done" and summary["job"] == 1 and "accuracy" in summary["metrics"]
    assert "Traceback" not in proc.stderr
    listed = json.loads(cli("list", "--json", env=env).stdout)
    assert [(j["id"], j["name"], j["status"]) for j in listed] == [(1, "cli-run", "done")]
    assert "job 1 (cli-run) started" in cli("logs", "1", env=env).stdout
    assert json.loads(cli("show", "1", env=env).stdout)["result"]["status"] == "done"


@pytest.mark.parametrize("args,message", [
    (["submit", "--method", "lora", "--name", "../x"], "bad run name"),
    (["submit", "--method", "lora", "--task", "nope"], "unknown task 'nope'"),
    (["submit", "--method", "lora", "--set", "oops"], "use KEY=VALUE"),
    (["show", "99"], "no job with id 99"),
    (["cancel", "99"], "no job with id 99"),
])
def test_cli_bad_input_is_one_line_and_exit_2(store, tmp_path, args, message):
    proc = cli(*args, env=dict(os.environ, SPECTRASCOPE_DATA=str(tmp_path)), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr and "Traceback" not in proc.stderr
    assert store.list() == []
