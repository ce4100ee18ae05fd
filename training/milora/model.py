"""Inject MiLoRA into a transformer (a LoRA per adapted projection, a router per block), balance loss, save / load."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from transformers.pytorch_utils import Conv1D

from analysis.types import SpectrascopeError
from training.moe_lora.config import ALL_LINEAR, MODULE_KINDS
from training.moe_lora.layer import MaskState
from training.moe_lora.model import _register_mask_hooks, _saved_modules, _set_submodule, block_index, is_target

from .config import MiLoraConfig
from .layer import MiLoraLinear, MiLoraRouter

WEIGHTS_NAME = "milora.safetensors"
CONFIG_NAME = "milora_config.json"
ROUTER_ATTR = "milora_router"          # the router is a submodule of its block: "<block>.milora_router.weight"
STATE_ATTR = "_milora_mask_state"


def find_blocks(model: nn.Module, config: MiLoraConfig) -> dict[str, list[str]]:
    """Block module name -> full names of the Linear / Conv1D it adapts (model order), for blocks with any."""
    blocks: dict[str, list[str]] = {}
    seen = False
    for name, module in model.named_modules():
        where = block_index(name)
        if where is None or not isinstance(module, (nn.Linear, Conv1D)):
            continue
        seen = True
        if is_target(name, where[1], config.target_modules):
            blocks.setdefault(name[:len(name) - len(where[1]) - 1], []).append(name)
    if not seen:
        raise SpectrascopeError("no numbered transformer blocks found (expected module names like "
                                "'encoder.layer.N', 'h.N' or 'layers.N'): MiLoRA does not support this model.")
    if not blocks:
        raise SpectrascopeError(f"no linear layer matches target_modules {config.target_modules}: use kinds "
                                f"{sorted(MODULE_KINDS)}, name suffixes such as 'query', or '{ALL_LINEAR}'.")
    return blocks


def hidden_size(model: nn.Module) -> int:
    """The width of the blocks' input hidden states (what the routers read)."""
    size = getattr(getattr(model, "config", None), "hidden_size", None)
    if size is None and hasattr(model, "get_input_embeddings"):
        size = model.get_input_embeddings().embedding_dim
    if size is None:
        raise SpectrascopeError("MiLoRA needs the model's hidden size (config.hidden_size) for its routers.")
    return int(size)


def milora_layers(model: nn.Module) -> Iterator[tuple[str, MiLoraLinear]]:
    """(module name, layer) of every MiLoRA LoRA module in the model."""
    for name, module in model.named_modules():
        if isinstance(module, MiLoraLinear):
            yield name, module


def milora_routers(model: nn.Module) -> Iterator[tuple[str, MiLoraRouter]]:
    """(router module name, router) of every block router."""
    for name, module in model.named_modules():
        if isinstance(module, MiLoraRouter):
            yield name, module


def _block_hook(block: nn.Module, args, kwargs) -> None:
    """Forward pre-hook of an adapted block: its router sees the block's input hidden states."""
    hidden = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(hidden, torch.Tensor):
        raise SpectrascopeError(f"MiLoRA: {type(block).__name__} was called without hidden states as its first "
                                "argument; this block type is not supported.")
    getattr(block, ROUTER_ATTR).observe(hidden)


def inject_milora(model: nn.Module, config: MiLoraConfig) -> nn.Module:
    """Wrap every targeted linear of each block in a gated LoRA module and give the block a router, in place.

    Base weights are frozen; LoRA modules, routers and `config.modules_to_save` train. Hooks: one on `model`
    (attention mask, labels and whether the call starts sequences, as MoE-LoRA's) and one per adapted block (its
    router reads the block input). Returns the same model, with `model.milora_config` set.
    """
    if hasattr(model, "milora_config") or any(True for _ in milora_layers(model)):
        raise SpectrascopeError("this model already has MiLoRA layers: inject into a freshly loaded model.")
    blocks = find_blocks(model, config)
    missing = [s for s in config.modules_to_save
               if not any(n == s or n.endswith("." + s) for n, _ in model.named_modules())]
    if missing:
        raise SpectrascopeError(f"modules_to_save {missing} not found in the model (e.g. 'classifier' for BERT, "
                                "'score' for LLaMA / GPT-2 sequence classification).")
    model.requires_grad_(False)
    state, d_model, hooks = MaskState(), hidden_size(model), []
    for block_name, names in blocks.items():
        block = model.get_submodule(block_name)
        locals_ = [n[len(block_name) + 1:] for n in names]
        device = model.get_submodule(names[0]).weight.device
        router = MiLoraRouter(d_model, locals_, config.top_k, track_balance=config.load_balance_coef > 0,
                              device=device)
        router.mask_state = state
        setattr(block, ROUTER_ATTR, router)
        for index, name in enumerate(names):
            base = model.get_submodule(name)
            wrapped = MiLoraLinear(base, router, index, config.r, config.lora_alpha, config.dropout)
            wrapped.train(base.training)            # an eval-mode model stays in eval mode (no dropout)
            wrapped.mask_state, wrapped.block = state, block_index(name)[0]
            _set_submodule(model, name, wrapped)
        router.train(block.training)
        hooks.append(block.register_forward_pre_hook(_block_hook, with_kwargs=True))
    for _, module in _saved_modules(model, config):
        module.requires_grad_(True)
    model.milora_config = config
    setattr(model, STATE_ATTR, state)
    model._milora_hooks = hooks + _register_mask_hooks(model, STATE_ATTR)
    return model


