"""Tests for training.metrics: hand-computed cases, sklearn as an oracle, and mean ± 95 % CI."""
import math

import numpy as np
import pytest

from analysis.types import SpectrascopeError
from training import metrics as m


def test_accuracy_by_hand():
    assert m.accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    assert m.accuracy([2], [2]) == 1.0


def test_binary_f1_and_mcc_by_hand():
    # TP=3 (label 1 -> 1), FN=1, FP=2, TN=4
    y_true = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    y_pred = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]
    f1_pos = 2 * 3 / (2 * 3 + 2 + 1)          # 6/9
    f1_neg = 2 * 4 / (2 * 4 + 1 + 2)          # 8/11
    assert m.macro_f1(y_true, y_pred) == pytest.approx((f1_pos + f1_neg) / 2)
    expected = (3 * 4 - 2 * 1) / math.sqrt((3 + 2) * (3 + 1) * (4 + 2) * (4 + 1))
    assert m.mcc(y_true, y_pred) == pytest.approx(expected)


def test_multiclass_mcc_general_formula_by_hand():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    # c = 4 correct, s = 6, t = (2, 2, 2), p = (2, 3, 1)
    expected = (4 * 6 - (2 * 2 + 3 * 2 + 1 * 2)) / math.sqrt((36 - (4 + 9 + 1)) * (36 - 12))
    assert m.mcc(y_true, y_pred) == pytest.approx(expected)


def test_degenerate_cases():
    assert m.mcc([0, 1, 0], [1, 1, 1]) == 0.0        # constant prediction: undefined -> 0
    assert m.mcc([1, 0, 2], [1, 0, 2]) == pytest.approx(1.0)
    assert m.mcc([0, 1], [1, 0]) == pytest.approx(-1.0)
    assert m.macro_f1([0, 0], [0, 0]) == 1.0
    assert m.macro_f1([0, 0], [0, 0], labels=[0, 1]) == 0.5
    with pytest.raises(SpectrascopeError, match="same length"):
        m.accuracy([0, 1], [0])
    with pytest.raises(SpectrascopeError, match="empty"):
        m.accuracy([], [])


def test_against_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(40):
        k = int(rng.integers(2, 7))
        y_true = rng.integers(0, k, size=int(rng.integers(1, 60)))
        y_pred = np.where(rng.random(y_true.size) < 0.6, y_true, rng.integers(0, k, size=y_true.size))
        assert m.accuracy(y_true, y_pred) == pytest.approx(sk.accuracy_score(y_true, y_pred))
        assert m.macro_f1(y_true, y_pred) == pytest.approx(
            sk.f1_score(y_true, y_pred, average="macro", zero_division=0))
        assert m.mcc(y_true, y_pred) == pytest.approx(sk.matthews_corrcoef(y_true, y_pred), abs=1e-12)


def test_score_names_metrics():
    out = m.score(["accuracy", "mcc"], [0, 1], [0, 1])
    assert out == {"accuracy": 1.0, "mcc": 1.0}
    with pytest.raises(SpectrascopeError, match="unknown metric 'f2'"):
        m.score(["f2"], [0], [0])


def test_mean_ci_student_t_by_hand():
    ci = m.mean_ci([1.0, 2.0, 3.0])
    # s = 1, t_{0.975, 2} = 4.302652729911275
    assert ci.mean == 2.0 and ci.n == 3 and ci.std == pytest.approx(1.0)
    assert ci.half_width == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert ci.low == pytest.approx(2 - ci.half_width) and ci.high == pytest.approx(2 + ci.half_width)
    assert str(ci) == "2.000 ± 2.484 (95% CI, n=3)"
    ci5 = m.mean_ci([0.8, 0.82, 0.81, 0.79, 0.83])
    assert ci5.half_width == pytest.approx(2.7764451051977987 * np.std([0.8, 0.82, 0.81, 0.79, 0.83], ddof=1)
                                           / math.sqrt(5))


def test_mean_ci_single_seed_is_undefined():
    ci = m.mean_ci([0.9])
    assert ci.mean == 0.9 and ci.n == 1
    assert math.isnan(ci.half_width) and not ci.defined
    assert "n=1: no CI" in ci.format()
    with pytest.raises(SpectrascopeError, match="at least one seed"):
        m.mean_ci([])


def test_summarise_seeds_and_perplexity():
    out = m.summarise_seeds([{"accuracy": 0.8, "mcc": 0.5}, {"accuracy": 0.9, "mcc": 0.7, "extra": 1}])
    assert set(out) == {"accuracy", "mcc"}
    assert out["accuracy"].mean == pytest.approx(0.85)
    assert m.perplexity(0.0) == 1.0
    assert m.perplexity(math.log(20)) == pytest.approx(20)
    assert m.perplexity(1e6) == math.inf
