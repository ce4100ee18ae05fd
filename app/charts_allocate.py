"""Plotly figures of the Allocate page: experts per layer with α, the three strategies, AdaLoRA's learned ranks."""
from __future__ import annotations

import plotly.graph_objects as go

from app.charts import LAYER_AXIS

COLOURS = {"AlphaLoRA": "#1f77b4", "uniform": "#7f7f7f", "MoLA": "#ff7f0e", "α": "#d62728",
           "learned": "#2ca02c", "predicted": "#1f77b4"}
ALPHA_AXIS = "layer score α (mean PL_Alpha_Hill)"
_FONT = dict(size=13)
_LEGEND = dict(orientation="h", x=1, xanchor="right", y=1.02, yanchor="bottom")


def _layer_axis(n_layers: int) -> dict:
    return dict(title=dict(text=LAYER_AXIS), dtick=1 if n_layers <= 40 else None)


def _alpha_trace(layers: list[int], scores: list[float]) -> go.Scatter:
    return go.Scatter(x=layers, y=scores, name="layer score α", mode="lines+markers", yaxis="y2",
                      line=dict(color=COLOURS["α"], width=2), marker=dict(size=6),
                      hovertemplate="layer %{x}: α = %{y:.3f}<extra></extra>")


def _alpha_axis() -> dict:
    return dict(title=dict(text=ALPHA_AXIS), overlaying="y", side="right", showgrid=False, tickmode="auto",
                nticks=6, tickformat=".2f")


def allocation_figure(experts: list[int], scores: list[float] | None, title: str, height: int = 380) -> go.Figure:
    """Experts per layer (bars) with the AlphaLoRA layer score α on a second y axis (built without make_subplots,
    which alone costs ~20 ms per rerun)."""
    layers = list(range(len(experts)))
    data = [go.Bar(x=layers, y=experts, name="experts", marker_color=COLOURS["AlphaLoRA"], opacity=0.75,
                   customdata=layers, hovertemplate="layer %{x}: %{y} experts<extra></extra>")]
    if scores is not None:
        data.append(_alpha_trace(layers, scores))
    layout = dict(
        title=dict(text=title, x=0, xanchor="left"), height=height, hovermode="x unified", bargap=0.15,
        margin=dict(l=70, r=70, t=60, b=60), font=_FONT, legend=_LEGEND, xaxis=_layer_axis(len(layers)),
        yaxis=dict(title=dict(text="experts in the layer"), rangemode="tozero"), yaxis2=_alpha_axis())
    return go.Figure(data=data, layout=layout)


def comparison_figure(rows: list[dict], height: int = 380) -> go.Figure:
    """Grouped bars: experts per layer of each compared strategy (rows of allocation_plan.comparison; the ones
    that failed are left out)."""
    fig = go.Figure()
    for r in rows:
        if "error" in r:
            continue
        layers = list(range(len(r["experts"])))
        fig.add_trace(go.Bar(x=layers, y=r["experts"], name=f"{r['strategy']} · Σ {sum(r['experts'])}",
                             marker_color=COLOURS[r["name"]], customdata=layers,
                             hovertemplate=f"layer %{{x}}: %{{y}} experts ({r['strategy']})<extra></extra>"))
    n = max((len(r["experts"]) for r in rows if "experts" in r), default=0)
    fig.update_layout(barmode="group", height=height, title=dict(text="Experts per layer by strategy", x=0),
                      xaxis=_layer_axis(n), yaxis=dict(title="experts in the layer", rangemode="tozero"),
                      hovermode="x unified", margin=dict(l=70, r=30, t=60, b=60), font=_FONT, legend=_LEGEND)
    return fig


def learned_vs_predicted_figure(cmp, height: int = 380) -> go.Figure:
    """Grouped bars per layer, AdaLoRA's learned rank and the α-predicted one (a training.adalora.compare
    LearnedVsPredicted), with the layer α score on a second axis."""
    layers = [r["layer"] for r in cmp.rows]
    data = [go.Bar(x=layers, y=[r["learned"] for r in cmp.rows], name=f"learned (AdaLoRA) · Σ {cmp.total}",
                   marker_color=COLOURS["learned"], hovertemplate="layer %{x}: learned rank %{y}<extra></extra>"),
            go.Bar(x=layers, y=[r["predicted"] for r in cmp.rows], name=f"predicted (α, β = {cmp.beta:g}) · "
                   f"Σ {cmp.total}", marker_color=COLOURS["predicted"],
                   hovertemplate="layer %{x}: α-predicted rank %{y}<extra></extra>"),
            _alpha_trace(layers, [r["alpha_score"] for r in cmp.rows])]
    layout = dict(
        barmode="group", height=height, hovermode="x unified", bargap=0.2, font=_FONT,
        title=dict(text=f"Learned vs predicted rank per layer — {cmp.run}", x=0, xanchor="left"),
        margin=dict(l=70, r=70, t=60, b=60), legend=_LEGEND, xaxis=_layer_axis(len(layers)),
        yaxis=dict(title=dict(text="Σ rank over the layer's adapted matrices"), rangemode="tozero"),
        yaxis2=_alpha_axis())
    return go.Figure(data=data, layout=layout)
