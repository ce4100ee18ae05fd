"""The New-run form's lm-eval pass: the tasks and limit reach the job's config; an encoder is refused at submit."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import kill_job_processes, ok, private_job_data
from tests.tiny_models import make_tiny_model
from training.jobs import JobStore

TINY = {"tr_max_steps": 1, "tr_max_train_rows": 8, "tr_max_eval_rows": 4, "tr_max_test_rows": 4, "tr_eval_every": 0}


@pytest.fixture
def data(tmp_path, monkeypatch) -> Path:
    private_job_data(monkeypatch, tmp_path / "data")
    yield tmp_path / "data"
    kill_job_processes(JobStore(tmp_path / "data"))


def submit(app, model: str, tasks: str, limit: int | None):
    at = app(model=model).run()
    at.switch_page("page_train.py").run()
    ok(at)
    for key, value in TINY.items():
        at.number_input(key=key).set_value(value)
    at.text_input(key="tr_lm_eval_tasks").set_value(tasks)
    at.number_input(key="tr_lm_eval_limit").set_value(limit)
    at.button(key="tr_submit").click().run()
    ok(at)
    return at


def test_lm_eval_tasks_reach_the_config_and_an_encoder_is_refused(app, data, tmp_path):
    llama = str(make_tiny_model(tmp_path / "llama", "llama"))
    at = submit(app, llama, " spectrascope_trec, spectrascope_hamlet ", 4)
    assert not at.error, [e.value for e in at.error]
    (job,) = JobStore(data).list()
    assert job.config["lm_eval_tasks"] == ["spectrascope_trec", "spectrascope_hamlet"]
    assert job.config["lm_eval_limit"] == 4
    bert = str(make_tiny_model(tmp_path / "bert", "bert"))
    at = submit(app, bert, "spectrascope_trec", None)
    assert any("lm_eval_tasks: model" in e.value and "is an encoder" in e.value for e in at.error)
    assert len(JobStore(data).list()) == 1                                   # nothing queued for the encoder
