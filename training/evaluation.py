"""Evaluation of base models (linear probe, untrained head, zero-shot) and finished runs, stored in SQLite."""
from __future__ import annotations

import json
import math
import sqlite3
import time
from dataclasses import asdict
from pathlib import Path

from analysis.config import DEFAULT_MODEL, data_dir
from analysis.types import SpectrascopeError
from training import run_layout

SPLITS = ("validation", "test")
PROBE, HEAD = "probe", "untrained-head"
SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    run_id TEXT NOT NULL,           -- a job id, or base:<model> / base:<model>:untrained-head
    task TEXT NOT NULL,
    split TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    n_rows INTEGER,
    rows_hash TEXT NOT NULL DEFAULT '',   -- base evaluations: sha256 of the rows scored ('' for runs)
    created REAL NOT NULL,
    PRIMARY KEY (run_id, task, split, metric, rows_hash)
)"""


def base_id(model: str | None, variant: str | None = None) -> str:
    """The run id of a base-model evaluation: 'base:<model>' (probe / zero-shot) or 'base:<model>:<variant>'."""
    name = model or DEFAULT_MODEL
    return f"base:{name}" + (f":{variant}" if variant else "")


# ----------------------------------------------------------------------------------------------- the table

class EvalStore:
    """The `evaluations` table in `<data>/spectrascope.db` (the jobs' database, WAL mode)."""

    def __init__(self, data: str | Path | None = None):
        self.data = Path(data).resolve() if data else data_dir()
        self.data.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data / "spectrascope.db"
        con = self._connect()
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(SCHEMA)
        finally:
            con.close()

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)

    def record(self, run_id: str, task: str, split: str, metrics: dict, n_rows: int | None = None,
               rows_hash: str = "", replace: bool = True) -> None:
        """Store one evaluation (metric -> value); `replace=False` keeps values already there."""
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        now = time.time()
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            con.executemany(f"{verb} INTO evaluations (run_id, task, split, metric, value, n_rows, rows_hash, created)"
                            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            [(str(run_id), task, split, k, _finite(v), n_rows, rows_hash, now)
                             for k, v in metrics.items() if isinstance(v, (int, float))])
            con.execute("COMMIT")
        finally:
            con.close()

    def get(self, run_id: str, task: str, split: str, rows_hash: str | None = None) -> dict[str, float]:
        """Stored metrics of one evaluation ({} when none); without rows_hash, the latest of any rows."""
        query = "SELECT metric, value, rows_hash, created FROM evaluations WHERE run_id = ? AND task = ? AND split = ?"
        args: list = [str(run_id), task, split]
        if rows_hash is not None:
            query += " AND rows_hash = ?"
            args.append(rows_hash)
        con = self._connect()
        try:
            rows = con.execute(query + " ORDER BY created", args).fetchall()
        finally:
            con.close()
        if not rows:
            return {}
        latest = rows[-1][2]                        # the rows of the newest evaluation
        return {m: (math.nan if v is None else float(v)) for m, v, h, _ in rows if h == latest}

    def rows(self, run_ids: list[str] | None = None) -> list[dict]:
        """Every stored value (optionally of some run ids) as dicts, oldest first."""
        con = self._connect()
        con.row_factory = sqlite3.Row
        try:
            if run_ids is None:
                found = con.execute("SELECT * FROM evaluations ORDER BY created").fetchall()
            else:
                marks = ",".join("?" * len(run_ids))
                found = con.execute(f"SELECT * FROM evaluations WHERE run_id IN ({marks}) ORDER BY created",
                                    [str(r) for r in run_ids]).fetchall()
        finally:
            con.close()
        return [dict(r) for r in found]


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------------------------- shared pieces

def eval_config(model: str | None = None, task: str = "rotten_tomatoes", options: dict | None = None):
    """A TrainConfig holding what an evaluation needs (model, task, row limits, batch size, max length)."""
    from training.trainer import TrainConfig

    values = {**(options or {}), "model": model, "task": task}
    values.setdefault("method", "lora")
    return TrainConfig.from_dict(values)


def _task_and_rows(cfg) -> tuple:
    """The checked task of a config and its seeded row subsets (the same rows the runs use)."""
    from training.trainer import load_task, split_rows

    task = load_task(cfg)                      # validates every split: bad configs fail here with a clear message
    return task, split_rows(task, cfg)


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise SpectrascopeError(f"unknown split {split!r}: evaluate on one of {', '.join(SPLITS)} "
                                f"(select on validation, report test once)")
    return split


