"""Study statistics on planted studies: Wilson baselines, paired differences against the reference arm, study JSON."""
from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path

import pandas as pd
import pytest

from analysis.config import DEFAULT_MODEL
from training import study, study_report
from training.evaluation import EvalStore, base_id
from training.jobs import JobStore

Z95 = 1.959963984540054
T95_2DF = 4.302652729911275          # Student t(0.975, 2)
ROWS = 200
Y_TRUE = [i % 2 for i in range(ROWS)]


def wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    p, z2 = k / n, Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return centre - half, centre + half


def right_on(rows) -> list[int]:
    """Predictions that are right exactly on `rows` (wrong elsewhere)."""
    rows = set(rows)
    return [y if i in rows else 1 - y for i, y in enumerate(Y_TRUE)]


# arm key -> {seed: (status, rows predicted right)}; planted so that every statistic is known by hand:
#   LoRA right on the first 140 / 150 / 160 rows (accuracy 0.70 / 0.75 / 0.80);
#   MoE-LoRA uniform on the first 150 / 160 / 170: +0.05 on every seed, and the seed-averaged per-row
#   difference is 1/3 on 30 rows, 0 on 170;
#   AlphaLoRA: seed 0 only (seed 1 cancelled, seed 2 failed), right on rows 10..159: the same accuracy as uniform
#   seed 0 on different rows (−1 on rows 0..9, +1 on rows 150..159); MoLA: nothing finished yet.
PLAN = {
    "lora": {0: ("done", range(140)), 1: ("done", range(150)), 2: ("done", range(160))},
    "moe_uniform": {0: ("done", range(150)), 1: ("done", range(160)), 2: ("done", range(170))},
    "moe_mola": {0: ("running", None), 1: ("queued", None), 2: ("queued", None)},
    "moe_alphalora": {0: ("done", range(10, 160)), 1: ("cancelled", None), 2: ("failed", None)},
}
TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
PARAMS = {"lora": 147_456, "moe_uniform": 442_368, "moe_mola": 442_368, "moe_alphalora": 442_368}


def plant_study(data: Path, plan: dict = PLAN, base: bool = True) -> int:
    """A finished-looking study in `data`: jobs rows in the job table, run folders with result.json and
    predictions.json, studies/1/study.json, and (with `base`) the base model's stored baselines."""
    store = JobStore(data)
    folder = data / "studies" / "1"
    folder.mkdir(parents=True)
    entries = []
    con = sqlite3.connect(store.db_path)
    for seed in range(3):
        for key, seeds in plan.items():
            if seed not in seeds:
                continue
            status, right = seeds[seed]
            label, method, strategy = study.METHODS[key]
            config = {"method": method, "task": "rotten_tomatoes", "seed": seed, "model": None, "rank": 8}
            if strategy:
                config["allocation"] = {"strategy": strategy, "experts": [2] * 6, "params": {"beta": 2.5}}
            name = f"study1-{key.replace('_', '-')}-s{seed}"
            cur = con.execute("INSERT INTO jobs (name, status, config, created) VALUES (?, ?, ?, ?)",
                              (name, status, json.dumps(config), time.time()))
            run_dir = store.runs_dir / f"{cur.lastrowid}-{name}"
            con.execute("UPDATE jobs SET run_dir = ? WHERE id = ?", (str(run_dir), cur.lastrowid))
            run_dir.mkdir(parents=True)
            if status == "done":
                y_pred = right_on(right)
                acc = len(set(right)) / ROWS
                (run_dir / "predictions.json").write_text(json.dumps({"test": {"y_true": Y_TRUE, "y_pred": y_pred}}))
                (run_dir / "result.json").write_text(json.dumps({
                    "status": "done", "method": method, "steps": 10, "seconds": 5.0 + seed,
                    "trainable_params": PARAMS.get(key, 22_000_000), "target_modules": TARGETS,
                    "validation": {"accuracy": acc - 0.01}, "test": {"accuracy": acc}}))
            entries.append({"job": cur.lastrowid, "key": key, "seed": seed})
    con.commit()
    con.close()
    spec = {"model": None, "task": "rotten_tomatoes", "budget": 12, "seeds": 3, "max_steps": 10, "beta": 2.5,
            "methods": list(plan), "options": {}}
    record = {"id": 1, "folder": str(folder), "created": time.time(), "spec": spec, "jobs": entries,
              "base_rows_hash": {"validation": "hv", "test": "ht"}}
    (folder / "study.json").write_text(json.dumps(record))
    if base:
        evals = EvalStore(data)
        evals.record(base_id(None), "rotten_tomatoes", "test", {"accuracy": 0.9}, 50, "older-rows")
        evals.record(base_id(None), "rotten_tomatoes", "test", {"accuracy": 0.62}, ROWS, "ht")
        evals.record(base_id(None), "rotten_tomatoes", "validation", {"accuracy": 0.6}, 100, "hv")
        evals.record(base_id(None, "untrained-head"), "rotten_tomatoes", "test", {"accuracy": 0.5, "loss": 0.7},
                     ROWS, "ht")
    return 1


