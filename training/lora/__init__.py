"""LoRA fine-tuning through peft: options (config.py), injection / reloading (model.py), the registry entry."""
from training.lazy import lazy_exports

_EXPORTS = {"LoraOptions": "config", "default_target_modules": "config", "apply_lora": "model",
            "load_lora": "model", "resolve_targets": "model"}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
