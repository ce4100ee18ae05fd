"""Base-model evaluations (linear probe, untrained head, zero-shot) as queued jobs, never beside a running job."""
from __future__ import annotations

from typing import Callable

from analysis.types import SpectrascopeError

KIND = "base_eval"
METHOD_LABEL = "base evaluation"


def is_base_eval(config: dict | None) -> bool:
    """Whether a job config is a base-model evaluation rather than a fine-tune."""
    return bool(config) and config.get("kind") == KIND


def base_eval_config(model: str | None, task: str, options: dict | None = None) -> dict:
    """The job config of a base evaluation (validation and test) with the study's row limits."""
    return {"kind": KIND, "method": KIND, "model": model, "task": task, "options": dict(options or {})}


def check_base_eval(config: dict) -> dict:
    """The validated base-evaluation config (model, task and row limits checked, data readable)."""
    from training.evaluation import _task_and_rows, eval_config

    unknown = sorted(set(config) - {"kind", "method", "model", "task", "options", "name"})
    if unknown:
        raise SpectrascopeError(f"unknown base-evaluation option(s) {unknown}; known: kind, model, task, options")
    options = config.get("options") or {}
    if not isinstance(options, dict):
        raise SpectrascopeError("the base evaluation's options must be a JSON object of training options")
    _task_and_rows(eval_config(config.get("model"), config.get("task") or "rotten_tomatoes", options))
    return base_eval_config(config.get("model"), config.get("task") or "rotten_tomatoes", options)


def run_base_eval(config: dict, run_dir, progress: Callable[[dict], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> dict:
    """The worker's entry for a base-evaluation job: both splits, stored in the evaluations table."""
    from training.evaluation import SPLITS, evaluate_base

    out: dict = {"status": "done", "kind": KIND, "model": config.get("model"), "task": config.get("task")}
    for i, split in enumerate(SPLITS):
        if should_stop is not None and should_stop():
            return {**out, "status": "cancelled"}
        out[split] = evaluate_base(config.get("model"), config.get("task") or "rotten_tomatoes", split,
                                   config.get("options") or {})
        if progress is not None:
            progress({"step": i + 1, "total_steps": len(SPLITS), "split": split})
    return out
