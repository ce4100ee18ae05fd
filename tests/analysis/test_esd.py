"""Tests of the eigenvalue path and the α estimators against closed forms, synthetic laws and weightwatcher's fit."""
import warnings

import numpy as np
import pytest
import torch

from analysis import esd
from analysis.metrics import mp_bulk_edge, norm_metrics


def pareto(a: float, n: int, seed: int) -> np.ndarray:
    """n draws from the Pareto law with density ∝ λ^(−a) on [1, ∞) (inverse-CDF sampling)."""
    u = np.random.default_rng(seed).random(n)
    return (1.0 - u) ** (-1.0 / (a - 1.0))


def ww_fit(evals: np.ndarray):
    """weightwatcher 0.7.7's own WWFit on the same eigenvalues (its import silences warnings: undo that)."""
    with warnings.catch_warnings():
        from weightwatcher.WW_powerlaw import WWFit
    lam = np.sort(evals)
    return WWFit(lam[lam > esd.EVALS_THRESH])


def literal_hill_peak(evals: np.ndarray, bins: int = 100) -> float:
    """A slow, literal transcription of the PL_Alpha_Hill 'xmin_peak' definition (loop over candidates)."""
    lam = np.sort(evals)
    N = len(lam)
    log_lam = np.log(lam)
    counts, edges = np.histogram(np.log10(lam), bins=bins)
    peak = 10 ** edges[np.argmax(counts)]
    lower, upper = np.log10(0.95 * peak), 1.5 * peak     # the reference's log-vs-linear comparison, kept
    alphas, Ds = np.zeros(N - 1), np.ones(N - 1)
    for i in range(N - 1):
        x = lam[i]
        if x < lower:
            continue
        if x > upper:
            break
        n = N - i
        alpha = 1 + n / (np.sum(log_lam[i:]) - n * log_lam[i])
        alphas[i] = alpha
        if alpha > 1:
            Ds[i] = np.max(np.abs(1 - (lam[i:] / x) ** (1 - alpha) - np.arange(n) / n))
    return float(alphas[np.argmin(Ds)])


def heavy_tailed_matrix(rows: int, cols: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_t(2.5, size=(rows, cols)) * 0.02).float()


