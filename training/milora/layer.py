"""MiLoraRouter (one per block: top-k of the block's LoRA modules per prompt) and MiLoraLinear (one gated LoRA)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from analysis.types import SpectrascopeError
from training.moe_lora.layer import MaskState, MoELoraLinear, add_matmul
from training.moe_lora.prompt import check_cached, per_token, pool, sequence_shape


class MiLoraRouter(nn.Module):
    """The router of one transformer block: which of the block's M LoRA modules act, once per sequence.

    A forward pre-hook on the block (model.py) calls `observe` with the block's input hidden states (B, S, d).
    A call that starts sequences (no KV cache; training and evaluation calls, the prompt of generate()) pools them
    over the prompt's real tokens, computes p = softmax(W_r · pooled) in float32, keeps the top-k modules and
    renormalises their probabilities to sum to 1 (the gate, (B, M)); a continued call (KV cache: the new tokens of
    generate()) keeps the gate of its prompt and computes nothing (training/moe_lora/prompt.py has the rule).

    Why the renormalised top-k gate: the paper's description is that each LoRA module of a layer is an expert and
    that routing results are computed once before the first new token and reused for the following ones; it
    leaves an unselected module contributing nothing. We weight the selected ones by their renormalised router
    probability, the rule of our MoE-LoRA (and Mixtral), for two reasons: with top-1 the chosen module is exactly
    plain LoRA (gate 1, scale α / r), so α and the learning rate keep their LoRA meaning; and MiLoRA then differs
    from MoE-LoRA only in what is routed (modules, per prompt) and not in how gates weigh. With top-1 the task loss
    gives the router no gradient (its gate is a constant 1); only the balance loss trains it, hence top-2 default.
    A block with one adapted module has no router (gate 1).
    """

    def __init__(self, d_model: int, module_names: list[str], top_k: int, track_balance: bool = True,
                 device=None):
        super().__init__()
        self.module_names = tuple(module_names)              # local names in the block, in model order
        self.n_modules = len(module_names)
        self.top_k = min(top_k, self.n_modules)
        self.d_model = d_model
        if self.n_modules > 1:
            self.weight = nn.Parameter(torch.empty(self.n_modules, d_model, device=device))
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))   # as nn.Linear(d_model, M, bias=False)
        else:
            self.weight = None
        self.track_balance = track_balance and self.n_modules > 1
        self.mask_state = MaskState()      # replaced by the model-wide one on injection
        self.gate: torch.Tensor | None = None                 # (B, M) gate of the current sequences
        self.active: list[bool] = []                          # per module: selected by at least one sequence
        self.route_stats: tuple | None = None                 # (probs (B, M), chosen (B, M)) of the last prompt
        self.calls = 0                                        # prompts routed (tests count them)

    def logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """W_r · pooled: (B, d) -> (B, M)."""
        return F.linear(pooled.to(self.weight.dtype), self.weight)

    def route(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """pooled (B, d) -> probs (B, M) float32, chosen (B, M) 1.0 on the top-k modules, renormalised gate (B, M)."""
        probs = torch.softmax(self.logits(pooled), dim=-1, dtype=torch.float32)
        chosen = torch.zeros_like(probs).scatter_(1, probs.topk(self.top_k, dim=-1).indices, 1.0)
        kept = probs * chosen
        return probs, chosen, kept / kept.sum(dim=-1, keepdim=True)

    def observe(self, hidden: torch.Tensor) -> None:
        """Route the block input of a call that starts sequences; check a continued call's batch against it."""
        lead = hidden.shape[:-1]
        B, S = sequence_shape(lead)
        if not self.mask_state.fresh:
            check_cached(self.gate, B, "MiLoRA")
            return
        self.calls += 1
        if self.weight is None:
            self.gate, self.active, self.route_stats = hidden.new_ones(B, 1, dtype=torch.float32), [True], None
            return
        pooled = pool(hidden.reshape(B, S, self.d_model), self.mask_state.prompt(lead))    # (B, d)
        probs, chosen, self.gate = self.route(pooled)
        self.active = [bool(a) for a in chosen.any(0).tolist()]      # one host sync per prompt and block
        self.route_stats = (probs, chosen) if self.track_balance else None

    def module_gate(self, index: int) -> tuple[torch.Tensor, bool]:
        """(the (B,) gate of module `index` for the current sequences, whether any sequence selected it)."""
        if self.gate is None:
            raise SpectrascopeError("MiLoRA: a LoRA module ran before its block's router saw the prompt; call the "
                                    "model (or the block), not a single layer")
        return self.gate[:, index], self.active[index]

    def balance_term(self) -> torch.Tensor | None:
        """M · Σ_m f_m P_m over the last prompt's sequences (f: share of the k·B selections, no gradient; P: mean
        probability), Switch style; None when nothing was routed."""
        if self.route_stats is None:
            return None
        probs, chosen = self.route_stats
        return (chosen.mean(0) @ probs.mean(0)) * (self.n_modules / self.top_k)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, modules={list(self.module_names)}, top_k={self.top_k}"


