"""AdaLoRA: short real runs whose pruned ranks respect the budget and reload to the same test numbers; its options,
schedule and the learned-vs-predicted comparison."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from analysis.types import SpectrascopeError
from training import registry
from training.adalora.compare import adalora_runs, learned_vs_predicted, spearman, target_scores
from training.adalora.config import AdaLoraOptions
from training.adalora.model import layer_totals
from training.trainer import TrainConfig, evaluate_artifacts, prepare_config, train


SMALL = {"max_train_rows": 64, "max_eval_rows": 32, "max_test_rows": 32, "eval_every": 2}


def saved_ranks(run: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Rank per adapted module as saved, read two ways: peft's rank_pattern in adapter_config.json, and the rows of
    each lora_E tensor in the safetensors file (nonzero singular values only)."""
    folder = run / "artifacts" / "adapter"
    pattern = json.loads((folder / "adapter_config.json").read_text())["rank_pattern"]
    by_pattern = {k.removesuffix(".lora_E"): sum(bool(x) for x in v) for k, v in pattern.items()}
    tensors = load_file(folder / "adapter_model.safetensors")
    by_tensor = {k.removeprefix("base_model.model.").removesuffix(".lora_E"): int((v != 0).sum())
                 for k, v in tensors.items() if k.endswith(".lora_E")}
    return by_pattern, by_tensor


def test_tiny_bert_trains_prunes_within_budget_and_reloads_to_the_same_numbers(tmp_path, tiny_bert):
    lines = []
    result = train({"method": "adalora", "model": tiny_bert, "max_steps": 4, "target_modules": ["all-linear"],
                    **SMALL}, tmp_path, progress=lines.append)
    assert result["status"] == "done" and [line["step"] for line in lines] == [1, 2, 3, 4]
    assert evaluate_artifacts(tmp_path) == result["test"]
    ranks, budget = result["adalora_ranks"], result["adalora_budget"]
    assert len(ranks) == 12 == budget["matrices"]                        # 6 linear kinds × 2 blocks
    assert budget["init_r"] == 12 and budget["target_r"] == 8 and budget["total_step"] == 4
    by_pattern, by_tensor = saved_ranks(tmp_path)
    assert by_pattern == ranks and by_tensor == ranks                    # peft's pattern, the saved triplets
    assert sum(ranks.values()) == budget["final"] <= 8 * len(ranks)
    assert result["adalora_layer_ranks"] == layer_totals(ranks, 2) and sum(result["adalora_layer_ranks"]) == \
        budget["final"]
    assert all(0 <= r <= 12 for r in ranks.values())
    assert registry.get("adalora").weights == "merged"


def test_peft_contract_in_memory_masks_and_the_penalty_only_in_training(tiny_bert):
    """attach / on_step / report driven by hand in the trainer's order (backward, step, on_step, zero_grad): the
    reported ranks are the nonzero singular values in memory; the orthogonality penalty is in the training loss
    only."""
    from transformers import AutoModelForSequenceClassification

    cfg = TrainConfig.from_dict({"method": "adalora", "max_steps": 5, "rank": 2, "dropout": 0.0,
                                 "method_options": {"init_r": 4}})
    method = registry.get("adalora")
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2, hidden_dropout_prob=0.0,
                                                              attention_probs_dropout_prob=0.0)
    model = method.attach(cfg, base, registry.AttachContext(decoder=False))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = {"input_ids": torch.randint(1000, 2000, (8, 12)), "labels": torch.tensor([0, 1] * 4)}
    for step in range(1, 6):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        method.on_step(model, step, 5)
        optimizer.zero_grad()
    ranks = method.report(model)["adalora_ranks"]
    in_memory = {n.removeprefix("base_model.model.").removesuffix(".lora_E.default"): int((p != 0).sum())
                 for n, p in model.named_parameters() if n.endswith("lora_E.default")}
    assert in_memory == ranks and sum(ranks.values()) <= 2 * len(ranks)
    with torch.no_grad():
        model.train()
        train_loss = float(model(**batch).loss)
        model.eval()
        eval_loss = float(model(**batch).loss)
    assert train_loss > eval_loss + 1e-4                      # 0.1 × the mean ‖PPᵀ − I‖, ‖QᵀQ − I‖ in training


def test_the_budget_binds_to_the_exact_total(tmp_path, tiny_bert):
    config = {"method": "adalora", "model": tiny_bert, "max_steps": 6, "rank": 3, "eval_every": 0,
              "max_train_rows": 96, "max_eval_rows": 16, "max_test_rows": 16,
              "method_options": {"init_r": 6, "tinit": 1, "tfinal": 2}}
    result = train(config, tmp_path)
    ranks = result["adalora_ranks"]
    assert len(ranks) == 4                                               # query, value × 2 blocks (BERT default)
    assert result["adalora_budget"]["target"] == 3 * 4 and result["adalora_budget"]["initial"] == 6 * 4
    assert sum(ranks.values()) == 12 and sum(result["adalora_layer_ranks"]) == 12
    by_pattern, by_tensor = saved_ranks(tmp_path)
    assert by_pattern == ranks and sum(by_tensor.values()) == 12
    assert evaluate_artifacts(tmp_path) == result["test"]


