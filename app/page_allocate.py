"""Allocate experts page: AlphaLoRA, uniform, MoLA or hand-edited experts per layer, parameters, ranks, export."""
from __future__ import annotations

import json
import math
from functools import partial

import pandas as pd
import streamlit as st

from analysis import allocation as al
from analysis import allocation_edits as ed
from analysis import allocation_store as store
from analysis.allocation_plan import (ModelFacts, Settings, base_allocation, comparison, comparison_records, describe,
                                      edited_allocation, model_facts, sum_problem, target)
from analysis.types import SpectrascopeError
from app import charts, common
from app.charts_allocate import allocation_figure, comparison_figure
from app.page_allocate_adalora import section as adalora_section

EDITS = "edits"                 # the hand edits, "layer:count" pairs (analysis.allocation_edits.format_edits)
VIEW_NAMES = ("strategy", "budget", "beta", "mola", "min_experts", "max_experts", EDITS)   # kept in the URL
common.register_view_keys(*VIEW_NAMES)

STRATEGIES = {"alphalora": "AlphaLoRA (α-driven)", "uniform": "Uniform", "mola": "MoLA preset",
              "manual": "Manual (edit the table)"}
CUSTOM = "custom…"
PATTERNS = ["2468", "8642", "5555", "8228", "2882", "4444", "6532", "6226", "2356", "2662", "8888"]
DEFAULT_PATTERN = "2468"
BUDGET_MAX_PER_LAYER = 16          # the budget slider goes up to 16 × layers
BETA_MAX = 5.0
EDITOR = "alloc_editor"            # the table's key: EDITOR_<generation>, a new generation only to drop its edits
EXPERTS_COL, SCORE_COL, RANK_COL = "experts", "α score", "LoRA rank"
_GENERATION = "_alloc_editor_gen"
_EDITS_OF = "_alloc_edits_of"      # the base allocation the hand edits were made on
DROPPED = "Hand edits dropped: the table now shows the new settings' allocation."


# ---------------------------------------------------------------- hand edits (session view + URL)

def editor_key() -> str:
    """The table's widget key: the same across reruns, slider moves and edits, so the browser keeps its table (a
    replaced table's first cell editor may open without focus in Streamlit's grid); a new one only to drop the
    table's own edits."""
    return f"{EDITOR}_{st.session_state.get(_GENERATION, 0)}"


def table_cells() -> dict[int, ed.Value]:
    """The experts the table's own edit state holds ({layer: value}: what was typed since it was drawn)."""
    state = st.session_state.get(editor_key()) or {}
    return ed.edited_cells(state.get("edited_rows"), EXPERTS_COL)


def drop_hand_edits() -> None:
    """Forget the hand edits. Streamlit cannot clear a table's edits in place: a table holding some is replaced."""
    common.set_view(EDITS, None)
    if table_cells():
        st.session_state[_GENERATION] = st.session_state.get(_GENERATION, 0) + 1


def hand_edits(m: ModelFacts, base: al.Allocation) -> dict[int, ed.Value]:
    """The hand edits of this base allocation: the view's (restored from the URL on a refresh) with the table's
    edits applied, written back to the view. Edits made on another base (a slider moved, another strategy or
    model) are dropped."""
    owner = json.dumps([m.label, m.n_layers, base.strategy, base.experts])
    if st.session_state.get(_EDITS_OF) not in (None, owner) and (common.view(EDITS) or table_cells()):
        drop_hand_edits()
        st.toast(DROPPED, icon=":material/restart_alt:")
    st.session_state[_EDITS_OF] = owner
    asked = common.view(EDITS)
    try:
        edits = ed.parse_edits(asked, m.n_layers)
    except SpectrascopeError as err:
        common.url_fallback(EDITS, asked, "no hand edits", f"cannot be used here ({str(err).rstrip('.')})")
        edits = {}
    else:
        common.url_checked(EDITS)
    edits = ed.merge_edits(edits, table_cells(), base.experts)
    common.set_view(EDITS, ed.format_edits(edits))
    return edits


def editor_frame(m: ModelFacts, column: list, ranks: list[int] | None) -> pd.DataFrame:
    df = pd.DataFrame({"layer": range(m.n_layers), SCORE_COL: m.scores if m.scores is not None else [None] * m.n_layers,
                       EXPERTS_COL: column})
    if ranks is not None:
        df[RANK_COL] = ranks
    return df


