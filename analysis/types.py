"""Shared types: a named weight matrix's metadata and the user-facing error raised on bad input."""
from __future__ import annotations

from dataclasses import dataclass, field


class SpectrascopeError(Exception):
    """Bad input or an unusable model: the message says what was wrong and what to do (no traceback)."""


class SourceError(SpectrascopeError):
    """A model source could not be opened or read."""


@dataclass(frozen=True)
class MatrixInfo:
    """One 2-D weight matrix as the engine sees it (shape is (rows, cols) = (out, in) after any transpose)."""

    name: str                 # full tensor name as in the checkpoint, e.g. "encoder.layer.0.attention.self.query.weight"
    layer: int | None         # transformer block index, None for embeddings / head / unknown
    module: str               # q, k, v, o, gate, up, down, fc_in, fc_out, embedding, head, other
    rows: int
    cols: int
    dtype: str = "float32"    # storage dtype before upcasting
    notes: tuple[str, ...] = field(default_factory=tuple)  # e.g. ("merged LoRA",), ("transposed Conv1D",)
