"""Full fine-tuning: every weight of the model trains."""
from training.lazy import lazy_exports

_EXPORTS = {"FullOptions": "config", "prepare_full": "model"}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
