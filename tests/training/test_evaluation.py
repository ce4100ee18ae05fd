"""Evaluation glue: base-model baselines, finished runs, the evaluations table, the CLI and bad task configs."""
from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import private_job_data
import torch

from analysis.types import SpectrascopeError
from training import evaluation
from training.evaluation import EvalStore, base_id, evaluate_base, evaluate_run, record_result
from training.jobs import JobStore

ROOT = Path(__file__).resolve().parents[2]
from tests.tiny_models import make_tiny_model
ROWS = {"max_train_rows": 32, "max_eval_rows": 16, "max_test_rows": 16}


def tiny(folder: Path, kind: str) -> str:
    return str(make_tiny_model(folder, kind))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    return tiny(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture
def data(tmp_path, monkeypatch) -> Path:
    private_job_data(monkeypatch, tmp_path)
    return tmp_path


def write_task(folder: Path, rows: list[dict], **config) -> Path:
    data = folder / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    body = {"name": "mine", "kind": "classification", "source": str(data), "label_names": ["neg", "pos"],
            "split_seed": 0, **config}
    path = folder / "mine.yaml"
    path.write_text(json.dumps(body))          # JSON is valid YAML
    return path


def test_store_keeps_one_value_per_key_in_the_jobs_database(data):
    JobStore(data)
    store = EvalStore(data)
    store.record("7", "t", "test", {"accuracy": 0.5, "mcc": float("nan")}, 10)
    store.record("7", "t", "test", {"accuracy": 0.75}, 10)                     # replace
    store.record("7", "t", "test", {"accuracy": 0.1}, 10, replace=False)       # kept
    got = store.get("7", "t", "test")
    assert got["accuracy"] == 0.75 and got["mcc"] != got["mcc"]                # NaN stored as NULL
    assert store.get("7", "t", "validation") == {}
    store.record("base:m", "t", "test", {"accuracy": 0.2}, 5, rows_hash="h1")
    store.record("base:m", "t", "test", {"accuracy": 0.3}, 9, rows_hash="h2")
    assert store.get("base:m", "t", "test", "h1") == {"accuracy": 0.2}
    assert store.get("base:m", "t", "test") == {"accuracy": 0.3}              # newest rows
    con = sqlite3.connect(data / "spectrascope.db")
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"jobs", "evaluations"} <= tables
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert base_id(None) == "base:all-MiniLM-L6-v2" and base_id("x", "untrained-head") == "base:x:untrained-head"


def test_encoder_base_linear_probe_and_untrained_head_are_deterministic_and_stored(data, tiny_bert):
    first = evaluate_base(tiny_bert, "rotten_tomatoes", "validation", ROWS)
    assert set(first) == {base_id(tiny_bert), base_id(tiny_bert, "untrained-head")}
    probe, head = first[base_id(tiny_bert)], first[base_id(tiny_bert, "untrained-head")]
    assert set(probe) == {"accuracy", "macro_f1", "mcc"} and set(head) == {"loss", "accuracy", "macro_f1", "mcc"}
    again = evaluate_base(tiny_bert, "rotten_tomatoes", "validation", ROWS, recompute=True)
    assert again == first                                                      # bit-identical
    assert EvalStore().get(base_id(tiny_bert), "rotten_tomatoes", "validation") == probe


def test_probe_on_a_separable_task_is_perfect(data, tiny_bert, tmp_path):
    rows = [{"text": ("wonderful " * 3 if i % 2 else "terrible " * 3) + str(i), "label": i % 2} for i in range(40)]
    task = write_task(tmp_path, rows)
    probe = evaluate_base(tiny_bert, str(task), "test", {"max_length": 16})[base_id(tiny_bert)]
    assert probe == {"accuracy": 1.0, "macro_f1": 1.0, "mcc": 1.0}           # hand-computed: all 4 test rows right


def test_decoder_zero_shot_picks_the_answer_with_the_highest_log_likelihood(data, tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.metrics import accuracy
    from training.tasks import load_task
    from training.trainer import split_rows

    out = evaluate_base(tiny_llama, "rotten_tomatoes", "test", ROWS)
    assert list(out) == [base_id(tiny_llama)]
    metrics = out[base_id(tiny_llama)]
    assert {"loss", "perplexity", "accuracy", "macro_f1", "mcc"} <= set(metrics)
    # by hand: sum of log p(answer tokens | prompt) for " negative" and " positive", argmax per row
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    task = load_task("rotten_tomatoes")
    rows = split_rows(task, evaluation.eval_config(tiny_llama, "rotten_tomatoes", ROWS))["test"]
    predictions = []
    for row in rows:
        scores = []
        for answer in task.candidates(row):
            prompt = tok(task.render(row), add_special_tokens=False)["input_ids"]
            ans = tok(answer, add_special_tokens=False)["input_ids"]
            prompt = prompt[max(0, len(prompt) + len(ans) - 64):]              # max_length 64, cut from the left
            ids = torch.tensor([prompt + ans])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            scores.append(sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(ans)))
        predictions.append(max(range(len(scores)), key=scores.__getitem__))
    assert metrics["accuracy"] == pytest.approx(accuracy([r["label"] for r in rows], predictions))
    lm = evaluate_base(tiny_llama, "hamlet_lm", "test", ROWS)[base_id(tiny_llama)]
    assert set(lm) == {"loss", "perplexity"} and lm["perplexity"] == pytest.approx(2.718281828 ** lm["loss"])


