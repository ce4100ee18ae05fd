"""The run-folder layout is defined once (training.run_layout), with the on-disk names older runs already use."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from analysis.types import SpectrascopeError
from training import run_layout

ROOT = Path(__file__).resolve().parents[2]
# The modules that read or write run folders: none spells a run-folder file name itself.
USERS = ["jobs.py", "worker.py", "trainer.py", "evaluation.py", "study.py", "study_plan.py", "study_report.py",
         "runs_index.py", "base_jobs.py"]
NAMES = r"(manifest\.json|result\.json|predictions\.json|progress\.jsonl|worker\.log|heartbeat|cancel|artifacts|runs)"
LITERAL = re.compile(r"""(?:/\s*|path\()["']""" + NAMES + r"""["']""")          # folder / "name", job.path("name")


def test_on_disk_names_stay_those_of_older_runs(tmp_path):
    assert (run_layout.MANIFEST, run_layout.RESULT, run_layout.PREDICTIONS) == \
        ("manifest.json", "result.json", "predictions.json")
    assert (run_layout.PROGRESS, run_layout.LOG, run_layout.HEARTBEAT, run_layout.CANCEL_FLAG) == \
        ("progress.jsonl", "worker.log", "heartbeat", "cancel")
    runs = run_layout.runs_root(tmp_path)
    assert runs == tmp_path / "runs"
    run = run_layout.run_dir(runs, 12, "lora-trec")
    assert run == tmp_path / "runs" / "12-lora-trec"
    assert run_layout.parse_run_dir(run) == (12, "lora-trec") and run_layout.parse_run_dir(tmp_path / "x") is None
    assert run_layout.manifest(run) == run / "manifest.json" and run_layout.result(run) == run / "result.json"
    assert run_layout.artifact_folder(run, "lora").parent == run / "artifacts"
    with pytest.raises(SpectrascopeError, match="unknown method"):
        run_layout.artifact_folder(run, "no-such-method")


@pytest.mark.parametrize("name", USERS)
def test_run_folder_names_are_not_spelled_outside_run_layout(name):
    source = (ROOT / "training" / name).read_text()
    code = "\n".join(line.split("#")[0] for line in source.splitlines())
    assert not LITERAL.findall(code), f"training/{name}: use training.run_layout for run-folder paths"
