"""Layer detail page: pick a layer (chart click or selectbox) and see each matrix's ESD, power-law fit, MP edge, σ and KS curve."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st

from analysis import esd
from app import charts, common

common.register_view_keys("matrix", "fit")            # this page's own URL settings (besides the shared ones)

CHART_KEY = "layer_page_chart"
NOT_IN_BLOCK = "not in a block (embeddings, head, …)"
ALL = "all"
FITS = {"ww": "weightwatcher α (default)", "hill": "PL_Alpha_Hill α (AlphaLoRA, xmin_peak)"}
DETAIL_COLUMNS = ["name", "module", "rows", "cols", "verdict", "alpha", "alpha_se", "alpha_hill", "alpha_hill_se",
                  "alpha_hill_verdict", "xmin", "D", "num_pl_spikes", "mp_edge", "num_spikes", "matrix_rank",
                  "stable_rank", "log_spectral_norm", "verdict_reason", "alpha_hill_reason", "status"]
VERDICT_OF = {"ww": ("verdict", "verdict_reason"), "hill": ("alpha_hill_verdict", "alpha_hill_reason")}


@st.cache_data(show_spinner="Fitting the power law…", max_entries=256)
def power_law_fit(identity: str, name: str, estimator: str, _evals: np.ndarray):
    """The chosen estimator's full fit (all candidates and their KS distances) for one matrix, memoised."""
    if estimator == "hill":
        return esd.alpha_hill(_evals, "peak")
    return esd.alpha_ww(_evals)


def layer_choice(result) -> int | str | None:
    """Layer selectbox (bound to the selection the chart click also sets); returns a layer or NOT_IN_BLOCK."""
    layers = common.block_layers(result)
    loose = result.matrices["layer"].isna().any()
    options: list = list(layers) + ([NOT_IN_BLOCK] if loose else [])
    if not options:
        return None
    if layers and common.view("layer") != NOT_IN_BLOCK:
        common.selected_layer(result)              # normalise ?layer= (e.g. out of range) to a real layer
    return common.bound_selectbox("Layer", options, "layer", default=options[0],
                                  format_func=lambda v: v if isinstance(v, str) else f"layer {v}")


def matrices_of(result, layer) -> pd.DataFrame:
    m = result.matrices
    if layer == NOT_IN_BLOCK:
        return m[m["layer"].isna()]
    return m[m["layer"] == layer]


def matrix_view(result, row: pd.Series, estimator: str, identity: str) -> None:
    """Header facts and the four-panel figure for one matrix."""
    name = str(row["name"])
    st.markdown(f"##### {row['module']} · `{name}` · {int(row['rows'])} × {int(row['cols'])} (out × in)")
    evals = result.evals.get(name)
    if evals is None or len(evals) == 0:
        st.info(f"No spectrum for this matrix: {row.get('status') or 'not analysed'}.")
        return
    status = row.get("status")
    if isinstance(status, str) and status != "ok":             # e.g. too few eigenvalues: the engine did not fit
        st.info(f"No power-law fit: {status}. The spectrum is still shown.", icon=":material/info:")
        fit = esd.PowerLawFit.failed(status)
    else:
        fit = power_law_fit(identity, name, estimator, evals)
    c = st.columns(5)
    se = esd.standard_error(fit.alpha, fit.num_pl_spikes)
    c[0].metric("α (this fit) ± SE", "—" if not np.isfinite(fit.alpha) else f"{fit.alpha:.3f} ± {se:.3f}",
                help="SE = (α − 1)/√n, n = the tail size")
    c[1].metric("xmin", "—" if not np.isfinite(fit.xmin) else f"{fit.xmin:.4g}")
    c[2].metric("KS distance D", "—" if not np.isfinite(fit.D) else f"{fit.D:.4f}")
    c[3].metric("tail size", f"{fit.num_pl_spikes} of {len(evals)}")
    c[4].metric("spikes above MP edge", _int(row.get("num_spikes")))
    if fit.status not in ("ok", "small-sample fit") and status == "ok":
        st.warning(f"Power-law fit failed: {fit.status}")
    verdict_col, reason_col = VERDICT_OF[estimator]
    if row.get(verdict_col) == esd.UNRELIABLE:
        st.warning(f"Unreliable fit: {row.get(reason_col)}", icon=":material/warning:")
    elif isinstance(row.get(verdict_col), str) and status == "ok":
        st.caption(f"verdict: **{row.get(verdict_col)}**")
    fig = charts.matrix_figure(row, evals, fit, FITS[estimator].split(" (")[0])
    st.plotly_chart(fig, key=f"matrix_fig_{name}", width="stretch")


