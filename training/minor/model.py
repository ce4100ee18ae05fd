"""Minor-component initialisation on peft's LoRA layers: A, B from the r smallest singular triplets of W, the
base weight becomes the principal part W − s·B·A (MiLoRA: Wang et al. 2024, "Harnessing Minor Singular
Components for Parameter-Efficient LLM Finetuning"). peft has no such init ("mica" freezes B and starts A at 0)."""
from __future__ import annotations

import torch
from torch import nn

from analysis.types import SpectrascopeError
from training.pissa.model import ADAPTER, lora_layers, peft_lora_config, record_initial


@torch.no_grad()
def minor_init(layer: nn.Module, adapter: str = ADAPTER) -> None:
    """Overwrite one peft LoRA layer's A, B and base weight: W = U·S·Vᵀ (fp32 SVD), the r smallest triplets give
    A = √(S_r/s)·V_rᵀ and B = U_r·√(S_r/s) (divided by √scaling as peft's PiSSA init does), base W − s·B·A."""
    from peft.utils import transpose

    base = layer.get_base_layer()
    weight = base.weight
    if weight.dim() != 2 or weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise SpectrascopeError(f"minor-component init needs a float Linear weight, got {type(base).__name__} "
                                f"{tuple(weight.shape)} {weight.dtype}: leave that module out of target_modules")
    r, scaling = layer.r[adapter], layer.scaling[adapter]
    W = transpose(weight.to(torch.float32), layer.fan_in_fan_out)            # (out, in)
    if r > min(W.shape):
        raise SpectrascopeError(f"rank {r} is larger than the {tuple(W.shape)} matrix it adapts: use rank ≤ "
                                f"{min(W.shape)}")
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)                     # S descending: the minor ones last
    root = torch.sqrt(S[-r:] / scaling)
    lora_A = root[:, None] * Vh[-r:]
    lora_B = U[:, -r:] * root[None, :]
    layer.lora_A[adapter].weight.data = lora_A.to(layer.lora_A[adapter].weight.dtype).contiguous()
    layer.lora_B[adapter].weight.data = lora_B.to(layer.lora_B[adapter].weight.dtype).contiguous()
    residual = W - scaling * lora_B @ lora_A
    base.weight.data = transpose(residual, layer.fan_in_fan_out).to(weight.dtype).contiguous()


def apply_minor(model: nn.Module, lora_options, task_type: str, device=None) -> nn.Module:
    """`model` as a peft LoRA model (init_lora_weights=True, then every adapted layer overwritten by minor_init),
    its initial adapter recorded for the save (training.pissa.model.save_converted)."""
    from peft import get_peft_model

    if device is not None:
        model = model.to(device)                 # the SVDs run where the run trains
    peft_model = get_peft_model(model, peft_lora_config(lora_options, task_type, model.config.model_type))
    for _, layer in lora_layers(peft_model):
        minor_init(layer)
    return record_initial(peft_model)
