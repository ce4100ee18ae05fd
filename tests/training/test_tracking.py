"""MLflow tracking: a real job's run read back from the SQLite store (params, loss history, metrics, α, artifacts)."""
from __future__ import annotations

import json

import pytest

from analysis.types import SpectrascopeError
from training import run_layout, tracking
from training.jobs import JobStore
from training.trainer import TrainConfig

from tests.helpers import kill_job_processes, private_job_data

SMALL = {"max_train_rows": 32, "max_eval_rows": 8, "max_test_rows": 8}
NOT_PARAMS = {"mlflow", "mlflow_uri", "mlflow_alpha"}
LM_EVAL = {"results": {"rt_offline": {"alias": "rt_offline", "acc,none": 0.625, "acc_stderr,none": 0.05},
                       "hamlet": {"exact_match,strict-match": 0.25, "exact_match,flexible": 0.5}},
           "n-shot": {"rt_offline": 0}}


@pytest.fixture
def store(tmp_path, monkeypatch):
    private_job_data(monkeypatch, tmp_path)
    monkeypatch.setenv("SPECTRASCOPE_MLFLOW", "1")          # tracked, whatever the session says
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    store = JobStore(tmp_path)
    yield store
    kill_job_processes(store)


@pytest.mark.slow
def test_a_job_is_logged_to_the_sqlite_store_in_the_data_dir(store, tmp_path, tiny_bert):
    import mlflow
    from mlflow import MlflowClient

    from analysis.engine import analyze

    job = store.submit({"method": "lora", "model": tiny_bert, "max_steps": 6, "eval_every": 3, **SMALL}, name="seen")
    job = store.wait(job.id, poll=0.2, timeout=180)
    assert job.status == "done", job.log_tail()
    assert "warning: MLflow" not in job.log_tail(200)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        runs = mlflow.search_runs(experiment_names=["spectrascope"])
    finally:
        mlflow.set_tracking_uri(previous)
    assert len(runs) == 1 and runs.loc[0, "tags.mlflow.runName"] == "seen" and runs.loc[0, "status"] == "FINISHED"
    run_id = runs.loc[0, "run_id"]
    client = MlflowClient(uri)
    run = client.get_run(run_id)

    expected = {k: v if isinstance(v, str) else json.dumps(v) for k, v in job.config.items() if k not in NOT_PARAMS}
    assert run.data.params == expected                        # the whole config, tracking fields aside
    progress = job.progress()
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))
    assert history == [(line["step"], pytest.approx(line["loss"], rel=1e-12)) for line in progress]
    val = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val/accuracy"))
    assert val == [(line["step"], line["eval"]["accuracy"]) for line in progress if "eval" in line]
    result = job.result()
    for key, value in result["test"].items():
        assert run.data.metrics[f"test/{key}"] == pytest.approx(value, rel=1e-12)
    assert run.data.metrics["validation/accuracy"] == result["validation"]["accuracy"]

    before = analyze(tiny_bert).layer_rows                    # the engine itself: base, then base + the adapter
    after = analyze(tiny_bert, adapter=str(run_layout.artifact_folder(job.run_dir, "lora"))).layer_rows
    assert len(before) == 2
    for rows, when in ((before, "before"), (after, "after")):
        for row in rows:
            assert run.data.metrics[f"alpha/layer_{row['layer']:02d}/{when}"] == pytest.approx(row["alpha"])
    assert before[0]["alpha"] != after[0]["alpha"]

    names = {f.path for f in client.list_artifacts(run_id)}
    assert {"manifest.json", "result.json", "progress.jsonl", "artifacts"} <= names
    adapter = {f.path for f in client.list_artifacts(run_id, "artifacts/adapter")}
    assert "artifacts/adapter/adapter_model.safetensors" in adapter
    assert (tmp_path / tracking.ARTIFACT_ROOT).is_dir()       # the artifacts beside the store

    assert tracking.log_lm_eval(job, LM_EVAL) == 4
    metrics = client.get_run(run_id).data.metrics
    assert metrics["lm_eval/rt_offline/acc"] == 0.625 and metrics["lm_eval/rt_offline/acc_stderr"] == 0.05
    assert metrics["lm_eval/hamlet/exact_match/strict-match"] == 0.25


