"""LoRA fine-tuning through peft: options (config.py) and injection / reloading (model.py)."""
from training.lora.config import LoraOptions, default_target_modules
from training.lora.model import apply_lora, load_lora

__all__ = ["LoraOptions", "default_target_modules", "apply_lora", "load_lora"]
