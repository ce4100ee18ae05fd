"""Trainer: real short LoRA / MoE-LoRA / full runs whose saved artifacts reload to the same test numbers."""
from __future__ import annotations

import json

import pytest
import torch

from analysis.types import SpectrascopeError
from training.dropout import FastDropout
from training.trainer import (DEFAULT_HEAD_LR, TrainConfig, evaluate_artifacts, make_optimizer, prepare_config,
                              train)

from tests.tiny_models import make_tiny_model
SMALL = {"max_train_rows": 64, "max_eval_rows": 32, "max_test_rows": 32, "eval_every": 2}


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama"))


@pytest.mark.slow
@pytest.mark.parametrize("method,files", [
    ("lora", ["adapter/adapter_model.safetensors", "adapter/adapter_config.json"]),
    ("moe_lora", ["moe_lora/moe_lora.safetensors", "moe_lora/moe_lora_config.json"]),
    ("full", ["model/model.safetensors", "model/config.json"]),
])
def test_default_model_run_saves_artifacts_that_reload_to_the_same_numbers(tmp_path, method, files):
    lines = []
    result = train({"method": method, "max_steps": 3, **SMALL}, tmp_path, progress=lines.append)
    assert result["status"] == "done" and result["steps"] == 3
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert all(line["total_steps"] == 3 and line["tokens_per_s"] > 0 and line["lr"] > 0 for line in lines)
    assert "eval" in lines[1] and "eval" in lines[2] and "eval" not in lines[0]
    assert set(result["test"]) == {"loss", "accuracy", "macro_f1", "mcc"}
    for name in files:
        assert (tmp_path / "artifacts" / name).is_file(), name
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["seed"] == 0 and len(manifest["data_hash"]) == 64 and "torch" in manifest["versions"]
    assert evaluate_artifacts(tmp_path) == result["test"]
    if method != "full":
        assert result["trainable_params"] < result["total_params"] / 10
    else:
        assert result["trainable_params"] == result["total_params"]


def test_same_seed_same_run_other_seed_other_run(tmp_path, tiny_bert):
    def losses(seed, folder):
        lines = []
        train({"method": "lora", "model": tiny_bert, "max_steps": 4, "seed": seed, **SMALL}, folder,
              progress=lines.append)
        return [line["loss"] for line in lines]

    first = losses(0, tmp_path / "a")
    assert losses(0, tmp_path / "b") == first
    assert losses(1, tmp_path / "c") != first


def test_runs_use_fast_dropout_and_a_fused_optimizer(tmp_path, tiny_bert, monkeypatch):
    calls = []
    plain = FastDropout.forward

    def counted(self, x):
        calls.append(self.training)
        return plain(self, x)

    monkeypatch.setattr(FastDropout, "forward", counted)
    result = train({"method": "lora", "model": tiny_bert, "max_steps": 1, **SMALL}, tmp_path)
    assert result["status"] == "done" and any(calls)            # the base's and peft's dropouts, in training
    p = torch.nn.Parameter(torch.zeros(3))
    assert make_optimizer([p], TrainConfig(method="full"), torch.device("cpu")).defaults["fused"] is True


def test_should_stop_ends_the_run_as_cancelled_without_artifacts(tmp_path, tiny_bert):
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 2

    result = train({"method": "lora", "model": tiny_bert, "max_steps": 50, **SMALL}, tmp_path,
                   should_stop=should_stop)
    assert result["status"] == "cancelled" and result["steps"] == 2
    assert not (tmp_path / "artifacts").exists()


