"""MoE-style runs read as matrices for the intruder analysis: a planted rank-1 expert update gives exactly one intruder."""
from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from tests.tiny_models import make_tiny_model


def test_milora_module_planted_intruder_is_named_as_a_module(tmp_path):
    from training.moe_lora import spectra
    from training.trainer import train

    base = str(make_tiny_model(tmp_path / "tiny-bert"))
    run = tmp_path / "runs" / "1-milora"
    train({"method": "milora", "model": base, "max_steps": 1, "max_train_rows": 16, "max_eval_rows": 8,
           "max_test_rows": 8, "rank": 2, "top_k": 1, "eval_every": 0, "batch_size": 8}, run)
    weights = next((run / "artifacts").rglob("milora.safetensors"))
    t = load_file(str(weights))
    q = "bert.encoder.layer.0.attention.self.query"
    a_key = next(k for k in t if k.startswith(q) and "lora_A" in k)
    b_key = next(k for k in t if k.startswith(q) and "lora_B" in k)
    for key in t:                                  # every module's update is zero except the planted one
        if "lora_B" in key:
            t[key] = torch.zeros_like(t[key])
    g = torch.Generator().manual_seed(0)
    A, B = torch.zeros_like(t[a_key]), torch.zeros_like(t[b_key])
    a = torch.nn.functional.normalize(torch.randn(A.shape[-1], generator=g), dim=0)
    b = torch.nn.functional.normalize(torch.randn(B.shape[-2], generator=g), dim=0) * 50.0
    A.view(-1, A.shape[-1])[0] = a                 # first rank of the (only) module: a rank-1 update b aᵀ
    B.view(-1, *B.shape[-2:])[0][:, 0] = b
    t[a_key], t[b_key] = A, B
    save_file(t, str(weights), metadata={"format": "pt"})

    report = spectra.intruder_report(run, base, spectra.PER_EXPERT, top_k=10)
    assert report.total == 1                        # the planted direction, and nothing from the zero updates
    hit = [c for c in report.block_comparisons if c.intruders(report.epsilon)]
    assert len(hit) == 1 and hit[0].info.name == "encoder.layer.0.attention.self.query.weight [module 0]"
    assert "MiLoRA (prompt-routed) module 0 merged" in hit[0].info.notes
    assert all("[module 0]" in c.info.name for c in report.block_comparisons)   # one LoRA per projection
