"""Plotly figure builders for the explorer pages (UI glue: the numbers come from analysis/, shaped by analysis.plotdata)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis import plotdata
from analysis.esd import OVER_TRAINED, UNDER_TRAINED   # weightwatcher's warning bands, for its α only

WEBGL_POINTS = 1500                               # above this many points a trace is drawn with WebGL
LAYER_AXIS = "layer (transformer block index)"
ALPHA_AXIS = "α (power-law exponent, dimensionless)"
EIG_AXIS = "eigenvalue λ of WᵀW (unnormalised)"
MODULE_AXIS = "matrix kind"

# per-layer scores: column of AnalysisResult.layers → (label, per-matrix column behind it)
LAYER_SCORES = {
    "alphalora_score": ("AlphaLoRA layer score (mean PL_Alpha_Hill α)", "alpha_hill"),
    "alpha": ("weightwatcher α (mean over the block)", "alpha"),
}
# per-layer score → (its standard-error column, its count of unreliable fits) in AnalysisResult.layers
LAYER_SCORE_SE = {"alphalora_score": ("alphalora_score_se", "alpha_hill_unreliable"), "alpha": ("alpha_se", "unreliable")}
BANDED = {"alpha"}        # per-matrix α columns the 2 / 6 bands belong to (weightwatcher's α)
DEFAULT_SCORE = DEFAULT_METRIC = "alpha"          # the Overview's chart and heatmap show the same estimator
ESTIMATORS_NOTE = (
    "**weightwatcher α** takes the tail start xmin that best fits a power law (smallest KS distance over all "
    "eigenvalues), and the α < 2 / α > 6 bands are its readings; **PL_Alpha_Hill** (AlphaLoRA) only tries xmin "
    "near the peak of the spectrum's histogram, so it fits a longer tail that reaches into the bulk, usually "
    "gives a smaller α, and on a matrix with a short or poorly fitting tail the two can differ by several units.")
# metrics offered for the layer × module heatmaps
METRICS = {
    "alpha": "α (weightwatcher)",
    "alpha_hill": "α (PL_Alpha_Hill, AlphaLoRA)",
    "alpha_weighted": "α̂ = α · log10 λmax",
    "stable_rank": "stable rank Σλ / λmax",
    "log_spectral_norm": "log10 λmax (spectral norm²)",
}
MODULE_COLOURS = {"q": "#1f77b4", "k": "#17becf", "v": "#2ca02c", "o": "#9467bd", "gate": "#e377c2",
                  "up": "#ff7f0e", "down": "#d62728", "fc_in": "#ff7f0e", "fc_out": "#d62728",
                  "embedding": "#7f7f7f", "head": "#8c564b", "other": "#bcbd22"}
MODULE_NAMES = {"q": "query", "k": "key", "v": "value", "o": "attention output", "gate": "MLP gate",
                "up": "MLP up", "down": "MLP down", "fc_in": "MLP in", "fc_out": "MLP out"}
_FONT = dict(size=13)


def _scatter(n_points: int):
    """Scattergl for large traces (WebGL), Scatter otherwise."""
    return go.Scattergl if n_points > WEBGL_POINTS else go.Scatter


def _layout(fig: go.Figure, height: int, **kw) -> go.Figure:
    kw.setdefault("margin", dict(l=70, r=30, t=50, b=60))
    fig.update_layout(height=height, font=_FONT, hoverlabel=dict(font_size=12), **kw)
    return fig


MODEBAR_PX = 34                      # the height of the row Plotly draws its modebar in (top right, on hover)


def title_below_modebar(fig: go.Figure) -> go.Figure:
    """Give the figure's title its own row under the modebar: in a half-width chart a long title otherwise runs
    under the buttons Plotly shows at the top right on hover. The plot keeps its height (the figure grows)."""
    layout = fig.layout
    if not (layout.title and layout.title.text):
        return fig
    height = layout.height or 450
    top = layout.margin.t if layout.margin.t is not None else 80
    fig.update_layout(height=height + MODEBAR_PX, margin=dict(t=top + MODEBAR_PX),
                      title=dict(yref="container", y=1 - MODEBAR_PX / (height + MODEBAR_PX), yanchor="top",
                                 x=0, xanchor="left", xref="container", pad=dict(l=12)))
    return fig


def _log_dtick(values: np.ndarray):
    """Tick every decade (or every other) on a log axis spanning many decades; Plotly's default otherwise."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    decades = np.log10(v.max() / v.min()) if v.size else 0.0
    return None if decades < 3 else (1 if decades < 8 else 2)


