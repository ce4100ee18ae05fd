"""Tests of prompt-level routing: MiLoRA (training/milora) and MoE-LoRA's routing="prompt"."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from analysis.types import SpectrascopeError
from training import registry
from training.milora import (CONFIG_NAME, WEIGHTS_NAME, MiLoraConfig, inject_milora, load_balance_loss,
                             load_milora, milora_layers, milora_routers, save_milora, unload_milora)
from training.moe_lora import (MoELoraConfig, MoELoraLinear, inject_moe_lora, merged_expert_weights,
                               moe_lora_layers, routing_mask, routing_weighted_delta)
from training.trainer import TrainConfig, evaluate_artifacts, prepare_config, train

from tests.tiny_models import make_tiny_model

SMALL = {"max_train_rows": 24, "max_eval_rows": 8, "max_test_rows": 8, "eval_every": 0, "batch_size": 8,
         "max_length": 32}
LLAMA_LOCAL = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj")


def tiny_llama(layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=60, max_position_embeddings=64, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts of 7 tokens, the first left-padded by 3 (as generate() wants them)."""
    ids = torch.randint(1, 60, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    ids[0, :3] = 0
    return ids, mask


def randomize(model, std: float = 0.3, seed: int = 3) -> None:
    """Non-zero LoRA B and larger router weights, so adapters and routing visibly matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in moe_lora_layers(model):            # MiLoRA's layers are single-expert MoE-LoRA layers
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * std)
            if layer.router is not None:
                layer.router.weight.copy_(torch.randn(layer.router.weight.shape, generator=g))
        for _, router in milora_routers(model):
            if router.weight is not None:
                router.weight.copy_(torch.randn(router.weight.shape, generator=g))


def generate(model, n: int = 5) -> torch.Tensor:
    ids, mask = prompts()
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0)


# -- MiLoRA: one routing per prompt -------------------------------------------------------------------------

def test_prompt_is_routed_once_and_every_generated_token_reuses_it():
    model = inject_milora(tiny_llama(), MiLoraConfig(r=4, top_k=2))
    randomize(model)
    routers = dict(milora_routers(model))
    assert len(routers) == 2 and all(r.module_names == LLAMA_LOCAL for r in routers.values())
    routed, used = {n: 0 for n in routers}, {}          # router.route calls; gates the LoRA modules applied
    for name, router in routers.items():
        def route(pooled, _orig=router.route, _name=name):
            routed[_name] += 1
            return _orig(pooled)

        def module_gate(i, _orig=router.module_gate, _name=name):
            gate, selected = _orig(i)
            used.setdefault((_name, i), []).append(gate.clone())
            return gate, selected
        router.route, router.module_gate = route, module_gate
    generate(model, n=6)
    assert routed == {n: 1 for n in routers}             # once for the prompt, never for the 5 cached steps
    assert all(r.calls == 1 for r in routers.values())
    assert len(used) == 14 and all(len(gates) == 6 for gates in used.values())   # prefill + 5 decoding calls
    for gates in used.values():                          # the same per-sequence gate for every token
        assert all(torch.equal(g, gates[0]) for g in gates)
    for router in routers.values():                      # top-2 of 7 per sequence, renormalised
        assert ((router.gate > 0).sum(1) == 2).all() and torch.allclose(router.gate.sum(1), torch.ones(2))
    first = {n: r.gate.clone() for n, r in routers.items()}
    generate(model, n=2)                                 # a new generate() call is a new prompt: routed again
    assert routed == {n: 2 for n in routers}
    assert all(torch.equal(r.gate, first[n]) for n, r in routers.items())     # same prompts, same choice


def test_pool_leaves_out_padding_and_the_answer():
    model = inject_milora(tiny_llama(), MiLoraConfig(r=4, top_k=2))
    randomize(model)
    router = next(r for _, r in milora_routers(model))
    ids, mask = prompts()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
        gate = router.gate.clone()
        changed = ids.clone()
        changed[0, :3] = 7                                # other padding tokens: the same routing
        model(input_ids=changed, attention_mask=mask)
        assert torch.equal(router.gate, gate)
        answer = torch.randint(1, 60, (2, 3), generator=torch.Generator().manual_seed(5))
        full = torch.cat([ids, answer], 1)
        labels = torch.cat([torch.full_like(ids, -100), answer], 1)
        model(input_ids=full, attention_mask=torch.cat([mask, torch.ones_like(answer)], 1), labels=labels)
        assert torch.allclose(router.gate, gate, atol=1e-6)   # training routes on the prompt, as generate() does


class HandLora(nn.Module):
    """The reference: W x + s · B (A x), written out by hand."""

    def __init__(self, W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, s: float):
        super().__init__()
        self.W, self.A, self.B, self.s = W.detach().clone(), A.detach().clone(), B.detach().clone(), s

    def forward(self, x):
        return x @ self.W.T + self.s * ((x @ self.A.T) @ self.B.T)


def hand_lora_model(base, model, local: str):
    """A copy of `base` whose `local` projection in every block is HandLora with `model`'s module weights."""
    ref = copy.deepcopy(base)
    for name, layer in milora_layers(model):
        if name.endswith(local):
            parent, _, child = name.rpartition(".")
            hand = HandLora(layer.base_layer.weight, layer.lora_A[0], layer.lora_B[0], layer.scaling)
            setattr(ref.get_submodule(parent), child, hand)
    return ref


def test_one_adapted_module_is_plain_lora():
    base = tiny_llama()
    model = inject_milora(copy.deepcopy(base), MiLoraConfig(r=4, lora_alpha=12, target_modules=["v"], top_k=2))
    randomize(model)
    assert all(r.weight is None and r.top_k == 1 for _, r in milora_routers(model))   # one module: no router
    ref = hand_lora_model(base, model, "self_attn.v_proj")
    ids, mask = prompts()
    with torch.no_grad():
        got, want = model(input_ids=ids, attention_mask=mask).logits, ref(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.allclose(got[real], want[real], atol=1e-5)
    assert not torch.allclose(got[real], base(input_ids=ids, attention_mask=mask).logits[real], atol=1e-3)


def test_top1_router_forced_to_one_module_is_plain_lora_on_it():
    base = tiny_llama()
    model = inject_milora(copy.deepcopy(base), MiLoraConfig(r=4, lora_alpha=8, top_k=1))
    randomize(model)
    up = LLAMA_LOCAL.index("mlp.up_proj")
    for _, router in milora_routers(model):            # a router that always picks mlp.up_proj
        router.logits = lambda pooled, _m=router.n_modules: torch.nn.functional.one_hot(
            torch.full((pooled.shape[0],), up), _m).float() * 50.0
    ref = hand_lora_model(base, model, "mlp.up_proj")
    ids, mask = prompts()
    with torch.no_grad():
        got, want = model(input_ids=ids, attention_mask=mask).logits, ref(input_ids=ids, attention_mask=mask).logits
        assert torch.allclose(got[mask.bool()], want[mask.bool()], atol=1e-5)
        assert torch.equal(model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                                          pad_token_id=0),
                           ref.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                                        pad_token_id=0))


