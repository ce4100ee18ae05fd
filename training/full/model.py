"""Make every weight of a model trainable (optionally keeping the input embeddings frozen)."""
from __future__ import annotations

from torch import nn

from training.full.config import FullOptions


def prepare_full(model: nn.Module, options: FullOptions | None = None) -> nn.Module:
    """Set `requires_grad` on every parameter of `model` (in place) and return it."""
    options = options or FullOptions()
    for param in model.parameters():
        param.requires_grad_(True)
    if options.freeze_embeddings:
        for param in model.get_input_embeddings().parameters():
            param.requires_grad_(False)
    return model