def test_finished_run_is_recorded_then_reevaluated_identically(data, tiny_bert, monkeypatch):
    jobs = JobStore(data)
    job = jobs.submit({"method": "lora", "model": tiny_bert, "max_steps": 1, "eval_every": 0, **ROWS}, name="r")
    job = jobs.wait(job.id, poll=0.2, timeout=180)
    assert job.status == "done", job.log_tail()
    result = job.result()
    assert record_result(job)
    store = EvalStore(data)
    assert store.get(str(job.id), "rotten_tomatoes", "test") == pytest.approx(result["test"])
    fresh = evaluate_run(job.id, "validation", recompute=True)
    assert fresh == pytest.approx(result["validation"], abs=1e-6)              # artifacts reload to the same numbers
    assert evaluate_run(job.id, "validation", recompute=True) == fresh         # deterministic
    compute = evaluation.compute_run
    monkeypatch.setattr(evaluation, "compute_run", lambda *a, **k: pytest.fail("test must be scored once"))
    assert evaluate_run(job.id, "test") == pytest.approx(result["test"])       # stored: not recomputed
    monkeypatch.setattr(evaluation, "compute_run", compute)
    with pytest.raises(SpectrascopeError, match="classification head trained for"):
        evaluate_run(job.id, "test", task="trec")
    with pytest.raises(SpectrascopeError, match="unknown split"):
        evaluate_run(job.id, "train")


def test_unfinished_or_missing_runs_are_clear_errors(data, tiny_bert):
    jobs = JobStore(data)
    job = jobs.submit({"method": "lora", "model": tiny_bert, "max_steps": 1, **ROWS}, name="q", start=False)
    with pytest.raises(SpectrascopeError, match=f"job {job.id} is queued"):
        evaluate_run(job.id)
    with pytest.raises(SpectrascopeError, match="no job with id 99"):
        evaluate_run(99)


@pytest.mark.parametrize("case,message", [
    ("missing_file", "data file not found"),
    ("unknown_column", "column 'body' (for text) not found"),
    ("unknown_metric", "unknown metric 'f2'"),
    ("empty_split", "split 'validation' of task mine is empty"),
    ("lm_on_encoder", "needs a decoder"),
])
def test_bad_task_configs_are_clear_messages(data, tiny_bert, tmp_path, case, message):
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(20)]
    config = {"missing_file": {"source": str(tmp_path / "nope.jsonl")},
              "unknown_column": {"columns": {"text": "body"}},
              "unknown_metric": {"metrics": ["accuracy", "f2"]},
              "empty_split": {"split_ratios": [1.0, 0.0, 0.0]},
              "lm_on_encoder": {}}[case]
    task = "hamlet_lm" if case == "lm_on_encoder" else str(write_task(tmp_path, rows, **config))
    with pytest.raises(SpectrascopeError, match=re.escape(message)):
        evaluate_base(tiny_bert, task, "validation", ROWS)


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_base_both_splits_prints_json_lines_and_bad_input_is_one_line(data, tiny_bert, tmp_path):
    env = dict(os.environ, SPECTRASCOPE_DATA=str(data), OMP_NUM_THREADS="1")
    proc = cli("evaluate", "--base", tiny_bert, "--split", "both", "--set", "max_train_rows=32",
               "--set", "max_eval_rows=16", "--set", "max_test_rows=16", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [(r["split"], r["run"].endswith("untrained-head")) for r in lines] == \
        [("validation", False), ("validation", True), ("test", False), ("test", True)]
    assert all(0 <= r["metrics"]["accuracy"] <= 1 for r in lines)
    bad = write_task(tmp_path, [{"text": "a", "label": 0}] * 4, metrics=["f2"])
    for args, message in [(["evaluate", "--run", "99"], "no job with id 99"),
                          (["evaluate", "--base", tiny_bert, "--task", str(bad)], "unknown metric 'f2'"),
                          (["evaluate", "--task", "nope"], "unknown task 'nope'"),
                          (["evaluate", "--run", "1", "--set", "max_eval_rows=3"], "--set applies to --base")]:
        proc = cli(*args, env=env)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip().count("\n") == 0
