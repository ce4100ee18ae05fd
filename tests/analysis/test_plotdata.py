"""Display-only helpers: log/linear histograms, the fitted power-law density, downsampling, grids and comparisons."""
import numpy as np
import pandas as pd
import pytest

from analysis import esd, plotdata


def pareto(a: float, n: int = 4000, xmin: float = 1.0, seed: int = 0) -> np.ndarray:
    u = np.random.default_rng(seed).random(n)
    return np.sort(xmin * (1 - u) ** (-1 / (a - 1)))


def test_log_histogram_is_a_density():
    lam = pareto(3.0)
    centres, dens, edges = plotdata.log_histogram(lam, bins=40)
    assert len(centres) == len(dens) == 40 and len(edges) == 41
    assert np.allclose(np.diff(np.log(edges)), np.log(edges[1] / edges[0]))           # log-spaced
    assert np.isclose(np.sum(dens * np.diff(edges)), 1.0)
    assert np.all((centres > edges[:-1]) & (centres < edges[1:]))


def test_log_histogram_drops_non_positive_and_handles_degenerate():
    c, d, e = plotdata.log_histogram(np.array([0.0, -1.0, np.nan]))
    assert c.size == d.size == e.size == 0
    c, d, e = plotdata.log_histogram(np.full(10, 2.0), bins=5)
    assert np.isclose(np.sum(d * np.diff(e)), 1.0)


def test_linear_histogram_is_a_density():
    lam = np.random.default_rng(1).gamma(2.0, 1.0, 1000)
    c, d, e = plotdata.linear_histogram(lam, bins=30)
    assert np.isclose(np.sum(d * np.diff(e)), 1.0)
    assert np.allclose(np.diff(e), e[1] - e[0])


def test_power_law_line_matches_the_tail_mass_and_slope():
    lam = np.concatenate([np.random.default_rng(2).uniform(0.01, 1.0, 3000), pareto(2.5, 1000, xmin=1.0, seed=3)])
    x, y = plotdata.power_law_line(lam, 2.5, 1.0, points=2000)
    assert x[0] == 1.0 and x[-1] == lam.max()
    slope = np.diff(np.log(y)) / np.diff(np.log(x))
    assert np.allclose(slope, -2.5)
    tail_frac = np.mean(lam >= 1.0)
    integral_to_inf = tail_frac                              # ∫_xmin^∞ f (α−1)/xmin (λ/xmin)^−α dλ = f
    assert np.isclose(np.trapezoid(y, x), integral_to_inf * (1 - (x[-1] / x[0]) ** (1 - 2.5)), rtol=1e-3)
    # on the histogram's scale: the line runs through the tail's bins
    centres, dens, _ = plotdata.log_histogram(lam, bins=30)
    mid = (centres > 1.5) & (centres < 10) & (dens > 0)
    line = tail_frac * 1.5 * centres[mid] ** -2.5
    assert np.all(np.abs(np.log(dens[mid] / line)) < 0.5)


@pytest.mark.parametrize("alpha,xmin", [(np.nan, 1.0), (2.0, np.nan), (0.9, 1.0), (2.0, 0.0), (2.0, 1e9)])
def test_power_law_line_empty_when_no_fit(alpha, xmin):
    x, y = plotdata.power_law_line(pareto(3.0), alpha, xmin)
    assert x.size == 0 and y.size == 0


def test_display_indices_bounded_sorted_and_keep_ends():
    assert np.array_equal(plotdata.display_indices(50, 100), np.arange(50))
    idx = plotdata.display_indices(100_000, 2000)
    assert idx[0] == 0 and idx[-1] == 99_999
    assert len(idx) <= 2002 and np.all(np.diff(idx) > 0)
    assert np.sum(idx < 100) >= 50                              # dense at the top of the spectrum (log-spaced)
    assert np.max(np.diff(idx)) <= 100_000 / 999 + 1            # no big gaps on a linear rank axis


def test_singular_values_descending_sqrt():
    lam = np.array([4.0, 1.0, 9.0, 0.0, -1e-12])
    rank, sv = plotdata.singular_values(lam)
    assert rank.tolist() == [1, 2, 3, 4, 5]
    assert sv.tolist() == [3.0, 2.0, 1.0, 0.0, 0.0]
    rank, sv = plotdata.singular_values(pareto(3.0, 10_000), max_points=500)
    assert len(sv) <= 502 and np.all(np.diff(sv) <= 0) and rank[0] == 1 and rank[-1] == 10_000


def test_ks_curve_filters_inadmissible_and_keeps_the_minimum():
    fit = esd.alpha_ww(pareto(2.5, 3000))
    df = plotdata.ks_curve(fit.candidates, fit.alphas, fit.Ds, max_points=300)
    assert len(df) <= 302 and (df["alpha"] > 1).all()
    best = df.loc[df["D"].idxmin()]
    assert np.isclose(best["xmin"], fit.xmin) and np.isclose(best["D"], fit.D)
    df = plotdata.ks_curve(np.array([1.0, 2.0]), np.array([0.5, 2.0]), np.array([1.0, 0.1]))
    assert df["xmin"].tolist() == [2.0]


