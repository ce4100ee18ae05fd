"""Train page: submit LoRA / MoE-LoRA / full fine-tunes as background jobs, watch them live, inspect their results."""
from __future__ import annotations

import json
import os
import re
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from analysis.config import DEFAULT_MODEL, data_dir
from analysis.types import SpectrascopeError
from app import common
from app.train_format import human_bytes, human_seconds
from training.jobs import NAME_RE, JobStore, default_name, gpu_count, job_processes, read_jsonl
from training.model_check import model_problem
from training import registry
from training.trainer import TrainConfig

try:
    from analysis import allocation_store as ALLOC_STORE
except ImportError:                        # not there: the page reads data_dir()/allocations/*.json itself
    ALLOC_STORE = None

RUN_VIEW = "train_run"                     # the selected run's id, mirrored into the URL (?train_run=3)
common.register_view_keys(RUN_VIEW)
HERE = Path(__file__).resolve().parent
SPECTRA_PAGE, RUNS_PAGE = "page_compare_spectra.py", "page_compare_runs.py"
NO_ALLOCATION = "(none)"
POLL = "2s"                                # the live views refresh this often while jobs are queued or running
MAX_TABLE_ROWS = 200
MAX_FILES = 300
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")      # terminal colour codes in the worker log
LEGEND = dict(orientation="h", y=-0.3, x=0, xanchor="left", yanchor="top")     # below: clear of the modebar
K = "tr_"                                  # prefix of this page's widget keys
FORM, COLLAPSE, FLASH = K + "form_open", "_tr_collapse", "_tr_flash"
DEFAULTS = TrainConfig()                   # the form shows TrainConfig's defaults


# ---------------------------------------------------------------- small helpers

def check_run_name(name: str) -> str | None:
    """Why a run name is not allowed, or None (an empty name is fine: a default is used)."""
    return None if not name or NAME_RE.fullmatch(name) else (
        f"Run name {name!r} is not allowed: use 1–64 letters, digits, '_', '.' or '-', starting with a letter or "
        "digit (no '/', spaces or '..').")


def summarise(job, lines: list[dict], now: float | None = None) -> dict:
    """Progress (0–1), step, total, ETA (s) and last loss of a job, from its progress lines."""
    now = now or time.time()
    steps = [ln for ln in lines if "step" in ln]
    last = steps[-1] if steps else {}
    step, total = int(last.get("step") or 0), int(last.get("total_steps") or 0)
    progress = 1.0 if job.status == "done" else (min(step / total, 1.0) if total else 0.0)
    eta = None
    if job.status == "running" and total and step:     # the rate since the first step (model loading excluded)
        t0, s0 = (steps[0]["time"], steps[0]["step"]) if len(steps) > 1 else (job.started or now, 0)
        per_step = (last.get("time", now) - t0) / max(step - s0, 1)
        eta = max(0.0, per_step * (total - step) - (now - last.get("time", now)))
    return {"progress": progress, "step": step, "total": total, "eta": eta, "loss": last.get("loss")}


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


# ---------------------------------------------------------------- tasks, models, allocations

@st.cache_data(ttl=60, show_spinner=False)
def task_kinds(data: str) -> dict[str, str]:
    """Registered task name -> kind (built-ins and <data>/tasks); unreadable configs are left out."""
    from training.tasks import list_tasks, load_task

    kinds = {}
    for name in list_tasks():
        try:
            kinds[name] = load_task(name).kind
        except SpectrascopeError:
            continue
    return kinds


def model_layers(model: str) -> int | None:
    """Transformer layers of a model: config.json's num_hidden_layers, else read from the (built-in) source."""
    config = Path(model).expanduser() / "config.json"
    if not config.is_file():
        return _source_layers(model)
    values = read_json(config)
    layers = values.get("num_hidden_layers") or values.get("n_layer") if isinstance(values, dict) else None
    return layers if isinstance(layers, int) else None


@st.cache_data(max_entries=16, show_spinner="Reading the model's layer count…")
def _source_layers(model: str) -> int | None:
    from analysis.allocation import n_layers_of
    from analysis.sources import open_source

    source = open_source(model)
    layers = (source.config or {}).get("num_hidden_layers")
    return int(layers) if layers else n_layers_of(source.matrices())


