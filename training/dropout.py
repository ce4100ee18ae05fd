"""FastDropout: nn.Dropout at about a quarter of the CPU cost, and a swap for every dropout of a model."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class FastDropout(nn.Dropout):
    """Inverted dropout, a drop-in nn.Dropout (same `p`, `inplace`, state and isinstance).

    On CPU the keep mask comes from 16 random bits per element: one 64-bit Mersenne-Twister draw fills four
    elements, and the mask is built with float passes only. Forward + backward costs about a quarter of
    nn.Dropout's per-element bernoulli_ (benchmarks/moe_lora_speed.py prints the "dropout" table). The drop
    rate is p rounded to a multiple of 1/65536 (0.05 -> 0.0500031, 0.1 -> 0.0999908) and survivors are scaled
    by 1 / (1 - that rate), so the expectation is exact. Masks come from torch's default CPU generator, so a
    run is reproducible from torch.manual_seed. On other devices nn.Dropout's own kernel runs.
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


def keep_mask(shape: torch.Size, drop_levels: int, dtype: torch.dtype) -> torch.Tensor:
    """A CPU mask of 0 (probability drop_levels / 65536) or 1 / keep, as `dtype`, from 16 random bits each."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2 ** 63, None).view(torch.int16)
    bits = (words if words.numel() == n else words[:n]).view(shape).float()   # integers in [-32768, 32767]
    keep = 1.0 - drop_levels / 65536
    # bits - (threshold - 1) is >= 1 where kept and <= 0 where dropped: clamp to {0, 1}. Float passes only;
    # torch's bool compare / where kernels are 3-5x slower on CPU than these.
    return bits.sub_(drop_levels - 32768 - 1).clamp_(0, 1).mul_(1.0 / keep).to(dtype)


def use_fast_dropout(model: nn.Module) -> int:
    """Turn every plain nn.Dropout module of `model` into a FastDropout in place; returns how many.

    Only the class changes (nn.Dropout has no parameters or buffers), so state dicts, `p` and eval-mode
    outputs are untouched. Code that reads `module.p` (attention kernels taking a dropout rate) still works.
    """
    count = 0
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = FastDropout
            count += 1
    return count
