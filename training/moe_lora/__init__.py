"""MoE-LoRA (MoLA / AlphaLoRA style): per-block routed LoRA experts, with config, layer and model roles as in peft."""
from training.lazy import lazy_exports

_EXPORTS = {
    "ALL_LINEAR": "config", "MODULE_KINDS": "config", "MoELoraConfig": "config", "MoELoraLinear": "layer",
    **{name: "model" for name in (
        "CONFIG_NAME", "WEIGHTS_NAME", "adapter_state_dict", "inject_moe_lora", "load_balance_loss", "load_moe_lora",
        "merged_expert_weights", "moe_lora_layers", "print_trainable_parameters", "routing_mask",
        "routing_weighted_delta", "save_moe_lora", "trainable_parameter_count", "unload_moe_lora")},
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
