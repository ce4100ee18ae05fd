"""Compare spectra page: intruder dimensions of fine-tunes (runs or checkpoints) vs their base, α shift, mitigation."""
from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from analysis import alpha_noise, intruders
from analysis.config import DEFAULT_MODEL, data_dir
from analysis.types import SpectrascopeError
from training.jobs import NAME_RE
from training.moe_lora import spectra
from training.moe_lora.spectra import PER_EXPERT, ROUTED
from training.runs_index import RunArtifact, list_runs, seed_pairs
from app import charts
from app import charts_spectra as cs
from app import common

VIEW = ("cs_base", "cs_ft", "cs_runs", "cs_k", "cs_eps", "cs_side", "cs_matrix", "cs_moe", "cs_m")
common.register_view_keys(*VIEW)
MOE_MODES = spectra.MODES
MOE_ALPHA = {PER_EXPERT: "the mean α over its experts' W0 + s·B_e A_e",
             ROUTED: "W0 + the routing-weighted mean update"}
MAX_MEMO = 16
MITIGATION_STATE = "cs_mitigation"
ALPHA_SCORE = ("alphalora_score", "AlphaLoRA layer score α")


# ---------------------------------------------------------------- view state (mirrored into the URL)

def bound(widget, label: str, name: str, default, parse, where=None, **kw):
    """common.bound at the view's value of `name` as `parse` reads (and clamps) it, else `default`."""
    return common.bound(widget, label, name, common.parsed_view(name, default, parse), where=where, **kw)


def manual_sides() -> list[list[str]]:
    """The checkpoints added by hand, [[fine-tuned model, adapter], …] (view "cs_ft", JSON)."""
    try:
        value = json.loads(common.view("cs_ft", "[]"))
        return [[str(m or ""), str(a or "")] for m, a in value]
    except (ValueError, TypeError):
        return []


def set_manual_sides(sides: list[list[str]]) -> None:
    common.set_view("cs_ft", json.dumps(sides) if sides else None)


# ---------------------------------------------------------------- what is compared

@dataclass(frozen=True)
class Side:
    """One fine-tuned side: base + adapter, a full checkpoint, or a MoE-LoRA run (merged by this page)."""

    label: str
    base: str
    model: str | None
    adapter: str | None
    run: RunArtifact | None = None

    @property
    def moe(self) -> bool:
        return self.run is not None and self.run.weights == "moe"

    @property
    def merged(self) -> bool:                         # DoRA…: the run is loaded and merged (finetuned_source)
        return self.run is not None and self.run.weights == "merged"


def short(path: str, n: int = 32) -> str:
    name = Path(path).name or path
    return name if len(name) <= n else "…" + name[-(n - 1):]


def build_sides(base: str, runs: list[RunArtifact], chosen: list[str], manual: list[list[str]]) -> list[Side]:
    sides: list[Side] = []
    by_key = {r.key: r for r in runs}
    for key in chosen:
        run = by_key.get(key)
        if run is None:
            continue
        b, model, adapter = run.sources()
        sides.append(Side(run.label, b or base, model if run.weights != "adapter" else (b or base), adapter, run))
    for model, adapter in manual:
        label = " + ".join(short(p) for p in (model or base, adapter) if p)
        sides.append(Side(label, base, model or base, adapter or None))
    seen: dict[str, int] = {}
    out = []
    for s in sides:                                   # labels name legend entries: keep them unique
        seen[s.label] = seen.get(s.label, 0) + 1
        out.append(s if seen[s.label] == 1 else dataclasses.replace(s, label=f"{s.label} #{seen[s.label]}"))
    return out


# ---------------------------------------------------------------- computation (memoised, with progress)

def _memo() -> common.LRUMemo:
    """Comparisons and α tables kept in memory across reruns and sessions, keyed by source identities + settings."""
    return common.shared_memo("compare_spectra", MAX_MEMO)


def _stamp(folder: Path) -> list:
    return sorted([p.name, p.stat().st_size, p.stat().st_mtime] for p in folder.iterdir() if p.is_file())


