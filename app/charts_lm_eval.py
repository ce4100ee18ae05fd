"""Figures and tables of lm-evaluation-harness results (training.lm_eval_harness.results_frame) for Compare runs."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

Z95 = 1.96
BASE_COLOUR, RUN_COLOUR = "#7f7f7f", "#1f77b4"


def labelled(frame: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    """The frame with a `label` per row (the run's name or the base id, plus the limit and shots when they are not
    every document / zero-shot, so different settings of one run never share a bar) and a `measure` (the metric,
    with lm-eval's filter when it is not 'none')."""
    def label(r) -> str:
        text = names.get(str(r.run_id), str(r.run_id))
        if r.limit_docs:
            text += f" · first {int(r.limit_docs)} docs"
        if r.num_fewshot:
            text += f" · {int(r.num_fewshot)}-shot"
        return text

    measures = [m if f == "none" else f"{m} ({f})" for m, f in zip(frame["metric"], frame["filter"])]
    return frame.assign(label=[label(r) for r in frame.itertuples()], measure=measures)


def bars(frame: pd.DataFrame, task: str, metric: str) -> go.Figure:
    """One bar per run (base models grey) of one task's measure (a `labelled` frame); error bars ±1.96 ×
    lm-eval's stderr, none where lm-eval gives no stderr (perplexities)."""
    part = frame[(frame["task"] == task) & (frame["measure"] == metric)]
    half = [None if pd.isna(s) else Z95 * float(s) for s in part["stderr"]]
    fig = go.Figure()
    fig.add_bar(x=part["label"], y=part["value"], text=[f"{v:.3f}" for v in part["value"]], textposition="inside",
                insidetextanchor="start", marker_color=[BASE_COLOUR if b else RUN_COLOUR for b in part["base"]],
                error_y=dict(type="data", array=half, visible=True, thickness=1.5),
                customdata=[[n if pd.notna(n) else "?", v] for n, v in zip(part["n_samples"], part["lm_eval_version"])],
                hovertemplate="%{x}<br>" + metric + " %{y:.4f}<br>%{customdata[0]} documents · lm-eval "
                              "%{customdata[1]}<extra></extra>")
    fig.update_layout(title=f"lm-eval {task}: {metric} (± 1.96 × lm-eval's stderr where it gives one)",
                      height=400, yaxis_title=metric, xaxis_title=None, showlegend=False,
                      margin=dict(l=60, r=20, t=50, b=90))
    return fig


def table(frame: pd.DataFrame) -> pd.DataFrame:
    """The results as shown: run, task, metric, value, 95 % interval half-width, documents, limit, shots, version."""
    out = pd.DataFrame({"run": frame["label"], "task": frame["task"], "metric": frame["metric"],
                        "filter": frame["filter"], "value": frame["value"],
                        "± 95 %": [None if pd.isna(s) else Z95 * float(s) for s in frame["stderr"]],
                        "stderr": frame["stderr"], "documents": frame["n_samples"],
                        "limit": [int(n) or None for n in frame["limit_docs"]], "shots": frame["num_fewshot"],
                        "lm-eval": frame["lm_eval_version"]})
    return out.drop(columns=["filter"]) if set(frame["filter"]) <= {"none"} else out