# ---------------------------------------------------------------- widgets bound to the URL view

def view_number(name: str, default, lo, hi=None, whole: bool = True):
    """The view setting `name` as a number in [lo, hi] (whole, or rounded to 0.01); a link's value outside the
    range is clamped and said above the page, an unreadable one replaced by `default` and said."""
    def parse(text: str):
        x = float(text)
        if not math.isfinite(x):
            raise ValueError(text)
        value = int(x) if whole else round(x, 2)
        shown = max(lo, value if hi is None else min(hi, value))
        if shown != value:
            common.url_fallback(name, text, f"{shown:g}", f"is outside {lo:g}–{'∞' if hi is None else f'{hi:g}'}")
        else:
            common.url_checked(name)
        return shown

    return common.parsed_view(name, default, parse)


def view_beta() -> float:
    """β from the view (the slider's value, also used by the AdaLoRA section)."""
    return view_number("beta", al.DEFAULT_BETA, 0.0, BETA_MAX, whole=False)


def controls(m: ModelFacts) -> Settings:
    """Strategy, MoLA pattern, budget, β, min and max; all but the custom pattern live in the URL."""
    n = m.n_layers
    if st.session_state.get("_alloc_layers") not in (None, n):       # another model: back to the default budget
        common.set_view("budget", None)
    st.session_state["_alloc_layers"] = n
    c1, c2, c3 = st.columns([2, 2, 3])
    strategy = common.bound_selectbox("Strategy", list(STRATEGIES), "strategy", default="alphalora", where=c1,
                                      format_func=STRATEGIES.get,
                                      help="AlphaLoRA gives more experts to layers with a higher α (less trained). "
                                           "Hand edits in the table always become a manual allocation.")
    pattern = common.bound_selectbox("MoLA pattern", PATTERNS + [CUSTOM], "mola",
                                     default=DEFAULT_PATTERN, where=c2,
                                     help="For the MoLA strategy and the comparison below. One digit (experts) "
                                          "per block of contiguous layers: 2468 = 4 blocks with 2, 4, 6, 8 "
                                          "experts. Published for 32 layers: budget 160 — 5555, 8642, 8228, "
                                          "2468, 2882; budget 128 — 4444, 6532, 6226, 2356, 2662; "
                                          "256 — 8888.")
    if pattern == CUSTOM:
        pattern = c3.text_input("Custom MoLA digits", key="alloc_mola_custom", value="3579",
                                help="One digit 0–9 per block, e.g. 13579 for 5 blocks.").strip()
    is_mola = strategy == "mola"
    d1, d2, d3, d4 = st.columns([4, 3, 1.3, 1.3])
    budget = common.bound(
        d1.slider, "Total expert budget T", "budget",
        view_number("budget", al.DEFAULT_EXPERTS_PER_LAYER * n, 0, BUDGET_MAX_PER_LAYER * n),
        min_value=0, max_value=BUDGET_MAX_PER_LAYER * n, step=1, disabled=is_mola,
        help=f"Σ experts over the {n} layers (default 5 × layers = {5 * n}). MoLA presets fix their own total.")
    beta = common.bound(
        d2.slider, "β (AlphaLoRA exponent)", "beta", view_beta(), min_value=0.0, max_value=BETA_MAX, step=0.1,
        help="share_l ∝ α_l^β. 0 = uniform, 2.5 = published default, larger = more concentrated. Also drives the "
             "α-driven ranks.")
    lo = common.bound(d3.number_input, "Min / layer", "min_experts", view_number("min_experts", 1, 0),
                      min_value=0, step=1, disabled=is_mola,
                      help="At least this many experts in every layer (0 = a layer may get no adapter).")
    hi = common.bound(partial(d4.number_input, value=None), "Max / layer", "max_experts",   # value=None: clearable
                      view_number("max_experts", None, 0), min_value=0, step=1, placeholder="none", disabled=is_mola,
                      help="At most this many experts in a layer (empty = no maximum).")
    return Settings(strategy, int(budget), float(beta), int(lo), None if hi is None else int(hi), pattern)


# ---------------------------------------------------------------- sections

