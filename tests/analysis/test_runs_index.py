"""The run-folder index: finished runs' comparable artifacts found from the files on disk alone."""
from __future__ import annotations

import json
from pathlib import Path

from analysis.config import DEFAULT_MODEL
from analysis.runs_index import find_artifact, list_runs


def make_run(root: Path, folder: str, method: str | None, status: str | None = "done", model=DEFAULT_MODEL,
             manifest: bool = True) -> Path:
    run = root / folder
    art = run / "artifacts"
    if method == "lora":
        (art / "adapter").mkdir(parents=True)
        (art / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/gone"}))
        (art / "adapter" / "adapter_model.safetensors").write_bytes(b"x")
    elif method == "moe_lora":
        (art / "moe_lora").mkdir(parents=True)
        (art / "moe_lora" / "moe_lora_config.json").write_text("{}")
        (art / "moe_lora" / "moe_lora.safetensors").write_bytes(b"x")
    elif method == "full":
        (art / "model").mkdir(parents=True)
        (art / "model" / "config.json").write_text("{}")
        (art / "model" / "model.safetensors").write_bytes(b"x")
    else:
        run.mkdir(parents=True)
    if manifest:
        (run / "manifest.json").write_text(json.dumps({"model": model, "task": "rotten_tomatoes",
                                                       "config": {"method": method, "rank": 4, "experts": 2}}))
    if status is not None:
        (run / "result.json").write_text(json.dumps({"status": status, "steps": 3, "test": {"accuracy": 0.5}}))
    return run


def test_lists_done_runs_with_their_artifacts(tmp_path):
    make_run(tmp_path, "2-lora-a", "lora")
    make_run(tmp_path, "10-full-b", "full")
    make_run(tmp_path, "3-moe-c", "moe_lora")
    make_run(tmp_path, "4-failed", "lora", status="failed")
    make_run(tmp_path, "5-running", None, status=None)           # no weights yet
    make_run(tmp_path, "notarun", "lora")                        # not <id>-<name>
    runs = list_runs(tmp_path)
    assert [(r.run_id, r.method) for r in runs] == [(2, "lora"), (3, "moe_lora"), (10, "full")]
    lora, moe, full = runs
    assert lora.base == DEFAULT_MODEL and lora.task == "rotten_tomatoes"
    assert lora.sources() == (DEFAULT_MODEL, DEFAULT_MODEL, str(tmp_path / "2-lora-a" / "artifacts" / "adapter"))
    assert full.sources() == (DEFAULT_MODEL, str(tmp_path / "10-full-b" / "artifacts" / "model"), None)
    assert moe.sources() == (DEFAULT_MODEL, None, None)
    assert "LoRA" in lora.label and "r=4" in lora.label and lora.key == "2-lora-a"
    assert "2 experts" in moe.label
    assert lora.metrics == {"accuracy": 0.5} and lora.settings["steps"] == 3


def test_missing_manifest_and_unknown_base(tmp_path):
    make_run(tmp_path, "1-lora", "lora", manifest=False, status=None)
    make_run(tmp_path, "2-full", "full", model="/no/such/folder")
    lora, full = list_runs(tmp_path)
    assert lora.base is None                    # the adapter's recorded base is gone: the page's base is used
    assert full.base is None


def test_empty_or_missing_root(tmp_path):
    assert list_runs(tmp_path / "nothing") == []
    assert list_runs(tmp_path) == []
    assert find_artifact(tmp_path) is None
