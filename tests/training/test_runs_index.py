"""The run-folder index: finished runs' comparable artifacts found from the files on disk alone."""
from __future__ import annotations

import json
from pathlib import Path

from analysis.config import DEFAULT_MODEL
from training.runs_index import find_artifact, list_runs, seed_pairs


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


def write_manifest(run: Path, config: dict, model=DEFAULT_MODEL) -> None:
    (run / "manifest.json").write_text(json.dumps({"model": model, "task": "rotten_tomatoes", "config": config,
                                                   "allocation": config.get("allocation")}))


def test_labels_show_the_allocation_and_no_rank_for_full_fine_tunes(tmp_path):
    alloc = {"strategy": "alphalora", "experts": [4, 5, 6, 5, 4, 6], "top_k": [2] * 6, "params": {"beta": 2.5}}
    moe = make_run(tmp_path, "1-moe-alloc", "moe_lora")
    write_manifest(moe, {"method": "moe_lora", "rank": 8, "experts": 4, "top_k": 2, "allocation": alloc, "seed": 1})
    plain = make_run(tmp_path, "2-moe-plain", "moe_lora")
    write_manifest(plain, {"method": "moe_lora", "rank": 8, "experts": 4, "top_k": 2, "allocation": None})
    full = make_run(tmp_path, "3-full", "full")
    write_manifest(full, {"method": "full", "rank": 8, "alpha": 16, "experts": 4, "lr": 1e-5, "seed": 0})
    lora = make_run(tmp_path, "4-lora-alloc", "lora")
    write_manifest(lora, {"method": "lora", "rank": 8, "allocation": {"strategy": "alphalora", "ranks": [4, 8, 12],
                                                                      "rank_pattern": {"x": 4}}})
    by_key = {r.key: r for r in list_runs(tmp_path)}
    label = by_key["1-moe-alloc"].label
    assert label == "1-moe-alloc (MoE-LoRA, r=8, alphalora 4-5-6-5-4-6 (30), rotten_tomatoes, seed 1)"
    assert "4 experts" not in label
    assert by_key["2-moe-plain"].label == "2-moe-plain (MoE-LoRA, r=8, 4 experts, rotten_tomatoes)"
    full_run = by_key["3-full"]
    assert full_run.label == "3-full (Full fine-tune, rotten_tomatoes, seed 0)"
    assert not {"rank", "alpha", "experts"} & set(full_run.settings) and full_run.settings["lr"] == 1e-5
    assert by_key["4-lora-alloc"].label == "4-lora-alloc (LoRA, alphalora ranks 4-8-12 (24), rotten_tomatoes)"


def test_seed_pairs_group_runs_of_one_recipe(tmp_path):
    alloc = {"strategy": "uniform", "experts": [2, 2], "top_k": [1, 1]}
    for i, (seed, lr) in enumerate([(0, 1e-4), (1, 1e-4), (2, 1e-4), (0, 3e-4)], 1):
        run = make_run(tmp_path, f"{i}-moe", "moe_lora")
        write_manifest(run, {"method": "moe_lora", "rank": 4, "lr": lr, "seed": seed, "allocation": alloc})
    run = make_run(tmp_path, "5-full", "full")
    write_manifest(run, {"method": "full", "lr": 1e-4, "seed": 0})
    run = make_run(tmp_path, "6-full", "full")
    write_manifest(run, {"method": "full", "lr": 1e-4, "seed": 0})          # same seed: not a seed pair
    runs = list_runs(tmp_path)
    pairs = [(a.key, b.key) for a, b in seed_pairs(runs)]
    assert pairs == [("1-moe", "2-moe")]                                     # the first two seeds of the recipe
    assert runs[0].recipe == runs[1].recipe != runs[3].recipe
