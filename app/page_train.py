"""Train page: submit LoRA / MoE-LoRA / full fine-tunes as background jobs, watch them live, inspect their results."""
from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import streamlit as st

from analysis.config import DEFAULT_MODEL
from analysis.types import SpectrascopeError
from app import charts, charts_runs, common
from training.job_progress import summarise
from app.train_form import K, read_json, run_form
from app.train_format import human_bytes, human_seconds, setting_text, settings_summary
from training import registry
from training.jobs import JobStore, job_processes, read_jsonl

RUN_VIEW = "train_run"                     # the selected run's id, mirrored into the URL (?train_run=3)
common.register_view_keys(RUN_VIEW)
HERE = Path(__file__).resolve().parent
SPECTRA_PAGE, RUNS_PAGE = "page_compare_spectra.py", "page_compare_runs.py"
POLL = "2s"                                # the live views refresh this often while jobs are queued or running
MAX_TABLE_ROWS = 200
MAX_FILES = 300
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")      # terminal colour codes in the worker log
FORM, COLLAPSE, FLASH = K + "form_open", "_tr_collapse", "_tr_flash"


# ---------------------------------------------------------------- small helpers

@st.cache_data(max_entries=512, show_spinner=False)
def _read_progress(path: str, size: int, mtime: float) -> list[dict]:
    """Progress lines of a file, memoised by (path, size, mtime): a finished run's file is read once."""
    return read_jsonl(Path(path))


def progress_lines(job) -> list[dict]:
    path = job.path("progress.jsonl")
    try:
        return _read_progress(str(path), path.stat().st_size, path.stat().st_mtime)
    except OSError:
        return []


# ---------------------------------------------------------------- runs table and run detail

def runs_frame(jobs: list) -> pd.DataFrame:
    """One row per job, newest first: id, name, method, task, status, where, progress, ETA, last loss, started."""
    now = time.time()
    rows = []
    for job in reversed(jobs[-MAX_TABLE_ROWS:]):
        s = summarise(job, progress_lines(job), now)
        rows.append({"id": job.id, "name": job.name, "method": registry.label(job.config.get("method")),
                     "task": job.config.get("task"), "status": job.status, "where": job.where,
                     "progress": 100 * s["progress"],
                     "step": f"{s['step']}/{s['total']}" if s["total"] else "",
                     "ETA": "" if s["eta"] is None else human_seconds(s["eta"]),
                     "last loss": s["loss"], "started": datetime.fromtimestamp(job.started or job.created),
                     "note": (job.error or "").splitlines()[0] if job.status in ("failed", "lost") else ""})
    frame = pd.DataFrame(rows, columns=["id", "name", "method", "task", "status", "where", "progress", "step", "ETA",
                                        "last loss", "started", "note"])
    if not (frame["where"] != "local").any():      # where: only when a run is on a GPU or a cluster (Job.where)
        frame = frame.drop(columns="where")
    return frame if frame["note"].astype(bool).any() else frame.drop(columns="note")


def runs_table(jobs: list) -> None:
    small = {c: st.column_config.Column(c, width="small") for c in ("task", "status", "step", "ETA", "where")}
    config = {**small, "id": st.column_config.NumberColumn("id", format="%d", width="small"),
              "name": st.column_config.TextColumn("name", width="medium"),
              "method": st.column_config.TextColumn("method", width="small"),
              "progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=100, format="%.0f%%",
                                                          width="small"),
              "last loss": st.column_config.NumberColumn("last loss", format="%.4f", width="small"),
              "started": st.column_config.DatetimeColumn("started", format="MMM D, HH:mm", width="small",
                                                         help="when the run started (local time)")}
    st.dataframe(runs_frame(jobs), hide_index=True, width="stretch", key=K + "runs_table", placeholder="",
                 column_config=config)


