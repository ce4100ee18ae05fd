"""PiSSA through peft, and what the SVD-initialised adapters (PiSSA, minor, CorDA) share: the initial adapter kept
in memory at attach, and a save that turns the trained adapter into a plain LoRA on the ORIGINAL base weights."""
from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from analysis.types import SpectrascopeError

INITIAL = "spectrascope_initial_adapter"     # attribute of the peft model: its adapter state before any step
ADAPTER = "default"                          # peft's adapter name for the one adapter a run trains


def peft_lora_config(options, task_type: str, model_type: str, **extra):
    """The peft LoraConfig of `options` (training.lora.LoraOptions) with more LoraConfig fields set
    (init_lora_weights, use_dora, corda_config); validated by LoraConfig itself."""
    return dataclasses.replace(options.to_peft(task_type, model_type), **extra)


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, peft LoRA layer) of every matrix the run's adapter sits on."""
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer) and ADAPTER in m.lora_A]


def record_initial(model: nn.Module) -> nn.Module:
    """Keep the adapter's initial state (A0, B0 and the head, before any step) in memory, on the CPU: the save
    needs it to express the trained adapter on the original base. Returns the model."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(model)
    setattr(model, INITIAL, {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()})
    return model


def apply_pissa(model: nn.Module, lora_options, pissa_options, task_type: str, device=None) -> nn.Module:
    """`model` as a peft model whose adapters hold each matrix's r principal singular triplets (A = √S·Vᵀ,
    B = U·√S, both over √scaling) and whose base weights hold the residual W − s·B·A (peft "pissa")."""
    from peft import get_peft_model

    if device is not None:
        model = model.to(device)                 # the SVDs run where the run trains
    config = peft_lora_config(lora_options, task_type, model.config.model_type,
                              init_lora_weights=pissa_options.init_lora_weights)
    return record_initial(get_peft_model(model, config))


def _is_lora(key: str) -> bool:
    return ".lora_" in key


def save_converted(model: nn.Module, folder: str | Path) -> None:
    """Save the trained adapter as a plain LoRA on the original base weights W.

    Trained: W_res + s·B·A with W_res = W − s·B0·A0, so the update of W is ΔW = s·(B·A − B0·A0) =
    s·[B | −B0]·[A ; A0]: a LoRA of rank 2r at α 2α (the same s). peft's
    save_pretrained(path_initial_model_for_weight_conversion=...) writes exactly that from the initial adapter,
    which is written here from the state record_initial kept (a temporary folder, config init_lora_weights=True
    so that loading it decomposes nothing). peft's conversion keeps only the lora_A / lora_B tensors, so the
    trained classification head (modules_to_save) is added back to the file afterwards.
    """
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    initial = getattr(model, INITIAL, None)
    if initial is None:
        raise SpectrascopeError("the adapter's initial state was not recorded when it was attached, so the run "
                                "cannot be saved as a LoRA on the original base: attach it with its method's attach")
    folder = Path(folder)
    trained = get_peft_model_state_dict(model)
    with tempfile.TemporaryDirectory(prefix="spectrascope-initial-") as tmp:
        start = Path(tmp) / "initial"
        config = copy.deepcopy(model.peft_config[ADAPTER])
        config.init_lora_weights = True
        config.save_pretrained(str(start))
        save_file(initial, str(start / "adapter_model.safetensors"), metadata={"format": "pt"})
        with warnings.catch_warnings():        # peft warns about the temporary adapter's name and its head copy
            warnings.simplefilter("ignore")
            model.save_pretrained(str(folder), safe_serialization=True,
                                  path_initial_model_for_weight_conversion=str(start))
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    head = {k: v.detach().to("cpu").contiguous() for k, v in trained.items() if not _is_lora(k) and k not in tensors}
    if head:
        save_file({**tensors, **head}, str(weights), metadata={"format": "pt"})
    config_file = folder / "adapter_config.json"
    saved = json.loads(config_file.read_text())
    if saved.get("corda_config") is not None:  # the converted adapter is a plain LoRA: nothing to decompose
        saved["corda_config"] = None
        config_file.write_text(json.dumps(saved, indent=2, sort_keys=True))


@torch.no_grad()
def merged_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """module name -> the adapted matrix as the model computes it: base (residual) + s·B·A, (out, in), float32."""
    from peft.utils import transpose

    out = {}
    for name, layer in lora_layers(model):
        stored = layer.get_base_layer().weight.float() + layer.get_delta_weight(ADAPTER).float()
        out[name] = transpose(stored, layer.fan_in_fan_out).cpu()
    return out
