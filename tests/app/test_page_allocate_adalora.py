"""The Allocate page's AdaLoRA section through AppTest: how to make a run, then learned vs α-predicted ranks."""
from __future__ import annotations

import json

import pytest

from tests.helpers import arr, ok
from tests.training.test_adalora import plant_run

LEARNED = [4, 6, 12, 20, 22, 32]                     # Σ 96 = target_r 8 × 12 matrices (query, value × 6)


@pytest.fixture
def data(tmp_path, monkeypatch):
    """A data directory of this test's own (its runs/ is what the section lists)."""
    monkeypatch.setenv("SPECTRASCOPE_DATA", str(tmp_path))
    return tmp_path


def open_page(app, **query):
    at = app(**query).run()
    at.switch_page("page_allocate.py").run()
    ok(at)
    return at


def section_chart(at) -> dict | None:
    for el in at.get("plotly_chart"):
        spec = json.loads(el.proto.spec)
        if "Learned vs predicted" in spec["layout"]["title"]["text"]:
            return spec
    return None


def test_without_adalora_runs_it_says_how_to_make_one(app, data):
    at = open_page(app)
    assert any("AdaLoRA: learned vs" in h.value for h in at.subheader)
    info = " ".join(i.value for i in at.info)
    assert "python -m training submit --method adalora" in info and "Train" in info
    assert section_chart(at) is None and not at.error and not at.warning


def test_a_finished_run_is_drawn_beside_the_alpha_allocation(app, data):
    plant_run(data / "runs", LEARNED)
    at = open_page(app)
    assert not at.error
    assert "7-adalora-planted" in at.selectbox(key="alloc_adalora_run").value.label
    chart = section_chart(at)
    learned, predicted, alpha = chart["data"]
    assert learned["type"] == "bar" and list(arr(learned["y"])) == LEARNED
    assert sum(arr(predicted["y"])) == sum(LEARNED) == 96 and alpha["yaxis"] == "y2"
    assert chart["layout"]["barmode"] == "group" and "layer" in chart["layout"]["xaxis"]["title"]["text"]
    table = [d.value for d in at.dataframe if "predicted" in d.value][0]
    assert list(table["layer"]) == list(range(6)) and table["predicted"].sum() == 96
    assert list(table["learned"] - table["predicted"]) == list(table["difference"])
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Σ rank (both)"] == "96" and metrics["AdaLoRA budget"] == "96 / 96"
    rho = metrics["Spearman ρ (learned vs predicted)"]
    assert rho == "—" or -1 <= float(rho) <= 1
    caption = " ".join(c.value for c in at.caption)
    assert "What it does not show" in caption and "one seed" in caption
    at.slider(key="w_beta").set_value(0.0).run()                 # β = 0: the α rule is uniform
    ok(at)
    assert list(arr(section_chart(at)["data"][1]["y"])) == [16] * 6
