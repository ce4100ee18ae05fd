"""A job's progress and ETA from planted progress lines with known timings."""
from types import SimpleNamespace

import pytest

from training.job_progress import summarise


def test_eta_is_the_measured_rate_since_the_first_step_times_the_steps_left():
    job = SimpleNamespace(status="running", started=0.0)
    # 30 s of loading before step 1, then 2 s per step: the loading must not slow the estimate
    lines = [{"step": s, "total_steps": 10, "time": 30.0 + 2 * (s - 1), "loss": 1.0 / s} for s in (1, 2, 3, 4)]
    out = summarise(job, lines, now=37.0)                      # the last line (step 4) is 1 s old
    assert out["step"] == 4 and out["total"] == 10 and out["progress"] == pytest.approx(0.4)
    assert out["eta"] == pytest.approx(2.0 * 6 - 1.0)           # 6 steps left at 2 s, 1 s of it already spent
    assert out["loss"] == pytest.approx(0.25)


def test_no_eta_before_a_step_or_after_the_end():
    assert summarise(SimpleNamespace(status="running", started=0.0), [], now=5.0)["eta"] is None
    done = summarise(SimpleNamespace(status="done", started=0.0), [{"step": 3, "total_steps": 10, "time": 1.0}])
    assert done["progress"] == 1.0 and done["eta"] is None