def test_balance_loss_hand_computed_and_gradients():
    model = inject_milora(tiny_llama(), MiLoraConfig(r=4, top_k=2, load_balance_coef=0.5))
    randomize(model)
    ids, mask = prompts()
    model.train()
    out = model(input_ids=ids, attention_mask=mask, labels=ids)
    expected = 0.0
    for _, router in milora_routers(model):
        probs, chosen = (t.detach() for t in router.route_stats)
        f = chosen.sum(0) / (2 * 2)                       # share of the k·B = 4 selections
        expected += 7 * float(f @ probs.mean(0))
    loss = load_balance_loss(model)
    assert float(loss.detach()) == pytest.approx(0.5 * expected, rel=1e-5)
    (out.loss + loss).backward()
    assert all(r.weight.grad is not None and r.weight.grad.abs().sum() > 0 for _, r in milora_routers(model))
    # training computes every module (gate 0 where unselected): each parameter gets a gradient, as DDP needs
    assert all(layer.lora_A.grad is not None for _, layer in milora_layers(model))
    assert load_balance_loss(model, coef=0.0) == 0


def test_save_load_round_trip_and_spectra_views(tmp_path):
    model = inject_milora(tiny_llama(), MiLoraConfig(r=4, top_k=3, modules_to_save=["lm_head"]))
    randomize(model)
    ids, mask = prompts()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
    save_milora(model, tmp_path)
    assert (tmp_path / WEIGHTS_NAME).is_file() and json.loads((tmp_path / CONFIG_NAME).read_text())["top_k"] == 3
    fresh = load_milora(tiny_llama(), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids, attention_mask=mask).logits, expected)
    merged = dict(merged_expert_weights(fresh))           # what the Compare spectra page reads ("moe")
    assert len(merged) == 14 and "model.layers.0.mlp.down_proj.experts.0" in merged
    layer = dict(milora_layers(fresh))["model.layers.0.mlp.down_proj"]
    assert torch.allclose(merged["model.layers.0.mlp.down_proj.experts.0"],
                          layer.base_layer.weight + layer.scaling * layer.lora_B[0] @ layer.lora_A[0], atol=1e-6)
    deltas = routing_weighted_delta(fresh, {"input_ids": ids, "attention_mask": mask})
    router = dict(milora_routers(fresh))["model.layers.0.milora_router"]
    with torch.no_grad():
        fresh(input_ids=ids, attention_mask=mask)
    tokens = mask.sum(1).float()                          # mean gate over the real tokens of both prompts
    mean_gate = float((router.gate[:, 6] * tokens).sum() / tokens.sum())
    assert torch.allclose(deltas["model.layers.0.mlp.down_proj"],
                          mean_gate * layer.scaling * (layer.lora_B[0] @ layer.lora_A[0]).detach(), atol=1e-6)
    with pytest.raises(SpectrascopeError, match="does not fit this model"):
        load_milora(tiny_llama(layers=3), tmp_path)
    assert unload_milora(model) is model and not list(milora_routers(model))


