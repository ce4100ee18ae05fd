"""Studies: queue LoRA / MoE-LoRA (uniform, MoLA, AlphaLoRA) / full fine-tunes × seeds and compare their results."""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from analysis.config import DEFAULT_MODEL, data_dir
from analysis.types import SpectrascopeError
from training import registry

from training.study_plan import (  # noqa: F401 (re-exported: the study's arms and plan live there)
    ARMS, DEFAULT_ARMS, METHODS, STUDY_DEFAULTS, StudySpec, arm_configs, describe_allocation, matched_lora_rank, mola_preset,
    plan_study, study_allocations)

GROUP = ["model", "task", "method", "allocation"]
BASE_LABELS = {"probe": "Base: linear probe", "untrained-head": "Base: untrained head", "zero-shot": "Base: zero-shot"}


# ----------------------------------------------------------------------------------------------- records

def studies_dir() -> Path:
    return data_dir() / "studies"


def _new_folder() -> tuple[int, Path]:
    root = studies_dir()
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name) for p in root.iterdir() if p.name.isdigit()]
    sid = max(taken, default=0) + 1
    while True:
        try:
            (root / str(sid)).mkdir()                  # atomic: two studies never share an id
            return sid, root / str(sid)
        except FileExistsError:
            sid += 1


def load_study(study_id: int | str) -> dict:
    """The study record (study.json) with its id and folder."""
    folder = studies_dir() / str(study_id)
    try:
        record = json.loads((folder / "study.json").read_text())
    except (OSError, ValueError):
        raise SpectrascopeError(f"no study with id {study_id}: see `python -m training study-list`") from None
    return record


def list_studies() -> list[dict]:
    """All study records, oldest first."""
    root = studies_dir()
    if not root.is_dir():
        return []
    ids = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / "study.json").is_file())
    return [load_study(i) for i in ids]


def _save(record: dict) -> None:
    folder = Path(record["folder"])
    tmp = folder / "study.json.tmp"
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(folder / "study.json")


def start_study(spec: StudySpec, store=None, base_eval: bool = True) -> dict:
    """Write the allocations, queue the base evaluation and every (method, seed) job; return the record.

    Everything is checked before the first job is queued (model, task data, budget): a SpectrascopeError says
    what was wrong. Jobs run one after another (or one per GPU) through the job store; the base evaluation is
    a job of the same queue, so it never runs beside a fine-tune.
    """
    from analysis.engine import analyze
    from training.base_jobs import base_eval_config
    from training.evaluation import EvalStore, base_rows_hashes
    from training.jobs import JobStore
    from training.trainer import prepare_config

    spec.check()
    store = store or JobStore()
    options = spec.job_options()
    common = {**options, "model": spec.model, "task": spec.task}
    if spec.max_steps is not None:
        common["max_steps"] = spec.max_steps
    prepare_config(registry.config_for("lora", common))    # model, task and options are good, data readable
    scores = analyze(spec.model).layer_scores()
    allocations = study_allocations(spec, scores)
    from training.study_plan import _model_matrices

    matrices = _model_matrices(spec.model)
    sid, folder = _new_folder()
    files = {}
    for key, alloc in allocations.items():
        files[key] = str(folder / f"allocation-{key}.json")
        Path(files[key]).write_text(json.dumps(alloc, indent=2))
    arms = arm_configs(spec, files, matrices)
    record = {"id": sid, "folder": str(folder), "created": time.time(), "spec": asdict(spec), "options": options,
              "n_layers": len(scores), "scores": scores, "allocations": files, "jobs": [], "base_eval": None,
              "base_job": None, "plan": plan_study(spec, store)}
    _save(record)
    if base_eval:
        EvalStore(store.data)
        record["base_rows_hash"] = base_rows_hashes(spec.model, spec.task, options)
        record["base_job"] = store.submit(base_eval_config(spec.model, spec.task, options),
                                          name=f"study{sid}-base-eval").id
        _save(record)
    for seed in range(spec.seeds):                     # seed-major: every method has a result early
        for key in spec.methods:
            config = registry.config_for(arms[key]["method"], {**common, **arms[key], "seed": seed})
            job = store.submit(config, name=f"study{sid}-{key.replace('_', '-')}-s{seed}")
            record["jobs"].append({"job": job.id, "key": key, "seed": seed})
            _save(record)
    return record