def rank_settings(m: ModelFacts, s: Settings, where) -> dict | None:
    """The optional α-driven rank budget; returns its settings (and the ranks) or None when off."""
    with where:
        on = st.toggle("Also allocate LoRA ranks by α (peft rank_pattern / alpha_pattern)", key="alloc_ranks_on",
                       help="The same α^β shares set a per-layer rank r_l with Σ r_l = R, exported as a peft "
                            "LoraConfig that plain peft can train.")
        if not on:
            return None
        c1, c2, c3 = st.columns(3)
        budget = c1.number_input("Rank budget R (Σ r_l)", min_value=1, value=8 * m.n_layers, step=1,
                                 key="alloc_rank_budget", help=f"default 8 × layers = {8 * m.n_layers}")
        min_rank = c2.number_input("Min rank / layer", min_value=0, value=1, step=1, key="alloc_min_rank")
        ratio = c3.number_input("lora_alpha / r", min_value=0.1, value=2.0, step=0.5, key="alloc_alpha_ratio")
        if m.scores is None:
            st.error(m.scores_problem.replace("AlphaLoRA cannot allocate", "ranks cannot follow α"),
                     icon=":material/error:")
            return None
        try:
            ranks = al.allocate_ranks(m.scores, int(budget), s.beta, int(min_rank))
        except SpectrascopeError as err:
            st.error(str(err), icon=":material/error:")
            return None
        return {"budget": int(budget), "min": int(min_rank), "ratio": float(ratio), "ranks": ranks}


def attach_ranks(alloc: al.Allocation, m: ModelFacts, s: Settings, ranks: dict, modules: list[str]) -> None:
    """add_rank_allocation's ranks / rank_params / lora_config on `alloc`, remembered for the session: they do not
    depend on the experts, and the peft export costs ~60 ms on 80 layers, so an expert-budget change reuses them."""
    key = (m.label, m.n_layers, tuple(m.scores or ()), ranks["budget"], s.beta, ranks["min"], tuple(modules),
           ranks["ratio"])
    memo = st.session_state.get("_alloc_rank_memo")
    if memo is None or memo[0] != key:
        probe = al.Allocation("manual", [1] * m.n_layers, [1] * m.n_layers, scores=m.scores)
        al.add_rank_allocation(probe, ranks["budget"], m.matrices, beta=s.beta, min_rank=ranks["min"],
                               modules=modules, alpha_ratio=ranks["ratio"])
        memo = (key, (probe.ranks, probe.rank_params, probe.lora_config))
        st.session_state["_alloc_rank_memo"] = memo
    ranks_, params, config = memo[1]
    alloc.ranks, alloc.rank_params, alloc.lora_config = list(ranks_), dict(params), json.loads(json.dumps(config))


def param_settings(m: ModelFacts, where) -> tuple[int, list[str]]:
    """Rank r of each expert and the adapted module kinds, for the parameter counts."""
    with where:
        st.subheader("Trainable parameters")
        c1, c2 = st.columns([1, 5])
        rank = int(c1.number_input("Expert rank r", min_value=1, max_value=4096, value=al.DEFAULT_RANK, step=1,
                                   key="alloc_rank", help="LoRA rank of every expert"))
        names = {k: f"{k} ({charts.MODULE_NAMES.get(k, k)})" for k in m.kinds}
        modules = c2.multiselect("Adapted modules", m.kinds, default=m.kinds, key="alloc_modules",
                                 format_func=names.get, help="Linear layers inside each block that get experts "
                                                             "(each adds r·(d_in + d_out) per expert and a "
                                                             "d_in × N router)")
    return rank, modules


def param_metrics(count: al.ParamCount, where) -> None:
    with where:
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("LoRA experts", common.human_count(count.experts), help=f"{count.experts:,} parameters")
        c2.metric("Routers", common.human_count(count.routers), help=f"{count.routers:,} parameters")
        c3.metric("Trainable total", common.human_count(count.total), help=f"{count.total:,} parameters")
        share = "—" if count.share is None else f"{100 * count.share:.3g} %"
        c4.metric("Share of the model", share, help=f"of {count.model_params:,} model parameters")


