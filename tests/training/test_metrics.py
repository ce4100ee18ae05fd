"""Tests for training.metrics: hand-computed cases, sklearn as an oracle, mean ± 95 % CI, Wilson, paired bootstrap."""
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


# ---------------------------------------------------------------- Wilson interval (closed form)

Z95 = 1.959963984540054          # Φ⁻¹(0.975)


def wilson_by_hand(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(1, 2), (7, 10), (81, 263), (150, 300), (999, 1000), (3, 1000)])
def test_wilson_interval_matches_the_closed_form(k, n):
    low, high = m.wilson_interval(k, n)
    assert (low, high) == pytest.approx(wilson_by_hand(k, n), abs=1e-12)
    assert low < k / n < high


def test_wilson_interval_at_the_ends():
    # 0 of n: [0, z²/(n + z²)]; n of n: [n/(n + z²), 1]  (0/10 → 0.2775, the textbook value)
    assert m.wilson_interval(0, 10) == (0.0, pytest.approx(Z95 ** 2 / (10 + Z95 ** 2), abs=1e-12))
    assert m.wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=5e-5)
    assert m.wilson_interval(10, 10) == (pytest.approx(10 / (10 + Z95 ** 2), abs=1e-12), 1.0)
    z90 = 1.6448536269514722
    assert m.wilson_interval(30, 40, 0.90) == pytest.approx(wilson_by_hand(30, 40, z90), abs=1e-12)


@pytest.mark.parametrize("k,n,message", [(1, 0, "at least one row"), (5, 4, "between 0 and n"),
                                         (-1, 4, "between 0 and n"), (1, 2.5, "at least one row")])
def test_wilson_interval_rejects_bad_counts(k, n, message):
    with pytest.raises(SpectrascopeError, match=message):
        m.wilson_interval(k, n)


# ---------------------------------------------------------------- paired bootstrap (planted differences)

def planted(plus: int, minus: int, same_right: int, same_wrong: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row correctness of two arms: `plus` rows only the arm gets right, `minus` only the reference does."""
    arm = np.r_[np.ones(plus), np.zeros(minus), np.ones(same_right), np.zeros(same_wrong)]
    ref = np.r_[np.zeros(plus), np.ones(minus), np.ones(same_right), np.zeros(same_wrong)]
    return arm, ref


def test_paired_bootstrap_recovers_a_planted_difference():
    # 400 rows: the arm alone right on 60, the reference alone on 20 → difference exactly +0.10; per-row d has
    # variance 80/400 − 0.1² = 0.19, so the normal-theory 95 % CI is 0.1 ± 1.96 · sqrt(0.19 / 400)
    arm, ref = planted(60, 20, 160, 160)
    diff = m.paired_bootstrap(arm, ref)
    half = Z95 * math.sqrt(0.19 / 400)
    assert diff.mean == pytest.approx(0.10, abs=1e-12) and (diff.seeds, diff.rows) == (1, 400)
    assert diff.low == pytest.approx(0.1 - half, abs=0.006) and diff.high == pytest.approx(0.1 + half, abs=0.006)
    assert diff.resamples == 10_000 and diff.detectable and diff.verdict("AlphaLoRA", "uniform") == "AlphaLoRA better"
    back = m.paired_bootstrap(ref, arm)
    assert back.mean == pytest.approx(-0.10) and back.verdict("AlphaLoRA", "uniform") == "uniform better"
    assert m.paired_bootstrap(arm, ref) == diff                         # a fixed seed: the same interval


def test_paired_bootstrap_without_a_difference_says_so():
    arm, ref = planted(30, 30, 100, 40)                                  # same accuracy, different rows
    diff = m.paired_bootstrap(arm, ref)
    assert diff.mean == 0 and diff.low < 0 < diff.high and not diff.detectable
    assert diff.verdict("MoLA", "uniform") == "no detectable difference at this budget"


def test_paired_bootstrap_pools_seeds_over_the_same_rows():
    # three seeds with planted differences +0.10, +0.05, +0.15 on the same 400 rows: the mean is their average
    seeds = [planted(60, 20, 160, 160), planted(40, 20, 170, 170), planted(70, 10, 160, 160)]
    arm, ref = np.array([s[0] for s in seeds]), np.array([s[1] for s in seeds])
    diff = m.paired_bootstrap(arm, ref)
    assert diff.mean == pytest.approx(0.10, abs=1e-12) and (diff.seeds, diff.rows) == (3, 400)
    # identical seeds carry no more information than one: the rows are resampled once for all seeds, so the
    # interval is the one-seed interval (it would shrink by √3 if the seeds were treated as new test rows)
    a, b = planted(60, 20, 160, 160)
    one, three = m.paired_bootstrap(a, b), m.paired_bootstrap(np.tile(a, (3, 1)), np.tile(b, (3, 1)))
    assert (three.low, three.high) == pytest.approx((one.low, one.high), abs=1e-12)


def test_paired_bootstrap_of_continuous_scores_matches_normal_theory():
    rng = np.random.default_rng(7)
    base = rng.normal(size=5000)
    shift = rng.normal(0.2, 1.0, size=5000)                             # planted per-row differences
    diff = m.paired_bootstrap(base + shift, base, resamples=4000)
    half = Z95 * shift.std(ddof=0) / math.sqrt(5000)
    assert diff.mean == pytest.approx(shift.mean(), abs=1e-12)
    assert diff.low == pytest.approx(shift.mean() - half, abs=0.004)
    assert diff.high == pytest.approx(shift.mean() + half, abs=0.004)


@pytest.mark.parametrize("arm,ref,message", [([1, 0], [1, 0, 1], "same \\(seeds, rows\\) shape"),
                                             ([], [], "no paired rows"),
                                             ([1, float("nan")], [1, 0], "finite")])
def test_paired_bootstrap_rejects_bad_input(arm, ref, message):
    with pytest.raises(SpectrascopeError, match=message):
        m.paired_bootstrap(arm, ref)
