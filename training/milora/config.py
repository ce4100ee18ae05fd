"""MiLoraConfig: the options of MiLoRA (one LoRA module per adapted projection, top-k of them per block, per prompt)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from analysis.types import SpectrascopeError
from training.moe_lora.config import ALL_LINEAR, MODULE_KINDS, JsonConfig


@dataclass
class MiLoraConfig(JsonConfig):
    """Options of one MiLoRA adapter (Zhang et al. 2024, "MiLoRA: Efficient Mixture of Low-Rank Adaptation").

    Every adapted projection of a block (q, k, v, o, MLP: `target_modules`) gets one LoRA module of rank r; the
    block's modules are its experts. One router per block reads the block's input hidden states mean-pooled over
    the prompt's real tokens and picks `top_k` modules once per sequence (a block with fewer adapted modules uses
    them all); generation reuses that choice for every new token.
    """

    WHAT = "MiLoRA"                         # errors name it (not a dataclass field: no annotation)

    r: int = 8
    lora_alpha: float = 16.0                # scaling s = lora_alpha / r
    dropout: float = 0.05                   # input dropout of each LoRA module
    target_modules: list[str] = field(default_factory=lambda: [ALL_LINEAR])  # kinds (MODULE_KINDS) or suffixes
    top_k: int = 2                          # modules active per block and sequence (capped at the block's count)
    load_balance_coef: float = 0.001        # coef * Σ_blocks M_l Σ_m f_m P_m over the batch's sequences; 0: off
    modules_to_save: list[str] = field(default_factory=list)  # extra trainable, saved modules, e.g. ["classifier"]

    def __post_init__(self) -> None:
        for name in ("target_modules", "modules_to_save"):
            value = getattr(self, name)
            setattr(self, name, [value] if isinstance(value, str) else list(value))
        self.validate()

    def validate(self) -> None:
        """Raise SpectrascopeError when the options do not describe a usable adapter."""
        if not isinstance(self.r, int) or self.r < 1:
            raise SpectrascopeError(f"MiLoRA rank r = {self.r!r}: the rank must be a whole number of at least 1.")
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise SpectrascopeError(f"MiLoRA top_k = {self.top_k!r}: pick at least 1 module per block.")
        if not 0.0 <= self.dropout < 1.0:
            raise SpectrascopeError(f"MiLoRA dropout = {self.dropout}: it must be in [0, 1).")
        if self.load_balance_coef < 0:
            raise SpectrascopeError(f"MiLoRA load_balance_coef = {self.load_balance_coef}: it must be 0 (off) or "
                                    "more.")
        if not self.target_modules:
            raise SpectrascopeError(f"MiLoRA target_modules is empty: name module kinds {sorted(MODULE_KINDS)}, "
                                    f"name suffixes, or '{ALL_LINEAR}'.")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r

    @classmethod
    def from_json(cls, path: str | Path) -> "MiLoraConfig":
        """Read a config from a .json file."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SpectrascopeError(f"could not read MiLoRA config {path} ({err}): it must be a JSON object.") \
                from None
        if not isinstance(data, dict):
            raise SpectrascopeError(f"MiLoRA config {path} holds {type(data).__name__}, not a JSON object.")
        return cls.from_dict(data)
