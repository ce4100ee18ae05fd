"""The spectral engine end to end: weightwatcher cross-checks, streaming vs in-memory, cache, bad weights."""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import transformers

from analysis import engine, esd
from analysis.sources import open_source
from analysis.types import SpectrascopeError
from analysis.ww_oracle import match_names, run_weightwatcher

ROOT = Path(__file__).resolve().parents[2]


def tiny_llama(seed: int = 0) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(cfg)


def assert_matches_weightwatcher(result: engine.AnalysisResult, folder, min_common: int) -> None:
    ww = run_weightwatcher(folder)
    ours = result.matrices.set_index("name")
    mapping = match_names(list(ours.index), list(ww["name"]))
    ww = ww[ww["name"].isin(mapping)].assign(ours=lambda d: d["name"].map(mapping))
    assert len(ww) >= min_common, f"only {len(ww)} matrices in common with weightwatcher"
    joined = ww.join(ours, on="ours", rsuffix="_native")
    assert (joined["alpha_native"] - joined["alpha"]).abs().max() <= 1e-3, joined[["name", "alpha", "alpha_native"]]
    assert np.allclose(joined["stable_rank_native"], joined["stable_rank"], rtol=1e-6)
    assert np.allclose(joined["log_spectral_norm_native"], joined["log_spectral_norm"], atol=1e-6)
    assert np.allclose(joined["xmin_native"], joined["xmin"], rtol=1e-6)
    # entropy and rank: equal to weightwatcher's wherever the matrix is full rank at its stored precision
    full = joined[joined["matrix_rank_native"] == joined[["rows", "cols"]].min(axis=1)]
    assert len(full) >= min_common / 2
    # the others are rank-deficient at their stored precision: our rank is numpy's on the stored float32 array
    source = open_source(folder)
    for name in joined.loc[~joined.index.isin(full.index), "ours"]:
        assert ours.loc[name, "matrix_rank"] == np.linalg.matrix_rank(source.load_array(name)), name
    assert (full["matrix_rank_native"] == full["matrix_rank"]).all()
    np.testing.assert_allclose(full["entropy_native"].astype(float), full["entropy"].astype(float), rtol=1e-6)


def test_default_model_alpha_equals_weightwatcher():
    result = engine.analyze(use_cache=False)
    # MiniLM: 6 blocks × 6 linear matrices + word/position/token-type embeddings + pooler
    assert len(result.layers) == 6
    assert (result.layers["matrices"] == 6).all()
    assert_matches_weightwatcher(result, open_source(None).hf_folder(), min_common=39)
    # the token-type embedding (2 × 384) has too few eigenvalues for a fit: reported, not silently dropped
    assert any("token_type" in name for name, _ in result.skipped)


def test_tiny_llama_alpha_equals_weightwatcher(tmp_path):
    tiny_llama().save_pretrained(tmp_path)
    result = engine.analyze(str(tmp_path), use_cache=False)
    assert set(result.matrices["module"]) >= {"q", "k", "v", "o", "gate", "up", "down", "embedding", "head"}
    assert len(result.layers) == 3
    assert_matches_weightwatcher(result, tmp_path, min_common=3 * 7)


@pytest.mark.slow
def test_smollm2_alpha_equals_weightwatcher():
    result = engine.analyze("SmolLM2-135M-Instruct", use_cache=False)
    assert len(result.layers) == 30
    assert any("4-bit" in f for f in result.flags)
    assert result.matrices["notes"].str.contains("4-bit").all()       # every output row carries the caveat
    assert_matches_weightwatcher(result, open_source("SmolLM2-135M-Instruct").hf_folder(), min_common=30 * 7)


def test_sharded_checkpoint_streams_same_numbers_as_in_memory(tmp_path):
    model = tiny_llama(1)
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    streamed = engine.analyze(str(tmp_path), use_cache=False)
    in_memory = engine.analyze(model, use_cache=False)
    a = streamed.matrices.set_index("name").sort_index()
    b = in_memory.matrices.set_index("name").sort_index()
    assert list(a.index) == list(b.index)
    for col in ["alpha", "alpha_hill", "xmin", "D", "stable_rank", "log_spectral_norm", "entropy"]:
        np.testing.assert_allclose(a[col].astype(float), b[col].astype(float), rtol=1e-9, equal_nan=True)


def test_batched_eigenvalues_equal_one_at_a_time(tmp_path):
    """The CUDA arrangement (same-shape matrices batched through torch) run on CPU, fed memory-mapped weights."""
    import warnings
    tiny_llama(2).save_pretrained(tmp_path)
    one = engine.analyze(str(tmp_path), use_cache=False, batch_size=1).matrices.set_index("name")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)          # e.g. torch's "NumPy array is not writable"
        many = engine.analyze(str(tmp_path), use_cache=False, batch_size=8).matrices.set_index("name")
    np.testing.assert_allclose(one["alpha"].astype(float), many["alpha"].astype(float), atol=1e-8, equal_nan=True)
    W = open_source(str(tmp_path)).load_array("model.layers.0.mlp.up_proj.weight")
    assert not W.flags.writeable                               # a read-only memory map
    np.testing.assert_allclose(esd._eigenvalues_torch(W, "cpu", 50), esd.eigenvalues(W), rtol=1e-10, atol=1e-12)


