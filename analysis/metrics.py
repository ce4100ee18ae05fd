"""Per-matrix spectral metrics besides α: norms, stable rank, entropy, rank, Marchenko–Pastur edge (weightwatcher's definitions)."""
from __future__ import annotations

import numpy as np

ENTROPY_EPS = 1e-10  # weightwatcher's EPSILON, added to p and to the rank in the entropy


def matrix_rank(evals: np.ndarray, n_max: int) -> int:
    """#σ > σ_max · max(N, M) · eps(float64), σ = √λ (numpy's matrix_rank rule)."""
    sv = np.sqrt(np.clip(evals, 0.0, None))
    if sv.size == 0:
        return 0
    return int(np.count_nonzero(sv > sv.max() * n_max * np.finfo(np.float64).eps))


def matrix_entropy(evals: np.ndarray, n_max: int) -> float:
    """Normalised spectral entropy −Σ p ln p / ln(rank), p = λ/Σλ (weightwatcher's matrix_entropy)."""
    lam = np.clip(np.asarray(evals, dtype=np.float64), 0.0, None)
    total = lam.sum()
    if total <= 0:
        return float("nan")
    rank = matrix_rank(lam, n_max) + ENTROPY_EPS
    p = lam / total + ENTROPY_EPS
    return float(-np.sum(p * np.log(p)) / np.log(rank))


def mp_bulk_edge(evals: np.ndarray, rows: int, cols: int) -> float:
    """Marchenko–Pastur upper edge λ₊ = s²·N·(1 + 1/√Q)² for the eigenvalues of WᵀW (no 1/N scaling).

    N = max(rows, cols), Q = N/M; s² is estimated as the mean squared entry ‖W‖_F²/(N·M) = Σλ/(N·M),
    i.e. the edge a random matrix with the same entry variance would have.
    """
    N, M = max(rows, cols), min(rows, cols)
    s2 = float(np.sum(evals)) / (N * M)
    return s2 * N * (1.0 + 1.0 / np.sqrt(N / M)) ** 2


def norm_metrics(evals: np.ndarray, alpha: float, rows: int, cols: int) -> dict[str, float]:
    """log_norm, log_spectral_norm, alpha_weighted, log_alpha_norm, stable_rank, entropy, matrix_rank, MP edge, spikes.

    Computed on all eigenvalues of WᵀW (no 1/N normalisation), as weightwatcher's apply_norm_metrics.
    """
    lam = np.clip(np.asarray(evals, dtype=np.float64), 0.0, None)
    n_max = max(rows, cols)
    total = float(lam.sum())
    lmax = float(lam.max()) if lam.size else 0.0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_norm = np.log10(total) if total > 0 else float("-inf")
        log_spec = np.log10(lmax) if lmax > 0 else float("-inf")
        if np.isfinite(alpha):
            log_alpha_norm = float(np.log10(np.sum(lam ** alpha)))
            alpha_weighted = float(alpha * log_spec)
        else:
            log_alpha_norm = alpha_weighted = float("nan")
    edge = mp_bulk_edge(lam, rows, cols)
    return {
        "log_norm": float(log_norm),
        "log_spectral_norm": float(log_spec),
        "alpha_weighted": alpha_weighted,
        "log_alpha_norm": log_alpha_norm,
        "stable_rank": total / lmax if lmax > 0 else float("nan"),
        "entropy": matrix_entropy(lam, n_max),
        "matrix_rank": matrix_rank(lam, n_max),
        "mp_edge": edge,
        "num_spikes": int(np.count_nonzero(lam > edge)),
    }
