"""α-shift noise floor: Hill-fit standard errors checked by Monte Carlo on planted Pareto spectra, layer combination."""
import math

import numpy as np
import pandas as pd
import pytest

from analysis import alpha_noise, engine, esd
from analysis.types import MatrixInfo


def pareto(rng, a: float, n: int) -> np.ndarray:
    """n eigenvalues with density ∝ λ^−a on [1, ∞) (inverse-CDF sampling)."""
    return np.sort((1.0 - rng.random(n)) ** (-1.0 / (a - 1.0)))


def planted_matrix(rng, a: float, M: int, N: int) -> np.ndarray:
    """An N × M matrix whose WᵀW has Pareto eigenvalues: W = U diag(√λ) Vᵀ with random orthonormal U, V."""
    U = np.linalg.qr(rng.standard_normal((N, M)))[0]
    V = np.linalg.qr(rng.standard_normal((M, M)))[0]
    return (U * np.sqrt(pareto(rng, a, M))) @ V.T


def test_hill_fit_se_is_the_fit_sigma_by_hand():
    lam = pareto(np.random.default_rng(1), 3.0, 300)
    fit = esd.alpha_hill(lam, "peak")
    alpha, se = alpha_noise.hill_fit(lam)
    # the Hill MLE over the chosen tail, by hand: α = 1 + n / Σ ln(λ_j / xmin), SE = (α − 1)/√n (Fisher information)
    tail = lam[lam >= fit.xmin]
    n = tail.size
    by_hand = 1.0 + n / np.log(tail / fit.xmin).sum()
    assert n == fit.num_pl_spikes and alpha == pytest.approx(by_hand, rel=1e-12)
    assert se == pytest.approx((by_hand - 1.0) / math.sqrt(n), rel=1e-12)


@pytest.mark.parametrize("a", [2.5, 4.0])
def test_stated_se_matches_the_spread_over_independent_planted_matrices(a):
    """Monte Carlo: the stated SE vs the empirical spread of α over 150 independent planted matrices.

    The SE is the fixed-xmin Fisher value; the xmin search adds some spread (≈ 15–25 % here), so the ratio is
    checked within [0.65, 1.0]."""
    rng = np.random.default_rng(int(a * 10))
    fits = [alpha_noise.hill_fit(esd.eigenvalues(planted_matrix(rng, a, 100, 120))) for _ in range(150)]
    alphas, ses = np.array(fits).T
    assert np.mean(alphas) == pytest.approx(a, rel=0.08)                    # α ≈ a (the HT-SR sanity anchor)
    assert 0.65 <= np.mean(ses) / np.std(alphas, ddof=1) <= 1.0


def test_layer_mean_and_difference_se_calibrated_by_monte_carlo():
    """Layers of m = 4 independent matrices: the spread of the layer mean ≈ sqrt(Σσ²)/m, and the Δα of two
    independent draws of the same law falls inside ±1.96·SE in about 95 % (≥ 85 %) of the layers."""
    rng = np.random.default_rng(7)
    laws = (2.5, 3.0, 3.5, 4.0)

    def rows(layers: int) -> tuple[list[dict], dict]:
        out, evals = [], {}
        for layer in range(layers):
            for k, a in enumerate(laws):
                name = f"model.layers.{layer}.m{k}.weight"
                evals[name] = pareto(rng, a, 200)
                out.append({"name": name, "layer": layer, "module": f"m{k}",
                            "alpha_hill": alpha_noise.hill_fit(evals[name])[0]})
        return out, evals

    base = alpha_noise.layer_alphas(*rows(150))
    fine = alpha_noise.layer_alphas(*rows(150))
    assert list(base["matrices"]) == [4] * 150
    assert np.mean(base["se"]) / np.std(base["alpha"], ddof=1) == pytest.approx(0.85, abs=0.15)
    shift = alpha_noise.alpha_shift(base, fine)
    assert 0.85 <= alpha_noise.within_noise(shift) / len(shift) <= 1.0