def test_gpt2_blocks_route_too():
    torch.manual_seed(0)
    model = inject_milora(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=32,
                                                     vocab_size=60)).eval(), MiLoraConfig(r=2, top_k=2))
    randomize(model)
    assert [len(r.module_names) for _, r in milora_routers(model)] == [4, 4]
    generate(model, n=3)
    assert all(r.calls == 1 for _, r in milora_routers(model))


# -- MoE-LoRA routing="prompt" ------------------------------------------------------------------------------

def test_moe_lora_prompt_routing_gives_one_gate_per_sequence():
    torch.manual_seed(0)
    seen: dict[str, list] = {"token": [], "prompt": []}
    x = torch.randn(2, 6, 12)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    for routing in seen:
        torch.manual_seed(0)
        layer = MoELoraLinear(nn.Linear(12, 5), n_experts=4, top_k=2, r=3, routing=routing).eval()
        original = layer.add_experts
        layer.add_experts = lambda out, xd, gate, _o=original, _r=routing: (seen[_r].append(gate.clone()),
                                                                             _o(out, xd, gate))[1]
        with torch.no_grad(), routing_mask(layer, mask):
            layer(x)
    token, prompt = seen["token"][0], seen["prompt"][0]   # (10 real tokens, 4) each, scaled by s
    assert prompt.shape == token.shape == (10, 4)
    assert (prompt[:6] == prompt[0]).all() and (prompt[6:] == prompt[6]).all()
    assert not torch.equal(prompt[0], prompt[6])
    assert not (token[:6] == token[0]).all()              # token routing: tokens differ
    pooled = torch.stack([x[0].mean(0), x[1, :4].mean(0)])   # by hand: the mean of each prompt's real tokens
    p = torch.softmax(pooled @ layer.router.weight.T, -1)
    top = p.topk(2, -1)
    want = torch.zeros_like(p).scatter(1, top.indices, top.values / top.values.sum(-1, keepdim=True))
    assert torch.allclose(prompt[[0, 6]], want * layer.scaling, atol=1e-6)


