"""Wrap a transformers model with LoRA adapters (peft) and load a saved adapter back onto a base model."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from training.lora.config import LoraOptions


def apply_lora(model: nn.Module, options: LoraOptions, task_type: str) -> nn.Module:
    """Return `model` as a peft model with LoRA on the target modules; for "SEQ_CLS" the head trains too."""
    from peft import get_peft_model

    config = options.to_peft(task_type, model.config.model_type)
    return get_peft_model(model, config)


def load_lora(base: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """`base` with the adapter saved by `save_pretrained` in `adapter_dir` (eval mode, frozen)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False).eval()