def saved_allocations() -> tuple[list[tuple[str, str | None]], str | None]:
    """([(name, error or None)], name of the one chosen for training on the Allocate page)."""
    if ALLOC_STORE is not None:
        return [(s.name, s.error) for s in ALLOC_STORE.list_saved()], ALLOC_STORE.current_name()
    folder = data_dir() / "allocations"
    chosen = read_json(folder / "current.json")
    out = []
    for path in sorted(folder.glob("*.json"), key=lambda p: -p.stat().st_mtime):
        try:
            if path.stem != "current":
                load_allocation(path.stem)
                out.append((path.stem, None))
        except SpectrascopeError as exc:
            out.append((path.stem, str(exc)))
    return out, chosen.get("name") if isinstance(chosen, dict) else None


def _has_ranks(name: str) -> bool:
    try:
        return bool((load_allocation(name).lora_config or {}).get("rank_pattern"))
    except SpectrascopeError:
        return False


def load_allocation(name: str):
    """A saved allocation (analysis.allocation.Allocation) by name; SpectrascopeError if unreadable."""
    if ALLOC_STORE is not None:
        return ALLOC_STORE.load(name)
    from analysis.allocation import from_json

    try:
        return from_json((data_dir() / "allocations" / f"{name}.json").read_text())
    except OSError as exc:
        raise SpectrascopeError(f"cannot read allocation {name!r}: {exc}") from None


# ---------------------------------------------------------------- the form

def _default(key: str, value) -> str:
    """Seed a widget's state once (widgets are created with key only, never with value=, so no warnings)."""
    st.session_state.setdefault(K + key, value)
    return K + key


def model_picker(where) -> str:
    """Built-ins, the sidebar's model, or another folder; returns the model spec the trainer gets."""
    sidebar = common.view("model", DEFAULT_MODEL)
    options = list(common.BUILTINS) + ([sidebar] if sidebar not in common.BUILTINS else []) + [common.OTHER]
    key = _default("model", sidebar)
    if st.session_state[key] not in options:
        st.session_state[key] = sidebar
    choice = where.selectbox("Model", options, key=key, help="Defaults to the sidebar's model. The embedded "
                             "all-MiniLM-L6-v2 trains in minutes on CPU; SmolLM2 (a 135M decoder) is much slower.")
    if choice == common.OTHER:
        return where.text_input("Model folder", key=_default("model_path", ""), placeholder="/path/to/checkpoint",
                                help="A folder with config.json, weights and a tokenizer").strip()
    return choice


def allocation_section(method: str, model: str) -> tuple[dict | None, list[str]]:
    """The allocation picker (LoRA: rank_pattern, MoE-LoRA: experts + top-k per layer); (allocation dict, problems)."""
    problems: list[str] = []
    spec = registry.get(method)
    if spec.allocation is None:
        st.caption(f"{spec.label} takes no allocation: the same settings for every layer.")
        return None, problems
    experts = spec.allocation == "experts"
    saved, current = saved_allocations()
    names = [n for n, err in saved if err is None]
    broken = [(n, err) for n, err in saved if err is not None]
    key = _default(f"alloc_{method}", current if current in names and (experts or _has_ranks(current))
                   else NO_ALLOCATION)
    if st.session_state[key] not in [NO_ALLOCATION] + names:
        st.session_state[key] = NO_ALLOCATION
    c1, c2 = st.columns([1, 2])
    what = "experts and top-k per layer" if experts else "LoRA ranks per layer (rank_pattern)"
    pick = c1.selectbox("Allocation", [NO_ALLOCATION] + names, key=key, format_func=lambda n: n + " (current)" * (
        n == current), help=f"A saved allocation from the Allocate page gives the {what}; (current): the one its **Use "
        f"for training** chose. {NO_ALLOCATION}: the same settings for every layer.")
    for name, err in broken:
        c2.warning(f"Saved allocation **{name}** cannot be used: {err}", icon=":material/warning:")
    if pick == NO_ALLOCATION:
        if experts:
            a, b = c2.columns(2)
            a.number_input("Experts per layer", 1, 64, step=1, key=_default("experts", DEFAULTS.experts))
            b.number_input("Top-k (experts per token)", 1, 64, step=1, key=_default("top_k", DEFAULTS.top_k))
        else:
            c2.caption(f"Every adapted matrix gets rank {st.session_state.get(K + 'rank', DEFAULTS.rank)}. Save an "
                       "allocation with α-driven LoRA ranks on the Allocate page to vary the rank per layer.")
        if not names and not broken:
            c2.caption("No saved allocations yet: the Allocate page's **Use for training** saves one.")
        return None, problems
    try:
        alloc = load_allocation(pick)
    except SpectrascopeError as err:
        problems.append(f"Allocation **{pick}** cannot be read: {err}")
        return None, problems
    n_alloc = len(alloc.experts)
    with c2:
        st.caption(f"**{pick}** · strategy {alloc.strategy} · made for {alloc.model or 'an unnamed model'} · "
                   f"{n_alloc} layers")
        if experts:
            st.dataframe(pd.DataFrame([alloc.experts, alloc.top_k], index=["experts", "top-k"],
                                      columns=[f"L{i}" for i in range(n_alloc)]), width="stretch")
            st.caption(f"{alloc.total} experts in all; rank {st.session_state.get(K + 'rank', DEFAULTS.rank)} each.")
        elif alloc.lora_config and alloc.lora_config.get("rank_pattern"):
            pattern = alloc.lora_config["rank_pattern"]
            if alloc.ranks:
                st.dataframe(pd.DataFrame([alloc.ranks], index=["rank"], columns=[f"L{i}" for i in range(n_alloc)]),
                             width="stretch")
            with st.expander(f"rank_pattern ({len(pattern)} keys)"):
                st.json(alloc.lora_config, expanded=True)
        else:
            problems.append(f"Allocation **{pick}** has no LoRA ranks (rank_pattern): on the Allocate page turn on "
                            "the α-driven LoRA ranks and save it again, or pick MoE-LoRA.")
    try:
        layers = model_layers(model) if model else None
    except SpectrascopeError as err:
        problems.append(f"Cannot read model {model!r}: {err}")
        layers = None
    if layers is not None and layers != n_alloc:
        problems.append(f"Allocation **{pick}** has {n_alloc} layers but the model {model} has {layers}: make an "
                        "allocation for this model on the Allocate page (pick the model in the sidebar), or choose "
                        "another allocation.")
    return {**alloc.to_dict(), "name": pick}, problems


