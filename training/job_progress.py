"""A job's progress from its progress lines: fraction done, step, total, ETA from measured steps, last loss."""
from __future__ import annotations

import time


def summarise(job, lines: list[dict], now: float | None = None) -> dict:
    """{"progress": 0–1, "step", "total", "eta": seconds or None, "loss"} of `job` (anything with `status` and
    `started`) from its progress lines (dicts with step, total_steps, time, loss).

    The ETA is the measured time per step since the first recorded step (model loading and data preparation
    before it excluded) times the steps left, less the time since the last line; None until a running job has
    a step, and for a job that is not running.
    """
    now = time.time() if now is None else now
    steps = [ln for ln in lines if "step" in ln]
    last = steps[-1] if steps else {}
    step, total = int(last.get("step") or 0), int(last.get("total_steps") or 0)
    progress = 1.0 if job.status == "done" else (min(step / total, 1.0) if total else 0.0)
    eta = None
    if job.status == "running" and total and step:
        t0, s0 = (steps[0]["time"], steps[0]["step"]) if len(steps) > 1 else (job.started or now, 0)
        per_step = (last.get("time", now) - t0) / max(step - s0, 1)
        eta = max(0.0, per_step * (total - step) - (now - last.get("time", now)))
    return {"progress": progress, "step": step, "total": total, "eta": eta, "loss": last.get("loss")}
