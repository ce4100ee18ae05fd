"""CorDA: context-oriented decomposition adaptation (peft), calibrated on the task's training rows."""
from training.lazy import lazy_exports

_EXPORTS = {"CordaOptions": "config", "apply_corda": "model", "calibration_batches": "model"}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
