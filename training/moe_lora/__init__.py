"""MoE-LoRA (MoLA / AlphaLoRA style): per-block routed LoRA experts, with config, layer and model roles as in peft."""
from .config import ALL_LINEAR, MODULE_KINDS, MoELoraConfig
from .layer import MoELoraLinear
from .model import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    adapter_state_dict,
    inject_moe_lora,
    load_balance_loss,
    load_moe_lora,
    merged_expert_weights,
    moe_lora_layers,
    print_trainable_parameters,
    routing_mask,
    routing_weighted_delta,
    save_moe_lora,
    trainable_parameter_count,
    unload_moe_lora,
)

__all__ = [
    "ALL_LINEAR", "CONFIG_NAME", "MODULE_KINDS", "MoELoraConfig", "MoELoraLinear", "WEIGHTS_NAME",
    "adapter_state_dict", "inject_moe_lora", "load_balance_loss", "load_moe_lora", "merged_expert_weights",
    "moe_lora_layers", "print_trainable_parameters", "routing_mask", "routing_weighted_delta", "save_moe_lora",
    "trainable_parameter_count", "unload_moe_lora",
]
