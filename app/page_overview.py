"""Overview page: model facts, α per layer with the over/under-trained bands, a layer × module heatmap, the metrics table."""
from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from analysis import esd, plotdata
from app import charts, common

common.register_view_keys("metric")            # this page's own URL settings (besides the shared ones)

TABLE_COLUMNS = ["name", "layer", "module", "rows", "cols", "verdict", "alpha", "alpha_se", "alpha_hill",
                 "alpha_hill_se", "alpha_hill_verdict", "xmin", "D", "num_pl_spikes", "alpha_weighted", "stable_rank",
                 "log_spectral_norm", "log_norm", "entropy", "matrix_rank", "num_spikes", "verdict_reason",
                 "alpha_hill_reason", "status", "notes"]
CHART_KEY = "overview_layer_chart"


def facts(result) -> None:
    """Headline numbers and what was skipped."""
    analysed = int((result.matrices["status"] == "ok").sum()) if "status" in result.matrices else len(result.matrices)
    cols = st.columns(5)
    cols[0].metric("Parameters", common.human_count(result.num_parameters))
    cols[1].metric("Transformer layers", len(common.block_layers(result)))
    cols[2].metric("Matrices analysed", analysed, help="2-D weight matrices with a power-law fit")
    cols[3].metric("Matrices skipped", len(result.skipped), help="listed below, with the reason")
    wait = result.open_s + result.elapsed_s
    took = (f"the first analysis took {wait:.1f} s: opening {result.open_s:.1f} s (downloading, converting a GGUF "
            f"file once, reading the headers) and analysing {result.elapsed_s:.1f} s")
    cols[4].metric("Analysis time", "cached" if result.from_cache else f"{wait:.1f} s",
                   help=f"{took}; results are cached on disk")
    if result.skipped:
        n = len(result.skipped)
        with st.expander(f"{n} {'matrix' if n == 1 else 'matrices'} not analysed, and why"):
            st.dataframe(pd.DataFrame(result.skipped, columns=["matrix", "reason"]), hide_index=True,
                         width="stretch")


def figures(result, score: str, metric: str, selected: int | None):
    """The overview's figures (also timed by benchmarks/overview_render.py)."""
    layer_fig = charts.layer_alpha_figure(result.layers, result.matrices, score, selected=selected)
    values, _ = plotdata.layer_module_grid(result.matrices, metric)
    names = plotdata.layer_module_hover(result.matrices, metric, values)
    heat = charts.heatmap_figure(values, names, f"{charts.METRICS[metric]} by layer and matrix kind",
                                 charts.METRICS[metric].split(" (")[0])
    return layer_fig, heat, values


def table(result) -> pd.DataFrame:
    cols = [c for c in TABLE_COLUMNS if c in result.matrices]
    return result.matrices[cols]


def downloads(result, df: pd.DataFrame) -> tuple[bytes, bytes]:
    """(CSV, JSON) bytes of the metrics table; JSON carries the model label and its caveats."""
    csv = df.to_csv(index=False).encode()
    rows = json.loads(df.to_json(orient="records"))
    js = json.dumps({"model": result.model, "flags": list(result.flags), "rows": rows}, indent=1).encode()
    return csv, js


def _file_stem(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[-60:] or "model"


def main() -> None:
    st.title("Layer quality overview")
    result = common.current_analysis()
    if result is None:
        return
    st.caption(f"**{result.model}** · α from the eigenvalues λ of WᵀW of each weight matrix (heavy-tailed "
               "self-regularisation): lower α = more heavy-tailed = more strongly trained.")
    common.show_flags(result)
    facts(result)

    if not common.block_layers(result):
        st.info("No transformer blocks were recognised in this model, so there is no per-layer view; "
                "the per-matrix table is below.")
        score = metric = None
    else:
        c1, c2 = st.columns([3, 2])
        score = common.bound_selectbox("Per-layer score", list(charts.LAYER_SCORES), "score",
                                       default=charts.DEFAULT_SCORE, where=c1,
                                       format_func=lambda k: charts.LAYER_SCORES[k][0])
        metric = common.bound_selectbox("Heatmap metric", list(charts.METRICS), "metric",
                                        default=charts.DEFAULT_METRIC, where=c2,
                                        format_func=lambda k: charts.METRICS[k])
        st.caption(charts.ESTIMATORS_NOTE)
        layer_fig, heat, _ = figures(result, score, metric, None)
        st.plotly_chart(layer_fig, key=CHART_KEY, on_select=lambda: common.layer_from_selection(CHART_KEY),
                        selection_mode="points", width="stretch")
        st.caption("Click a point to open that layer's spectra. Points are single matrices (hover for names, "
                   "α ± standard error and verdict; hollow = unreliable fit); the line is the per-layer score.")
        if st.session_state.pop("_layer_clicked", False):
            st.switch_page("page_layer.py")
        st.plotly_chart(heat, key="overview_heatmap", width="stretch")

    st.subheader("All matrices")
    st.caption(f"**verdict** reads weightwatcher α: over-trained (α < {esd.OVER_TRAINED:g}), typical, under-trained "
               f"(α > {esd.UNDER_TRAINED:g}), or **unreliable fit** when the KS distance D > {esd.KS_D_MAX:g}, "
               f"α > {esd.ALPHA_SPURIOUS:g}, the tail has fewer than {esd.MIN_TAIL} eigenvalues, or the matrix is "
               "rank-deficient; **Hill verdict** applies the same reliability tests to PL_Alpha_Hill. "
               "± is the standard error (α − 1)/√n of a tail of n eigenvalues.")
    df = table(result)
    st.dataframe(df, hide_index=True, width="stretch", height=420, column_config={
        "verdict": st.column_config.TextColumn("verdict", help="weightwatcher α's reading (see above)"),
        "alpha": st.column_config.NumberColumn("α (ww)", format="%.3f"),
        "alpha_se": st.column_config.NumberColumn("± SE (ww)", format="%.3f"),
        "alpha_hill": st.column_config.NumberColumn("α (Hill)", format="%.3f"),
        "alpha_hill_se": st.column_config.NumberColumn("± SE (Hill)", format="%.3f"),
        "alpha_hill_verdict": st.column_config.TextColumn("Hill verdict"),
        "verdict_reason": st.column_config.TextColumn("why unreliable (ww)"),
        "alpha_hill_reason": st.column_config.TextColumn("why unreliable (Hill)"),
        "xmin": st.column_config.NumberColumn("xmin", format="%.4g"),
        "D": st.column_config.NumberColumn("KS D", format="%.4f"),
        "alpha_weighted": st.column_config.NumberColumn("α̂", format="%.3f"),
        "stable_rank": st.column_config.NumberColumn("stable rank", format="%.2f"),
        "log_spectral_norm": st.column_config.NumberColumn("log10 λmax", format="%.3f"),
        "log_norm": st.column_config.NumberColumn("log10 ‖W‖²F", format="%.3f"),
        "entropy": st.column_config.NumberColumn("entropy", format="%.3f"),
    })
    csv, js = downloads(result, df)
    stem = _file_stem(result.model)
    c1, c2, _ = st.columns([1, 1, 4])
    c1.download_button("Download CSV", csv, f"{stem}-spectra.csv", "text/csv", icon=":material/download:")
    c2.download_button("Download JSON", js, f"{stem}-spectra.json", "application/json", icon=":material/download:")


if __name__ == "__main__":       # Streamlit runs a page file as __main__; importing it (benchmarks) does not
    main()