def _clean(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


# ----------------------------------------------------------------------------------------------- base models

def evaluate_base(model: str | None = None, task: str = "rotten_tomatoes", split: str = "validation",
                  options: dict | None = None, store: EvalStore | None = None,
                  recompute: bool = False) -> dict[str, dict[str, float]]:
    """The base model's baselines on `split`: {run id: metrics}, stored in the evaluations table.

    Encoders: a linear probe (logistic regression on frozen mean-pooled features, fit on the train rows) under
    'base:<model>', and the untrained (randomly initialised, seed 0) classification head under
    'base:<model>:untrained-head'. Decoders: zero-shot answer log-likelihood (classification / multiple choice)
    or the base loss and perplexity (lm) under 'base:<model>'. Stored values for the same rows are returned
    unless `recompute`.
    """
    from training.trainer import data_hash

    split = _check_split(split)
    cfg = eval_config(model, task, options)
    decoder = _is_decoder(cfg)                 # the model folder is checked before any data or weights load
    task_obj, rows = _task_and_rows(cfg)
    store = store or EvalStore()
    rows_hash = data_hash({"train": rows["train"], split: rows[split]})
    ids = [base_id(cfg.model)] + ([] if decoder else [base_id(cfg.model, HEAD)])
    if not recompute:
        stored = {i: store.get(i, task_obj.name, split, rows_hash) for i in ids}
        if all(stored.values()):
            return stored
    results = compute_base(cfg, task_obj, rows, split, decoder)
    for run_id, metrics in results.items():
        store.record(run_id, task_obj.name, split, metrics, len(rows[split]), rows_hash)
    return results


def base_rows_hashes(model: str | None, task: str, options: dict | None = None) -> dict[str, str]:
    """{split: rows hash} that evaluate_base stores for these row limits (to find a study's base numbers)."""
    from training.trainer import data_hash

    _, rows = _task_and_rows(eval_config(model, task, options))
    return {split: data_hash({"train": rows["train"], split: rows[split]}) for split in SPLITS}


def _is_decoder(cfg) -> bool:
    """Whether the config's model is a decoder, after its folder passed training.model_check (one line if not)."""
    from training.model_check import check_model

    return check_model(cfg.model, cfg.trust_remote_code).decoder


def compute_base(cfg, task, rows: dict, split: str, decoder: bool) -> dict[str, dict[str, float]]:
    """The baseline numbers without storing them (deterministic: eval mode, fixed seeds, lbfgs)."""
    import torch

    from training.scoring import evaluate
    from training.trainer import build_model, model_folder, pick_device

    folder = model_folder(cfg.model)
    device = pick_device(cfg.device)
    if decoder:
        model, tokenizer = build_model(cfg, folder, task, decoder=True)
        model = model.to(device).eval()
        return {base_id(cfg.model): _clean(evaluate(model, task, rows[split], tokenizer, cfg, True, device))}
    if task.kind == "lm":
        raise SpectrascopeError(f"task {task.name!r} is an lm task: it needs a decoder (causal LM) model, and "
                                f"{cfg.model or DEFAULT_MODEL} is an encoder")
    out = {base_id(cfg.model): linear_probe(cfg, task, rows["train"], rows[split], folder, device)}
    if task.kind == "classification":
        torch.manual_seed(0)                       # the untrained head is the same random head every time
        model, tokenizer = build_model(cfg, folder, task, decoder=False)
        model = model.to(device).eval()
        out[base_id(cfg.model, HEAD)] = _clean(evaluate(model, task, rows[split], tokenizer, cfg, False, device))
    return out


def linear_probe(cfg, task, train_rows: list[dict], eval_rows: list[dict], folder, device) -> dict[str, float]:
    """Logistic regression on frozen mean-pooled features of the encoder, fit on `train_rows`.

    Multiple choice: one feature vector per (question, choice) pair, a binary probe for "this is the answer",
    and the choice with the highest probe score wins.
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from transformers import AutoModel, AutoTokenizer

    from training.metrics import score

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=cfg.trust_remote_code)
    encoder = AutoModel.from_pretrained(folder, trust_remote_code=cfg.trust_remote_code).to(device).eval()

    def texts_labels(rows):
        if task.kind == "classification":
            return [r["text"] for r in rows], [int(r["label"]) for r in rows]
        texts, labels = [], []
        for r in rows:
            for j, choice in enumerate(r["choices"]):
                texts.append(f"{r['question']}\n{choice}")
                labels.append(int(j == r["label"]))
        return texts, labels

    x_train, y_train = texts_labels(train_rows)
    x_eval, _ = texts_labels(eval_rows)
    if len(set(y_train)) < 2:
        raise SpectrascopeError(f"the linear probe needs at least two classes in the train rows of {task.name}; "
                                f"raise max_train_rows")
    features = [mean_pooled(encoder, tokenizer, x, cfg.max_length, cfg.batch_size, device) for x in (x_train, x_eval)]
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    probe.fit(features[0], np.asarray(y_train))
    truth = [int(r["label"]) for r in eval_rows]
    if task.kind == "classification":
        predictions = probe.predict(features[1]).tolist()
    else:
        margin, predictions, start = probe.decision_function(features[1]), [], 0
        for r in eval_rows:
            n = len(r["choices"])
            predictions.append(int(np.argmax(margin[start:start + n])))
            start += n
    names = [m for m in task.metrics if m not in ("loss", "perplexity")] or ["accuracy"]
    return _clean(score(names, truth, predictions))


def mean_pooled(encoder, tokenizer, texts: list[str], max_length: int, batch_size: int, device):
    """Mean of the last hidden states over real tokens, one row per text (numpy float64)."""
    import numpy as np
    import torch

    from training import data

    encoded = data.encode_classification([{"text": t, "label": 0} for t in texts], tokenizer, max_length)
    encoded.pop("labels")
    out = []
    with torch.no_grad():
        for batch in data.batches(encoded, batch_size, shuffle=False):
            batch = {k: v.to(device) for k, v in batch.items()}
            hidden = encoder(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


# ----------------------------------------------------------------------------------------------- finished runs

def record_result(job, store: EvalStore | None = None) -> bool:
    """Copy a finished job's result numbers (best validation pass, test) into the table; True if any.

    They come from scoring.evaluate on the run's own rows, so they equal a re-evaluation of the artifacts;
    values already stored (e.g. by `evaluate --run`) are kept.
    """
    result = job.result() if job.status == "done" else None
    if not result or result.get("status") != "done":
        return False
    store = store or EvalStore()
    task = _task_name(job.config.get("task"))
    manifest = job.path(run_layout.MANIFEST)
    rows = json.loads(manifest.read_text()).get("rows", {}) if manifest.is_file() else {}
    found = False
    for split in SPLITS:
        metrics = result.get(split)
        if isinstance(metrics, dict) and metrics:
            store.record(str(job.id), task, split, _clean(metrics), rows.get(split), replace=False)
            found = True
    return found


def _task_name(task: str | None) -> str:
    """The registry name of a task given by name or path (the name inside a config file)."""
    if not task:
        return "rotten_tomatoes"
    if Path(str(task)).suffix in (".yaml", ".yml", ".json"):
        try:
            from training.tasks import load_task

            return load_task(task).name
        except SpectrascopeError:
            return Path(str(task)).stem
    return str(task)


def evaluate_run(job_id: int, split: str = "validation", task: str | None = None, store: EvalStore | None = None,
                 recompute: bool = False, jobs=None) -> dict[str, float]:
    """Metrics of a finished run on `split`, from its reloaded artifacts; stored under the job id.

    `task` defaults to the run's own task; a decoder run can also be scored on another task (e.g. hamlet_lm
    perplexity after a classification fine-tune). Stored values are returned unless `recompute`.
    """
    from training.jobs import JobStore

    split = _check_split(split)
    jobs = jobs or JobStore()
    store = store or EvalStore(jobs.data)
    job = jobs.get(job_id)
    if job.status != "done":
        raise SpectrascopeError(f"job {job.id} is {job.status}: only finished (done) runs can be evaluated")
    own = _task_name(job.config.get("task"))
    name = _task_name(task) if task else own
    if not recompute:
        if name == own:
            record_result(job, store)
        stored = store.get(str(job.id), name, split, "")
        if stored:
            return stored
    check_run_models(job.run_dir)
    metrics = compute_run(job.run_dir, split, task if name != own else None)
    store.record(str(job.id), name, split, metrics, None, "", replace=True)
    return metrics


def check_run_models(run_dir: str | Path) -> None:
    """A finished run's base folder (or full model) passes training.model_check and its LoRA adapter fits that
    base; one-line SpectrascopeError if not (an unreadable manifest is left to load_artifacts to report)."""
    from analysis.sources import open_source
    from training.model_check import check_folder, one_line
    from training import registry

    run_dir = Path(run_dir)
    try:
        manifest = json.loads(run_layout.manifest(run_dir).read_text())
        config, folder = manifest["config"], Path(manifest["model_folder"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    trust, method = config.get("trust_remote_code") is True, config.get("method")
    spec = registry.get(method) if method in registry.names() else None
    artifacts = run_layout.artifacts(run_dir) / (spec.artifact_dir if spec else "")
    whole = spec is not None and spec.weights == "model"
    try:
        check_folder(artifacts if whole and artifacts.is_dir() else folder, trust)
        if spec is not None and spec.weights == "adapter" and (artifacts / "adapter_config.json").is_file():
            open_source(folder, artifacts, trust_remote_code=trust)     # headers only: shapes against the base
    except SpectrascopeError as exc:
        raise SpectrascopeError(f"run {run_dir.name} cannot be evaluated: {one_line(exc)}") from None


def compute_run(run_dir: str | Path, split: str, task: str | None = None) -> dict[str, float]:
    """A run's metrics on `split` of its own task (trainer.evaluate_artifacts) or of another task (decoders)."""
    from training.scoring import evaluate
    from training.trainer import evaluate_artifacts, load_artifacts, split_rows
    from training.trainer import load_task as checked_task

    if task is None:
        return _clean(evaluate_artifacts(run_dir, split))
    model, tokenizer, cfg, _, _, decoder = load_artifacts(run_dir)
    if not decoder:
        raise SpectrascopeError(f"run {Path(run_dir).name} is an encoder with a classification head trained for "
                                f"{cfg.task!r}: it can only be evaluated on that task")
    other = type(cfg)(**{**asdict(cfg), "task": task})
    task_obj = checked_task(other)
    rows = split_rows(task_obj, other)[split]
    device = next(model.parameters()).device
    return _clean(evaluate(model, task_obj, rows, tokenizer, cfg, True, device))