def test_decoder_is_tuned_on_answer_tokens_and_reloads(tmp_path, tiny_llama, monkeypatch):
    """Every training batch's loss is the cross-entropy of the answer tokens alone: labels are -100 on the prompt
    and the padding, and the loss the model returns equals the answer-only loss computed here by hand. Scoring
    (validation, test: the loss, then the answer choice) runs without dropout, so the reloaded run scores alike."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from training.tasks import load_task

    seen, modes, forward = [], [], LlamaForCausalLM.forward

    def spy(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        modes.append(("train" if self.training else "eval", kwargs.get("labels") is not None))
        if self.training:
            seen.append({k: kwargs[k].detach().clone() for k in ("input_ids", "attention_mask", "labels")} |
                        {"logits": out.logits.detach().float(), "loss": float(out.loss.detach())})
        return out

    monkeypatch.setattr(LlamaForCausalLM, "forward", spy)
    result = train({"method": "lora", "model": tiny_llama, "max_steps": 2, **SMALL}, tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text())["decoder"] is True

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    answers = [tokenizer(a, add_special_tokens=False)["input_ids"] + eos for a in load_task("rotten_tomatoes").answers]
    assert len(seen) == 2                                       # one forward per optimizer step
    # validation and test, each the loss (32 rows / 16 per batch) then the answer choice (32 rows × 2 answers / 16),
    # in eval mode (no dropout) and with labels (so prompt-routed adapters pool the prompt only, as in generation)
    assert [m for m in modes if m[0] == "train"] == [("train", True)] * 2
    assert modes.count(("eval", True)) == 2 * (2 + 4) and len(modes) == 2 + 2 * (2 + 4)
    for batch in seen:
        ids, mask, labels, logits = batch["input_ids"], batch["attention_mask"], batch["labels"], batch["logits"]
        expected, nll = torch.full_like(ids, -100), []
        for i in range(len(ids)):
            length = int(mask[i].sum())                         # right padding: the real tokens come first
            tokens = ids[i, :length].tolist()
            answer = [a for a in answers if tokens[-len(a):] == a]
            assert len(answer) == 1, tokenizer.decode(tokens)   # every sequence ends with exactly one answer
            start = length - len(answer[0])
            assert tokenizer.decode(tokens[:start]).endswith("sentiment :")     # before it, the prompt
            expected[i, start:length] = ids[i, start:length]
            logp = torch.log_softmax(logits[i], dim=-1)         # token t is predicted at position t - 1
            nll += [-logp[t - 1, ids[i, t]] for t in range(start, length)]
        assert torch.equal(labels, expected)
        assert batch["loss"] == pytest.approx(float(torch.stack(nll).mean()), rel=1e-5)
    assert {"loss", "perplexity", "accuracy"} <= set(result["test"])
    assert evaluate_artifacts(tmp_path) == result["test"]


def test_lm_task_needs_a_decoder_and_trains_on_one(tmp_path, tiny_bert, tiny_llama):
    with pytest.raises(SpectrascopeError, match="needs a decoder"):
        prepare_config({"task": "hamlet_lm", "model": tiny_bert})
    result = train({"method": "full", "model": tiny_llama, "task": "hamlet_lm", "max_steps": 1, **SMALL}, tmp_path)
    assert set(result["test"]) == {"loss", "perplexity"}


def test_lora_rank_pattern_from_an_allocation(tmp_path, tiny_bert):
    allocation = {"rank_pattern": {"encoder.layer.1.attention.self.query": 2}, "alpha_pattern": {}}
    path = tmp_path / "alloc.json"
    path.write_text(json.dumps(allocation))
    result = train({"method": "lora", "model": tiny_bert, "allocation_file": str(path), "max_steps": 1, **SMALL},
                   tmp_path / "run")
    adapter = json.loads((tmp_path / "run/artifacts/adapter/adapter_config.json").read_text())
    assert adapter["rank_pattern"] == allocation["rank_pattern"] and adapter["r"] == 8
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "run/artifacts/adapter/adapter_model.safetensors")
    ranks = {k: v.shape[0] for k, v in weights.items() if k.endswith("lora_A.weight")}
    assert [r for k, r in ranks.items() if "layer.1.attention.self.query" in k] == [2]
    assert [r for k, r in ranks.items() if "layer.0.attention.self.query" in k] == [8]
    assert evaluate_artifacts(tmp_path / "run") == result["test"]


def test_moe_lora_allocation_must_fit_the_model(tmp_path, tiny_bert):
    path = tmp_path / "alloc.json"
    path.write_text(json.dumps({"experts": [2, 2, 2], "top_k": [1, 1, 1]}))
    with pytest.raises(SpectrascopeError, match="3 layers but the model has 2"):
        prepare_config({"method": "moe_lora", "model": tiny_bert, "allocation_file": str(path)})
    path.write_text(json.dumps({"experts": [1, 3], "top_k": [1, 2]}))
    result = train({"method": "moe_lora", "model": tiny_bert, "allocation_file": str(path), "max_steps": 1,
                    **SMALL}, tmp_path / "run")
    config = json.loads((tmp_path / "run/artifacts/moe_lora/moe_lora_config.json").read_text())
    assert config["experts_per_layer"] == [1, 3] and config["modules_to_save"] == ["classifier"]
    assert evaluate_artifacts(tmp_path / "run") == result["test"]


@pytest.mark.parametrize("config,message", [
    ({"method": "qlora"}, "unknown method 'qlora'"),
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"learning_rate": 1e-3}, r"unknown training option\(s\) \['learning_rate'\]"),
    ({"lr": 5}, "lr must be a number"),
    ({"gpus": 0}, "gpus must be a positive integer"),
    ({"cpu_processes": -1}, "cpu_processes must be a positive integer"),
    ({"model": "/no/such/model"}, "no such file or folder|not found"),
    ({"task": "no_such_task"}, "unknown task 'no_such_task'"),
    ({"allocation_file": "/no/such/alloc.json"}, "cannot be read"),
])
def test_bad_configs_are_rejected_with_a_clear_message(config, message):
    with pytest.raises(SpectrascopeError, match=message):
        prepare_config(config)


def test_defaults_are_short_cpu_runs():
    cfg = TrainConfig()
    assert (cfg.method, cfg.model, cfg.task) == ("lora", None, "rotten_tomatoes")
    assert cfg.learning_rate == 1e-3 and TrainConfig(method="full").learning_rate == 1e-4     # the sweep's picks
    assert (cfg.max_length, cfg.batch_size) == (64, 16)


def test_head_trains_at_its_own_learning_rate():
    head, body = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    cfg = TrainConfig(method="lora", lr=2e-4, head_lr=5e-3)
    groups = make_optimizer([body, head], cfg, torch.device("cpu"), [head]).param_groups
    assert [(g["lr"], len(g["params"])) for g in groups] == [(2e-4, 1), (5e-3, 1)]
    assert groups[1]["params"][0] is head
    assert TrainConfig(method="full", lr=1e-4).head_learning_rate == max(1e-4, DEFAULT_HEAD_LR)
    assert TrainConfig(method="lora", lr=3e-3).head_learning_rate == 3e-3       # never slower than the body
    with pytest.raises(SpectrascopeError, match="head_lr must be a number in"):
        TrainConfig.from_dict({"head_lr": 2})


def test_all_linear_lora_adapts_the_moe_lora_matrices_and_writes_test_predictions(tmp_path, tiny_bert):
    from transformers import AutoModelForSequenceClassification

    from training.moe_lora import MoELoraConfig
    from training.moe_lora.model import find_targets

    cfg = {"model": tiny_bert, "max_steps": 2, "target_modules": ["all-linear"], **SMALL}
    lora = train({"method": "lora", **cfg}, tmp_path / "lora")
    moe = train({"method": "moe_lora", **cfg}, tmp_path / "moe")
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    reference = sorted({name.split(".", 4)[-1] for name, _ in find_targets(base, MoELoraConfig([1, 1]))})
    assert sorted(lora["target_modules"]) == sorted(moe["target_modules"]) == reference
    assert len(reference) == 6 and "pooler.dense" not in reference
    # LoRA r = 8 on those 2 × 6 matrices (tiny BERT: 32 wide, 64 intermediate) + the 2-class head (66)
    per_block = 4 * (32 + 32) + 2 * (32 + 64)
    assert lora["trainable_params"] == 8 * 2 * per_block + 66
    predicted = json.loads((tmp_path / "lora" / "predictions.json").read_text())["test"]
    assert len(predicted["y_true"]) == len(predicted["y_pred"]) == SMALL["max_test_rows"]
    hits = sum(t == p for t, p in zip(predicted["y_true"], predicted["y_pred"]))
    assert hits / len(predicted["y_true"]) == pytest.approx(lora["test"]["accuracy"])
