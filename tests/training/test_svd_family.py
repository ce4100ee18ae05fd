"""DoRA, PiSSA, minor-component LoRA and CorDA: inits checked against numpy, short runs that reload, spectra views."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.types import SpectrascopeError
from training import registry
from training.runs_index import list_runs
from training.trainer import TrainConfig, evaluate_artifacts, load_task, split_rows, train


METHODS = ("dora", "pissa", "minor", "corda")
TINY = {"max_steps": 3, "max_train_rows": 32, "max_eval_rows": 16, "max_test_rows": 16}


def same_metrics(reloaded: dict, trained: dict) -> None:
    """Label metrics equal; the loss equal up to float rounding (the converted adapter sums in another order)."""
    assert set(reloaded) == set(trained)
    for key, value in trained.items():
        assert reloaded[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def seq_cls(folder: str):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)


def attached(method: str, folder: str, ctx=None, **config):
    """(peft model, original weights by module name) of `method` attached to a tiny BERT classifier."""
    model = seq_cls(folder)
    originals = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    cfg = TrainConfig.from_dict({"method": method, "model": folder, **config})
    ctx = ctx or registry.AttachContext(decoder=False)
    return cfg.method_spec.attach(cfg, model, ctx), originals


def layer_parts(peft_model):
    """module name (as in the base model) -> (residual W, A, B, scaling) of every adapted layer, float64."""
    from training.pissa.model import lora_layers

    out = {}
    for name, layer in lora_layers(peft_model):
        plain = name.removeprefix("base_model.model.")
        out[plain] = (layer.get_base_layer().weight.detach().double(), layer.lora_A["default"].weight.detach().double(),
                      layer.lora_B["default"].weight.detach().double(), float(layer.scaling["default"]))
    return out


def projector(rows: np.ndarray) -> np.ndarray:
    """Orthogonal projector onto the row space of `rows` (r × n)."""
    q, _ = np.linalg.qr(rows.T)
    return q @ q.T


# ---------------------------------------------------------------------------------------------- the inits

@pytest.mark.parametrize("method,end", [("pissa", "top"), ("minor", "bottom")])
def test_svd_inits_keep_the_base_and_take_the_right_end_of_the_spectrum(tiny_bert, method, end):
    model, originals = attached(method, tiny_bert, rank=4)
    parts = layer_parts(model)
    assert len(parts) == 4                                        # query and value of both layers
    for name, (residual, A, B, s) in parts.items():
        W = originals[name].double()
        assert (residual + s * B @ A - W).abs().max() <= 1e-5, name
        U, S, Vt = np.linalg.svd(W.numpy())                       # independent reference, float64
        pick = slice(None, 4) if end == "top" else slice(-4, None)
        assert np.abs(projector(A.numpy()) - Vt[pick].T @ Vt[pick]).max() < 1e-4, name
        assert np.abs(projector(B.numpy().T) - U[:, pick] @ U[:, pick].T).max() < 1e-4, name
        np.testing.assert_allclose(np.sort(np.linalg.svd(s * (B @ A).numpy(), compute_uv=False))[-4:],
                                   np.sort(S[pick]), rtol=1e-4)   # s·B·A carries exactly those singular values


def test_pissa_randomised_svd_option(tiny_bert):
    model, originals = attached("pissa", tiny_bert, rank=4, method_options={"niter": 2})
    assert model.peft_config["default"].init_lora_weights == "pissa_niter_2"
    for name, (residual, A, B, s) in layer_parts(model).items():
        assert (residual + s * B @ A - originals[name].double()).abs().max() <= 1e-5


def corda_context(folder: str, rows: list[dict]):
    from transformers import AutoTokenizer

    task = load_task(TrainConfig(task="rotten_tomatoes"))
    return registry.AttachContext(decoder=False, task=task, rows={"train": rows},
                                  tokenizer=AutoTokenizer.from_pretrained(folder))


def test_corda_calibrates_on_the_task_rows(tiny_bert, monkeypatch):
    rows = split_rows(load_task(TrainConfig()), TrainConfig(**{k: v for k, v in TINY.items() if k != "max_steps"}))
    first, other = rows["train"][:16], rows["train"][16:32]
    calls = []
    import peft.tuners.lora.corda as corda

    real = corda.calib_cov_distribution

    def counted(model, config, run_model, *args):
        def run():
            handle = model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape),
                                                     with_kwargs=True)
            run_model()
            handle.remove()
        return real(model, config, run, *args)

    monkeypatch.setattr(corda, "calib_cov_distribution", counted)
    opts = {"method_options": {"calibration_rows": 12}}
    a, originals = attached("corda", tiny_bert, corda_context(tiny_bert, first), **opts)
    assert len(calls) == 12 and all(shape[0] == 1 for shape in calls)        # one training row per pass
    assert a.spectrascope_calibration_rows == 12
    again, _ = attached("corda", tiny_bert, corda_context(tiny_bert, first), **opts)
    moved, _ = attached("corda", tiny_bert, corda_context(tiny_bert, other), **opts)
    kpm, _ = attached("corda", tiny_bert, corda_context(tiny_bert, first), method_options={
        "calibration_rows": 12, "corda_method": "kpm"})
    pa, pagain, pmoved, pkpm = (layer_parts(m) for m in (a, again, moved, kpm))
    for name, (residual, A, B, s) in pa.items():
        assert (residual + s * B @ A - originals[name].double()).abs().max() <= 1e-5
        assert torch.equal(A, pagain[name][1])                                # same rows, same adapter
        assert (A - pmoved[name][1]).abs().max() > 1e-3                        # other rows, other adapter
        assert (A - pkpm[name][1]).abs().max() > 1e-3
    with pytest.raises(SpectrascopeError, match="calibration pass over the task's training rows"):
        attached("corda", tiny_bert, corda_context(tiny_bert, []))


@pytest.mark.parametrize("config,message", [
    ({"method": "pissa", "method_options": {"nither": 2}}, r"method pissa has no option\(s\) \['nither'\]; its "
                                                           r"options: \['niter'\]"),
    ({"method": "pissa", "niter": 0}, "niter must be a positive integer"),
    ({"method": "corda", "corda_method": "fast"}, "corda_method must be ipm or kpm"),
    ({"method": "corda", "method_options": {"calibration_rows": 0}}, "calibration_rows must be a positive integer"),
    ({"method": "dora", "method_options": {"niter": 2}}, "method dora takes no method_options"),
    ({"method": "minor", "experts": 6}, "method minor does not take option 'experts'"),
])
def test_bad_options_are_one_clear_line(config, message):
    with pytest.raises(SpectrascopeError, match=message) as err:
        TrainConfig.from_dict(config)
    assert "\n" not in str(err.value)


def test_registry_entries():
    for name in METHODS:
        m = registry.get(name)
        assert m.takes[:4] == ("rank", "alpha", "dropout", "target_modules")
        assert [a.key for a in m.arms] == [name] and m.arms[0].reference == "lora"
        assert m.weights == ("merged" if name == "dora" else "adapter")
    assert registry.get("corda").needs_task_data
    assert registry.get("corda").describe({"rank": 8}) == "rank 8, ipm, 256 calibration rows"
    assert registry.get("pissa").describe({"rank": 4, "method_options": {"niter": 2}}).startswith("rank 4, random")


# ---------------------------------------------------------------------------------------------- short runs

def capture_merged(monkeypatch, method: str) -> dict:
    """Wrap the method's save: the adapted matrices of the trained model (peft merge of a copy) land in the dict."""
    seen: dict = {}
    spec = registry.get(method)

    def save(cfg, model, folder):
        merged = copy.deepcopy(model).merge_and_unload()
        for name, module in merged.named_modules():
            if name.endswith(("attention.self.query", "attention.self.value")):
                seen[name + ".weight"] = module.weight.detach().float().numpy().copy()
        return spec.save(cfg, model, folder)

    monkeypatch.setitem(registry._load(), method, registry.Method(**{**spec.__dict__, "save": save}))
    return seen


