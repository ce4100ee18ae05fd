"""Per-matrix spectral metrics besides α: norms, stable rank, entropy, rank, Marchenko–Pastur edge (weightwatcher's definitions)."""
from __future__ import annotations

import numpy as np

ENTROPY_EPS = 1e-10  # weightwatcher's EPSILON, added to p and to the rank in the entropy
F64_EPS = float(np.finfo(np.float64).eps)


def matrix_rank(evals: np.ndarray, n_max: int, eps: float = F64_EPS) -> int:
    """#σ > σ_max · max(N, M) · eps, σ = √λ (numpy's matrix_rank rule; eps of the stored dtype, esd.rank_eps)."""
    sv = np.sqrt(np.clip(evals, 0.0, None))
    if sv.size == 0:
        return 0
    return int(np.count_nonzero(sv > sv.max() * n_max * eps))


def matrix_entropy(evals: np.ndarray, n_max: int, eps: float = F64_EPS) -> float:
    """Normalised spectral entropy −Σ p ln p / ln(rank), p = λ/Σλ (weightwatcher's matrix_entropy).

    Over the `rank` largest λ only (σ above the rank tolerance): on a full-rank matrix that is every λ and the
    value equals weightwatcher's; on a rank-deficient one the round-off λ of the null space are left out.
    """
    lam = np.clip(np.asarray(evals, dtype=np.float64), 0.0, None)
    if lam.sum() <= 0:
        return float("nan")
    rank = matrix_rank(lam, n_max, eps)
    if rank <= 1:
        return 0.0                                  # one mode: no spread (and ln 1 = 0)
    if rank < lam.size:
        lam = np.sort(lam)[lam.size - rank:]
    p = lam / lam.sum() + ENTROPY_EPS
    return float(-np.sum(p * np.log(p)) / np.log(rank + ENTROPY_EPS))


def mp_bulk_edge(evals: np.ndarray, rows: int, cols: int) -> float:
    """Marchenko–Pastur upper edge λ₊ = s²·N·(1 + 1/√Q)² for the eigenvalues of WᵀW (no 1/N scaling).

    N = max(rows, cols), Q = N/M; s² is estimated as the mean squared entry ‖W‖_F²/(N·M) = Σλ/(N·M),
    i.e. the edge a random matrix with the same entry variance would have.
    """
    N, M = max(rows, cols), min(rows, cols)
    s2 = float(np.sum(evals)) / (N * M)
    return s2 * N * (1.0 + 1.0 / np.sqrt(N / M)) ** 2


def norm_metrics(evals: np.ndarray, alpha: float, rows: int, cols: int, eps: float = F64_EPS) -> dict[str, float]:
    """log_norm, log_spectral_norm, alpha_weighted, log_alpha_norm, stable_rank, entropy, matrix_rank, MP edge, spikes.

    Computed on all eigenvalues of WᵀW (no 1/N normalisation), as weightwatcher's apply_norm_metrics; `eps`
    sets the rank tolerance (the engine passes the stored dtype's, esd.rank_eps).
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
        "entropy": matrix_entropy(lam, n_max, eps),
        "matrix_rank": matrix_rank(lam, n_max, eps),
        "mp_edge": edge,
        "num_spikes": int(np.count_nonzero(lam > edge)),
    }
