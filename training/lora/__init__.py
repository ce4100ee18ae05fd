"""LoRA fine-tuning through peft: options (config.py), injection / reloading (model.py), the registry entry."""
import importlib

# Imported on first use: the registry reads method.py without loading torch.
_EXPORTS = {"LoraOptions": "config", "default_target_modules": "config", "apply_lora": "model",
            "load_lora": "model", "resolve_targets": "model"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