@pytest.mark.parametrize("a", [2.0, 2.5, 3.5, 5.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_pareto_exponent_recovered(a, seed):
    # The continuous MLE has standard error (α−1)/√n on a tail of n points (Clauset et al. 2009, eq. 3.2);
    # 4 standard errors (the fit's own sigma) bounds a false failure at < 1e-4 per case.
    lam = pareto(a, 3000, seed)
    fit = esd.alpha_ww(lam)
    assert abs(fit.alpha - a) <= 4 * fit.sigma, (fit.alpha, fit.sigma, fit.num_pl_spikes)
    hill = esd.alpha_hill(lam, "peak")   # the ESD of a Pareto sample peaks at its minimum: the whole tail
    assert abs(hill.alpha - a) <= 4 * (a - 1) / np.sqrt(len(lam))


def test_alpha_ww_equals_weightwatcher_fit_on_heavy_and_light_spectra():
    for seed in range(3):
        for lam in (pareto(3.0, 500, seed), np.linalg.svd(np.random.default_rng(seed).normal(size=(300, 120)),
                                                           compute_uv=False) ** 2):
            ours, ref = esd.alpha_ww(lam), ww_fit(lam)
            assert ours.alpha == pytest.approx(ref.alpha, abs=1e-9)
            assert ours.xmin == pytest.approx(ref.xmin, rel=1e-12)
            assert ours.D == pytest.approx(ref.D, abs=1e-9)
            assert ours.sigma == pytest.approx(ref.sigma, abs=1e-9)


def test_small_sample_path_matches_weightwatcher():
    for seed in range(5):
        lam = pareto(2.5, 15, seed)
        ours, ref = esd.alpha_ww(lam), ww_fit(lam)
        assert ours.status == "small-sample fit"
        assert ours.alpha == pytest.approx(ref.alpha, abs=1e-9)
        assert ours.xmin == pytest.approx(ref.xmin)


def test_gaussian_matrix_is_inside_the_mp_bulk():
    N, M = 2000, 500
    W = torch.randn(N, M, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.05
    lam = esd.eigenvalues(W)
    edge = mp_bulk_edge(lam, N, M)
    exact_edge = 0.05 ** 2 * N * (1 + np.sqrt(M / N)) ** 2          # with the true element variance
    assert edge == pytest.approx(exact_edge, rel=0.01)
    assert lam.max() <= edge * 1.02                                   # Tracy–Widom fluctuations are O(N^-2/3)
    assert norm_metrics(lam, 3.0, N, M)["num_spikes"] <= 1
    assert esd.alpha_ww(lam).alpha > 4.0                              # no heavy tail
    # a rank-one spike far above the bulk is counted
    u = torch.randn(N, 1, dtype=torch.float64); v = torch.randn(1, M, dtype=torch.float64)
    spiked = W + 3.0 * u @ v / (u.norm() * v.norm())
    assert norm_metrics(esd.eigenvalues(spiked), 3.0, N, M)["num_spikes"] == 1


def test_gram_eigenvalues_equal_svdvals():
    for shape in [(300, 120), (120, 300), (64, 64)]:
        W = heavy_tailed_matrix(*shape, seed=1)
        a, b = esd.eigenvalues(W, chunk_rows=50), esd.eigenvalues_svd(W)
        assert a.shape == (min(shape),)
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12 * b.max())
        assert esd.alpha_ww(a).alpha == pytest.approx(esd.alpha_ww(b).alpha, abs=1e-8)


def test_hill_peak_equals_literal_definition():
    rng = np.random.default_rng(3)
    spectra = [pareto(3.0, 400, 0), np.linalg.svd(rng.normal(size=(256, 128)), compute_uv=False) ** 2,
               esd.eigenvalues(heavy_tailed_matrix(512, 256, seed=2)),
               np.linalg.svd(rng.standard_t(3, size=(200, 200)), compute_uv=False) ** 2 * 1e-4]
    for lam in spectra:
        assert esd.alpha_hill(lam, "peak").alpha == pytest.approx(literal_hill_peak(lam), abs=1e-10)


def test_hill_mid_uses_the_median_eigenvalue():
    lam = np.sort(pareto(3.0, 101, 4))
    fit = esd.alpha_hill(lam, "mid")
    i = 50
    n = 101 - i
    assert fit.xmin == lam[i]
    assert fit.alpha == pytest.approx(1 + n / np.sum(np.log(lam[i:] / lam[i])))


def test_quality_labels_and_degenerate_inputs():
    assert esd.quality_label(1.5) == "over-trained"
    assert esd.quality_label(7.0) == "under-trained"
    assert esd.quality_label(3.0) == "ok"
    assert esd.alpha_ww(np.array([0.0, 1e-9, 2.0])).status.startswith("only 1")
    with pytest.raises(ValueError):
        esd.eigenvalues(torch.zeros(3))


def test_norm_metrics_closed_forms():
    # W = diag(3, 2, 1) padded: eigenvalues of WᵀW are 9, 4, 1
    W = torch.zeros(5, 3, dtype=torch.float64)
    W[0, 0], W[1, 1], W[2, 2] = 3, 2, 1
    lam = esd.eigenvalues(W)
    np.testing.assert_allclose(lam, [1, 4, 9], atol=1e-12)
    m = norm_metrics(lam, 2.0, 5, 3)
    assert m["log_norm"] == pytest.approx(np.log10(14))
    assert m["log_spectral_norm"] == pytest.approx(np.log10(9))
    assert m["stable_rank"] == pytest.approx(14 / 9)
    assert m["alpha_weighted"] == pytest.approx(2.0 * np.log10(9))
    assert m["log_alpha_norm"] == pytest.approx(np.log10(81 + 16 + 1))
    assert m["matrix_rank"] == 3
    p = np.array([1, 4, 9]) / 14
    assert m["entropy"] == pytest.approx(-np.sum(p * np.log(p)) / np.log(3), rel=1e-6)
