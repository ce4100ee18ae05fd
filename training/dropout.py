"""FastDropout (nn.Dropout at a fifth of the CPU cost), its model-wide swap, and attention dropout with its masks."""
from __future__ import annotations

import math
import threading

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface


class FastDropout(nn.Dropout):
    """Inverted dropout, a drop-in nn.Dropout (same `p`, `inplace`, state and isinstance).

    On CPU the keep mask comes from 16 random bits per element: one 64-bit word fills four elements, and the
    mask is built with float passes only (see `keep_mask`). Forward + backward costs about a fifth of
    nn.Dropout's per-element bernoulli_ (benchmarks/moe_lora_speed.py prints the "dropout" table). The drop
    rate is p rounded to a multiple of 1/65536 (0.05 -> 0.0500031, 0.1 -> 0.0999908) and survivors are scaled
    by 1 / (1 - that rate), so the expectation is exact. Every mask is seeded from torch's default CPU
    generator, so a run is reproducible from torch.manual_seed. On other devices nn.Dropout's own kernel runs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return F.dropout(x, self.p, self.training, self.inplace)
        levels = round(self.p * 65536)
        if levels == 0:
            return x
        if levels == 65536:
            return x.mul_(0.0) if self.inplace else x * 0.0
        mask = keep_mask(x.shape, levels, x.dtype)
        return x.mul_(mask) if self.inplace else x * mask


_local = threading.local()


def random_words(n: int) -> torch.Tensor:
    """n uniformly random int64 words on CPU, from a generator keyed by three draws of torch's default one.

    The words come from numpy's SFC64 (Small Fast Chaotic; passes BigCrush and PractRand), which fills them
    at about twice the speed of torch's serial Mersenne Twister (`random_`): 85 against 180 us for 75 000
    words here. Its state (a, b, c) is set from torch's generator on every call, counter 1, and the first 12
    outputs are discarded as SFC64's own seeding does; so torch.manual_seed still fixes every mask.
    """
    gen = getattr(_local, "sfc64", None)
    if gen is None:
        gen = _local.sfc64 = np.random.SFC64(0)
    key = np.ones(4, dtype=np.uint64)
    key[:3] = torch.empty(3, dtype=torch.int64).random_(-2 ** 63, None).numpy().view(np.uint64)
    gen.state = {"bit_generator": "SFC64", "state": {"state": key}, "has_uint32": 0, "uinteger": 0}
    gen.random_raw(12)
    return torch.from_numpy(gen.random_raw(n).view(np.int64))


def keep_mask(shape: torch.Size, drop_levels: int, dtype: torch.dtype) -> torch.Tensor:
    """A CPU mask of 0 (probability drop_levels / 65536) or 1 / keep, as `dtype`, from 16 random bits each."""
    n = math.prod(shape)
    if n == 0:
        return torch.empty(shape, dtype=dtype)
    words = random_words((n + 3) // 4).view(torch.int16)
    bits = (words if words.numel() == n else words[:n]).view(shape).float()   # integers in [-32768, 32767]
    keep = 1.0 - drop_levels / 65536
    # bits - (threshold - 1) is >= 1 where kept and <= 0 where dropped: clamp to {0, 1}. Float passes only;
    # torch's bool compare / where kernels are 3-5x slower on CPU than these.
    return bits.sub_(drop_levels - 32768 - 1).clamp_(0, 1).mul_(1.0 / keep).to(dtype)


def use_fast_dropout(model: nn.Module) -> int:
    """Turn every plain nn.Dropout module of `model` into a FastDropout in place; returns how many.

    Only the class changes (nn.Dropout has no parameters or buffers), so state dicts, `p` and eval-mode
    outputs are untouched. Code that reads `module.p` (attention kernels taking a dropout rate) still works.
    A transformers model on SDPA attention also switches to `sdpa_fast_dropout` (see there); the attention
    implementation is not part of a saved config, so saved models load as before.
    """
    count = 0
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = FastDropout
            count += 1
    top = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if top is not None and top.config._attn_implementation == "sdpa" and top._can_set_attn_implementation():
        register_attention()
        top.set_attn_implementation(ATTENTION)
    return count


ATTENTION = "sdpa_fast_dropout"


def sdpa_fast_dropout(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      is_causal: bool | None = None, **kwargs):
    """transformers' SDPA attention, except when training on CPU with attention dropout.

    There torch's SDPA falls back to its math kernel and draws the probability mask with bernoulli_, which
    costs the default model about 12 ms of a 200 ms training step; this computes the same math (scores,
    mask, float32 softmax, dropout, weighted sum) with FastDropout's mask. Masks are SDPA's (boolean, True =
    attend, or None with `is_causal`). Returns (B, S, heads, head_dim) and no weights, as SDPA does.
    """
    if not (dropout > 0.0 and module.training and query.device.type == "cpu"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if key.shape[1] != query.shape[1]:                                    # grouped-query attention
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scores = torch.matmul(query, key.transpose(-1, -2)).mul_(query.shape[-1] ** -0.5 if scaling is None else scaling)
    q_len, kv_len = scores.shape[-2:]
    if attention_mask is not None:
        mask = attention_mask[..., :kv_len]            # in place: matmul's backward does not need its output
        if mask.dtype == torch.bool:
            scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)
        else:
            scores.add_(mask)
    elif (is_causal if is_causal is not None else getattr(module, "is_causal", True)) and q_len > 1:
        future = torch.ones(q_len, kv_len, dtype=torch.bool, device=scores.device).triu_(kv_len - q_len + 1)
        scores.masked_fill_(future, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    levels = round(dropout * 65536)
    if levels:
        probs = probs * keep_mask(probs.shape, levels, probs.dtype)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def register_attention() -> None:
    """Register `sdpa_fast_dropout` with transformers, with SDPA's mask format (idempotent)."""
    AttentionInterface.register(ATTENTION, sdpa_fast_dropout)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
