"""DoRA: weight-decomposed LoRA (magnitude vector + LoRA direction) through peft's use_dora."""
from training.lazy import lazy_exports

_EXPORTS = {"apply_dora": "model"}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
