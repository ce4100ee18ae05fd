"""Evaluation metrics: accuracy, macro-F1, MCC, perplexity; mean ± 95 % CI, Wilson intervals, paired bootstrap."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from analysis.types import SpectrascopeError


def _pair(y_true: Sequence[int], y_pred: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(list(y_true)), np.asarray(list(y_pred))
    if t.shape != p.shape or t.ndim != 1:
        raise SpectrascopeError(f"y_true and y_pred must be two lists of the same length, got {t.shape} and "
                                f"{p.shape}")
    if t.size == 0:
        raise SpectrascopeError("no predictions to score: the evaluation set is empty")
    return t, p


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int],
                     labels: Sequence[int] | None = None) -> tuple[np.ndarray, list]:
    """Counts C[i, j] of true label i predicted as j, and the label order (default: sorted union of both)."""
    t, p = _pair(y_true, y_pred)
    labels = sorted(set(t.tolist()) | set(p.tolist())) if labels is None else list(labels)
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for a, b in zip(t.tolist(), p.tolist()):
        if a in index and b in index:
            matrix[index[a], index[b]] += 1
    return matrix, labels


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Fraction of exact matches."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(t == p))


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int] | None = None) -> float:
    """Unweighted mean of per-class F1 over labels (default: every class in y_true or y_pred, as sklearn does).

    A class with no true and no predicted examples (only possible when labels is given) has F1 = 0.
    """
    matrix, _ = confusion_matrix(y_true, y_pred, labels)
    tp = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    denom = predicted + actual
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())


def mcc(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Matthews correlation for any number of classes (Gorodkin's R_K); 0 when it is undefined (a constant side).

    With C the confusion matrix, c = trace(C), s = n, t_k = true counts, p_k = predicted counts:
    MCC = (c·s − Σ p_k t_k) / sqrt((s² − Σ p_k²)(s² − Σ t_k²)).  For two classes this is the usual
    (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)).
    """
    matrix, _ = confusion_matrix(y_true, y_pred)
    matrix = matrix.astype(float)
    t_k, p_k = matrix.sum(axis=1), matrix.sum(axis=0)
    c, s = np.trace(matrix), matrix.sum()
    numerator = c * s - float(p_k @ t_k)
    denominator = math.sqrt((s * s - float(p_k @ p_k)) * (s * s - float(t_k @ t_k)))
    return 0.0 if denominator == 0 else float(numerator / denominator)


def perplexity(mean_loss: float) -> float:
    """exp(mean token cross-entropy in nats); inf when that overflows."""
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return math.inf


CLASSIFICATION_METRICS = {"accuracy": accuracy, "macro_f1": macro_f1, "mcc": mcc}


def score(metrics: Iterable[str], y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, float]:
    """The named classification metrics (accuracy, macro_f1, mcc) as {name: value}."""
    out = {}
    for name in metrics:
        if name not in CLASSIFICATION_METRICS:
            raise SpectrascopeError(f"unknown metric {name!r}: use {', '.join(CLASSIFICATION_METRICS)}")
        out[name] = CLASSIFICATION_METRICS[name](y_true, y_pred)
    return out


@dataclass(frozen=True)
class MeanCI:
    """Mean over n runs with a Student-t confidence interval; with n = 1 the interval is undefined (NaN)."""

    mean: float
    half_width: float      # NaN when n = 1
    n: int
    std: float             # sample standard deviation (ddof 1); NaN when n = 1
    confidence: float = 0.95

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    @property
    def defined(self) -> bool:
        """False when the interval cannot be computed (a single run)."""
        return not math.isnan(self.half_width)

    def format(self, digits: int = 3) -> str:
        """'0.850 ± 0.012 (95% CI, n=3)', or '0.850 (n=1: no CI, run more seeds)'."""
        if not self.defined:
            return f"{self.mean:.{digits}f} (n=1: no CI, run more seeds)"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f} ({self.confidence:.0%} CI, n={self.n})"

    def __str__(self) -> str:
        return self.format()


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """Mean ± t_{(1+confidence)/2, n-1} · s / sqrt(n) of per-seed results; NaN half-width for a single value."""
    from scipy.stats import t as student_t

    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise SpectrascopeError("no results to summarise: run at least one seed")
    if not 0 < confidence < 1:
        raise SpectrascopeError(f"confidence must be between 0 and 1, got {confidence}")
    if x.size == 1:
        return MeanCI(float(x[0]), math.nan, 1, math.nan, confidence)
    std = float(x.std(ddof=1))
    half = float(student_t.ppf((1 + confidence) / 2, x.size - 1) * std / math.sqrt(x.size))
    return MeanCI(float(x.mean()), half, int(x.size), std, confidence)


