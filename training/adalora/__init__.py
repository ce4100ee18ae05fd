"""AdaLoRA fine-tuning through peft: options (config.py), injection and ranks (model.py), learned vs α-predicted
ranks (compare.py), the registry entry (method.py)."""
import importlib

# Imported on first use: the registry reads method.py without loading torch.
_EXPORTS = {"AdaLoraOptions": "config", "apply_adalora": "model", "load_adalora": "model",
            "learned_ranks": "model", "layer_totals": "model", "total_steps": "model",
            "learned_vs_predicted": "compare", "adalora_runs": "compare", "spearman": "compare"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
