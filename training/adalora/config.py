"""AdaLoRA options as plain values, their schedule scaled to a run's total steps, and the peft `AdaLoraConfig`."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from analysis.types import SpectrascopeError

# Where the defaults come from. The AdaLoRA paper's GLUE scripts (QingruZhang/AdaLoRA, NLU/scripts/
# run_debertav3_{sst2,cola,rte}.sh, batch 32) set the schedule in steps for runs of 3,900-50,500 steps:
#   SST-2: init_warmup 6000, final_warmup 22000, mask_interval 100 of ≈ 50,500 steps (24 epochs)
#   CoLA:  init_warmup  800, final_warmup  3500, mask_interval  10 of ≈  6,700 steps (25 epochs)
#   RTE:   init_warmup  600, final_warmup  1800, mask_interval   1 of ≈  3,900 steps (50 epochs)
# i.e. tinit ≈ 12-15 % and tfinal ≈ 44-52 % of the run, a mask every ≈ 1/500 of it; beta1 = beta2 = 0.85 and
# reg_orth_coef 0.1 (0.3 for RTE) everywhere. Our runs are 60-125 steps, so the schedule is kept as those shares of
# the run's own total steps (a fixed step count would leave no budgeting phase in a short run).
TINIT_SHARE = 0.12            # of the total steps: pre-training the triplets before any pruning
TFINAL_SHARE = 0.45           # of the total steps: fine-tuning at the final ranks after the last pruning
STEPS_PER_MASK = 500          # deltaT = total // 500 (≥ 1): one budget step per step on CPU-length runs
INT_FIELDS = ("init_r", "target_r", "tinit", "tfinal", "deltaT")


@dataclass
class AdaLoraOptions:
    """AdaLoRA's own options (TrainConfig.method_options; `--set name=value` on the CLI)."""

    init_r: int = field(default=12, metadata={"help": "rank every adapted matrix starts from (peft default 12)"})
    target_r: int | None = field(default=None, metadata={
        "help": "average rank left after pruning; empty: the run's rank (8). Budget: target_r × matrices"})
    tinit: int | None = field(default=None, metadata={
        "help": "steps before pruning starts; empty: 12 % of the run (the paper's GLUE scripts: 12-15 %)"})
    tfinal: int | None = field(default=None, metadata={
        "help": "steps at the final ranks after the last pruning; empty: 45 % of the run (paper: 44-52 %)"})
    deltaT: int | None = field(default=None, metadata={
        "help": "steps between two budget allocations; empty: total steps // 500, at least 1"})
    beta1: float = field(default=0.85, metadata={"help": "EMA of the sensitivity (paper and peft: 0.85)"})
    beta2: float = field(default=0.85, metadata={"help": "EMA of the uncertainty (paper and peft: 0.85)"})
    orth_reg_weight: float = field(default=0.1, metadata={
        "help": "weight of the orthogonality penalty on P and Q (paper's scripts 0.1; peft's default 0.5)"})

    def __post_init__(self) -> None:
        for name in INT_FIELDS:                       # the Train page's inputs for empty defaults give text
            value = getattr(self, name)
            if value is None or value == "":
                setattr(self, name, None)
                continue
            if isinstance(value, bool) or not _is_whole(value):
                raise SpectrascopeError(f"AdaLoRA option {name} must be a whole number, got {value!r}")
            setattr(self, name, int(float(value)))
        for name in ("beta1", "beta2", "orth_reg_weight"):
            value = getattr(self, name)
            try:
                setattr(self, name, float(value))
            except (TypeError, ValueError):
                raise SpectrascopeError(f"AdaLoRA option {name} must be a number, got {value!r}") from None
        if self.init_r < 1:
            raise SpectrascopeError(f"AdaLoRA init_r must be at least 1, got {self.init_r}")
        if self.target_r is not None and self.target_r < 1:
            raise SpectrascopeError(f"AdaLoRA target_r must be at least 1, got {self.target_r}")
        for name in ("tinit", "tfinal"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise SpectrascopeError(f"AdaLoRA {name} must be 0 or more steps, got {getattr(self, name)}")
        if self.deltaT is not None and self.deltaT < 1:
            raise SpectrascopeError(f"AdaLoRA deltaT must be at least 1 step, got {self.deltaT}")
        for name in ("beta1", "beta2"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise SpectrascopeError(f"AdaLoRA {name} must be in (0, 1), got {getattr(self, name)}")
        if self.orth_reg_weight < 0:
            raise SpectrascopeError(f"AdaLoRA orth_reg_weight must be 0 or more, got {self.orth_reg_weight}")

    def target(self, rank: int) -> int:
        """The target average rank: target_r, or the run's rank; below init_r (peft prunes at least one triplet)."""
        target = int(self.target_r if self.target_r is not None else rank)
        if target >= self.init_r:
            source = "target_r" if self.target_r is not None else "the run's rank"
            raise SpectrascopeError(f"AdaLoRA's target rank ({target}, {source}) must be below init_r "
                                    f"({self.init_r}): raise init_r (e.g. --set init_r={max(12, 2 * target)}) or "
                                    "lower the target")
        return target

    def schedule(self, total: int) -> dict[str, int]:
        """tinit, tfinal, deltaT for a run of `total` optimizer steps (defaults as shares of it), checked to leave
        peft a budgeting phase (tinit < total − tfinal)."""
        total = int(total)
        if total < 1:
            raise SpectrascopeError(f"AdaLoRA needs at least one training step, got {total}")
        tinit = self.tinit if self.tinit is not None else round(TINIT_SHARE * total)
        tfinal = self.tfinal if self.tfinal is not None else round(TFINAL_SHARE * total)
        if self.tfinal is None:                        # defaults always leave a budgeting phase
            tfinal = max(0, min(tfinal, total - tinit - 1))
        if self.tinit is None:
            tinit = max(0, min(tinit, total - tfinal - 1))
        if tinit >= total - tfinal:
            raise SpectrascopeError(
                f"AdaLoRA's schedule leaves no steps to prune in: tinit ({tinit}) + tfinal ({tfinal}) must be below "
                f"the run's {total} steps; lower tinit / tfinal or train longer")
        delta = self.deltaT if self.deltaT is not None else max(1, total // STEPS_PER_MASK)
        return {"total_step": total, "tinit": int(tinit), "tfinal": int(tfinal), "deltaT": int(delta)}

    def to_peft(self, *, total: int, rank: int, task_type: str, target_modules: list[str], alpha: float | None,
                dropout: float):
        """The peft AdaLoraConfig. lora_alpha defaults to 2 × init_r: AdaLoRA scales by lora_alpha / init_r for
        the whole run, so this is LoRA's α = 2r scale (2) at every rank."""
        from peft import AdaLoraConfig

        return AdaLoraConfig(
            task_type=task_type, init_r=self.init_r, target_r=self.target(rank), beta1=self.beta1, beta2=self.beta2,
            orth_reg_weight=self.orth_reg_weight, lora_alpha=float(alpha if alpha is not None else 2 * self.init_r),
            lora_dropout=float(dropout), target_modules=list(target_modules), **self.schedule(total))


def option_names() -> list[str]:
    return [f.name for f in fields(AdaLoraOptions)]


def _is_whole(value) -> bool:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return number == number and number not in (float("inf"), float("-inf")) and number.is_integer()