def method_option_inputs(spec) -> dict:
    """Inputs for the method's own options (its Method.options dataclass), in the More popover; the values that
    differ from the defaults."""
    from dataclasses import MISSING, fields

    if spec.options is None:
        return {}
    st.markdown(f"**{spec.label} options**")
    out = {}
    for f in fields(spec.options):
        default = f.default if f.default is not MISSING else None
        key, text = _default(f"opt_{spec.name}_{f.name}", default), f.metadata.get("help") if f.metadata else None
        label = f.name.replace("_", " ")
        if isinstance(default, bool):
            value = st.checkbox(label, key=key, help=text)
        elif isinstance(default, int):
            value = st.number_input(label, 0, 10**7, step=1, key=key, help=text)
        elif isinstance(default, float):
            value = st.number_input(label, 0.0, 1e6, key=key, format="%.4g", help=text)
        elif isinstance(default, str) and f.metadata.get("choices"):
            value = st.selectbox(label, list(f.metadata["choices"]), key=key, help=text)
        else:
            value = st.text_input(label, key=key, help=text) or None
        if value != default:
            out[f.name] = value
    return out


def run_form(store: JobStore) -> None:
    """Model, task, method, hyperparameters, allocation, run name and Submit."""
    kinds = task_kinds(str(data_dir()))
    tasks, generative = list(kinds) or [DEFAULTS.task], {t for t, kind in kinds.items() if kind != "classification"}
    c1, c2, c3, c4 = st.columns([3, 2, 2, 2])
    model = model_picker(c1)
    key = _default("task", DEFAULTS.task if DEFAULTS.task in tasks else tasks[0])
    task = c2.selectbox("Task", tasks, key=key, format_func=lambda t: t + " (decoder)" * (t in generative),
                        help="Built-in tasks and your own in <data>/tasks (see training/tasks/README.md); "
                             "(decoder): a generative task, for causal LMs only")
    method = c3.selectbox("Method", registry.names(), key=_default("method", DEFAULTS.method),
                          format_func=registry.label, help="\n".join(f"- **{m.label}**: {m.summary}"
                                                                     for m in registry.all_methods()))
    spec = registry.get(method)
    name = c4.text_input("Run name", key=_default("name", ""), max_chars=64,
                         placeholder=default_name({"method": method, "task": task}),
                         help="Letters, digits, '_', '.' or '-'. Empty: <method>-<task>. The run folder is "
                              "runs/<id>-<name> in the data directory.").strip()
    name_problem = check_run_name(name)
    if name_problem:
        st.error(name_problem, icon=":material/error:")

    h = st.columns(7)
    rank = h[0].number_input("Rank", 1, 512, step=1, key=_default("rank", DEFAULTS.rank), disabled="rank" not in spec.takes,
                             help="LoRA rank (per expert for MoE-LoRA)")
    lr = h[1].number_input("Learning rate", 1e-7, 0.5, step=1e-5, format="%.1e", key=_default("lr", None),
                           placeholder=f"{spec.default_lr:.0e}",
                           help=f"Empty: {spec.label}'s default, {spec.default_lr:g} (docs/sweep_default.md)")
    epochs = h[2].number_input("Epochs", 1, 100, step=1, key=_default("epochs", DEFAULTS.epochs))
    max_steps = h[3].number_input("Max steps", 1, 10**7, step=10, key=_default("max_steps", DEFAULTS.max_steps),
                                  placeholder="epochs decide", help="Optimizer steps; overrides epochs when set")
    batch = h[4].number_input("Batch size", 1, 1024, step=1, key=_default("batch", DEFAULTS.batch_size))
    max_len = h[5].number_input("Max length", 8, 8192, step=8, key=_default("max_len", DEFAULTS.max_length),
                                help="Tokens per example (longer ones are cut)")
    seed = h[6].number_input("Seed", 0, 2**31 - 1, step=1, key=_default("seed", DEFAULTS.seed))
    r = st.columns(7, vertical_alignment="bottom")
    rows = {f: r[i].number_input(label, 1, 10**8, step=100, key=_default(f, getattr(DEFAULTS, f)),
                                 placeholder="all rows", help=f"Seeded subset of the {split} split; empty: all rows")
            for i, (f, label, split) in enumerate([("max_train_rows", "Train rows", "train"),
                                                   ("max_eval_rows", "Validation rows", "validation"),
                                                   ("max_test_rows", "Test rows", "test")])}
    eval_every = r[3].number_input("Validate every", 0, 10**6, step=10, key=_default("eval_every", DEFAULTS.eval_every),
                                   help="Steps between validation passes (0: only at the end)")
    with r[4].popover("More", icon=":material/tune:", width="stretch",
                     help="LoRA alpha, dropout, warm-up, weight decay, load balance, best pass, device, processes"):
        alpha = st.number_input("LoRA alpha", 0.0, 4096.0, key=_default("alpha", DEFAULTS.alpha),
                                placeholder="2 × rank", disabled="alpha" not in spec.takes)
        dropout = st.number_input("Dropout", 0.0, 0.9, step=0.05, key=_default("dropout", DEFAULTS.dropout))
        warmup = st.number_input("Warm-up ratio", 0.0, 0.99, step=0.05, key=_default("warmup", DEFAULTS.warmup_ratio))
        decay = st.number_input("Weight decay", 0.0, 1.0, step=0.01, key=_default("decay", DEFAULTS.weight_decay))
        balance = st.number_input("Load-balance coefficient (MoE-LoRA)", 0.0, 1.0, step=0.001, format="%.4f",
                                  key=_default("balance", DEFAULTS.load_balance_coef),
                                  disabled="load_balance_coef" not in spec.takes,
                                  help="Total loss = task loss + c · Σ over blocks of one Switch-style balance term "
                                       "per block (MoLA's formula, c = 0.001). 0 is the paper setting: the "
                                       "published MoLA / AlphaLoRA scripts train without it.")
        routing = st.selectbox("Routing (MoE-LoRA)", ["token", "prompt"], key=_default("routing", DEFAULTS.routing),
                               disabled="routing" not in spec.takes,
                               help="token: every token picks its experts; prompt: the experts are picked once per "
                                    "sequence from the pooled prompt and reused for every generated token (MiLoRA)")
        own = method_option_inputs(spec)
        keep_best = st.checkbox("Keep the best validation pass", key=_default("keep_best", DEFAULTS.keep_best))
        device = st.selectbox("Device", ["auto", "cpu", "cuda"], key=_default("device", DEFAULTS.device))
        gpus = gpu_count()
        if gpus:
            procs = st.number_input("GPUs per run", 1, gpus, key=_default("gpus", 1),
                                    help="More than one: data-parallel processes under torchrun, one per GPU")
        else:
            procs = st.number_input("Data-parallel processes", 1, max(1, os.cpu_count() or 1),
                                    key=_default("cpu_processes", DEFAULTS.cpu_processes),
                                    help="No GPU here: this many CPU processes (torchrun, gloo) share each batch")
        trust = st.checkbox("Trust remote code", key=_default("trust_remote_code", DEFAULTS.trust_remote_code),
                            help="Run the model folder's own Python code (config.json auto_map): only for code "
                                 "you trust. Recorded in the run's manifest.")
    st.markdown("**Allocation**")
    allocation, problems = allocation_section(method, model)
    if model:                              # config, architecture, weights, tokenizer: cached per folder state
        with st.spinner("Checking the model…"):
            problem = model_problem(None if model == DEFAULT_MODEL else model, bool(trust))
        problems[:0] = [f"This model cannot be used: {problem}"] if problem else []     # the line names it
    for problem in problems:
        st.error(problem, icon=":material/error:")
    if not st.button("Submit", type="primary", icon=":material/play_arrow:", key=K + "submit"):
        return
    if name_problem or problems or not model:
        st.error("Not submitted: " + ("enter a model folder." if not model else "fix the problems above."),
                 icon=":material/error:")
        return
    ints = dict(seed=seed, epochs=epochs, max_steps=max_steps, batch_size=batch, max_length=max_len, rank=rank,
                eval_every=eval_every, **rows)
    config = {"method": method, "model": None if model == DEFAULT_MODEL else model, "task": task, "lr": lr,
              "warmup_ratio": float(warmup), "weight_decay": float(decay), "dropout": float(dropout), "alpha": alpha,
              "keep_best": bool(keep_best), "device": device, ("gpus" if gpus else "cpu_processes"): int(procs),
              "trust_remote_code": bool(trust),
              **{k: None if v is None else int(v) for k, v in ints.items()}}
    config["load_balance_coef"], config["routing"] = float(balance), routing
    if own:
        config["method_options"] = own
    if "experts" in spec.takes:
        if allocation is None:
            config["experts"] = int(st.session_state.get(K + "experts", DEFAULTS.experts))
            config["top_k"] = int(st.session_state.get(K + "top_k", DEFAULTS.top_k))
    if allocation is not None:
        config["allocation"] = allocation
    config = registry.config_for(method, config)          # only the options this method takes
    try:
        with st.spinner("Checking the model, the task data and the options…"):
            job = store.submit(config, name=name or None)
    except SpectrascopeError as err:
        st.error(f"Not submitted: {err}", icon=":material/error:")
        return
    common.set_view(RUN_VIEW, job.id)
    st.session_state[FLASH] = f"Submitted run **#{job.id} {job.name}** ({job.status}): its progress is below."
    st.session_state[COLLAPSE] = True      # the next run folds the form away so that the runs are in view
    st.rerun()


