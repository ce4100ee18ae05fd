"""Minor-component LoRA (MiLoRA, Wang et al. 2024): adapters from each matrix's r smallest singular triplets."""
from training.lazy import lazy_exports

_EXPORTS = {"apply_minor": "model", "minor_init": "model"}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
