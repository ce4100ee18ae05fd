"""The Train page's Resume button: a cancelled run with a checkpoint continues in its folder; one without says so."""
from __future__ import annotations

from pathlib import Path

import pytest

from training import checkpoint
from training.jobs import JobStore

from tests.helpers import kill_job_processes, ok, private_job_data, wait_for


@pytest.fixture
def data(tmp_path, monkeypatch) -> Path:
    private_job_data(monkeypatch, tmp_path)
    yield tmp_path
    kill_job_processes(JobStore(tmp_path))


def test_resume_button_continues_a_cancelled_run_and_is_absent_without_a_checkpoint(app, data, tiny_bert):
    store = JobStore(data)
    base = {"method": "lora", "model": tiny_bert, "max_train_rows": 32, "max_eval_rows": 8, "max_test_rows": 8,
            "eval_every": 0, "max_steps": 100000, "mlflow": False}
    job = store.submit({**base, "checkpoint_every": 2}, name="long")
    never = store.submit(base, name="never", start=False)
    store.cancel(never.id)                                        # cancelled before it started: no checkpoint
    wait_for(lambda: checkpoint.latest(job.run_dir) is not None, 120, "a checkpoint")
    store.cancel(job.id, grace=30)
    step = checkpoint.step_of(checkpoint.latest(job.run_dir))

    at = app(train_run=never.id).run()
    at.switch_page("page_train.py").run()
    ok(at)
    assert not [b for b in at.button if b.key and b.key.startswith("tr_resume_")]
    assert any("cannot be resumed" in c.value for c in at.caption)

    at.selectbox(key="w_train_run").set_value(job.id).run()
    button = at.button(key=f"tr_resume_{job.id}")
    assert button.label == f"Resume from step {step}"
    button.click().run()
    ok(at)
    assert store.get(job.id).status == "running"
    wait_for(lambda: len(store.get(job.id).progress()) > step, 120, "training after the checkpoint")
    assert [line["step"] for line in store.get(job.id).progress()][:step + 1] == list(range(1, step + 2))
    store.cancel(job.id, grace=30)
