"""The explorer pages through Streamlit's AppTest: overview, layer detail, model comparison, URL state, errors."""
from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

import pytest

from analysis import engine
from analysis.config import DEFAULT_MODEL
from app import common
from tests.helpers import arr, ok

MINILM_LAYERS = 6
ROOT = Path(__file__).resolve().parents[2]


def figures(at) -> list[dict]:
    """The Plotly figures on the page, as dicts."""
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]




def selectbox(at, key: str):
    return at.selectbox(key=key)


def test_overview_default_model(app):
    at = app().run()
    ok(at)
    assert not at.error
    assert at.title[0].value == "Layer quality overview"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Transformer layers"] == str(MINILM_LAYERS)
    assert metrics["Matrices skipped"] == "1"                       # the 2 × 384 token-type embedding
    figs = figures(at)
    assert len(figs) == 2
    layer_fig, heat = figs
    assert "α" in layer_fig["layout"]["yaxis"]["title"]["text"]
    assert "layer" in layer_fig["layout"]["xaxis"]["title"]["text"]
    bands = [s for s in layer_fig["layout"]["shapes"] if s.get("type") == "rect"]
    assert {b["y1"] for b in bands} >= {2.0} and {b["y0"] for b in bands} >= {6.0}
    texts = [a["text"] for a in layer_fig["layout"]["annotations"]]
    assert any("over-trained" in t for t in texts) and any("under-trained" in t for t in texts)
    line = [t for t in layer_fig["data"] if t.get("mode") == "lines+markers"][0]
    assert arr(line["customdata"]).tolist() == list(range(MINILM_LAYERS))        # the click → layer route
    assert heat["data"][0]["type"] == "heatmap"
    assert arr(heat["data"][0]["z"]).shape == (MINILM_LAYERS, 6)
    assert len(at.dataframe) >= 1
    assert {b.label for b in at.get("download_button")} == {"Download CSV", "Download JSON"}
    assert at.query_params["model"] == [DEFAULT_MODEL] or at.query_params["model"] == DEFAULT_MODEL


def test_overview_score_and_metric_switch_and_land_in_url(app):
    at = app().run()
    selectbox(at, "w_score").select("alpha").run()
    selectbox(at, "w_metric").select("stable_rank").run()
    ok(at)
    layer_fig, heat = figures(at)
    assert "weightwatcher" in layer_fig["layout"]["title"]["text"]
    assert "stable rank" in heat["layout"]["title"]["text"]
    assert str(at.query_params["score"]).strip("[]'") == "alpha"
    assert str(at.query_params["metric"]).strip("[]'") == "stable_rank"


def test_layer_page_selection_through_session_state(app):
    at = app()
    at.session_state[common.SELECTED_LAYER] = "2"                    # what a click on the α chart sets
    at.run()
    at.switch_page("page_layer.py").run()
    ok(at)
    assert at.title[0].value == "Layer detail"
    assert selectbox(at, "w_layer").value == 2
    figs = figures(at)
    matrix_figs = [f for f in figs if "ESD, log-log" in json.dumps(f["layout"].get("annotations", []))]
    assert len(matrix_figs) == 6                                     # MiniLM blocks hold 6 matrices
    one = matrix_figs[0]
    assert one["layout"]["xaxis"]["type"] == "log" and "WᵀW" in one["layout"]["xaxis"]["title"]["text"]
    assert any(str(t.get("name", "")).startswith("power law, α =") for t in one["data"])
    assert any(str(t.get("name", "")).startswith("MP bulk edge") for t in one["data"])
    assert any(t.get("name") == "chosen xmin (min D)" for t in one["data"])
    assert str(at.query_params["layer"]).strip("[]'") == "2"


def test_layer_page_one_matrix_and_hill_fit(app):
    at = app(layer=1, fit="hill", matrix="encoder.layer.1.attention.self.query.weight").run()
    at.switch_page("page_layer.py").run()
    ok(at)
    figs = [f for f in figures(at) if "ESD, log-log" in json.dumps(f["layout"].get("annotations", []))]
    assert len(figs) == 1
    assert "PL_Alpha_Hill" in json.dumps(figs[0]["layout"]["annotations"])
    # the selectbox moves the selection; the chart click uses the same state
    selectbox(at, "w_layer").select(4).run()
    assert str(at.query_params["layer"]).strip("[]'") == "4"


def test_layer_page_matrices_outside_blocks(app):
    at = app().run()
    at.switch_page("page_layer.py").run()
    from app.page_layer import NOT_IN_BLOCK  # noqa: PLC0415 - the page module imports cleanly (main() is guarded)
    selectbox(at, "w_layer").select(NOT_IN_BLOCK).run()
    ok(at)
    assert any("embeddings" in md.value for md in at.markdown)
    # the 2 × 384 token-type embedding has a spectrum but too few eigenvalues for a fit: said, not hidden
    assert any("No power-law fit" in i.value and "fewer than" in i.value for i in at.info)