def cancel_study(study_id: int | str, store=None) -> list[int]:
    """Cancel every queued or running job of a study (its base evaluation too); return the cancelled ids."""
    from training.jobs import JobStore

    store = store or JobStore()
    record = load_study(study_id)
    ids = ([record["base_job"]] if record.get("base_job") else []) + [entry["job"] for entry in record["jobs"]]
    cancelled = []
    for job_id in reversed(ids):                       # queued ones first, so none starts while we cancel
        if not store.get(job_id).final:
            store.cancel(job_id)
            cancelled.append(job_id)
    return sorted(cancelled)


def base_eval_running(record: dict, store=None) -> bool:
    """Whether the study's base evaluation is still queued or running (a job; older studies: a process)."""
    from training.jobs import JobStore, process_alive

    if record.get("base_job"):
        return not (store or JobStore()).get(record["base_job"]).final
    info = record.get("base_eval") or {}
    return bool(info) and process_alive(info.get("pid"), info.get("create_time"))


def study_jobs(record: dict, store=None) -> list:
    """The study's jobs (Job objects) in queue order."""
    from training.jobs import JobStore

    store = store or JobStore()
    return [store.get(entry["job"]) for entry in record["jobs"]]


def study_running(record: dict, store=None) -> bool:
    """True while any job of the study is queued or running, or its base evaluation runs."""
    return any(not j.final for j in study_jobs(record, store)) or base_eval_running(record, store)


# ----------------------------------------------------------------------------------------------- tables

def method_label(config: dict) -> str:
    """The comparison-table name of a run's method, from its config: the arm of its allocation strategy when its
    method has allocation arms ('MoE-LoRA AlphaLoRA'), else the method's label."""
    method = config.get("method")
    strategy = str((config.get("allocation") or {}).get("strategy", ""))
    for arm in ARMS.values():
        if arm.method == method and arm.allocation and strategy.startswith(arm.allocation):
            return arm.label
    return registry.label(method)


