"""MoE-LoRA (MoLA / AlphaLoRA style): per-block routed LoRA experts, with config, layer and model roles as in peft."""
import importlib

# Imported on first use: the registry reads method.py without loading torch.
_EXPORTS = {
    "ALL_LINEAR": "config", "MODULE_KINDS": "config", "MoELoraConfig": "config", "MoELoraLinear": "layer",
    **{name: "model" for name in (
        "CONFIG_NAME", "WEIGHTS_NAME", "adapter_state_dict", "inject_moe_lora", "load_balance_loss", "load_moe_lora",
        "merged_expert_weights", "moe_lora_layers", "print_trainable_parameters", "routing_mask",
        "routing_weighted_delta", "save_moe_lora", "trainable_parameter_count", "unload_moe_lora")},
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