def _alpha_range(values: np.ndarray) -> list[float]:
    v = values[np.isfinite(values)]
    lo = min(1.4, float(v.min()) - 0.3) if v.size else 1.4
    hi = max(6.9, float(v.max()) + 0.4) if v.size else 6.9
    return [max(lo, 0.0), hi]


def add_alpha_bands(fig: go.Figure, y_range: list[float], row=None, col=None) -> None:
    """Shade and label α < 2 (over-trained) and α > 6 (under-trained): weightwatcher's bands, for its α only."""
    fig.add_hrect(y0=y_range[0], y1=OVER_TRAINED, fillcolor="#d62728", opacity=0.10, line_width=0, layer="below",
                  annotation_text="α < 2: over-trained", annotation_position="bottom left",
                  annotation_font=dict(color="#b22222", size=12), row=row, col=col)
    fig.add_hrect(y0=UNDER_TRAINED, y1=y_range[1], fillcolor="#ff9f1c", opacity=0.14, line_width=0, layer="below",
                  annotation_text="α > 6: under-trained", annotation_position="top left",
                  annotation_font=dict(color="#b35c00", size=12), row=row, col=col)


def layer_alpha_figure(layers: pd.DataFrame, matrices: pd.DataFrame, score: str = "alphalora_score",
                       selected: int | None = None, height: int = 440) -> go.Figure:
    """α per layer (the layer score as a line) over the block matrices' own α (points by matrix kind).

    Every point carries its layer index in customdata, so a click selects the layer.
    """
    label, per_matrix = LAYER_SCORES[score]
    fig = go.Figure()
    blocks = matrices[matrices["layer"].notna() & matrices["module"].isin(set(matrices["module"]) -
                                                                           {"embedding", "head"})]
    all_vals = [pd.to_numeric(layers.get(score, pd.Series(dtype=float)), errors="coerce").to_numpy(float)]
    for module in plotdata.order_modules(blocks["module"]):
        d = blocks[blocks["module"] == module]
        y = pd.to_numeric(d[per_matrix], errors="coerce").to_numpy(float)
        all_vals.append(y)
        lay = d["layer"].astype(int).to_numpy()
        hover = [f"{n}<br>{h}" for n, h in zip(d["name"].astype(str), plotdata.alpha_hover(d, per_matrix))]
        fig.add_trace(_scatter(len(d))(
            x=lay, y=y, mode="markers", name=f"{module} ({MODULE_NAMES.get(module, module)})",
            legendgroup="matrices", legendgrouptitle_text="one matrix (hollow: unreliable fit)",
            marker=dict(size=7, color=MODULE_COLOURS.get(module), opacity=0.55,
                        line=dict(width=1.5, color=MODULE_COLOURS.get(module)),
                        symbol=np.where(plotdata.is_unreliable(d, per_matrix), "circle-open", "circle").tolist()),
            customdata=lay, text=hover,
            hovertemplate=f"layer %{{x}} · {module}<br>%{{text}}<extra></extra>"))
    lay = layers["layer"].astype(int).to_numpy() if len(layers) else np.zeros(0, int)
    se_col, bad_col = LAYER_SCORE_SE.get(score, (None, None))
    line_text = [f"{label} = {plotdata.fmt(r.get(score))} ± {plotdata.fmt(r.get(se_col))}<br>"
                 f"{_count(r.get('matrices'))} matrices, {_count(r.get(bad_col))} unreliable fits"
                 for _, r in layers.iterrows()]
    fig.add_trace(go.Scatter(
        x=lay, y=layers[score] if score in layers else [], mode="lines+markers", name=label,
        legendgroup="layer", legendgrouptitle_text="per layer",
        line=dict(color="#222222", width=2.5), marker=dict(size=9, color="#222222"),
        customdata=lay, text=line_text, hovertemplate="layer %{x}<br>%{text}<extra></extra>"))
    y_range = _alpha_range(np.concatenate(all_vals) if all_vals else np.zeros(0))
    if per_matrix in BANDED:
        add_alpha_bands(fig, y_range)
    if selected is not None and score in layers and (layers["layer"] == selected).any():
        fig.add_vrect(x0=selected - 0.4, x1=selected + 0.4, fillcolor="#555555", opacity=0.12, line_width=0,
                      layer="below")
        y_sel = float(layers.loc[layers["layer"] == selected, score].iloc[0])
        fig.add_trace(go.Scatter(x=[selected], y=[y_sel], mode="markers", name=f"selected: layer {selected}",
                                 legendgroup="layer", marker=dict(size=18, color="rgba(0,0,0,0)",
                                                                  line=dict(width=2.5, color="#d62728")),
                                 customdata=[selected], hoverinfo="skip"))
    if len(lay):
        fig.update_xaxes(range=[float(lay.min()) - 0.6, float(lay.max()) + 0.6])
    fig.update_xaxes(title_text=LAYER_AXIS, dtick=1 if len(lay) <= 40 else None, showgrid=False)
    fig.update_yaxes(title_text=ALPHA_AXIS, range=y_range)
    legend = dict(orientation="v", x=1.01, y=1.0, groupclick="toggleitem", font=dict(size=12))
    if height < 420:                              # compact: one legend row under the axis title
        legend = dict(orientation="h", x=0.0, y=-0.3, yanchor="top", traceorder="normal", font=dict(size=11))
        fig.update_traces(legendgrouptitle_text=None)
        fig.update_yaxes(title_text="α (power-law exponent)")
    return _layout(fig, height, title=dict(text=f"{label} per layer"),
                   legend=legend, margin=dict(l=70, r=30, t=50, b=110 if height < 420 else 60))


