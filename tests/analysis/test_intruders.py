"""Intruder dimensions (Shuttleworth et al.): planted intruders, ΔW spectra, mitigation, cache, pairing, CLI."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from analysis import intruders
from analysis.config import data_dir
from analysis.types import MatrixInfo, SpectrascopeError
from tests.helpers import assert_clear_error

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- fixtures

class FakeSource:
    """A ModelSource over a dict of 2-D tensors (names like 'model.layers.0.self_attn.q_proj.weight')."""

    def __init__(self, tensors: dict, ident: str | None = "fake", label: str = "fake"):
        self.tensors, self.ident, self.label, self.flags = tensors, ident, label, ()
        self.loads = 0

    def identity(self):
        return {"fake": self.ident} if self.ident else {}

    def matrices(self):
        out = []
        for name, t in self.tensors.items():
            m = re.search(r"layers?\.(\d+)\.", name)
            module = "embedding" if "embed" in name else "head" if "lm_head" in name else name.split(".")[-2]
            out.append(MatrixInfo(name, int(m.group(1)) if m else None, module, *t.shape))
        return out

    def load(self, name):
        self.loads += 1
        return self.tensors[name].float().clone()

    def iter_matrices(self):
        for info in self.matrices():
            yield info, self.load(info.name)

    def hf_folder(self):
        return None


def orthonormal(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))[0][:, :k]


def base_matrix(rows: int, cols: int, g: torch.Generator, decay: float = 0.85) -> torch.Tensor:
    """Full-rank W0 with a geometric spectrum 1, decay, decay², … (well-separated top singular vectors).

    A Gaussian W0's bulk has near-degenerate singular values whose vectors a strong planted spike can rotate
    into each other, which is a real effect but would blur an exact planted count.
    """
    r = min(rows, cols)
    s = decay ** torch.arange(r, dtype=torch.float64)
    return orthonormal(rows, r, g) @ torch.diag(s) @ orthonormal(cols, r, g).T


def plant(W0: torch.Tensor, count: int, g: torch.Generator, strength: float = 3.0):
    """W = W0 + Σ σ_j u_j v_jᵀ with random orthonormal u_j, v_j and σ_j > σ_max(W0); returns (W, U, σ)."""
    rows, cols = W0.shape
    if count == 0:
        return W0.clone(), torch.zeros(rows, 0, dtype=W0.dtype), torch.zeros(0, dtype=W0.dtype)
    U, V = orthonormal(rows, count, g), orthonormal(cols, count, g)
    sig = torch.linalg.matrix_norm(W0, 2) * torch.linspace(strength, strength - 1, count, dtype=torch.float64)
    return W0 + U @ torch.diag(sig) @ V.T, U, sig


def info(rows, cols, name="model.layers.0.mlp.up_proj.weight"):
    return MatrixInfo(name, 0, "up", rows, cols)


def count(W0, W, **kw) -> int:
    c = intruders.compare_matrix(info(*W0.shape), W0.float(), W.float(), **kw)
    return len(c.intruders())


# ---------------------------------------------------------------- the math on one matrix

@pytest.mark.parametrize("shape", [(128, 128), (128, 320), (320, 128)])  # square, wide, tall
@pytest.mark.parametrize("planted", [1, 2, 3, 5, 8])
def test_planted_intruders_counted_exactly(shape, planted):
    # wide/square: U0 is a complete basis of R^rows, and a random u_j has max |cos| ≈ sqrt(2 ln n / n) ≈ 0.3;
    # tall: U0 spans only a cols-dim subspace of R^rows, so a random u_j mostly lies outside it (lower still).
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        W0 = base_matrix(*shape, g)
        W, _, sig = plant(W0, planted, g)
        c = intruders.compare_matrix(info(*shape), W0.float(), W.float())
        assert len(c.intruders()) == planted, (seed, c.similarities)
        assert c.intruders() == list(range(planted))                      # they are the top of the spectrum
        row = c.row()
        assert row["intruder_ranks"] == list(range(1, planted + 1))
        np.testing.assert_allclose(sorted(row["intruder_sigmas"]), sorted(sig.tolist()), rtol=0.05)
        assert row["min_similarity"] < 0.5 and c.svd_dtype == "float64"


@pytest.mark.parametrize("shape", [(128, 128), (96, 200), (200, 96)])
def test_no_change_or_tiny_noise_gives_no_intruders(shape):
    g = torch.Generator().manual_seed(1)
    for W0 in (base_matrix(*shape, g), torch.randn(*shape, generator=g, dtype=torch.float64) / shape[1] ** 0.5):
        assert count(W0, W0) == 0
        noisy = W0 + 1e-5 * torch.randn(*shape, generator=g, dtype=torch.float64)
        assert count(W0, noisy) == 0
        c = intruders.compare_matrix(info(*shape), W0.float(), W0.float())
        assert c.similarities.min() > 0.99
        np.testing.assert_allclose(np.diag(c.overlap[:, :10]), 1.0, atol=1e-3)   # |U0ᵀU| block ≈ identity


def test_top_k_and_similarity_definition():
    g = torch.Generator().manual_seed(3)
    W0 = base_matrix(128, 128, g)
    W, _, _ = plant(W0, 3, g)
    c = intruders.compare_matrix(info(128, 128), W0.float(), W.float(), top_k=2)
    assert c.similarities.shape == (2,) and c.overlap.shape == (2, 128) and len(c.intruders()) == 2
    U0 = torch.linalg.svd(W0.float().double())[0]                          # what the code sees: float32 weights
    U = torch.linalg.svd(W.float().double())[0]
    expect = (U[:, :2].T @ U0).abs().max(dim=1).values.numpy()
    np.testing.assert_allclose(c.similarities, expect, atol=1e-5)
    small = intruders.compare_matrix(info(4, 6), torch.randn(4, 6), torch.randn(4, 6), top_k=10)
    assert small.similarities.shape == (4,)                              # k capped at min(rows, cols)


def test_delta_spectrum_and_effective_rank():
    g = torch.Generator().manual_seed(4)
    W0 = base_matrix(96, 160, g)
    for r in (1, 4, 8):
        B, A = orthonormal(96, r, g), orthonormal(160, r, g)
        W = W0 + 0.3 * B @ A.T                                            # ΔW with r equal singular values
        c = intruders.compare_matrix(info(96, 160), W0.float(), W.float())
        row = c.row()
        assert row["delta_numeric_rank"] == r
        assert row["delta_effective_rank"] == pytest.approx(r, rel=1e-3)
        assert row["delta_spectral_norm"] == pytest.approx(0.3, rel=1e-4)
    assert intruders.effective_rank(np.array([2.0, 1.0, 1.0])) == pytest.approx(np.exp(1.5 * np.log(2)))
    assert intruders.effective_rank(np.zeros(5)) == 0.0
    assert intruders.numeric_rank(np.array([1.0, 1e-9, 0.0]), (10, 10)) == 1


def test_scale_directions_lambda():
    g = torch.Generator().manual_seed(5)
    W0 = base_matrix(128, 128, g)
    W, _, sig = plant(W0, 3, g)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    assert torch.equal(intruders.scale_directions(W, U, S, Vh, [0, 1, 2], lam=1.0), W)
    W07 = intruders.scale_directions(W, U, S, Vh, [0, 1, 2], lam=0.7)
    S07 = torch.linalg.svdvals(W07)
    np.testing.assert_allclose(sorted(S07[:3].tolist()), sorted((0.7 * S[:3]).tolist()), rtol=1e-6)
    W00 = intruders.scale_directions(W, U, S, Vh, [0, 1, 2], lam=0.0)
    assert count(W0, W00) == 0                                           # intruders gone from the top-k


# ---------------------------------------------------------------- pair comparison, report, cache

def planted_pair(planted=(2, 0, 1), n=128, seed=0, base_id="base-a"):
    """Base and fine-tuned FakeSources: one q_proj per layer, plus an embedding (skipped by default)."""
    g, g_plant = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1000)
    base, fine = {}, {}
    base["model.embed_tokens.weight"] = torch.randn(50, n, generator=g)
    fine["model.embed_tokens.weight"] = base["model.embed_tokens.weight"] + 1.0
    for layer, p in enumerate(planted):          # the base depends on (seed, layer count) only, like a checkpoint
        name = f"model.layers.{layer}.self_attn.q_proj.weight"
        W0 = base_matrix(n, n, g)
        base[name] = W0.float()
        fine[name] = plant(W0, p, g_plant)[0].float()
    return FakeSource(base, f"{base_id}-{seed}-{len(planted)}", "base"), FakeSource(fine, None, "fine")


def test_compare_report_rows_layers_sweep_json():
    base, fine = planted_pair((2, 0, 1))
    seen = []
    rep = intruders.compare(base, fine, progress=lambda d, t, n: seen.append((d, t)))
    assert seen[-1] == (3, 3)
    assert list(rep.rows["intruders"]) == [2, 0, 1] and rep.total == 3
    assert {"name", "layer", "module", "rows", "cols", "intruders", "min_similarity", "intruder_ranks",
            "intruder_sigmas", "delta_effective_rank"} <= set(rep.rows.columns)
    assert not rep.rows["name"].str.contains("embed").any()
    assert list(rep.per_layer["layer"]) == [0, 1, 2] and list(rep.per_layer["intruders"]) == [2, 0, 1]
    sweep = rep.sweep([0.01, 0.5, 1.01])
    assert list(sweep["intruders"]) == [0, 3, 30]                           # s_j ≤ 1: all 3 × k at ε > 1
    assert (np.diff(rep.sweep()["intruders"]) >= 0).all()
    block = rep.similarity("model.layers.1.self_attn.q_proj.weight", m=5)
    assert block.shape == (10, 5) and np.allclose(np.diag(block), 1.0, atol=1e-3)
    payload = json.loads(rep.to_json())
    assert payload["total"] == 3 and len(payload["rows"]) == 3 and payload["rows"][0]["intruder_ranks"] == [1, 2]
    assert rep.summary() == "total intruders: 3 in 3 transformer-block matrices (k=10, epsilon=0.5)"
    with pytest.raises(SpectrascopeError, match="was not compared"):
        rep.similarity("nope")
    rep_all = intruders.compare(base, fine, include_embeddings=True)
    assert len(rep_all.rows) == 4


def test_total_counts_block_matrices_only_and_says_so():
    """Embeddings/head (include_embeddings) and unnumbered matrices are compared but not in `total`, `sweep` or
    `per_layer`; `total_other` and `counted` say what else was compared."""
    base, fine = planted_pair((2, 0, 1))
    g = torch.Generator().manual_seed(3)
    for src, extra in ((base, 0.0), (fine, 1.0)):             # a pooler (no layer index) with a planted intruder
        W0 = base_matrix(64, 64, torch.Generator().manual_seed(5))
        src.tensors["pooler.dense.weight"] = (plant(W0, 1, g)[0] if extra else W0).float()
    rep = intruders.compare(base, fine, include_embeddings=True)
    rows = rep.rows.set_index("name")["intruders"]
    other = int(rows["model.embed_tokens.weight"] + rows["pooler.dense.weight"])
    assert rows["pooler.dense.weight"] == 1 and other >= 1                # the planted pooler intruder is seen …
    assert rep.total == 3 and rep.total_other == other                   # … but counted apart
    assert len(rep.block_comparisons) == 3 and len(rep.other_comparisons) == 2
    assert int(rep.sweep([0.5])["intruders"].iloc[0]) == rep.total == int(rep.per_layer["intruders"].sum())
    assert rep.counted == (f"3 transformer-block matrices; {other} more in 2 other matrices "
                           "(embeddings/head …, not in the total)")
    payload = json.loads(rep.to_json())
    assert (payload["total"], payload["total_other"], payload["block_matrices"]) == (3, other, 3)
    assert rep.summary().startswith("total intruders: 3 in 3 transformer-block matrices; ")
    plain = intruders.compare(base, fine)                                 # the pooler has no layer: still apart
    assert plain.total == 3 and plain.total_other == 1 and "1 other matrix" in plain.counted


def test_base_svd_cache_hit_on_second_comparison():
    base, fine = planted_pair((1, 1), seed=7, base_id="cache-test-base")
    first = intruders.compare(base, fine)
    assert (first.cache_hits, first.cache_misses) == (0, 2)
    files = list((data_dir() / "svd-cache").glob("*.safetensors"))
    assert len(files) >= 2 and not any(f.name.endswith((".pkl", ".npy")) for f in files)
    _, other_fine = planted_pair((0, 3), seed=7, base_id="cache-test-base")     # another fine-tune, same base
    second = intruders.compare(base, other_fine)
    assert (second.cache_hits, second.cache_misses) == (2, 0)
    assert second.rows["base_cached"].all() and list(second.rows["intruders"]) == [0, 3]
    again = intruders.compare(base, fine)
    pd.testing.assert_frame_equal(first.rows.drop(columns="base_cached"), again.rows.drop(columns="base_cached"))
    assert intruders.compare(base, fine, use_cache=False).cache_hits == 0
    fresh_base = FakeSource(base.tensors, "another-identity")
    assert intruders.compare(fresh_base, fine).cache_hits == 0              # keyed by the base's identity
    no_id = FakeSource(base.tensors, None)
    assert intruders.compare(no_id, fine).cache_hits == 0 and intruders.compare(no_id, fine).cache_hits == 0


def test_compare_matrices_generic_stream_for_moe_experts():
    g = torch.Generator().manual_seed(9)
    triples = []
    for e, p in enumerate([0, 2, 1]):
        W0 = base_matrix(128, 128, g)
        triples.append((MatrixInfo(f"model.layers.0.mlp.experts.{e}.up_proj", 0, "up", 128, 128),
                        W0.float(), plant(W0, p, g)[0].float()))
    nan = torch.ones(128, 128)
    nan[0, 0] = float("nan")
    triples.append((MatrixInfo("model.layers.0.mlp.experts.3.up_proj", 0, "up", 128, 128), nan, nan))
    rep = intruders.compare_matrices(iter(triples), top_k=10, epsilon=0.5, base_label="moe base")
    assert list(rep.rows["intruders"]) == [0, 2, 1] and rep.total == 3
    assert rep.skipped == [("model.layers.0.mlp.experts.3.up_proj", "non-finite weights (1 NaN, 0 Inf): not compared")]
    with pytest.raises(SpectrascopeError, match="epsilon"):
        intruders.compare_matrices(iter(triples), epsilon=0)


def test_name_prefix_difference_matched_by_suffix():
    base, fine = planted_pair((1, 0))
    prefixed = FakeSource({"bert." + k if "layers" in k else k: v for k, v in fine.tensors.items()}, "p")
    rep = intruders.compare(base, prefixed)
    assert list(rep.rows["intruders"]) == [1, 0]
    assert rep.rows["finetuned_name"].str.startswith("bert.model.layers.").all()


def test_mismatched_pairs_name_the_first_mismatch():
    base, fine = planted_pair((1, 0, 0))
    other = FakeSource({"encoder.layer.0.attention.self.query.weight": torch.randn(64, 64)}, "bert")
    with pytest.raises(SpectrascopeError, match=r"no weight matrices in common .*'model\.layers\.0\.self_attn"):
        intruders.compare(base, other)
    missing = FakeSource({k: v for k, v in fine.tensors.items() if "layers.1." not in k}, "m")
    with pytest.raises(SpectrascopeError, match=r"has no matrix 'model\.layers\.1\.self_attn\.q_proj\.weight'"):
        intruders.compare(base, missing)
    shapes = dict(fine.tensors)
    shapes["model.layers.2.self_attn.q_proj.weight"] = torch.randn(128, 64)
    shapes["model.layers.1.self_attn.q_proj.weight"] = torch.randn(64, 128)
    with pytest.raises(SpectrascopeError, match=r"shape mismatch at 'model\.layers\.1\.self_attn\.q_proj\.weight'"
                                                r": base 128×128, fine-tuned 64×128"):
        intruders.compare(base, FakeSource(shapes, "s"))
    with pytest.raises(SpectrascopeError, match="no weight matrices to compare"):
        intruders.compare(FakeSource({"model.embed_tokens.weight": torch.randn(5, 4)}), fine)


def test_mitigate_without_folder_writes_matrices(tmp_path):
    from safetensors.torch import load_file
    base, fine = planted_pair((2, 0, 1))
    res = intruders.mitigate(base, fine, tmp_path / "out", lam=0.0)
    assert res.total_scaled == 3 and res.notes
    written = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(written) == set(fine.tensors)
    assert torch.equal(written["model.embed_tokens.weight"], fine.tensors["model.embed_tokens.weight"])
    after = intruders.compare(base, FakeSource(written, "mitigated"))
    assert after.total == 0
    intruders.mitigate(base, fine, tmp_path / "same", lam=1.0)
    for k, v in load_file(str(tmp_path / "same" / "model.safetensors")).items():
        assert torch.equal(v, fine.tensors[k])
    with pytest.raises(SpectrascopeError, match="not an empty folder"):
        intruders.mitigate(base, fine, tmp_path / "same")
    with pytest.raises(SpectrascopeError, match="λ"):
        intruders.mitigate(base, fine, tmp_path / "neg", lam=-1)


# ---------------------------------------------------------------- real checkpoints through analysis.sources

sources = pytest.importorskip("analysis.sources")
transformers = pytest.importorskip("transformers")
Q0 = "model.layers.0.self_attn.q_proj.weight"
DOWN1 = "model.layers.1.mlp.down_proj.weight"        # 128 × 256: wide


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis", "intruders", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})




@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny LLaMA base, a 'full fine-tune' of it with planted intruders, a LoRA adapter, a tiny BERT, GPT-2s."""
    import peft
    root = tmp_path_factory.mktemp("intruder-models")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(0)
    sd = model.state_dict()
    with torch.no_grad():                                # well-separated spectra where intruders get planted
        for name in (Q0, DOWN1):
            sd[name].copy_(0.1 * base_matrix(*sd[name].shape, g))
    model.save_pretrained(root / "base")
    with torch.no_grad():
        sd[Q0].copy_(plant(sd[Q0].double(), 2, g)[0])
        sd[DOWN1].copy_(plant(sd[DOWN1].double(), 1, g)[0])
    model.save_pretrained(root / "full")
    base = transformers.LlamaForCausalLM.from_pretrained(root / "base")
    lora = peft.get_peft_model(base, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                     init_lora_weights=False))
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_" in n:
                p.mul_(3.0)
    lora.save_pretrained(root / "adapter")
    lora.merge_and_unload().save_pretrained(root / "merged")
    transformers.BertModel(transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=128)
                           ).save_pretrained(root / "bert")
    gcfg = transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=128, n_layer=1, n_head=4)
    gpt = transformers.GPT2LMHeadModel(gcfg)
    gpt.save_pretrained(root / "gpt2-base")
    with torch.no_grad():                                # Conv1D stores (in, out): plant in the (out, in) view
        w = gpt.transformer.h[0].attn.c_proj.weight
        w.copy_(plant(w.T.double(), 1, g, strength=6.0)[0].T)
    gpt.save_pretrained(root / "gpt2-ft")
    return root


