"""Study statistics: Wilson intervals for baselines, paired bootstrap of each arm against its reference, study JSON."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from analysis.config import DEFAULT_MODEL
from analysis.types import SpectrascopeError
from training import registry, run_layout

# arm key -> the arm it is compared with (paired, same test rows and seeds); None: the reference of the others.
# Each method's arms say it (registry.Arm.reference).
REFERENCE = {key: arm.reference for key, arm in registry.study_arms().items()}
RESAMPLES = 10_000
BASELINE_NAMES = {"probe": "linear_probe", "untrained-head": "untrained_head", "zero-shot": "zero_shot"}
WAITING = "waiting: no seed has finished in both arms"


def _label(key: str) -> str:
    from training.study import METHODS

    return METHODS[key][0] if key in METHODS else key


def _clean(value, low: float = -math.inf, high: float = math.inf):
    """JSON-safe number rounded to 6 decimals, clipped to [low, high]: None for NaN / inf / missing."""
    if value is None:
        return None
    value = float(value)
    return round(min(max(value, low), high), 6) if math.isfinite(value) else None


# ----------------------------------------------------------------------------------------------- baselines

def base_n_rows(evals, run_id: str, task: str, split: str, rows_hash: str | None = None) -> int | None:
    """The number of rows behind a stored base evaluation (the one EvalStore.get returns), or None."""
    found = [r for r in evals.rows([run_id]) if r["task"] == task and r["split"] == split
             and (rows_hash is None or r["rows_hash"] == rows_hash)]
    if not found:
        return None
    latest = found[-1]["rows_hash"]                  # rows() is oldest first, like EvalStore.get's choice
    counts = [r["n_rows"] for r in found if r["rows_hash"] == latest and r["n_rows"] is not None]
    return int(counts[-1]) if counts else None


def accuracy_interval(accuracy: float | None, n_rows: int | None) -> tuple[float, float] | None:
    """Wilson 95 % interval of an accuracy over n_rows rows (successes = round(accuracy · n)); None if unknown."""
    from training.metrics import wilson_interval

    if accuracy is None or n_rows is None or not math.isfinite(accuracy) or not math.isfinite(n_rows) or n_rows < 1:
        return None
    return wilson_interval(int(round(accuracy * n_rows)), int(n_rows))


def baselines(model: str | None, task: str, evals=None, rows_hash: str | None = None) -> dict[str, dict]:
    """The base model's test baselines: {"linear_probe" | "zero_shot" | "untrained_head":
    {"test_accuracy", "ci95": [lo, hi] (Wilson, over the test rows), "rows"}}."""
    from training.evaluation import HEAD, EvalStore, base_id

    evals = evals or EvalStore()
    out = {}
    for variant in (None, HEAD):
        run_id = base_id(model, variant)
        metrics = evals.get(run_id, task, "test", rows_hash)
        if not metrics:
            continue
        kind = "untrained-head" if variant else ("zero-shot" if "loss" in metrics else "probe")
        accuracy = _clean(metrics.get("accuracy"))
        rows = base_n_rows(evals, run_id, task, "test", rows_hash)
        ci = accuracy_interval(accuracy, rows)
        out[BASELINE_NAMES[kind]] = {"test_accuracy": accuracy, "ci95": list(ci) if ci else None, "rows": rows}
    return out


# ----------------------------------------------------------------------------------------------- paired comparison

def read_test_predictions(job) -> tuple[list[int], list[int]] | None:
    """(y_true, y_pred) of a finished run's test rows from its predictions.json, or None."""
    if job.status != "done" or not job.run_dir:
        return None
    try:
        test = json.loads(run_layout.predictions(job.run_dir).read_text())["test"]
        y_true, y_pred = [int(v) for v in test["y_true"]], [int(v) for v in test["y_pred"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (y_true, y_pred) if len(y_true) == len(y_pred) and y_true else None


def _arm_predictions(record: dict, jobs: list) -> dict[str, dict[int, tuple[list[int], list[int]]]]:
    """{arm key: {seed: (y_true, y_pred)}} of the study's finished runs with stored predictions."""
    by_id = {str(j.id): j for j in jobs}
    out: dict[str, dict] = {}
    for entry in record["jobs"]:
        job = by_id.get(str(entry["job"]))
        found = read_test_predictions(job) if job is not None else None
        if found is not None:
            out.setdefault(entry["key"], {})[int(entry["seed"])] = found
    return out


def compare_arm(arm: dict[int, tuple], reference: dict[int, tuple], resamples: int = RESAMPLES):
    """Paired bootstrap of test accuracy (arm − reference) over the seeds both finished: a PairedDiff, or None
    when no seed has both. The runs of one seed must have scored the same test rows."""
    from training.metrics import paired_bootstrap

    seeds = sorted(set(arm) & set(reference))
    if not seeds:
        return None
    a, b = [], []
    for seed in seeds:
        (truth_a, pred_a), (truth_b, pred_b) = arm[seed], reference[seed]
        if truth_a != truth_b:
            raise SpectrascopeError(f"seed {seed}: the two runs scored different test rows ({len(truth_a)} and "
                                    f"{len(truth_b)} rows); compare runs of one study (same task and row limits)")
        a.append(np.equal(truth_a, pred_a))
        b.append(np.equal(truth_b, pred_b))
    if len({len(x) for x in a}) > 1:
        raise SpectrascopeError("the seeds scored different numbers of test rows; use one study's row limits")
    return paired_bootstrap(np.array(a, dtype=float), np.array(b, dtype=float), resamples=resamples)


def paired_comparisons(record: dict, jobs: list, resamples: int = RESAMPLES) -> list[dict]:
    """Each arm of a study against its reference arm (REFERENCE), in the study's order: {"key", "arm",
    "reference_key", "reference", "mean_diff", "ci95" [lo, hi], "verdict", "seeds", "rows"} (test accuracy,
    paired over the same test rows and seeds; mean_diff / ci95 None until a seed has finished in both)."""
    keys = list(dict.fromkeys(e["key"] for e in record["jobs"]))
    found = _arm_predictions(record, jobs)
    out = []
    for key in keys:
        ref = REFERENCE.get(key)
        if ref is None or ref not in keys:
            continue
        row = {"key": key, "arm": _label(key), "reference_key": ref, "reference": _label(ref), "mean_diff": None,
               "ci95": None, "verdict": WAITING, "seeds": 0, "rows": 0}
        try:
            diff = compare_arm(found.get(key, {}), found.get(ref, {}), resamples)
        except SpectrascopeError as err:
            row["verdict"] = f"not comparable: {err}"
            diff = None
        if diff is not None:
            row.update(mean_diff=diff.mean, ci95=[diff.low, diff.high], seeds=diff.seeds, rows=diff.rows,
                       verdict=diff.verdict(row["arm"], row["reference"]))
        out.append(row)
    return out


def comparison_frame(rows: list[dict]):
    """The paired comparisons as display strings: arm, reference, mean difference, 95 % CI, verdict, seeds, rows."""
    cols = ["arm", "reference", "mean difference", "95 % CI", "verdict", "seeds", "rows"]
    out = [{"arm": r["arm"], "reference": r["reference"],
            "mean difference": "—" if r["mean_diff"] is None else f"{r['mean_diff']:+.3f}",
            "95 % CI": "—" if r["ci95"] is None else f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]",
            "verdict": r["verdict"], "seeds": r["seeds"], "rows": r["rows"]} for r in rows]
    return pd.DataFrame(out, columns=cols)


# ----------------------------------------------------------------------------------------------- table cells

def done_planned(r) -> str:
    """'2 / 3 (1 cancelled)' for trained methods, 'base' for the base model's rows."""
    if r.get("runs") == "base" or "planned" not in r or pd.isna(r["planned"]):
        return str(r.get("runs", "—"))
    extra = [f"{int(r[k])} {k}" for k in ("cancelled", "failed") if not pd.isna(r.get(k)) and r.get(k)]
    return f"{int(r['done'])} / {int(r['planned'])}" + (f" ({', '.join(extra)})" if extra else "")


def n_cell(r, splits: list[str]) -> str:
    """'n = 3' (finished seeds) for trained methods; the number of rows scored for the base model's rows."""
    if r.get("runs") == "base":
        rows = [(s, r.get(f"{s}_rows")) for s in splits if not pd.isna(r.get(f"{s}_rows", math.nan))]
        return f"{int(rows[0][1])} {rows[0][0]} rows" if rows else "—"
    done = r.get("done")
    return "—" if done is None or pd.isna(done) else f"n = {int(done)}"


# ----------------------------------------------------------------------------------------------- the study JSON

def study_report(study_id: int | str, store=None, evals=None, resamples: int = RESAMPLES) -> dict:
    """The study as one JSON-able object: {"model", "task", "arms": [{"name", "label", "method", "allocation",
    "target_modules", "trainable_params", "seeds", "test_accuracy_mean", "test_accuracy_ci95", "reference",
    "diff_vs_reference_mean", "diff_vs_reference_ci95", "verdict", "rows"}], "baselines": {…}}.

    "seeds" lists the seeds whose test accuracy is in the mean; "allocation" describes what the arm trained
    ("rank 42", "alphalora β=2.5: 4-5-6-5-4-6 (30)", "all weights").
    test_accuracy_ci95 is the Student-t interval over seeds clipped to [0, 1] (None with one seed);
    diff_vs_reference_ci95 the paired bootstrap interval (None without a reference or a finished pair).
    """
    from training.evaluation import _task_name
    from training.jobs import JobStore
    from training.metrics import mean_ci
    from training.study import METHODS, describe_allocation, load_study, study_jobs

    record = load_study(study_id)
    jobs = study_jobs(record, store or JobStore())
    spec = record["spec"]
    by_id = {str(j.id): j for j in jobs}
    pairs = {p["key"]: p for p in paired_comparisons(record, jobs, resamples)}
    keys = list(dict.fromkeys(e["key"] for e in record["jobs"]))
    arms = []
    for key in keys:
        entries = [e for e in record["jobs"] if e["key"] == key and str(e["job"]) in by_id
                   and by_id[str(e["job"])].status == "done"]
        done = [by_id[str(e["job"])] for e in entries]
        results = [j.result() or {} for j in done]
        scored = [(e["seed"], float(r["test"]["accuracy"])) for e, r in zip(entries, results)
                  if isinstance(r.get("test"), dict) and isinstance(r["test"].get("accuracy"), (int, float))]
        accs = [acc for _, acc in scored]
        ci = mean_ci(accs) if accs else None
        params = [r["trainable_params"] for r in results if isinstance(r.get("trainable_params"), (int, float))]
        targets = next((r["target_modules"] for r in results if r.get("target_modules")), None)
        _, method, allocation = METHODS.get(key, (key, None, None))
        pair = pairs.get(key)
        arms.append({
            "name": key, "label": _label(key), "method": method,
            "allocation": describe_allocation(done[0].config) if done else allocation,
            "target_modules": targets, "trainable_params": int(round(float(np.mean(params)))) if params else None,
            "seeds": [seed for seed, _ in scored], "test_accuracy_mean": _clean(ci.mean) if ci else None,
            "test_accuracy_ci95": [_clean(ci.low, 0, 1), _clean(ci.high, 0, 1)] if ci and ci.defined else None,
            "reference": REFERENCE.get(key) if REFERENCE.get(key) in keys else None,
            "diff_vs_reference_mean": _clean(pair["mean_diff"]) if pair else None,
            "diff_vs_reference_ci95": [_clean(v) for v in pair["ci95"]] if pair and pair["ci95"] else None,
            "verdict": pair["verdict"] if pair else None, "rows": pair["rows"] if pair else None,
        })
    task = _task_name(spec["task"])
    hashes = record.get("base_rows_hash") or {}
    return {"study": record["id"], "model": spec["model"] or DEFAULT_MODEL, "task": task, "arms": arms,
            "baselines": baselines(spec["model"], task, evals, hashes.get("test"))}
