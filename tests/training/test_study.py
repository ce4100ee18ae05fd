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
from training import registry, study, study_plan
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
    proc = cli("study", "--seeds", "1", "--max-steps", "1", *TINY, "--wait", "--json", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    *table_lines, last = proc.stdout.strip().splitlines()
    report = json.loads(last)                                          # the contract other tools read
    assert set(report) >= {"model", "task", "arms", "baselines"}
    arm_fields = {"name", "method", "allocation", "target_modules", "trainable_params", "seeds",
                  "test_accuracy_mean", "test_accuracy_ci95", "reference", "diff_vs_reference_ci95"}
    assert [a["name"] for a in report["arms"]] == study.DEFAULT_ARMS
    assert all(arm_fields <= set(a) and a["seeds"] == [0] and a["test_accuracy_ci95"] is None    # n = 1: no CI
               for a in report["arms"])
    arms = {a["name"]: a for a in report["arms"]}
    assert arms["lora"]["target_modules"] == arms["moe_uniform"]["target_modules"]
    assert len(arms["lora"]["target_modules"]) == 6
    assert abs(arms["lora_matched"]["trainable_params"] / arms["moe_uniform"]["trainable_params"] - 1) < 0.10
    assert arms["moe_alphalora"]["reference"] == "moe_uniform" and arms["full"]["reference"] == "lora"
    lo, hi = report["baselines"]["linear_probe"]["ci95"]
    assert lo <= report["baselines"]["linear_probe"]["test_accuracy"] <= hi and "untrained_head" in report["baselines"]
    assert "Traceback" not in proc.stderr
    assert "study 1: 6 runs (6 arms × 1 seeds) and the base evaluation queued, roughly" in proc.stderr
    methods = [line.split(" | ")[2] for line in table_lines[2:]]
    assert methods == ["LoRA", "LoRA (params-matched)", "MoE-LoRA uniform", "MoE-LoRA MoLA", "MoE-LoRA AlphaLoRA",
                       "Full fine-tune", "Base: linear probe", "Base: untrained head"]
    record = json.loads((tmp_path / "studies" / "1" / "study.json").read_text())
    assert [j["key"] for j in record["jobs"]] == study.DEFAULT_ARMS and record["n_layers"] == 6
    for key in ("moe_uniform", "moe_mola", "moe_alphalora"):
        alloc = json.loads(Path(record["allocations"][key]).read_text())
        assert alloc["total"] == 30 and len(alloc["experts"]) == 6
    shown = json.loads(cli("study-show", "1", "--json", env=env).stdout)
    assert len(shown) == 8 and all(0 <= r["test accuracy"] <= 1 for r in shown)
    assert shown[4]["allocation"].startswith("alphalora β=2.5")
    assert {r["steps"] for r in shown[:6]} == {1.0}
    assert "rotten_tomatoes" in cli("study-list", env=env).stdout
    bad = cli("study-show", "7", env=env)
    assert bad.returncode == 2 and "no study with id 7" in bad.stderr


def test_params_matched_lora_rank_by_hand():
    # MiniLM: per block q, k, v, o are 384 → 384 (Σ d_in + d_out = 4 · 768 = 3072), intermediate 384 → 1536 and
    # output 1536 → 384 (1920 each): 6912 per block, 41472 over 6 blocks; Σ d_in per block = 5 · 384 + 1536 = 3456.
    # MoE-LoRA uniform, 5 experts per block, r = 8: 5 · 8 · 41472 + 5 · 6 · 3456 = 1,658,880 + 103,680 = 1,762,560.
    # LoRA of rank r on the same matrices: 41472 · r → r = round(1,762,560 / 41472) = round(42.5) = 42 → 1,741,824.
    from analysis.sources import open_source

    uniform = allocate("uniform", n_layers=6, budget=30).to_dict()
    rank, lora, moe = study.matched_lora_rank(open_source(None).matrices(), uniform)
    assert (rank, lora, moe) == (42, 1_741_824, 1_762_560)
    assert abs(lora - moe) / moe < 0.10


def test_plan_counts_runs_and_prefers_this_machines_history(tmp_path, monkeypatch):
    from training.jobs import JobStore

    monkeypatch.setenv("SPECTRASCOPE_DATA", str(tmp_path))
    spec = StudySpec(seeds=3, max_steps=100)
    plan = study.plan_study(spec)
    assert plan["runs"] == 3 * len(study.DEFAULT_ARMS) == 18
    # no history: the measured constants, 100 steps each, plus the base evaluation
    per_run = {k: registry.get(study.METHODS[k][1]).step_seconds * 100 + study_plan.RUN_OVERHEAD_SECONDS
               for k in study.DEFAULT_ARMS}
    assert plan["per_run_seconds"] == pytest.approx(per_run, rel=0.02)
    assert plan["seconds"] == pytest.approx(3 * sum(per_run.values()) + study_plan.RUN_OVERHEAD_SECONDS, rel=0.02)
    store = JobStore()
    for seconds in (40.0, 60.0):                 # two finished LoRA runs of 20 steps: median 2.5 s per step
        job = store.submit({"method": "lora", "max_steps": 20}, start=False)
        Path(job.run_dir, "result.json").write_text(json.dumps({"status": "done", "steps": 20, "seconds": seconds}))
        store._set_final(job.id, "done", None, only_from="queued")    # as if a worker had run it
    assert study.plan_study(spec)["per_run_seconds"]["lora"] == pytest.approx(250.0)


def test_study_queues_base_evaluation_first_and_cancel_study_cancels_everything(tmp_path, monkeypatch):
    from tests.tiny_models import make_tiny_model
    from training.base_jobs import is_base_eval
    from training.jobs import JobStore

    monkeypatch.setenv("SPECTRASCOPE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SPECTRASCOPE_MAX_JOBS", "1")
    model = str(make_tiny_model(tmp_path / "tiny", "bert"))
    record = study.start_study(StudySpec(model=model, seeds=1, max_steps=1, methods=["lora", "lora_matched",
                                                                                   "moe_uniform"]))
    store = JobStore()
    jobs = store.list(reconcile=False)
    assert is_base_eval(jobs[0].config) and jobs[0].id == record["base_job"]     # first in the queue
    assert [j.id for j in jobs[1:]] == [e["job"] for e in record["jobs"]]
    assert sum(j.status == "running" for j in jobs) <= 1                        # never beside a fine-tune
    configs = {e["key"]: store.get(e["job"]).config for e in record["jobs"]}
    assert configs["lora"]["target_modules"] == configs["moe_uniform"]["target_modules"] == ["all-linear"]
    assert configs["lora_matched"]["rank"] > configs["lora"]["rank"]
    assert configs["lora_matched"]["alpha"] == 16.0 and configs["lora"].get("alpha") is None    # α fixed, r varies
    assert study.describe_allocation(configs["lora_matched"]) == f"rank {configs['lora_matched']['rank']}, α 16"
    cancelled = study.cancel_study(record["id"])
    assert set(cancelled) == {j.id for j in jobs if not j.final}
    assert all(store.get(j.id).status == "cancelled" for j in jobs)
    assert not study.study_running(study.load_study(record["id"]))


def test_table_names_each_arms_target_modules():
    bert = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
            "intermediate.dense", "output.dense"]
    assert study.targets_text({"method": "lora"}, {"target_modules": bert}) == "q, k, v, o, up, down"
    assert study.targets_text({"method": "moe_lora", "target_modules": ["all-linear"]}, {}) == "all-linear"
    assert study.targets_text({"method": "full"}, {"target_modules": ["all"]}) == "all weights"
    df = runs({"LoRA": [0.8, 0.9]}).assign(targets="q, v")
    shown = format_table(summarise_runs(df), ("test",))
    assert list(shown["targets"]) == ["q, v"] and list(shown.columns[:5]) == ["model", "task", "method",
                                                                             "allocation", "targets"]