def test_cache_hit_returns_identical_result(tmp_path):
    tiny_llama(3).save_pretrained(tmp_path)
    first = engine.analyze(str(tmp_path))
    again = engine.analyze(str(tmp_path))
    assert not first.from_cache and again.from_cache
    pd.testing.assert_frame_equal(first.matrices.reset_index(drop=True), again.matrices.reset_index(drop=True),
                                  check_dtype=False)
    assert set(again.evals) == set(first.evals)
    # a changed checkpoint is a cache miss
    tiny_llama(4).save_pretrained(tmp_path)
    assert not engine.analyze(str(tmp_path)).from_cache


def test_nan_and_inf_weights_are_reported_and_analysis_continues():
    model = tiny_llama(5)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[0, 0] = float("nan")
        model.model.layers[1].mlp.up_proj.weight[3, 2] = float("inf")
    res = engine.analyze(model, use_cache=False)
    status = res.matrices.set_index("name")["status"]
    bad = status[status.str.startswith("non-finite")]
    assert len(bad) == 2 and "1 NaN" in " ".join(bad) and "1 Inf" in " ".join(bad)
    assert (status == "ok").sum() >= len(status) - 2 - 1
    assert math.isfinite(res.layers.set_index("layer").loc[0, "alphalora_score"])   # the rest of layer 0 still scores


def test_layer_score_is_mean_hill_alpha_of_the_block():
    res = engine.analyze(tiny_llama(6), use_cache=False)
    df = res.matrices
    block0 = df[(df["layer"] == 0) & ~df["module"].isin(["embedding", "head"])]
    assert len(block0) == 7
    assert res.layer_scores()[0] == pytest.approx(block0["alpha_hill"].mean())


def test_model_without_2d_weights_is_a_clear_error():
    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.LayerNorm(8)

    with pytest.raises(SpectrascopeError, match="no 2-D weight matrices"):
        engine.analyze(Flat(), use_cache=False)


def test_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(SpectrascopeError, match="no CUDA GPU"):
        engine.resolve_device("cuda")


def test_threaded_cpu_path_equals_sequential():
    model = tiny_llama(7)
    threads = torch.get_num_threads()
    seq = engine.analyze(model, use_cache=False, device="cpu", workers=1).matrices
    par = engine.analyze(model, use_cache=False, device="cpu", workers=3).matrices
    assert list(seq["name"]) == list(par["name"])                      # input order kept
    np.testing.assert_allclose(seq["alpha"].astype(float), par["alpha"].astype(float), rtol=0, atol=0,
                               equal_nan=True)
    assert torch.get_num_threads() == threads                         # the global setting is restored


def test_cli_analysis_of_a_safetensors_checkpoint_imports_neither_torch_nor_pandas(tmp_path):
    """The CLI's fast path is NumPy + safetensors only: importing torch and pandas costs ~0.9 s of every run."""
    out = tmp_path / "out.csv"
    code = ("import sys; sys.argv = ['analysis', 'analyze', '--no-cache', '--out', sys.argv[1]]; "
            "from analysis.__main__ import main; rc = main(sys.argv[1:]); "
            "print(rc, 'torch' in sys.modules, 'pandas' in sys.modules)")
    env = {**os.environ, "SPECTRASCOPE_DATA": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "0 False False"
    table = pd.read_csv(out)
    assert (table["status"] == "ok").sum() == 39 and table["alpha"].notna().sum() == 39


def test_cache_from_an_older_engine_version_is_not_served(tmp_path, monkeypatch):
    """Rows changed (verdict, standard errors, SVD-resolved ranks): an entry written by version 4 is a miss."""
    monkeypatch.setenv("SPECTRASCOPE_DATA", str(tmp_path / "data"))
    tiny_llama(8).save_pretrained(tmp_path / "m")
    monkeypatch.setattr(engine, "ENGINE_VERSION", 4)
    old = engine.analyze(str(tmp_path / "m"))
    assert not old.from_cache
    monkeypatch.setattr(engine, "ENGINE_VERSION", 5)
    new = engine.analyze(str(tmp_path / "m"))
    assert not new.from_cache and {"verdict", "alpha_se", "alpha_hill_se"} <= set(new.matrices.columns)
    again = engine.analyze(str(tmp_path / "m"))
    assert again.from_cache and list(again.matrices["verdict"]) == list(new.matrices["verdict"])
    assert {"alphalora_score_se", "alpha_se", "unreliable"} <= set(again.layers.columns)