def test_sources_full_finetune_and_merged_adapter_equals_manual_merge(models):
    base = sources.open_source(str(models / "base"))
    rep = intruders.compare(base, sources.open_source(str(models / "full")))
    counts = dict(zip(rep.rows["name"], rep.rows["intruders"]))
    assert counts[Q0] == 2 and counts[DOWN1] == 1 and rep.total == 3
    assert not rep.rows["module"].isin(["embedding", "head"]).any()
    via_adapter = intruders.compare(base, sources.open_source(str(models / "base"), adapter=str(models / "adapter")))
    manual = intruders.compare(base, sources.open_source(str(models / "merged")))
    assert via_adapter.cache_hits == len(via_adapter.rows)               # base SVDs reused from the first run
    cols = ["name", "intruders", "intruder_ranks", "delta_numeric_rank"]
    pd.testing.assert_frame_equal(via_adapter.rows[cols], manual.rows[cols])
    np.testing.assert_allclose(via_adapter.rows["min_similarity"], manual.rows["min_similarity"], atol=1e-4)
    np.testing.assert_allclose(via_adapter.rows["delta_effective_rank"], manual.rows["delta_effective_rank"],
                               rtol=1e-3)
    q = via_adapter.rows[via_adapter.rows["module"].isin(["q", "v"])]
    assert (q["delta_numeric_rank"] == 2).all()                          # rank-2 LoRA: ΔW has rank 2
    assert (via_adapter.rows[~via_adapter.rows["module"].isin(["q", "v"])]["delta_fro_norm"] == 0).all()


