"""`python -m analysis analyze`: output columns, and one clear line with exit code 2 for every kind of bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import peft
import torch
import transformers
from safetensors.torch import save_file
from tests.helpers import assert_clear_error

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ["name", "layer", "module", "rows", "cols", "alpha", "alpha_hill", "xmin", "D", "stable_rank",
            "log_spectral_norm"]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})




def tiny_llama(path: Path, nan: bool = False) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=200, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(cfg)
    if nan:
        with torch.no_grad():
            model.model.layers[1].self_attn.k_proj.weight[0, 0] = float("nan")
    model.save_pretrained(path)
    return model


def test_default_model_csv_and_json(tmp_path):
    out = tmp_path / "minilm.csv"
    proc = cli("analyze", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(out)
    assert list(df.columns[: len(CONTRACT)]) == CONTRACT
    assert len(df) == 40 and df["name"].str.startswith(("encoder.", "embeddings.", "pooler.")).all()
    assert "alphalora_score" in proc.stdout                     # per-layer summary printed
    assert {"alpha_se", "alpha_hill_se", "verdict", "verdict_reason", "alpha_hill_verdict", "eig_method"} <= set(df)
    assert set(df["verdict"]) <= {"over-trained", "typical", "under-trained", "unreliable fit", "no fit"}
    assert "unreliable weightwatcher fits" in proc.stdout
    js = tmp_path / "minilm.json"
    assert cli("analyze", "all-MiniLM-L6-v2", "--out", str(js)).returncode == 0
    payload = json.loads(js.read_text())
    assert len(payload["rows"]) == 40 and len(payload["layers"]) == 6


def test_nan_weights_reported_per_matrix_and_exit_zero(tmp_path):
    tiny_llama(tmp_path, nan=True)
    proc = cli("analyze", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "skipped model.layers.1.self_attn.k_proj.weight: non-finite weights (1 NaN, 0 Inf)" in proc.stdout


def test_missing_path():
    assert_clear_error(cli("analyze", "/no/such/folder"), "/no/such/folder")


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert_clear_error(cli("analyze", str(tmp_path)), str(tmp_path))


def test_truncated_safetensors(tmp_path):
    tiny_llama(tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert_clear_error(cli("analyze", str(tmp_path), "--no-cache"), "model.safetensors")


def test_checkpoint_without_2d_weights(tmp_path):
    save_file({"norm.weight": torch.ones(8), "bias": torch.zeros(8)}, str(tmp_path / "model.safetensors"))
    assert_clear_error(cli("analyze", str(tmp_path)), "2-D")


def test_uncached_hub_id():
    assert_clear_error(cli("analyze", "no-such-org/no-such-model"), "cache")


def test_adapter_whose_base_does_not_match(tmp_path):
    llama = tiny_llama(tmp_path / "llama")
    adapted = peft.get_peft_model(llama, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    adapted.save_pretrained(tmp_path / "adapter")
    # the default MiniLM has no q_proj/v_proj: the adapter does not fit it
    assert_clear_error(cli("analyze", "all-MiniLM-L6-v2", "--adapter", str(tmp_path / "adapter")), "adapter")


def test_bad_out_extension(tmp_path):
    assert_clear_error(cli("analyze", "--out", str(tmp_path / "x.txt")), ".csv")


def test_weightwatcher_engine_runs(tmp_path):
    tiny_llama(tmp_path / "m")
    proc = cli("analyze", str(tmp_path / "m"), "--engine", "weightwatcher")
    assert proc.returncode == 0, proc.stderr
    assert "weightwatcher analysed" in proc.stdout and "q_proj" in proc.stdout


def test_progress_in_a_pipe_is_plain_lines_not_a_redrawn_bar(tmp_path):
    tiny_llama(tmp_path / "m")
    r = cli("analyze", str(tmp_path / "m"), "--no-cache", "--out", str(tmp_path / "m.csv"))
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "\x1b[" not in r.stderr          # no carriage returns, no cursor movement
    lines = [line for line in r.stderr.splitlines() if line.startswith("analysing:")]
    n = len(pd.read_csv(tmp_path / "m.csv"))
    assert lines and lines[-1].startswith(f"analysing: {n}/{n} matrices (100%)")   # the final state, always
    assert len(lines) <= 3                                            # one line per 5 s at most, not one per matrix
