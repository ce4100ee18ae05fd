"""Full fine-tuning: every weight of the model trains."""
from training.full.config import FullOptions
from training.full.model import prepare_full

__all__ = ["FullOptions", "prepare_full"]