class MiLoraLinear(MoELoraLinear):
    """h = W0 x + g_m(prompt) · s · B A dropout(x): one LoRA module (a MoELoraLinear with a single expert and no
    router of its own), gated per sequence by its block's MiLoraRouter; skipped (outside training) when no
    sequence selected it.

    Being a MoELoraLinear it reads like one (training.moe_lora.moe_lora_layers, merged_expert_weights: W0 + s B A
    as "<module>.experts.0", routing_weighted_delta: the mean gate times s B A) for the spectra pages.
    """

    def __init__(self, base: nn.Module, router: MiLoraRouter, index: int, r: int = 8, lora_alpha: float = 16.0,
                 dropout: float = 0.05):
        super().__init__(base, 1, 1, r, lora_alpha, dropout, track_balance=False)
        self.route_slot = (router, index)   # a tuple, not a submodule: the router belongs to (and saves with) the block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base layer on every token; the LoRA module, scaled by its sequence's gate, on the real tokens."""
        lead = x.shape[:-1]
        xs = x.reshape(-1, self.d_in)                                          # (T, d_in)
        out = self.base_layer(xs)                                              # (T, d_out), not a view
        router, index = self.route_slot
        gate, selected = router.module_gate(index)                             # (B,), any sequence's choice
        tokens = self.mask_state.tokens(lead)
        rows = None if tokens is None else tokens.index
        # unselected by every sequence: W0 x only. Not while training: a parameter without a gradient would stall
        # data-parallel jobs (DDP without find_unused_parameters), so training computes it with gate 0.
        if not selected and not (torch.is_grad_enabled() and self.lora_A.requires_grad):
            if self.collect_gates:
                n = xs.shape[0] if rows is None else rows.shape[0]
                self._accumulate(xs.new_zeros(n, 1, dtype=torch.float32))
            return out.view(*lead, self.d_out)
        xr = xs if rows is None else xs.index_select(0, rows)                  # (T', d_in) real tokens
        xa = xr if xr.dtype == self.lora_A.dtype else xr.to(self.lora_A.dtype)
        g = per_token(gate.unsqueeze(1), lead, rows)                           # (T', 1) float32
        if self.collect_gates:
            self._accumulate(g)
        z = F.linear(self.dropout(xa), self.lora_A[0]) * (g * self.scaling).to(xa.dtype)   # (T', r)
        target = out if rows is None else out.new_zeros(xr.shape[0], self.d_out)
        delta = add_matmul(target, z, self.lora_B[0])
        out = delta if rows is None else out.index_add_(0, rows, delta.to(out.dtype))
        return out.view(*lead, self.d_out)

    def extra_repr(self) -> str:
        router, index = self.route_slot
        return (f"d_in={self.d_in}, d_out={self.d_out}, r={self.r}, scaling={self.scaling:g}, "
                f"module {index} of {router.n_modules} in block {self.block}")
