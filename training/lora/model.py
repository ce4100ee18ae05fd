"""Wrap a transformers model with LoRA adapters (peft) and load a saved adapter back onto a base model."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from training.lora.config import LoraOptions


def resolve_targets(model: nn.Module, targets: list[str] | None) -> list[str] | None:
    """peft target_modules for MoE-LoRA-style targets: "all-linear" or module kinds (q, k, v, o, gate, up, down)
    become the exact names of the matching Linear / Conv1D inside the numbered blocks, so that LoRA adapts the
    same matrices as MoE-LoRA (peft's own "all-linear" would also take BERT's pooler). Other names pass as given."""
    from training.moe_lora.config import ALL_LINEAR, MODULE_KINDS

    if not targets or not any(t == ALL_LINEAR or t in MODULE_KINDS for t in targets):
        return targets
    from transformers.pytorch_utils import Conv1D

    from training.moe_lora.model import block_index, is_target

    names = [name for name, module in model.named_modules()
             if isinstance(module, (nn.Linear, Conv1D)) and (where := block_index(name)) is not None
             and is_target(name, where[1], targets)]
    if not names:
        from analysis.types import SpectrascopeError

        raise SpectrascopeError(f"no linear layer inside the model's blocks matches target_modules {targets}")
    return names


def apply_lora(model: nn.Module, options: LoraOptions, task_type: str) -> nn.Module:
    """Return `model` as a peft model with LoRA on the target modules; for "SEQ_CLS" the head trains too."""
    from peft import get_peft_model

    config = options.to_peft(task_type, model.config.model_type)
    return get_peft_model(model, config)


def load_lora(base: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """`base` with the adapter saved by `save_pretrained` in `adapter_dir` (eval mode, frozen)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False).eval()
