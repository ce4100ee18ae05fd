"""Plotly figures for the Compare spectra page: intruders vs ε, per layer, |U0ᵀU| similarity, spectra, α shift."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

LAYER_AXIS = "layer (transformer block index)"
COUNT_AXIS = "intruder dimensions (count)"
EPS_AXIS = "ε (similarity threshold, dimensionless)"
SIGMA_AXIS = "singular value σ (weight units, log scale)"
RANK_AXIS = "rank j (1 = largest σ)"
ALPHA_SHIFT_AXIS = "Δα = fine-tuned − base (dimensionless)"
INTRUDER_COLOUR, BASE_COLOUR = "#d62728", "#7f7f7f"
PALETTE = qualitative.D3
_FONT = dict(size=13)


def colour(i: int) -> str:
    """The colour of the i-th fine-tuned side, the same in every chart."""
    return PALETTE[i % len(PALETTE)]


def _layout(fig: go.Figure, height: int, title: str, **kw) -> go.Figure:
    kw.setdefault("margin", dict(l=75, r=30, t=60, b=60))
    kw.setdefault("legend", dict(orientation="h", x=0.0, y=1.0, yanchor="bottom", font=dict(size=12)))
    fig.update_layout(height=height, font=_FONT, hoverlabel=dict(font_size=12),
                      title=dict(text=title, y=0.98, yanchor="top"), **kw)
    return fig


def legend_below(fig: go.Figure, entries: int, height: int) -> int:
    """Legend under the x axis (long run names get a row each, never over the plot); returns the new height."""
    rows = max(1, entries)
    fig.update_layout(legend=dict(orientation="h", x=0.0, y=-0.2, yanchor="top", font=dict(size=12)),
                      margin=dict(l=75, r=30, t=60, b=90 + 24 * rows))
    return height + 24 * rows


def sweep_figure(sweeps: dict[str, pd.DataFrame], epsilon: float, height: int = 420) -> go.Figure:
    """Total intruder count vs ε, one line per fine-tuned side, with the chosen ε marked."""
    fig = go.Figure()
    for i, (label, df) in enumerate(sweeps.items()):
        fig.add_trace(go.Scatter(
            x=df["epsilon"], y=df["intruders"], mode="lines+markers", name=label,
            line=dict(color=colour(i), width=2.5), marker=dict(size=6),
            customdata=df["matrices_with_intruders"],
            hovertemplate=f"{label}<br>ε = %{{x:.2f}}: %{{y}} intruders in %{{customdata}} matrices<extra></extra>"))
    fig.add_vline(x=epsilon, line=dict(color="#444", dash="dash", width=1.5),
                  annotation_text=f"chosen ε = {epsilon:g}", annotation_position="top left")
    fig.update_xaxes(title_text=EPS_AXIS, range=[0, 1], dtick=0.1)
    fig.update_yaxes(title_text=COUNT_AXIS + ", summed over matrices", rangemode="tozero")
    _layout(fig, height, "Intruder dimensions vs ε (summed over the transformer-block matrices)")
    fig.update_layout(height=legend_below(fig, len(sweeps), height))
    return fig


def per_layer_figure(per_layer: dict[str, pd.DataFrame], epsilon: float, height: int = 420) -> go.Figure:
    """Grouped bars: intruders per layer, one bar per side; hover lists the matrices holding them.

    per_layer[label]: columns layer, intruders, detail (text naming matrices and counts).
    """
    fig = go.Figure()
    layers: set[int] = set()
    top = 1
    for i, (label, df) in enumerate(per_layer.items()):
        layers.update(int(x) for x in df["layer"])
        top = max([top, *[int(v) for v in df["intruders"]]])
        fig.add_trace(go.Bar(
            x=df["layer"], y=df["intruders"], name=label, marker_color=colour(i), customdata=df["detail"],
            hovertemplate=f"{label}<br>layer %{{x}}: %{{y}} intruders<br>%{{customdata}}<extra></extra>"))
    fig.update_xaxes(title_text=LAYER_AXIS, dtick=1 if len(layers) <= 40 else None)
    fig.update_yaxes(title_text=COUNT_AXIS, range=[0, top * 1.12])
    _layout(fig, height, f"Intruder dimensions per layer at ε = {epsilon:g}", barmode="group")
    fig.update_layout(height=legend_below(fig, len(per_layer), height))
    return fig


def similarity_figure(overlap: np.ndarray, sims: np.ndarray, epsilon: float, matrix: str,
                      n_base: int, height: int = 460) -> go.Figure:
    """|U0ᵀU| block (top-k fine-tuned rows × top-m base columns) beside each row's best match s_j over all
    base vectors, with the ε threshold and the intruder rows in red."""
    k, m = overlap.shape
    fig = make_subplots(rows=1, cols=2, column_widths=[0.75, 0.25], horizontal_spacing=0.15,
                        subplot_titles=(f"|u_jᵀ u0_i| for the top {m} base vectors",
                                        f"best match s_j over all {n_base} (red: < ε)"))
    rows = np.arange(1, k + 1)
    fig.add_trace(go.Heatmap(
        z=overlap, x=np.arange(1, m + 1), y=rows, zmin=0, zmax=1, colorscale="Viridis", xgap=1, ygap=1,
        colorbar=dict(title=dict(text="|cos|", side="top"), x=0.655, xanchor="left", thickness=14, len=0.9),
        hovertemplate=f"{matrix}<br>fine-tuned u_%{{y}} · base u0_%{{x}}: |cos| = %{{z:.3f}}<extra></extra>"),
        row=1, col=1)
    intr = sims < epsilon
    fig.add_trace(go.Bar(
        x=sims, y=rows, orientation="h", marker_color=np.where(intr, INTRUDER_COLOUR, "#1f77b4"),
        showlegend=False, customdata=np.where(intr, "intruder", "matches the base"),
        hovertemplate=f"{matrix}<br>u_%{{y}}: s = %{{x:.3f}} (%{{customdata}})<extra></extra>"), row=1, col=2)
    fig.add_vline(x=epsilon, line=dict(color=INTRUDER_COLOUR, dash="dash", width=1.5), row=1, col=2)
    fig.update_yaxes(title_text="fine-tuned singular vector u_j (rank j)", autorange="reversed", dtick=1 if k <= 30
                     else None, row=1, col=1)
    fig.update_yaxes(autorange="reversed", dtick=1 if k <= 30 else None, row=1, col=2)
    fig.update_xaxes(title_text="base singular vector u0_i (rank i)", row=1, col=1)
    fig.update_xaxes(title_text=f"s_j (|cos|); dashed: ε = {epsilon:g}", range=[0, 1.05], dtick=0.25, row=1, col=2)
    return _layout(fig, height, f"Similarity of singular vectors — {matrix}", margin=dict(l=75, r=30, t=80, b=60))


def spectrum_figure(matrix: str, sigmas: np.ndarray, base_sigmas: np.ndarray, intruders: list[int],
                    label: str, sims: np.ndarray | None = None, extra: dict[str, np.ndarray] | None = None,
                    max_rank: int | None = None, height: int = 460, title: str | None = None) -> go.Figure:
    """σ vs rank on a log y axis: the fine-tuned spectrum, the base overlaid, intruders highlighted.

    extra: more spectra to overlay (e.g. after mitigation). max_rank: show only the first ranks.
    """
    n = len(sigmas) if max_rank is None else min(len(sigmas), max_rank)
    ranks = np.arange(1, n + 1)
    fig = go.Figure()
    nb = min(len(base_sigmas), n)
    fig.add_trace(go.Scatter(x=ranks[:nb], y=base_sigmas[:nb], mode="lines", name="base",
                             line=dict(color=BASE_COLOUR, dash="dash", width=2),
                             hovertemplate=f"base · {matrix}<br>rank %{{x}}: σ = %{{y:.4g}}<extra></extra>"))
    fig.add_trace(go.Scatter(x=ranks, y=sigmas[:n], mode="lines+markers", name=label,
                             line=dict(color="#1f77b4", width=2), marker=dict(size=4),
                             hovertemplate=f"{label} · {matrix}<br>rank %{{x}}: σ = %{{y:.4g}}<extra></extra>"))
    for i, (name, s) in enumerate((extra or {}).items()):
        fig.add_trace(go.Scatter(x=ranks[:len(s)], y=s[:n], mode="lines", name=name,
                                 line=dict(color=colour(i + 2), width=2),
                                 hovertemplate=f"{name} · {matrix}<br>rank %{{x}}: σ = %{{y:.4g}}<extra></extra>"))
    idx = [j for j in intruders if j < n]
    if idx:
        s = [f"{sims[j]:.3f}" if sims is not None and j < len(sims) else "?" for j in idx]
        fig.add_trace(go.Scatter(
            x=[j + 1 for j in idx], y=[sigmas[j] for j in idx], mode="markers", name="intruder dimensions",
            marker=dict(size=13, color=INTRUDER_COLOUR, symbol="diamond", line=dict(width=1, color="white")),
            customdata=s, hovertemplate=f"intruder · {matrix}<br>rank %{{x}}: σ = %{{y:.4g}}"
                                        "<br>best match with the base s = %{customdata}<extra></extra>"))
    if n > 60:                                    # log x keeps the top ranks (where intruders sit) readable
        ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000) if t <= n]
        fig.update_xaxes(type="log", tickvals=ticks, ticktext=[str(t) for t in ticks],
                         range=[np.log10(0.8), np.log10(n * 1.15)])
    fig.update_xaxes(title_text=RANK_AXIS + (", log scale" if n > 60 else ""))
    ys = np.concatenate([np.asarray(sigmas[:n], float), np.asarray(base_sigmas[:nb], float),
                         *[np.asarray(v[:n], float) for v in (extra or {}).values()]])
    fig.update_yaxes(title_text=SIGMA_AXIS, type="log", **log_ticks(ys))
    return _layout(fig, height, title or f"Singular values — {matrix}", margin=dict(l=75, r=30, t=90, b=60))


def log_ticks(values: np.ndarray) -> dict:
    """Tick values 1-2-5 per decade over a short log range (every decade over a long one): no minor-digit clutter."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v) & (v > 0)]
    if not v.size:
        return {}
    lo, hi = np.floor(np.log10(v.min())), np.ceil(np.log10(v.max()))
    steps = (1,) if hi - lo > 3 else (1, 2, 5)
    ticks = [m * 10.0 ** e for e in range(int(lo), int(hi) + 1) for m in steps]
    ticks = [t for t in ticks if v.min() / 1.5 <= t <= v.max() * 1.5]
    return dict(tickvals=ticks, ticktext=[f"{t:g}" for t in ticks]) if len(ticks) >= 2 else {}


