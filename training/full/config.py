"""Options of a full fine-tune (every weight trains; only the embeddings can be kept frozen)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FullOptions:
    """Full fine-tune options: `freeze_embeddings` keeps the (large, rarely useful to train) embeddings fixed."""

    freeze_embeddings: bool = False
