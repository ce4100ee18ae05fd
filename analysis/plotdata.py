"""Display-only data shaping for the spectra plots: log-space histograms, the fitted power-law line, downsampling, grids."""
from __future__ import annotations

import numpy as np
import pandas as pd

# canonical order of matrix kinds along the heatmaps' x axis (anything else follows, alphabetically)
MODULE_ORDER = ["q", "k", "v", "o", "gate", "up", "down", "fc_in", "fc_out", "embedding", "head", "other"]
# per-matrix α column → (its standard-error column, its verdict column, the verdict's reason column)
ALPHA_COLUMNS = {"alpha": ("alpha_se", "verdict", "verdict_reason"),
                 "alpha_hill": ("alpha_hill_se", "alpha_hill_verdict", "alpha_hill_reason")}


def positive(evals: np.ndarray) -> np.ndarray:
    """The strictly positive, finite eigenvalues, ascending (λ ≤ 0 has no logarithm)."""
    lam = np.asarray(evals, dtype=np.float64)
    lam = lam[np.isfinite(lam) & (lam > 0.0)]
    return np.sort(lam)


def log_histogram(evals: np.ndarray, bins: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Histogram density of λ in log-spaced bins: (geometric bin centres, density, edges).

    density_k = count_k / (N · width_k) over the N positive eigenvalues, so Σ density·width = 1 and a
    power-law density drawn with :func:`power_law_line` sits on the same scale.
    """
    lam = positive(evals)
    if lam.size == 0:
        empty = np.zeros(0)
        return empty, empty, empty
    lo, hi = lam[0], lam[-1]
    if hi <= lo:                                   # all equal: one narrow bin around the value
        lo, hi = lo * 0.9, hi * 1.1
    edges = np.geomspace(lo, hi, bins + 1)
    counts, _ = np.histogram(lam, bins=edges)
    density = counts / (lam.size * np.diff(edges))
    centres = np.sqrt(edges[:-1] * edges[1:])
    return centres, density, edges


def linear_histogram(evals: np.ndarray, bins: int = 80) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Histogram density of λ in equal-width bins: (bin centres, density, edges)."""
    lam = np.asarray(evals, dtype=np.float64)
    lam = lam[np.isfinite(lam)]
    if lam.size == 0:
        empty = np.zeros(0)
        return empty, empty, empty
    counts, edges = np.histogram(lam, bins=bins)
    width = np.diff(edges)
    density = counts / (lam.size * np.where(width > 0, width, 1.0))
    return (edges[:-1] + edges[1:]) / 2, density, edges


def power_law_line(evals: np.ndarray, alpha: float, xmin: float, points: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """The fitted power law as a density on the scale of :func:`log_histogram`: (λ, p(λ)) for xmin ≤ λ ≤ λ_max.

    p(λ) = f · (α−1)/xmin · (λ/xmin)^(−α), where f = (#λ ≥ xmin)/N is the tail's share of the eigenvalues,
    so the line integrates to the tail's mass. Empty when the fit failed.
    """
    lam = positive(evals)
    if lam.size == 0 or not (np.isfinite(alpha) and np.isfinite(xmin)) or alpha <= 1.0 or xmin <= 0.0:
        return np.zeros(0), np.zeros(0)
    tail = np.count_nonzero(lam >= xmin * (1 - 1e-12))
    hi = lam[-1]
    if tail == 0 or hi <= xmin:
        return np.zeros(0), np.zeros(0)
    x = np.geomspace(xmin, hi, points)
    frac = tail / lam.size
    y = frac * (alpha - 1.0) / xmin * (x / xmin) ** (-alpha)
    return x, y


def display_indices(n: int, max_points: int = 2000) -> np.ndarray:
    """Indices 0..n−1 to draw a length-n spectrum with at most ~max_points points (display only).

    The union of log-spaced indices (dense at the top of the spectrum, where the large σ live) and
    evenly spaced ones (so a linear rank axis has no gaps); first and last index always kept.
    """
    if n <= max_points:
        return np.arange(n)
    half = max(2, max_points // 2)
    logs = np.unique(np.geomspace(1, n, half).astype(np.int64) - 1)
    lins = np.linspace(0, n - 1, half).astype(np.int64)
    return np.unique(np.concatenate([logs, lins, [0, n - 1]]))


def singular_values(evals: np.ndarray, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """(rank, σ) with σ = √λ in descending order (rank 1 = largest), downsampled for display."""
    lam = np.clip(np.asarray(evals, dtype=np.float64), 0.0, None)
    sv = np.sqrt(np.sort(lam)[::-1])
    idx = display_indices(sv.size, max_points)
    return idx + 1, sv[idx]


def ks_curve(candidates: np.ndarray, alphas: np.ndarray, Ds: np.ndarray,
             max_points: int = 3000) -> pd.DataFrame:
    """KS distance D against candidate xmin, admissible candidates only (α > 1), downsampled for display.

    Columns: xmin, D, alpha. The chosen xmin is the row with the smallest D (kept by the downsampling).
    """
    df = pd.DataFrame({"xmin": np.asarray(candidates, dtype=np.float64),
                       "D": np.asarray(Ds, dtype=np.float64),
                       "alpha": np.asarray(alphas, dtype=np.float64)})
    df = df[(df["alpha"] > 1.0) & np.isfinite(df["D"]) & (df["xmin"] > 0)].reset_index(drop=True)
    if len(df) > max_points:
        keep = set(display_indices(len(df), max_points).tolist())
        keep.add(int(df["D"].idxmin()))
        df = df.loc[sorted(keep)].reset_index(drop=True)
    return df


def order_modules(modules) -> list[str]:
    """Module kinds in canonical order (q, k, v, o, gate, up, down, …), unknown kinds last, alphabetically."""
    present = list(dict.fromkeys(str(m) for m in modules))
    known = [m for m in MODULE_ORDER if m in present]
    return known + sorted(m for m in present if m not in MODULE_ORDER)


def layer_module_grid(matrices: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A layer × module table of one metric for the block matrices (mean where a layer has several of a kind).

    Returns (values, names): both indexed by layer (int, ascending) with modules as columns in canonical
    order; `names` holds the matrix name(s) behind each cell for hover text.
    """
    df = matrices[matrices["layer"].notna()].copy()
    if df.empty or metric not in df:
        return pd.DataFrame(), pd.DataFrame()
    df["layer"] = df["layer"].astype(int)
    df[metric] = pd.to_numeric(df[metric], errors="coerce")
    values = df.pivot_table(index="layer", columns="module", values=metric, aggfunc="mean", dropna=False)
    names = df.groupby(["layer", "module"])["name"].agg(lambda s: " + ".join(map(str, s))).unstack("module")
    cols = order_modules(values.columns)
    values = values.reindex(columns=cols).sort_index()
    names = names.reindex(index=values.index, columns=cols)
    return values, names


def fmt(x, spec: str = ".3f") -> str:
    """A number for hover text; '—' for NaN, None and non-numbers."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "—"
    return format(x, spec) if np.isfinite(x) else "—"


def alpha_hover(matrices: pd.DataFrame, column: str) -> list[str]:
    """One hover line per row for a metric: 'α = 3.210 ± 0.120 · typical' for the α columns (with the reasons
    when the fit is unreliable), 'value = …' for anything else."""
    if column not in ALPHA_COLUMNS:
        return [f"value = {fmt(v, '.4g')}" for v in matrices.get(column, pd.Series([np.nan] * len(matrices)))]
    se_col, verdict_col, reason_col = ALPHA_COLUMNS[column]
    out = []
    for _, r in matrices.iterrows():
        text = f"α = {fmt(r.get(column))} ± {fmt(r.get(se_col))}"
        verdict = r.get(verdict_col)
        if isinstance(verdict, str) and verdict:
            text += f" · {verdict}"
            reason = r.get(reason_col)
            if verdict == "unreliable fit" and isinstance(reason, str) and reason:
                text += f" ({reason})"
        out.append(text)
    return out


def is_unreliable(matrices: pd.DataFrame, column: str) -> np.ndarray:
    """Boolean per row: the verdict of this α column is 'unreliable fit' (False for other metrics)."""
    verdict_col = ALPHA_COLUMNS.get(column, (None, None, None))[1]
    if verdict_col is None or verdict_col not in matrices:
        return np.zeros(len(matrices), dtype=bool)
    return (matrices[verdict_col] == "unreliable fit").to_numpy(bool)


def layer_module_hover(matrices: pd.DataFrame, metric: str, values: pd.DataFrame) -> pd.DataFrame:
    """Hover text for the cells of :func:`layer_module_grid`: each matrix's name and, for α metrics, α ± SE and
    its verdict; shaped like `values` (several matrices of one kind in a layer: one line each)."""
    df = matrices[matrices["layer"].notna()].copy()
    if df.empty or values.empty:
        return pd.DataFrame()
    df["layer"] = df["layer"].astype(int)
    detail = alpha_hover(df, metric) if metric in ALPHA_COLUMNS else [""] * len(df)
    df["_hover"] = [f"{n}<br>{d}" if d else str(n) for n, d in zip(df["name"], detail)]
    text = df.groupby(["layer", "module"])["_hover"].agg("<br>".join).unstack("module")
    return text.reindex(index=values.index, columns=values.columns)


def compare_layers(layers_a: pd.DataFrame, layers_b: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per-layer comparison of one layer metric: columns layer, a, b, delta (= b − a), outer-joined on layer."""
    a = layers_a[["layer", column]].rename(columns={column: "a"}) if column in layers_a else pd.DataFrame(
        columns=["layer", "a"])
    b = layers_b[["layer", column]].rename(columns={column: "b"}) if column in layers_b else pd.DataFrame(
        columns=["layer", "b"])
    out = a.merge(b, on="layer", how="outer").sort_values("layer").reset_index(drop=True)
    out["layer"] = out["layer"].astype(int)
    out["a"] = pd.to_numeric(out["a"], errors="coerce")
    out["b"] = pd.to_numeric(out["b"], errors="coerce")
    out["delta"] = out["b"] - out["a"]
    return out


def compare_matrices(matrices_a: pd.DataFrame, matrices_b: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per-matrix comparison of one metric, matched by (layer, module) within each model's block matrices.

    Columns: layer, module, a, b, delta (= b − a), name_a, name_b. Kinds present in both only; where a layer
    has several matrices of one kind they are paired in order of appearance.
    """
    def prep(df: pd.DataFrame, side: str) -> pd.DataFrame:
        d = df[df["layer"].notna()][["layer", "module", "name", metric]].copy()
        d["layer"] = d["layer"].astype(int)
        d["nth"] = d.groupby(["layer", "module"]).cumcount()
        return d.rename(columns={metric: side, "name": f"name_{side}"})

    if metric not in matrices_a or metric not in matrices_b:
        return pd.DataFrame(columns=["layer", "module", "a", "b", "delta", "name_a", "name_b"])
    out = prep(matrices_a, "a").merge(prep(matrices_b, "b"), on=["layer", "module", "nth"], how="inner")
    out["a"] = pd.to_numeric(out["a"], errors="coerce")
    out["b"] = pd.to_numeric(out["b"], errors="coerce")
    out["delta"] = out["b"] - out["a"]
    out = out.drop(columns="nth").sort_values(["layer", "module"]).reset_index(drop=True)
    return out[["layer", "module", "a", "b", "delta", "name_a", "name_b"]]


def module_deltas(compared: pd.DataFrame) -> pd.DataFrame:
    """Mean Δ per module kind over the layers (from :func:`compare_matrices`): columns module, delta, matrices."""
    if compared.empty:
        return pd.DataFrame(columns=["module", "delta", "matrices"])
    g = compared.groupby("module")["delta"]
    out = pd.DataFrame({"delta": g.mean(), "matrices": g.count()}).reset_index()
    order = {m: i for i, m in enumerate(order_modules(out["module"]))}
    return out.sort_values("module", key=lambda s: s.map(order)).reset_index(drop=True)
