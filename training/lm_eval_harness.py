"""lm-evaluation-harness on base models and finished runs: the shipped task YAMLs, offline, results in SQLite."""
from __future__ import annotations

import json
import math
import sqlite3
import time
from importlib.metadata import version
from pathlib import Path

from analysis.types import SpectrascopeError

TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"      # the shipped task YAMLs (and their utils.py)
SHIPPED = ("spectrascope_rotten_tomatoes", "spectrascope_trec", "spectrascope_hamlet")
BATCH_SIZE = 8
SCHEMA = """
CREATE TABLE IF NOT EXISTS lm_eval_results (
    run_id TEXT NOT NULL,           -- a job id, or base:<model> (training.evaluation.base_id)
    task TEXT NOT NULL,             -- the lm-eval task (or group) name
    metric TEXT NOT NULL,           -- lm-eval's metric name: acc, acc_norm, word_perplexity, ...
    filter TEXT NOT NULL,           -- lm-eval's filter of the metric ('none' for log-likelihood tasks)
    value REAL,
    stderr REAL,                    -- lm-eval's standard error of the value (NULL where it gives none)
    n_samples INTEGER,              -- documents scored
    limit_docs INTEGER NOT NULL,    -- --limit (0: every document of the split)
    num_fewshot INTEGER NOT NULL,
    lm_eval_version TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, task, metric, filter, limit_docs, num_fewshot)
)"""


def lm_eval_version() -> str:
    """The installed lm-eval's version (stored with every result)."""
    return version("lm_eval")


# ----------------------------------------------------------------------------------------------- tasks

def parse_tasks(tasks: str | list[str] | tuple) -> list[str]:
    """Task names from 'T1,T2' or a list; at least one."""
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks or []) if str(t).strip()]
    if not names:
        raise SpectrascopeError(f"no lm-eval task given: name one or more with --tasks T1,T2 (shipped: "
                                f"{', '.join(SHIPPED)})")
    return names


def include_folder(path: str | Path | None) -> Path | None:
    """The --include-path folder of the user's own task YAMLs, checked (None when not given)."""
    if path is None or str(path).strip() == "":
        return None
    folder = Path(path).expanduser()
    if not folder.exists():
        raise SpectrascopeError(f"--include-path {folder} does not exist: give a folder holding your lm-eval task "
                                f"YAML files")
    if not folder.is_dir() or not any(folder.rglob("*.yaml")):
        raise SpectrascopeError(f"--include-path {folder} holds no lm-eval task YAML files (*.yaml): give the "
                                f"folder your task YAMLs are in")
    return folder.resolve()


def task_manager(tasks: list[str], include_path: str | Path | None = None):
    """An lm_eval TaskManager that knows every task in `tasks`: the shipped YAMLs and the include folder first
    (fast), lm-eval's own task index only when a name is not there; an unknown name is one line."""
    paths = [TASKS_DIR] + [p for p in [include_folder(include_path)] if p is not None]
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_defaults=False, include_path=[str(p) for p in paths])
    if any(t not in manager.all_tasks for t in tasks):
        manager = TaskManager(include_path=[str(p) for p in paths])       # lm-eval's own tasks too (~4 s)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise SpectrascopeError(f"unknown lm-eval task {unknown[0]!r}: use a shipped task ({', '.join(SHIPPED)}), "
                                f"one of lm-eval's own, or one from your folder given with --include-path")
    return manager


def check_tasks(tasks: list[str] | str, include_path: str | Path | None = None) -> list[str]:
    """The task names, checked against the shipped tasks and the include folder (SpectrascopeError if not)."""
    names = parse_tasks(tasks)
    task_manager(names, include_path)
    return names