def test_layer_alphas_combination_by_hand_and_missing_values():
    rows = [
        {"name": "a", "layer": 0, "module": "q", "alpha_hill": 2.0, "alpha_hill_se": 0.3},
        {"name": "b", "layer": 0, "module": "k", "alpha_hill": 4.0, "alpha_hill_se": 0.4},
        {"name": "emb", "layer": 0, "module": "embedding", "alpha_hill": 9.0, "alpha_hill_se": 0.1},   # excluded
        {"name": "c", "layer": 1, "module": "q", "alpha_hill": 3.0},                    # SE from the eigenvalues
        {"name": "d", "layer": 1, "module": "k", "alpha_hill": float("nan")},           # failed fit: left out
        {"name": "e", "layer": None, "module": "pooler", "alpha_hill": 5.0},            # not in a block
        {"name": "f", "layer": 2, "module": "q", "alpha_hill": 3.0},                    # no SE known: NaN
    ]
    lam = pareto(np.random.default_rng(3), 3.0, 100)
    out = alpha_noise.layer_alphas(rows, {"c": lam})
    assert list(out["layer"]) == [0, 1, 2] and list(out["matrices"]) == [2, 1, 1]
    assert out["alpha"].iloc[0] == pytest.approx(3.0) and out["se"].iloc[0] == pytest.approx(0.5 / 2)   # √(.09+.16)/2
    assert out["se"].iloc[1] == pytest.approx(alpha_noise.hill_fit(lam)[1])
    assert math.isnan(out["se"].iloc[2])
    other = pd.DataFrame({"layer": [0, 1], "alpha": [3.5, 2.0], "se": [0.15, 0.0]})
    shift = alpha_noise.alpha_shift(out, other)
    assert list(shift.columns) == alpha_noise.SHIFT_COLUMNS and list(shift["layer"]) == [0, 1]
    assert shift["shift"].iloc[0] == pytest.approx(0.5)
    assert shift["se"].iloc[0] == pytest.approx(math.hypot(0.25, 0.15))
    assert shift["band"].iloc[0] == pytest.approx(1.959964 * math.hypot(0.25, 0.15), rel=1e-6)
    assert alpha_noise.within_noise(shift) == 1          # layer 0: 0.5 < 1.96·0.29 (inside); layer 1: |−1| outside


def test_replace_with_expert_spectra_and_seed_shift():
    rng = np.random.default_rng(5)
    e0, e1, routed = pareto(rng, 2.5, 150), pareto(rng, 3.5, 150), pareto(rng, 3.0, 150)
    rows = [{"name": "L0.q", "layer": 0, "module": "q", "alpha_hill": 4.0, "alpha_hill_se": 0.2},
            {"name": "L0.k", "layer": 0, "module": "k", "alpha_hill": 5.0, "alpha_hill_se": 0.2}]
    (a0, s0), (a1, s1) = alpha_noise.hill_fit(e0), alpha_noise.hill_fit(e1)
    out = alpha_noise.layer_alphas(rows, replace={"L0.q": [e0, e1]})
    assert out["alpha"].iloc[0] == pytest.approx(((a0 + a1) / 2 + 5.0) / 2)
    assert out["se"].iloc[0] == pytest.approx(math.sqrt((s0 ** 2 + s1 ** 2) / 4 + 0.04) / 2)

    class Cmp:                                           # what effective_spectra reads of a MatrixComparison
        def __init__(self, name, lam):
            self.info, self.sigmas = MatrixInfo(name, 0, "q", 150, 150), np.sqrt(lam)[::-1]
    grouped = alpha_noise.effective_spectra([Cmp("L0.q [expert 0]", e0), Cmp("L0.q [expert 1]", e1),
                                             Cmp("L0.k", routed)])
    assert set(grouped) == {"L0.q", "L0.k"} and len(grouped["L0.q"]) == 2
    np.testing.assert_allclose(grouped["L0.q"][1], e1, rtol=1e-12)
    a = pd.DataFrame({"layer": [1, 0], "alpha": [3.0, 2.0], "se": [0.1, 0.1]})
    b = pd.DataFrame({"layer": [0, 1], "alpha": [2.5, 2.9], "se": [0.1, 0.1]})
    seed = alpha_noise.seed_shift(a, b)
    assert list(seed["layer"]) == [0, 1]
    np.testing.assert_allclose(seed["shift"], [-0.5, 0.1]) and np.testing.assert_allclose(seed["band"], [0.5, 0.1])


def test_layer_alpha_equals_the_engine_alphalora_score(tmp_path):
    """On a real (tiny) analysis the layer α is the engine's AlphaLoRA score; its SE comes from the eigenvalues."""
    rng = np.random.default_rng(11)
    infos = [(MatrixInfo(f"model.layers.{layer}.self_attn.{m}.weight", layer, m, 48, 64),
              rng.standard_normal((48, 64)).astype(np.float32)) for layer in range(2) for m in ("q_proj", "v_proj")]
    rows, evals = [], {}
    for info, W in infos:
        row, ev = engine.analyze_matrix(info, W)
        rows.append(row)
        evals[info.name] = ev
    out = alpha_noise.layer_alphas(rows, evals)
    expected = [r["alphalora_score"] for r in engine.layer_summary(rows)]
    np.testing.assert_allclose(out["alpha"], expected, rtol=1e-12)
    assert (out["se"] > 0).all() and np.isfinite(out["se"]).all()
