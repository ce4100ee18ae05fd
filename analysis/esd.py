"""Eigenvalues of W·Wᵀ and the heavy-tail power-law α estimators (weightwatcher-exact and PL_Alpha_Hill)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# weightwatcher 0.7.7 constants (weightwatcher/constants.py, WW_powerlaw.py)
EVALS_THRESH = 1e-5      # eigenvalues at or below this are dropped before the ww fit
MIN_EVALS = 8            # ww skips matrices with fewer eigenvalues than this (min_evals)
SMALL_N_CUTOFF = 20      # ww switches to its bias-corrected small-sample fit below this many eigenvalues
SMALL_N_K_MIN = 8        # ... and ignores tails shorter than this
HILL_BINS = 100          # PL_Alpha_Hill histogram bins (AlphaLoRA / TempBalance)
_KS_CHUNK_CELLS = 1 << 22  # cells of the (candidates × eigenvalues) KS block processed at once (32 MiB float64)


# ---------------------------------------------------------------- eigenvalues

def eigenvalues(W: torch.Tensor, device: str | torch.device = "cpu", chunk_rows: int = 4096) -> np.ndarray:
    """Eigenvalues of WᵀW (= σ_i² of W), ascending, float64, length min(W.shape).

    Gram + eigvalsh in float64: G = Σ_chunks W_cᵀW_c over row chunks of the long side, so the float64
    copy of W never exists whole; cost N·M² + M³ flops. Measured against svdvals in
    benchmarks/analysis_speed.py (it is several times faster with the same α to 1e-10).
    """
    W = W.detach()
    if W.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(W.shape)}")
    if W.shape[0] < W.shape[1]:
        W = W.T                                  # make it tall: (N, M), N >= M, so G is the small M×M side
    N, M = W.shape
    G = torch.zeros(M, M, dtype=torch.float64, device=device)
    for start in range(0, N, chunk_rows):
        chunk = W[start:start + chunk_rows].to(device=device, dtype=torch.float64)  # (c, M)
        G.addmm_(chunk.T, chunk)                 # G += chunkᵀ chunk
    evals = torch.linalg.eigvalsh(G)            # ascending
    return evals.clamp_min(0.0).cpu().numpy()  # round-off can leave tiny negatives: σ² >= 0


def eigenvalues_svd(W: torch.Tensor, device: str | torch.device = "cpu") -> np.ndarray:
    """Reference path: squared singular values from svdvals in float64, ascending."""
    sv = torch.linalg.svdvals(W.detach().to(device=device, dtype=torch.float64))
    return torch.flip(sv * sv, dims=[0]).cpu().numpy()


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


def _tail_alphas(log_l: torch.Tensor, idx: torch.Tensor, correction: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Continuous power-law MLE (Hill form) for tails starting at each index in idx.

    α_i = 1 + (n_i − correction) / Σ_{j≥i} ln(λ_j/λ_i), n_i = N − i. Suffix sums make it O(N).
    Returns (alphas, log-sum s_i).
    """
    N = log_l.shape[0]
    suffix = torch.flip(torch.cumsum(torch.flip(log_l, [0]), 0), [0])  # suffix[i] = Σ_{j≥i} ln λ_j
    n = (N - idx).to(log_l.dtype)
    s = suffix[idx] - n * log_l[idx]
    return 1.0 + (n - correction) / s, s