def matrices(layers=2, modules=("down", "q", "k", "weird"), seed=0, shift=0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [{"name": f"l{l}.{m}", "layer": float(l), "module": m, "alpha": 3 + rng.random() + shift}
            for l in range(layers) for m in modules]
    rows.append({"name": "emb", "layer": np.nan, "module": "embedding", "alpha": 5.0})
    return pd.DataFrame(rows)


def test_order_modules():
    assert plotdata.order_modules(["down", "zeta", "q", "alpha", "k", "q"]) == ["q", "k", "down", "alpha", "zeta"]


def test_layer_module_grid():
    df = matrices()
    values, names = plotdata.layer_module_grid(df, "alpha")
    assert list(values.index) == [0, 1] and list(values.columns) == ["q", "k", "down", "weird"]
    assert values.loc[1, "k"] == df.set_index("name").loc["l1.k", "alpha"]
    assert names.loc[0, "q"] == "l0.q"
    assert plotdata.layer_module_grid(df, "missing")[0].empty


def test_layer_module_grid_averages_duplicates():
    df = pd.DataFrame({"name": ["a", "b"], "layer": [0, 0], "module": ["other", "other"], "alpha": [2.0, 4.0]})
    values, names = plotdata.layer_module_grid(df, "alpha")
    assert values.loc[0, "other"] == 3.0 and names.loc[0, "other"] == "a + b"


def test_compare_layers_outer_join_and_delta():
    a = pd.DataFrame({"layer": [0, 1, 2], "alpha": [2.0, 3.0, 4.0]})
    b = pd.DataFrame({"layer": [0, 1], "alpha": [2.5, 2.0]})
    out = plotdata.compare_layers(a, b, "alpha")
    assert out["layer"].tolist() == [0, 1, 2]
    assert out["delta"].tolist()[:2] == [0.5, -1.0] and np.isnan(out["delta"].iloc[2])


def test_compare_matrices_and_module_deltas():
    a, b = matrices(seed=0), matrices(seed=0, shift=0.5)
    out = plotdata.compare_matrices(a, b, "alpha")
    assert len(out) == 8 and np.allclose(out["delta"], 0.5)             # embeddings (no layer) left out
    assert (out["name_a"] == out["name_b"]).all()
    per = plotdata.module_deltas(out)
    assert per["module"].tolist() == ["q", "k", "down", "weird"]
    assert np.allclose(per["delta"], 0.5) and per["matrices"].tolist() == [2, 2, 2, 2]
    assert plotdata.module_deltas(out.iloc[0:0]).empty
    assert plotdata.compare_matrices(a, b.drop(columns="alpha"), "alpha").empty


def test_alpha_hover_carries_standard_error_and_verdict():
    df = pd.DataFrame({"name": ["a", "b", "c"], "alpha": [3.21, 8.44, float("nan")], "alpha_se": [0.12, 2.48, None],
                       "verdict": ["typical", "unreliable fit", "no fit"],
                       "verdict_reason": ["", "α = 8.44 > 8 (spurious)", "fewer than 8 eigenvalues"]})
    assert plotdata.alpha_hover(df, "alpha") == ["α = 3.210 ± 0.120 · typical",
                                                  "α = 8.440 ± 2.480 · unreliable fit (α = 8.44 > 8 (spurious))",
                                                  "α = — ± — · no fit"]
    assert plotdata.is_unreliable(df, "alpha").tolist() == [False, True, False]
    assert plotdata.is_unreliable(df, "stable_rank").tolist() == [False] * 3
    assert plotdata.alpha_hover(df.assign(stable_rank=[1.5, 2, 3]), "stable_rank")[0] == "value = 1.5"


def test_layer_module_hover_is_shaped_like_the_grid():
    df = pd.DataFrame({"name": ["l0.q", "l0.k", "l1.q", "emb"], "layer": [0, 0, 1, None],
                       "module": ["q", "k", "q", "embedding"], "alpha": [2.5, 3.0, 4.0, 5.0],
                       "alpha_se": [0.1, 0.2, 0.3, 0.4], "verdict": ["typical"] * 4, "verdict_reason": [""] * 4})
    values, _ = plotdata.layer_module_grid(df, "alpha")
    text = plotdata.layer_module_hover(df, "alpha", values)
    assert text.shape == values.shape and list(text.columns) == ["q", "k"]
    assert text.loc[0, "k"] == "l0.k<br>α = 3.000 ± 0.200 · typical"
    assert pd.isna(text.loc[1, "k"])
    assert plotdata.layer_module_hover(df, "stable_rank", values).loc[0, "q"] == "l0.q"
