"""Prompt-level routing (MiLoRA): which call starts a sequence, the pooled prompt, and per-sequence gates per token.

A prompt-level router chooses once per sequence and the choice is reused for the tokens generated after it. The
rule for when the cached choice resets (shared by MoE-LoRA's `routing="prompt"` and MiLoRA):

* A model call WITHOUT a KV cache, or with an empty one (`cache` / `past_key_values` is None, or its
  `get_seq_length()` is 0) starts new sequences: every call of training and evaluation, and the first call of
  `generate()` (the prompt). Its routers pool the call's tokens and cache the (B, ·) gate, one row per sequence.
* A call WITH a non-empty KV cache continues them (the new tokens of `generate()`): the routers reuse the cached
  gate and compute nothing. Its batch must be the batch of the call that cached it, else SpectrascopeError.
* A layer called outside a model (no model hook, hence no cache information) treats every call as a new sequence.

The pool is the mean over the real tokens (the call's attention_mask excludes padding). In a causal-LM call with
`labels` (B, S), tokens that carry a label (the answer of answer-only SFT) are left out too, so that training
routes on the prompt as generation does; a row whose real tokens all carry labels (plain text) pools them all.
Consequence: `generate(use_cache=False)` re-reads the whole sequence at every step and so re-routes on the prompt
plus what was generated so far; route with the cache on.
"""
from __future__ import annotations

import math

import torch

from analysis.types import SpectrascopeError

IGNORE_INDEX = -100


def cache_is_empty(cache) -> bool:
    """Whether a model call's KV cache holds nothing yet: None, a Cache of length 0, or an empty legacy tuple."""
    if cache is None:
        return True
    length = getattr(cache, "get_seq_length", None)
    if callable(length):
        return int(length()) == 0
    if isinstance(cache, (tuple, list)):
        if not cache:
            return True
        first = cache[0][0] if isinstance(cache[0], (tuple, list)) and cache[0] else cache[0]
        return isinstance(first, torch.Tensor) and first.dim() >= 2 and first.shape[-2] == 0
    return False


def sequence_shape(lead: torch.Size | tuple) -> tuple[int, int]:
    """(sequences B, tokens per sequence S) of an input with leading shape (B, S) (or (…, S); (T,): one sequence)."""
    if len(lead) >= 2:
        return math.prod(lead[:-1]), int(lead[-1])
    return 1, int(lead[0]) if lead else 1


def prompt_mask(valid: torch.Tensor | None, labels: torch.Tensor | None, lead) -> torch.Tensor | None:
    """(B, S) bool of the tokens a prompt router pools over, or None for every token.

    `valid`: the (T,) real-token mask of the call (None: no padding known); `labels`: the causal-LM labels of the
    call or None. Tokens with a label are left out, except in rows where that would leave nothing.
    """
    B, S = sequence_shape(lead)
    real = None if valid is None else valid.view(B, S)
    if labels is None or tuple(labels.shape) != (B, S):
        return real
    keep = labels == IGNORE_INDEX
    if real is not None:
        keep = keep & real
    fallback = real if real is not None else torch.ones_like(keep)
    return torch.where(keep.any(1, keepdim=True), keep, fallback)


def pool(x3: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the masked tokens of x3 (B, S, d) in float32 -> (B, d); a row with no token pools to 0."""
    x3 = x3.float()
    if mask is None:
        return x3.mean(1)
    w = mask.to(torch.float32)
    return torch.bmm(w.unsqueeze(1), x3).squeeze(1) / w.sum(1, keepdim=True).clamp(min=1.0)


def per_token(values: torch.Tensor, lead, rows: torch.Tensor | None) -> torch.Tensor:
    """Per-sequence values (B, N) repeated for each token of an input with leading shape (B, S): (B·S, N), or the
    rows `rows` indexes (the real tokens) of it."""
    _, S = sequence_shape(lead)
    out = values if S == 1 else values.repeat_interleave(S, dim=0)
    return out if rows is None else out.index_select(0, rows)


def check_cached(gate: torch.Tensor | None, batch: int, where: str) -> torch.Tensor:
    """The cached gate of a continued sequence; SpectrascopeError when there is none or the batch changed."""
    if gate is None:
        raise SpectrascopeError(f"{where}: a call with a KV cache came before any prompt was routed; start the "
                                "generation with the prompt (a call without a cache)")
    if gate.shape[0] != batch:
        raise SpectrascopeError(f"{where}: the prompt was routed for {gate.shape[0]} sequence(s) but this cached call "
                                f"has {batch}; a KV cache must continue the batch of its prompt")
    return gate