def unload_milora(model: nn.Module) -> nn.Module:
    """Put the base layers back, remove routers and hooks (nothing merged); the base stays frozen."""
    for name, layer in list(milora_layers(model)):
        _set_submodule(model, name, layer.base_layer)
    for name, _ in list(milora_routers(model)):
        block_name, _, attr = name.rpartition(".")
        delattr(model.get_submodule(block_name) if block_name else model, attr)
    for handle in getattr(model, "_milora_hooks", []):
        handle.remove()
    for attr in ("milora_config", STATE_ATTR, "_milora_hooks"):
        if hasattr(model, attr):
            delattr(model, attr)
    return model


def load_balance_loss(model: nn.Module, coef: float | None = None) -> torch.Tensor:
    """coef · Σ_blocks M_l · Σ_m f_m P_m over the last prompt's sequences (one Switch term per block router)."""
    if coef is None:
        config = getattr(model, "milora_config", None)
        coef = config.load_balance_coef if config is not None else 1.0
    terms = [t for _, router in milora_routers(model) if (t := router.balance_term()) is not None]
    if coef == 0 or not terms:
        return torch.zeros((), device=next(model.parameters()).device)
    return coef * torch.stack(terms).sum()


def routed_modules(model: nn.Module) -> dict[str, list[str]]:
    """Router name -> local names of its block's modules in gate order (saved with the weights, checked on load)."""
    return {name: list(router.module_names) for name, router in milora_routers(model)}


# -- save / load ------------------------------------------------------------------------------------------

def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """LoRA modules, routers and modules_to_save, keyed as in model.state_dict()."""
    out = {}
    for name, layer in milora_layers(model):
        out[f"{name}.lora_A"], out[f"{name}.lora_B"] = layer.lora_A, layer.lora_B
    for name, router in milora_routers(model):
        if router.weight is not None:
            out[f"{name}.weight"] = router.weight
    for name, module in _saved_modules(model, model.milora_config):
        for key, value in module.state_dict().items():
            out[f"{name}.{key}"] = value
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def save_milora(model: nn.Module, directory: str | Path) -> Path:
    """Write milora.safetensors (modules, routers, modules_to_save; the routers' module order in the metadata) and
    milora_config.json to `directory`."""
    if not hasattr(model, "milora_config"):
        raise SpectrascopeError("this model has no MiLoRA adapter to save: call inject_milora first.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state_dict(model), str(directory / WEIGHTS_NAME),
              metadata={"format": "pt", "routed_modules": json.dumps(routed_modules(model))})
    model.milora_config.to_json(directory / CONFIG_NAME)
    return directory


def load_milora(model: nn.Module, directory: str | Path) -> nn.Module:
    """Inject the saved config into a fresh `model` and load the weights (eval mode is up to the caller)."""
    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
        raise SpectrascopeError(f"{directory} is not a MiLoRA adapter folder: it needs {CONFIG_NAME} and "
                                f"{WEIGHTS_NAME} (written by save_milora).")
    config = MiLoraConfig.from_json(directory / CONFIG_NAME)
    try:
        tensors = load_file(str(directory / WEIGHTS_NAME))
        with safe_open(str(directory / WEIGHTS_NAME), framework="pt") as f:
            saved_order = json.loads((f.metadata() or {}).get("routed_modules", "null"))
    except (SafetensorError, OSError, ValueError) as err:
        raise SpectrascopeError(f"could not read {directory / WEIGHTS_NAME} ({err}).") from None
    inject_milora(model, config)
    try:
        expected = adapter_state_dict(model)
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise SpectrascopeError(f"the adapter in {directory} does not fit this model (missing {missing[:3]}, "
                                    f"unexpected {unexpected[:3]}): load it into the model class it was trained on.")
        for key, value in tensors.items():
            if value.shape != expected[key].shape:
                raise SpectrascopeError(f"{key} has shape {tuple(value.shape)} in {directory} but "
                                        f"{tuple(expected[key].shape)} in the model: wrong base model?")
        if saved_order is not None and saved_order != routed_modules(model):
            raise SpectrascopeError(f"the routers in {directory} order their modules differently from this model's "
                                    "blocks: load it into the model it was trained on.")
    except SpectrascopeError:
        unload_milora(model)                        # leave the model as it came
        raise
    model.load_state_dict(tensors, strict=False)
    return model