def artifact_files(run_dir: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(run_dir.rglob("*")):
        if len(rows) >= MAX_FILES:
            break
        if path.is_file():
            size = path.stat().st_size
            rows.append({"file": str(path.relative_to(run_dir)), "size": human_bytes(size), "bytes": size})
    return pd.DataFrame(rows, columns=["file", "size", "bytes"])


def metrics_frame(result: dict) -> pd.DataFrame:
    """Validation (best pass) and test metrics side by side."""
    table = {split: result.get(split) for split in ("validation", "test") if isinstance(result.get(split), dict)}
    return pd.DataFrame(table).rename_axis("metric")


def run_links(job) -> None:
    """Links to the comparison pages for a finished run (only those whose page file exists), preset to this run."""
    links = [(SPECTRA_PAGE, "Compare spectra", ":material/difference:",
              {"cs_runs": Path(job.run_dir).name, "cs_base": job.config.get("model") or DEFAULT_MODEL}),
             (RUNS_PAGE, "Compare runs", ":material/leaderboard:", {"study": "all"})]
    links = [link for link in links if (HERE / link[0]).is_file()]
    if links:
        st.markdown("**Compare this run**")
    for page, label, icon, params in links:
        for name, value in params.items():      # as page_compare_runs does: main.py's URL sync drops the link's
            common.set_view(name, value)        # query parameters once the target page has registered them
        st.page_link(page, label=label, icon=icon, query_params=params)


def cancel_button(store: JobStore, job) -> None:
    if not st.button("Cancel run", icon=":material/cancel:", key=f"{K}cancel_{job.id}",
                     help="Queued: removed at once. Running: the trainer stops at its next step (then SIGTERM)."):
        return
    try:
        with st.spinner(f"Cancelling run #{job.id}…"):
            store.cancel(job.id, grace=2.0)
    except SpectrascopeError as err:
        st.error(str(err), icon=":material/error:")
        return
    st.rerun()                             # everything (table, polling) reflects the cancellation


def resume_button(store: JobStore, job) -> None:
    """A cancelled, lost or failed run with a checkpoint can continue from it (JobStore.resume)."""
    from training import checkpoint

    found = checkpoint.latest(job.run_dir) if job.run_dir else None
    if found is None:
        st.caption("No checkpoint was written before it stopped: it cannot be resumed (submit it again).")
        return
    step = checkpoint.step_of(found)
    if not st.button(f"Resume from step {step}", icon=":material/play_arrow:", key=f"{K}resume_{job.id}",
                     help="Queue it again in the same run folder: training continues after the last checkpoint."):
        return
    try:
        store.resume(job.id)
    except SpectrascopeError as err:
        st.error(str(err), icon=":material/error:")
        return
    st.rerun()


def run_detail(store: JobStore, jobs: list) -> None:
    """Pick a run (its id lives in the URL) and show its curves, log, metrics and artifacts."""
    by_id = {j.id: j for j in jobs}
    wanted = common.view(RUN_VIEW)
    if wanted is not None and (not wanted.isdigit() or int(wanted) not in by_id):
        st.warning(f"No run with id {wanted}: showing the newest.", icon=":material/warning:")
        common.set_view(RUN_VIEW, None)
    ids = sorted(by_id, reverse=True)
    job_id = common.bound_selectbox("Run", ids, RUN_VIEW, default=ids[0],
                                    format_func=lambda i: f"#{i} {by_id[i].name} · {by_id[i].status}")
    job = by_id[job_id]
    lines = progress_lines(job)
    s = summarise(job, lines)
    result = job.result() or {}
    cfg = job.config
    m = st.columns([1.4, 1, 1, 1, 1, 1])      # "cancelled" fits whole
    m[0].metric("Status", job.status)
    m[1].metric("Step", f"{s['step']}/{s['total']}" if s["total"] else "—")
    m[2].metric("Last loss", f"{s['loss']:.4f}" if s["loss"] is not None else "—")
    elapsed = ((job.finished or time.time()) - job.started) if job.started else None
    m[3].metric("Elapsed", "—" if elapsed is None else human_seconds(elapsed))
    test = result.get("test") or {}
    metric = result.get("metric") or "accuracy"
    m[4].metric(f"Test {metric}", f"{test[metric]:.4f}" if metric in test else "—")
    m[5].metric("Trainable params", common.human_count(result.get("trainable_params")))
    alloc = (cfg.get("allocation") or {}).get("name") or (cfg.get("allocation") or {}).get("strategy")
    procs = int(result.get("processes") or job_processes(cfg))
    st.caption(f"{registry.label(cfg.get('method'))} · model {cfg.get('model') or DEFAULT_MODEL}"
               f" · task {cfg.get('task')}{setting_text(cfg)} · seed {cfg.get('seed')}"
               + (f" · allocation {alloc}" if alloc else "")
               + (f" · {procs} data-parallel processes" if procs > 1 else "")
               + f" · folder `{job.run_dir}`")
    if job.status in ("failed", "lost"):
        st.error(f"Run #{job.id} {job.status}: {job.error or 'no error recorded'}", icon=":material/error:")
    elif job.status == "cancelled":
        st.info(f"Run #{job.id} was cancelled.", icon=":material/cancel:")
    if not job.final:
        cancel_button(store, job)
    elif job.status in ("cancelled", "lost", "failed"):
        resume_button(store, job)
    if job.status == "running" and s["total"] and s["step"] >= s["total"]:
        st.caption("Training is over: testing on the test split and saving the artifacts…")
    if job.status == "queued":
        st.info("Queued: it starts when a running job ends ($SPECTRASCOPE_MAX_JOBS at once on CPU, one per GPU).")
    left, right = st.columns(2)
    with left:
        if any("loss" in ln for ln in lines):
            st.plotly_chart(charts.title_below_modebar(charts_runs.run_loss_figure(lines)), key=f"{K}loss_chart", width="stretch")
        else:
            st.caption("The loss curve appears after the first training step (loading the model takes a moment).")
    with right:
        fig = charts_runs.run_eval_figure(lines)
        if fig is not None:
            st.plotly_chart(charts.title_below_modebar(fig), key=f"{K}eval_chart", width="stretch")
        else:
            every = cfg.get("eval_every")
            st.caption("Validation metrics appear after the first validation pass "
                       f"({'every ' + str(every) + ' steps and ' if every else ''}at the end).")
    if cfg.get("method") in registry.names() and registry.get(cfg["method"]).extra_loss is not None and lines:
        st.caption(f"{registry.label(cfg['method'])}'s training loss includes its extra term (load balancing); "
                   "the validation loss does not.")
    if result.get("status") == "done":
        left, right = st.columns([1, 2])
        left.markdown(f"**Metrics** (validation: the best pass, step {result.get('best_step')}; test: after training)")
        left.dataframe(metrics_frame(result), width="content")
        with right:
            run_links(job)
    tab_log, tab_files, tab_manifest = st.tabs(["Log", "Artifacts", "Manifest and result"], key=K + "tabs")
    with tab_log:
        st.code(ANSI.sub("", job.log_tail(40)) or "(no log yet)", language=None)
    with tab_files:
        files = artifact_files(Path(job.run_dir))
        if files.empty:
            st.caption("No files yet.")
        else:
            st.dataframe(files[["file", "size"]], hide_index=True, width="stretch")
            st.caption(f"{len(files)} files, {human_bytes(int(files['bytes'].sum()))} in `{job.run_dir}`")
    with tab_manifest:
        shown = {"result.json": result, "manifest.json": read_json(job.path("manifest.json"))}
        for title, value in shown.items():
            if value:
                st.markdown(f"**{title}**")
                st.json(value, expanded=1)
        if not any(shown.values()):
            st.caption("The manifest is written when the model and data are loaded; the result when the run ends.")


# ---------------------------------------------------------------- page

def guarded(section, *args):
    """Run a page section and return what it returns; a SpectrascopeError shows its message, anything else a short
    error (never a traceback), and gives None."""
    try:
        return section(*args)
    except SpectrascopeError as err:
        st.error(str(err), icon=":material/error:")
    except Exception as err:  # noqa: BLE001 - the UI's last line of defence
        common.show_unexpected(err)
    return None


def submitted(job) -> None:
    """After a submit: select the new run, fold the form away (the runs come into view) and say what was queued."""
    common.set_view(RUN_VIEW, job.id)
    st.session_state[FLASH] = (f"Submitted run **#{job.id} {job.name}** ({job.status}): "
                               f"{settings_summary(job.config)}. Its progress is below.")
    st.session_state[COLLAPSE] = True
    st.rerun()


def main() -> None:
    common.seed_view(RUN_VIEW)            # the URL seeds the selection on first visit
    st.title("Train")
    st.caption("Fine-tune with any registered method (LoRA and its SVD family, MoE-LoRA with an allocation from the "
               "Allocate page, MiLoRA, full fine-tuning) here, on a Slurm or on a Ray cluster. "
               "Each run is a background process: it keeps going when you leave this page or close the browser.")
    try:
        store = JobStore()
        jobs = store.list()
    except SpectrascopeError as err:
        st.error(str(err), icon=":material/error:")
        return
    if st.session_state.pop(COLLAPSE, False):
        st.session_state[FORM] = False
    with st.expander("New run", expanded=not jobs, icon=":material/add_circle:", key=FORM, on_change="rerun"):
        job = guarded(run_form, store)
    if job is not None:
        submitted(job)
    active = any(not j.final for j in store.list(reconcile=False))
    flash = st.session_state.pop(FLASH, None)

    @st.fragment(run_every=POLL if active else None)
    def live() -> None:
        try:
            jobs = store.list()
        except SpectrascopeError as err:
            st.error(str(err), icon=":material/error:")
            return
        st.subheader("Runs")
        if flash:                         # shown until the next full rerun (the fragment's polls keep it)
            st.success(flash, icon=":material/check_circle:")
        if not jobs:
            st.info("No runs yet: fill in the form above and press **Submit**.", icon=":material/info:")
            return
        runs_table(jobs)
        if active:
            st.caption(f"Refreshing every {POLL} while runs are queued or running.")
        st.subheader("Run detail")
        guarded(run_detail, store, jobs)
        common.sync_query_params()        # a fragment rerun skips main.py's sync: keep the URL current
        if active and all(j.final for j in jobs):
            st.rerun()                    # the last job ended: one full rerun stops the polling

    live()


if __name__ == "__main__":       # Streamlit runs a page file as __main__; importing it (tests, benchmarks) does not
    main()