def check_run(run_dir: Path, method: str, result: dict, merged: dict) -> None:
    assert result["status"] == "done" and result["steps"] == 3
    same_metrics(evaluate_artifacts(run_dir), result["test"])
    (run_dir / "result.json").write_text(json.dumps(result))
    run = next(r for r in list_runs(run_dir.parent) if r.folder == run_dir)
    assert run.method == method and run.weights == registry.get(method).weights
    source = run.finetuned_source()                   # what the spectra views open: base + adapter, or merged
    names = {i.name: i for i in source.matrices()}
    assert merged
    for name, W in merged.items():
        hits = [n for n in names if n == name or name.endswith("." + n) or n.endswith("." + name)]
        assert len(hits) == 1, (name, hits)
        got = source.load_array(hits[0])
        assert np.abs(got - W).max() <= 1e-5 * np.abs(W).max(), name


@pytest.mark.parametrize("method", METHODS)
def test_three_steps_on_a_tiny_bert_reload_to_the_same_numbers(tmp_path, tiny_bert, method, monkeypatch):
    merged = capture_merged(monkeypatch, method)
    run_dir = tmp_path / f"1-{method}"
    result = train({"method": method, "model": tiny_bert, **TINY}, run_dir)
    check_run(run_dir, method, result, merged)
    adapter = json.loads((run_dir / "artifacts/adapter/adapter_config.json").read_text())
    if registry.get(method).weights == "adapter":   # converted to a LoRA on the original base: rank 2r, α 2α
        assert adapter["r"] == 16 and adapter["lora_alpha"] == 32 and adapter["init_lora_weights"] is True
    if method == "corda":
        assert result["calibration_rows"] == 32


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_three_steps_on_the_default_model_reload_to_the_same_numbers(tmp_path, method):
    # CorDA's calibration runs one row per forward pass, with a covariance hook on every adapted layer: 8 rows here
    options = {"method_options": {"calibration_rows": 8}} if registry.get(method).needs_task_data else {}
    result = train({"method": method, **TINY, **options}, tmp_path)
    assert result["status"] == "done" and result["steps"] == 3
    same_metrics(evaluate_artifacts(tmp_path), result["test"])
    assert result["trainable_params"] < result["total_params"] / 10


