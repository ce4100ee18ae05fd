"""MoELoraLinear: a frozen Linear / GPT-2 Conv1D plus N routed LoRA experts, computed batched (no expert loop)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D

from training.dropout import FastDropout

from .prompt import check_cached, per_token, pool, prompt_mask, sequence_shape


class MaskState:
    """The padding mask the routers should see, shared by the MoE layers of one model.

    `auto` is set from the model call's `attention_mask` by a forward pre-hook (see model.py) and cleared
    after the call; `pinned` is set by the `routing_mask(model, mask)` context manager and wins over `auto`.
    `tokens` derives the per-token mask once per call and shape: every layer of a forward shares it.
    Prompt routing (prompt.py) also reads `fresh` (the call has no KV cache yet: it starts new sequences; True
    outside a model call) and `labels` (a causal-LM call's labels: answer tokens are left out of the pool), and
    `prompt`, the (B, S) pooling mask, derived once per call and shape as well.
    """

    def __init__(self) -> None:
        self._auto: torch.Tensor | None = None
        self._pinned: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._tokens: dict[tuple, TokenMask | None] = {}
        self._prompt: dict[tuple, torch.Tensor | None] = {}
        self.fresh = True

    @property
    def auto(self) -> torch.Tensor | None:
        return self._auto

    @auto.setter
    def auto(self, mask: torch.Tensor | None) -> None:
        self._auto, self._tokens, self._prompt = mask, {}, {}

    @property
    def pinned(self) -> torch.Tensor | None:
        return self._pinned

    @pinned.setter
    def pinned(self, mask: torch.Tensor | None) -> None:
        self._pinned, self._tokens, self._prompt = mask, {}, {}

    @property
    def labels(self) -> torch.Tensor | None:
        return self._labels

    @labels.setter
    def labels(self, labels: torch.Tensor | None) -> None:
        self._labels, self._prompt = labels, {}

    def current(self) -> torch.Tensor | None:
        return self._pinned if self._pinned is not None else self._auto

    def tokens(self, lead_shape: torch.Size) -> "TokenMask | None":
        """The real (non-padding) tokens of an input with leading shape (B, S), if the mask says."""
        key = tuple(lead_shape)
        if key not in self._tokens:
            valid = token_mask(self.current(), lead_shape)
            self._tokens[key] = None if valid is None else TokenMask(valid)
        return self._tokens[key]

    def prompt(self, lead_shape: torch.Size) -> torch.Tensor | None:
        """The (B, S) bool mask a prompt router pools over (prompt.prompt_mask), or None for every token."""
        key = tuple(lead_shape)
        if key not in self._prompt:
            self._prompt[key] = prompt_mask(token_mask(self.current(), lead_shape), self._labels, lead_shape)
        return self._prompt[key]


class TokenMask:
    """A (T,) bool mask of real tokens and, when some are padding, their (T',) row indices (else None)."""

    def __init__(self, valid: torch.Tensor) -> None:
        self.valid = valid
        self.index = None if bool(valid.all()) else valid.nonzero().squeeze(1)   # one host sync per call


def token_mask(mask: torch.Tensor | None, lead_shape: torch.Size) -> torch.Tensor | None:
    """The (T,) bool mask of real tokens for an input with leading shape (B, S), from a (B, S') mask."""
    if mask is None:
        return None
    if mask.shape == lead_shape:
        return mask.reshape(-1).bool()
    if mask.dim() == 2 and len(lead_shape) == 2 and mask.shape[0] == lead_shape[0] \
            and mask.shape[1] >= lead_shape[1]:                                # cached decoding: last S positions
        return mask[:, -lead_shape[1]:].reshape(-1).bool()
    return None                                                                # unknown layout: use all tokens


def base_shape(base: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a Linear or of a GPT-2 Conv1D (whose weight is stored (in, out))."""
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    if isinstance(base, Conv1D):
        return base.weight.shape[0], base.weight.shape[1]
    raise TypeError(f"MoE-LoRA wraps nn.Linear or transformers Conv1D, not {type(base).__name__}")


def base_weight(base: nn.Module) -> torch.Tensor:
    """The base weight as (d_out, d_in), whatever the storage orientation."""
    return base.weight.T if isinstance(base, Conv1D) else base.weight


def add_matmul(out: torch.Tensor, z: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """out + z B^T: out (T, d_out), z (T, m), B (d_out, m), added in place into `out`.

    `out` is the base Linear / Conv1D output, which autograd does not save (their backward needs only input
    and weight), so adding into it is safe and saves a (T, d_out) copy per call; autograd's version counter
    would raise rather than compute a wrong gradient if that ever changed.
    """
    if out.dtype == z.dtype:
        return out.addmm_(z, B.t())
    return out.add_(F.linear(z, B).to(out.dtype))


class MoELoraLinear(nn.Module):
    """h = W0 x + s * sum_{e in topk(x)} p_hat_e(x) B_e A_e dropout_e(x), per token (dropout_e: expert e's own mask).

    router: Linear(d_in -> N, no bias) on the clean x; p = softmax in float32; the top-k probabilities are
    renormalised to sum to 1 (p_hat), the others are 0. With N = 1 this is plain LoRA: no router, gate = 1.
    routing="prompt": the router reads the mean-pooled prompt instead of each token and its gate holds for every
    token of the sequence, also the generated ones (route_prompt; prompt.py says when the choice resets).
    Parameters: lora_A (N, r, d_in), lora_B (N, d_out, r) -- all experts in one tensor each.
    """

    def __init__(self, base: nn.Module, n_experts: int, top_k: int, r: int = 8, lora_alpha: float = 16.0,
                 dropout: float = 0.05, track_balance: bool = True, routing: str = "token"):
        super().__init__()
        d_in, d_out = base_shape(base)
        if n_experts < 1 or not 1 <= top_k <= n_experts:
            raise ValueError(f"need n_experts >= 1 and 1 <= top_k <= n_experts, got {n_experts}, {top_k}")
        self.base_layer = base
        self.d_in, self.d_out = d_in, d_out
        if routing not in ("token", "prompt"):
            raise ValueError(f"routing must be token or prompt, got {routing!r}")
        self.n_experts, self.top_k, self.r, self.routing = n_experts, top_k, r, routing
        self.scaling = lora_alpha / r
        self.dropout = FastDropout(dropout) if dropout > 0 else nn.Identity()
        device = base.weight.device
        self.router = nn.Linear(d_in, n_experts, bias=False, device=device) if n_experts > 1 else None
        self.lora_A = nn.Parameter(torch.empty(n_experts, r, d_in, device=device))
        self.lora_B = nn.Parameter(torch.zeros(n_experts, d_out, r, device=device))
        for e in range(n_experts):  # Kaiming-uniform per expert, as nn.Linear(d_in, r) / peft's LoRA A
            nn.init.kaiming_uniform_(self.lora_A.data[e], a=math.sqrt(5))
        self.track_balance = track_balance and n_experts > 1
        self.mask_state = MaskState()           # replaced by the model-wide one on injection
        self.block: int | None = None           # transformer block index, set on injection
        self.balance_loss: torch.Tensor | None = None  # L = N * sum_e f_e P_e of the last forward (this matrix)
        self.route_stats: tuple | None = None   # (selections per expert, summed probs, tokens) of the last forward
        self.per_expert_dropout = True          # one dropout mask per expert (MoLA); False: one shared mask
        self.collect_gates = False              # routing_weighted_delta: accumulate the mean gate
        self.gate_sum: torch.Tensor | None = None
        self.gate_count = 0
        self.prompt_gate: torch.Tensor | None = None   # routing="prompt": (B, N) gate of the current sequences

    # -- routing -----------------------------------------------------------------------------------------

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (T, d_in) -> probs (T, N) float32, chosen (T, N) 1.0 on the top-k experts else 0.0, and the
        renormalised gate (T, N) float32: the chosen probabilities divided by their sum, 0 elsewhere."""
        w = self.router.weight
        logits = F.linear(x if x.dtype == w.dtype else x.to(w.dtype), w)      # (T, N)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)             # (T, N)
        top_i = probs.topk(self.top_k, dim=-1).indices                         # (T, k)
        chosen = torch.zeros_like(probs).scatter_(1, top_i, 1.0)               # (T, N)
        kept = probs * chosen
        return probs, chosen, kept / kept.sum(dim=-1, keepdim=True)            # rows of the gate sum to 1

    def route_prompt(self, x: torch.Tensor, lead: torch.Size
                     ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """Prompt routing: (probs, chosen, gate), one (B, N) row per sequence of x (leading shape (B, S)).

        A call that starts sequences (mask_state.fresh) routes the mean of x over the prompt's real tokens and
        caches the gate; a call that continues them (KV cache) returns the cached gate with probs = chosen = None.
        """
        B, S = sequence_shape(lead)
        if self.mask_state.fresh:
            pooled = pool(x.reshape(B, S, self.d_in), self.mask_state.prompt(lead))   # (B, d_in)
            probs, chosen, gate = self.route(pooled)
            self.prompt_gate = gate.detach()
            return probs, chosen, gate
        return None, None, check_cached(self.prompt_gate, B, "MoE-LoRA prompt routing")

    def switch_loss(self, probs: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """Switch-style balance loss L = N * sum_e f_e * P_e over the rows given (f has no gradient).

        f_e = share of the k*T selections that went to e, P_e = mean router probability of e. The forward passes
        only real tokens, so padding is masked; no token at all gives 0.
        """
        if probs.shape[0] == 0:
            return probs.sum()                                                 # 0, still on the graph
        return (chosen.mean(0) @ probs.mean(0)) * (self.n_experts / self.top_k)

    def stats(self, probs: torch.Tensor, chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(selections per expert, summed router probabilities per expert, tokens) over the rows given: what a
        block-level balance loss pools over the block's adapted matrices (model.load_balance_loss)."""
        return chosen.sum(0), probs.sum(0), int(probs.shape[0])

    # -- forward -----------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base layer on every token; the experts (router, dropout, A, gate, B) on the real tokens only.

        A padding token never reaches a real token's output (attention masks it as a key, everything else is
        per token), so when the model call's attention_mask marks padding, the experts run on the T' real rows
        and are added into those rows of the base output: the default task's batches are about 45% padding.
        Without a mask (or without padding) every token is computed, as before.
        """
        lead = x.shape[:-1]
        xs = x.reshape(-1, self.d_in)                                          # (T, d_in)
        # the base on the flat (T, d_in) input gives a (T, d_out) tensor that is not a view, so adding the
        # experts into it in place costs autograd no CopySlices (two (T, d_out) copies per backward)
        out = self.base_layer(xs)                                              # (T, d_out)
        tokens = self.mask_state.tokens(lead)
        rows = None if tokens is None else tokens.index
        xr = xs if rows is None else xs.index_select(0, rows)                  # (T', d_in) real tokens
        xa = xr if xr.dtype == self.lora_A.dtype else xr.to(self.lora_A.dtype)
        target = out if rows is None else out.new_zeros(xr.shape[0], self.d_out)
        if self.router is None:                                                # N = 1: plain LoRA, gate = 1
            if self.collect_gates:
                self._accumulate(xr.new_ones(xr.shape[0], 1, dtype=torch.float32))
            z = F.linear(self.dropout(xa), self.lora_A[0]) * self.scaling      # (T', r)
            delta = add_matmul(target, z, self.lora_B[0])
        else:
            if self.routing == "prompt":                                       # one gate per sequence
                probs, chosen, gate = self.route_prompt(x, lead)
                gate = per_token(gate, lead, rows)                             # (T', N)
            else:
                probs, chosen, gate = self.route(xr)
            if self.track_balance:                                             # prompt: over sequences
                routed = probs is not None
                self.balance_loss = self.switch_loss(probs, chosen) if routed else None
                self.route_stats = self.stats(probs, chosen) if routed else None
            if self.collect_gates:
                self._accumulate(gate)
            gate = (gate * self.scaling).to(xa.dtype)
            if self.training and self.per_expert_dropout and isinstance(self.dropout, FastDropout):
                delta = self.add_experts_own_masks(target, xa, gate)
            else:
                delta = self.add_experts(target, self.dropout(xa), gate)
        out = delta if rows is None else out.index_add_(0, rows, delta.to(out.dtype))
        return out.view(*lead, self.d_out)

    def add_experts(self, out: torch.Tensor, xd: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """out + sum_e gate_e B_e A_e xd for every token: out (T, d_out), xd (T, d_in), gate (T, N).

        Dense over experts: one (d_in -> N*r) GEMM for every expert's A, a gate multiply that zeroes the
        non-selected experts, and one (N*r -> d_out) GEMM for every B that also adds `out` (addmm). The extra
        work is N*r columns instead of k*r; with N <= ~16 and r = 8 that is at most 128 columns, still one GEMM
        that keeps the cores busy. Gathering A[top_i] instead builds a (T, k, r, d_in) copy of the weights and
        runs T small matmuls; benchmarks/moe_lora_speed.py measures it ("gather") and the dense mix wins clearly.
        """
        T, N, r = xd.shape[0], self.n_experts, self.r
        z = F.linear(xd, self.lora_A.reshape(N * r, self.d_in))                # (T, N*r)
        z = (z.view(T, N, r) * gate.unsqueeze(-1)).view(T, N * r)              # zero for other experts
        return add_matmul(out, z, self.lora_B.permute(1, 0, 2).reshape(self.d_out, N * r))

    def add_experts_own_masks(self, out: torch.Tensor, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """As add_experts, but every expert sees its own dropout mask of x, as MoLA draws it (each expert is a
        LoRA module with its own nn.Dropout): one (N, T, d_in) dropout, then one batched (N) matmul with A."""
        T, N, r = x.shape[0], self.n_experts, self.r
        xd = self.dropout(x.unsqueeze(0).expand(N, T, self.d_in).contiguous())   # (N, T, d_in), N masks
        z = torch.bmm(xd, self.lora_A.transpose(1, 2))                            # (N, T, r)
        z = (z.permute(1, 0, 2) * gate.unsqueeze(-1)).reshape(T, N * r)           # zero for other experts
        return add_matmul(out, z, self.lora_B.permute(1, 0, 2).reshape(self.d_out, N * r))

    def _accumulate(self, gate: torch.Tensor) -> None:
        g = gate.detach().double()                                             # (T', N), real tokens only
        s = g.sum(0)
        self.gate_sum = s if self.gate_sum is None else self.gate_sum + s
        self.gate_count += g.shape[0]

    # -- analysis ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def expert_deltas(self) -> torch.Tensor:
        """s * B_e A_e for every expert: (N, d_out, d_in) float32."""
        return self.scaling * torch.bmm(self.lora_B.float(), self.lora_A.float())

    def extra_repr(self) -> str:
        return (f"d_in={self.d_in}, d_out={self.d_out}, experts={self.n_experts}, top_k={self.top_k}, "
                f"r={self.r}, scaling={self.scaling:g}" + (", routing=prompt" if self.routing == "prompt" else ""))
