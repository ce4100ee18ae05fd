"""MoELoraConfig: the options of the MoE-LoRA method (experts and top-k per layer, rank, targets, balancing)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from analysis.types import SpectrascopeError

# Module kinds a user may name in `target_modules`, as the local name inside a block (the part of the module
# name after "<blocks>.<index>."). Anything that is not a kind is matched as a name suffix.
#   BERT:  attention.self.{query,key,value}, attention.output.dense, intermediate.dense, output.dense
#   LLaMA: self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj
#   GPT-2: attn.c_attn (fused q,k,v), attn.c_proj, mlp.c_fc, mlp.c_proj   (Conv1D, weight stored (in, out))
MODULE_KINDS: dict[str, tuple[str, ...]] = {
    "q": ("attention.self.query", "self_attn.q_proj"),
    "k": ("attention.self.key", "self_attn.k_proj"),
    "v": ("attention.self.value", "self_attn.v_proj"),
    "qkv": ("attn.c_attn",),
    "o": ("attention.output.dense", "self_attn.o_proj", "attn.c_proj"),
    "gate": ("mlp.gate_proj",),
    "up": ("intermediate.dense", "mlp.up_proj", "mlp.c_fc"),
    "down": ("output.dense", "mlp.down_proj", "mlp.c_proj"),
}
# token: every token picks its experts; prompt: one choice per sequence from the mean-pooled prompt, reused for the
# tokens generated after it (MiLoRA-style; layer.MoELoraLinear.route_prompt says when the cached choice resets).
ROUTINGS = ("token", "prompt")
ALL_LINEAR = "all-linear"  # every nn.Linear / GPT-2 Conv1D inside a numbered block (the default)


class JsonConfig:
    """to_dict / from_dict / to_json of an adapter config dataclass (MoE-LoRA's, MiLoRA's); WHAT names it in errors."""

    WHAT = "adapter"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpectrascopeError(f"unknown {cls.WHAT} option(s) {unknown}; known options: {sorted(known)}.")
        return cls(**data)

    def to_json(self, path: str | Path | None = None) -> str:
        """The config as JSON text; also written to `path` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text


@dataclass
class MoELoraConfig(JsonConfig):
    """Options of one MoE-LoRA adapter; list entries are per transformer block, index 0 = first block.

    A block with 0 experts is left untouched. A block with 1 expert is plain LoRA: no router, top-k 1.
    """

    WHAT = "MoE-LoRA"                         # errors name it (not a dataclass field: no annotation)

    experts_per_layer: list[int]
    top_k: list[int] | None = None          # None: 2 per block, 1 where a block has a single expert
    r: int = 8
    lora_alpha: float = 16.0                # scaling s = lora_alpha / r
    dropout: float = 0.05                   # expert input, one mask per expert (the router sees the clean x)
    target_modules: list[str] = field(default_factory=lambda: [ALL_LINEAR])  # kinds (MODULE_KINDS) or suffixes
    load_balance_coef: float = 0.001        # aux loss = coef * Σ over blocks of L_l (one term per block, MoLA);
    #                                         0 disables it, as the published MoLA / AlphaLoRA scripts ran
    modules_to_save: list[str] = field(default_factory=list)  # extra trainable, saved modules, e.g. ["classifier"]
    routing: str = "token"                  # token: each token picks its experts; prompt: once per sequence (MiLoRA)

    def __post_init__(self) -> None:
        self.experts_per_layer = [int(n) for n in self.experts_per_layer]
        if self.top_k is None:
            self.top_k = [min(2, n) for n in self.experts_per_layer]
        self.top_k = [int(k) for k in self.top_k]
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        if isinstance(self.modules_to_save, str):
            self.modules_to_save = [self.modules_to_save]
        self.target_modules = list(self.target_modules)
        self.modules_to_save = list(self.modules_to_save)
        self.validate()

    def validate(self) -> None:
        """Raise SpectrascopeError when the options do not describe a usable adapter."""
        n, k = self.experts_per_layer, self.top_k
        if not n:
            raise SpectrascopeError("experts_per_layer is empty: give one expert count per transformer block.")
        if len(k) != len(n):
            raise SpectrascopeError(f"top_k has {len(k)} entries but experts_per_layer has {len(n)}: "
                                    "give one top-k per block.")
        for layer, (n_l, k_l) in enumerate(zip(n, k)):
            if n_l < 0:
                raise SpectrascopeError(f"block {layer} has {n_l} experts: expert counts must be 0 or more.")
            if n_l > 0 and not 1 <= k_l <= n_l:
                raise SpectrascopeError(f"block {layer} has top-k {k_l} with {n_l} experts: "
                                        "top-k must be between 1 and the number of experts.")
        if sum(n) == 0:
            raise SpectrascopeError("every block has 0 experts: nothing would be trained.")
        if self.r < 1:
            raise SpectrascopeError(f"rank r = {self.r}: the rank must be at least 1.")
        if not 0.0 <= self.dropout < 1.0:
            raise SpectrascopeError(f"dropout = {self.dropout}: it must be in [0, 1).")
        if self.load_balance_coef < 0:
            raise SpectrascopeError(f"load_balance_coef = {self.load_balance_coef}: it must be 0 (off) or more.")
        if self.routing not in ROUTINGS:
            raise SpectrascopeError(f"routing {self.routing!r}: use one of {', '.join(ROUTINGS)}")
        if not self.target_modules:
            raise SpectrascopeError(f"target_modules is empty: name module kinds {sorted(MODULE_KINDS)}, "
                                    f"name suffixes, or '{ALL_LINEAR}'.")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r

    # -- allocation and JSON -------------------------------------------------------------------------------

    @classmethod
    def from_allocation(cls, allocation: dict | str | Path, **overrides: Any) -> "MoELoraConfig":
        """Build a config from an allocation JSON ({"experts": [...], "top_k": [...], ...}) dict or file path.

        Other keys of the allocation (method, budget, scores ...) are ignored; `overrides` set the other options.
        """
        if not isinstance(allocation, dict):
            allocation = _read_json(Path(allocation), "allocation")
        if "experts" not in allocation:
            raise SpectrascopeError("the allocation has no 'experts' list: expected "
                                    '{"experts": [...], "top_k": [...]} as written by `python -m analysis allocate`.')
        return cls(experts_per_layer=list(allocation["experts"]), top_k=allocation.get("top_k"), **overrides)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "MoELoraConfig":
        """Read a config from JSON text or from a .json file path."""
        if isinstance(text_or_path, Path) or not str(text_or_path).lstrip().startswith("{"):
            return cls.from_dict(_read_json(Path(text_or_path), "MoE-LoRA config"))
        try:
            return cls.from_dict(json.loads(text_or_path))
        except json.JSONDecodeError as err:
            raise SpectrascopeError(f"the MoE-LoRA config is not valid JSON ({err}).") from None


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SpectrascopeError(f"{what} file {path} does not exist: check the path.") from None
    except (OSError, json.JSONDecodeError) as err:
        raise SpectrascopeError(f"could not read {what} file {path} ({err}): it must be a JSON object.") from None
    if not isinstance(data, dict):
        raise SpectrascopeError(f"{what} file {path} holds {type(data).__name__}, not a JSON object.")
    return data
