"""CorDA's own options: which end of the context-weighted spectrum the adapter takes, and the calibration size."""
from __future__ import annotations

from dataclasses import dataclass

CORDA_METHODS = ("ipm", "kpm")


@dataclass
class CordaOptions:
    """`corda_method`: "ipm" (instruction-previewed: the adapter holds the r largest triplets of W·C, fastest to
    fit the task; peft's default, kept here) or "kpm" (knowledge-preserved: the r smallest, the principal part that
    carries pre-trained knowledge stays frozen). `calibration_rows`: training rows run through the model to build
    each input covariance C (one row per forward pass)."""

    corda_method: str = "ipm"
    calibration_rows: int = 256

    def __post_init__(self) -> None:
        if self.corda_method not in CORDA_METHODS:
            raise ValueError(f"corda_method must be ipm or kpm, got {self.corda_method!r}")
        if isinstance(self.calibration_rows, bool) or not isinstance(self.calibration_rows, int) \
                or self.calibration_rows < 1:
            raise ValueError(f"calibration_rows must be a positive integer, got {self.calibration_rows!r}")