@pytest.mark.slow
def test_tracking_failures_warn_and_no_mlflow_logs_nothing(store, tmp_path, tiny_bert):
    bad = store.submit({"method": "lora", "model": tiny_bert, "max_steps": 2, "eval_every": 0,
                        "mlflow_uri": "nosuchscheme://nowhere", **SMALL}, name="bad-uri")
    off = store.submit({"method": "lora", "model": tiny_bert, "max_steps": 2, "eval_every": 0, "mlflow": False,
                        **SMALL}, name="off")
    bad, off = store.wait(bad.id, poll=0.2, timeout=120), store.wait(off.id, poll=0.2, timeout=120)
    assert bad.status == "done" and off.status == "done", bad.log_tail() + off.log_tail()
    warnings = [ln for ln in bad.log_tail(200).splitlines() if ln.startswith("warning: MLflow")]
    assert len(warnings) == 1 and "nosuchscheme" in warnings[0]
    assert "Traceback" not in bad.log_tail(200)
    assert not bad.path(run_layout.MLFLOW_RUN).exists() and not off.path(run_layout.MLFLOW_RUN).exists()
    assert not (tmp_path / tracking.DB).exists()              # neither run touched the default store


def test_destination_follows_the_config_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTRASCOPE_DATA", str(tmp_path))
    monkeypatch.delenv("SPECTRASCOPE_MLFLOW", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.destination({}) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.destination({}) == "http://127.0.0.1:5000"
    assert tracking.destination({"mlflow_uri": "sqlite:///x.db"}) == "sqlite:///x.db"
    assert tracking.destination({"mlflow": False, "mlflow_uri": "sqlite:///x.db"}) is None
    monkeypatch.setenv("SPECTRASCOPE_MLFLOW", "0")
    assert tracking.destination({"mlflow_uri": "sqlite:///x.db"}) is None


def test_the_submit_flags_and_bad_values(tmp_path):
    from training.__main__ import build_parser
    from training.cli_jobs import submit_config

    args = build_parser().parse_args(["submit", "--method", "lora", "--no-mlflow", "--checkpoint-every", "5",
                                      "--keep-checkpoints", "3", "--mlflow-uri", "http://127.0.0.1:5000"])
    config = submit_config(args)
    assert (config["mlflow"], config["checkpoint_every"], config["keep_checkpoints"], config["mlflow_uri"]) == \
        (False, 5, 3, "http://127.0.0.1:5000")
    cfg = TrainConfig.from_dict(config)
    assert cfg.mlflow is False and cfg.checkpoint_every == 5
    for bad, needle in (({"mlflow_uri": " "}, "mlflow_uri"), ({"mlflow": "yes"}, "mlflow"),
                        ({"checkpoint_every": -1}, "checkpoint_every"), ({"keep_checkpoints": 0}, "keep_checkpoints")):
        with pytest.raises(SpectrascopeError, match=needle):
            TrainConfig.from_dict({"method": "lora", **bad})


def test_lm_eval_results_become_metric_names_mlflow_accepts():
    assert tracking.lm_eval_metrics(LM_EVAL) == {
        "lm_eval/rt_offline/acc": 0.625, "lm_eval/rt_offline/acc_stderr": 0.05,
        "lm_eval/hamlet/exact_match/strict-match": 0.25, "lm_eval/hamlet/exact_match/flexible": 0.5}
    assert tracking.lm_eval_metrics({"error": "it failed"}) == {}
    assert tracking.log_lm_eval("/nonexistent/run", LM_EVAL) == 0     # an untracked run: nothing, no error
