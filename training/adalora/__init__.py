"""AdaLoRA fine-tuning through peft: options (config.py), injection and ranks (model.py), learned vs α-predicted
ranks (compare.py), the registry entry (method.py)."""
from training.lazy import lazy_exports

_EXPORTS = {"AdaLoraOptions": "config", "apply_adalora": "model", "load_adalora": "model",
            "learned_ranks": "model", "layer_totals": "model", "total_steps": "model",
            "learned_vs_predicted": "compare", "adalora_runs": "compare", "spearman": "compare"}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
