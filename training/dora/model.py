"""Wrap a transformers model with DoRA adapters: peft LoRA with use_dora=True, W' = m · (W + s·B·A) / ‖W + s·B·A‖."""
from __future__ import annotations

from torch import nn


def apply_dora(model: nn.Module, lora_options, task_type: str) -> nn.Module:
    """`model` as a peft model with DoRA on the target modules (a trained magnitude per output row, initialised
    to the row norms of W, and a LoRA direction update); for "SEQ_CLS" the head trains too."""
    from peft import get_peft_model

    from training.pissa.model import peft_lora_config

    return get_peft_model(model, peft_lora_config(lora_options, task_type, model.config.model_type, use_dora=True))