def test_url_restores_view(app):
    at = app(layer=3, metric="alpha_weighted", score="alpha").run()
    ok(at)
    assert selectbox(at, "w_metric").value == "alpha_weighted"
    assert selectbox(at, "w_score").value == "alpha"
    at.switch_page("page_layer.py").run()
    assert selectbox(at, "w_layer").value == 3


def test_out_of_range_layer_is_clamped(app):
    at = app(layer=99).run()
    at.switch_page("page_layer.py").run()
    ok(at)
    assert selectbox(at, "w_layer").value == MINILM_LAYERS - 1


def test_bad_model_path_shows_readable_error(app):
    at = app(model="/no/such/checkpoint").run()
    ok(at)
    assert at.error and "no such file or folder" in at.error[0].value
    assert not at.get("plotly_chart")
    assert selectbox(at, "w__kind").value == common.OTHER
    assert at.text_input(key="w_path").value == "/no/such/checkpoint"


def test_typing_a_folder_without_weights_shows_error(app, tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    at = app().run()
    selectbox(at, "w__kind").select(common.OTHER).run()
    at.text_input(key="w_path").input(str(tmp_path)).run()
    ok(at)
    assert at.error and "no model weights" in at.error[0].value
    assert not at.expander or all("Details" not in e.label for e in at.expander)   # no traceback for user errors


def test_unexpected_failure_is_short_with_details(app, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("kaboom")
    monkeypatch.setattr(engine, "analyze", boom)
    at = app(model="/tmp/spectrascope-unexpected-failure").run()
    ok(at)
    assert "RuntimeError: kaboom" in at.error[0].value
    assert any("Details" in e.label for e in at.expander)


def test_flags_are_shown(app, monkeypatch, tiny_llamas):
    real = engine.analyze

    def flagged(*args, **kwargs):
        result = real(*args, **kwargs)
        result.flags = ["dequantised 4-bit weights: spectra are of the dequantised matrices"]
        return result
    monkeypatch.setattr(engine, "analyze", flagged)
    common.forget(common.ModelChoice(tiny_llamas[0]))
    at = app(model=tiny_llamas[0]).run()
    ok(at)
    assert any("4-bit" in w.value for w in at.warning)
    common.forget(common.ModelChoice(tiny_llamas[0]))                # do not leak the fake flag to other tests


def test_compare_two_checkpoints(app, tiny_llamas):
    a, b = tiny_llamas
    at = app(model=a, model_b=b).run()
    at.switch_page("page_compare_models.py").run()
    ok(at)
    assert not at.error
    figs = figures(at)
    assert len(figs) == 3
    per_layer, per_module, heat = figs
    names = {t.get("name") for t in per_layer["data"]}
    assert "Δ = B − A" in names and any(str(n).startswith("A: ") for n in names)
    assert arr(per_module["data"][0]["x"]).tolist() == ["q", "k", "v", "o", "gate", "up", "down"]
    assert arr(heat["data"][0]["z"]).shape == (3, 7) and heat["data"][0]["zmid"] == 0
    assert any(s.value == "Intruder dimensions" for s in at.subheader)
    # one link under "Intruder dimensions", to the Compare spectra page (its URL: /spectra)
    links = [el.proto for el in at.get("page_link") if "intruder" in el.proto.label.lower()]
    assert [link.page for link in links] == ["spectra"]
    assert not any("later issue" in i.value for i in at.info)


def test_compare_same_model_says_so(app):
    at = app().run()
    at.switch_page("page_compare_models.py").run()
    ok(at)
    assert any("same model" in i.value for i in at.info)


def test_compare_bad_model_b(app):
    at = app(model_b="/no/such/model-b").run()
    at.switch_page("page_compare_models.py").run()
    ok(at)
    assert at.error and "no such file or folder" in at.error[0].value


@pytest.mark.parametrize("payload", [None, [], [{"selection": {"points": []}}]])
def test_selection_callback_ignores_empty(payload, monkeypatch):
    import streamlit as st
    state = {"chart": payload[0] if payload else None}
    monkeypatch.setattr(st, "session_state", state)
    common.layer_from_selection("chart")
    assert "view_layer" not in state


def test_selection_callback_reads_customdata(monkeypatch):
    import streamlit as st
    state = {"chart": {"selection": {"points": [{"x": 3, "customdata": [3]}]}}}
    monkeypatch.setattr(st, "session_state", state)
    common.layer_from_selection("chart")
    assert state["view_layer"] == "3" and state["_layer_clicked"] is True


def test_overview_chart_and_heatmap_show_one_estimator_and_bands_only_for_weightwatcher(app):
    at = app().run()
    ok(at)
    layer_fig, heat = figures(at)
    assert "weightwatcher" in layer_fig["layout"]["title"]["text"]              # same estimator by default
    assert "weightwatcher" in heat["layout"]["title"]["text"]
    assert any("PL_Alpha_Hill" in c.value and "weightwatcher α" in c.value for c in at.caption)   # why they differ
    selectbox(at, "w_score").select("alphalora_score").run()
    hill_fig, _ = figures(at)
    assert "PL_Alpha_Hill" in hill_fig["layout"]["title"]["text"]
    assert not [s for s in hill_fig["layout"].get("shapes", []) if s.get("type") == "rect"]   # not its bands
    assert not any("trained" in a.get("text", "") for a in hill_fig["layout"].get("annotations", []))


def test_overview_verdict_column_and_standard_errors_in_hovers(app):
    at = app().run()
    ok(at)
    df = [d.value for d in at.dataframe if "name" in d.value.columns][0]             # the all-matrices table
    assert {"verdict", "alpha_se", "alpha_hill_se", "alpha_hill_verdict"} <= set(df.columns)
    assert list(df.columns).index("verdict") < list(df.columns).index("alpha")     # in view without scrolling
    assert set(df["verdict"]) <= {"over-trained", "typical", "under-trained", "unreliable fit", "no fit"}
    # the example: ww α 8.44 on a tail of 9 is not a verdict of "under-trained"
    v4 = df.set_index("name").loc["encoder.layer.4.attention.self.value.weight"]
    assert v4["verdict"] == "unreliable fit" and "> 8" in v4["verdict_reason"] and "tail of 9" in v4["verdict_reason"]
    assert v4["alpha_se"] == pytest.approx((v4["alpha"] - 1) / 3)
    layer_fig, heat = figures(at)
    points = [t for t in layer_fig["data"] if t.get("mode") == "markers" and t.get("legendgroup") == "matrices"]
    texts = [s for t in points for s in t["text"]]
    assert texts and all("±" in s for s in texts) and any("unreliable fit" in s for s in texts)
    line = [t for t in layer_fig["data"] if t.get("mode") == "lines+markers"][0]
    assert all("±" in s for s in line["text"])
    cells = [c for row in heat["data"][0]["customdata"] for c in row]
    assert all("±" in c for c in cells if c)


def test_layer_page_shows_verdict_and_why_a_fit_is_unreliable(app):
    at = app(layer=4, matrix="encoder.layer.4.attention.self.value.weight").run()
    at.switch_page("page_layer.py").run()
    ok(at)
    assert any("verdict" in d.value.columns for d in at.dataframe)
    assert any(w.value.startswith("Unreliable fit:") and "tail of 9" in w.value for w in at.warning)
    assert any("±" in m.value for m in at.metric)


def test_tab_icon_is_a_shipped_file_sent_inline(app, monkeypatch):
    """The favicon is the SVG in assets/, handed to the browser as a data: URL: nothing to fetch from a font CDN
    (a ":material/…:" page icon makes the browser load it from fonts.gstatic.com, which fails offline)."""
    import streamlit
    from streamlit.commands.page_config import _get_favicon_string

    configs, real = [], streamlit.set_page_config
    monkeypatch.setattr(streamlit, "set_page_config", lambda **kw: (configs.append(kw), real(**kw))[1])
    at = app().run()
    ok(at)
    assert len(configs) == 1
    icon = Path(configs[0]["page_icon"])
    assert icon.is_file() and icon.resolve().parent == ROOT / "assets"
    assert ElementTree.parse(icon).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    assert icon.stat().st_size < 4096
    assert _get_favicon_string(str(icon)).startswith("data:image/svg+xml;base64,")


def test_every_page_file_exists():
    """A renamed or missing page fails here rather than vanishing from the navigation."""
    import ast

    tree = ast.parse((ROOT / "app" / "main.py").read_text())
    pages = next(ast.literal_eval(n.value) for n in tree.body
                 if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "PAGES")
    assert len(pages) >= 7
    missing = [file for file, *_ in pages if not (ROOT / "app" / file).is_file()]
    assert not missing


def test_a_page_url_carries_its_own_settings_and_the_shared_ones_only(app):
    at = app().run()
    selectbox(at, "w_metric").select("stable_rank").run()          # an Overview-only setting
    assert str(at.query_params["metric"]).strip("[]'") == "stable_rank"
    at.switch_page("page_allocate.py").run()
    ok(at)
    assert "metric" not in at.query_params                         # not the Overview's settings on Allocate …
    assert str(at.query_params["model"]).strip("[]'") == DEFAULT_MODEL     # … but the shared model is there
    at.switch_page("page_overview.py").run()
    assert str(at.query_params["metric"]).strip("[]'") == "stable_rank"    # back on Overview: its setting is kept