def runs_frame(jobs: list, store=None) -> pd.DataFrame:
    """One row per job: identity, method, allocation, seed, status, parameters, steps, time, and the stored
    validation / test metrics (result.json numbers are copied into the evaluations table on the way). Base-model
    evaluation jobs are left out: their numbers are base_frame's rows; a study's jobs carry their arm's label."""
    import re

    from training.base_jobs import is_base_eval
    from training.evaluation import EvalStore, _task_name, record_result

    evals = store or EvalStore()
    rows = []
    for job in jobs:
        if is_base_eval(job.config):
            continue
        result = job.result() or {}
        cfg = job.config
        task = _task_name(cfg.get("task"))
        if job.status == "done":
            record_result(job, evals)
        arm = re.fullmatch(r"study\d+-([a-z-]+)-s\d+", job.name or "")       # a study's job: its arm's label
        key = arm.group(1).replace("-", "_") if arm else None
        label = METHODS[key][0] if key in METHODS else method_label(cfg)
        row = {"run_id": str(job.id), "name": job.name, "model": cfg.get("model") or DEFAULT_MODEL, "task": task,
               "method": label, "allocation": describe_allocation(cfg), "targets": targets_text(cfg, result),
               "seed": cfg.get("seed", 0), "status": job.status, "trainable_params": result.get("trainable_params"),
               "steps": result.get("steps"), "seconds": result.get("seconds"), "run_dir": job.run_dir}
        for split in ("validation", "test"):
            for metric, value in evals.get(str(job.id), task, split, "").items():
                row[f"{split} {metric}"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def targets_text(config: dict, result: dict) -> str:
    """What a run adapted, short: 'q, k, v, o, up, down' (module kinds in a block), 'all weights' for full."""
    from training.moe_lora.config import MODULE_KINDS

    method = config.get("method")
    if method in registry.names() and registry.get(method).weights == "model":
        return "all weights"
    kind_of = {local: kind for kind, names in MODULE_KINDS.items() for local in names}
    names = result.get("target_modules") or config.get("target_modules") or []
    return ", ".join(kind_of.get(n, n) for n in names) or "default"


def base_frame(model: str | None, task: str, store=None, rows_hash: dict | None = None) -> pd.DataFrame:
    """Rows for the base model's stored baselines on a task (probe / untrained head, or zero-shot)."""
    from training.evaluation import HEAD, EvalStore, base_id
    from training.study_report import base_n_rows

    evals = store or EvalStore()
    out = []
    for variant in (None, HEAD):
        run_id = base_id(model, variant)
        row = {"run_id": run_id, "name": run_id, "model": model or DEFAULT_MODEL, "task": task,
               "allocation": "frozen", "status": "done", "seed": None, "trainable_params": 0, "steps": 0}
        for split in ("validation", "test"):
            for metric, value in evals.get(run_id, task, split, (rows_hash or {}).get(split)).items():
                row[f"{split} {metric}"] = value
            row[f"{split}_rows"] = base_n_rows(evals, run_id, task, split, (rows_hash or {}).get(split))
        if not any(k.startswith(("validation ", "test ")) for k in row):
            continue
        zero_shot = any(k.endswith(" loss") for k in row)     # the probe reports no loss; zero-shot does
        row["method"] = BASE_LABELS["untrained-head" if variant else ("zero-shot" if zero_shot else "probe")]
        out.append(row)
    return pd.DataFrame(out)


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The 'split metric' columns of a runs frame, validation first, in a stable metric order."""
    order = ["accuracy", "macro_f1", "mcc", "loss", "perplexity"]
    cols = [c for c in df.columns if c.startswith(("validation ", "test ")) and not c.endswith((" ci", " n"))]
    return sorted(cols, key=lambda c: (c.split(" ")[0] != "validation",
                                       order.index(c.split(" ", 1)[1]) if c.split(" ", 1)[1] in order else 99, c))


def summarise_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Seeds aggregated per (model, task, method, allocation): counts (done, planned, cancelled, failed), mean
    parameters / steps / time and, per metric, the mean and 95 % CI half-width over the finished runs
    (metrics.mean_ci; NaN with one run) with its bounds 'ci_lo <col>' / 'ci_hi <col>'. Base rows' accuracies get
    the Wilson 95 % interval over their '<split>_rows' rows as bounds instead (their half-width stays NaN)."""
    from training.metrics import mean_ci
    from training.study_report import accuracy_interval

    if runs.empty:
        return pd.DataFrame(columns=GROUP + ["runs", "done", "planned", "cancelled", "failed", "trainable_params",
                                             "steps", "seconds"])
    metrics = metric_columns(runs)
    order = {label: i for i, label in enumerate([v[0] for v in METHODS.values()] + list(BASE_LABELS.values()))}
    out = []
    for key, group in runs.groupby(GROUP, sort=False, dropna=False):
        done = group[group["status"] == "done"]
        row = dict(zip(GROUP, key))
        base = not group["seed"].notna().any()
        row["runs"] = "base" if base else f"{len(done)}/{len(group)}"
        row["done"], row["planned"] = len(done), len(group)
        if "targets" in group:
            named = (done if len(done) else group)["targets"].dropna()
            row["targets"] = named.iloc[0] if len(named) else "—"
        row["cancelled"] = int((group["status"] == "cancelled").sum())
        row["failed"] = int(group["status"].isin(["failed", "lost"]).sum())
        for split in ("validation", "test"):
            n_rows = (pd.to_numeric(done[f"{split}_rows"], errors="coerce").dropna() if f"{split}_rows" in done
                      else pd.Series(dtype=float))
            row[f"{split}_rows"] = int(n_rows.iloc[-1]) if base and len(n_rows) else math.nan
        for col in ("trainable_params", "steps", "seconds"):
            values = pd.to_numeric(done[col], errors="coerce").dropna() if col in done else pd.Series(dtype=float)
            row[col] = float(values.mean()) if len(values) else math.nan
        for col in metrics:
            values = pd.to_numeric(done[col], errors="coerce").dropna() if col in done else pd.Series(dtype=float)
            if len(values):
                ci = mean_ci(values.tolist())
                row[col], row[f"{col} ci"], row[f"{col} n"] = ci.mean, ci.half_width, ci.n
                row[f"ci_lo {col}"], row[f"ci_hi {col}"] = ci.low, ci.high
                wilson = accuracy_interval(ci.mean, row[f"{col.split(' ')[0]}_rows"]) if (
                    base and col.endswith(" accuracy") and ci.n == 1) else None
                if wilson:
                    row[f"ci_lo {col}"], row[f"ci_hi {col}"] = wilson
            else:
                row[col], row[f"{col} ci"], row[f"{col} n"] = math.nan, math.nan, 0
                row[f"ci_lo {col}"], row[f"ci_hi {col}"] = math.nan, math.nan
        out.append(row)
    table = pd.DataFrame(out)
    table["_order"] = table["method"].map(lambda m: order.get(m, 50))
    return table.sort_values(["model", "task", "_order"], kind="stable").drop(columns="_order").reset_index(drop=True)


def study_runs(study_id: int | str, store=None, evals=None) -> tuple[pd.DataFrame, dict]:
    """(runs frame of the study's jobs plus its base rows, the study record)."""
    record = load_study(study_id)
    runs = runs_frame(study_jobs(record, store), evals)
    spec = record["spec"]
    task = runs["task"].iloc[0] if len(runs) else spec["task"]
    base = base_frame(spec["model"], task, evals, record.get("base_rows_hash"))
    return pd.concat([runs, base], ignore_index=True), record


def study_table(study_id: int | str, store=None, evals=None) -> pd.DataFrame:
    """The comparison table of a study: method, allocation, trainable parameters, steps, time and each metric's
    mean ± 95 % CI over seeds per task (plus the base model's rows); partial while jobs run."""
    runs, _ = study_runs(study_id, store, evals)
    return summarise_runs(runs)


def format_table(table: pd.DataFrame, splits: tuple[str, ...] = ("validation", "test"),
                 describe: bool = False) -> pd.DataFrame:
    """The table as display strings: '0.812 ± 0.021' (n ≥ 2 seeds), '0.600' with 'n = 1' (no interval), base
    accuracies '0.700 [0.612, 0.775]' (Wilson, over the test rows), runs as 'done / planned (k cancelled)',
    parameter counts with k/M, seconds rounded. `describe`: headers say the validation column is the best
    validation score (used for selection) and the test column was scored once."""
    from training.metrics import MeanCI
    from training.study_report import done_planned, n_cell

    out = table[[c for c in GROUP if c in table]].copy()
    if "targets" in table:
        out["targets"] = table["targets"].fillna("—")
    out["done / planned"] = table.apply(done_planned, axis=1) if len(table) else []
    shown = [s for s in ("test", "validation") if s in splits]
    out["n"] = table.apply(lambda r: n_cell(r, shown), axis=1) if len(table) else []
    out["trainable params"] = table["trainable_params"].map(_count)
    out["steps"] = table["steps"].map(lambda v: "—" if pd.isna(v) else f"{v:.0f}")
    out["time (s)"] = table["seconds"].map(lambda v: "—" if pd.isna(v) else f"{v:.0f}")
    for col in metric_columns(table):
        if col.split(" ")[0] not in splits:
            continue
        digits = 2 if col.endswith(("perplexity", "loss")) else 3

        def cell(r, col=col, digits=digits):
            if pd.isna(r[col]):
                return "—"
            if r.get("runs") == "base" and not pd.isna(r.get(f"ci_lo {col}", math.nan)):
                return f"{r[col]:.{digits}f} [{r[f'ci_lo {col}']:.{digits}f}, {r[f'ci_hi {col}']:.{digits}f}]"
            if r[f"{col} n"] <= 1:
                return f"{r[col]:.{digits}f}"
            return MeanCI(r[col], r[f"{col} ci"], int(r[f"{col} n"]), math.nan).format(digits).split(" (")[0]
        out[col] = table.apply(cell, axis=1) if len(table) else []
    if describe:
        out = out.rename(columns={c: (f"best {c} (selection)" if c.startswith("validation ") else f"{c} (scored once)")
                                  for c in metric_columns(out)})
    return out


def _count(v) -> str:
    if v is None or pd.isna(v):
        return "—"
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if v >= size:
            return f"{v / size:.2f} {unit}"
    return f"{v:.0f}"


def to_markdown(table: pd.DataFrame) -> str:
    """A pipe table of a formatted frame (no tabulate dependency)."""
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def pareto_front(points: pd.DataFrame, x: str, y: str, higher_is_better: bool = True) -> pd.DataFrame:
    """The rows no other row beats on both axes (fewer `x` and better `y`), sorted by `x`."""
    df = points.dropna(subset=[x, y]).sort_values([x, y], ascending=[True, not higher_is_better])
    keep, best = [], -math.inf
    for i, v in zip(df.index, df[y]):
        v = v if higher_is_better else -v
        if v > best:
            keep.append(i)
            best = v
    return df.loc[keep]


def dodge(x: pd.Series, factor: float = 1.06) -> pd.Series:
    """Positions for a log axis where equal x values (e.g. MoE-LoRA allocations of one budget) are spread
    symmetrically by powers of `factor`, so that their markers do not hide each other."""
    out = x.astype(float).copy()
    for _, index in x.groupby(x).groups.items():
        k = len(index)
        for j, i in enumerate(index):
            out[i] = float(x[i]) * factor ** (j - (k - 1) / 2)
    return out


def loss_curves(jobs: list) -> pd.DataFrame:
    """Training loss per step of each job (from progress.jsonl): run_id, name, method, seed, step, loss."""
    rows = []
    for job in jobs:
        for line in job.progress():
            if "step" in line and "loss" in line:
                rows.append({"run_id": str(job.id), "name": job.name, "method": method_label(job.config),
                             "seed": job.config.get("seed", 0), "step": line["step"], "loss": line["loss"]})
    return pd.DataFrame(rows, columns=["run_id", "name", "method", "seed", "step", "loss"])