# ---------------------------------------------------------------- runs table and run detail

def runs_frame(jobs: list) -> pd.DataFrame:
    """One row per job, newest first: id, name, method, task, status, progress, ETA, last loss, started."""
    now = time.time()
    rows = []
    for job in reversed(jobs[-MAX_TABLE_ROWS:]):
        s = summarise(job, progress_lines(job), now)
        rows.append({"id": job.id, "name": job.name, "method": registry.label(job.config.get("method")),
                     "task": job.config.get("task"), "status": job.status, "progress": 100 * s["progress"],
                     "step": f"{s['step']}/{s['total']}" if s["total"] else "",
                     "ETA": "" if s["eta"] is None else human_seconds(s["eta"]),
                     "last loss": s["loss"], "started": datetime.fromtimestamp(job.started or job.created),
                     "note": (job.error or "").splitlines()[0] if job.status in ("failed", "lost") else ""})
    frame = pd.DataFrame(rows, columns=["id", "name", "method", "task", "status", "progress", "step", "ETA",
                                        "last loss", "started", "note"])
    return frame if frame["note"].astype(bool).any() else frame.drop(columns="note")


def runs_table(jobs: list) -> None:
    config = {"id": st.column_config.NumberColumn("id", format="%d", width="small"),
              "progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=100, format="%.0f%%",
                                                          width="medium"),
              "last loss": st.column_config.NumberColumn("last loss", format="%.4f"),
              "started": st.column_config.DatetimeColumn("started", format="YYYY-MM-DD HH:mm:ss")}
    st.dataframe(runs_frame(jobs), hide_index=True, width="stretch", key=K + "runs_table", placeholder="",
                 column_config=config)