def test_total_steps_from_epochs_match_the_trainers_count(tmp_path, tiny_bert):
    result = train({"method": "adalora", "model": tiny_bert, "epochs": 1, "max_train_rows": 40, "batch_size": 16,
                    "max_eval_rows": 16, "max_test_rows": 16, "eval_every": 0}, tmp_path)
    assert result["total_steps"] == 3 == result["adalora_budget"]["total_step"]


@pytest.mark.slow
def test_default_model_trains_and_reloads(tmp_path):
    result = train({"method": "adalora", "max_steps": 3, **SMALL}, tmp_path)
    assert result["status"] == "done" and result["steps"] == 3
    assert evaluate_artifacts(tmp_path) == result["test"]
    assert len(result["adalora_layer_ranks"]) == 6 and len(result["adalora_ranks"]) == 12     # query, value × 6
    assert sum(result["adalora_ranks"].values()) <= 8 * 12
    assert saved_ranks(tmp_path)[0] == result["adalora_ranks"]


# ------------------------------------------------------------------------------------------ options and schedule

def test_default_schedule_scales_with_the_run():
    options = AdaLoraOptions()
    assert options.schedule(125) == {"total_step": 125, "tinit": 15, "tfinal": 56, "deltaT": 1}
    assert options.schedule(50_000)["deltaT"] == 100
    for total in (1, 2, 3, 5):                                           # always a budgeting phase
        s = options.schedule(total)
        assert s["tinit"] < total - s["tfinal"]
    assert options.target(8) == 8 and AdaLoraOptions(target_r=4).target(8) == 4


@pytest.mark.parametrize("options, message", [
    ({"bogus": 1}, "method adalora has no option(s) ['bogus']"),
    ({"init_r": 0}, "init_r must be at least 1"),
    ({"beta1": 1.5}, "beta1 must be in (0, 1)"),
    ({"tinit": "soon"}, "tinit must be a whole number"),
    ({"orth_reg_weight": -1}, "orth_reg_weight must be 0 or more"),
])
def test_bad_options_are_one_clear_line(options, message):
    with pytest.raises(SpectrascopeError) as err:
        TrainConfig.from_dict({"method": "adalora", "method_options": options})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_top_level_option_and_impossible_budgets_are_caught_before_queueing():
    with pytest.raises(SpectrascopeError, match="unknown training option") as err:
        TrainConfig.from_dict({"method": "adalora", "bogus": 1})
    assert "\n" not in str(err.value) and "target_r" in str(err.value)       # its own options are listed
    assert TrainConfig.from_dict({"method": "adalora", "target_r": 4}).options.target(8) == 4   # --set target_r=4
    with pytest.raises(SpectrascopeError, match=r"target rank \(16, the run's rank\) must be below init_r \(12\)"):
        prepare_config({"method": "adalora", "rank": 16})
    with pytest.raises(SpectrascopeError, match="leaves no steps to prune in"):
        prepare_config({"method": "adalora", "max_steps": 10, "method_options": {"tinit": 5, "tfinal": 5}})
    with pytest.raises(SpectrascopeError, match="does not take option 'experts'"):
        TrainConfig.from_dict({"method": "adalora", "experts": 3})
    assert AdaLoraOptions(tinit="3", target_r="").tinit == 3            # the Train page's text inputs


def test_describe_and_study_arm():
    method = registry.get("adalora")
    assert method.describe({"rank": 8}) == "rank 12 → 8 avg"
    assert method.describe({"rank": 8, "method_options": {"init_r": 16, "target_r": 4}}) == "rank 16 → 4 avg"
    assert registry.study_arms()["adalora"].reference == "lora"


# ------------------------------------------------------------------------------------------ learned vs predicted

def plant_run(root: Path, layer_ranks: list[int], model: str = "all-MiniLM-L6-v2", run_id: int = 7) -> Path:
    """A finished AdaLoRA run folder as the trainer leaves it (manifest, result, adapter folder), without training."""
    folder = root / f"{run_id}-adalora-planted"
    (folder / "artifacts" / "adapter").mkdir(parents=True)
    (folder / "artifacts" / "adapter" / "adapter_config.json").write_text("{}")
    ranks = {}
    for layer, total in enumerate(layer_ranks):
        ranks[f"bert.encoder.layer.{layer}.attention.self.query"] = total // 2
        ranks[f"bert.encoder.layer.{layer}.attention.self.value"] = total - total // 2
    (folder / "manifest.json").write_text(json.dumps({"config": {"method": "adalora", "rank": 8, "seed": 0},
                                                      "model": model, "task": "rotten_tomatoes"}))
    (folder / "result.json").write_text(json.dumps({
        "status": "done", "method": "adalora", "adalora_ranks": ranks, "adalora_layer_ranks": layer_ranks,
        "adalora_budget": {"target": 8 * len(ranks), "final": sum(layer_ranks)}, "test": {"accuracy": 0.5}}))
    return folder


