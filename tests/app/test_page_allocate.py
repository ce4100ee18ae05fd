"""The Allocate experts page through Streamlit's AppTest: sliders, hand edits, bad inputs, exports, use for training."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from analysis import allocation as al
from analysis import allocation_store as store
from app import page_allocate as page
from tests.helpers import ok

MINILM_LAYERS = 6
# MiniLM's adapted matrices (out × in), by hand: q, k, v, attention output 384 × 384, intermediate 1536 × 384,
# output 384 × 1536. A rank-r LoRA expert on a matrix has r·(d_in + d_out) parameters; a router d_in per expert.
MINILM_IN_PLUS_OUT = {"q": 768, "k": 768, "v": 768, "o": 768, "fc_in": 1920, "fc_out": 1920}
MINILM_IN = {"q": 384, "k": 384, "v": 384, "o": 384, "fc_in": 384, "fc_out": 1536}
EDIT_NONE = {"edited_rows": {}, "added_rows": [], "deleted_rows": []}


def open_page(app, **query):
    at = app(**query).run()
    at.switch_page("page_allocate.py").run()
    ok(at)
    assert at.title[0].value == "Allocate experts"
    return at


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def experts(at) -> list[int]:
    """The counts the table shows (its input, i.e. the strategy's allocation before hand edits)."""
    return [int(v) for v in at.data_editor[0].value["experts"]]


def figures(at) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def qp(at, name: str) -> str:
    return str(at.query_params[name]).strip("[]'")


def edit(at, rows: dict) -> None:
    """Inject a data_editor edit the way the browser reports it, then rerun."""
    at.session_state[at.data_editor[0].key] = {**EDIT_NONE, "edited_rows": rows}
    at.run()
    ok(at)


def labelled(elements, label: str):
    """The one element of a list with this label."""
    hits = [e for e in elements if e.label == label]
    assert len(hits) == 1, [e.label for e in elements]
    return hits[0]


def errors(at) -> list[str]:
    return [e.value for e in at.error]


def exact_count(at, label: str) -> int:
    """The exact parameter count behind a metric tile ("1.7 M" shows, "1,658,880 parameters" is its help)."""
    m = labelled(at.metric, label)
    return int(m.proto.help.removesuffix(" parameters").replace(",", ""))


def alphalora_by_hand(scores: list[float], budget: int, beta: float = 2.5) -> list[int]:
    """The paper's rule, n_l = T·α_l^β / Σ α^β, rounded by largest remainder (floors, then one more expert to the
    largest fractional parts until Σ = T); only valid when every share is ≥ 1, the page's minimum."""
    weights = [a ** beta for a in scores]
    shares = [budget * w / sum(weights) for w in weights]
    assert min(shares) >= 1, shares
    counts = [math.floor(x) for x in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: counts[i] - shares[i])
    for i in by_remainder[:budget - sum(counts)]:
        counts[i] += 1
    return counts


# ------------------------------------------------------------------------------------------ the default view

def test_default_allocation_chart_and_url(app):
    at = open_page(app)
    assert not at.error
    counts = experts(at)
    assert counts == alphalora_by_hand(_scores(), 5 * MINILM_LAYERS)
    assert metrics(at)["Σ experts / budget"] == "30 / 30"
    assert at.slider(key="w_budget").value == 30 and at.slider(key="w_beta").value == 2.5
    fig = figures(at)[0]
    bars, line = fig["data"]
    assert bars["type"] == "bar" and list(bars["y"]) == counts
    assert line["yaxis"] == "y2" and "layer" in line["hovertemplate"] and "layer" in bars["hovertemplate"]
    assert "layer" in fig["layout"]["xaxis"]["title"]["text"]
    assert "experts" in fig["layout"]["yaxis"]["title"]["text"]
    assert "α" in fig["layout"]["yaxis2"]["title"]["text"]
    assert "AlphaLoRA" in fig["layout"]["title"]["text"]
    assert qp(at, "budget") == "30" and qp(at, "beta") == "2.5" and qp(at, "strategy") == "alphalora"
    for label in ("LoRA experts", "Routers", "Trainable total", "Share of the model"):
        assert label in metrics(at)
    assert not at.warning


def test_comparison_of_the_three_strategies(app):
    at = open_page(app)
    compare = figures(at)[1]
    names = [t["name"] for t in compare["data"]]
    assert len(names) == 3 and names[0].startswith("AlphaLoRA") and names[1].startswith("uniform")
    assert names[2].startswith("MoLA 2468")
    table = [d.value for d in at.dataframe if "total experts" in d.value][0]
    assert list(table["total experts"]) == [30, 30, 26]          # MoLA 2468 on 6 layers: 2,2,4,4,6,8
    per_expert = 8 * sum(MINILM_IN_PLUS_OUT.values())              # rank 8 on the six matrices of a block
    assert list(table["LoRA experts"]) == [n * per_expert for n in (30, 30, 26)]
    assert list(table["routers"]) == [n * sum(MINILM_IN.values()) for n in (30, 30, 26)]
    assert list(table["trainable total"]) == list(table["LoRA experts"] + table["routers"])


# ------------------------------------------------------------------------------------------ sliders and strategies

def test_budget_slider_gives_new_counts(app):
    at = open_page(app)
    at.slider(key="w_budget").set_value(12).run()
    ok(at)
    assert experts(at) == alphalora_by_hand(_scores(), 12)
    assert sum(experts(at)) == 12 and metrics(at)["Σ experts / budget"] == "12 / 12"
    assert qp(at, "budget") == "12"
    at.slider(key="w_budget").set_value(60).run()
    assert sum(experts(at)) == 60


def test_beta_zero_is_uniform_and_lands_in_url(app):
    at = open_page(app)
    at.slider(key="w_beta").set_value(0.0).run()
    ok(at)
    assert experts(at) == [5] * MINILM_LAYERS
    assert qp(at, "beta") == "0.0"


def test_url_restores_the_view(app):
    at = open_page(app, strategy="uniform", budget=20, beta=1.5, min_experts=2)
    assert at.selectbox(key="w_strategy").value == "uniform"
    assert at.slider(key="w_budget").value == 20 and at.number_input(key="w_min_experts").value == 2
    assert experts(at) == [4, 4, 3, 3, 3, 3]


def test_mola_preset_and_custom_pattern(app):
    at = open_page(app)
    at.selectbox(key="w_strategy").select("mola").run()
    at.selectbox(key="w_mola").select("8642").run()
    ok(at)
    assert experts(at) == [8, 8, 6, 6, 4, 2]
    assert metrics(at)["Σ experts / budget"] == "34 / 34"
    assert at.slider(key="w_budget").disabled
    at.selectbox(key="w_mola").select(page.CUSTOM).run()
    at.text_input(key="alloc_mola_custom").set_value("123").run()
    ok(at)
    assert experts(at) == [1, 1, 2, 2, 3, 3]


def test_manual_strategy_starts_uniform(app):
    at = open_page(app)
    at.selectbox(key="w_strategy").select("manual").run()
    ok(at)
    assert experts(at) == [5] * MINILM_LAYERS and not at.warning


# ------------------------------------------------------------------------------------------ hand edits

def test_edit_that_breaks_the_sum_warns_and_becomes_manual(app):
    at = open_page(app)
    before = experts(at)
    edit(at, {0: {"experts": before[0] + 3}})
    assert metrics(at)["Σ experts / budget"] == "33 / 30"
    assert any("3 more than the budget of 30" in w.value for w in at.warning)
    assert "manual (edited from AlphaLoRA)" in figures(at)[0]["layout"]["title"]["text"]
    assert list(figures(at)[0]["data"][0]["y"])[0] == before[0] + 3
    # a balancing edit clears the warning
    edit(at, {0: {"experts": before[0] + 3}, 1: {"experts": before[1] - 3}})
    assert metrics(at)["Σ experts / budget"] == "30 / 30" and not any("budget" in w.value for w in at.warning)


def test_edit_below_budget_says_how_many_fewer(app):
    at = open_page(app)
    edit(at, {"2": {"experts": 1}})
    diff = experts(at)[2] - 1
    assert any(f"{diff} fewer than the budget of 30" in w.value for w in at.warning)


@pytest.mark.parametrize("value, shown", [(-1, "-1"), (2.5, "2.5"), (None, "empty")])
def test_negative_fractional_or_empty_counts_are_errors(app, value, shown):
    at = open_page(app)
    edit(at, {3: {"experts": value}})
    assert any("whole numbers ≥ 0" in e and f"layer 3: {shown}" in e for e in errors(at)), errors(at)
    assert not at.get("download_button")                      # nothing to export from an invalid table


def test_slider_change_drops_hand_edits(app):
    at = open_page(app)
    edit(at, {0: {"experts": 20}})
    at.slider(key="w_budget").set_value(18).run()
    ok(at)
    assert metrics(at)["Σ experts / budget"] == "18 / 18" and not at.warning


def test_reset_hand_edits(app):
    at = open_page(app)
    edit(at, {0: {"experts": 20}})
    assert at.warning
    labelled(at.button, "Reset hand edits").click().run()
    ok(at)
    assert metrics(at)["Σ experts / budget"] == "30 / 30" and not at.warning


def test_hand_edits_live_in_the_url_and_a_link_restores_them(app):
    at = open_page(app)
    before = experts(at)
    edit(at, {0: {"experts": before[0] + 3}})
    assert qp(at, "edits") == f"0:{before[0] + 3}"
    # a refresh (a new session on the same URL) shows the same hand edit
    again = open_page(app, edits=f"0:{before[0] + 3}")
    assert experts(again) == [before[0] + 3] + before[1:]
    assert metrics(again)["Σ experts / budget"] == "33 / 30"
    assert any("3 more than the budget of 30" in w.value for w in again.warning)
    assert "manual (edited from AlphaLoRA)" in figures(again)[0]["layout"]["title"]["text"]
    # an edit in the restored table adds to the link's; Reset drops both, and the link forgets them
    edit(again, {1: {"experts": before[1] - 3}})
    assert metrics(again)["Σ experts / budget"] == "30 / 30"
    assert qp(again, "edits") == f"0:{before[0] + 3},1:{before[1] - 3}"
    labelled(again.button, "Reset hand edits").click().run()
    ok(again)
    assert experts(again) == before and metrics(again)["Σ experts / budget"] == "30 / 30"
    assert "edits" not in again.query_params and not again.warning


def test_after_a_slider_move_a_new_edit_sticks(app):
    at = open_page(app)
    edit(at, {0: {"experts": 20}})
    at.slider(key="w_budget").set_value(18).run()
    ok(at)
    assert "edits" not in at.query_params and metrics(at)["Σ experts / budget"] == "18 / 18"
    assert [t.value for t in at.toast] == [page.DROPPED]
    base = experts(at)
    edit(at, {2: {"experts": base[2] + 1}})
    assert metrics(at)["Σ experts / budget"] == "19 / 18" and qp(at, "edits") == f"2:{base[2] + 1}"


def test_an_unusable_edits_link_is_said_and_ignored(app):
    at = open_page(app, edits="9:1")
    said = " ".join(w.value for w in at.warning)
    assert "**edits=9:1**, which cannot be used here" in said and "the model has layers 0–5" in said
    assert metrics(at)["Σ experts / budget"] == "30 / 30" and "edits" not in at.query_params


# ------------------------------------------------------------------------------------------ bad inputs

def test_budget_below_layers_times_min(app):
    at = open_page(app)
    at.number_input(key="w_min_experts").set_value(6).run()
    ok(at)
    assert any("smaller than 6 layers × minimum 6 = 36" in e for e in errors(at)), errors(at)


def test_min_above_max(app):
    at = open_page(app)
    at.number_input(key="w_min_experts").set_value(3).run()
    at.number_input(key="w_max_experts").set_value(2).run()
    ok(at)
    assert any("minimum (3) is larger than the maximum (2)" in e for e in errors(at)), errors(at)


def test_max_caps_layers(app):
    at = open_page(app)
    at.number_input(key="w_max_experts").set_value(5).run()
    ok(at)
    assert max(experts(at)) <= 5 and sum(experts(at)) == 30 and not at.error


@pytest.mark.parametrize("pattern, message", [("24a8", "malformed MoLA pattern"), ("", "malformed MoLA pattern"),
                                              ("1234567", "has 7 blocks but the model has only 6 layers")])
def test_bad_mola_pattern(app, pattern, message):
    at = open_page(app)
    at.selectbox(key="w_strategy").select("mola").run()
    at.selectbox(key="w_mola").select(page.CUSTOM).run()
    at.text_input(key="alloc_mola_custom").set_value(pattern).run()
    ok(at)
    assert any(message in e for e in errors(at)), errors(at)


def test_no_modules_is_a_clear_error(app):
    at = open_page(app)
    at.multiselect(key="alloc_modules").set_value([]).run()
    ok(at)
    assert any("at least one adapted module" in e for e in errors(at))


# ------------------------------------------------------------------------------------------ ranks, downloads, training

def test_rank_budget_exports_peft_patterns(app):
    at = open_page(app)
    downloads = {b.label: b for b in at.get("download_button")}
    assert downloads["peft LoraConfig JSON"].proto.disabled
    why = "Turn on **α-driven LoRA ranks** above to export a peft LoraConfig."
    assert any(c.value == why for c in at.caption)                  # a disabled button says why, visibly
    at.toggle(key="alloc_ranks_on").set_value(True).run()
    at.number_input(key="alloc_rank_budget").set_value(30).run()
    ok(at)
    table = at.data_editor[0].value
    assert sum(table[page.RANK_COL]) == 30
    downloads = {b.label: b for b in at.get("download_button")}
    assert not downloads["peft LoraConfig JSON"].proto.disabled and not any(c.value == why for c in at.caption)
    assert at.json and "rank_pattern" in at.json[0].value
    at.slider(key="w_budget").set_value(24).run()              # the experts change, the ranks stay
    ok(at)
    assert sum(at.data_editor[0].value[page.RANK_COL]) == 30 and sum(experts(at)) == 24
    assert "rank_pattern" in at.json[0].value
    at.number_input(key="alloc_rank_budget").set_value(12).run()
    assert sum(at.data_editor[0].value[page.RANK_COL]) == 12
    at.number_input(key="alloc_min_rank").set_value(3).run()    # 6 layers × 3 > 12
    ok(at)
    assert any("smaller than 6 layers × minimum 3" in e for e in errors(at)), errors(at)


def test_parameter_count_follows_rank_and_modules(app):
    at = open_page(app)
    assert at.multiselect(key="alloc_modules").value == list(MINILM_IN)
    experts_r8, routers = 30 * 8 * sum(MINILM_IN_PLUS_OUT.values()), 30 * sum(MINILM_IN.values())
    assert (exact_count(at, "LoRA experts"), exact_count(at, "Routers")) == (experts_r8, routers)   # 1,658,880
    assert exact_count(at, "Trainable total") == experts_r8 + routers
    at.number_input(key="alloc_rank").set_value(16).run()
    ok(at)
    assert exact_count(at, "LoRA experts") == 2 * experts_r8            # rank 8 → 16: exactly twice the experts
    assert exact_count(at, "Routers") == routers                        # the routers do not depend on the rank
    assert exact_count(at, "Trainable total") == 2 * experts_r8 + routers
    at.multiselect(key="alloc_modules").set_value(["q", "v"]).run()
    ok(at)
    assert "q, v" in " ".join(c.value for c in at.caption)
    assert exact_count(at, "LoRA experts") == 30 * 16 * (768 + 768)
    assert exact_count(at, "Routers") == 30 * (384 + 384)


def test_use_for_training_writes_a_loadable_file(app):
    at = open_page(app)
    edit(at, {0: {"experts": 7}})
    labelled(at.text_input, "Save as").set_value("my-alloc").run()
    button = labelled(at.button, "Use for training")
    button.click().run()
    ok(at)
    assert at.success and "my-alloc" in at.success[0].value
    path = Path(os.environ["SPECTRASCOPE_DATA"]) / "allocations" / "my-alloc.json"
    alloc = al.from_json(path.read_text())
    assert alloc.strategy == "manual" and alloc.experts[0] == 7 and alloc.params["edited_from"] == "alphalora"
    assert alloc.trainable_params["total"] > 0 and alloc.model == "all-MiniLM-L6-v2"
    assert store.load_current().experts == alloc.experts and store.current_name() == "my-alloc"


def test_use_for_training_refuses_a_bad_name(app):
    at = open_page(app)
    labelled(at.text_input, "Save as").set_value("../escape").run()
    labelled(at.button, "Use for training").click().run()
    ok(at)
    assert any("invalid allocation name" in e for e in errors(at))
    assert not (Path(os.environ["SPECTRASCOPE_DATA"]) / "escape.json").exists()


# ------------------------------------------------------------------------------------------ helpers

def _scores() -> list[float]:
    from analysis import engine
    return engine.analyze().layer_scores()
