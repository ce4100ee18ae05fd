"""Tests for analysis.allocation_plan: model facts, the strategy's allocation, budget checks, the three-way comparison."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from analysis import allocation as al
from analysis import allocation_plan as plan
from analysis.types import MatrixInfo, SpectrascopeError

# Two layers with one 8 × 8 query each: a rank-2 expert on it has 2·(8 + 8) = 32 parameters, its router 8 per expert.
TWO_Q = [MatrixInfo("layers.0.q.weight", 0, "q", 8, 8), MatrixInfo("layers.1.q.weight", 1, "q", 8, 8)]


def facts(scores=(1.0, 3.0), matrices=TWO_Q, model_params=128) -> plan.ModelFacts:
    scores = None if scores is None else list(scores)
    problem = None if scores is not None else "layers [1] have no usable AlphaLoRA score"
    return plan.ModelFacts("toy", 2, scores, problem, list(matrices), model_params, ["q"])


def settings(strategy="alphalora", budget=8, beta=1.0, lo=1, hi=None, pattern="24") -> plan.Settings:
    return plan.Settings(strategy, budget, beta, lo, hi, pattern)


# ------------------------------------------------------------------------------------------------ scores and facts

@pytest.mark.parametrize("raw, n, said", [
    ([3.0, 2.0], 2, None),
    ([3.0], 2, "layer scores for 1 of 2 layers"),
    ([3.0, float("nan")], 2, "layers [1] have no usable AlphaLoRA score"),
    ([0.0, -1.0, float("inf"), 2.0], 4, "layers [0, 1, 2] have no usable"),
    ([True, None, 2.0], 3, "layers [0, 1] have no usable"),
])
def test_scores_problem(raw, n, said):
    problem = plan.scores_problem(raw, n)
    if said is None:
        assert problem is None
    else:
        assert said in problem and "choose uniform, a MoLA preset or manual" in problem


def _result(rows, scores, num_parameters=None):
    return SimpleNamespace(model="fake", rows=rows, num_parameters=num_parameters, layer_scores=lambda: scores)


ROWS = [{"name": "emb.weight", "layer": None, "module": "embedding", "rows": 10, "cols": 8},
        {"name": "layers.0.q.weight", "layer": 0, "module": "q", "rows": 8, "cols": 8},
        {"name": "layers.1.q.weight", "layer": 1, "module": "q", "rows": 8, "cols": 8},
        {"name": "layers.1.up.weight", "layer": float("nan"), "module": "up", "rows": 16, "cols": 8}]


def test_model_facts_without_usable_scores():
    rows = [*ROWS[:3], {**ROWS[3], "layer": 1}]
    m = plan.model_facts(_result(rows, [3.0, float("nan")]))
    assert m.n_layers == 2 and m.scores is None and "layers [1]" in m.scores_problem
    assert m.kinds == ["q", "up"] and m.model_params == 80 + 64 + 64 + 128        # Σ rows × cols, no count given
    assert [x.layer for x in m.matrices] == [None, 0, 1, 1]
    with pytest.raises(SpectrascopeError, match="no usable AlphaLoRA score"):
        plan.base_allocation(settings(budget=4, beta=2.5, pattern="2468"), m)
    assert plan.base_allocation(settings("uniform", budget=4), m).experts == [2, 2]


def test_model_facts_with_scores_and_a_parameter_count():
    m = plan.model_facts(_result(ROWS, [3.0, 2.0], num_parameters=1000))
    assert m.scores == [3.0, 2.0] and m.scores_problem is None and m.model_params == 1000
    assert m.matrices[3].layer is None and m.kinds == ["q"]        # a NaN layer (from a table) is outside the blocks


def test_model_facts_without_layer_scores():
    broken = SimpleNamespace(model="fake", rows=ROWS[:3], num_parameters=None, layer_scores=lambda: {}["x"])
    m = plan.model_facts(broken)
    assert m.scores is None and "layer scores for 0 of 2 layers" in m.scores_problem


# ------------------------------------------------------------------------------------------------ strategies

def test_base_allocation_by_strategy():
    m = facts()
    # β = 1, scores 1 and 3: shares 1/4 and 3/4 of T = 8 → 2 and 6 (no rounding, the minimum 1 does not bind)
    alpha = plan.base_allocation(settings(), m)
    assert alpha.strategy == "alphalora" and alpha.experts == [2, 6] and alpha.params["beta"] == 1.0
    assert plan.base_allocation(settings("uniform", budget=5), m).experts == [3, 2]   # remainder to layer 0
    mola = plan.base_allocation(settings("mola", budget=99), m)
    assert mola.strategy == "mola:24" and mola.experts == [2, 4]                     # the preset ignores T
    manual = plan.base_allocation(settings("manual", budget=5), m)
    assert manual.strategy == "manual" and manual.experts == [3, 2] and manual.params == {"target": 5}
    with pytest.raises(SpectrascopeError, match="has 4 blocks but the model has only 2 layers"):
        plan.base_allocation(settings("mola", pattern="2468"), m)
    with pytest.raises(SpectrascopeError, match="unknown strategy 'greedy'"):
        plan.base_allocation(settings("greedy"), m)


def test_target_is_the_budget_or_the_presets_own_total():
    m = facts()
    assert plan.target(settings("mola", budget=99), plan.base_allocation(settings("mola", budget=99), m)) == 6
    assert plan.target(settings(budget=8), plan.base_allocation(settings(budget=8), m)) == 8


def test_describe_and_edited_allocation():
    alloc = al.allocate("alphalora", scores=[2.0, 3.0], budget=4, beta=1.5, min_experts=1, max_experts=3)
    assert plan.describe(alloc) == "AlphaLoRA (β = 1.5)"
    assert plan.describe(al.allocate("mola:24", n_layers=4)) == "MoLA 24"
    assert plan.describe(al.allocate("uniform", n_layers=2, budget=4)) == "uniform"
    assert plan.edited_allocation(alloc, alloc.experts, 4) is alloc
    edited = plan.edited_allocation(alloc, [3, 2], 4)
    assert edited.strategy == "manual" and edited.experts == [3, 2] and edited.scores == [2.0, 3.0]
    assert edited.params == {"edited_from": "alphalora", "target": 4, "budget": 4, "beta": 1.5, "min": 1, "max": 3}
    assert plan.describe(edited) == "manual (edited from AlphaLoRA)"
    from_mola = plan.edited_allocation(al.allocate("mola:24", n_layers=2), [1, 1], 6)
    assert plan.describe(from_mola) == "manual (edited from MoLA 24)" and from_mola.params["target"] == 6


def test_sum_problem():
    s = settings(budget=10, lo=1, hi=3)
    assert plan.sum_problem([2, 3, 3, 2], 10, s) is None
    note = plan.sum_problem([0, 4, 3, 2], 10, s)
    assert note == ("The experts sum to 9, 1 fewer than the budget of 10: add 1 to match it (or keep it on purpose: "
                    "the allocation is saved as typed). Layers [0] are below the minimum of 1. Layers [1] are above "
                    "the maximum of 3. Layers [0] have no experts (no adapter).")
    assert plan.sum_problem([5, 5, 3], 10, settings(budget=10, lo=0)).startswith(
        "The experts sum to 13, 3 more than the budget of 10: remove 3")
    # a MoLA preset has no minimum or maximum: only its own total counts
    assert plan.sum_problem([0, 9], 6, settings("mola", lo=1, hi=3)).count("Layers") == 0


# ------------------------------------------------------------------------------------------------ the comparison

def test_comparison_of_the_three_strategies_by_hand():
    rows = plan.comparison(settings(), facts(), rank=2, modules=["q"])
    assert [r["name"] for r in rows] == ["AlphaLoRA", "uniform", "MoLA"]
    assert [r["experts"] for r in rows] == [[2, 6], [4, 4], [2, 4]]
    assert [r["strategy"] for r in rows] == ["AlphaLoRA (β = 1)", "uniform", "MoLA 24"]
    records = plan.comparison_records(rows)
    # each expert: 32 parameters on the query, 8 in the router; 8, 8 and 6 experts
    assert [r["total experts"] for r in records] == [8, 8, 6]
    assert [r["experts per layer"] for r in records] == ["2–6", "4–4", "2–4"]
    assert [r["LoRA experts"] for r in records] == [256, 256, 192]
    assert [r["routers"] for r in records] == [64, 64, 48]
    assert [r["trainable total"] for r in records] == [320, 320, 240]
    assert [r["share of model"] for r in records] == [250.0, 250.0, 187.5]          # % of the 128 model parameters
    assert [r["note"] for r in records] == ["", "", ""]


def test_a_strategy_that_fails_keeps_its_row_with_the_reason():
    rows = plan.comparison(settings(budget=4, beta=2.5, pattern="2468"), facts(scores=None), 8, ["q"])
    assert "no usable AlphaLoRA score" in rows[0]["error"] and rows[1]["experts"] == [2, 2]
    assert "has 4 blocks but the model has only 2 layers" in rows[2]["error"] and rows[2]["strategy"] == "MoLA 2468"
    records = plan.comparison_records(rows)
    assert [r["total experts"] for r in records] == [None, 4, None]
    assert records[0]["experts per layer"] == "—" and records[0]["note"] == rows[0]["error"]
    assert records[1]["trainable total"] == 4 * 8 * 16 + 4 * 8 and records[1]["note"] == ""
    assert all(r["share of model"] is None or math.isfinite(r["share of model"]) for r in records)


def test_layer_count_from_the_config_else_from_the_matrix_names(tmp_path):
    import json

    from analysis.allocation_plan import layer_count
    from tests.tiny_models import make_tiny_model

    assert layer_count(None) == 6                                   # the default model: all-MiniLM-L6-v2
    folder = make_tiny_model(tmp_path / "bert")                     # num_hidden_layers = 2 in its config
    assert layer_count(str(folder)) == 2
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 7                                 # the config is what the model says it is …
    (folder / "config.json").write_text(json.dumps(config))
    assert layer_count(str(folder)) == 7
    del config["num_hidden_layers"]                                 # … and without it the matrices are counted
    (folder / "config.json").write_text(json.dumps(config))
    assert layer_count(str(folder)) == 2
