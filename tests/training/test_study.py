"""Studies: MoLA presets, allocations, seed aggregation with CIs, the Pareto front, a real tiny study via the CLI."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.allocation import allocate, mola
from analysis.types import SpectrascopeError
from training import study
from training.study import (StudySpec, format_table, mola_preset, pareto_front, study_allocations, summarise_runs,
                            to_markdown)

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--set", "max_train_rows=32", "--set", "max_eval_rows=16", "--set", "max_test_rows=16", "--set",
        "eval_every=0"]


@pytest.mark.parametrize("layers,budget", [(32, 160), (6, 30), (12, 60), (24, 96), (2, 10), (3, 9), (6, 12)])
def test_mola_preset_grows_with_depth_and_meets_the_budget(layers, budget):
    preset = mola_preset(layers, budget)
    counts = mola(preset, layers)
    digits = [int(c) for c in preset[5:]]
    assert digits == sorted(digits) and len(digits) == min(4, layers)
    assert sum(counts) == budget
    if (layers, budget) == (32, 160):
        assert preset == "mola:2468"                       # the published configuration


def test_study_allocations_share_one_budget():
    scores = [2.3, 2.7, 2.9, 2.6, 2.5, 3.1]
    spec = StudySpec(budget=30)
    out = study_allocations(spec, scores)
    assert set(out) == {"moe_uniform", "moe_mola", "moe_alphalora"}
    assert all(a["total"] == 30 for a in out.values())
    assert out["moe_uniform"]["experts"] == [5] * 6
    assert out["moe_alphalora"]["experts"] == allocate("alphalora", scores=scores, budget=30, beta=2.5).experts
    assert out["moe_alphalora"]["params"]["beta"] == 2.5
    assert out["moe_mola"]["experts"] == sorted(out["moe_mola"]["experts"])


def runs(values: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for method, accs in values.items():
        for seed, acc in enumerate(accs):
            rows.append({"model": "m", "task": "t", "method": method, "allocation": "a", "seed": seed,
                         "status": "done", "trainable_params": 100.0, "steps": 10, "seconds": 2.0 + seed,
                         "test accuracy": acc, "validation accuracy": acc - 0.1})
    return pd.DataFrame(rows)


def test_seeds_aggregate_to_mean_and_student_t_ci_by_hand():
    table = summarise_runs(runs({"LoRA": [0.8, 0.9], "Full fine-tune": [0.7, 0.7, 0.7], "MoE-LoRA MoLA": [0.6]}))
    assert list(table["method"]) == ["LoRA", "MoE-LoRA MoLA", "Full fine-tune"]        # the study's order
    lora = table.iloc[0]
    # t(0.975, 1) = 12.7062; s = 0.0707107; half-width = 12.7062 · s / √2 = 0.635310
    assert lora["test accuracy"] == pytest.approx(0.85)
    assert lora["test accuracy ci"] == pytest.approx(12.7062047 * 0.0707106781 / math.sqrt(2), rel=1e-6)
    assert lora["test accuracy n"] == 2 and lora["runs"] == "2/2" and lora["seconds"] == 2.5
    assert table.iloc[2]["test accuracy ci"] == pytest.approx(0.0)
    assert math.isnan(table.iloc[1]["test accuracy ci"])                                 # one seed: no CI
    shown = format_table(table, ("test",))
    assert list(shown["test accuracy"]) == ["0.850 ± 0.635", "0.600", "0.700 ± 0.000"]
    assert "validation accuracy" not in shown
    md = to_markdown(shown)
    assert md.splitlines()[0].startswith("| model | task | method |") and "0.850 ± 0.635" in md


def test_unfinished_runs_count_but_do_not_score():
    df = runs({"LoRA": [0.8, 0.9]})
    df.loc[1, "status"], df.loc[1, "test accuracy"] = "running", float("nan")
    row = summarise_runs(df).iloc[0]
    assert row["runs"] == "1/2" and row["test accuracy"] == 0.8 and row["test accuracy n"] == 1


def test_pareto_front_by_hand():
    points = pd.DataFrame({"p": [10, 20, 30, 40, 5], "acc": [0.5, 0.7, 0.6, 0.9, 0.4]})
    assert pareto_front(points, "p", "acc")["p"].tolist() == [5, 10, 20, 40]
    assert pareto_front(points, "p", "acc", higher_is_better=False)["p"].tolist() == [5]      # a loss: 0.4 wins


def test_describe_and_label_runs():
    alloc = {"strategy": "alphalora", "experts": [1, 2], "params": {"beta": 2.5}}
    assert study.method_label({"method": "moe_lora", "allocation": alloc}) == "MoE-LoRA AlphaLoRA"
    assert study.method_label({"method": "moe_lora", "allocation": {"strategy": "mola:24"}}) == "MoE-LoRA MoLA"
    assert study.describe_allocation({"method": "moe_lora", "allocation": alloc}) == "alphalora β=2.5: 1-2 (3)"
    assert study.describe_allocation({"method": "lora", "rank": 8}) == "rank 8"
    assert study.describe_allocation({"method": "full"}) == "all weights"


@pytest.mark.parametrize("spec,message", [
    (StudySpec(methods=["qlora"]), "unknown study method"),
    (StudySpec(seeds=0), "seeds must be"),
    (StudySpec(budget=-3), "budget must be"),
    (StudySpec(options={"seed": 3}), "set by the study itself"),
    (StudySpec(task="nope"), "unknown task 'nope'"),
    (StudySpec(options={"max_eval_rows": 0}), "max_eval_rows must be"),
])
def test_bad_studies_queue_nothing(tmp_path, monkeypatch, spec, message):
    monkeypatch.setenv("SPECTRASCOPE_DATA", str(tmp_path))
    with pytest.raises(SpectrascopeError, match=message):
        study.start_study(spec)
    assert study.list_studies() == [] and not (tmp_path / "runs").exists()


def cli(*args, env, timeout=600):
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_study_on_the_default_model_finishes_and_prints_the_table(tmp_path):
    env = dict(os.environ, SPECTRASCOPE_DATA=str(tmp_path), OMP_NUM_THREADS="1", SPECTRASCOPE_MAX_JOBS="1")
    proc = cli("study", "--seeds", "1", "--max-steps", "1", *TINY, "--wait", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "study 1: 5 jobs queued" in proc.stderr
    table = proc.stdout.strip().splitlines()
    methods = [line.split(" | ")[2] for line in table[2:]]
    assert methods == ["LoRA", "MoE-LoRA uniform", "MoE-LoRA MoLA", "MoE-LoRA AlphaLoRA", "Full fine-tune",
                       "Base: linear probe", "Base: untrained head"]
    record = json.loads((tmp_path / "studies" / "1" / "study.json").read_text())
    assert [j["key"] for j in record["jobs"]] == list(study.METHODS) and record["n_layers"] == 6
    for key in ("moe_uniform", "moe_mola", "moe_alphalora"):
        alloc = json.loads(Path(record["allocations"][key]).read_text())
        assert alloc["total"] == 30 and len(alloc["experts"]) == 6
    shown = json.loads(cli("study-show", "1", "--json", env=env).stdout)
    assert len(shown) == 7 and all(0 <= r["test accuracy"] <= 1 for r in shown)
    assert shown[3]["allocation"].startswith("alphalora β=2.5")
    assert {r["steps"] for r in shown[:5]} == {1.0}
    assert "rotten_tomatoes" in cli("study-list", env=env).stdout
    bad = cli("study-show", "7", env=env)
    assert bad.returncode == 2 and "no study with id 7" in bad.stderr