def check_config(cfg, decoder: bool) -> list[str]:
    """A training config's end-of-run lm-eval pass, checked at submit: the task names (a list, or 'T1,T2'), the
    include folder, and a causal LM to score; the task names as a list."""
    tasks = cfg.lm_eval_tasks
    if not isinstance(tasks, (str, list)) or not all(isinstance(t, str) for t in tasks):
        raise SpectrascopeError(f"lm_eval_tasks must be a list of lm-eval task names (or 'T1,T2'), got {tasks!r}")
    if not decoder:
        raise SpectrascopeError(f"lm_eval_tasks: model {cfg.model or 'all-MiniLM-L6-v2'} is an encoder, and lm-eval "
                                f"scores causal / seq2seq language models; leave lm_eval_tasks out for this run")
    return check_tasks(tasks, cfg.lm_eval_include_path)


# ----------------------------------------------------------------------------------------------- models

def _not_a_language_model(what: str) -> SpectrascopeError:
    return SpectrascopeError(f"{what} is an encoder: lm-eval scores causal / seq2seq language models; evaluate it "
                             f"with our own harness instead (python -m training evaluate without --harness)")


def base_model(model: str, trust_remote_code: bool = False, device: str = "auto"):
    """(model, tokenizer, backend) of a base model folder or built-in name, loaded for lm-eval (float32, eval)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from training.model_check import check_model
    from training.trainer import pick_device

    checked = check_model(model, trust_remote_code)             # one line if the folder is unusable
    seq2seq = bool(getattr(checked.config, "is_encoder_decoder", False))
    if not checked.decoder and not seq2seq:
        raise _not_a_language_model(f"model {model}")
    loader = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    lm = loader.from_pretrained(checked.folder, dtype=torch.float32, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(checked.folder, trust_remote_code=trust_remote_code)
    return lm.to(pick_device(device)).eval(), tokenizer, "seq2seq" if seq2seq else "causal"


def run_model(run_dir: str | Path, device: str | None = None):
    """(model, tokenizer) of a finished decoder run: its artifacts loaded onto the base, the adapter attached
    (as lm-eval's own `peft=` does); an encoder run is one line."""
    from training import run_layout
    from training.trainer import load_artifacts

    try:                                 # told before any weights load; an unreadable one is load_artifacts' to say
        manifest = json.loads(run_layout.manifest(run_dir).read_text())
    except (OSError, ValueError):
        manifest = {}
    if manifest.get("decoder") is False:
        model = (manifest.get("config") or {}).get("model") or "the default MiniLM"
        raise _not_a_language_model(f"run {Path(run_dir).name} ({model})")
    model, tokenizer, cfg, _, _, decoder = load_artifacts(run_dir, device=device)
    if not decoder:
        raise _not_a_language_model(f"run {Path(run_dir).name} ({cfg.model or 'the default MiniLM'})")
    return model, tokenizer


# ----------------------------------------------------------------------------------------------- evaluation

def evaluate(model, tokenizer, tasks: list[str] | str, include_path: str | Path | None = None,
             limit: int | None = None, num_fewshot: int | None = None, batch_size: int = BATCH_SIZE,
             backend: str = "causal") -> dict:
    """lm_eval.simple_evaluate on an in-memory HF model; lm-eval's whole output dict (results, n-shot,
    n-samples, configs, versions…) without per-document samples."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    names = parse_tasks(tasks)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise SpectrascopeError(f"--limit must be a positive number of documents, got {limit!r}")
    if num_fewshot is not None and (isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int)
                                    or num_fewshot < 0):
        raise SpectrascopeError(f"--num-fewshot must be 0 or a positive integer, got {num_fewshot!r}")
    manager = task_manager(names, include_path)
    hflm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, backend=backend)
    out = lm_eval.simple_evaluate(model=hflm, tasks=names, task_manager=manager, limit=limit,
                                  num_fewshot=num_fewshot, log_samples=False)
    out.pop("samples", None)
    return out


def summary(run_id: str, out: dict, limit: int | None) -> dict:
    """The `--json` line: lm-eval's own `results` dict (task → metric → value) and its version, with what was
    asked (limit) and what lm-eval used (n-shot, n-samples)."""
    return {"run": str(run_id), "results": _json_safe(out.get("results", {})), "lm_eval_version": lm_eval_version(),
            "limit": limit, "n-shot": out.get("n-shot", {}), "n-samples": out.get("n-samples", {})}


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def metric_rows(out: dict, limit: int | None) -> list[dict]:
    """One row per task, metric and filter of lm-eval's results: value, stderr (None where lm-eval has none),
    documents scored, limit (0 = all), shots."""
    rows = []
    for task, metrics in out.get("results", {}).items():
        shots = out.get("n-shot", {}).get(task, 0)
        n = (out.get("n-samples", {}).get(task) or {}).get("effective")
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append({"task": task, "metric": metric, "filter": filt, "value": _number(value),
                         "stderr": _number(stderr), "n_samples": n, "limit_docs": int(limit or 0),
                         "num_fewshot": int(shots or 0)})
    return rows


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


class LmEvalStore:
    """The `lm_eval_results` table beside `evaluations` in `<data>/spectrascope.db` (WAL mode)."""

    def __init__(self, data: str | Path | None = None):
        from training.evaluation import EvalStore

        self.db_path = EvalStore(data).db_path               # the same database, created in WAL mode
        con = self._connect()
        try:
            con.execute(SCHEMA)
        finally:
            con.close()

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)

    def record(self, run_id: str, out: dict, limit: int | None) -> int:
        """Store lm-eval's output for a run or base id (a rerun with the same limit and shots replaces it)."""
        rows, now, ver = metric_rows(out, limit), time.time(), lm_eval_version()
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            con.executemany("INSERT OR REPLACE INTO lm_eval_results (run_id, task, metric, filter, value, stderr, "
                            "n_samples, limit_docs, num_fewshot, lm_eval_version, created) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [(str(run_id), r["task"], r["metric"], r["filter"], r["value"], r["stderr"],
                              r["n_samples"], r["limit_docs"], r["num_fewshot"], ver, now) for r in rows])
            con.execute("COMMIT")
        finally:
            con.close()
        return len(rows)

    def rows(self, run_ids: list[str] | None = None) -> list[dict]:
        """Every stored value (optionally of some run ids) as dicts, oldest first."""
        con = self._connect()
        con.row_factory = sqlite3.Row
        try:
            query, args = "SELECT * FROM lm_eval_results", []
            if run_ids is not None:
                query += f" WHERE run_id IN ({','.join('?' * len(run_ids))})"
                args = [str(r) for r in run_ids]
            found = con.execute(query + " ORDER BY created", args).fetchall()
        finally:
            con.close()
        return [dict(r) for r in found]