@pytest.mark.parametrize("method", METHODS)
def test_rank_allocations(tmp_path, tiny_bert, method):
    allocation = {"rank_pattern": {"encoder.layer.1.attention.self.query": 2}, "alpha_pattern": {}}
    run_dir = tmp_path / "run"
    result = train({"method": method, "model": tiny_bert, "allocation": allocation, **TINY, "max_steps": 1},
                   run_dir)
    from safetensors.torch import load_file

    weights = load_file(run_dir / "artifacts/adapter/adapter_model.safetensors")
    ranks = {k: v.shape[0] for k, v in weights.items() if k.endswith("lora_A.weight")}
    factor = 2 if registry.get(method).weights == "adapter" else 1        # converted adapters hold [A ; A0]
    assert [r for k, r in ranks.items() if "layer.1.attention.self.query" in k] == [2 * factor]
    assert [r for k, r in ranks.items() if "layer.0.attention.self.query" in k] == [8 * factor]
    same_metrics(evaluate_artifacts(run_dir), result["test"])


# ---------------------------------------------------------------------------------------------- spectra page

@pytest.mark.slow
def test_compare_spectra_page_shows_intruders_and_alpha_shift_of_a_dora_run(tiny_bert):
    from streamlit.testing.v1 import AppTest

    run_dir = Path(os.environ["SPECTRASCOPE_DATA"]) / "runs" / "31-dora-tiny"
    result = train({"method": "dora", "model": tiny_bert, **TINY, "max_steps": 1}, run_dir)
    (run_dir / "result.json").write_text(json.dumps({"status": result["status"], "steps": result["steps"]}))
    root = Path(__file__).resolve().parents[2]
    at = AppTest.from_file(str(root / "app" / "main.py"), default_timeout=120)
    at.session_state["view_cs_runs"] = "31-dora-tiny"
    at.run()
    at = at.switch_page("page_compare_spectra.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    label = next(m.label for m in at.metric if "31-dora-tiny" in m.label)
    assert "DoRA" in label
    table = at.dataframe[0].value
    assert int(table["matrices"].iloc[0]) == 2 * 6                       # every block matrix of both layers
    alpha = next(el for el in at.get("plotly_chart") if el.proto.id.endswith("cs_alpha") or
                 getattr(el, "key", None) == "cs_alpha")
    names = [t["name"] for t in json.loads(alpha.proto.spec)["data"]]
    assert any("31-dora-tiny" in str(n) for n in names)
