"""Compare two models page: α per layer for A and B, Δα per layer and per matrix kind, and a layer × module Δ heatmap."""
from __future__ import annotations

import streamlit as st

from analysis import plotdata
from app import charts, common

common.register_view_keys("model_b", "adapter_b")            # this page's own URL settings (besides the shared ones)


def pick_b() -> common.ModelChoice:
    """Model B: any checkpoint, or the same base with an adapter (bound to ?model_b= / ?adapter_b=)."""
    model, adapter = common.model_inputs("_b", title="Model B")
    return common.ModelChoice(model, adapter, common.view("device", "auto"))


def delta_heatmap(compared):
    """The layer × module grid of Δ (plotdata.layer_module_grid), each cell named "A matrix ↔ B matrix"."""
    named = compared.assign(name=compared["name_a"].astype(str) + " ↔ " + compared["name_b"].astype(str))
    return plotdata.layer_module_grid(named, "delta")


def main() -> None:
    st.title("Compare two models")
    st.caption("Model A is the sidebar's model. B can be any other checkpoint, or the same base with a PEFT "
               "adapter, to see where fine-tuning moved the spectra. Δ = B − A.")
    a_choice = common.current_choice()
    left, right = st.columns(2)
    with left:
        st.markdown("**Model A** (sidebar)")
        st.code(a_choice.label, language=None)
    with right:
        b_choice = pick_b()
    score = common.bound_selectbox("α estimator", list(charts.LAYER_SCORES), "score", default="alphalora_score",
                                   format_func=lambda k: charts.LAYER_SCORES[k][0])
    label, per_matrix = charts.LAYER_SCORES[score]

    result_a = common.analysis_for(a_choice)
    if result_a is None:
        return
    result_b = common.analysis_for(b_choice)
    if result_b is None:
        return
    if a_choice.key == b_choice.key:
        st.info("A and B are the same model, so every Δ is 0. Pick another model for B above, or the same "
                "model with an adapter folder.", icon=":material/info:")
    for who, res in (("A", result_a), ("B", result_b)):
        for flag in res.flags:
            st.warning(f"{who}: {flag}", icon=":material/warning:")
    name_a, name_b = f"A: {_short(result_a.model)}", f"B: {_short(result_b.model)}"

    per_layer = plotdata.compare_layers(result_a.layers, result_b.layers, score)
    if per_layer.empty:
        st.info("Neither model has recognised transformer blocks, so there is nothing to compare per layer.")
        return
    if len(result_a.layers) != len(result_b.layers):
        st.warning(f"The models have different depths ({len(result_a.layers)} vs {len(result_b.layers)} layers); "
                   "layers are matched by index and Δ is shown where both have the layer.")
    st.plotly_chart(charts.compare_layers_figure(per_layer, label, name_a, name_b), key="compare_layers",
                    width="stretch")

    compared = plotdata.compare_matrices(result_a.matrices, result_b.matrices, per_matrix)
    if compared.empty:
        st.info("No matrices of the same kind in the same layer, so there is no per-matrix Δ.")
    else:
        c1, c2 = st.columns([2, 3])
        with c1:
            st.plotly_chart(charts.module_delta_figure(plotdata.module_deltas(compared), "α"),
                            key="compare_modules", width="stretch")
        with c2:
            values, names = delta_heatmap(compared)
            st.plotly_chart(charts.heatmap_figure(values, names, "Δα = B − A by layer and matrix kind", "Δα",
                                                  diverging=True), key="compare_heatmap", width="stretch")
        st.markdown("**Largest changes**")
        top = compared.reindex(compared["delta"].abs().sort_values(ascending=False).index).head(20)
        st.dataframe(top.rename(columns={"a": "α A", "b": "α B", "delta": "Δα"}), hide_index=True, width="stretch",
                     column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("α A", "α B", "Δα")})

    st.subheader("Intruder dimensions")
    st.page_link("page_compare_spectra.py", label="Open the spectral comparison (intruder dimensions)",
                 icon=":material/difference:")


def _short(label: str, n: int = 48) -> str:
    return label if len(label) <= n else "…" + label[-(n - 1):]


if __name__ == "__main__":       # Streamlit runs a page file as __main__; importing it (benchmarks) does not
    main()
