"""Per-layer α shift of a fine-tune vs its base with a noise floor: fit standard errors and seed-to-seed shifts."""
from __future__ import annotations

import math
import re
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from analysis import esd

Z95 = 1.959963984540054            # two-sided 95 % normal quantile: the band is ±Z95·SE
NON_BLOCK_KINDS = ("embedding", "head")
EXPERT_SUFFIX = re.compile(r" \[expert \d+\]$")
LAYER_COLUMNS = ["layer", "alpha", "se", "matrices"]
SHIFT_COLUMNS = ["layer", "base", "finetuned", "shift", "se", "band"]


def _number(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def hill_fit(evals: np.ndarray) -> tuple[float, float]:
    """(α, SE) of PL_Alpha_Hill (xmin_peak) on one matrix's eigenvalues: SE = (α − 1)/√n, n the tail size.

    (α − 1)/√n is the asymptotic standard error of the continuous power-law MLE (Clauset, Shalizi & Newman
    2009, eq. 3.2) with xmin held fixed; the uncertainty of the xmin choice is not in it (on planted Pareto spectra
    the α spread is 15–30 % above this SE and a ±1.96·SE band of Δα holds ≈ 92 % of pure-noise shifts: see
    tests/analysis/test_alpha_noise.py).
    """
    fit = esd.alpha_hill(np.asarray(evals, dtype=np.float64), "peak")
    return float(fit.alpha), float(fit.sigma)


def layer_alphas(rows: Iterable[Mapping], evals: Mapping[str, np.ndarray] | None = None,
                 replace: Mapping[str, list[np.ndarray]] | None = None) -> pd.DataFrame:
    """Per transformer block: the mean PL_Alpha_Hill of its matrices (AlphaLoRA's layer score), its standard
    error sqrt(Σ SE_i²)/m over the m matrices (independent fits), and m.

    rows: engine analysis rows (name, layer, module, alpha_hill, optionally alpha_hill_se). The SE of a matrix is
    its row's `alpha_hill_se` when present, else computed from `evals[name]` (hill_fit), else unknown (NaN).
    replace: name -> eigenvalue arrays of the matrices that stand for it on this side (e.g. a MoE-LoRA module's
    effective W0 + ΔW, or one per expert): its α is their mean α and its SE sqrt(Σ SE²)/count.
    Embeddings and the head are excluded, as in the AlphaLoRA score.
    """
    evals, replace = evals or {}, replace or {}
    blocks: dict[int, list[tuple[float, float]]] = {}
    for r in rows:
        if not _number(r.get("layer")) or r.get("module") in NON_BLOCK_KINDS:
            continue
        name = r.get("name")
        if name in replace and replace[name]:
            fits = [hill_fit(ev) for ev in replace[name]]
            alpha = float(np.mean([a for a, _ in fits]))
            se = math.sqrt(sum(s * s for _, s in fits)) / len(fits)
        elif _number(r.get("alpha_hill")):
            alpha = float(r["alpha_hill"])
            if _number(r.get("alpha_hill_se")):
                se = float(r["alpha_hill_se"])
            elif name in evals:
                se = hill_fit(evals[name])[1]
            else:
                se = float("nan")
        else:
            continue
        if math.isfinite(alpha):
            blocks.setdefault(int(r["layer"]), []).append((alpha, se))
    out = [{"layer": layer, "alpha": float(np.mean([a for a, _ in m])),
            "se": math.sqrt(sum(s * s for _, s in m)) / len(m), "matrices": len(m)}
           for layer, m in sorted(blocks.items())]
    return pd.DataFrame(out, columns=LAYER_COLUMNS)


def alpha_shift(base: pd.DataFrame, finetuned: pd.DataFrame, z: float = Z95) -> pd.DataFrame:
    """Δα = fine-tuned − base per layer, with the SE of the difference of two independent fits,
    sqrt(SE_base² + SE_ft²), and the half-width z·SE of the noise band around 0 (layers present on both sides).

    The two fits are treated as independent; a fine-tune is close to its base, so this band is conservative.
    """
    df = base[["layer", "alpha", "se"]].merge(finetuned[["layer", "alpha", "se"]], on="layer", suffixes=("_b", "_f"))
    out = pd.DataFrame({"layer": df["layer"].astype(int), "base": df["alpha_b"], "finetuned": df["alpha_f"]})
    out["shift"] = df["alpha_f"] - df["alpha_b"]
    out["se"] = np.sqrt(df["se_b"] ** 2 + df["se_f"] ** 2)
    out["band"] = z * out["se"]
    return out.sort_values("layer").reset_index(drop=True)[SHIFT_COLUMNS]


def seed_shift(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Seed-to-seed α difference per layer between two runs of one recipe: layer, shift (a − b), band (|a − b|)."""
    df = a[["layer", "alpha"]].merge(b[["layer", "alpha"]], on="layer", suffixes=("_a", "_b"))
    out = pd.DataFrame({"layer": df["layer"].astype(int), "shift": df["alpha_a"] - df["alpha_b"]})
    out["band"] = out["shift"].abs()
    return out.sort_values("layer").reset_index(drop=True)


def within_noise(shift: pd.DataFrame) -> int:
    """How many layers' |Δα| lie inside their ±z·SE band (not distinguishable from fit noise)."""
    return int((shift["shift"].abs() <= shift["band"]).sum())


def effective_spectra(comparisons) -> dict[str, list[np.ndarray]]:
    """Eigenvalues (σ²) of the fine-tuned matrices of an intruder report, grouped by the base matrix they stand
    for: one per matrix, or one per expert of a MoE-LoRA per-expert report ('<name> [expert e]')."""
    out: dict[str, list[np.ndarray]] = {}
    for c in comparisons:
        name = EXPERT_SUFFIX.sub("", c.info.name)
        s = np.asarray(c.sigmas, dtype=np.float64)
        out.setdefault(name, []).append(np.sort(s * s))
    return out