def _ks_distances(lam: torch.Tensor, log_l: torch.Tensor, idx: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """D_i = max_{j≥i} |1 − (λ_j/λ_i)^{1−α_i} − (j−i)/n_i| for every candidate i: a masked (C × N) reduction."""
    N = lam.shape[0]
    j = torch.arange(N, device=lam.device)
    out = torch.empty(idx.shape[0], dtype=lam.dtype, device=lam.device)
    step = max(1, _KS_CHUNK_CELLS // max(N, 1))
    for a in range(0, idx.shape[0], step):
        i = idx[a:a + step, None]                               # (c, 1)
        al = alphas[a:a + step, None]                           # (c, 1)
        n = (N - i).to(lam.dtype)
        diff = (log_l[None, :] - log_l[i]).clamp_min(0.0)       # (c, N): ln(λ_j/λ_i), 0 left of the tail
        theo = 1.0 - torch.exp((1.0 - al) * diff)               # fitted CDF
        emp = (j[None, :] - i).to(lam.dtype) / n                # empirical CDF (j−i)/n
        gap = torch.where(j[None, :] >= i, (theo - emp).abs(), torch.zeros((), dtype=lam.dtype, device=lam.device))
        out[a:a + step] = gap.amax(dim=1)
    return out


def _fit(lam: np.ndarray, idx: np.ndarray, device: str | torch.device = "cpu") -> PowerLawFit:
    """Fit on ascending eigenvalues lam with xmin candidates lam[idx] (idx ⊂ 0..N−2); choose argmin D."""
    if idx.size == 0:
        return PowerLawFit.failed("no xmin candidates")
    t = torch.as_tensor(lam, dtype=torch.float64, device=device)
    log_l = torch.log(t)
    ti = torch.as_tensor(idx, dtype=torch.long, device=device)
    alphas, _ = _tail_alphas(log_l, ti)
    Ds = torch.ones_like(alphas)
    ok = alphas > 1.0                                           # α ≤ 1 is not a normalisable power law
    if bool(ok.any()):
        Ds[ok] = _ks_distances(t, log_l, ti[ok], alphas[ok])
    best = int(torch.argmin(Ds))                                # first minimum, as np.argmin
    i = int(idx[best])
    n = lam.shape[0] - i
    alpha = float(alphas[best])
    return PowerLawFit(alpha=alpha, xmin=float(lam[i]), D=float(Ds[best]), num_pl_spikes=int(n),
                       sigma=(alpha - 1.0) / np.sqrt(n), candidates=lam[idx], alphas=alphas.cpu().numpy(),
                       Ds=Ds.cpu().numpy())


def _fit_small_n(lam: np.ndarray) -> PowerLawFit:
    """weightwatcher 0.7.7's small-sample fit (fewer than 20 eigenvalues), reproduced.

    Bias-corrected α_i = 1 + (n_i−1)/Σ ln(λ_j/λ_i); tails shorter than 8 (or degenerate, or α ≤ 1) keep D = 1.
    WWFit's small-N routine ranks tails by J = D − 0.868/√n, but WWFit.__init__ then re-selects by argmin D,
    so the reported fit is the argmin-D one; if no tail qualifies, the whole sample (i = 0) is fitted.
    """
    N = lam.shape[0]
    t = torch.as_tensor(lam, dtype=torch.float64)
    log_l = torch.log(t)
    idx = torch.arange(N - 1)
    alphas, s = _tail_alphas(log_l, idx, correction=1.0)
    n = (N - idx).to(torch.float64)
    valid = (n >= SMALL_N_K_MIN) & (s > 1e-12) & (alphas > 1.0)
    Ds = torch.ones_like(alphas)
    if bool(valid.any()):
        Ds[valid] = _ks_distances(t, log_l, idx[valid], alphas[valid])
    elif float(s[0]) > 1e-12:
        Ds[0] = _ks_distances(t, log_l, idx[:1], alphas[:1])[0]
    else:
        return PowerLawFit(1.0, float(lam[0]), 1.0, N, 0.0, lam[:-1], alphas.numpy(), Ds.numpy(), "degenerate")
    best = int(torch.argmin(Ds))
    alpha = float(alphas[best])
    n_best = N - best
    return PowerLawFit(alpha=alpha, xmin=float(lam[best]), D=float(Ds[best]), num_pl_spikes=int(n_best),
                       sigma=(alpha - 1.0) / np.sqrt(n_best), candidates=lam[:-1], alphas=alphas.numpy(),
                       Ds=Ds.numpy(), status="small-sample fit")


def alpha_ww(evals: np.ndarray, thresh: float = EVALS_THRESH, device: str | torch.device = "cpu") -> PowerLawFit:
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
    return _fit(lam, np.arange(lam.size - 1), device)


def hill_peak_xmin(lam: np.ndarray, bins: int = HILL_BINS) -> float:
    """xmin_peak: 10^(left edge of the fullest bin) of a histogram of log10 λ over [min, max]."""
    counts, edges = np.histogram(np.log10(lam), bins=bins)
    return float(10.0 ** edges[int(np.argmax(counts))])


def alpha_hill(evals: np.ndarray, xmin: str = "peak", bins: int = HILL_BINS,
               device: str | torch.device = "cpu") -> PowerLawFit:
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
        return _fit(lam, np.array([lam.size // 2]), device)
    if xmin != "peak":
        raise ValueError(f"unknown xmin rule {xmin!r}: use 'peak' or 'mid'")
    peak = hill_peak_xmin(lam, bins)
    cand = lam[:-1]
    keep = (cand >= np.log10(0.95 * peak)) & (cand <= 1.5 * peak)
    idx = np.nonzero(keep)[0]
    if idx.size == 0:   # the reference then returns alphas[0] = 0 with D = 1; report it as a failed fit
        return PowerLawFit.failed("no xmin candidates near the ESD peak")
    return _fit(lam, idx, device)


def quality_label(alpha: float) -> str:
    """HT-SR reading of α: < 2 over-trained, > 6 under-trained (weightwatcher's warning labels)."""
    if not np.isfinite(alpha):
        return "no fit"
    if alpha < 2.0:
        return "over-trained"
    if alpha > 6.0:
        return "under-trained"
    return "ok"