def _band(fig: go.Figure, layers, half, name: str, fill: str, hover: str, dash: str | None = None) -> None:
    """A band ±half around 0 over the layers (a closed filled polygon, drawn under the lines)."""
    x = [int(v) for v in layers]
    h = [float(v) for v in half]
    fig.add_trace(go.Scatter(x=x + x[::-1], y=h + [-v for v in h[::-1]], fill="toself", fillcolor=fill, mode="lines",
                             line=dict(width=2 if dash else 1, color="#333" if dash else "rgba(90,90,90,0.6)",
                                       dash=dash or "solid"), name=name,
                             hoveron="points+fills", customdata=h + h[::-1],
                             hovertemplate=f"{hover}<br>layer %{{x}}: ±%{{customdata:.3f}}<extra></extra>"))


def alpha_shift_figure(shifts: dict[str, pd.DataFrame], score_label: str, seeds: dict[str, pd.DataFrame] | None = None,
                       height: int = 400) -> go.Figure:
    """Δα per layer, one line per side (shifts[label]: layer, base, finetuned, shift, se, band), over the noise
    floor: a grey band ±band (z·SE of the difference, the widest side per layer) and, per seed pair in `seeds`
    (label -> layer, band = |α_seed a − α_seed b|), a hatched band of the seed-to-seed shift."""
    fig = go.Figure()
    layers: set[int] = set()
    bands = [df[["layer", "band"]] for df in shifts.values() if "band" in df and df["band"].notna().any()]
    if bands:
        noise = pd.concat(bands).groupby("layer")["band"].max().reset_index()
        _band(fig, noise["layer"], noise["band"], "fit noise: ±1.96·SE of Δα (95 %)", "rgba(127,127,127,0.25)",
              "fit noise (±1.96·SE)")
    for label, df in (seeds or {}).items():
        _band(fig, df["layer"], df["band"], f"seed-to-seed shift: {label}", "rgba(60,60,60,0.12)",
              f"seed-to-seed |Δα| ({label})", dash="dot")
    for i, (label, df) in enumerate(shifts.items()):
        layers.update(int(x) for x in df["layer"])
        se = df["se"] if "se" in df else pd.Series(np.nan, index=df.index)
        fig.add_trace(go.Scatter(
            x=df["layer"], y=df["shift"], mode="lines+markers", name=label, line=dict(color=colour(i), width=2.5),
            marker=dict(size=8), customdata=np.stack([df["base"], df["finetuned"], se], axis=-1),
            hovertemplate=f"{label}<br>layer %{{x}}: Δα = %{{y:+.3f}} ± %{{customdata[2]:.3f}} (SE)"
                          f"<br>base {score_label} %{{customdata[0]:.3f}} → %{{customdata[1]:.3f}}<extra></extra>"))
    fig.add_hline(y=0, line=dict(color="#444", width=1))
    fig.update_xaxes(title_text=LAYER_AXIS, dtick=1 if len(layers) <= 40 else None)
    fig.update_yaxes(title_text=ALPHA_SHIFT_AXIS, zeroline=False)
    _layout(fig, height, f"Δα per layer: {score_label}, fine-tuned − base")
    fig.update_layout(height=legend_below(fig, len(fig.data), height))
    return fig
