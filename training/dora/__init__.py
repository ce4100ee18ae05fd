"""DoRA: weight-decomposed LoRA (magnitude vector + LoRA direction) through peft's use_dora."""
import importlib

# Imported on first use: the registry reads method.py without loading torch.
_EXPORTS = {"apply_dora": "model"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
