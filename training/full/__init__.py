"""Full fine-tuning: every weight of the model trains."""
import importlib

_EXPORTS = {"FullOptions": "config", "prepare_full": "model"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
