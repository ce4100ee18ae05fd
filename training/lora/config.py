"""LoRA options as plain values, turned into a peft `LoraConfig` (with per-layer rank/alpha patterns)."""
from __future__ import annotations

from dataclasses import dataclass, field

from analysis.types import SpectrascopeError

# Modules LoRA adapts by default, per `config.model_type`: attention projections, as in the LoRA paper.
# Architectures not listed fall back to peft's own table.
TARGET_MODULES: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
}


def default_target_modules(model_type: str) -> list[str]:
    """The module names LoRA adapts for `model_type` (e.g. bert → query, value; llama → q_proj, v_proj)."""
    if model_type in TARGET_MODULES:
        return list(TARGET_MODULES[model_type])
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_table

    if model_type in peft_table:
        return list(peft_table[model_type])
    raise SpectrascopeError(
        f"no default LoRA target modules for model type {model_type!r}: pass target_modules explicitly"
    )


@dataclass
class LoraOptions:
    """What a LoRA run adapts and how: rank r, scaling alpha/r, dropout, and optional per-module patterns."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] | None = None          # None → default_target_modules(model_type)
    rank_pattern: dict[str, int] = field(default_factory=dict)     # regex of module names → rank
    alpha_pattern: dict[str, float] = field(default_factory=dict)  # regex of module names → alpha

    def __post_init__(self) -> None:
        if int(self.r) < 1:
            raise SpectrascopeError(f"LoRA rank must be at least 1, got {self.r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise SpectrascopeError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        bad = {k: v for k, v in self.rank_pattern.items() if not isinstance(v, int) or v < 1}
        if bad:
            raise SpectrascopeError(f"rank_pattern ranks must be positive integers, got {bad}")

    @classmethod
    def from_allocation(cls, allocation: dict, **overrides) -> "LoraOptions":
        """Options from an allocation JSON (its "rank_pattern" / "alpha_pattern" / "target_modules" keys)."""
        if not isinstance(allocation, dict):
            raise SpectrascopeError("the allocation file must hold a JSON object")
        if not allocation.get("rank_pattern") and not allocation.get("alpha_pattern"):
            raise SpectrascopeError(
                "the allocation has no 'rank_pattern': export a LoRA rank allocation (python -m analysis allocate)"
            )
        values = {
            "rank_pattern": {str(k): v for k, v in (allocation.get("rank_pattern") or {}).items()},
            "alpha_pattern": {str(k): v for k, v in (allocation.get("alpha_pattern") or {}).items()},
        }
        for key in ("r", "alpha", "dropout", "target_modules"):
            if allocation.get(key) is not None:
                values[key] = allocation[key]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_peft(self, task_type: str, model_type: str):
        """The peft `LoraConfig` for a model of `model_type` and a peft task type ("SEQ_CLS" or "CAUSAL_LM")."""
        from peft import LoraConfig

        return LoraConfig(
            task_type=task_type,
            r=int(self.r),
            lora_alpha=float(self.alpha),
            lora_dropout=float(self.dropout),
            target_modules=list(self.target_modules or default_target_modules(model_type)),
            rank_pattern=dict(self.rank_pattern),
            alpha_pattern=dict(self.alpha_pattern),
        )
