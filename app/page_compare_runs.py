"""Compare runs page: a study's (or all) runs, seeds aggregated, paired differences, CI bars, Pareto, loss curves."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from analysis.config import DEFAULT_MODEL, data_dir
from analysis.types import SpectrascopeError
from app import charts, charts_runs, common
from training import study as studies
from training import study_report

ALL_RUNS = "all"
SPECTRA_PAGE = "page_compare_spectra.py"
HAS_KALEIDO = importlib.util.find_spec("kaleido") is not None
VIEW = ("study", "split", "cmp_metric")
common.register_view_keys(*VIEW)


# ---------------------------------------------------------------- data

def load_runs(choice: str) -> tuple[pd.DataFrame, list, dict | None]:
    """(runs frame incl. base rows, the jobs, the study record or None) for a study id or all runs."""
    from training.jobs import JobStore

    store = JobStore()
    if choice != ALL_RUNS:
        runs, record = studies.study_runs(choice, store)
        return runs, studies.study_jobs(record, store), record
    from training.base_jobs import is_base_eval

    jobs = [j for j in store.list() if not is_base_eval(j.config)]      # base evaluations: the base rows
    runs = studies.runs_frame(jobs)
    bases = [studies.base_frame(m, t) for m, t in runs[["model", "task"]].drop_duplicates().itertuples(index=False)] \
        if len(runs) else []
    return pd.concat([runs, *bases], ignore_index=True), jobs, None


def metric_options(table: pd.DataFrame, split: str) -> list[str]:
    """The metrics a table has for one split (accuracy first)."""
    return [c.split(" ", 1)[1] for c in studies.metric_columns(table) if c.startswith(split + " ")]


# ---------------------------------------------------------------- figures

def chart(fig: go.Figure, key: str, stem: str) -> None:
    """A Plotly chart whose modebar camera saves a PNG named after the study (plus a button with kaleido)."""
    fig = charts.title_below_modebar(fig)
    st.plotly_chart(fig, key=key, width="stretch", config={
        "displaylogo": False,
        "toImageButtonOptions": {"format": "png", "filename": f"{stem}-{key}", "scale": 2}})
    if HAS_KALEIDO:
        st.download_button("PNG", fig.to_image(format="png", scale=2), f"{stem}-{key}.png", "image/png",
                           key=f"png_{key}", icon=":material/image:")


# ---------------------------------------------------------------- sections

def duration(seconds: float) -> str:
    """'about 40 s', 'about 12 min', 'about 1.5 h'."""
    if seconds < 90:
        return f"about {max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


@st.cache_data(ttl=60, show_spinner=False, max_entries=32)
def _plan(spec_json: str, data: str) -> dict:
    import json

    return studies.plan_study(studies.StudySpec(**json.loads(spec_json)))


def plan_text(spec) -> str:
    """What queueing this study means: how many runs and roughly how long (study.plan_study's estimate)."""
    import json
    from dataclasses import asdict

    n_runs = spec.seeds * len(spec.methods)
    if not hasattr(studies, "plan_study"):
        return f"Queues {n_runs} runs ({len(spec.methods)} methods × {spec.seeds} seeds) and the base baselines."
    try:
        plan = _plan(json.dumps(asdict(spec), sort_keys=True), str(data_dir()))     # the data dir holds the history
    except SpectrascopeError as err:
        return f"Queues {n_runs} runs ({len(spec.methods)} methods × {spec.seeds} seeds); no time estimate: {err}"
    return (f"Queues {plan['runs']} runs ({len(spec.methods)} methods × {spec.seeds} seeds) and the base "
            f"baselines: {duration(plan['seconds'])} in all on this machine (a rough estimate).")


def study_form() -> None:
    """Model, task, budget, seeds, steps, row limits → how many runs and roughly how long → start_study."""
    from training.tasks import list_tasks

    c = st.columns([3, 2, 1, 1, 1])
    model = c[0].text_input("Model", value=common.current_choice().model, key="study_model",
                            help="A built-in name or a checkpoint folder (the sidebar's model by default)")
    tasks = list_tasks()
    task = c[1].selectbox("Task", tasks, index=tasks.index("rotten_tomatoes") if "rotten_tomatoes" in tasks else 0,
                          key="study_task")
    budget = c[2].number_input("Expert budget", 0, 10_000, 0, key="study_budget",
                               help="MoE-LoRA experts over all layers; 0 = 5 × layers")
    defaults = studies.STUDY_DEFAULTS                       # the sweep-backed budget the CLI uses too
    seeds = c[3].number_input("Seeds", 1, 20, 3, key="study_seeds")
    steps = c[4].number_input("Max steps", 0, 100_000, defaults["max_steps"] or 0, key="study_steps",
                              help="optimizer steps per run; 0 = one epoch")
    d = st.columns(4)
    rows = {}
    for col, (label, key) in zip(d, (("Train rows", "max_train_rows"), ("Validation rows", "max_eval_rows"),
                                     ("Test rows", "max_test_rows"))):
        rows[key] = col.number_input(label, 0, 1_000_000, defaults[key] or 0, key=f"study_{key}",
                                     help="0 = every row of the split")
    spec = studies.StudySpec(model=(model or "").strip() or None, task=task, budget=int(budget) or None,
                             seeds=int(seeds), max_steps=int(steps) or None,
                             options={key: int(v) or None for key, v in rows.items()})
    submitted = d[3].button("Queue the study", type="primary", icon=":material/play_arrow:", key="study_start")
    st.caption(plan_text(spec))
    if not submitted:
        return
    try:
        with st.spinner("Analysing the model for AlphaLoRA and queueing the jobs…"):
            record = studies.start_study(spec)
    except SpectrascopeError as err:
        st.error(f"Could not start the study: {err}", icon=":material/error:")
        return
    common.set_view("study", record["id"])
    st.rerun()


def cancel_button(choice: str) -> None:
    """'Cancel study': cancels every queued or running run of the selected study (study.cancel_study)."""
    if choice == ALL_RUNS:
        return
    if st.button("Cancel study", key=f"cancel_study_{choice}", icon=":material/cancel:",
                 help="Cancel all of this study's queued and running runs; finished runs are kept"):
        try:
            cancelled = studies.cancel_study(int(choice))
        except SpectrascopeError as err:
            st.error(str(err), icon=":material/error:")
            return
        st.session_state["study_cancelled"] = f"Study {choice}: {len(cancelled)} runs cancelled."
        st.rerun()


def status_line(jobs: list, record: dict | None, slot) -> bool:
    """Progress of the selection; True while something runs."""
    ended = sum(j.final for j in jobs)
    running = [j for j in jobs if j.status == "running"]
    base = bool(record) and studies.base_eval_running(record)
    active = ended < len(jobs) or base
    if not active:
        failed = [j for j in jobs if j.status != "done"]
        cancelled = sum(j.status == "cancelled" for j in jobs)
        if failed:
            slot.warning(f"{len(jobs) - len(failed)} done / {len(jobs)} planned"
                         + (f" ({cancelled} cancelled)" if cancelled else "") + ": "
                         + ", ".join(f"{j.name} ({j.status})" for j in failed[:6]), icon=":material/warning:")
        else:
            slot.caption(f":material/check_circle: {len(jobs)} done / {len(jobs)} planned")
        return False
    done, cancelled = sum(j.status == "done" for j in jobs), sum(j.status == "cancelled" for j in jobs)
    text = f"{done} done / {len(jobs)} planned" + (f" ({cancelled} cancelled)" if cancelled else "")
    if running:
        lines = running[0].progress()
        step = f" · step {lines[-1]['step']}/{lines[-1]['total_steps']}" if lines else " · loading"
        text += f" · running {running[0].name}{step}"
    if base:
        text += " · base-model baselines being evaluated"
    slot.progress(ended / max(len(jobs), 1), text=text + " · partial results refresh every 2 s")
    return True


def spectra_links(runs: pd.DataFrame, stem: str) -> None:
    """Pick runs and open them in the spectral comparison page (its view keys cs_runs / cs_base, in the URL and
    in session state so that a page visited before still switches to these runs)."""
    done = runs[(runs["status"] == "done") & runs["seed"].notna()]
    if done.empty:
        return
    folders = {r.run_id: Path(str(r.run_dir)).name for r in done.itertuples()}
    labels = {r.run_id: f"{r.name} ({r.method})" for r in done.itertuples()}
    default = done.drop_duplicates("method")["run_id"].tolist()
    c1, c2 = st.columns([4, 1])
    chosen = c1.multiselect("Runs to compare spectrally (intruder dimensions, α shift)", list(labels),
                            default=default[:4], format_func=labels.get, key=f"spectra_pick_{stem}_{len(done)}")
    params = {"cs_runs": ",".join(folders[r] for r in chosen), "cs_base": str(done["model"].iloc[0])}
    if not (Path(__file__).parent / SPECTRA_PAGE).is_file():
        c2.caption("The spectra page is not installed.")
        return
    if chosen:
        for name, value in params.items():
            st.session_state[f"view_{name}"] = value
    with c2:
        st.page_link(SPECTRA_PAGE, label="Compare spectra", icon=":material/difference:", query_params=params,
                     disabled=not chosen)


def results(choice: str) -> bool:
    """Everything that changes while jobs run: progress, table, charts, downloads."""
    try:
        runs, jobs, record = load_runs(choice)
    except SpectrascopeError as err:
        st.error(str(err), icon=":material/error:")
        return False
    if runs.empty:
        st.info("No runs yet: queue a study above, or submit runs with `python -m training submit`.",
                icon=":material/info:")
        return False
    active = status_line(jobs, record, st.empty())     # one slot whether or not it shows: a stable layout
    table = studies.summarise_runs(runs)
    stem = f"study{choice}" if choice != ALL_RUNS else "all-runs"

    st.subheader("Runs, seeds aggregated")
    c1, c2, _ = st.columns([1, 2, 3])
    split = common.bound_selectbox("Split", ["test", "validation"], "split", where=c1,
                                   help="Select settings on validation; report test once.")
    options = metric_options(table, split)
    if not options:
        st.dataframe(studies.format_table(table), hide_index=True, width="stretch")
        st.info("No metrics yet: the first run is still training.", icon=":material/hourglass_top:")
        return active
    metric = common.bound_selectbox("Metric", options, "cmp_metric", where=c2)
    shown = studies.format_table(table, (split,), describe=True)
    constant = [c for c in ("model", "task") if shown[c].nunique() == 1]
    if constant:
        st.caption(" · ".join(f"{c}: **{shown[c].iloc[0]}**" for c in constant))
    st.dataframe(shown.drop(columns=constant), hide_index=True, width="stretch")
    st.caption("Validation: the best validation score during training, used to select the checkpoint; test: that "
               "checkpoint scored once. Trained methods: mean ± Student-t 95 % CI over n finished seeds (no "
               "interval with n = 1). Base rows: accuracy [Wilson 95 % interval over the rows scored].")
    if record is not None:
        paired_section(record, jobs)
    d1, d2, _ = st.columns([1, 1, 4])
    d1.download_button("Download CSV", table.to_csv(index=False).encode(), f"{stem}-table.csv", "text/csv",
                       icon=":material/download:", help="numeric table: mean, CI half-width and n per metric")
    d2.download_button("Runs CSV", runs.to_csv(index=False).encode(), f"{stem}-runs.csv", "text/csv",
                       icon=":material/download:", help="one row per run (every seed)")

    left, right = st.columns(2)
    with left:
        chart(charts_runs.bars_figure(table, split, metric), "bars", stem)
    with right:
        chart(charts_runs.pareto_figure(table, split, metric), "pareto", stem)
    curves = studies.loss_curves(jobs)
    if not curves.empty:
        chart(charts_runs.study_loss_figure(curves), "loss", stem)
    st.caption("MoE-LoRA training losses include the load-balancing term (c · Σ over blocks, c = 0.001 by default). "
               "PNG: the camera icon at the top right of each chart saves it" +
               ("." if HAS_KALEIDO else " (kaleido is not installed, so the browser draws the PNG)."))
    spectra_links(runs, stem)
    lm_eval_section(runs, stem)
    return active


def lm_eval_section(runs: pd.DataFrame, stem: str) -> None:
    """lm-evaluation-harness results of these runs and their base models (evaluate --harness lm_eval, or the
    New-run form's end-of-run pass), with lm-eval's stderr as the interval; nothing when none are stored."""
    from app import charts_lm_eval
    from training.lm_eval_harness import base_run_id, results_frame

    ids = set(runs["run_id"].astype(str)) | {base_run_id(m) for m in runs["model"].dropna().unique()}
    frame = results_frame(sorted(ids))
    if frame.empty:
        return
    frame = charts_lm_eval.labelled(frame, dict(zip(runs["run_id"].astype(str), runs["name"].astype(str))))
    st.subheader("lm-evaluation-harness")
    c1, c2, _ = st.columns([2, 2, 2])
    task = c1.selectbox("lm-eval task", sorted(frame["task"].unique()), key=f"lm_eval_task_{stem}")
    metric = c2.selectbox("lm-eval metric", sorted(frame[frame["task"] == task]["measure"].unique()),
                          key=f"lm_eval_metric_{stem}_{task}")
    chart(charts_lm_eval.bars(frame, task, metric), "lm_eval", stem)
    st.dataframe(charts_lm_eval.table(frame), hide_index=True, width="stretch")
    st.caption("Scored by lm-evaluation-harness on the task's test split (docs/lm_eval.md). Interval: ± 1.96 × "
               "lm-eval's own standard error over the documents scored (none for perplexities); with a limit, "
               "the number comes from the first N documents only.")


def paired_section(record: dict, jobs: list) -> None:
    """Each arm against its reference arm: paired test-accuracy difference with a bootstrap 95 % CI and a verdict."""
    pairs = study_report.paired_comparisons(record, jobs)
    if not pairs:
        return
    st.subheader("Paired comparison with the reference arm")
    st.dataframe(study_report.comparison_frame(pairs), hide_index=True, width="stretch")
    st.caption(f"Test accuracy of the arm minus its reference (allocation strategies against MoE-LoRA uniform, "
               f"other methods against LoRA), paired over the same test rows and seeds: paired bootstrap of the "
               f"rows ({study_report.RESAMPLES:,} resamples, percentile 95 % CI; the interval covers test-row "
               f"sampling for these seeds). An interval containing 0 means no detectable difference.")


def main() -> None:
    common.seed_view(*VIEW)          # the URL seeds this page's view on its first visit
    st.title("Compare runs")
    st.caption("Fine-tunes side by side, every method's runs (a study's arms: LoRA, MoE-LoRA uniform / MoLA / "
               "AlphaLoRA, full fine-tuning, …), seeds aggregated to mean ± 95 % CI (Student t; none at n = 1), with "
               "the base model's baselines (a linear probe and the untrained head for encoders, zero-shot for "
               "decoders) and lm-evaluation-harness scores where a run has them.")
    try:
        records = studies.list_studies()
    except SpectrascopeError as err:
        st.error(str(err), icon=":material/error:")
        records = []
    with st.expander("Run a study", expanded=not records, icon=":material/science:"):
        study_form()
    options = [str(r["id"]) for r in reversed(records)] + [ALL_RUNS]
    names = {str(r["id"]): f"Study {r['id']}: {r['spec']['model'] or DEFAULT_MODEL} · {r['spec']['task']} · "
                           f"{len(r['jobs'])} runs" for r in records}
    names[ALL_RUNS] = "All runs"
    wanted = common.view("study")
    if wanted and wanted not in options:
        st.error(f"No study with id {wanted}: pick one below.", icon=":material/error:")
        common.set_view("study", None)
    choice = common.bound_selectbox("Runs", options, "study", default=options[0], format_func=names.get)
    running = _running(choice)
    if "study_cancelled" in st.session_state:
        st.success(st.session_state.pop("study_cancelled"), icon=":material/cancel:")
    if running:
        cancel_button(choice)

    @st.fragment(run_every="2s" if running else None)
    def live() -> None:
        still = results(choice)
        if running and not still:
            st.rerun()                      # the last job ended: one full rerun stops the polling

    live()


def _running(choice: str) -> bool:
    from training.jobs import JobStore

    try:
        if choice == ALL_RUNS:
            return any(not j.final for j in JobStore().list())
        return studies.study_running(studies.load_study(choice))
    except SpectrascopeError:
        return False


if __name__ == "__main__":       # Streamlit runs a page file as __main__; importing it (benchmarks) does not
    main()