def _source_pair(side: Side):
    from analysis.sources import open_source
    return open_source(side.base), side.run.finetuned_source() if side.merged else open_source(side.model, side.adapter)


def _merged_analysis(side: Side, device: str):
    from analysis import engine
    result = engine.analyze(source=side.run.finetuned_source(), device=device, use_cache=False)
    return alpha_noise.layer_alphas(result.rows, result.evals)


def compare_side(side: Side, top_k: int, moe_mode: str, bar, index: int, count: int):
    """The side's IntruderReport (memoised); the progress bar shows matrices done / total and an ETA."""
    t0 = time.perf_counter()

    def progress(done: int, total: int, name: str) -> None:
        eta = (time.perf_counter() - t0) / max(done, 1) * (total - done)
        bar.progress(min(done / max(total, 1), 1.0),
                     text=f"Comparing {side.label} ({index}/{count}): {done}/{total} matrices · ETA {eta:,.0f} s "
                          f"· {name}")

    if side.moe:
        from analysis.sources import open_source
        key = json.dumps(["moe", open_source(side.base).identity(), str(side.run.artifact),
                          _stamp(side.run.artifact), moe_mode, top_k], default=str)
        report = _memo().get(key)
        if report is None:
            bar.progress(0.0, text=f"Loading MoE-LoRA run {side.label} …")
            report = spectra.intruder_report(side.run.folder, side.base, moe_mode, top_k, progress, side.label)
            _memo().put(key, report)
        return report
    pair = None if side.merged else _source_pair(side)  # a merged run is loaded only when it is not memoised
    ident = [s.identity() for s in pair] if pair else [side.base, str(side.run.artifact), _stamp(side.run.artifact)]
    key = json.dumps(["pair", *ident, top_k], default=str)
    report = _memo().get(key)
    if report is None:
        report = intruders.compare(*(pair or _source_pair(side)), top_k, intruders.EPSILON, progress)
        _memo().put(key, report)
    return report


def compare_all(sides: list[Side], top_k: int, moe_mode: str) -> dict[str, intruders.IntruderReport]:
    """Reports of all sides; a side that fails shows its error (no traceback) and is left out."""
    box = st.empty()
    bar = box.progress(0.0, text="Opening the models …")
    reports = {}
    for i, side in enumerate(sides, 1):
        try:
            reports[side.label] = compare_side(side, top_k, moe_mode, bar, i, len(sides))
        except SpectrascopeError as err:
            st.error(f"Could not compare **{side.label}** with its base **{short(side.base, 60)}**: {err}",
                     icon=":material/error:")
        except Exception as err:  # noqa: BLE001 - the UI's last line of defence: short message, details on demand
            st.error(f"Something went wrong comparing **{side.label}**: {type(err).__name__}: {err}",
                     icon=":material/error:")
            with st.expander("Details (for a bug report)"):
                import traceback
                st.code("".join(traceback.format_exception(err)), language=None)
    box.empty()
    return reports


def at_epsilon(report: intruders.IntruderReport, eps: float) -> intruders.IntruderReport:
    """The same comparison read at another ε (no recomputation: similarities do not depend on ε)."""
    return dataclasses.replace(report, epsilon=float(eps))


def per_layer_table(report: intruders.IntruderReport) -> pd.DataFrame:
    """IntruderReport.per_layer (what `total` sums) with a hover line per layer naming the matrices hit."""
    per = report.per_layer
    rows = report.rows
    hit = rows[rows["layer"].notna() & (rows["intruders"] > 0) & ~rows["module"].isin(intruders.SKIP_MODULES)]
    detail = {int(layer): "<br>".join(f"{r.module}: {r.intruders} ({r.name})" for r in g.itertuples())
              for layer, g in hit.groupby(hit["layer"].astype(int))}
    return pd.DataFrame({"layer": per["layer"].astype(int), "intruders": per["intruders"].astype(int),
                         "detail": [detail.get(int(x), "none") for x in per["layer"]]},
                        columns=["layer", "intruders", "detail"])


