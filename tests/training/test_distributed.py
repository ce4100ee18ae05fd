"""Data-parallel jobs: batch shards, and two torchrun CPU processes (gloo) training exactly like one process."""
from __future__ import annotations

import json
import time

import numpy as np
import psutil
import pytest
import torch
from safetensors.numpy import load_file

from analysis.types import SpectrascopeError
from tests.helpers import kill_job_processes, private_job_data
from tests.tiny_models import make_tiny_model
from training.distributed import Ranks, shard
from training.jobs import JobStore
from training.trainer import evaluate_artifacts

SMALL = {"max_train_rows": 48, "max_eval_rows": 16, "max_test_rows": 16, "eval_every": 2, "batch_size": 8}


def test_shards_cover_every_row_once_in_order():
    batch = {"input_ids": torch.arange(20).reshape(10, 2), "labels": torch.arange(10)}
    parts = [shard(batch, Ranks(r, 3, r)) for r in range(3)]
    assert [len(p["labels"]) for p in parts] == [3, 3, 4]
    assert torch.cat([p["labels"] for p in parts]).tolist() == list(range(10))
    assert torch.equal(torch.cat([p["input_ids"] for p in parts]), batch["input_ids"])
    assert shard({"labels": torch.arange(2)}, Ranks(1, 3, 1)) is None     # too few rows: every rank skips it
    assert shard(batch, Ranks()) is batch


@pytest.fixture
def store(tmp_path, monkeypatch):
    private_job_data(monkeypatch, tmp_path)
    store = JobStore(tmp_path)
    yield store
    kill_job_processes(store)


@pytest.fixture(scope="module")
def no_dropout_bert(tmp_path_factory) -> str:
    """Without dropout a step is deterministic, so 2 ranks × half batches must equal 1 process × whole batches."""
    return str(make_tiny_model(tmp_path_factory.mktemp("bert-nodrop"), "bert", hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0))


def test_two_cpu_processes_train_exactly_like_one(store, no_dropout_bert):
    config = {"method": "full", "model": no_dropout_bert, "max_steps": 4, "lr": 1e-3, "keep_best": False, **SMALL}
    one = store.wait(store.submit({**config, "name": "one-process"}).id, timeout=300)
    two = store.wait(store.submit({**config, "cpu_processes": 2, "name": "two-processes"}).id, timeout=300)
    assert (one.status, two.status) == ("done", "done"), two.log_tail(30)
    r1, r2 = one.result(), two.result()
    assert (r1["processes"], r2["processes"]) == (1, 2)
    assert json.loads((two.path("manifest.json")).read_text())["processes"] == 2
    # the same losses step by step (gradients averaged over the two halves = the whole batch's gradient)
    l1 = [p["loss"] for p in one.progress()]
    l2 = [p["loss"] for p in two.progress()]
    assert len(l1) == len(l2) == 4                # rank 0 alone writes progress lines
    np.testing.assert_allclose(l2, l1, rtol=1e-5)
    # the same weights after training, and the same validation and test scores
    w1 = load_file(str(one.path("artifacts/model/model.safetensors")))
    w2 = load_file(str(two.path("artifacts/model/model.safetensors")))
    assert w1.keys() == w2.keys()
    assert max(float(np.abs(w1[k] - w2[k]).max()) for k in w1) < 1e-5
    assert r2["test"] == pytest.approx(r1["test"], abs=1e-6)
    assert evaluate_artifacts(two.run_dir) == pytest.approx(r2["test"], abs=1e-9)


def test_a_two_process_job_cancels_cleanly(store, no_dropout_bert):
    config = {"method": "lora", "model": no_dropout_bert, "max_steps": 100000, **SMALL, "eval_every": 0}
    job = store.submit({**config, "cpu_processes": 2})
    t0 = time.monotonic()
    while not store.get(job.id).progress() and time.monotonic() - t0 < 120:
        time.sleep(0.3)
    assert store.get(job.id).progress(), store.get(job.id).log_tail(30)
    group = [p for p in psutil.process_iter(["cmdline"]) if f"--job {job.id}" in " ".join(p.info["cmdline"] or [])]
    assert len(group) >= 3                        # torchrun and its two ranks
    job = store.cancel(job.id, grace=20)
    assert job.status == "cancelled"
    assert json.loads(job.path("result.json").read_text())["status"] == "cancelled"   # rank 0 saw the flag itself
    gone, alive = psutil.wait_procs(group, timeout=10)
    assert not alive


def test_more_gpus_than_the_machine_has_is_refused_at_submit(store, no_dropout_bert):
    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs")
    with pytest.raises(SpectrascopeError, match="no GPU.*cpu_processes"):
        store.submit({"method": "lora", "model": no_dropout_bert, "gpus": 2, **SMALL})
    assert store.list() == []