def test_mitigate_checkpoint_loads_with_transformers(models, tmp_path):
    base = sources.open_source(str(models / "base"))
    ft = sources.open_source(str(models / "full"))
    out = tmp_path / "mitigated"
    res = intruders.mitigate(base, ft, out, lam=0.0)
    assert res.scaled == {Q0: [1, 2], DOWN1: [1]}
    assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()
    loaded = transformers.LlamaForCausalLM.from_pretrained(out).state_dict()
    full = transformers.LlamaForCausalLM.from_pretrained(models / "full").state_dict()
    for name, t in full.items():
        if name not in (Q0, DOWN1):
            assert torch.equal(loaded[name], t), name
    assert intruders.compare(base, sources.open_source(str(out))).total == 0
    same = tmp_path / "lambda1"
    intruders.mitigate(base, ft, same, lam=1.0)
    for name, t in transformers.LlamaForCausalLM.from_pretrained(same).state_dict().items():
        assert torch.equal(t, full[name]), name
    # a LoRA source: names are the base's; λ = 1 reproduces the manual merge
    lora = sources.open_source(str(models / "base"), adapter=str(models / "adapter"))
    intruders.mitigate(base, lora, tmp_path / "lora1", lam=1.0)
    merged = transformers.LlamaForCausalLM.from_pretrained(models / "merged").state_dict()
    for name, t in transformers.LlamaForCausalLM.from_pretrained(tmp_path / "lora1").state_dict().items():
        torch.testing.assert_close(t, merged[name], rtol=0, atol=1e-6)