@pytest.fixture
def planted(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTRASCOPE_DATA", str(tmp_path))
    plant_study(tmp_path)
    return tmp_path


def test_reference_arms():
    default = {key: study_report.REFERENCE[key] for key in study.DEFAULT_ARMS}
    assert default == {"lora": None, "lora_matched": "lora", "moe_uniform": "lora",
                       "full": "lora", "moe_mola": "moe_uniform", "moe_alphalora": "moe_uniform"}
    assert set(study_report.REFERENCE) == set(study.METHODS)
    others = set(study.METHODS) - set(study.DEFAULT_ARMS)       # every other method's arm: against LoRA
    assert others and all(study_report.REFERENCE[key] == "lora" for key in others)


def test_paired_comparisons_against_the_reference_arm(planted):
    record = study.load_study(1)
    pairs = {p["key"]: p for p in study_report.paired_comparisons(record, study.study_jobs(record))}
    assert set(pairs) == {"moe_uniform", "moe_mola", "moe_alphalora"}          # LoRA is the reference itself
    uniform = pairs["moe_uniform"]
    # 30 rows differ by 1/3: variance 30/200 · 1/9 − 0.05², normal-theory 95 % CI 0.05 ± 1.96 · sqrt(var / 200)
    half = Z95 * math.sqrt((30 / ROWS / 9 - 0.05 ** 2) / ROWS)
    assert (uniform["reference"], uniform["seeds"], uniform["rows"]) == ("LoRA", 3, ROWS)
    assert uniform["mean_diff"] == pytest.approx(0.05, abs=1e-12)
    assert uniform["ci95"] == pytest.approx([0.05 - half, 0.05 + half], abs=0.004)
    assert uniform["verdict"] == "MoE-LoRA uniform better"
    alpha = pairs["moe_alphalora"]
    assert (alpha["reference"], alpha["seeds"], alpha["rows"]) == ("MoE-LoRA uniform", 1, ROWS)
    assert alpha["mean_diff"] == 0 and alpha["ci95"][0] < 0 < alpha["ci95"][1]
    assert alpha["verdict"] == "no detectable difference at this budget"
    assert pairs["moe_mola"]["ci95"] is None and pairs["moe_mola"]["verdict"].startswith("waiting")
    shown = study_report.comparison_frame(list(pairs.values()))
    assert list(shown.columns) == ["arm", "reference", "mean difference", "95 % CI", "verdict", "seeds", "rows"]
    assert shown["mean difference"].iloc[0] == "+0.050" and shown["95 % CI"].iloc[1] == "—"


def test_runs_scored_on_different_rows_are_not_compared(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTRASCOPE_DATA", str(tmp_path))
    plant_study(tmp_path, {"lora": {0: ("done", range(100))}, "full": {0: ("done", range(120))}}, base=False)
    record = study.load_study(1)
    jobs = study.study_jobs(record)
    other = Path(jobs[1].run_dir) / "predictions.json"
    other.write_text(json.dumps({"test": {"y_true": Y_TRUE[:150], "y_pred": Y_TRUE[:150]}}))
    (pair,) = study_report.paired_comparisons(record, jobs)
    assert pair["ci95"] is None and pair["verdict"].startswith("not comparable: seed 0: the two runs scored "
                                                               "different test rows (150 and 200 rows)")


def test_baselines_carry_a_wilson_interval_over_their_rows(planted):
    out = study_report.baselines(None, "rotten_tomatoes", EvalStore(planted), "ht")
    assert set(out) == {"linear_probe", "untrained_head"}
    probe = out["linear_probe"]
    assert probe["test_accuracy"] == 0.62 and probe["rows"] == ROWS
    assert probe["ci95"] == pytest.approx(list(wilson_by_hand(124, ROWS)), abs=1e-12)
    assert out["untrained_head"]["ci95"] == pytest.approx(list(wilson_by_hand(100, ROWS)), abs=1e-12)
    assert study_report.baselines(None, "rotten_tomatoes", EvalStore(planted), "older-rows")["linear_probe"][
        "rows"] == 50


def test_study_json_has_the_documented_fields(planted):
    report = study_report.study_report(1)
    text = json.dumps(report, allow_nan=False)                       # strict JSON: no NaN anywhere
    assert json.loads(text) == report
    assert report["model"] == DEFAULT_MODEL and report["task"] == "rotten_tomatoes"
    fields = {"name", "method", "allocation", "target_modules", "trainable_params", "seeds", "test_accuracy_mean",
              "test_accuracy_ci95", "reference", "diff_vs_reference_ci95"}
    arms = {a["name"]: a for a in report["arms"]}
    assert list(arms) == ["lora", "moe_uniform", "moe_mola", "moe_alphalora"]
    assert all(fields <= set(a) for a in arms.values())
    lora = arms["lora"]
    half = T95_2DF * 0.05 / math.sqrt(3)                              # s of (0.70, 0.75, 0.80) is 0.05
    assert (lora["method"], lora["allocation"], lora["seeds"], lora["reference"]) == ("lora", "rank 8", [0, 1, 2],
                                                                                      None)
    assert lora["test_accuracy_mean"] == pytest.approx(0.75)
    assert lora["test_accuracy_ci95"] == pytest.approx([0.75 - half, 0.75 + half], abs=1e-6)      # 6 decimals
    assert lora["diff_vs_reference_ci95"] is None and lora["target_modules"] == TARGETS
    assert lora["trainable_params"] == PARAMS["lora"]
    uniform = arms["moe_uniform"]
    assert (uniform["method"], uniform["reference"]) == ("moe_lora", "lora")
    assert uniform["allocation"].startswith("uniform")
    assert uniform["diff_vs_reference_ci95"][0] > 0 and uniform["verdict"] == "MoE-LoRA uniform better"
    alpha = arms["moe_alphalora"]
    assert len(alpha["seeds"]) == 1 and alpha["test_accuracy_mean"] == 0.75 and alpha["test_accuracy_ci95"] is None
    assert alpha["reference"] == "moe_uniform" and alpha["diff_vs_reference_ci95"][0] < 0
    assert arms["moe_mola"]["seeds"] == [] and arms["moe_mola"]["test_accuracy_mean"] is None
    probe = report["baselines"]["linear_probe"]
    assert probe["test_accuracy"] == 0.62 and probe["ci95"] == pytest.approx(list(wilson_by_hand(124, ROWS)))


def test_table_counts_cancelled_runs_and_shows_single_seeds_without_an_interval(planted):
    runs, _ = study.study_runs(1)
    table = study.summarise_runs(runs)
    rows = table.set_index("method")
    assert rows.loc["MoE-LoRA AlphaLoRA", ["done", "planned", "cancelled", "failed"]].tolist() == [1, 3, 1, 1]
    probe = rows.loc["Base: linear probe"]
    assert probe["test_rows"] == ROWS and math.isnan(probe["test accuracy ci"])
    assert [probe["ci_lo test accuracy"], probe["ci_hi test accuracy"]] == pytest.approx(wilson_by_hand(124, ROWS))
    shown = study.format_table(table, ("test",), describe=True).set_index("method")
    assert "test accuracy (scored once)" in shown and "test accuracy" not in shown
    assert shown.loc["MoE-LoRA AlphaLoRA", "done / planned"] == "1 / 3 (1 cancelled, 1 failed)"
    assert shown.loc["MoE-LoRA AlphaLoRA", "n"] == "n = 1"
    assert shown.loc["MoE-LoRA AlphaLoRA", "test accuracy (scored once)"] == "0.750"      # a value, no ± part
    assert shown.loc["LoRA", "done / planned"] == "3 / 3" and shown.loc["LoRA", "n"] == "n = 3"
    assert shown.loc["LoRA", "test accuracy (scored once)"] == f"0.750 ± {T95_2DF * 0.05 / math.sqrt(3):.3f}"
    lo, hi = wilson_by_hand(124, ROWS)
    assert shown.loc["Base: linear probe", "test accuracy (scored once)"] == f"0.620 [{lo:.3f}, {hi:.3f}]"
    assert shown.loc["Base: linear probe", "done / planned"] == "base"
    assert shown.loc["Base: linear probe", "n"] == f"{ROWS} test rows"
    both = study.format_table(table, describe=True)
    assert "best validation accuracy (selection)" in both.columns


def test_cli_show_prints_the_paired_comparison(planted, capsys):
    from argparse import Namespace

    from training import cli_study

    assert cli_study.run_show(Namespace(id=1, json=False, test_only=True)) == 0
    out = capsys.readouterr().out
    assert "| arm | reference | mean difference | 95 % CI | verdict | seeds | rows |" in out
    assert "no detectable difference at this budget" in out and "test accuracy (scored once)" in out


def test_empty_summary_keeps_its_columns():
    table = study.summarise_runs(pd.DataFrame())
    assert {"done", "planned", "cancelled"} <= set(table.columns)
    assert study.format_table(table).empty


def test_params_matched_lora_keeps_its_own_label(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTRASCOPE_DATA", str(tmp_path))
    plant_study(tmp_path, {"lora": {0: ("done", range(140))}, "lora_matched": {0: ("done", range(150))}},
                base=False)
    runs, record = study.study_runs(1)
    assert list(study.summarise_runs(runs)["method"]) == ["LoRA", "LoRA (params-matched)"]
    (pair,) = study_report.paired_comparisons(record, study.study_jobs(record))
    assert (pair["arm"], pair["reference"], pair["mean_diff"]) == ("LoRA (params-matched)", "LoRA", 0.05)
