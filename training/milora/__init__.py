"""MiLoRA (Zhang et al. 2024): each adapted projection's LoRA is an expert; top-k per block, routed once per prompt."""
import importlib

# Imported on first use: the registry reads method.py without loading torch.
_EXPORTS = {
    "MiLoraConfig": "config", "MiLoraLinear": "layer", "MiLoraRouter": "layer",
    **{name: "model" for name in (
        "CONFIG_NAME", "WEIGHTS_NAME", "adapter_state_dict", "find_blocks", "inject_milora", "load_balance_loss",
        "load_milora", "milora_layers", "milora_routers", "save_milora", "unload_milora")},
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
