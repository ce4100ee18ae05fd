"""Allocate LoRA experts and ranks across layers (AlphaLoRA, MoLA, uniform), count parameters, export peft patterns.

- AlphaLoRA: Qing et al., EMNLP 2024: share_l = α_l^β / Σ_j α_j^β, n_l* = T · share_l, rounded so Σ n_l = T.
- MoLA: Gao et al., "Higher Layers Need More LoRA Experts": presets such as "2468" give 2, 4, 6, 8 experts to four
  contiguous blocks of layers. See shared/reference/allocation.md.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

from analysis.types import MatrixInfo, SpectrascopeError

SCHEMA = "spectrascope.allocation/1"
DEFAULT_BETA = 2.5
DEFAULT_EXPERTS_PER_LAYER = 5      # default budget T = 5 × layers (160 for 32 layers, as in AlphaLoRA)
DEFAULT_RANK = 8
LINEAR_KINDS = ("q", "k", "v", "o", "gate", "up", "down", "fc_in", "fc_out")
# Published MoLA configurations by total budget on 32-layer models (Gao et al.).
MOLA_PUBLISHED = {160: ("5555", "8642", "8228", "2468", "2882"), 128: ("4444", "6532", "6226", "2356", "2662"),
                  256: ("8888",)}


# --- validation helpers
def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SpectrascopeError(message)


def _check_count(value: Any, what: str) -> int:
    _require(_is_int(value) and value >= 0, f"{what} must be a whole number ≥ 0, got {value!r}.")
    return value


def _check_beta(beta: Any) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
        raise SpectrascopeError(
            f"β (beta) must be a finite number ≥ 0, got {beta!r}; use 0 for uniform or the published 2.5.")
    return float(beta)


def _check_scores(scores: Any, n_layers: int | None = None) -> list[float]:
    if scores is None or isinstance(scores, (str, bytes)) or not isinstance(scores, Sequence) or len(scores) == 0:
        raise SpectrascopeError("layer scores must be a non-empty list of numbers, one per layer (e.g. 3.1,2.8,4.0).")
    _require(n_layers is None or len(scores) == n_layers,
             f"got {len(scores)} layer scores but the model has {n_layers} layers; give one score per layer.")
    out = []
    for i, s in enumerate(scores):
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise SpectrascopeError(
                f"score for layer {i} is {s!r}, not a finite number; give one finite score per layer.")
        if s <= 0:
            raise SpectrascopeError(
                f"score for layer {i} is {s!r}: AlphaLoRA scores are power-law exponents α (always > 1 for the "
                "heavy-tailed fits they come from), so a score ≤ 0 is invalid; check the scores.")
        out.append(float(s))
    return out


def _check_limits(n_layers: int, budget: Any, minimum: Any, maximum: Any, unit: str = "experts") -> None:
    _check_count(budget, f"the {unit} budget")
    _check_count(minimum, f"the per-layer minimum of {unit}")
    if maximum is not None:
        _check_count(maximum, f"the per-layer maximum of {unit}")
        _require(minimum <= maximum, f"the per-layer minimum ({minimum}) is larger than the maximum ({maximum}); "
                                     "lower the minimum or raise the maximum.")
    _require(budget >= n_layers * minimum, f"a budget of {budget} {unit} is smaller than {n_layers} layers × minimum "
             f"{minimum} = {n_layers * minimum}; raise the budget to at least that or lower the minimum.")
    _require(maximum is None or budget <= n_layers * maximum, f"a budget of {budget} {unit} is larger than "
             f"{n_layers} layers × maximum {maximum} = {n_layers * (maximum or 0)}; lower the budget or raise "
             "the maximum.")


# --- core rule
def alpha_shares(scores: Sequence[float], beta: float = DEFAULT_BETA) -> list[float]:
    """AlphaLoRA shares share_l = α_l^β / Σ_j α_j^β (computed in log space so large β cannot overflow)."""
    alphas = _check_scores(scores)
    beta = _check_beta(beta)
    logs = [math.log(a) for a in alphas]
    top = max(logs)
    w = [math.exp(beta * (x - top)) for x in logs]   # = (α_l / α_max)^β, the same ratios as α_l^β
    s = sum(w)
    return [x / s for x in w]


def _waterfill(logs: list[float], beta: float, extra: int, cap: int | None) -> list[float]:
    """Real ideals x_l = min(cap, λ·α_l^β) with Σ x_l = extra: cap layers over the cap, share the rest again."""
    ideal = [0.0] * len(logs)
    active = list(range(len(logs)))
    budget = extra
    while active:
        top = max(logs[i] for i in active)
        w = {i: math.exp(beta * (logs[i] - top)) for i in active}
        s = sum(w.values())
        over = [i for i in active if cap is not None and budget * w[i] / s >= cap]
        if not over:
            for i in active:
                ideal[i] = budget * w[i] / s
            break
        for i in over:
            ideal[i] = float(cap)
            budget -= cap
        over_set = set(over)
        active = [i for i in active if i not in over_set]
    return ideal


def _tie_slots(ideal: list[float], scores: list[float]) -> list[int]:
    """Tie-break positions: layer index, except that layers with exactly equal ideals are ordered by score.

    Equal ideals with different scores only happen when floating point merges nearly equal scores; ordering them by
    score keeps the guarantee α_i > α_j ⇒ n_i ≥ n_j. Equal scores keep "ties to the lower layer index".
    """
    groups: dict[float, list[int]] = {}
    for i, x in enumerate(ideal):
        groups.setdefault(x, []).append(i)
    slot = list(range(len(ideal)))
    for members in groups.values():
        if len(members) > 1:
            for pos, i in zip(members, sorted(members, key=lambda j: (-scores[j], j))):
                slot[i] = pos
    return slot


def largest_remainder(ideal: Sequence[float], total: int, scores: Sequence[float] | None = None,
                      cap: int | None = None) -> list[int]:
    """Integers summing to `total`: floor every ideal, then one more unit to the largest fractional parts.

    Ties go to the lower layer index (or, for exactly equal ideals, to the larger score). No layer exceeds `cap`.
    """
    ideal = list(ideal)
    n = len(ideal)
    scores = list(scores) if scores is not None else [1.0] * n
    out = [math.floor(x) for x in ideal]
    if cap is not None:
        out = [min(v, cap) for v in out]
    frac = [x - v for x, v in zip(ideal, out)]
    slot = _tie_slots(ideal, scores)
    order = sorted(range(n), key=lambda i: (-frac[i], slot[i]))
    left = total - sum(out)              # 0 ≤ left < number of positive fractions (Σ ideal = total)
    eligible = [i for i in order if cap is None or out[i] < cap]
    if not 0 <= left <= len(eligible):
        raise SpectrascopeError(f"cannot place {total} units under a per-layer cap of {cap}; lower the budget.")
    for i in eligible[:left]:
        out[i] += 1
    return out


def alphalora(scores: Sequence[float], budget: int, beta: float = DEFAULT_BETA, min_experts: int = 1,
              max_experts: int | None = None) -> list[int]:
    """AlphaLoRA (Qing et al., EMNLP 2024): n_l ≈ T·α_l^β/Σα^β, each layer in [min, max], Σ n_l = T exactly.

    The minimum and maximum are true bounds filled by water-filling: the ideal n_l* = T·share_l stands for every
    layer it leaves inside [min, max]; only a layer whose ideal falls below the minimum is lifted to it (or one
    above the maximum is capped), and the rest of the budget is shared again by α^β among the other layers. So
    with no layer below the floor the allocation IS the paper's rule (the default minimum 1 changes nothing
    then); a layer gets 0 experts, and no adapter, only with min 0. The ideals are rounded by largest remainder
    (floor, leftover units to the largest fractional parts, ties to the lower layer index). β = 0 is uniform.
    """
    return _alpha_integers(scores, budget, beta, min_experts, max_experts, "experts")


def _bounded_ideals(logs: list[float], beta: float, total: int, lo: int, hi: int | None) -> list[float]:
    """Real ideals x_l = clamp(λ·α_l^β, lo, hi) with Σ x_l = total (water-filling from both sides).

    Share under the cap (_waterfill); any layer below the floor is fixed at it and the others are shared again.
    Fixing floors only takes budget from the rest, so λ only falls and a fixed layer never needs lifting off
    its floor: at most L rounds.
    """
    n = len(logs)
    ideal = [float(lo)] * n
    active = list(range(n))
    while active:
        shared = _waterfill([logs[i] for i in active], beta, total - lo * (n - len(active)), hi)
        low = {i for i, x in zip(active, shared) if x < lo}
        if not low:
            for i, x in zip(active, shared):
                ideal[i] = x
            break
        active = [i for i in active if i not in low]
    return ideal


def _alpha_integers(scores, total, beta, lo, hi, unit) -> list[int]:
    alphas = _check_scores(scores)
    beta = _check_beta(beta)
    _check_limits(len(alphas), total, lo, hi, unit)
    ideal = _bounded_ideals([math.log(a) for a in alphas], beta, total, lo, hi)
    ties = alphas if beta > 0 else None      # β = 0: scores play no part, remainder to the lowest indices
    return largest_remainder(ideal, total, ties, hi)


def uniform(n_layers: int, budget: int, min_experts: int = 0, max_experts: int | None = None) -> list[int]:
    """Uniform allocation: ⌊T/L⌋ experts per layer, the remainder to the lowest layer indices."""
    _require(_is_int(n_layers) and n_layers >= 1,
             f"the number of layers must be a whole number ≥ 1, got {n_layers!r}.")
    _check_limits(n_layers, budget, min_experts, max_experts)
    q, r = divmod(budget, n_layers)
    return [q + 1 if i < r else q for i in range(n_layers)]


def top_k(experts: Sequence[int]) -> list[int]:
    """Experts routed per token: 2, or 1 where a layer has a single expert, 0 where it has none."""
    return [min(2, n) for n in experts]


# --- MoLA and manual
def mola_blocks(n_layers: int, n_blocks: int) -> list[int]:
    """Sizes of `n_blocks` near-equal contiguous blocks; if L is not divisible the first blocks get one more layer."""
    q, r = divmod(n_layers, n_blocks)
    return [q + 1 if b < r else q for b in range(n_blocks)]


def parse_mola(strategy: str) -> list[int]:
    """Digits of a MoLA pattern: "mola:2468" → [2, 4, 6, 8] (one digit, 0–9 experts, per block)."""
    if not isinstance(strategy, str) or not strategy.startswith("mola:"):
        raise SpectrascopeError(f"{strategy!r} is not a MoLA preset; write it as mola:DIGITS, e.g. mola:2468.")
    pattern = strategy[len("mola:"):]
    if not re.fullmatch(r"[0-9]+", pattern):
        shown = pattern or "(empty)"
        raise SpectrascopeError(
            f"malformed MoLA pattern {shown!r} in {strategy!r}: use one digit (experts per block) per block, "
            "e.g. mola:2468 or mola:8642.")
    return [int(c) for c in pattern]


def mola(strategy: str, n_layers: int) -> list[int]:
    """MoLA preset (Gao et al.): d digits → d near-equal contiguous blocks of layers with those expert counts.

    "mola:2468" on 32 layers is [2]*8 + [4]*8 + [6]*8 + [8]*8 (total 160). When L is not divisible by d the first
    blocks get one extra layer each (6 layers: blocks of 2, 2, 1, 1 → [2, 2, 4, 4, 6, 8]). The total depends on depth.
    """
    digits = parse_mola(strategy)
    _require(_is_int(n_layers) and n_layers >= 1,
             f"the number of layers must be a whole number ≥ 1, got {n_layers!r}.")
    _require(len(digits) <= n_layers, f"{strategy} has {len(digits)} blocks but the model has only {n_layers} "
                                      f"layers; use at most {n_layers} digits.")
    out: list[int] = []
    for digit, size in zip(digits, mola_blocks(n_layers, len(digits))):
        out += [digit] * size
    return out


def manual(counts: Any, n_layers: int | None = None) -> list[int]:
    """Hand-edited expert counts: validated as non-negative whole numbers, one per layer."""
    if counts is None or isinstance(counts, (str, bytes)) or not isinstance(counts, Sequence) or len(counts) == 0:
        raise SpectrascopeError("expert counts must be a non-empty list of whole numbers, one per layer.")
    _require(n_layers is None or len(counts) == n_layers,
             f"got {len(counts)} expert counts but the model has {n_layers} layers; give one count per layer.")
    for i, c in enumerate(counts):
        if not _is_int(c) or c < 0:
            raise SpectrascopeError(f"expert count for layer {i} is {c!r}; counts must be whole numbers ≥ 0.")
    return list(counts)


# --- Allocation object
@dataclass
class Allocation:
    """One allocation of experts per layer (and optionally ranks), serialisable as spectrascope.allocation/1 JSON."""

    strategy: str
    experts: list[int]
    top_k: list[int]
    params: dict = field(default_factory=dict)
    scores: list[float] | None = None
    model: str | None = None
    trainable_params: dict | None = None      # ParamCount.to_dict()
    ranks: list[int] | None = None            # α-driven per-layer LoRA ranks
    rank_params: dict | None = None           # {"budget", "beta", "min", "max", "alpha_ratio"}
    lora_config: dict | None = None           # peft LoraConfig(**lora_config) kwargs incl. rank_pattern/alpha_pattern

    @property
    def total(self) -> int:
        return sum(self.experts)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"schema": SCHEMA, "model": self.model, "scores": self.scores, "strategy": self.strategy,
                             "params": self.params, "experts": list(self.experts), "top_k": list(self.top_k),
                             "total": self.total}
        if self.trainable_params is not None:
            d["trainable_params"] = self.trainable_params
        if self.ranks is not None:
            d["ranks"] = list(self.ranks)
            d["rank_params"] = self.rank_params
        if self.lora_config is not None:
            d["rank_pattern"] = self.lora_config.get("rank_pattern", {})
            d["alpha_pattern"] = self.lora_config.get("alpha_pattern", {})
            d["lora_config"] = self.lora_config
        return d


def allocate(strategy: str = "alphalora", *, scores: Sequence[float] | None = None, n_layers: int | None = None,
             budget: int | None = None, beta: float = DEFAULT_BETA, min_experts: int = 1,
             max_experts: int | None = None, experts: Sequence[int] | None = None,
             model: str | None = None) -> Allocation:
    """An Allocation by strategy: "alphalora" (needs scores), "uniform", "mola:DIGITS" or "manual" (needs experts).

    The layer count comes from `scores`, else `n_layers`, else `experts`. Budget defaults to 5 × layers.
    """
    if scores is not None:
        scores = _check_scores(scores, n_layers)
        n_layers = len(scores)
    if strategy == "manual":
        counts = manual(experts, n_layers)
        return Allocation("manual", counts, top_k(counts), {}, scores, model)
    _require(n_layers is not None, "the number of layers is unknown: give layer scores or a model.")
    if not (strategy in ("alphalora", "uniform") or (isinstance(strategy, str) and strategy.startswith("mola"))):
        raise SpectrascopeError(
            f"unknown strategy {strategy!r}; choose alphalora, uniform, mola:DIGITS (e.g. mola:2468) or manual.")
    if strategy.startswith("mola"):
        counts = mola(strategy, n_layers)
        return Allocation(strategy, counts, top_k(counts), {"pattern": strategy[5:],
                                                            "blocks": mola_blocks(n_layers, len(strategy) - 5)},
                          scores, model)
    if budget is None:
        budget = DEFAULT_EXPERTS_PER_LAYER * n_layers
    params = {"budget": budget, "beta": beta if strategy == "alphalora" else 0.0, "min": min_experts,
              "max": max_experts}
    if strategy == "uniform":
        counts = uniform(n_layers, budget, min_experts, max_experts)
    else:
        _require(scores is not None, "the alphalora strategy needs one score per layer (--scores or a model).")
        counts = alphalora(scores, budget, beta, min_experts, max_experts)
    return Allocation(strategy, counts, top_k(counts), params, scores, model)


# --- parameter counts
@dataclass(frozen=True)
class ParamCount:
    """Trainable parameters of an allocation: LoRA experts r·(d_in+d_out) plus routers d_in·N_l per adapted matrix."""

    total: int
    experts: int
    routers: int
    per_layer: list[int]
    rank: int
    modules: tuple[str, ...]
    model_params: int | None = None
    share: float | None = None          # total / model_params

    def to_dict(self) -> dict:
        return {**asdict(self), "modules": list(self.modules)}


def n_layers_of(matrices: Iterable[MatrixInfo]) -> int:
    """Number of transformer blocks in a matrix list (largest layer index + 1)."""
    layers = [m.layer for m in matrices if m.layer is not None]
    _require(bool(layers), "the model has no matrices inside numbered layers; cannot allocate per layer.")
    return max(layers) + 1


def adapted_matrices(matrices: Sequence[MatrixInfo], modules: Sequence[str] | None = None) -> list[MatrixInfo]:
    """Matrices inside layers whose module kind is adapted (default: every linear kind in LINEAR_KINDS)."""
    kinds = tuple(LINEAR_KINDS if modules is None else modules)
    bad = [k for k in kinds if k not in LINEAR_KINDS]
    if bad or not kinds:
        raise SpectrascopeError(
            f"unknown module kinds {bad or '(none)'}; adapted modules must be among {', '.join(LINEAR_KINDS)}.")
    chosen = [m for m in matrices if m.layer is not None and m.module in kinds]
    if not chosen:
        present = sorted({m.module for m in matrices if m.layer is not None})
        raise SpectrascopeError(
            f"none of the module kinds {list(kinds)} is in the model (its layers have {present}); pick from those.")
    return chosen


def count_trainable_params(matrices: Sequence[MatrixInfo], experts: Sequence[int], rank: int = DEFAULT_RANK,
                           modules: Sequence[str] | None = None, model_params: int | None = None) -> ParamCount:
    """Trainable parameters of a MoE-LoRA allocation on a model's matrices.

    Per adapted Linear(d_in → d_out) (MatrixInfo rows = d_out, cols = d_in) in layer l with N_l experts:
    N_l · r · (d_in + d_out) for the experts plus d_in · N_l for its router. The router is counted whenever N_l ≥ 1
    (also N_l = 1): that convention reproduces the reference count for LLaMA-2-7B, 7 matrices, r = 8, one expert
    per layer = 624,640 (experts) + 35,584 (router) = 660,224, and MoLA's 160 experts → 105.6 M.
    """
    _require(_is_int(rank) and rank >= 1, f"the LoRA rank must be a whole number ≥ 1, got {rank!r}.")
    counts = manual(experts)
    chosen = adapted_matrices(matrices, modules)
    n = n_layers_of(matrices)
    _require(len(counts) == n, f"the allocation has {len(counts)} layers but the model has {n}; "
                               "allocate for this model's layers.")
    io = [0] * n
    d_in = [0] * n
    for m in chosen:
        io[m.layer] += m.rows + m.cols
        d_in[m.layer] += m.cols
    expert_params = [c * rank * s for c, s in zip(counts, io)]
    router_params = [c * s for c, s in zip(counts, d_in)]
    per_layer = [a + b for a, b in zip(expert_params, router_params)]
    total = sum(per_layer)
    share = None
    if model_params is not None:
        if not _is_int(model_params) or model_params <= 0:
            raise SpectrascopeError(f"the model's parameter count must be a whole number > 0, got {model_params!r}.")
        share = total / model_params
    kinds = tuple(k for k in LINEAR_KINDS if any(m.module == k for m in chosen))
    return ParamCount(total, sum(expert_params), sum(router_params), per_layer, rank, kinds, model_params, share)


def count_lora_params(matrices: Sequence[MatrixInfo], ranks: Sequence[int],
                      modules: Sequence[str] | None = None) -> int:
    """Trainable parameters of plain LoRA with per-layer ranks: Σ_l r_l · Σ_{matrices in l} (d_in + d_out)."""
    chosen = adapted_matrices(matrices, modules)
    ranks = manual(ranks, n_layers_of(matrices))
    return sum(ranks[m.layer] * (m.rows + m.cols) for m in chosen)


# --- ranks and peft export
def allocate_ranks(scores: Sequence[float], rank_budget: int, beta: float = DEFAULT_BETA, min_rank: int = 1,
                   max_rank: int | None = None) -> list[int]:
    """α-driven LoRA ranks r_l with Σ r_l = R, by the AlphaLoRA shares and the same rounding; the minimum rank
    (default 1) and the maximum are water-filled bounds, as in alphalora."""
    return _alpha_integers(scores, rank_budget, beta, min_rank, max_rank, "rank")


def peft_key_matches(key: str, module_name: str) -> bool:
    """peft 0.21's rank_pattern/alpha_pattern rule (peft.utils.other.get_pattern_key).

    re.match(rf"(.*\\.)?({key})$", module_name); the first key in dict order that matches wins.
    """
    return re.match(rf"(.*\.)?({key})$", module_name) is not None


def _module_name(tensor_name: str) -> str:
    return tensor_name[:-len(".weight")] if tensor_name.endswith(".weight") else tensor_name


def _common_prefix(names: list[str]) -> list[str]:
    parts = [n.split(".") for n in names]
    limit = min(len(p) for p in parts) - 1           # always leave a non-empty suffix
    out: list[str] = []
    for i in range(limit):
        seg = parts[0][i]
        if any(p[i] != seg for p in parts):
            break
        out.append(seg)
    return out


def _layer_key(prefix: list[str], names: list[str], short: bool) -> str:
    start = 0
    if short:   # drop leading segments before the block container ("model.layers.3" → "layers.3")
        digits = [i for i, seg in enumerate(prefix) if seg.isdigit()]
        if digits and digits[-1] >= 1:
            start = digits[-1] - 1
    n = len(prefix)
    suffixes = sorted({".".join(name.split(".")[n:]) for name in names})
    head = re.escape(".".join(prefix[start:]))
    alt = "|".join(re.escape(s) for s in suffixes)
    return f"{head}\\.(?:{alt})" if head else f"(?:{alt})"


def _keys_exact(keys: dict[int, list[str]], by_layer: dict[int, list[str]]) -> bool:
    compiled = {l: [re.compile(rf"(.*\.)?({k})$") for k in ks] for l, ks in keys.items()}
    for l, names in by_layer.items():
        for name in names:
            for other, regs in compiled.items():
                hit = any(r.match(name) for r in regs)
                if hit != (other == l):
                    return False
    return True


def layer_pattern_keys(matrices: Sequence[MatrixInfo], modules: Sequence[str] | None = None) -> dict[int, list[str]]:
    """Regex keys per layer that, under peft's matching rule, select exactly that layer's adapted modules.

    Preferred form is one key per layer starting at the block container, e.g.
    ``layer\\.3\\.(?:attention\\.output\\.dense|attention\\.self\\.key|...)``, which also matches when the loaded model
    adds or drops a leading prefix ("bert.", "model."). The keys are checked against every adapted module name; if
    the short form is ambiguous (e.g. two stacks with the same container name), the full prefix is used, and as a
    last resort one escaped key per module.
    """
    chosen = adapted_matrices(matrices, modules)
    by_layer: dict[int, list[str]] = {}
    for m in chosen:
        by_layer.setdefault(m.layer, []).append(_module_name(m.name))
    for short in (True, False):
        keys = {l: [_layer_key(_common_prefix(names), names, short)] for l, names in by_layer.items()}
        if _keys_exact(keys, by_layer):
            return keys
    return {l: [re.escape(n) for n in names] for l, names in by_layer.items()}


GENERIC_BLOCK = r"(?:layers|layer|h|blocks|block)"


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def lora_rank_config(ranks: Sequence[int], matrices: Sequence[MatrixInfo] | None = None,
                     modules: Sequence[str] | None = None, alpha_ratio: float = 2.0) -> dict:
    """peft ``LoraConfig`` kwargs for per-layer ranks: r, lora_alpha, target_modules, rank_pattern, alpha_pattern.

    alpha_pattern keeps lora_alpha / r = alpha_ratio (default 2) on every layer. With `matrices`, keys select exactly
    each layer's adapted modules (see layer_pattern_keys), layers with rank 0 are left out, and target_modules is a
    regex (peft full-matches a string) covering exactly the adapted modules. Without matrices the keys are generic
    ``(?:layers|layer|h|blocks|block)\\.L\\..*`` and target_modules is left for the user (e.g. "all-linear").
    """
    ranks = manual(ranks, None if matrices is None else n_layers_of(matrices))
    _require(not isinstance(alpha_ratio, bool) and isinstance(alpha_ratio, (int, float))
             and math.isfinite(alpha_ratio) and alpha_ratio > 0,
             f"the alpha ratio (lora_alpha / r) must be a finite number > 0, got {alpha_ratio!r}.")
    positive = [r for r in ranks if r > 0]
    _require(bool(positive), "every layer has rank 0, so there is nothing to train; raise the rank budget.")
    default_r = max(1, round(sum(positive) / len(positive)))
    config: dict[str, Any] = {"r": default_r, "lora_alpha": _num(alpha_ratio * default_r),
                              "rank_pattern": {}, "alpha_pattern": {}}
    if matrices is None:
        zero = [i for i, r in enumerate(ranks) if r == 0]
        _require(not zero, f"layers {zero} got rank 0; without the model's module names the export cannot leave "
                           "them out — give a model or a minimum rank ≥ 1.")
        keys = {l: [rf"{GENERIC_BLOCK}\.{l}\..*"] for l in range(len(ranks))}
    else:
        keys = layer_pattern_keys(matrices, modules)
    for l in sorted(keys):
        for key in keys[l] if ranks[l] > 0 else []:
            config["rank_pattern"][key] = ranks[l]
            config["alpha_pattern"][key] = _num(alpha_ratio * ranks[l])
    if matrices is not None:
        config["target_modules"] = r"(?:.*\.)?(?:" + "|".join(config["rank_pattern"]) + ")"
    return config


def add_rank_allocation(alloc: Allocation, rank_budget: int, matrices: Sequence[MatrixInfo] | None = None,
                        beta: float | None = None, min_rank: int = 1, max_rank: int | None = None,
                        modules: Sequence[str] | None = None, alpha_ratio: float = 2.0) -> Allocation:
    """Attach α-driven ranks (Σ r_l = R) and their peft LoraConfig kwargs to an allocation that has scores."""
    _require(alloc.scores is not None, "α-driven ranks need one score per layer; give --scores or a model.")
    if beta is None:
        beta = alloc.params.get("beta", DEFAULT_BETA) if alloc.strategy == "alphalora" else DEFAULT_BETA
    alloc.ranks = allocate_ranks(alloc.scores, rank_budget, beta, min_rank, max_rank)
    alloc.rank_params = {"budget": rank_budget, "beta": beta, "min": min_rank, "max": max_rank,
                         "alpha_ratio": alpha_ratio}
    alloc.lora_config = lora_rank_config(alloc.ranks, matrices, modules, alpha_ratio)
    return alloc


# --- JSON
def to_json(alloc: Allocation, indent: int | None = 2) -> str:
    """Serialise an allocation as spectrascope.allocation/1 JSON."""
    return json.dumps(alloc.to_dict(), indent=indent, ensure_ascii=False)


def _check_strategy(strategy: Any) -> str:
    if strategy in ("alphalora", "uniform", "manual"):
        return strategy
    if isinstance(strategy, str) and strategy.startswith("mola:"):
        parse_mola(strategy)
        return strategy
    raise SpectrascopeError(
        f"unknown strategy {strategy!r} in the allocation file; expected alphalora, uniform, mola:DIGITS or manual.")


def _check_patterns(lora_config: Any) -> None:
    _require(isinstance(lora_config, dict), "'lora_config' must be a JSON object of peft LoraConfig arguments.")
    for name in ("rank_pattern", "alpha_pattern"):
        pat = lora_config.get(name, {})
        _require(isinstance(pat, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in pat.values()),
                 f"'{name}' must map module-name regexes to numbers.")
        for key in pat:
            try:
                re.compile(key)
            except re.error as exc:
                raise SpectrascopeError(f"'{name}' key {key!r} is not a valid regular expression ({exc}).") from None


def from_json(text: str) -> Allocation:
    """Load and validate spectrascope.allocation/1 JSON; bad files raise SpectrascopeError naming the field."""
    try:
        d = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise SpectrascopeError(f"the allocation file is not valid JSON ({exc}); re-export it or fix the syntax.")
    _require(isinstance(d, dict), "the allocation file must hold a JSON object with 'schema', 'experts' and 'top_k'.")
    schema = d.get("schema")
    _require(schema is not None, f"the allocation file has no 'schema' field; expected \"{SCHEMA}\".")
    _require(schema == SCHEMA, f"unsupported allocation schema {schema!r}; this Spectrascope reads {SCHEMA!r}.")
    _require("experts" in d, "the allocation file has no 'experts' list; add one count per layer.")
    experts = manual(d["experts"])
    n = len(experts)
    strategy = _check_strategy(d.get("strategy", "manual"))
    ks = d.get("top_k")
    if ks is None:
        ks = top_k(experts)
    _require(isinstance(ks, list) and len(ks) == n, f"'top_k' must be a list of {n} whole numbers, like 'experts'.")
    for i, (k, e) in enumerate(zip(ks, experts)):
        _require(_is_int(k) and 0 <= k <= e and (e == 0 or k > 0),
                 f"top_k for layer {i} is {k!r} with {e} experts; it must be between 1 and the expert count "
                 "(0 only for a layer without experts).")
    _require("total" not in d or d["total"] == sum(experts),
             f"'total' is {d.get('total')!r} but the expert counts sum to {sum(experts)}; fix the total or the counts.")
    scores = d.get("scores")
    if scores is not None:
        _require(isinstance(scores, list), "'scores' must be a list of numbers (one per layer) or null.")
        scores = _check_scores(scores, n)
    params = d.get("params") or {}
    _require(isinstance(params, dict), "'params' must be a JSON object such as {\"budget\": 160, \"beta\": 2.5}.")
    model = d.get("model")
    _require(model is None or isinstance(model, str), "'model' must be a string (the model name or path) or null.")
    tp = d.get("trainable_params")
    _require(tp is None or isinstance(tp, dict) or _is_int(tp), "'trainable_params' must be an object if present.")
    ranks = None if d.get("ranks") is None else manual(d["ranks"], n)
    lora_config = d.get("lora_config")
    if lora_config is None and ("rank_pattern" in d or "alpha_pattern" in d):
        lora_config = {"rank_pattern": d.get("rank_pattern") or {}, "alpha_pattern": d.get("alpha_pattern") or {}}
    if lora_config is not None:
        _check_patterns(lora_config)
    tp = {"total": tp} if _is_int(tp) else tp
    return Allocation(strategy, experts, list(ks), params, scores, model, tp, ranks, d.get("rank_params"),
                      lora_config)
