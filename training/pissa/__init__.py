"""PiSSA: LoRA initialised from the principal singular triplets of each matrix (peft), saved as a LoRA on the base."""
from training.lazy import lazy_exports

_EXPORTS = {"PissaOptions": "config", "peft_lora_config": "model", "apply_pissa": "model",
            "record_initial": "model", "save_converted": "model", "lora_layers": "model"}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