# ----------------------------------------------------------------------------------------------- entry points

def base_run_id(model: str | None) -> str:
    """The run id a base model's lm-eval results are stored under: base:<model>, a built-in by its canonical
    name (so smollm2 and SmolLM2-135M-Instruct are one base)."""
    from analysis.builtin_models import resolve_builtin
    from training.evaluation import base_id

    return base_id((resolve_builtin(model) if model else None) or model)


def evaluate_base(model: str, tasks, include_path=None, limit: int | None = None, num_fewshot: int | None = None,
                  trust_remote_code: bool = False, device: str = "auto", batch_size: int = BATCH_SIZE,
                  store: LmEvalStore | None = None) -> dict:
    """A base model through lm-eval, stored under base:<model>; the summary dict (see `summary`)."""
    names = check_tasks(tasks, include_path)              # bad names fail before any weights load
    lm, tokenizer, backend = base_model(model, trust_remote_code, device)
    out = evaluate(lm, tokenizer, names, include_path, limit, num_fewshot, batch_size, backend)
    run_id = base_run_id(model)
    (store or LmEvalStore()).record(run_id, out, limit)
    return summary(run_id, out, limit)


def evaluate_run_dir(run_dir: str | Path, run_id: str, tasks, include_path=None, limit: int | None = None,
                     num_fewshot: int | None = None, batch_size: int = BATCH_SIZE,
                     store: LmEvalStore | None = None) -> dict:
    """A run folder's model through lm-eval, stored under `run_id`; the summary dict."""
    names = check_tasks(tasks, include_path)
    model, tokenizer = run_model(run_dir)
    out = evaluate(model, tokenizer, names, include_path, limit, num_fewshot, batch_size)
    (store or LmEvalStore()).record(run_id, out, limit)
    return summary(run_id, out, limit)


