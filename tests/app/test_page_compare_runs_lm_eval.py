"""Compare runs page: stored lm-evaluation-harness results of a study's runs and its base drawn with lm-eval's
stderr as the interval (bars and table)."""
from __future__ import annotations

import json

import pytest

from analysis.config import DEFAULT_MODEL
from tests.helpers import arr, ok
from tests.training.test_study_report import plant_study
from training.lm_eval_harness import LmEvalStore

PAGE = "page_compare_runs.py"
TASK = "spectrascope_rotten_tomatoes"


def lm_eval_output(acc: float, stderr: float, n: int) -> dict:
    """The parts of lm_eval.simple_evaluate's output the store reads, shaped as lm-eval 0.4.13 writes them."""
    return {"results": {TASK: {"alias": TASK, "acc,none": acc, "acc_stderr,none": stderr,
                               "acc_norm,none": acc, "acc_norm_stderr,none": stderr}},
            "n-shot": {TASK: 0}, "n-samples": {TASK: {"original": 1275, "effective": n}}}


def test_lm_eval_results_of_runs_and_base_with_stderr_intervals(app, tmp_path, monkeypatch):
    plant_study(tmp_path, {"lora": {0: ("done", range(140))}, "moe_uniform": {0: ("done", range(150))}})
    store = LmEvalStore(tmp_path)
    store.record("1", lm_eval_output(0.75, 0.02, 400), 400)
    store.record(f"base:{DEFAULT_MODEL}", lm_eval_output(0.5, 0.03, 400), 400)
    store.record("99", lm_eval_output(0.9, 0.01, 400), 400)                  # not in this study: not shown
    monkeypatch.setenv("SPECTRASCOPE_DATA", str(tmp_path))
    at = app(study=1).run().switch_page(PAGE).run()
    ok(at)
    assert not at.error
    assert [s.value for s in at.subheader][-1] == "lm-evaluation-harness"
    figure = [json.loads(el.proto.spec) for el in at.get("plotly_chart")][-1]
    (trace,) = figure["data"]
    assert list(trace["x"]) == [f"base:{DEFAULT_MODEL} · first 400 docs", "study1-lora-s0 · first 400 docs"]
    assert arr(trace["y"]).tolist() == [0.5, 0.75]
    assert arr(trace["error_y"]["array"]).tolist() == pytest.approx([1.96 * 0.03, 1.96 * 0.02])
    table = at.dataframe[-1].value
    assert list(table["value"]) == [0.5, 0.5, 0.75, 0.75] and set(table["metric"]) == {"acc", "acc_norm"}
    assert list(table["documents"]) == [400] * 4 and list(table["limit"]) == [400] * 4
    assert any("first N documents" in c.value for c in at.caption)