def _int(x) -> str:
    try:
        return str(int(x))
    except (TypeError, ValueError):
        return "—"


def main() -> None:
    st.title("Layer detail")
    result = common.current_analysis()
    if result is None:
        return
    st.caption(f"**{result.model}** · spectra of each weight matrix of one layer")
    common.show_flags(result)
    layers = common.block_layers(result)
    if layers:
        score = common.view("score", charts.DEFAULT_SCORE)
        score = score if score in charts.LAYER_SCORES else charts.DEFAULT_SCORE
        sel = common.selected_layer(result) if common.view("layer") != NOT_IN_BLOCK else None
        fig = charts.layer_alpha_figure(result.layers, result.matrices, score, selected=sel, height=400)
        st.plotly_chart(fig, key=CHART_KEY, on_select=lambda: common.layer_from_selection(CHART_KEY),
                        selection_mode="points", width="stretch")
        st.session_state.pop("_layer_clicked", None)
    c1, c2, c3 = st.columns([1, 2, 1.3])
    with c1:
        layer = layer_choice(result)
    if layer is None:
        st.info("This model has no analysed matrices.")
        return
    mats = matrices_of(result, layer)
    names = [str(n) for n in mats["name"]]
    with c2:
        picked = common.bound_selectbox("Matrix", [ALL] + names, "matrix", default=ALL,
                                         format_func=lambda n: "all matrices of this layer" if n == ALL else n)
    with c3:
        estimator = common.bound_selectbox("Power-law fit shown", list(FITS), "fit", default="ww",
                                           format_func=lambda k: FITS[k])
    cols = [c for c in DETAIL_COLUMNS if c in mats]
    st.dataframe(mats[cols], hide_index=True, width="stretch", column_config={
        "alpha": st.column_config.NumberColumn("α (ww)", format="%.3f"),
        "alpha_se": st.column_config.NumberColumn("± SE (ww)", format="%.3f"),
        "alpha_hill": st.column_config.NumberColumn("α (Hill)", format="%.3f"),
        "alpha_hill_se": st.column_config.NumberColumn("± SE (Hill)", format="%.3f"),
        "alpha_hill_verdict": st.column_config.TextColumn("Hill verdict"),
        "verdict_reason": st.column_config.TextColumn("why unreliable (ww)"),
        "alpha_hill_reason": st.column_config.TextColumn("why unreliable (Hill)"),
        "xmin": st.column_config.NumberColumn(format="%.4g"),
        "D": st.column_config.NumberColumn("KS D", format="%.4f"),
        "mp_edge": st.column_config.NumberColumn("MP edge λ₊", format="%.4g"),
        "stable_rank": st.column_config.NumberColumn("stable rank", format="%.2f"),
        "log_spectral_norm": st.column_config.NumberColumn("log10 λmax", format="%.3f"),
    })
    identity = json.dumps(result.identity, sort_keys=True, default=str)
    shown = mats if picked == ALL else mats[mats["name"] == picked]
    for _, row in shown.iterrows():
        matrix_view(result, row, estimator, identity)


if __name__ == "__main__":       # Streamlit runs a page file as __main__; importing it (benchmarks) does not
    main()
