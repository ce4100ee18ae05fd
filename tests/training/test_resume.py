"""Resume: checkpoints at validation passes, a stopped or SIGKILLed run continues to the same losses and weights."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from analysis.types import SpectrascopeError
from training import checkpoint, run_layout
from training.jobs import JobStore
from training.trainer import train

from tests import helpers
from tests.helpers import assert_clear_error, kill_job_processes, private_job_data
from tests.tiny_models import make_tiny_model

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"max_train_rows": 64, "max_eval_rows": 16, "max_test_rows": 16}
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


@pytest.fixture(scope="module")
def tiny_still(tmp_path_factory) -> str:
    """A tiny BERT without dropout anywhere (the LoRA dropout is set to 0 in its configs)."""
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny-still"), "bert", **NO_DROPOUT))


def losses(lines: list[dict]) -> dict[int, float]:
    return {line["step"]: line["loss"] for line in lines}


def adapter(run: Path) -> dict[str, np.ndarray]:
    return load_file(run_layout.artifact_folder(run, "lora") / "adapter_model.safetensors")


def stopped_then_resumed(config: dict, folder: Path, stop_after: int) -> tuple[list, list, dict]:
    """Run `config` until `stop_after` progress lines (cancelled), then resume it from its latest checkpoint."""
    first: list[dict] = []
    result = train(config, folder, progress=first.append, should_stop=lambda: len(first) >= stop_after)
    assert result["status"] == "cancelled" and result["steps"] == stop_after
    found = checkpoint.latest(folder)
    assert found is not None
    second: list[dict] = []
    return first, second, train(config, folder, progress=second.append, resume_from=found)


def assert_same_run(reference: Path, ref_lines: list, ref_result: dict, resumed: Path, lines: list, result: dict):
    ref, got = losses(ref_lines), losses(lines)
    assert list(got) == list(range(min(got), max(ref) + 1))         # continues after the checkpoint, to the end
    np.testing.assert_allclose([got[s] for s in got], [ref[s] for s in got], rtol=1e-5)
    a, b = adapter(reference), adapter(resumed)
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-7, err_msg=name)
    assert result["test"] == pytest.approx(ref_result["test"], rel=1e-5)
    assert result["steps"] == ref_result["steps"] and result["best_step"] == ref_result["best_step"]


def test_dropout_free_run_resumed_repeats_the_uninterrupted_losses_and_weights(tmp_path, tiny_still):
    config = {"method": "lora", "model": tiny_still, "max_steps": 12, "eval_every": 5, "dropout": 0.0, **SMALL}
    ref_lines: list[dict] = []
    ref_result = train(config, tmp_path / "ref", progress=ref_lines.append)
    first, lines, result = stopped_then_resumed(config, tmp_path / "run", stop_after=8)
    assert [line["step"] for line in lines] == list(range(6, 13))   # checkpoint at 5; 6..8 are done again
    assert_same_run(tmp_path / "ref", ref_lines, ref_result, tmp_path / "run", lines, result)
    manifest = json.loads(run_layout.manifest(tmp_path / "run").read_text())
    assert [(r["step"], r["checkpoint"]) for r in manifest["resumes"]] == [(5, "step-000005")]
    assert not run_layout.checkpoints(tmp_path / "run").exists()     # a done run keeps its artifacts only


@pytest.mark.slow
def test_dropout_run_is_equal_because_the_rng_states_are_restored(tmp_path, tiny_bert, monkeypatch):
    """With dropout on (BERT's 0.1 and LoRA's 0.05) the resumed losses equal the uninterrupted ones; without the
    RNG restore (set_rng_state skipped) they do not: the masks come from the restored generator."""
    config = {"method": "lora", "model": tiny_bert, "max_steps": 10, "eval_every": 4, **SMALL}
    ref_lines: list[dict] = []
    ref_result = train(config, tmp_path / "ref", progress=ref_lines.append)
    _, lines, result = stopped_then_resumed(config, tmp_path / "run", stop_after=6)
    assert_same_run(tmp_path / "ref", ref_lines, ref_result, tmp_path / "run", lines, result)

    monkeypatch.setattr(checkpoint, "set_rng_state", lambda state: None)
    _, lines, _ = stopped_then_resumed(config, tmp_path / "no-rng", stop_after=6)
    ref = losses(ref_lines)
    assert not np.allclose([line["loss"] for line in lines], [ref[line["step"]] for line in lines], rtol=1e-5)


@pytest.mark.slow
def test_default_model_with_dropout_resumes_to_the_same_losses(tmp_path):
    config = {"method": "lora", "max_steps": 4, "eval_every": 2, "max_train_rows": 64, "max_eval_rows": 16,
              "max_test_rows": 16}
    ref_lines: list[dict] = []
    ref_result = train(config, tmp_path / "ref", progress=ref_lines.append)
    _, lines, result = stopped_then_resumed(config, tmp_path / "run", stop_after=3)
    assert [line["step"] for line in lines] == [3, 4]
    assert_same_run(tmp_path / "ref", ref_lines, ref_result, tmp_path / "run", lines, result)


def test_checkpoints_keep_the_newest_k_and_a_half_written_one_is_never_the_latest(tmp_path, tiny_still):
    config = {"method": "lora", "model": tiny_still, "max_steps": 20, "eval_every": 0, "checkpoint_every": 2,
              "keep_checkpoints": 3, "dropout": 0.0, **SMALL}
    lines: list[dict] = []
    train(config, tmp_path, progress=lines.append, should_stop=lambda: len(lines) >= 9)
    assert [step for step, _ in checkpoint.list_checkpoints(tmp_path)] == [4, 6, 8]
    # A worker killed while writing step 10 leaves a temporary folder (and maybe a state file) but no checkpoint.
    torn = run_layout.checkpoints(tmp_path) / f"{checkpoint.TMP}step-000010-999"
    torn.mkdir()
    (torn / checkpoint.STATE).write_bytes(b"\x80\x02partial")
    assert checkpoint.latest(tmp_path).name == "step-000008"
    state = checkpoint.load(checkpoint.latest(tmp_path))
    assert state["loop"]["step"] == 8 and state["loop"]["next_batch"] == 4    # 4 batches of 16 rows per epoch
    assert set(state["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert all("lora_" in k or "classifier" in k for k in state["weights"] if not k.startswith("buffer:"))
    checkpoint.save(tmp_path, 10, state, keep=3)
    assert not torn.exists() and [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [6, 8, 10]


def test_truncate_progress_keeps_steps_up_to_the_checkpoint(tmp_path):
    path = run_layout.progress(tmp_path)
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 18)) + '{"step": 1')
    assert checkpoint.truncate_progress(tmp_path, 10) == 8
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == list(range(1, 11))


# ----------------------------------------------------------------------------------------------- jobs

@pytest.fixture
def store(tmp_path, monkeypatch):
    private_job_data(monkeypatch, tmp_path)
    monkeypatch.setenv("SPECTRASCOPE_MLFLOW", "1")          # tracked, whatever the session says
    store = JobStore(tmp_path)
    yield store
    kill_job_processes(store)


def wait_for(predicate, timeout: float, what: str):
    """helpers.wait_for at a fine poll: the SIGKILL must land between two steps."""
    return helpers.wait_for(predicate, timeout, what, poll=0.02)


def cli(*args, data: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, SPECTRASCOPE_DATA=str(data), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "training", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)


@pytest.mark.slow
def test_sigkilled_worker_resumes_to_the_planned_steps_with_one_loss_per_step(store, tmp_path, tiny_still):
    from mlflow import MlflowClient

    steps = 60
    config = {"method": "lora", "model": tiny_still, "max_steps": steps, "eval_every": 0, "checkpoint_every": 10,
              "dropout": 0.0, "mlflow_alpha": False, **SMALL}
    job = store.submit(config, name="victim")
    wait_for(lambda: len(store.get(job.id).progress()) >= 13, 120, "step 13")
    os.killpg(job.pid, signal.SIGKILL)
    wait_for(lambda: store.reconcile() or store.get(job.id).status == "lost", 10, "the job to be lost")
    before = [line["step"] for line in store.get(job.id).progress()]
    saved = checkpoint.step_of(checkpoint.latest(job.run_dir))
    assert max(before) < steps and saved % 10 == 0 and saved <= max(before)

    job = store.resume(job.id)                          # queued again and started
    assert job.status == "running" and job.run_dir.endswith(f"{job.id}-victim")
    job = store.wait(job.id, poll=0.2, timeout=180)
    assert job.status == "done", job.log_tail()
    assert [line["step"] for line in job.progress()] == list(range(1, steps + 1))     # no duplicates, no gaps
    assert job.result()["steps"] == steps
    manifest = json.loads(job.path(run_layout.MANIFEST).read_text())
    assert [r["step"] for r in manifest["resumes"]] == [saved]
    assert f"resuming after step {saved}" in job.log_tail(200)

    ref_lines: list[dict] = []                          # the same config, uninterrupted, in this process
    train(config, tmp_path / "ref", progress=ref_lines.append)
    ref = losses(ref_lines)
    np.testing.assert_allclose([line["loss"] for line in job.progress()], [ref[s] for s in range(1, steps + 1)],
                               rtol=1e-5)

    mlflow_run = json.loads(job.path(run_layout.MLFLOW_RUN).read_text())
    client = MlflowClient(mlflow_run["uri"])
    history = sorted((m.step, m.value) for m in client.get_metric_history(mlflow_run["run_id"], "loss"))
    assert [s for s, _ in history] == list(range(1, steps + 1))
    assert client.get_run(mlflow_run["run_id"]).info.status == "FINISHED"

    # A finished run is not resumed, and neither is one that never wrote a checkpoint: one clear line each.
    assert_clear_error(cli("resume", str(job.id), data=tmp_path), f"job {job.id} is done")
    early = store.submit({**config, "mlflow": False}, name="early", start=False)
    store.cancel(early.id)
    with pytest.raises(SpectrascopeError, match="no checkpoint to resume from"):
        store.resume(early.id)
    assert_clear_error(cli("resume", str(early.id), data=tmp_path), "no checkpoint")
    assert_clear_error(cli("resume", "999", data=tmp_path), "no job with id 999")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["adalora", "moe_lora", "full"])
def test_other_methods_resume_to_the_same_losses(tmp_path, tiny_bert, method):
    """AdaLoRA (its importance averages and rank pattern are in the checkpoint), MoE-LoRA (per-expert dropout,
    balance loss) and a full fine-tune (every weight) with dropout on."""
    config = {"method": method, "model": tiny_bert, "max_steps": 16, "eval_every": 5, **SMALL}
    ref_lines: list[dict] = []
    ref_result = train(config, tmp_path / "ref", progress=ref_lines.append)
    _, lines, result = stopped_then_resumed(config, tmp_path / "run", stop_after=12)
    ref = losses(ref_lines)
    assert [line["step"] for line in lines] == list(range(11, 17))
    np.testing.assert_allclose([line["loss"] for line in lines], [ref[line["step"]] for line in lines], rtol=1e-5)
    assert result["test"] == pytest.approx(ref_result["test"], rel=1e-5)
