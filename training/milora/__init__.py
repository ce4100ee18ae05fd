"""MiLoRA (Zhang et al. 2024): each adapted projection's LoRA is an expert; top-k per block, routed once per prompt."""
from training.lazy import lazy_exports

_EXPORTS = {
    "MiLoraConfig": "config", "MiLoraLinear": "layer", "MiLoraRouter": "layer",
    **{name: "model" for name in (
        "CONFIG_NAME", "WEIGHTS_NAME", "adapter_state_dict", "find_blocks", "inject_milora", "load_balance_loss",
        "load_milora", "milora_layers", "milora_routers", "save_milora", "unload_milora")},
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
