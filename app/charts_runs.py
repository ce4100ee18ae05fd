"""Figures of runs and studies: a run's loss and validation curves (Train), a study's bars, Pareto and losses
(Compare runs)."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from training import study as studies

COLOURS = {"LoRA": "#1f77b4", "LoRA (params-matched)": "#aec7e8", "MoE-LoRA uniform": "#ff7f0e",
           "MoE-LoRA MoLA": "#2ca02c", "MoE-LoRA AlphaLoRA": "#d62728", "Full fine-tune": "#9467bd",
           "MoE-LoRA": "#8c564b",
           "Base: linear probe": "#7f7f7f", "Base: untrained head": "#bcbd22", "Base: zero-shot": "#7f7f7f"}
LEGEND = dict(orientation="h", y=-0.3, x=0, xanchor="left", yanchor="top")     # below: clear of the modebar


# ---------------------------------------------------------------- one run (Train page)

def _run_layout(fig: go.Figure, title: str, y_title: str, lines: list[dict]) -> go.Figure:
    total = next((ln.get("total_steps") for ln in reversed(lines) if ln.get("total_steps")), None)
    fig.update_layout(title=title, height=360, margin=dict(l=50, r=20, t=45, b=80), xaxis_title="step",
                      yaxis_title=y_title, legend=LEGEND, xaxis_range=[0, total * 1.02] if total else None)
    return fig


def run_loss_figure(lines: list[dict]) -> go.Figure:
    """Training loss per step (raw and a moving average) and the validation loss at validation steps."""
    steps = [ln for ln in lines if "loss" in ln and "step" in ln]
    x, y = [ln["step"] for ln in steps], [ln["loss"] for ln in steps]
    fig = go.Figure()
    fig.add_scatter(x=x, y=y, mode="lines", name="training loss", line=dict(color="#9ecae1", width=1))
    if len(y) >= 5:
        smooth = pd.Series(y).rolling(min(20, max(3, len(y) // 10)), min_periods=1).mean()
        fig.add_scatter(x=x, y=smooth, mode="lines", name="moving average", line=dict(color="#1f77b4", width=2.5))
    evals = [ln for ln in lines if isinstance(ln.get("eval"), dict) and "loss" in ln["eval"]]
    if evals:
        fig.add_scatter(x=[ln["step"] for ln in evals], y=[ln["eval"]["loss"] for ln in evals], mode="lines+markers",
                        name="validation loss", line=dict(color="#d62728", width=2), marker=dict(size=8))
    return _run_layout(fig, "Loss", "loss", lines)


def run_eval_figure(lines: list[dict]) -> go.Figure | None:
    """Validation metrics (accuracy, macro F1, MCC; perplexity for LM tasks) per validation pass, or None."""
    evals = [ln for ln in lines if isinstance(ln.get("eval"), dict)]
    found = list(evals[0]["eval"]) if evals else []
    metrics = [m for m in found if m not in ("loss", "perplexity")] or [m for m in found if m == "perplexity"]
    if not metrics:
        return None
    fig = go.Figure()
    for metric in metrics:
        fig.add_scatter(x=[ln["step"] for ln in evals], y=[ln["eval"].get(metric) for ln in evals],
                        mode="lines+markers", name=metric, marker=dict(size=8))
    return _run_layout(fig, "Validation metrics", "score" if metrics != ["perplexity"] else "perplexity", lines)


# ---------------------------------------------------------------- a study (Compare runs page)

def _colour(method: str) -> str:
    return COLOURS.get(method, "#17becf")


def error_bars(rows: pd.DataFrame, col: str) -> tuple[list, list]:
    """(above, below) error-bar lengths: the Student-t CI over seeds with n ≥ 2, the Wilson interval of base
    rows, and None (no bar, no cap) for a single seed or a missing interval."""
    above, below = [], []
    for _, r in rows.iterrows():
        lo, hi = r.get(f"ci_lo {col}", float("nan")), r.get(f"ci_hi {col}", float("nan"))
        if r.get("runs") == "base" and not (pd.isna(lo) or pd.isna(hi)):
            above.append(float(hi - r[col]))
            below.append(float(r[col] - lo))
        elif r.get(f"{col} n", 0) >= 2 and not pd.isna(r.get(f"{col} ci", float("nan"))):
            above.append(float(r[f"{col} ci"]))
            below.append(float(r[f"{col} ci"]))
        else:
            above.append(None)
            below.append(None)
    return above, below


def _seeds_text(r, col: str) -> str:
    if r.get("runs") == "base":
        return "base model (Wilson interval over the rows)"
    n = int(r[f"{col} n"])
    return "n = 1 seed (no interval)" if n == 1 else f"n = {n} seeds"


def bars_figure(table: pd.DataFrame, split: str, metric: str) -> go.Figure:
    """Mean per method, one group of bars per task; error bars: 95 % CI over seeds where n ≥ 2, the Wilson
    interval over the rows for the base model, none for a single seed."""
    col = f"{split} {metric}"
    fig = go.Figure()
    data = table.dropna(subset=[col])
    for task, part in data.groupby("task", sort=False):
        above, below = error_bars(part, col)
        fig.add_bar(x=part["method"], y=part[col], name=task, text=[f"{v:.3f}" for v in part[col]],
                    textposition="inside", insidetextanchor="start",
                    marker_color=[_colour(m) for m in part["method"]] if data["task"].nunique() == 1 else None,
                    error_y=dict(type="data", symmetric=False, array=above, arrayminus=below, visible=True,
                                 thickness=1.5),
                    customdata=[[r["allocation"], _seeds_text(r, col)] for _, r in part.iterrows()],
                    hovertemplate="%{x}<br>%{customdata[0]}<br>" + col + " %{y:.4f}<br>%{customdata[1]}"
                                  "<extra>%{fullData.name}</extra>")
    fig.update_layout(title=f"{col} by method (mean ± 95 % CI; none at n = 1)",
                      barmode="group", height=420,
                      yaxis_title=metric, xaxis_title=None, showlegend=data["task"].nunique() > 1,
                      margin=dict(l=60, r=20, t=50, b=90))
    return fig


def pareto_figure(table: pd.DataFrame, split: str, metric: str) -> go.Figure:
    """Metric vs trainable parameters (log axis), one marker per method, the Pareto front, base rows as lines."""
    col = f"{split} {metric}"
    higher = metric not in ("loss", "perplexity")
    trained = table[(table["trainable_params"] > 0)].dropna(subset=[col, "trainable_params"])
    trained = trained.assign(x=studies.dodge(trained["trainable_params"]))       # equal budgets side by side
    fig = go.Figure()
    for _, row in trained.iterrows():
        fig.add_scatter(x=[row["x"]], y=[row[col]], mode="markers", name=row["method"],
                        marker=dict(size=13, color=_colour(row["method"]), line=dict(width=1, color="white")),
                        error_y=dict(type="data", array=[row[f"{col} ci"] if row[f"{col} n"] >= 2
                                                         and not pd.isna(row[f"{col} ci"]) else None]),
                        hovertemplate=f"{row['method']} ({row['task']})<br>{row['allocation']}<br>"
                                      f"{row['trainable_params']:,.0f} trainable parameters<br>" + col +
                                      " %{y:.4f}<extra></extra>")
    front = studies.pareto_front(trained, "trainable_params", col, higher)
    if len(front) > 1:
        fig.add_scatter(x=front["trainable_params"], y=front[col], mode="lines", name="Pareto front",
                        line=dict(color="black", dash="dash", width=1.5, shape="hv" if higher else "linear"),
                        hoverinfo="skip")
    for _, row in table[table["trainable_params"].fillna(0) == 0].dropna(subset=[col]).iterrows():
        fig.add_hline(y=row[col], line=dict(color=_colour(row["method"]), dash="dot", width=1.5),
                      annotation_text=f"{row['method']} {row[col]:.3f}", annotation_position="top left",
                      annotation_font_size=11)
    fig.update_layout(title=f"{col} vs trainable parameters (Pareto front dashed)", height=420,
                      xaxis=dict(type="log", title="trainable parameters (log scale)"), yaxis_title=metric,
                      legend=dict(orientation="h", y=-0.22), margin=dict(l=60, r=20, t=50, b=90))
    return fig


def study_loss_figure(curves: pd.DataFrame) -> go.Figure:
    """Training loss per step of every run, one colour per method (seeds share it)."""
    fig = go.Figure()
    shown = set()
    for (run_id, method), part in curves.groupby(["run_id", "method"], sort=False):
        fig.add_scatter(x=part["step"], y=part["loss"], mode="lines+markers" if len(part) < 3 else "lines",
                        name=method, legendgroup=method, showlegend=method not in shown,
                        line=dict(color=_colour(method), width=1.5),
                        hovertemplate=f"{part['name'].iloc[0]} (seed {part['seed'].iloc[0]})<br>step %{{x}}"
                                      "<br>loss %{y:.4f}<extra></extra>")
        shown.add(method)
    fig.update_layout(title="Training loss per step (one line per run, seeds overlaid)", height=380,
                      xaxis_title="optimizer step", yaxis_title="training loss (cross-entropy, nats)",
                      margin=dict(l=60, r=20, t=50, b=50))
    return fig
