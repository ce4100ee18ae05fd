"""Analysis fan-out over a real local Ray head: analyze and intruders give the local tables bit for bit."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis import engine, intruders, ray_fanout
from analysis.engine import analyze, json_rows
from analysis.sources import open_source
from analysis.types import SpectrascopeError
from tests.helpers import assert_clear_error
from tests.ray_head import free_port, head, ray_session  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def lora_pair(tmp_path_factory):
    """A tiny LLaMA base and a LoRA adapter of it (non-zero B, so the merged matrices differ from the base)."""
    import peft
    import torch
    import transformers

    root = tmp_path_factory.mktemp("ray-intruders")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2)
    transformers.LlamaForCausalLM(cfg).save_pretrained(root / "base")
    base = transformers.LlamaForCausalLM.from_pretrained(root / "base")
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                                                     init_lora_weights=False))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_" in name:
                p.mul_(4.0)
    lora.save_pretrained(root / "adapter")
    return str(root / "base"), str(root / "adapter")


def test_analyze_on_ray_gives_the_local_rows_bit_for_bit(head, monkeypatch):
    local = analyze(use_cache=False)                                 # the default model, all-MiniLM-L6-v2
    with monkeypatch.context() as m:
        m.setattr(engine, "_arrays", lambda *_: (_ for _ in ()).throw(AssertionError("the local path ran")))
        remote = analyze(use_cache=False, ray=head.address)
    assert len(remote.rows) == len(local.rows) > 30
    for got, want in zip(json_rows(remote.rows), json_rows(local.rows)):    # NaN → None, every other bit kept
        assert got == want
    assert remote.evals.keys() == local.evals.keys()
    assert all(np.array_equal(remote.evals[n], local.evals[n]) for n in local.evals)
    assert json_rows(remote.layer_rows) == json_rows(local.layer_rows)
    assert remote.skipped == local.skipped and remote.identity == local.identity


def test_analyze_cli_with_ray_writes_the_local_table(head, tmp_path):
    local = analyze(use_cache=True)                         # from the cache the first test left: the same rows
    proc = cli("analyze", "--ray", head.address, "--no-cache", "--out", str(tmp_path / "ray.json"))
    assert proc.returncode == 0, proc.stderr
    written = json.loads((tmp_path / "ray.json").read_text())["rows"]
    assert written == json.loads(json.dumps(json_rows(local.rows)))


def test_intruders_on_ray_give_the_local_report_bit_for_bit(head, lora_pair, tmp_path):
    base, adapter = lora_pair
    local = intruders.compare(open_source(base), open_source(base, adapter=adapter), use_cache=False)
    remote = ray_fanout.compare(head.address, (base, None), (base, adapter), use_cache=False)
    assert len(remote.comparisons) == len(local.comparisons) == 14
    for got, want in zip(remote.comparisons, local.comparisons):
        assert got.row(local.epsilon) == want.row(local.epsilon)
        for field in ("similarities", "overlap", "sigmas", "base_sigmas", "delta_sigmas"):
            assert np.array_equal(getattr(got, field), getattr(want, field)), (got.info.name, field)
    assert remote.total == local.total > 0 and remote.skipped == local.skipped
    assert remote.sweep().equals(local.sweep())
    proc = cli("intruders", base, "--adapter", adapter, "--ray", head.address, "--no-cache", "--out",
               str(tmp_path / "ray.json"))
    assert proc.returncode == 0, proc.stderr
    assert f"total intruders: {local.total} " in proc.stdout
    from analysis.cli_common import write_table
    write_table(local.rows, tmp_path / "local.json")
    assert (json.loads((tmp_path / "ray.json").read_text())["rows"]
            == json.loads((tmp_path / "local.json").read_text())["rows"])


def test_bad_ray_addresses_are_one_line():
    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(SpectrascopeError, match="cannot reach the Ray cluster"):
        analyze(use_cache=False, ray=dead)
    with pytest.raises(SpectrascopeError, match="not the dashboard URL"):
        analyze(use_cache=False, ray="http://127.0.0.1:8265")
    assert_clear_error(cli("analyze", "--ray", dead, "--no-cache"), "cannot reach the Ray cluster", dead)
    assert_clear_error(cli("analyze", "--engine", "weightwatcher", "--ray", dead), "drop --ray")