# ---------------------------------------------------------------- page sections

def pick_sides(runs: list[RunArtifact]) -> tuple[str, list[Side], str]:
    """Base input, run picker, checkpoint adder; returns (base, sides, MoE mode)."""
    base = common.bound_text("Base model (built-in name or folder)", "cs_base",
                             placeholder=DEFAULT_MODEL, help="The pre-trained model the checkpoints below were "
                             "fine-tuned from. Runs use the base recorded in their manifest.") or DEFAULT_MODEL
    with st.container():                 # the whole width: chips of long run labels wrap instead of scrolling away
        st.markdown("**Runs** (finished jobs in the data folder)")
        keys = [r.key for r in runs]
        chosen = [k for k in (common.view("cs_runs", "") or "").split(",") if k in keys]
        st.session_state["w_cs_runs"] = chosen

        def runs_changed() -> None:
            common.set_view("cs_runs", ",".join(st.session_state["w_cs_runs"]) or None)

        labels = {r.key: r.label for r in runs}
        chosen = st.multiselect("Runs", keys, key="w_cs_runs", on_change=runs_changed, label_visibility="collapsed",
                                format_func=lambda k: labels.get(k, k),
                                placeholder="Pick runs…" if runs else "No finished runs yet",
                                help=f"Run folders under {data_dir() / 'runs'}: LoRA = base + adapter, "
                                     "full = the saved model, MoE-LoRA = merged per expert or routing-weighted.")
    with st.container():
        st.markdown("**Checkpoints on disk**")
        c1, c2 = st.columns(2)
        c1.text_input("Fine-tuned folder", key="cs_new_model", placeholder="empty: the base",
                      help="A full fine-tune's folder, or empty when the adapter below is merged into the base")
        c2.text_input("Adapter folder (optional)", key="cs_new_adapter", placeholder="/path/to/lora-adapter")
        if st.button("Add checkpoint", key="cs_add", icon=":material/add:"):
            model = (st.session_state.get("cs_new_model") or "").strip()
            adapter = (st.session_state.get("cs_new_adapter") or "").strip()
            if not model and not adapter:
                st.warning("Enter a fine-tuned folder, an adapter folder, or both.")
            else:
                set_manual_sides(manual_sides() + [[model, adapter]])
    manual = manual_sides()
    for i, (model, adapter) in enumerate(manual):
        c2, c1 = st.columns([1, 20], vertical_alignment="center")
        c1.markdown(f"`{model or base}`" + (f" + adapter `{adapter}`" if adapter else "") + f" vs base `{base}`")
        if c2.button("", key=f"cs_rm_{i}", icon=":material/close:", help="Remove this checkpoint"):
            set_manual_sides(manual[:i] + manual[i + 1:])
            st.rerun()
    sides = build_sides(base, runs, chosen, manual)
    mode = PER_EXPERT
    if any(s.moe for s in sides):
        mode = bound("radio", "MoE-LoRA runs are compared as", "cs_moe", PER_EXPERT,
                     lambda v: v if v in MOE_MODES else PER_EXPERT, options=list(MOE_MODES), horizontal=True,
                     captions=list(MOE_MODES.values()))
    return base, sides, mode


