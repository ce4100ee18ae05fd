"""Compare runs page through AppTest: a real tiny study's table, CI bars, Pareto scatter, loss curves, links, errors."""
from __future__ import annotations

import json
import os

import pytest

from training import study
from tests.helpers import ok

PAGE = "page_compare_runs.py"


def figures(at) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """LoRA and MoE-LoRA AlphaLoRA × 2 seeds on the default model, 1 step each, tiny row subsets, base baselines."""
    data = tmp_path_factory.mktemp("runs-data")
    env = {"SPECTRASCOPE_DATA": str(data), "SPECTRASCOPE_MAX_JOBS": "1", "OMP_NUM_THREADS": "1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        spec = study.StudySpec(seeds=2, max_steps=1, methods=["lora", "moe_alphalora"],
                               options={"max_train_rows": 32, "max_eval_rows": 16, "max_test_rows": 16,
                                        "eval_every": 0})
        record = study.start_study(spec)
        study.wait_study(record["id"], poll=0.5, out=open(os.devnull, "w"))
        jobs = study.study_jobs(record)
        assert [j.status for j in jobs] == ["done"] * 4, [j.log_tail() for j in jobs]
    return data, record["id"]


@pytest.fixture
def page(app, monkeypatch):
    def open_page(data, **query):
        monkeypatch.setenv("SPECTRASCOPE_DATA", str(data))
        return app(**query).run().switch_page(PAGE).run()
    return open_page


def test_study_table_bars_pareto_and_loss_curves(page, finished_study):
    data, sid = finished_study
    at = page(data, study=sid)
    ok(at)
    assert not at.error
    assert at.title[0].value == "Compare runs"
    table = at.dataframe[0].value
    assert list(table["method"]) == ["LoRA", "MoE-LoRA AlphaLoRA", "Base: linear probe", "Base: untrained head"]
    assert list(table["runs"]) == ["2/2", "2/2", "base", "base"]
    assert "±" in table["test accuracy"].iloc[0] and table["trainable params"].iloc[0].endswith("k")
    assert table["allocation"].iloc[1].startswith("alphalora β=2.5")
    bars, pareto, loss = figures(at)
    assert "mean ± 95 % CI" in bars["layout"]["title"]["text"]
    assert [d["type"] for d in bars["data"]] == ["bar"] and bars["data"][0]["error_y"]["visible"]
    assert list(bars["data"][0]["x"]) == list(table["method"])
    assert pareto["layout"]["xaxis"]["type"] == "log"
    names = [d.get("name") for d in pareto["data"]]
    assert "LoRA" in names and "MoE-LoRA AlphaLoRA" in names
    assert any("linear probe" in s["text"] for s in pareto["layout"]["annotations"])      # base as a line
    assert len(loss["data"]) == 4 and sum(d["showlegend"] for d in loss["data"]) == 2   # seeds share a legend
    config = json.loads(at.get("plotly_chart")[0].proto.config)
    assert config["toImageButtonOptions"]["filename"] == f"study{sid}-bars"
    assert {b.label for b in at.get("download_button")} >= {"Download CSV", "Runs CSV"}
    link = at.get("page_link")[0].proto
    assert link.label == "Compare spectra" and link.page == "spectra"
    assert "cs_runs=1-study1-lora-s0%2C2-study1-moe-alphalora-s0" in link.query_string


def test_metric_and_split_switch(page, finished_study):
    data, sid = finished_study
    at = page(data, study=sid, split="validation", cmp_metric="mcc")
    ok(at)
    bars = figures(at)[0]
    assert bars["layout"]["title"]["text"].startswith("validation mcc")
    assert "validation mcc" in at.dataframe[0].value.columns and "test mcc" not in at.dataframe[0].value.columns


def test_all_runs_view(page, finished_study):
    data, _ = finished_study
    at = page(data, study="all")
    ok(at)
    assert len(at.dataframe[0].value) == 4 and len(figures(at)) == 3


def test_no_runs_shows_the_form_and_a_hint(page, tmp_path):
    at = page(tmp_path)
    ok(at)
    assert any("No runs yet" in i.value for i in at.info)
    assert at.button(key="FormSubmitter:study_form-Queue the study") is not None


def test_unknown_study_and_bad_model_are_errors(page, finished_study, tmp_path):
    data, _ = finished_study
    at = page(data, study=999)
    ok(at)
    assert any("No study with id 999" in e.value for e in at.error)
    at = page(tmp_path)
    at.text_input(key="study_model").set_value("/no/such/model")
    at.button(key="FormSubmitter:study_form-Queue the study").click().run()
    ok(at)
    assert any("Could not start the study" in e.value and "/no/such/model" in e.value for e in at.error)
    assert study.list_studies() == []
