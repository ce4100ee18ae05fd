"""The method registry: each `training/<method>/method.py` defines one `Method`; everything else looks it up here."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from analysis.types import SpectrascopeError

# The method folders, in the order the CLI, the Train page and the tables list them. A new method is one folder
# with a method.py defining METHOD, plus its name here.
FOLDERS = ("lora", "dora", "pissa", "minor", "corda", "adalora", "moe_lora", "milora", "full")
# TrainConfig fields that only some methods read; a method lists the ones it takes in Method.takes. Giving one to
# a method that does not take it (a value other than the default) is an error, not silently ignored.
METHOD_FIELDS = ("rank", "alpha", "dropout", "target_modules", "experts", "top_k", "load_balance_coef",
                 "routing", "allocation", "allocation_file")


@dataclass(frozen=True)
class Arm:
    """One arm of a study: a method with a fixed setting, and the arm it is compared with (paired)."""

    key: str                                 # the study's name for it: "lora", "moe_alphalora", …
    label: str                               # the comparison table's name
    method: str
    allocation: str | None = None            # uniform | mola | alphalora: the study makes this allocation
    reference: str | None = None             # the arm it is compared with; None: a reference of the others
    matched: bool = False                    # LoRA at the rank whose parameters match the MoE-LoRA budget


@dataclass(frozen=True)
class Method:
    """What the trainer, the CLI, the study, the pages and the run index know about one fine-tuning method.

    The callables take the run's TrainConfig (`cfg`) and a transformers model; they import their own heavy
    modules so that reading the registry stays cheap.
    """

    name: str                                # config value and CLI choice
    label: str                               # shown in tables and on pages
    summary: str                             # one line for help texts
    default_lr: float                        # its own sweep on the default model (docs/methods_intruders.md)
    artifact_dir: str                        # folder under <run>/artifacts
    attach: Callable[..., Any]               # (cfg, model, ctx) -> model ready to train; ctx: AttachContext
    save: Callable[..., Any]                 # (cfg, model, folder) -> None
    load: Callable[..., Any]                 # (cfg, base model, folder) -> model with the artifacts
    takes: tuple[str, ...] = ()              # METHOD_FIELDS this method reads
    options: type | None = None              # dataclass of its own options (TrainConfig.method_options)
    allocation: str | None = None            # "ranks" (LoRA rank_pattern) | "experts" (MoE-LoRA) | None
    weights: str = "adapter"                 # spectra views: "adapter" (peft folder on the base: LoRA-shaped,
    #                                          mitigation writes a checkpoint), "moe" (merged per expert), "model" (a
    #                                          whole model folder), "merged" (no B·A: training/merged.py loads and
    #                                          merges the run in memory; DoRA, AdaLoRA)
    check: Callable[..., Any] | None = None  # (cfg, hf_config) -> None; raises SpectrascopeError
    extra_loss: Callable[..., Any] | None = None   # (model) -> tensor added to the task loss
    on_step: Callable[..., Any] | None = None      # (model, step, total) after each optimizer step
    report: Callable[..., Any] | None = None       # (model) -> dict of extra result keys
    describe: Callable[[dict], str] | None = None  # (run config) -> short text of its setting ('rank 8')
    arms: tuple[Arm, ...] = ()               # the study arms it offers
    step_seconds: float = 0.5                # rough seconds per step of the default model on the 2-core CPU
    #                                          (LoRA, MoE-LoRA, full: from the measured study, docs/study_default.md)
    needs_task_data: bool = False            # attach reads the training rows (a calibration pass)
    loss_note: str | None = None             # what its training loss adds to the task loss (the Train page says so)
    unit: str = "expert"                     # weights "moe": what one routed B·A is called ("module" in MiLoRA)

    def option_values(self, given: dict | None) -> Any:
        """The method's own options from TrainConfig.method_options (defaults filled); unknown keys are an error."""
        given = dict(given or {})
        if self.options is None:
            if given:
                raise SpectrascopeError(f"method {self.name} takes no method_options, got {sorted(given)}")
            return None
        known = {f.name for f in fields(self.options)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise SpectrascopeError(f"method {self.name} has no option(s) {unknown}; its options: {sorted(known)}")
        try:
            return self.options(**given)
        except (TypeError, ValueError) as exc:
            raise SpectrascopeError(f"method {self.name}: {exc}") from None


@dataclass
class AttachContext:
    """What attach may need beyond the config and the model: decoder or encoder, and the task's training data."""

    decoder: bool
    task: Any = None
    rows: dict = field(default_factory=dict)             # split -> rows of the run
    tokenizer: Any = None
    device: Any = None

    @property
    def peft_task_type(self) -> str:
        return "CAUSAL_LM" if self.decoder else "SEQ_CLS"


_REGISTRY: dict[str, Method] = {}


def _load() -> dict[str, Method]:
    if not _REGISTRY:
        for folder in FOLDERS:
            try:
                module = importlib.import_module(f"training.{folder}.method")
            except ModuleNotFoundError as exc:
                if exc.name != f"training.{folder}.method" and exc.name != f"training.{folder}":
                    raise
                continue                     # a method folder not written yet
            method = module.METHOD
            _REGISTRY[method.name] = method
    return _REGISTRY


def names() -> list[str]:
    """The registered method names, in FOLDERS order."""
    return list(_load())


def all_methods() -> list[Method]:
    return list(_load().values())


def get(name: str | None) -> Method:
    """The method called `name`; SpectrascopeError naming the choices when there is none."""
    methods = _load()
    if name not in methods:
        raise SpectrascopeError(f"unknown method {name!r}: use one of {', '.join(methods)}")
    return methods[name]


def label(name: str | None) -> str:
    """The method's display label, or the name itself for a method not registered (an old run)."""
    return _load()[name].label if name in _load() else str(name)


def study_arms() -> dict[str, Arm]:
    """Every method's study arms by key, in registry order."""
    return {arm.key: arm for method in all_methods() for arm in method.arms}


def check_fields(method: Method, values: dict, defaults: dict) -> None:
    """A method-specific option given to a method that does not take it (not at its default) is an error."""
    for name in METHOD_FIELDS:
        if name in values and name not in method.takes and values[name] != defaults.get(name):
            users = [m.name for m in all_methods() if name in m.takes]
            raise SpectrascopeError(f"method {method.name} does not take option {name!r}"
                                    + (f" (used by {', '.join(users)})" if users else "") + ": leave it out")


def config_for(name: str, config: dict) -> dict:
    """`config` for method `name` without the method-specific options it does not take (a study's or a page's
    shared options given to every arm)."""
    method = get(name)
    out = {k: v for k, v in config.items() if k not in METHOD_FIELDS or k in method.takes}
    if method.options is None:
        out.pop("method_options", None)
    return {**out, "method": name}