def summary(reports: dict, sides: list[Side]) -> None:
    cols = st.columns(min(len(reports), 4) or 1)
    base_of = {s.label: s.base for s in sides}
    for i, (label, rep) in enumerate(reports.items()):
        with cols[i % len(cols)]:
            st.metric(f"Intruders · {label}", rep.total, help=f"Sum over {rep.counted} at "
                      f"k = {rep.top_k}, ε = {rep.epsilon:g}, vs base {base_of.get(label)}; base SVDs from the "
                      f"disk cache: {rep.cache_hits} of {rep.cache_hits + rep.cache_misses}", border=True)
    table = pd.DataFrame([{
        "fine-tuned": label, "base": short(str(base_of.get(label)), 40), "matrices": len(r.block_comparisons),
        "intruders": r.total, "with intruders": sum(bool(c.intruders(r.epsilon)) for c in r.block_comparisons),
        "ΔW eff. rank": changed_median(r.rows), "seconds": r.elapsed_s} for label, r in reports.items()])
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "matrices": st.column_config.NumberColumn(help="Transformer-block matrices compared (what the count sums)"),
        "with intruders": st.column_config.NumberColumn(help="Matrices with at least one intruder dimension"),
        "ΔW eff. rank": st.column_config.NumberColumn(
            format="%.1f", help="Entropy effective rank of ΔW = W − W0, median over the matrices fine-tuning changed"),
        "seconds": st.column_config.NumberColumn(format="%.1f", help="Time of the comparison (base SVDs are "
                                                 "cached on disk, so a second fine-tune of the same base is faster)")})
    for label, r in reports.items():
        for flag in r.flags:
            st.warning(f"{label}: {flag}", icon=":material/warning:")
        if r.skipped:
            st.warning(f"{label}: {len(r.skipped)} matrices skipped — " + "; ".join(f"{n}: {why}" for n, why in
                                                                               r.skipped[:3]))


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def changed_median(rows: pd.DataFrame) -> float:
    changed = rows.loc[rows["delta_spectral_norm"] > 0, "delta_effective_rank"]
    return float(changed.median()) if len(changed) else 0.0


def matrix_section(reports: dict, eps: float) -> None:
    """Similarity heatmap and spectrum of one matrix of one side."""
    st.subheader("One matrix: where the intruders come from")
    labels = list(reports)
    c1, c2, c3 = st.columns([3, 5, 2])
    label = bound("selectbox", "Fine-tuned side", "cs_side", labels[0],
                  lambda v: v if v in labels else labels[0], where=c1, options=labels)
    rep = reports[label]
    rows = rep.rows
    names = list(rows["name"])
    if not names:
        st.info("No matrices were compared.")
        return
    counts = dict(zip(rows["name"], rows["intruders"]))
    default = str(rows.sort_values("intruders", ascending=False, kind="stable")["name"].iloc[0])
    name = bound("selectbox", "Matrix", "cs_matrix", default, lambda v: v if v in names else default, where=c2,
                 options=names, format_func=lambda n: f"{n} · {plural(counts.get(n, 0), 'intruder')}")
    cmp = rep.comparison(name)
    r0 = cmp.overlap.shape[1]
    m = bound("number_input", "Base vectors shown (m)", "cs_m", min(r0, 40), lambda v: max(1, min(r0, int(v))),
              where=c3, min_value=1, max_value=r0, step=5, help="Columns of the heatmap: the top-m base vectors")
    idx = cmp.intruders(eps)
    st.plotly_chart(cs.similarity_figure(cmp.overlap[:, :m], cmp.similarities, eps, name, r0), key="cs_similarity",
                    width="stretch")
    st.caption(f"Row j is the fine-tuned left singular vector u_j (rank j of the top k = {rep.top_k}); column i is "
               f"the base vector u0_i. A cell is |u_jᵀu0_i| (1 = same direction, 0 = orthogonal). The bars at the "
               f"right are s_j = max_i |u_jᵀu0_i| over all {r0} base vectors (also those beyond the {m} shown): "
               f"u_j is an **intruder dimension** when s_j < ε = {eps:g} (red) — a new high-ranking direction "
               f"that no pre-trained direction explains. Here: {len(idx)} of {len(cmp.similarities)}.")
    st.plotly_chart(cs.spectrum_figure(name, cmp.sigmas, cmp.base_sigmas, idx, label, cmp.similarities),
                    key="cs_spectrum", width="stretch")
    st.caption("Singular values of the fine-tuned matrix by rank (blue) over the base's (grey, dashed); red diamonds "
               "mark the intruder dimensions among the top k. Intruders from low-rank LoRA usually sit at the very "
               "top of the spectrum.")


def _alpha_memo(key, compute):
    """Per-layer α tables memoised like the reports (computing the matrices' SEs takes a moment)."""
    return _memo().get_or_compute(key, compute)