def _count(x) -> str:
    try:
        return str(int(x))
    except (TypeError, ValueError):
        return "—"


def heatmap_figure(values: pd.DataFrame, names: pd.DataFrame, title: str, colorbar: str,
                   diverging: bool = False, height: int | None = None) -> go.Figure:
    """A layer × matrix-kind heatmap (layer on y, top = layer 0) with the matrix names in the hover text."""
    z = values.to_numpy(dtype=float)
    text = names.fillna("").to_numpy(dtype=object) if not names.empty else None
    cells = z.size
    kw = dict(colorscale="RdBu_r", zmid=0.0) if diverging else dict(colorscale="Viridis")
    value_label = colorbar
    finite = z[np.isfinite(z)]
    if finite.size >= 20:                          # a few outliers must not wash out the colours: cap the scale
        if diverging:
            cap = float(np.percentile(np.abs(finite), 97))
            if cap > 0 and np.abs(finite).max() > 1.3 * cap:
                kw.update(zmin=-cap, zmax=cap)
                colorbar += " (capped)"
        else:
            cap = float(np.percentile(finite, 97))
            if finite.max() > cap + 0.3 * (cap - finite.min()):
                kw.update(zmin=float(finite.min()), zmax=cap)
                colorbar += " (capped)"
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"{m}" for m in values.columns], y=[int(i) for i in values.index], customdata=text,
        colorbar=dict(title=dict(text=colorbar, side="right")), xgap=1, ygap=1,
        texttemplate="%{z:.2f}" if cells <= 400 else None, textfont=dict(size=11),
        hovertemplate="layer %{y} · %{x}<br>%{customdata}<br>" + value_label + " = %{z:.3f}<extra></extra>", **kw))
    fig.update_yaxes(title_text=LAYER_AXIS, autorange="reversed", dtick=1 if len(values) <= 40 else None)
    fig.update_xaxes(title_text=MODULE_AXIS, side="bottom")
    h = height or int(min(900, max(320, 90 + 24 * len(values))))
    return _layout(fig, h, title=dict(text=title))


