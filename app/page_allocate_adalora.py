"""Allocate page section: a finished AdaLoRA run's learned ranks per layer beside the α-driven allocation."""
from __future__ import annotations

import streamlit as st

from analysis.types import SpectrascopeError
from app.charts_allocate import learned_vs_predicted_figure
from training.adalora import compare

HOW_TO = ("No finished AdaLoRA run yet. Train one from the shell — `python -m training submit --method adalora "
          "--max-steps 200 --wait` (add `--set target_r=4` or `--set tinit=10` to change its budget or schedule) — "
          "or on the **Train** page (method *AdaLoRA*). Its learned ranks then appear here beside the α-driven "
          "allocation of the same budget.")


def _label(run) -> str:
    return run.label


def section(beta: float) -> None:
    """Pick a finished AdaLoRA run; chart, table, Spearman ρ and what the comparison does not show."""
    st.subheader("AdaLoRA: learned vs α-predicted ranks per layer")
    runs = compare.adalora_runs()
    if not runs:
        st.info(HOW_TO, icon=":material/info:")
        return
    runs = list(reversed(runs))                       # newest first
    run = st.selectbox("Finished AdaLoRA run", runs, format_func=_label, key="alloc_adalora_run",
                       help="Its learned ranks (result.json) against allocate_ranks on its base model's α")
    try:
        with st.spinner("Measuring the base model's layer α…"):
            cmp = compare.learned_vs_predicted(run.folder, beta=beta)
    except SpectrascopeError as err:
        st.error(str(err), icon=":material/error:")
        return
    c1, c2, c3 = st.columns(3)
    c1.metric("Spearman ρ (learned vs predicted)", "—" if cmp.spearman is None else f"{cmp.spearman:+.2f}",
              help=f"rank correlation over {len(cmp.rows)} layers; 1 = the same order, −1 = reversed")
    c2.metric("Σ rank (both)", f"{cmp.total}",
              help="AdaLoRA's final ranks summed; the α-driven allocation gets exactly this budget")
    c3.metric("AdaLoRA budget", "—" if cmp.target is None else f"{cmp.total} / {cmp.target}",
              help=f"final Σ rank / target_r × {cmp.matrices} adapted matrices")
    st.plotly_chart(learned_vs_predicted_figure(cmp), key="alloc_adalora_chart", width="stretch")
    st.dataframe(cmp.frame(), hide_index=True, width="stretch", column_config={
        "alpha_score": st.column_config.NumberColumn("α score", format="%.3f"),
        "learned": st.column_config.NumberColumn("learned rank", format="%d"),
        "predicted": st.column_config.NumberColumn("predicted rank", format="%d"),
        "difference": st.column_config.NumberColumn("learned − predicted", format="%+d")})
    source = {"given": "given scores", compare.ALL_BLOCK: "all block matrices"}.get(
        cmp.score_source, f"the {cmp.matrices} matrices the run adapted")
    st.caption(
        f"**What it shows:** the rank AdaLoRA kept in each layer at the end of **{cmp.run}** (its importance "
        "scores — sensitivity × uncertainty of each singular triplet — pruned it), beside the ranks the α-driven "
        f"rule (`allocate_ranks`, share ∝ α^β, β = {cmp.beta:g} from the slider above, minimum 0) gives the same "
        f"total Σ = {cmp.total} on the base model **{cmp.model}**, with each layer's α the mean PL_Alpha_Hill of "
        f"{source}. **What it does not show:** one run with one seed — AdaLoRA's ranks move with the seed, the "
        "learning rate, the schedule (tinit / tfinal) and the steps, and a short run prunes on noisy early "
        "importance scores; ρ over a handful of layers takes few values and carries no interval; agreement says "
        "nothing about which allocation trains better (compare test metrics on Compare runs).")
    for note in cmp.notes:
        st.caption(note)