def export_section(alloc: al.Allocation, m: ModelFacts) -> None:
    """Downloads (allocation JSON, peft LoraConfig kwargs) and "Use for training" (the shared allocations folder)."""
    st.subheader("Export")
    stem = store.safe_name(f"{m.label.rstrip('/').split('/')[-1]}-{alloc.strategy.replace(':', '')}-T{alloc.total}")
    c1, c2, _ = st.columns([1, 1, 1])
    c1.download_button("Allocation JSON", al.to_json(alloc).encode(), f"{stem}.json", "application/json",
                       icon=":material/download:", on_click="ignore", width="stretch",
                       help="spectrascope.allocation/1: experts, top-k, scores, parameters (and ranks)")
    lora = None if alloc.lora_config is None else json.dumps(alloc.lora_config, indent=2).encode()
    c2.download_button("peft LoraConfig JSON", lora or b"", f"{stem}-lora-config.json", "application/json",
                       icon=":material/download:", on_click="ignore", disabled=lora is None, width="stretch",
                       help="LoraConfig(**kwargs) with rank_pattern / alpha_pattern" if lora else
                            "Turn on the α-driven LoRA ranks above to export a peft LoraConfig.")
    if lora is None:                       # a disabled button shows no tooltip in the browser: say it under it
        c2.caption("Turn on **α-driven LoRA ranks** above to export a peft LoraConfig.")
    c1, c2, _ = st.columns([2, 1, 1], vertical_alignment="bottom")
    name = c1.text_input("Save as", value=stem, help="letters, digits, '.', '_' or '-' (saved as "
                                                      "allocations/<name>.json in the data directory)")
    if c2.button("Use for training", type="primary", icon=":material/model_training:", width="stretch",
                 help="Save it and make it the allocation the Train page uses (allocations/current.json)"):
        try:
            path = store.save(alloc, name)
        except SpectrascopeError as err:
            st.error(str(err), icon=":material/error:")
        else:
            st.success(f"Saved **{path.stem}** ({alloc.total} experts) to `{path}` — the Train page will use it.",
                       icon=":material/check_circle:")
    saved = store.list_saved()
    if saved:
        with st.expander(f"Saved allocations ({len(saved)})"):
            st.dataframe(pd.DataFrame([{"name": s.name, "for training": "✓" if s.current else "",
                                        "strategy": s.strategy, "total": s.total, "layers": s.n_layers,
                                        "model": s.model, "problem": s.error or ""} for s in saved]),
                         hide_index=True, width="stretch")


def main() -> None:
    st.title("Allocate experts")
    allocation_sections()
    adalora_section(view_beta())


def table_section(m: ModelFacts, s: Settings, base: al.Allocation, ranks: dict | None, total: int,
                  left, status_box) -> al.Allocation | None:
    """The experts table (hand edits kept in the view and the URL), Σ against the budget and the problems with
    it; the allocation it describes, or None when a count is unusable."""
    edits = hand_edits(m, base)
    own = table_cells()
    shown = {layer: value for layer, value in edits.items() if layer not in own}   # the table shows its own
    with left:
        st.markdown("**Experts per layer** — double-click an *experts* cell to hand-tune it (the result becomes a "
                    "manual allocation; hand edits stay in the link).")
        st.data_editor(
            editor_frame(m, ed.apply_edits(base.experts, shown), None if ranks is None else ranks["ranks"]),
            key=editor_key(), num_rows="fixed", hide_index=True, width="stretch",
            height=min(38 + 35 * m.n_layers, 390), disabled=["layer", SCORE_COL, RANK_COL],
            column_config={"layer": st.column_config.NumberColumn("layer", format="%d"),
                           SCORE_COL: st.column_config.NumberColumn(SCORE_COL, format="%.3f",
                                                                    help="AlphaLoRA layer score"),
                           EXPERTS_COL: st.column_config.NumberColumn(EXPERTS_COL, min_value=0, step=1,
                                                                      format="%d", required=True),
                           RANK_COL: st.column_config.NumberColumn(RANK_COL, format="%d",
                                                                   help="α-driven LoRA rank")})
        st.button("Reset hand edits", icon=":material/restart_alt:", on_click=drop_hand_edits,
                  disabled=not edits, help="Back to the strategy's allocation" if edits else "No hand edits")
    with status_box:
        try:
            counts = ed.read_counts(ed.apply_edits(base.experts, edits))
        except SpectrascopeError as err:
            st.metric("Σ experts / budget", f"— / {total}")
            st.error(str(err), icon=":material/error:")
            return None
        diff = sum(counts) - total
        st.metric("Σ experts / budget", f"{sum(counts)} / {total}",
                  delta=None if not diff else f"{diff:+d} vs budget", delta_color="inverse" if diff else "off",
                  help="The sum of the experts column against the budget (a MoLA preset's own total)")
        problem = sum_problem(counts, total, s)
        if problem:
            st.warning(problem, icon=":material/warning:")
        current = edited_allocation(base, counts, total)
        st.caption(f"Allocation: **{describe(current)}** · top-k routing: 2 experts per token (1 where a layer has "
                   "a single expert)")
    return current