def evaluate_job(job_id: int, tasks, include_path=None, limit: int | None = None, num_fewshot: int | None = None,
                 batch_size: int = BATCH_SIZE) -> dict:
    """A finished (done) job's run through lm-eval, stored under its id."""
    from training.evaluation import check_run_models
    from training.jobs import JobStore

    jobs = JobStore()
    job = jobs.get(job_id)
    if job.status != "done":
        raise SpectrascopeError(f"job {job.id} is {job.status}: only finished (done) runs can be evaluated")
    check_run_models(job.run_dir)
    return evaluate_run_dir(job.run_dir, str(job.id), tasks, include_path, limit, num_fewshot, batch_size,
                            LmEvalStore(jobs.data))


def after_training(config: dict, run_dir: str | Path, run_id: int | str) -> dict:
    """The Train page's lm-eval pass at the end of a run (config lm_eval_tasks / lm_eval_limit /
    lm_eval_include_path): {} when none was asked; else {"lm_eval": summary} or {"lm_eval": {"error": …}}.
    Never raises: a failed pass is a warning in the run's log and recorded in its result, not a failed run."""
    import sys
    import traceback

    tasks = (config or {}).get("lm_eval_tasks")
    if not tasks:
        return {}
    try:
        print(f"lm-eval pass: {', '.join(parse_tasks(tasks))} (limit {config.get('lm_eval_limit')})", flush=True)
        done = evaluate_run_dir(run_dir, str(run_id), tasks, config.get("lm_eval_include_path"),
                                config.get("lm_eval_limit"), store=LmEvalStore())
    except Exception as exc:  # noqa: BLE001 - the trained run stands; the pass's failure is reported, not raised
        from training.model_check import one_line

        traceback.print_exc()
        reason = one_line(exc) or type(exc).__name__
        print(f"WARNING: the lm-eval pass failed (the run itself is done): {reason}", file=sys.stderr, flush=True)
        return {"lm_eval": {"error": reason}}
    print("lm-eval pass: " + json.dumps(done["results"]), flush=True)
    return {"lm_eval": done}


# ----------------------------------------------------------------------------------------------- comparing

def results_frame(run_ids: list[str] | None = None, store: LmEvalStore | None = None):
    """The newest lm-eval value per run, task, metric, filter, limit and shots (pandas DataFrame; columns run_id,
    task, metric, filter, value, stderr, ci_lo / ci_hi = value ∓ 1.96·stderr, n_samples, limit_docs,
    num_fewshot, lm_eval_version), base ids first."""
    import pandas as pd

    rows = (store or LmEvalStore()).rows(run_ids)
    frame = pd.DataFrame(rows, columns=["run_id", "task", "metric", "filter", "value", "stderr", "n_samples",
                                        "limit_docs", "num_fewshot", "lm_eval_version", "created"])
    frame = frame.sort_values("created").drop_duplicates(
        ["run_id", "task", "metric", "filter", "limit_docs", "num_fewshot"], keep="last")
    frame["ci_lo"] = frame["value"] - 1.96 * frame["stderr"]
    frame["ci_hi"] = frame["value"] + 1.96 * frame["stderr"]
    frame["base"] = frame["run_id"].astype(str).str.startswith("base:")
    frame = frame.sort_values(["base", "task", "metric", "run_id"], ascending=[False, True, True, True])
    return frame.drop(columns=["created"]).reset_index(drop=True)

