"""Eigenvalues of W·Wᵀ and the heavy-tail power-law α estimators (weightwatcher-exact and PL_Alpha_Hill)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# weightwatcher 0.7.7 constants (weightwatcher/constants.py, WW_powerlaw.py)
EVALS_THRESH = 1e-5      # eigenvalues at or below this are dropped before the ww fit
MIN_EVALS = 8            # ww skips matrices with fewer eigenvalues than this (min_evals)
SMALL_N_CUTOFF = 20      # ww switches to its bias-corrected small-sample fit below this many eigenvalues
SMALL_N_K_MIN = 8        # ... and ignores tails shorter than this
HILL_BINS = 100          # PL_Alpha_Hill histogram bins (AlphaLoRA / TempBalance)
OVER_TRAINED, UNDER_TRAINED = 2.0, 6.0   # weightwatcher's warning bands on ITS α (OVER/UNDER_TRAINED_THRESH)

# When a fit is "unreliable" (verdict). Each threshold is ours unless a source is named.
KS_D_MAX = 0.12          # a fit whose KS distance D exceeds this is not evidence of a power-law tail: Gaussian
                         # random matrices (Marchenko–Pastur bulk, no tail at all) give D ≈ 0.10–0.15, median 0.13,
                         # with either estimator at transformer shapes (384² … 2048×512; tests/analysis/
                         # test_rank_verdict.py); trained MiniLM matrices give 0.03–0.12
ALPHA_SPURIOUS = 8.0     # weightwatcher's advice: α > 8 is spurious (the fit found no heavy tail, e.g. a finger)
MIN_TAIL = 10            # tails with fewer eigenvalues: the MLE's error (α−1)/√n is ≥ ⅓ of α−1 itself
                         # (weightwatcher: min_evals "10, really 50"; its small-sample fit ignores tails < 8)
GRAM_RCOND = 1e-9        # λ_min/λ_max below this: the float64 Gram spectrum (absolute error ≈ M·eps64·λ_max
                         # ≤ 1e-12·λ_max) may not resolve the small σ; the engine recomputes them by SVD
UNRELIABLE = "unreliable fit"
_KS_CHUNK_CELLS = 1 << 22  # cells of the (candidates × eigenvalues) KS block processed at once (32 MiB float64)


# ---------------------------------------------------------------- eigenvalues

def to_numpy(W) -> np.ndarray:
    """A CPU torch tensor (parameters included) or an array-like as a NumPy array, without copying if possible."""
    if hasattr(W, "detach"):
        import torch                             # already imported: W is a tensor
        W = W.detach().cpu()
        if W.dtype not in (torch.float16, torch.float32, torch.float64):
            W = W.float()                        # bfloat16, float8, integers: NumPy has no such dtype
        return W.numpy()
    return np.asarray(W)


def eigenvalues(W, device: str = "cpu", chunk_rows: int = 4096) -> np.ndarray:
    """Eigenvalues of WᵀW (= σ_i² of W), ascending, float64, length min(W.shape).

    Gram + eigvalsh in float64: G = Σ_chunks W_cᵀW_c over row chunks of the long side, so the float64
    copy of W never exists whole; NumPy hands W_cᵀW_c to BLAS syrk (one triangle), so the cost is
    N·M² + O(M³) flops. Measured against svdvals in benchmarks/analysis_speed.py (several times faster,
    the same α to 1e-10). W may be a NumPy array or a torch tensor; device 'cuda…' runs it in torch.
    """
    if str(device) != "cpu":
        return _eigenvalues_torch(W, device, chunk_rows)
    W = to_numpy(W)
    if W.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(W.shape)}")
    if W.shape[0] < W.shape[1]:
        W = W.T                                  # make it tall: (N, M), N >= M, so G is the small M×M side
    N, M = W.shape
    G = np.zeros((M, M), dtype=np.float64)
    for start in range(0, N, chunk_rows):
        chunk = np.ascontiguousarray(W[start:start + chunk_rows], dtype=np.float64)   # (c, M)
        G += chunk.T @ chunk                     # syrk: chunkᵀ·chunk shares one buffer
    evals = np.linalg.eigvalsh(G)               # ascending
    return np.maximum(evals, 0.0)               # round-off can leave tiny negatives: σ² >= 0


def as_tensor(W):
    """A torch view of a NumPy array (read-only memory maps included: torch only reads it), or W if a tensor."""
    import torch
    if isinstance(W, torch.Tensor):
        return W.detach()
    import warnings
    with warnings.catch_warnings():                 # "array is not writable": nothing ever writes to it
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(W))


def _eigenvalues_torch(W, device, chunk_rows: int) -> np.ndarray:
    """The same Gram + eigvalsh on a torch device (CUDA)."""
    import torch
    W = as_tensor(W)
    if W.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(W.shape)}")
    if W.shape[0] < W.shape[1]:
        W = W.T
    N, M = W.shape
    G = torch.zeros(M, M, dtype=torch.float64, device=device)
    for start in range(0, N, chunk_rows):
        chunk = W[start:start + chunk_rows].to(device=device, dtype=torch.float64)
        G.addmm_(chunk.T, chunk)
    return torch.linalg.eigvalsh(G).clamp_min(0.0).cpu().numpy()


def eigenvalues_svd(W) -> np.ndarray:
    """Reference path: squared singular values from an SVD in float64, ascending."""
    sv = np.linalg.svd(np.asarray(to_numpy(W), dtype=np.float64), compute_uv=False)
    return (sv * sv)[::-1].copy()


def gram_unresolved(evals: np.ndarray) -> bool:
    """Whether the Gram spectrum holds eigenvalues too small for it to resolve (λ_min ≤ GRAM_RCOND·λ_max).

    Gram + eigvalsh squares σ, so σ below ≈ 1e-8·σ_max drown in the float64 round-off of λ_max: a rank-deficient
    matrix shows them as zeros or noise. Then rank, entropy and the Hill fits need the σ of an SVD.
    """
    lam = np.asarray(evals, dtype=np.float64)
    return bool(lam.size) and float(lam.max()) > 0 and float(lam.min()) <= GRAM_RCOND * float(lam.max())


def rank_eps(dtype: str | None) -> float:
    """Machine epsilon for the rank tolerance of a matrix stored as `dtype` (numpy's matrix_rank on that dtype).

    float64 → eps(float64); everything else → eps(float32): the engine analyses float32 copies (exact for
    bf16/fp16/fp8 and dequantised weights), and numpy has no rank for narrower formats — at their own eps the
    rule σ_max·max(N, M)·eps would exceed σ_max (bf16: 688·2⁻⁷ > 1) and call every matrix rank 0.
    """
    return float(np.finfo(np.float64 if str(dtype) == "float64" else np.float32).eps)


# ---------------------------------------------------------------- power-law fit

@dataclass
class PowerLawFit:
    """Result of a power-law tail fit on sorted eigenvalues."""

    alpha: float
    xmin: float
    D: float
    num_pl_spikes: int
    sigma: float
    candidates: np.ndarray   # xmin values tried
    alphas: np.ndarray       # α at each candidate
    Ds: np.ndarray           # KS distance at each candidate (1 where not admissible)
    status: str = "ok"

    @staticmethod
    def failed(reason: str) -> "PowerLawFit":
        empty = np.zeros(0)
        return PowerLawFit(float("nan"), float("nan"), float("nan"), 0, float("nan"), empty, empty, empty, reason)


def _tail_alphas(log_l: np.ndarray, idx: np.ndarray, correction: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Continuous power-law MLE (Hill form) for tails starting at each index in idx.

    α_i = 1 + (n_i − correction) / Σ_{j≥i} ln(λ_j/λ_i), n_i = N − i. Suffix sums make it O(N).
    Returns (alphas, log-sum s_i).
    """
    N = log_l.shape[0]
    suffix = np.cumsum(log_l[::-1])[::-1]                      # suffix[i] = Σ_{j≥i} ln λ_j
    n = (N - idx).astype(np.float64)
    s = suffix[idx] - n * log_l[idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 + (n - correction) / s, s


def _ks_distances(log_l: np.ndarray, idx: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """D_i = max_{j≥i} |1 − (λ_j/λ_i)^{1−α_i} − (j−i)/n_i| for every candidate i: a masked (C × N) reduction."""
    N = log_l.shape[0]
    j = np.arange(N)
    out = np.empty(idx.shape[0], dtype=np.float64)
    step = max(1, _KS_CHUNK_CELLS // max(N, 1))
    for a in range(0, idx.shape[0], step):
        i = idx[a:a + step, None]                               # (c, 1)
        al = alphas[a:a + step, None]                           # (c, 1)
        n = (N - i).astype(np.float64)
        diff = np.maximum(log_l[None, :] - log_l[i], 0.0)       # (c, N): ln(λ_j/λ_i), 0 left of the tail
        gap = 1.0 - np.exp((1.0 - al) * diff)                   # fitted CDF ...
        gap -= (j[None, :] - i) / n                             # ... minus the empirical CDF (j−i)/n
        np.abs(gap, out=gap)
        gap[j[None, :] < i] = 0.0                               # only the tail j ≥ i counts
        out[a:a + step] = gap.max(axis=1)
    return out


def _fit(lam: np.ndarray, idx: np.ndarray) -> PowerLawFit:
    """Fit on ascending eigenvalues lam with xmin candidates lam[idx] (idx ⊂ 0..N−2); choose argmin D."""
    if idx.size == 0:
        return PowerLawFit.failed("no xmin candidates")
    log_l = np.log(lam)
    alphas, _ = _tail_alphas(log_l, idx)
    Ds = np.ones_like(alphas)
    ok = alphas > 1.0                                           # α ≤ 1 is not a normalisable power law
    if ok.any():
        Ds[ok] = _ks_distances(log_l, idx[ok], alphas[ok])
    best = int(np.argmin(Ds))                                   # first minimum, as weightwatcher
    i = int(idx[best])
    n = lam.shape[0] - i
    alpha = float(alphas[best])
    return PowerLawFit(alpha=alpha, xmin=float(lam[i]), D=float(Ds[best]), num_pl_spikes=int(n),
                       sigma=(alpha - 1.0) / np.sqrt(n), candidates=lam[idx], alphas=alphas, Ds=Ds)


def _fit_small_n(lam: np.ndarray) -> PowerLawFit:
    """weightwatcher 0.7.7's small-sample fit (fewer than 20 eigenvalues), reproduced.

    Bias-corrected α_i = 1 + (n_i−1)/Σ ln(λ_j/λ_i); tails shorter than 8 (or degenerate, or α ≤ 1) keep D = 1.
    WWFit's small-N routine ranks tails by J = D − 0.868/√n, but WWFit.__init__ then re-selects by argmin D,
    so the reported fit is the argmin-D one; if no tail qualifies, the whole sample (i = 0) is fitted.
    """
    N = lam.shape[0]
    log_l = np.log(lam)
    idx = np.arange(N - 1)
    alphas, s = _tail_alphas(log_l, idx, correction=1.0)
    n = (N - idx).astype(np.float64)
    valid = (n >= SMALL_N_K_MIN) & (s > 1e-12) & (alphas > 1.0)
    Ds = np.ones_like(alphas)
    if valid.any():
        Ds[valid] = _ks_distances(log_l, idx[valid], alphas[valid])
    elif float(s[0]) > 1e-12:
        Ds[0] = _ks_distances(log_l, idx[:1], alphas[:1])[0]
    else:
        return PowerLawFit(1.0, float(lam[0]), 1.0, N, 0.0, lam[:-1], alphas, Ds, "degenerate")
    best = int(np.argmin(Ds))
    alpha = float(alphas[best])
    n_best = N - best
    return PowerLawFit(alpha=alpha, xmin=float(lam[best]), D=float(Ds[best]), num_pl_spikes=int(n_best),
                       sigma=(alpha - 1.0) / np.sqrt(n_best), candidates=lam[:-1], alphas=alphas,
                       Ds=Ds, status="small-sample fit")


def alpha_ww(evals: np.ndarray, thresh: float = EVALS_THRESH) -> PowerLawFit:
    """weightwatcher-exact α (analyze() defaults: fit='PL', pl_package='ww').

    Keep λ > thresh; every kept λ except the largest is an xmin candidate; choose the xmin with the
    smallest KS distance (Clauset–Shalizi–Newman), as weightwatcher 0.7.7's WWFit does.
    """
    lam = np.sort(np.asarray(evals, dtype=np.float64))
    lam = lam[lam > thresh]
    if lam.size < 2:
        return PowerLawFit.failed(f"only {lam.size} eigenvalues above {thresh:g}")
    if lam.size < SMALL_N_CUTOFF:
        return _fit_small_n(lam)
    return _fit(lam, np.arange(lam.size - 1))


def hill_peak_xmin(lam: np.ndarray, bins: int = HILL_BINS) -> float:
    """xmin_peak: 10^(left edge of the fullest bin) of a histogram of log10 λ over [min, max]."""
    counts, edges = np.histogram(np.log10(lam), bins=bins)
    return float(10.0 ** edges[int(np.argmax(counts))])


def alpha_hill(evals: np.ndarray, xmin: str = "peak", bins: int = HILL_BINS) -> PowerLawFit:
    """PL_Alpha_Hill (TempBalance / AlphaLoRA / AlphaPruning `net_esd_estimator`).

    xmin='peak' ('xmin_peak', AlphaLoRA): candidates are λ_i ≤ 1.5·xmin_peak. The reference code also
    drops candidates below log10(0.95·xmin_peak) — a log value compared with a linear λ, so it rarely
    excludes anything; we reproduce it literally, since the published α were computed that way.
    xmin='mid' ('xmin_mid', TempBalance default): xmin = λ_{⌊N/2⌋}, no search.
    No EVALS_THRESH filtering (as the references); only λ ≤ 0, which has no logarithm, is dropped.
    """
    lam = np.sort(np.asarray(evals, dtype=np.float64))
    lam = lam[lam > 0.0]
    if lam.size < 2:
        return PowerLawFit.failed("fewer than 2 positive eigenvalues")
    if xmin == "mid":
        return _fit(lam, np.array([lam.size // 2]))
    if xmin != "peak":
        raise ValueError(f"unknown xmin rule {xmin!r}: use 'peak' or 'mid'")
    peak = hill_peak_xmin(lam, bins)
    cand = lam[:-1]
    keep = (cand >= np.log10(0.95 * peak)) & (cand <= 1.5 * peak)
    idx = np.nonzero(keep)[0]
    if idx.size == 0:   # the reference then returns alphas[0] = 0 with D = 1; report it as a failed fit
        return PowerLawFit.failed("no xmin candidates near the ESD peak")
    return _fit(lam, idx)


def quality_label(alpha: float) -> str:
    """HT-SR reading of α: < 2 over-trained, > 6 under-trained (weightwatcher's warning labels)."""
    if not np.isfinite(alpha):
        return "no fit"
    if alpha < OVER_TRAINED:
        return "over-trained"
    if alpha > UNDER_TRAINED:
        return "under-trained"
    return "ok"


def standard_error(alpha: float, n: int) -> float:
    """σ = (α − 1)/√n: the asymptotic standard error of the continuous power-law MLE on a tail of n points
    (Clauset, Shalizi & Newman 2009, eq. 3.2); NaN without a fit."""
    if not (np.isfinite(alpha) and n and n > 0):
        return float("nan")
    return float((alpha - 1.0) / np.sqrt(n))


def unreliable_reasons(alpha: float, D: float, n: int, rank: int | None = None, M: int | None = None) -> list[str]:
    """Why a power-law fit should not be read: D > KS_D_MAX, α > ALPHA_SPURIOUS, tail < MIN_TAIL, rank < M."""
    why = []
    if np.isfinite(D) and D > KS_D_MAX:
        why.append(f"KS distance D = {D:.3f} > {KS_D_MAX:g}")
    if alpha > ALPHA_SPURIOUS:
        why.append(f"α = {alpha:.2f} > {ALPHA_SPURIOUS:g} (spurious)")
    if n < MIN_TAIL:
        why.append(f"tail of {int(n)} < {MIN_TAIL} eigenvalues")
    if rank is not None and M is not None and rank < M:
        why.append(f"rank-deficient (rank {int(rank)} of {int(M)})")
    return why


def verdict(alpha: float, D: float, n: int, rank: int | None = None, M: int | None = None,
            bands: bool = True) -> tuple[str, str]:
    """(verdict, reason) of one fit: 'no fit', UNRELIABLE, or — for weightwatcher's α (bands=True) —
    'over-trained' (α < 2) / 'typical' / 'under-trained' (α > 6); without bands a reliable fit is 'fit ok'."""
    if not np.isfinite(alpha):
        return "no fit", "no power-law fit"
    why = unreliable_reasons(alpha, D, n, rank, M)
    if why:
        return UNRELIABLE, "; ".join(why)
    if not bands:
        return "fit ok", ""
    if alpha < OVER_TRAINED:
        return "over-trained", ""
    if alpha > UNDER_TRAINED:
        return "under-trained", ""
    return "typical", ""