def matrix_figure(row: pd.Series, evals: np.ndarray, fit, fit_label: str, height: int = 720) -> go.Figure:
    """Four views of one matrix's spectrum: log-log ESD with the fitted power law, linear ESD with the MP
    edge, singular values by rank, and the KS distance against candidate xmin."""
    name = str(row["name"])
    fig = make_subplots(rows=2, cols=2, horizontal_spacing=0.1, vertical_spacing=0.17, subplot_titles=(
        "ESD, log-log, with the fitted power law", "ESD, linear, with the Marchenko–Pastur bulk edge",
        "singular values of W by rank", f"how xmin was chosen: KS distance D ({fit_label})"))
    alpha, xmin = float(fit.alpha), float(fit.xmin)
    # 1. log-log histogram (step line: empty bins leave gaps) + power law
    centres, dens, edges = plotdata.log_histogram(evals)
    if edges.size:
        xs = np.repeat(edges, 2)[1:-1]
        ys = np.repeat(np.where(dens > 0, dens, np.nan), 2)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="ESD (density)", line=dict(color="#1f77b4"),
                                 fill=None, legendgroup="esd", hoverinfo="skip"), 1, 1)
        fig.add_trace(go.Scatter(x=centres, y=np.where(dens > 0, dens, np.nan), mode="markers",
                                 marker=dict(size=4, color="#1f77b4"), showlegend=False, legendgroup="esd",
                                 hovertemplate=f"{name}<br>λ ≈ %{{x:.4g}}<br>density %{{y:.3g}}<extra></extra>"),
                      1, 1)
    px, py = plotdata.power_law_line(evals, alpha, xmin)
    if px.size:
        fig.add_trace(go.Scatter(x=px, y=py, mode="lines", name=f"power law, α = {alpha:.2f}",
                                 line=dict(color="#d62728", width=2.5, dash="dash"),
                                 hovertemplate=f"fit α = {alpha:.3f}<br>λ %{{x:.4g}}<br>p(λ) %{{y:.3g}}<extra></extra>"),
                      1, 1)
    if np.isfinite(xmin) and xmin > 0:
        for r, c in ((1, 1), (1, 2), (2, 2)):
            fig.add_vline(x=xmin, line=dict(color="#d62728", width=1.5, dash="dot"), row=r, col=c)
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"xmin = {xmin:.4g}",
                                 line=dict(color="#d62728", width=1.5, dash="dot")), 1, 1)
    # 2. linear histogram + MP edge
    lc, ld, le = plotdata.linear_histogram(evals)
    if le.size:
        fig.add_trace(go.Bar(x=lc, y=ld, width=np.diff(le), name="ESD (linear bins)", marker_color="#7fa7d1",
                             marker_line_width=0, showlegend=False,
                             hovertemplate=f"{name}<br>λ ≈ %{{x:.4g}}<br>density %{{y:.3g}}<extra></extra>"), 1, 2)
    edge = float(row.get("mp_edge", np.nan))
    if np.isfinite(edge):
        fig.add_vline(x=edge, line=dict(color="#2ca02c", width=2), row=1, col=2)
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=dict(color="#2ca02c", width=2),
                                 name=f"MP bulk edge λ₊ = {edge:.4g}"), 1, 2)
    # 3. singular values (downsampled for display)
    rank, sv = plotdata.singular_values(evals)
    fig.add_trace(_scatter(rank.size)(x=rank, y=sv, mode="lines+markers" if rank.size <= 200 else "lines",
                                      name="σ of W", line=dict(color="#9467bd"), marker=dict(size=4),
                                      showlegend=False,
                                      hovertemplate=f"{name}<br>rank %{{x}}<br>σ = %{{y:.4g}}<extra></extra>"), 2, 1)
    if np.isfinite(xmin) and xmin > 0:
        fig.add_hline(y=np.sqrt(xmin), line=dict(color="#d62728", width=1.5, dash="dot"), row=2, col=1)
    # 4. KS distance vs candidate xmin
    ks = plotdata.ks_curve(fit.candidates, fit.alphas, fit.Ds)
    if len(ks):
        fig.add_trace(_scatter(len(ks))(x=ks["xmin"], y=ks["D"], mode="lines+markers" if len(ks) <= 200 else "lines",
                                        line=dict(color="#ff7f0e"), marker=dict(size=4), name="KS distance D",
                                        customdata=ks["alpha"], showlegend=False,
                                        hovertemplate="xmin %{x:.4g}<br>D = %{y:.4f}<br>α = %{customdata:.3f}"
                                                      "<extra></extra>"), 2, 2)
        best = ks.loc[ks["D"].idxmin()]
        fig.add_trace(go.Scatter(x=[best["xmin"]], y=[best["D"]], mode="markers", name="chosen xmin (min D)",
                                 marker=dict(symbol="star", size=15, color="#d62728", line=dict(width=1, color="#000")),
                                 hovertemplate="chosen xmin %{x:.4g}<br>D = %{y:.4f}<extra></extra>"), 2, 2)
    fig.update_xaxes(type="log", title_text=EIG_AXIS, exponentformat="power", row=1, col=1)
    fig.update_yaxes(type="log", title_text="density (per unit λ)", exponentformat="power",
                     dtick=_log_dtick(dens), row=1, col=1)
    fig.update_xaxes(title_text=EIG_AXIS, row=1, col=2)
    fig.update_yaxes(title_text="density (per unit λ)", row=1, col=2)
    fig.update_xaxes(title_text="rank i (1 = largest)", row=2, col=1)
    fig.update_yaxes(type="log", title_text="singular value σ of W", exponentformat="power",
                     dtick=_log_dtick(sv), row=2, col=1)
    fig.update_xaxes(type="log", title_text="candidate xmin (λ of WᵀW)", exponentformat="power", row=2, col=2)
    fig.update_yaxes(title_text="KS distance D (0–1)", row=2, col=2)
    fig.update_annotations(font_size=13)
    return _layout(fig, height, legend=dict(orientation="h", x=0.0, y=-0.1, yanchor="top"),
                   margin=dict(l=70, r=30, t=40, b=90))