def _layout(fig: go.Figure, title: str, y_title: str, lines: list[dict]) -> go.Figure:
    total = next((ln.get("total_steps") for ln in reversed(lines) if ln.get("total_steps")), None)
    fig.update_layout(title=title, height=360, margin=dict(l=50, r=20, t=45, b=80), xaxis_title="step",
                      yaxis_title=y_title, legend=LEGEND, xaxis_range=[0, total * 1.02] if total else None)
    return fig


def loss_figure(lines: list[dict]) -> go.Figure:
    """Training loss per step (raw and a moving average) and the validation loss at validation steps."""
    steps = [ln for ln in lines if "loss" in ln and "step" in ln]
    x, y = [ln["step"] for ln in steps], [ln["loss"] for ln in steps]
    fig = go.Figure()
    fig.add_scatter(x=x, y=y, mode="lines", name="training loss", line=dict(color="#9ecae1", width=1))
    if len(y) >= 5:
        smooth = pd.Series(y).rolling(min(20, max(3, len(y) // 10)), min_periods=1).mean()
        fig.add_scatter(x=x, y=smooth, mode="lines", name="moving average", line=dict(color="#1f77b4", width=2.5))
    evals = [ln for ln in lines if isinstance(ln.get("eval"), dict) and "loss" in ln["eval"]]
    if evals:
        fig.add_scatter(x=[ln["step"] for ln in evals], y=[ln["eval"]["loss"] for ln in evals], mode="lines+markers",
                        name="validation loss", line=dict(color="#d62728", width=2), marker=dict(size=8))
    return _layout(fig, "Loss", "loss", lines)


def eval_figure(lines: list[dict]) -> go.Figure | None:
    """Validation metrics (accuracy, macro F1, MCC; perplexity for LM tasks) per validation pass, or None."""
    evals = [ln for ln in lines if isinstance(ln.get("eval"), dict)]
    found = list(evals[0]["eval"]) if evals else []
    metrics = [m for m in found if m not in ("loss", "perplexity")] or [m for m in found if m == "perplexity"]
    if not metrics:
        return None
    fig = go.Figure()
    for metric in metrics:
        fig.add_scatter(x=[ln["step"] for ln in evals], y=[ln["eval"].get(metric) for ln in evals],
                        mode="lines+markers", name=metric, marker=dict(size=8))
    return _layout(fig, "Validation metrics", "score" if metrics != ["perplexity"] else "perplexity", lines)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


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
    m = st.columns(6)
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
               f" · task {cfg.get('task')} · rank {cfg.get('rank')} · seed {cfg.get('seed')}"
               + (f" · allocation {alloc}" if alloc else "")
               + (f" · {procs} data-parallel processes" if procs > 1 else "")
               + f" · folder `{job.run_dir}`")
    if job.status in ("failed", "lost"):
        st.error(f"Run #{job.id} {job.status}: {job.error or 'no error recorded'}", icon=":material/error:")
    elif job.status == "cancelled":
        st.info(f"Run #{job.id} was cancelled.", icon=":material/cancel:")
    if not job.final:
        cancel_button(store, job)
    if job.status == "running" and s["total"] and s["step"] >= s["total"]:
        st.caption("Training is over: testing on the test split and saving the artifacts…")
    if job.status == "queued":
        st.info("Queued: it starts when a running job ends ($SPECTRASCOPE_MAX_JOBS at once on CPU, one per GPU).")
    left, right = st.columns(2)
    with left:
        if any("loss" in ln for ln in lines):
            st.plotly_chart(loss_figure(lines), key=f"{K}loss_chart", width="stretch")
        else:
            st.caption("The loss curve appears after the first training step (loading the model takes a moment).")
    with right:
        fig = eval_figure(lines)
        if fig is not None:
            st.plotly_chart(fig, key=f"{K}eval_chart", width="stretch")
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

def guarded(section, *args) -> None:
    """Run a page section; a SpectrascopeError shows its message, anything else a short error (never a traceback)."""
    try:
        section(*args)
    except SpectrascopeError as err:
        st.error(str(err), icon=":material/error:")
    except Exception as err:  # noqa: BLE001 - the UI's last line of defence
        common.show_unexpected(err)


def main() -> None:
    if f"view_{RUN_VIEW}" not in st.session_state and RUN_VIEW in st.query_params:
        common.set_view(RUN_VIEW, st.query_params[RUN_VIEW])      # the URL seeds the selection on first visit
    st.title("Train")
    st.caption("Fine-tune with LoRA, MoE-LoRA (optionally with an allocation from the Allocate page) or all weights. "
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
        guarded(run_form, store)
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
