"""Allocate experts page: AlphaLoRA, uniform, MoLA or hand-edited experts per layer, parameters, ranks, export."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from analysis import allocation as al
from analysis import allocation_store as store
from analysis.types import MatrixInfo, SpectrascopeError
from app import charts, common
from app.page_allocate_adalora import section as adalora_section

VIEW_NAMES = ("strategy", "budget", "beta", "mola", "min_experts", "max_experts")   # kept in the URL
common.register_view_keys(*VIEW_NAMES)

STRATEGIES = {"alphalora": "AlphaLoRA (α-driven)", "uniform": "Uniform", "mola": "MoLA preset",
              "manual": "Manual (edit the table)"}
CUSTOM = "custom…"
PATTERNS = ["2468", "8642", "5555", "8228", "2882", "4444", "6532", "6226", "2356", "2662", "8888"]
DEFAULT_PATTERN = "2468"
BUDGET_MAX_PER_LAYER = 16          # the budget slider goes up to 16 × layers
EDITOR_PREFIX = "alloc_editor_"
EXPERTS_COL, SCORE_COL, RANK_COL = "experts", "α score", "LoRA rank"
COLOURS = {"AlphaLoRA": "#1f77b4", "uniform": "#7f7f7f", "MoLA": "#ff7f0e", "α": "#d62728"}


@dataclass(frozen=True)
class Settings:
    """What the controls ask for."""

    strategy: str               # alphalora | uniform | mola | manual
    budget: int
    beta: float
    min_experts: int
    max_experts: int | None
    pattern: str                # MoLA digits as typed (validated by analysis.allocation)

    @property
    def mola(self) -> str:
        return f"mola:{self.pattern}"


@dataclass(frozen=True)
class ModelFacts:
    """What the allocation needs from an analysis: layers, scores, matrix shapes, parameter count."""

    label: str
    n_layers: int
    scores: list[float] | None
    scores_problem: str | None
    matrices: list[MatrixInfo]
    model_params: int
    kinds: list[str]            # adaptable linear kinds present in the layers


# ---------------------------------------------------------------- pure helpers (no widgets)

def model_facts(result) -> ModelFacts:
    """Layer count, AlphaLoRA layer scores (or why they are unusable), matrices and parameter count of an analysis."""
    df = result.matrices
    mats = [MatrixInfo(str(n), None if pd.isna(layer) else int(layer), str(mod), int(r), int(c))
            for n, layer, mod, r, c in zip(df["name"], df["layer"], df["module"], df["rows"], df["cols"])]
    n_layers = al.n_layers_of(mats)
    scores, problem = None, None
    try:
        raw = result.layer_scores()
    except (KeyError, AttributeError):
        raw = []
    bad = [i for i, s in enumerate(raw) if not (isinstance(s, float) and math.isfinite(s) and s > 0)]
    if len(raw) != n_layers:
        problem = (f"the analysis has layer scores for {len(raw)} of {n_layers} layers, so AlphaLoRA cannot "
                   "allocate; choose uniform, a MoLA preset or manual.")
    elif bad:
        problem = (f"layers {bad} have no usable AlphaLoRA score (no power-law fit), so AlphaLoRA cannot allocate; "
                   "choose uniform, a MoLA preset or manual.")
    else:
        scores = list(raw)
    model_params = result.num_parameters or sum(m.rows * m.cols for m in mats)
    kinds = [k for k in al.LINEAR_KINDS if any(m.module == k and m.layer is not None for m in mats)]
    return ModelFacts(result.model, n_layers, scores, problem, mats, int(model_params), kinds)


def base_allocation(s: Settings, m: ModelFacts) -> al.Allocation:
    """The allocation the controls describe (before hand edits); raises SpectrascopeError on bad settings."""
    if s.strategy == "alphalora":
        if m.scores is None:
            raise SpectrascopeError(m.scores_problem)
        return al.allocate("alphalora", scores=m.scores, budget=s.budget, beta=s.beta, min_experts=s.min_experts,
                           max_experts=s.max_experts, model=m.label)
    if s.strategy == "uniform":
        return al.allocate("uniform", scores=m.scores, n_layers=m.n_layers, budget=s.budget,
                           min_experts=s.min_experts, max_experts=s.max_experts, model=m.label)
    if s.strategy == "mola":
        return al.allocate(s.mola, scores=m.scores, n_layers=m.n_layers, model=m.label)
    seed = al.uniform(m.n_layers, s.budget, s.min_experts, s.max_experts)      # manual starts from uniform
    alloc = al.allocate("manual", experts=seed, scores=m.scores, n_layers=m.n_layers, model=m.label)
    alloc.params = {"target": s.budget}
    return alloc


def describe(alloc: al.Allocation) -> str:
    """A short human name: 'AlphaLoRA (β = 2.5)', 'uniform', 'MoLA 2468', 'manual (edited from AlphaLoRA)'."""
    if alloc.strategy == "alphalora":
        return f"AlphaLoRA (β = {alloc.params.get('beta', al.DEFAULT_BETA):g})"
    if alloc.strategy.startswith("mola:"):
        return f"MoLA {alloc.strategy[5:]}"
    source = alloc.params.get("edited_from")
    if alloc.strategy == "manual" and source:
        return f"manual (edited from {'AlphaLoRA' if source == 'alphalora' else source.replace('mola:', 'MoLA ')})"
    return alloc.strategy


def read_counts(values) -> list[int]:
    """Expert counts typed into the table: whole numbers ≥ 0, else one SpectrascopeError naming every bad layer."""
    bad = []
    counts = []
    for layer, v in enumerate(values):
        try:
            x = float(v)
        except (TypeError, ValueError):
            x = float("nan")
        if not math.isfinite(x) or x < 0 or not x.is_integer():
            empty = v is None or (isinstance(v, float) and math.isnan(v))
            bad.append(f"layer {layer}: " + ("empty" if empty else f"{x:g}" if math.isfinite(x) else repr(v)))
        else:
            counts.append(int(x))
    if bad:
        raise SpectrascopeError("expert counts must be whole numbers ≥ 0 — fix " + "; ".join(bad[:8])
                                + (f" (and {len(bad) - 8} more)" if len(bad) > 8 else "") + ".")
    return counts


def edited_allocation(base: al.Allocation, counts: list[int], target: int) -> al.Allocation:
    """The table's counts as an allocation: the base itself if unchanged, else a manual one that says where it came
    from."""
    if counts == base.experts:
        return base
    alloc = al.allocate("manual", experts=counts, scores=base.scores, n_layers=len(base.experts), model=base.model)
    alloc.params = {"edited_from": base.strategy, "target": target, **{k: v for k, v in base.params.items()
                                                                      if k in ("budget", "beta", "min", "max")}}
    return alloc


def sum_problem(counts: list[int], target: int, s: Settings) -> str | None:
    """A warning when the hand-edited counts miss the budget or leave the [min, max] range, else None."""
    notes = []
    diff = sum(counts) - target
    if diff:
        notes.append(f"The experts sum to {sum(counts)}, {abs(diff)} {'more' if diff > 0 else 'fewer'} than the "
                     f"budget of {target}: {'remove' if diff > 0 else 'add'} {abs(diff)} to match it (or keep it "
                     "on purpose: the allocation is saved as typed).")
    if s.strategy != "mola":
        low = [i for i, c in enumerate(counts) if c < s.min_experts]
        high = [i for i, c in enumerate(counts) if s.max_experts is not None and c > s.max_experts]
        if low:
            notes.append(f"Layers {low} are below the minimum of {s.min_experts}.")
        if high:
            notes.append(f"Layers {high} are above the maximum of {s.max_experts}.")
        if 0 in counts:
            notes.append(f"Layers {[i for i, c in enumerate(counts) if c == 0]} have no experts (no adapter).")
    return " ".join(notes) or None


def comparison(s: Settings, m: ModelFacts, rank: int, modules: list[str]) -> list[dict]:
    """AlphaLoRA vs uniform vs the chosen MoLA preset: experts per layer and trainable parameters (or the error)."""
    rows = []
    for name, strategy in (("AlphaLoRA", "alphalora"), ("uniform", "uniform"), ("MoLA", "mola")):
        try:
            alloc = base_allocation(Settings(strategy, s.budget, s.beta, s.min_experts, s.max_experts, s.pattern), m)
            count = al.count_trainable_params(m.matrices, alloc.experts, rank, modules, m.model_params)
            rows.append({"name": name, "strategy": describe(alloc), "experts": alloc.experts, "count": count})
        except SpectrascopeError as err:
            rows.append({"name": name, "strategy": f"MoLA {s.pattern}" if strategy == "mola" else name,
                         "error": str(err)})
    return rows


def comparison_table(rows: list[dict]) -> pd.DataFrame:
    out = []
    for r in rows:
        if "error" in r:
            out.append({"strategy": r["strategy"], "total experts": None, "experts per layer": "—",
                        "LoRA experts": None, "routers": None, "trainable total": None, "share of model": None,
                        "note": r["error"]})
            continue
        c, e = r["count"], r["experts"]
        out.append({"strategy": r["strategy"], "total experts": sum(e), "experts per layer": f"{min(e)}–{max(e)}",
                    "LoRA experts": c.experts, "routers": c.routers, "trainable total": c.total,
                    "share of model": None if c.share is None else 100 * c.share, "note": ""})
    df = pd.DataFrame(out)
    return df if df["note"].astype(bool).any() else df.drop(columns="note")


def allocation_figure(experts: list[int], scores: list[float] | None, title: str, height: int = 380) -> go.Figure:
    """Experts per layer (bars) with the AlphaLoRA layer score α on a second y axis (built without make_subplots,
    which alone costs ~20 ms per rerun)."""
    layers = list(range(len(experts)))
    data = [go.Bar(x=layers, y=experts, name="experts", marker_color=COLOURS["AlphaLoRA"], opacity=0.75,
                   customdata=layers, hovertemplate="layer %{x}: %{y} experts<extra></extra>")]
    if scores is not None:
        data.append(go.Scatter(x=layers, y=scores, name="layer score α", mode="lines+markers", yaxis="y2",
                               line=dict(color=COLOURS["α"], width=2), marker=dict(size=6),
                               hovertemplate="layer %{x}: α = %{y:.3f}<extra></extra>"))
    layout = dict(
        title=dict(text=title, x=0, xanchor="left"), height=height, hovermode="x unified", bargap=0.15,
        margin=dict(l=70, r=70, t=60, b=60), font=dict(size=13),
        legend=dict(orientation="h", x=1, xanchor="right", y=1.02, yanchor="bottom"),
        xaxis=dict(title=dict(text=charts.LAYER_AXIS), dtick=1 if len(layers) <= 40 else None),
        yaxis=dict(title=dict(text="experts in the layer"), rangemode="tozero"),
        yaxis2=dict(title=dict(text="layer score α (mean PL_Alpha_Hill)"), overlaying="y", side="right",
                    showgrid=False, tickmode="auto", nticks=6, tickformat=".2f"))
    return go.Figure(data=data, layout=layout)


def comparison_figure(rows: list[dict], height: int = 380) -> go.Figure:
    """Grouped bars: experts per layer of each compared strategy."""
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
                      xaxis=dict(title=charts.LAYER_AXIS, dtick=1 if n <= 40 else None),
                      yaxis=dict(title="experts in the layer", rangemode="tozero"), hovermode="x unified",
                      margin=dict(l=70, r=30, t=60, b=60), font=dict(size=13),
                      legend=dict(orientation="h", x=1, xanchor="right", y=1.02, yanchor="bottom"))
    return fig


def editor_frame(m: ModelFacts, experts: list[int], ranks: list[int] | None) -> pd.DataFrame:
    df = pd.DataFrame({"layer": range(m.n_layers), SCORE_COL: m.scores if m.scores is not None else [None] * m.n_layers,
                       EXPERTS_COL: [float(e) for e in experts]})
    if ranks is not None:
        df[RANK_COL] = ranks
    return df


def editor_key(m: ModelFacts, base: al.Allocation, generation: int) -> str:
    """The table's widget key: new (edits dropped) when the base allocation or the model changes, or on reset."""
    sig = json.dumps([m.label, m.n_layers, base.strategy, base.experts, generation])
    return EDITOR_PREFIX + hashlib.sha1(sig.encode()).hexdigest()[:12]


