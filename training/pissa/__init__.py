"""PiSSA: LoRA initialised from the principal singular triplets of each matrix (peft), saved as a LoRA on the base."""
import importlib

# Imported on first use: the registry reads method.py without loading torch.
_EXPORTS = {"PissaOptions": "config", "peft_lora_config": "model", "apply_pissa": "model",
            "record_initial": "model", "save_converted": "model", "lora_layers": "model"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