def summarise_seeds(results: Sequence[dict[str, float]], confidence: float = 0.95) -> dict[str, MeanCI]:
    """Per-seed metric dicts -> {metric: MeanCI} over the metrics every seed reported."""
    if not results:
        raise SpectrascopeError("no results to summarise: run at least one seed")
    names = [k for k in results[0] if all(k in r for r in results)]
    return {k: mean_ci([r[k] for r in results], confidence) for k in names}


# ----------------------------------------------------------------------------------------------- intervals

def _z(confidence: float) -> float:
    from statistics import NormalDist

    if not 0 < confidence < 1:
        raise SpectrascopeError(f"confidence must be between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf((1 + confidence) / 2)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (e.g. accuracy over n test rows): (low, high) with
    centre (p + z²/2n) / (1 + z²/n) and half-width z / (1 + z²/n) · sqrt(p(1 − p)/n + z²/4n²)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise SpectrascopeError(f"a binomial interval needs at least one row, got n={n!r}")
    if not 0 <= successes <= n:
        raise SpectrascopeError(f"successes must be between 0 and n={n}, got {successes!r}")
    z = _z(confidence)
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)         # exact at the ends, no rounding residue
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class PairedDiff:
    """Mean paired difference (arm − reference) with a percentile bootstrap interval."""

    mean: float
    low: float
    high: float
    seeds: int
    rows: int
    resamples: int
    confidence: float = 0.95

    @property
    def detectable(self) -> bool:
        """False when the interval contains 0."""
        return not self.low <= 0.0 <= self.high

    def verdict(self, arm: str = "arm", reference: str = "reference") -> str:
        """'no detectable difference at this budget', '<arm> better' or '<reference> better'."""
        if not self.detectable:
            return "no detectable difference at this budget"
        return f"{arm} better" if self.low > 0 else f"{reference} better"


def paired_bootstrap(arm, reference, resamples: int = 10_000, seed: int = 0,
                     confidence: float = 0.95) -> PairedDiff:
    """Paired bootstrap of mean(arm) − mean(reference) over the same rows: per-row scores (1/0 for correct /
    wrong) as (seeds, rows) arrays (or one row list for one seed).

    Every seed scored the same rows, so a resample draws row indices once and uses them for both arms and every
    seed: the statistic is the average over seeds of the per-seed mean differences. Percentile interval,
    `resamples` draws from a fixed `seed` (numpy only, vectorised).
    """
    a, b = np.asarray(arm, dtype=float), np.asarray(reference, dtype=float)
    a, b = (a[None] if a.ndim == 1 else a), (b[None] if b.ndim == 1 else b)
    if a.shape != b.shape or a.ndim != 2:
        raise SpectrascopeError(f"paired scores must have the same (seeds, rows) shape, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise SpectrascopeError("no paired rows to compare: both arms need scored test rows")
    if not np.isfinite(a).all() or not np.isfinite(b).all():
        raise SpectrascopeError("paired scores must be finite numbers")
    if not isinstance(resamples, int) or resamples < 100:
        raise SpectrascopeError(f"resamples must be a whole number ≥ 100, got {resamples!r}")
    _z(confidence)
    seeds, n = a.shape
    d = (a - b).mean(axis=0)                       # per row: the seed-averaged difference
    rng = np.random.default_rng(seed)
    values, counts = np.unique(d, return_counts=True)
    if len(values) <= 64:                          # few distinct differences (0/1 scores): multinomial counts
        draws = rng.multinomial(n, counts / n, size=resamples) @ values / n
    else:                                          # resample row indices, in chunks of ~4M draws
        chunk = max(1, 4_000_000 // n)
        draws = np.concatenate([d[rng.integers(0, n, size=(min(chunk, resamples - i), n))].mean(axis=1)
                                for i in range(0, resamples, chunk)])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    return PairedDiff(float(d.mean()), float(low), float(high), seeds, n, resamples, confidence)