def comparison_section(m: ModelFacts, s: Settings, rank: int, modules: list[str]) -> None:
    """AlphaLoRA, uniform and the MoLA preset side by side: experts per layer and trainable parameters."""
    st.subheader("AlphaLoRA vs uniform vs MoLA")
    rows = comparison(s, m, rank, modules or m.kinds)
    st.plotly_chart(comparison_figure(rows), key="alloc_compare_chart", width="stretch")
    table = pd.DataFrame(comparison_records(rows))
    if not table["note"].astype(bool).any():
        table = table.drop(columns="note")
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "LoRA experts": st.column_config.NumberColumn(format="localized"),
        "routers": st.column_config.NumberColumn(format="localized"),
        "trainable total": st.column_config.NumberColumn(format="localized"),
        "share of model": st.column_config.NumberColumn("share of model (%)", format="%.3f")})
    st.caption(f"Same budget, minimum and maximum for AlphaLoRA and uniform; MoLA {s.pattern} has its own total. "
               f"Parameters for rank r = {rank} on {', '.join(modules or m.kinds)}.")


def allocation_sections() -> None:
    """The allocation of the sidebar's model: controls, table, chart, ranks, comparison, export."""
    result = common.current_analysis()
    if result is None:
        return
    try:
        m = model_facts(result)
    except SpectrascopeError as err:
        st.info(f"{result.model}: {err}")
        return
    st.caption(f"**{m.label}** · {m.n_layers} layers. How many LoRA experts each transformer block gets: AlphaLoRA "
               "(n_l ∝ α_l^β, Qing et al. 2024), uniform, or a MoLA preset (Gao et al.); tweak any of them in the "
               "table, then export it or use it for training.")
    common.show_flags(result)
    if m.scores_problem:
        st.warning(m.scores_problem, icon=":material/warning:")
    s = controls(m)
    chart_box, table_box = st.container(), st.container()
    params_box, metrics_box, rank_box = st.container(), st.container(), st.container()
    try:
        base = base_allocation(s, m)
    except SpectrascopeError as err:
        st.error(str(err), icon=":material/error:")
        return
    with table_box:
        left, status_box = st.columns([3, 2], gap="large")
    rank, modules = param_settings(m, params_box)
    ranks = rank_settings(m, s, rank_box)
    current = table_section(m, s, base, ranks, target(s, base), left, status_box)
    if current is None:
        return
    try:
        if not modules:
            raise SpectrascopeError("pick at least one adapted module kind to count parameters.")
        count = al.count_trainable_params(m.matrices, current.experts, rank, modules, m.model_params)
    except SpectrascopeError as err:
        metrics_box.error(str(err), icon=":material/error:")
        return
    current.trainable_params = count.to_dict()
    param_metrics(count, metrics_box)
    with chart_box:
        title = f"{describe(current)}: {current.total} experts over {m.n_layers} layers"
        st.plotly_chart(allocation_figure(current.experts, m.scores, title), key="alloc_chart", width="stretch")
    if ranks is not None:
        with rank_box:
            try:
                attach_ranks(current, m, s, ranks, modules)
            except SpectrascopeError as err:
                st.error(str(err), icon=":material/error:")
            else:
                r = current.ranks
                st.caption(f"Ranks {min(r)}–{max(r)} per layer (the table's last column), Σ = {sum(r)}; "
                           f"{len(current.lora_config['rank_pattern'])} rank_pattern keys, lora_alpha = "
                           f"{ranks['ratio']:g} × r.")
                with st.expander("peft LoraConfig kwargs"):
                    st.json(current.lora_config, expanded=False)
    comparison_section(m, s, rank, modules)
    export_section(current, m)


if __name__ == "__main__":       # Streamlit runs a page file as __main__; importing it (tests, benchmarks) does not
    main()