def _result_key(result) -> str:
    return json.dumps(["alpha", result.identity or id(result), result.model], default=str)


def side_layers(side: Side, report: intruders.IntruderReport, device: str):
    """(base, fine-tuned) per-layer α tables of one side; MoE-LoRA: the base's matrices with each adapted one
    replaced by the report's effective matrices (routing-weighted update, or the mean α over its experts)."""
    base = common.analysis_for(common.ModelChoice(side.base, None, device))
    if base is None or not base.layer_rows:
        return None
    b = _alpha_memo(_result_key(base), lambda: alpha_noise.layer_alphas(base.rows, base.evals))
    if side.moe:
        c = report.comparisons
        key = json.dumps(["alpha-moe", _result_key(base), id(c), len(c), c[0].info.name if c else ""])
        f = _alpha_memo(key, lambda: alpha_noise.layer_alphas(base.rows, base.evals,
                                                              alpha_noise.effective_spectra(c)))
        return b, f
    if side.merged:
        key = json.dumps(["alpha-merged", _result_key(base), str(side.run.artifact), _stamp(side.run.artifact)])
        return b, _alpha_memo(key, lambda: _merged_analysis(side, device))
    fine = common.analysis_for(common.ModelChoice(side.model, side.adapter, device))
    if fine is None or not fine.layer_rows:
        return None
    return b, _alpha_memo(_result_key(fine), lambda: alpha_noise.layer_alphas(fine.rows, fine.evals))


def alpha_section(sides: list[Side], reports: dict, moe_mode: str) -> None:
    """α shift per layer (AlphaLoRA layer score, fine-tuned − base) over its noise floor: ±1.96·SE of the fits and,
    when two seeds of one recipe are picked, their seed-to-seed shift."""
    st.subheader("α shift per layer")
    device = common.view("device", "auto")
    shifts, layers = {}, {}
    for side in sides:
        if side.label in reports:
            pair = side_layers(side, reports[side.label], device)
            if pair is not None:
                layers[side.label] = pair[1]
                shifts[side.label] = alpha_noise.alpha_shift(*pair)
    if not shifts:
        return
    by_run = {s.run.key: s.label for s in sides if s.run is not None and s.label in layers}
    pairs = seed_pairs([s.run for s in sides if s.run is not None and s.run.key in by_run])
    seeds = {f"{by_run[a.key]} vs {by_run[b.key]}":
             alpha_noise.seed_shift(layers[by_run[a.key]], layers[by_run[b.key]]) for a, b in pairs}
    st.plotly_chart(cs.alpha_shift_figure(shifts, ALPHA_SCORE[1], seeds), key="cs_alpha", width="stretch")
    inside = ", ".join(f"{label}: {alpha_noise.within_noise(df)} of {len(df)}" for label, df in shifts.items())
    st.caption("Shifts inside the grey band (±1.96·SE, SE = sqrt(SE_base² + SE_ft²) from the Hill fits' (α − 1)/√n) "
               f"are not distinguishable from fit noise — layers inside it: {inside}."
               + (" The dotted band is the α shift between two seeds of the same recipe." if seeds else
                  " Pick two seeds of one recipe to see the seed-to-seed shift too."))
    st.caption("Negative Δα: the layer's spectrum became more heavy-tailed (more strongly trained); positive: "
               "less. α is the mean PL_Alpha_Hill of the block's matrices (AlphaLoRA)."
               + (f" MoE-LoRA runs: each adapted matrix is {MOE_ALPHA[moe_mode]}."
                  if any(s.moe for s in sides if s.label in shifts) else ""))