def test_moe_lora_prompt_routing_holds_through_generate():
    model = inject_moe_lora(tiny_llama(), MoELoraConfig([4, 4], routing="prompt", r=4))
    randomize(model)
    name, layer = next(moe_lora_layers(model))
    calls = []
    original = layer.add_experts
    layer.add_experts = lambda out, xd, gate: (calls.append(gate.clone()), original(out, xd, gate))[1]
    generate(model, n=4)
    ids, mask = prompts()
    assert [c.shape[0] for c in calls] == [int(mask.sum()), 2, 2, 2]   # the prompt's real tokens, then 1 per step
    prefill = {0: calls[0][0], 1: calls[0][-1]}
    for step in calls[1:]:
        assert torch.equal(step[0], prefill[0]) and torch.equal(step[1], prefill[1])
    with pytest.raises(SpectrascopeError, match="routing 'sequence': use one of token, prompt"):
        MoELoraConfig([4, 4], routing="sequence")


def test_a_cached_call_must_continue_its_prompt():
    model = inject_milora(tiny_llama(), MiLoraConfig(r=4))
    ids, mask = prompts()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        cache = out.past_key_values if hasattr(out, "past_key_values") else out.cache
        with pytest.raises(SpectrascopeError, match="a KV cache must continue the batch of its prompt"):
            model(input_ids=ids[:1, :1], attention_mask=mask[:1], **{cache_arg(model): cache})


def cache_arg(model) -> str:
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


# -- the method through the trainer ---------------------------------------------------------------------------

def test_bad_options_are_one_clear_line(tmp_path):
    cases = [
        (lambda: TrainConfig.from_dict({"method": "milora", "experts": 8}), "does not take option 'experts'"),
        (lambda: TrainConfig.from_dict({"method": "milora", "top_k": 0}), "top_k must be a positive integer"),
        (lambda: MiLoraConfig(dropout=1.5), r"dropout = 1.5: it must be in \[0, 1\)"),
        (lambda: MiLoraConfig.from_dict({"experts": 3}), "unknown MiLoRA option"),
        (lambda: inject_milora(tiny_llama(), MiLoraConfig(target_modules=["nothing_here"])),
         "no linear layer matches target_modules"),
        (lambda: load_milora(tiny_llama(), tmp_path), "is not a MiLoRA adapter folder"),
    ]
    for make, message in cases:
        with pytest.raises(SpectrascopeError, match=message) as info:
            make()
        assert "\n" not in str(info.value)
    assert registry.get("milora").label == "MiLoRA (prompt-routed)"
    assert registry.study_arms()["milora"].reference == "lora"


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory) -> dict[str, str]:
    return {kind: str(make_tiny_model(tmp_path_factory.mktemp(f"tiny-{kind}"), kind)) for kind in ("bert", "llama")}


@pytest.mark.slow
@pytest.mark.parametrize("kind,method", [("bert", "milora"), ("llama", "milora"), ("llama", "moe_lora")])
def test_trains_three_steps_and_reloads_to_the_same_evaluation(tmp_path, tiny_folders, kind, method):
    config = {"method": method, "model": tiny_folders[kind], "max_steps": 3, "rank": 4, **SMALL}
    if method == "moe_lora":
        config["routing"] = "prompt"
    assert prepare_config(config)["method"] == method
    result = train(config, tmp_path)
    assert result["status"] == "done" and result["steps"] == 3
    assert (tmp_path / "artifacts" / method / (WEIGHTS_NAME if method == "milora" else "moe_lora.safetensors")
            ).is_file()
    assert len(result["target_modules"]) == (6 if kind == "bert" else 7)
    assert evaluate_artifacts(tmp_path) == result["test"]
