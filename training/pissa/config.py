"""PiSSA's own option: exact SVD, or peft's randomised SVD with a number of subspace iterations (large models)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PissaOptions:
    """`niter` None: an exact SVD of every adapted matrix (peft "pissa"); an integer K: peft's randomised
    low-rank SVD with K subspace iterations ("pissa_niter_K"), minutes faster on billion-parameter models."""

    niter: int | None = None

    def __post_init__(self) -> None:
        if self.niter is not None and (isinstance(self.niter, bool) or not isinstance(self.niter, int)
                                       or self.niter < 1):
            raise ValueError(f"niter must be a positive integer (randomised SVD iterations) or null (exact SVD), "
                             f"got {self.niter!r}")

    @property
    def init_lora_weights(self) -> str:
        """peft's init_lora_weights value."""
        return "pissa" if self.niter is None else f"pissa_niter_{self.niter}"