def mitigation_section(sides: list[Side], reports: dict, eps: float, top_k: int) -> None:
    """λ slider + button: write a checkpoint with the intruders' σ scaled by λ, then show before / after."""
    st.subheader("Mitigation: scale the intruders down")
    st.caption("W' = W + Σ_{intruders j} (λ − 1) σ_j u_j v_jᵀ (Shuttleworth et al.; peft's "
               "`reduce_intruder_dimension`): the intruders' singular values are multiplied by λ, the rest of the "
               "weights stay. The paper reports less forgetting at about the same target accuracy for λ ≈ 0.7.")
    usable = [s for s in sides if s.label in reports and not s.moe and not s.merged]
    if not usable:
        st.info("Mitigation writes a model checkpoint, so it needs a LoRA or full fine-tune (MoE-LoRA experts are "
                "mitigated per expert from the CLI later).", icon=":material/info:")
        return
    labels = [s.label for s in usable]
    c1, c2, c3 = st.columns([3, 2, 3])
    if st.session_state.get("cs_mit_side") not in labels:
        st.session_state["cs_mit_side"] = common.view("cs_side") if common.view("cs_side") in labels else labels[0]
    label = c1.selectbox("Fine-tuned side to mitigate", labels, key="cs_mit_side")
    lam = c2.slider("λ (scale of the intruders' σ)", 0.0, 1.0, 0.7, 0.05, key="cs_lam",
                    help="1 = unchanged, 0 = intruder directions removed; the paper uses 0.7")
    side = usable[labels.index(label)]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(side.adapter or side.model or "model").name).strip("-._") or "model"
    name = c3.text_input("Name of the new checkpoint", value=f"{slug}-lam{lam:g}", key=f"cs_mit_name_{slug}_{lam:g}",
                         help=f"Written to {data_dir() / 'mitigated'}/<name>/ (a new folder)")
    rep = at_epsilon(reports[label], eps)
    if st.button(f"Write mitigated checkpoint ({rep.total} intruders at ε = {eps:g})", key="cs_mitigate",
                 icon=":material/healing:", type="primary", disabled=rep.total == 0):
        st.session_state[MITIGATION_STATE] = run_mitigation(side, name.strip(), lam, top_k, eps)
    if rep.total == 0:
        st.caption("No intruders at this ε: nothing to mitigate.")
    done = st.session_state.get(MITIGATION_STATE)
    if done and done["side"] == label:
        show_mitigation(done, reports[label], eps)


def run_mitigation(side: Side, name: str, lam: float, top_k: int, eps: float) -> dict | None:
    if not NAME_RE.fullmatch(name):
        st.error(f"Bad checkpoint name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter "
                 "or digit.", icon=":material/error:")
        return None
    out = data_dir() / "mitigated" / name
    box = st.empty()
    bar = box.progress(0.0, text="Writing the mitigated checkpoint …")

    def progress(done: int, total: int, matrix: str) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"Mitigating: {done}/{total} matrices · {matrix}")

    try:
        from analysis.sources import open_source
        base_src, ft_src = _source_pair(side)
        result = intruders.mitigate(base_src, ft_src, out, lam=lam, top_k=top_k, epsilon=eps, progress=progress)
        bar.progress(0.0, text="Comparing the mitigated checkpoint with the base …")
        after = intruders.compare(base_src, open_source(out), top_k, eps, progress)
    except SpectrascopeError as err:
        box.empty()
        st.error(f"Could not mitigate **{side.label}**: {err}", icon=":material/error:")
        return None
    box.empty()
    return {"side": side.label, "out": str(out), "lam": lam, "eps": eps, "scaled": result.scaled,
            "total_scaled": result.total_scaled, "after": after}