def test_learned_vs_predicted_has_the_same_total_per_layer_rows(tmp_path):
    learned = [4, 10, 20, 14]
    folder = plant_run(tmp_path, learned)
    cmp = learned_vs_predicted(folder, beta=2.5, scores=[2.0, 2.5, 3.5, 3.0])
    frame = cmp.frame()
    assert list(frame["layer"]) == [0, 1, 2, 3] and list(frame["learned"]) == learned
    assert frame["predicted"].sum() == sum(learned) == cmp.total == 48
    assert list(frame["difference"]) == [a - b for a, b in zip(learned, frame["predicted"])]
    assert cmp.spearman == pytest.approx(1.0)                          # α order = learned order here
    assert cmp.target == 64 and cmp.matrices == 8
    flat = learned_vs_predicted(folder, beta=0.0, scores=[2.0, 2.5, 3.5, 3.0])
    assert list(flat.frame()["predicted"]) == [12, 12, 12, 12]         # β = 0: uniform
    assert flat.spearman is None and flat.notes                          # a constant side: ρ undefined, said so


def test_layer_scores_come_from_the_adapted_matrices():
    rows = [{"name": f"encoder.layer.{i}.attention.self.{kind}.weight", "alpha_hill": a}
            for i, (q, v, k) in enumerate([(2.0, 4.0, 9.0), (3.0, 3.0, 1.0)])
            for kind, a in (("query", q), ("value", v), ("key", k))]
    modules = [f"bert.encoder.layer.{i}.attention.self.{k}" for i in (0, 1) for k in ("query", "value")]
    scores, source, notes = target_scores(rows, modules, 2, fallback=[5.0, 5.0])
    assert scores == [3.0, 3.0] and not notes                          # keys (9.0, 1.0) are not adapted
    rows[3]["alpha_hill"] = rows[4]["alpha_hill"] = float("nan")         # layer 1 has no usable fit
    scores, _, notes = target_scores(rows, modules, 2, fallback=[5.0, 6.0])
    assert scores == [3.0, 6.0] and "layers [1]" in notes[0]


def test_learned_vs_predicted_on_the_default_models_analysis(tmp_path):
    folder = plant_run(tmp_path, [4, 6, 12, 20, 22, 32])
    analysis = SimpleNamespace(rows=[{"name": f"encoder.layer.{i}.attention.self.{k}.weight", "alpha_hill": 2 + i}
                                     for i in range(6) for k in ("query", "value")],
                               layer_scores=lambda: [1.0] * 6)
    cmp = learned_vs_predicted(folder, analysis=analysis)
    assert cmp.score_source == "the adapted matrices" and [r["alpha_score"] for r in cmp.rows] == [2, 3, 4, 5, 6, 7]
    assert sum(r["predicted"] for r in cmp.rows) == 96 and cmp.spearman == pytest.approx(1.0)
    with pytest.raises(SpectrascopeError, match="6 layers"):
        learned_vs_predicted(folder, scores=[1.0, 2.0])
    (folder / "result.json").write_text(json.dumps({"status": "done"}))
    with pytest.raises(SpectrascopeError, match="no learned AdaLoRA ranks"):
        learned_vs_predicted(folder)


def test_adalora_runs_lists_finished_adalora_runs_only(tmp_path):
    plant_run(tmp_path, [3, 5], run_id=1)
    other = plant_run(tmp_path, [3, 5], run_id=2)
    (other / "result.json").write_text(json.dumps({"status": "failed"}))
    assert [r.run_id for r in adalora_runs(tmp_path)] == [1]


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.9487, abs=1e-4)   # ties: average ranks
    assert spearman([1, 2], [2, 1]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


@pytest.mark.parametrize("mask", [True, False])
def test_a_best_state_from_before_the_last_pruning_is_masked_before_saving(tmp_path, tiny_bert, monkeypatch, mask):
    """keep_best restores step 1's weights (before the final pruning at step 3): report() masks them to the final
    pattern, so the tested model is the saved one; without that mask the reloaded adapter scores differently."""
    from training import trainer
    from training.adalora import model as adalora_model

    monkeypatch.setattr(trainer, "_better", lambda metric, scores, best: best is None)     # the first pass wins
    if not mask:
        monkeypatch.setattr(adalora_model, "apply_final_mask", lambda model: None)
    result = train({"method": "adalora", "model": tiny_bert, "max_steps": 5, "eval_every": 1, "keep_best": True,
                    "max_train_rows": 48, "max_eval_rows": 16, "max_test_rows": 16}, tmp_path)
    assert result["best_step"] == 1 and result["adalora_budget"]["total_step"] - result["adalora_budget"]["tfinal"] == 3
    assert (evaluate_artifacts(tmp_path) == result["test"]) is mask