def compare_layers_figure(df: pd.DataFrame, label: str, name_a: str, name_b: str, height: int = 560,
                          bands: bool | None = None) -> go.Figure:
    """Top: a layer metric for model A and B. Bottom: Δ = B − A per layer (bars, red = B higher).

    The α < 2 / α > 6 bands are drawn for weightwatcher's α only (bands=None: when `label` is its score's label).
    """
    if bands is None:
        bands = label == LAYER_SCORES["alpha"][0]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.62, 0.38], vertical_spacing=0.08)
    for col, nm, colour, dash in (("a", name_a, "#1f77b4", "solid"), ("b", name_b, "#d62728", "dash")):
        fig.add_trace(go.Scatter(x=df["layer"], y=df[col], mode="lines+markers", name=nm,
                                 line=dict(color=colour, dash=dash, width=2.5), marker=dict(size=8),
                                 customdata=df["layer"],
                                 hovertemplate=f"{nm}<br>layer %{{x}}<br>{label} = %{{y:.3f}}<extra></extra>"), 1, 1)
    colours = np.where(df["delta"].fillna(0) >= 0, "#d62728", "#1f77b4")
    fig.add_trace(go.Bar(x=df["layer"], y=df["delta"], marker_color=colours, name="Δ = B − A",
                         hovertemplate="layer %{x}<br>Δ = %{y:+.3f}<extra></extra>"), 2, 1)
    y_range = _alpha_range(np.concatenate([df["a"].to_numpy(float), df["b"].to_numpy(float)]))
    if bands:
        add_alpha_bands(fig, y_range, row=1, col=1)
    fig.update_yaxes(title_text=ALPHA_AXIS, range=y_range, row=1, col=1)
    fig.update_yaxes(title_text="Δα (B − A)", zeroline=True, zerolinecolor="#888", row=2, col=1)
    fig.update_xaxes(title_text=LAYER_AXIS, dtick=1 if len(df) <= 40 else None, row=2, col=1)
    return _layout(fig, height, title=dict(text=f"{label}: A vs B per layer"),
                   legend=dict(orientation="h", x=0.0, y=1.02, yanchor="bottom", xanchor="left"),
                   margin=dict(l=70, r=30, t=90, b=60))


def module_delta_figure(df: pd.DataFrame, label: str, height: int = 340) -> go.Figure:
    """Mean Δ = B − A per matrix kind, averaged over layers."""
    colours = np.where(df["delta"].fillna(0) >= 0, "#d62728", "#1f77b4")
    fig = go.Figure(go.Bar(x=df["module"], y=df["delta"], marker_color=colours, customdata=df["matrices"],
                           hovertemplate="%{x}<br>mean Δ = %{y:+.3f}<br>over %{customdata} matrices<extra></extra>"))
    fig.update_xaxes(title_text=MODULE_AXIS)
    fig.update_yaxes(title_text=f"mean Δ {label} (B − A)", zeroline=True, zerolinecolor="#888")
    return _layout(fig, height, title=dict(text="mean Δ per matrix kind"))