def show_mitigation(done: dict, before: intruders.IntruderReport, eps: float) -> None:
    after = at_epsilon(done["after"], eps)
    before = at_epsilon(before, eps)
    st.success(f"Wrote `{done['out']}` (λ = {done['lam']:g}: {done['total_scaled']} directions in "
               f"{len(done['scaled'])} matrices scaled at ε = {done['eps']:g}).", icon=":material/check:")
    c = st.columns(3)
    c[0].metric("Intruders before", before.total, border=True)
    c[1].metric("Intruders after", after.total, after.total - before.total, delta_color="inverse", border=True)
    c[2].metric("Directions scaled", done["total_scaled"], border=True)
    st.caption("Mitigation keeps the intruders' directions and shrinks their σ, so a direction that stays among "
               "the top k still counts as an intruder: compare the spectra below. For accuracy before / after, "
               "evaluate the written folder: `python -m training evaluate --base <folder> --task <task>` (a "
               "linear probe on its features for encoders, zero-shot for decoders).")
    scaled = list(done["scaled"])
    name = common.view("cs_matrix")
    name = name if name in done["scaled"] else (scaled[0] if scaled else None)
    if name is None:
        return
    b, a = before.comparison(name), after.comparison(name)
    k = max(before.top_k, 10)
    fig = cs.spectrum_figure(name, b.sigmas, b.base_sigmas, b.intruders(eps), "before mitigation", b.similarities,
                             extra={f"after (λ = {done['lam']:g})": a.sigmas}, max_rank=max(3 * k, 40),
                             title=f"Before / after mitigation — {name}")
    st.plotly_chart(fig, key="cs_mitigated_spectrum", width="stretch")


# ---------------------------------------------------------------- page

def main() -> None:
    common.seed_view(*VIEW)
    st.title("Compare spectra")
    st.caption("What did fine-tuning do to the weights? For each matrix, the top-k singular vectors of the "
               "fine-tuned W are matched against all singular vectors of the base W0; a fine-tuned direction "
               "whose best match |u_jᵀu0_i| is below ε is an **intruder dimension** (Shuttleworth et al., "
               "*LoRA vs Full Fine-tuning: An Illusion of Equivalence*). Low-rank LoRA tends to create them; "
               "full fine-tuning barely does.")
    try:
        runs = list_runs()
    except OSError as err:
        st.warning(f"Could not read the run folders: {err}")
        runs = []
    base, sides, moe_mode = pick_sides(runs)
    c1, c2 = st.columns(2)
    top_k = bound("number_input", "Top-k fine-tuned singular vectors per matrix", "cs_k", intruders.TOP_K,
                  lambda v: max(1, min(100, int(float(v)))), where=c1, min_value=1, max_value=100, step=1,
                  help="The paper uses k = 10")
    eps = bound("slider", "ε (a direction intrudes when its best match with the base is below ε)", "cs_eps",
                intruders.EPSILON, lambda v: round(min(0.95, max(0.05, round(float(v) / 0.05) * 0.05)), 2), where=c2,
                min_value=0.05, max_value=0.95, step=0.05, help="The paper uses ε = 0.5")
    if not sides:
        st.info("Pick one or more runs, or add a checkpoint (a fine-tuned folder and/or a LoRA adapter folder), to "
                "compare with the base.", icon=":material/info:")
        return
    reports = {k: at_epsilon(r, eps) for k, r in compare_all(sides, int(top_k), moe_mode).items()}
    if not reports:
        return
    if any(s.moe for s in sides if s.label in reports):
        st.caption(f"MoE-LoRA runs: **{moe_mode}** — {MOE_MODES[moe_mode]}.")
    summary(reports, sides)
    sweep = cs.sweep_figure({k: r.sweep() for k, r in reports.items()}, eps)
    per_layer = cs.per_layer_figure({k: per_layer_table(r) for k, r in reports.items()}, eps)
    c1, c2 = st.columns(2)
    with c1:
        st.plotly_chart(charts.title_below_modebar(sweep), key="cs_sweep", width="stretch")
    with c2:
        st.plotly_chart(charts.title_below_modebar(per_layer), key="cs_per_layer", width="stretch")
    with st.expander("Per-matrix table"):
        label = st.selectbox("Fine-tuned side", list(reports), key="cs_table_side")
        st.dataframe(reports[label].rows[intruders.ROW_COLUMNS[:12]], hide_index=True, width="stretch")
    matrix_section(reports, eps)
    alpha_section(sides, reports, moe_mode)
    mitigation_section(sides, reports, eps, int(top_k))


if __name__ == "__main__":       # Streamlit runs a page file as __main__; importing it (tests, benchmarks) does not
    main()