def test_mitigate_gpt2_conv1d_written_back_transposed(models, tmp_path):
    base = sources.open_source(str(models / "gpt2-base"))
    ft = sources.open_source(str(models / "gpt2-ft"))
    name = "transformer.h.0.attn.c_proj.weight"
    rep = intruders.compare(base, ft)
    assert dict(zip(rep.rows["name"], rep.rows["intruders"]))[name] == 1 and rep.total == 1
    res = intruders.mitigate(base, ft, tmp_path / "g", lam=0.5)
    assert res.scaled == {name: [1]}
    W = ft.load(name).double()
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    expect = intruders.scale_directions(W, U, S, Vh, [0], 0.5).float()
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "g")
    torch.testing.assert_close(model.transformer.h[0].attn.c_proj.weight.detach(), expect.T, rtol=0, atol=1e-5)
    assert torch.equal(model.transformer.h[0].attn.c_attn.weight, transformers.GPT2LMHeadModel.from_pretrained(
        models / "gpt2-ft").transformer.h[0].attn.c_attn.weight)


def test_sources_architecture_mismatch(models):
    with pytest.raises(SpectrascopeError, match="no weight matrices in common"):
        intruders.compare(sources.open_source(str(models / "base")), sources.open_source(str(models / "bert")))


def test_cli_csv_json_sweep_adapter_and_mitigation(models, tmp_path):
    out = tmp_path / "rows.csv"
    proc = cli(str(models / "base"), str(models / "full"), "--out", str(out), "--sweep")
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(out)
    assert {"name", "layer", "module", "intruders", "min_similarity"} <= set(df.columns) and len(df) == 14
    assert "epsilon" in proc.stdout and "matrices_with_intruders" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == ("total intruders: 3 in 14 transformer-block matrices "
                                                    "(k=10, epsilon=0.5)")
    js = tmp_path / "rows.json"
    proc = cli(str(models / "base"), "--adapter", str(models / "adapter"), "--top-k", "4", "--out", str(js))
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(js.read_text())
    assert payload["top_k"] == 4 and len(payload["rows"]) == 14 and "per_layer" in payload
    proc = cli(str(models / "base"), str(models / "full"), "--mitigate", "0.7", "--save", str(tmp_path / "m"))
    assert proc.returncode == 0, proc.stderr
    assert "name" in proc.stdout and "scaled 3 intruder direction(s) by λ=0.7" in proc.stdout
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_cli_errors_are_one_line_exit_2(models, tmp_path):
    assert_clear_error(cli(str(models / "base"), str(models / "bert")), "no weight matrices in common",
                       "base has 'model.layers.0.mlp.down_proj.weight'",
                       "fine-tuned has 'encoder.layer.0.attention.output.dense.weight'")
    assert_clear_error(cli(str(models / "base"), str(tmp_path / "nope")), str(tmp_path / "nope"))
    assert_clear_error(cli(str(models / "base")), "FINETUNED")
    assert_clear_error(cli(str(models / "base"), str(models / "full"), "--adapter", str(models / "adapter")),
                       "omit FINETUNED")
    assert_clear_error(cli(str(models / "base"), str(models / "full"), "--mitigate", "0.7"), "--save")


def test_cli_standalone_module_help():
    proc = subprocess.run([sys.executable, "-m", "analysis.cli_intruders", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "--epsilon" in proc.stdout
