"""Compare runs page through AppTest: a real tiny study, a planted single-seed study (n = 1, paired differences),
the study form's plan, Cancel study, errors."""
from __future__ import annotations

import json
import os
import re

import pytest

from training import study
from training.cli_study import wait_study
from tests.helpers import ok
from tests.training.test_study_report import ROWS, plant_study, wilson_by_hand

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
        wait_study(record["id"], poll=0.5, out=open(os.devnull, "w"))
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
    assert list(table["done / planned"]) == ["2 / 2", "2 / 2", "base", "base"]
    assert list(table["n"])[:2] == ["n = 2", "n = 2"] and table["n"].iloc[2].endswith("test rows")
    assert "±" in table["test accuracy (scored once)"].iloc[0] and table["trainable params"].iloc[0].endswith("k")
    assert "[" in table["test accuracy (scored once)"].iloc[2]                         # base: Wilson interval
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
    assert re.search(r"cs_runs=\d+-study1-lora-s0%2C\d+-study1-moe-alphalora-s0", link.query_string)


def test_metric_and_split_switch(page, finished_study):
    data, sid = finished_study
    at = page(data, study=sid, split="validation", cmp_metric="mcc")
    ok(at)
    bars = figures(at)[0]
    assert bars["layout"]["title"]["text"].startswith("validation mcc")
    columns = at.dataframe[0].value.columns
    assert "best validation mcc (selection)" in columns and not any(c.startswith("test ") for c in columns)


def test_all_runs_view(page, finished_study):
    data, _ = finished_study
    at = page(data, study="all")
    ok(at)
    table = at.dataframe[0].value
    assert len(table) == 4 and len(figures(at)) == 3
    assert list(table["method"])[2:] == ["Base: linear probe", "Base: untrained head"]


def test_no_runs_shows_the_form_and_a_hint(page, tmp_path):
    at = page(tmp_path)
    ok(at)
    assert any("No runs yet" in i.value for i in at.info)
    assert at.button(key="study_start") is not None


def test_unknown_study_and_bad_model_are_errors(page, finished_study, tmp_path):
    data, _ = finished_study
    at = page(data, study=999)
    ok(at)
    assert any("No study with id 999" in e.value for e in at.error)
    at = page(tmp_path)
    at.text_input(key="study_model").set_value("/no/such/model")
    at.button(key="study_start").click().run()
    ok(at)
    assert any("Could not start the study" in e.value and "/no/such/model" in e.value for e in at.error)
    assert study.list_studies() == []


# ---------------------------------------------------------------- planted studies (no training)

SINGLE_SEED = {"lora": {0: ("done", range(140))}, "moe_uniform": {0: ("done", range(150))},
               "moe_mola": {0: ("cancelled", None)}, "moe_alphalora": {0: ("done", range(10, 160))}}


def test_single_seed_study_says_n_1_and_draws_no_interval(page, tmp_path):
    plant_study(tmp_path, SINGLE_SEED)
    at = page(tmp_path, study=1)
    ok(at)
    assert not at.error
    table = at.dataframe[0].value.set_index("method")
    assert list(table.index) == ["LoRA", "MoE-LoRA uniform", "MoE-LoRA MoLA", "MoE-LoRA AlphaLoRA",
                                 "Base: linear probe", "Base: untrained head"]
    assert table.loc["LoRA", "n"] == "n = 1" and table.loc["LoRA", "test accuracy (scored once)"] == "0.700"
    assert table.loc["MoE-LoRA MoLA", "done / planned"] == "0 / 1 (1 cancelled)"
    lo, hi = wilson_by_hand(124, ROWS)
    assert table.loc["Base: linear probe", "test accuracy (scored once)"] == f"0.620 [{lo:.3f}, {hi:.3f}]"
    assert any("best validation score" in c.value and "scored once" in c.value for c in at.caption)
    bars = figures(at)[0]
    (trace,) = bars["data"]
    methods = list(trace["x"])
    assert methods == ["LoRA", "MoE-LoRA uniform", "MoE-LoRA AlphaLoRA", "Base: linear probe",
                       "Base: untrained head"]
    above, below = trace["error_y"]["array"], trace["error_y"]["arrayminus"]
    assert above[:3] == [None] * 3 and below[:3] == [None] * 3                 # n = 1: no bar, no cap
    assert above[3] == pytest.approx(hi - 0.62) and below[3] == pytest.approx(0.62 - lo)
    assert trace["customdata"][0] == ["rank 8", "n = 1 seed (no interval)"]
    pareto = figures(at)[1]
    assert all(d["error_y"]["array"] == [None] for d in pareto["data"] if d.get("mode") == "markers")
    paired = at.dataframe[1].value
    assert list(paired.columns) == ["arm", "reference", "mean difference", "95 % CI", "verdict", "seeds", "rows"]
    assert list(paired["arm"]) == ["MoE-LoRA uniform", "MoE-LoRA MoLA", "MoE-LoRA AlphaLoRA"]
    assert list(paired["reference"]) == ["LoRA", "MoE-LoRA uniform", "MoE-LoRA uniform"]
    assert paired["mean difference"].iloc[0] == "+0.050" and paired["seeds"].iloc[0] == 1
    assert paired["rows"].iloc[0] == ROWS
    assert paired["verdict"].iloc[2] == "no detectable difference at this budget"
    assert paired["verdict"].iloc[1].startswith("waiting")
    assert not [b for b in at.button if b.label == "Cancel study"]             # nothing left to cancel


def test_cancel_study_cancels_its_queued_runs(page, tmp_path):
    plant_study(tmp_path, {"lora": {0: ("done", range(140)), 1: ("queued", None)},
                           "full": {0: ("queued", None), 1: ("queued", None)}}, base=False)
    at = page(tmp_path, study=1)
    ok(at)
    (button,) = [b for b in at.button if b.label == "Cancel study"]
    button.click().run()
    ok(at)
    assert any("3 runs cancelled" in s.value for s in at.success)
    from training.jobs import JobStore
    assert [j.status for j in JobStore(tmp_path).list()] == ["done", "cancelled", "cancelled", "cancelled"]
    assert not [b for b in at.button if b.label == "Cancel study"]
    table = at.dataframe[0].value.set_index("method")
    assert table.loc["LoRA", "done / planned"] == "1 / 2 (1 cancelled)"


def test_the_form_says_how_many_runs_and_how_long(page, tmp_path):
    at = page(tmp_path)
    ok(at)
    at.number_input(key="study_seeds").set_value(2).run()
    text = " ".join(c.value for c in at.caption)
    n = 2 * len(study.DEFAULT_ARMS)
    assert f"Queues {n} runs ({len(study.DEFAULT_ARMS)} methods × 2 seeds)" in text and "about " in text
    assert study.list_studies() == []                                        # nothing queued by looking