# ---------------------------------------------------------------- widgets bound to the URL view

def _seed_from_url() -> None:
    """The page registers its URL names after common.init_view ran; seed them from the URL the first time."""
    if st.session_state.get("_alloc_view_seeded"):
        return
    for name in VIEW_NAMES:
        if name in st.query_params and f"view_{name}" not in st.session_state:
            common.set_view(name, st.query_params[name])
    st.session_state["_alloc_view_seeded"] = True


def _bound(widget, label: str, name: str, current, **kw):
    """A widget whose value is the view setting `name` (`current`: already parsed and clamped by the caller)."""
    key = f"w_{name}"
    st.session_state[key] = current
    common.set_view(name, current)

    def changed() -> None:
        common.set_view(name, st.session_state[key])

    return widget(label, key=key, on_change=changed, **kw)


def _view_int(name: str, default: int | None, lo: int, hi: int | None) -> int | None:
    try:
        value = int(float(common.view(name)))
    except (TypeError, ValueError):
        return default
    return max(lo, value if hi is None else min(hi, value))


def _view_float(name: str, default: float, lo: float, hi: float) -> float:
    try:
        value = float(common.view(name))
    except (TypeError, ValueError):
        return default
    return min(hi, max(lo, round(value, 2))) if math.isfinite(value) else default


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
    budget = _bound(d1.slider, "Total expert budget T", "budget",
                    _view_int("budget", al.DEFAULT_EXPERTS_PER_LAYER * n, 0, BUDGET_MAX_PER_LAYER * n),
                    min_value=0, max_value=BUDGET_MAX_PER_LAYER * n, step=1, disabled=is_mola,
                    help=f"Σ experts over the {n} layers (default 5 × layers = {5 * n}). MoLA presets fix their "
                         "own total.")
    beta = _bound(d2.slider, "β (AlphaLoRA exponent)", "beta", _view_float("beta", al.DEFAULT_BETA, 0.0, 5.0),
                  min_value=0.0, max_value=5.0, step=0.1,
                  help="share_l ∝ α_l^β. 0 = uniform, 2.5 = published default, larger = more concentrated. "
                       "Also drives the α-driven ranks.")
    lo = _bound(d3.number_input, "Min / layer", "min_experts", _view_int("min_experts", 1, 0, None),
                min_value=0, step=1, disabled=is_mola, help="At least this many experts in every layer (0 = a layer "
                                                            "may get no adapter).")
    hi = _bound(d4.number_input, "Max / layer", "max_experts", _view_int("max_experts", None, 0, None),
                min_value=0, step=1, value=None, placeholder="none", disabled=is_mola,
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
    _seed_from_url()
    st.title("Allocate experts")
    allocation_sections()
    adalora_section(_view_float("beta", al.DEFAULT_BETA, 0.0, 5.0))


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
    target = base.total if s.strategy == "mola" else s.budget
    with table_box:
        left, status_box = st.columns([3, 2], gap="large")
    rank, modules = param_settings(m, params_box)
    ranks = rank_settings(m, s, rank_box)
    gen = st.session_state.setdefault("_alloc_editor_gen", 0)
    with left:
        st.markdown("**Experts per layer** — edit the *experts* column to hand-tune (the result becomes a "
                    "manual allocation).")
        edited = st.data_editor(
            editor_frame(m, base.experts, None if ranks is None else ranks["ranks"]),
            key=editor_key(m, base, gen), num_rows="fixed", hide_index=True, width="stretch",
            height=min(38 + 35 * m.n_layers, 390), disabled=["layer", SCORE_COL, RANK_COL],
            column_config={"layer": st.column_config.NumberColumn("layer", format="%d"),
                           SCORE_COL: st.column_config.NumberColumn(SCORE_COL, format="%.3f",
                                                                    help="AlphaLoRA layer score"),
                           EXPERTS_COL: st.column_config.NumberColumn(EXPERTS_COL, min_value=0, step=1,
                                                                      format="%d", required=True),
                           RANK_COL: st.column_config.NumberColumn(RANK_COL, format="%d",
                                                                   help="α-driven LoRA rank")})
        if st.button("Reset hand edits", icon=":material/restart_alt:"):
            st.session_state["_alloc_editor_gen"] = gen + 1
            st.rerun()
    with status_box:
        try:
            counts = read_counts(edited[EXPERTS_COL].tolist())
        except SpectrascopeError as err:
            st.metric("Σ experts / budget", f"— / {target}")
            st.error(str(err), icon=":material/error:")
            return
        diff = sum(counts) - target
        st.metric("Σ experts / budget", f"{sum(counts)} / {target}",
                  delta=None if not diff else f"{diff:+d} vs budget", delta_color="inverse" if diff else "off",
                  help="The sum of the experts column against the budget (a MoLA preset's own total)")
        problem = sum_problem(counts, target, s)
        if problem:
            st.warning(problem, icon=":material/warning:")
        current = edited_allocation(base, counts, target)
        st.caption(f"Allocation: **{describe(current)}** · top-k routing: 2 experts per token (1 where a layer has "
                   "a single expert)")
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

    st.subheader("AlphaLoRA vs uniform vs MoLA")
    rows = comparison(s, m, rank, modules or m.kinds)
    st.plotly_chart(comparison_figure(rows), key="alloc_compare_chart", width="stretch")
    st.dataframe(comparison_table(rows), hide_index=True, width="stretch", column_config={
        "LoRA experts": st.column_config.NumberColumn(format="localized"),
        "routers": st.column_config.NumberColumn(format="localized"),
        "trainable total": st.column_config.NumberColumn(format="localized"),
        "share of model": st.column_config.NumberColumn("share of model (%)", format="%.3f")})
    st.caption(f"Same budget, minimum and maximum for AlphaLoRA and uniform; MoLA {s.pattern} has its own total. "
               f"Parameters for rank r = {rank} on {', '.join(modules or m.kinds)}.")
    export_section(current, m)


if __name__ == "__main__":       # Streamlit runs a page file as __main__; importing it (tests, benchmarks) does not
    main()
