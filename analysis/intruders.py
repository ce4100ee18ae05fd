"""Intruder dimensions and spectral diffs between a base and a fine-tuned model (Shuttleworth et al., 2024).

Implements "LoRA vs Full Fine-tuning: An Illusion of Equivalence" (Shuttleworth, Andreas, Torralba, Sharma):
for one matrix, W0 = U0 Σ0 V0ᵀ (base) and W = U Σ Vᵀ (fine-tuned; for LoRA the merged W0 + s·B A).
For each of the top-k fine-tuned left singular vectors u_j, s_j = max_i |u_jᵀ u0_i| over all base left
singular vectors; u_j is an *intruder dimension* when s_j < ε (defaults k = 10, ε = 0.5).

Conventions:
- "All base left singular vectors" are the min(rows, cols) columns of the thin SVD, as in the paper. For a
  wide or square matrix (rows ≤ cols) they are a complete basis of R^rows; for a tall one (rows > cols) they span
  only the cols-dimensional column space of W0, so a fine-tuned direction outside it scores low by construction.
- SVDs run on CPU in float64 for matrices up to FLOAT64_MAX_ELEMENTS entries (4096 × 4096), float32 beyond
  (the `svd_dtype` column says which).
- Intruder ranks are 1-based positions in the fine-tuned spectrum (1 = largest singular value).
- ΔW = W − W0: its singular values, the entropy effective rank of Roy & Vetterli, exp(H(p)) with p = σ/Σσ, and
  the numeric rank (#σ > σ_max · max(rows, cols) · eps(float32), float32 being the weights' working precision).
- Mitigation (later versions of the paper; peft's `reduce_intruder_dimension`):
  W' = W + Σ_{j ∈ intruders} (λ − 1) σ_j u_j v_jᵀ.
- The base SVD (U0, Σ0) is the same for every fine-tune of a base, so it is cached on disk under
  data_dir()/svd-cache/, keyed by the base source's identity and the tensor name, as safetensors.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch

from analysis.config import data_dir
from analysis.types import MatrixInfo, SpectrascopeError

TOP_K = 10
EPSILON = 0.5
LAMBDA = 0.7
SWEEP_EPSILONS = tuple(round(0.05 * i, 2) for i in range(1, 20))   # 0.05 … 0.95, a grid over (0, 1)
FLOAT64_MAX_ELEMENTS = 4096 * 4096
CACHE_VERSION = 1
SKIP_MODULES = ("embedding", "head")
Progress = Callable[[int, int, str], None]
BaseSvd = Callable[[MatrixInfo, torch.Tensor], "tuple[torch.Tensor, torch.Tensor, bool]"]


# ---------------------------------------------------------------- math on one matrix

def svd_dtype(rows: int, cols: int) -> torch.dtype:
    """float64 for matrices up to 4096 × 4096 entries, float32 for bigger ones (CPU time and memory)."""
    return torch.float64 if rows * cols <= FLOAT64_MAX_ELEMENTS else torch.float32


def svd(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD W = U diag(S) Vh, singular values descending, in svd_dtype(W.shape)."""
    return torch.linalg.svd(W.to(svd_dtype(*W.shape)), full_matrices=False)


def similarities(U0: torch.Tensor, U: torch.Tensor, top_k: int = TOP_K) -> tuple[torch.Tensor, torch.Tensor]:
    """s_j = max_i |u_jᵀ u0_i| for the top-k columns u_j of U; also the block |U_kᵀ U0| of shape (k, r0)."""
    k = min(top_k, U.shape[1])
    overlap = (U[:, :k].T @ U0.to(U.dtype)).abs()            # (k, r0): fine-tuned × base
    return overlap.max(dim=1).values, overlap


def effective_rank(sigmas: np.ndarray) -> float:
    """Roy & Vetterli's effective rank exp(H(p)), p = σ / Σσ (0 for an all-zero spectrum)."""
    s = np.asarray(sigmas, dtype=np.float64)
    total = s.sum()
    if not np.isfinite(total) or total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def numeric_rank(sigmas: np.ndarray, shape: tuple[int, int], eps: float = float(np.finfo(np.float32).eps)) -> int:
    """Number of σ above σ_max · max(shape) · eps (numpy's matrix_rank rule, at float32 precision by default)."""
    s = np.asarray(sigmas, dtype=np.float64)
    if s.size == 0 or s.max() <= 0:
        return 0
    return int((s > s.max() * max(shape) * eps).sum())


def scale_directions(W: torch.Tensor, U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor,
                     idx: list[int], lam: float = LAMBDA) -> torch.Tensor:
    """W' = W + Σ_{j ∈ idx} (λ − 1) σ_j u_j v_jᵀ, returned in W's dtype (λ = 1: W itself; λ = 0: removed)."""
    if not idx or lam == 1:
        return W.clone()
    j = torch.as_tensor(idx, dtype=torch.long)
    update = (U[:, j] * ((lam - 1.0) * S[j])) @ Vh[j, :]     # (rows, |idx|) @ (|idx|, cols)
    return (W.to(update.dtype) + update).to(W.dtype)


@dataclass
class MatrixComparison:
    """Base vs fine-tuned spectra of one matrix; intruders are derived from the similarities for any ε."""

    info: MatrixInfo
    similarities: np.ndarray     # s_j for the top-k fine-tuned left singular vectors, (k,)
    overlap: np.ndarray          # |U_kᵀ U0|, (k, min(rows, cols)), float32
    sigmas: np.ndarray           # fine-tuned singular values, descending
    base_sigmas: np.ndarray      # base singular values, descending
    delta_sigmas: np.ndarray     # singular values of ΔW = W − W0, descending
    svd_dtype: str
    base_cached: bool = False
    finetuned_name: str | None = None

    def intruders(self, epsilon: float = EPSILON) -> list[int]:
        """0-based indices j (into the fine-tuned spectrum) of the intruder dimensions at threshold ε."""
        return [int(j) for j in np.flatnonzero(self.similarities < epsilon)]

    def row(self, epsilon: float = EPSILON) -> dict:
        idx = self.intruders(epsilon)
        i = self.info
        d = self.delta_sigmas
        return {"name": i.name, "layer": i.layer, "module": i.module, "rows": i.rows, "cols": i.cols,
                "intruders": len(idx),
                "min_similarity": float(self.similarities.min()) if self.similarities.size else float("nan"),
                "intruder_ranks": [j + 1 for j in idx],
                "intruder_sigmas": [float(self.sigmas[j]) for j in idx],
                "top_sigma": float(self.sigmas[0]) if self.sigmas.size else float("nan"),
                "base_top_sigma": float(self.base_sigmas[0]) if self.base_sigmas.size else float("nan"),
                "delta_effective_rank": effective_rank(d),
                "delta_numeric_rank": numeric_rank(d, (i.rows, i.cols)),
                "delta_spectral_norm": float(d[0]) if d.size else 0.0,
                "delta_fro_norm": float(np.sqrt((d.astype(np.float64) ** 2).sum())),
                "finetuned_name": self.finetuned_name or i.name, "svd_dtype": self.svd_dtype,
                "base_cached": self.base_cached, "notes": "; ".join(i.notes)}


def _compare(info: MatrixInfo, W0: torch.Tensor, W: torch.Tensor, top_k: int,
             base_usv: tuple[torch.Tensor, torch.Tensor] | None = None):
    """compare_matrix plus the fine-tuned SVD (U, S, Vh), which mitigation needs."""
    if tuple(W0.shape) != tuple(W.shape):
        raise SpectrascopeError(f"shape mismatch at {info.name!r}: base {tuple(W0.shape)}, "
                                f"fine-tuned {tuple(W.shape)}")
    U0, S0 = base_usv if base_usv is not None else svd(W0)[:2]
    dtype = svd_dtype(*W.shape)
    if torch.equal(W0, W):                 # untouched by fine-tuning (e.g. not a LoRA target): U = U0, ΔW = 0
        U, S, Vh = U0, S0, None
        sims, overlap = similarities(U0, U, top_k)
        sims = torch.ones_like(sims)       # exactly 1 by definition, free of rounding
        delta = torch.zeros(min(W.shape), dtype=dtype)
    else:
        U, S, Vh = svd(W)
        sims, overlap = similarities(U0, U, top_k)
        delta = torch.linalg.svdvals(W.to(dtype) - W0.to(dtype))
    cmp = MatrixComparison(info=info, similarities=sims.cpu().numpy(), overlap=overlap.float().cpu().numpy(),
                           sigmas=S.cpu().numpy(), base_sigmas=S0.cpu().numpy(), delta_sigmas=delta.cpu().numpy(),
                           svd_dtype=str(dtype).replace("torch.", ""))
    return cmp, (U, S, Vh)


def compare_matrix(info: MatrixInfo, W0: torch.Tensor, W: torch.Tensor, top_k: int = TOP_K,
                   base_usv: tuple[torch.Tensor, torch.Tensor] | None = None) -> MatrixComparison:
    """Intruder similarities and ΔW spectrum of one (base, fine-tuned) pair of 2-D tensors of equal shape.

    base_usv: the base's (U0, Σ0) if already known (e.g. from the cache); computed otherwise.
    """
    return _compare(info, W0, W, top_k, base_usv)[0]


def _nonfinite(W: torch.Tensor) -> str | None:
    bad = ~torch.isfinite(W)
    if bool(bad.any()):
        return f"{int(torch.isnan(W).sum())} NaN, {int(torch.isinf(W).sum())} Inf"
    return None


# ---------------------------------------------------------------- report

@dataclass
class IntruderReport:
    """Per-matrix intruder counts and ΔW spectra for one base / fine-tuned pair at (top_k, ε)."""

    base: str
    finetuned: str
    top_k: int
    epsilon: float
    comparisons: list[MatrixComparison]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    cache_hits: int = 0            # base SVDs read from the on-disk cache
    cache_misses: int = 0          # base SVDs computed (and cached when the base has an identity)
    elapsed_s: float = 0.0

    @cached_property
    def rows(self) -> pd.DataFrame:
        """One row per matrix: name, layer, module, rows, cols, intruders, min_similarity, intruder_ranks, …"""
        df = pd.DataFrame([c.row(self.epsilon) for c in self.comparisons], columns=ROW_COLUMNS)
        df["layer"] = df["layer"].astype("Int64")            # None for unnumbered matrices (e.g. a pooler)
        return df

    @cached_property
    def per_layer(self) -> pd.DataFrame:
        """One row per transformer block: matrices, intruders (sum), min_similarity (min); sums to `total`."""
        df = self.rows[self.rows["layer"].notna() & ~self.rows["module"].isin(SKIP_MODULES)]
        if df.empty:
            return pd.DataFrame(columns=["layer", "matrices", "intruders", "min_similarity"])
        g = df.groupby(df["layer"].astype(int))
        out = pd.DataFrame({"matrices": g.size(), "intruders": g["intruders"].sum(),
                            "min_similarity": g["min_similarity"].min()})
        return out.reset_index().rename(columns={"index": "layer"})

    @property
    def block_comparisons(self) -> list[MatrixComparison]:
        """The transformer-block matrices (those with a layer index): what `total`, `sweep` and `per_layer` count."""
        return [c for c in self.comparisons if _is_block(c.info)]

    @property
    def other_comparisons(self) -> list[MatrixComparison]:
        """Compared matrices outside the blocks (embeddings, head, pooler …, with include_embeddings)."""
        return [c for c in self.comparisons if not _is_block(c.info)]

    @property
    def total(self) -> int:
        """Intruder dimensions summed over the transformer-block matrices only (see `counted`, `total_other`)."""
        return int(sum(len(c.intruders(self.epsilon)) for c in self.block_comparisons))

    @property
    def total_other(self) -> int:
        """Intruder dimensions in the compared matrices outside the blocks (not in `total`)."""
        return int(sum(len(c.intruders(self.epsilon)) for c in self.other_comparisons))

    @property
    def counted(self) -> str:
        """What `total` counts, in words: the CLI, the app and the benchmark print this with the number."""
        n, other = len(self.block_comparisons), self.other_comparisons
        text = f"{n} transformer-block matri" + ("x" if n == 1 else "ces")
        if other:
            text += (f"; {self.total_other} more in {len(other)} other matri" + ("x" if len(other) == 1 else "ces")
                     + " (embeddings/head …, not in the total)")
        return text

    def sweep(self, epsilons: Iterable[float] | None = None) -> pd.DataFrame:
        """Total intruder count vs ε (the paper's count-vs-ε curve) over the block matrices (as `total`) and how
        many of them have any."""
        eps = list(SWEEP_EPSILONS if epsilons is None else epsilons)
        rows = []
        blocks = self.block_comparisons
        for e in eps:
            counts = [len(c.intruders(e)) for c in blocks]
            rows.append({"epsilon": float(e), "intruders": int(sum(counts)),
                         "matrices_with_intruders": int(sum(n > 0 for n in counts))})
        return pd.DataFrame(rows, columns=["epsilon", "intruders", "matrices_with_intruders"])

    def comparison(self, name: str) -> MatrixComparison:
        for c in self.comparisons:
            if name in (c.info.name, c.finetuned_name):
                return c
        raise SpectrascopeError(f"matrix {name!r} was not compared; pick one of the report's rows "
                                f"(e.g. {self.comparisons[0].info.name!r})" if self.comparisons else
                                f"matrix {name!r} was not compared (the report is empty)")

    def similarity(self, name: str, m: int | None = None) -> np.ndarray:
        """|U0ᵀU| block of one matrix: top-k fine-tuned (rows) × top-m base (columns) singular vectors."""
        block = self.comparison(name).overlap
        return block if m is None else block[:, :m]

    def to_dict(self) -> dict:
        rows = json.loads(self.rows.to_json(orient="records"))
        return {"base": self.base, "finetuned": self.finetuned, "top_k": self.top_k, "epsilon": self.epsilon,
                "total": self.total, "total_other": self.total_other, "counted": self.counted,
                "block_matrices": len(self.block_comparisons), "matrices": len(self.comparisons), "flags": self.flags,
                "skipped": [list(s) for s in self.skipped], "rows": rows,
                "per_layer": json.loads(self.per_layer.to_json(orient="records")),
                "sweep": self.sweep().to_dict(orient="records")}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def summary(self) -> str:
        return f"total intruders: {self.total} in {self.counted} (k={self.top_k}, epsilon={self.epsilon:g})"


def _is_block(info: MatrixInfo) -> bool:
    """A transformer-block matrix: it has a layer index and is not an embedding or head."""
    return info.layer is not None and info.module not in SKIP_MODULES


ROW_COLUMNS = ["name", "layer", "module", "rows", "cols", "intruders", "min_similarity", "intruder_ranks",
               "intruder_sigmas", "top_sigma", "base_top_sigma", "delta_effective_rank", "delta_numeric_rank",
               "delta_spectral_norm", "delta_fro_norm", "finetuned_name", "svd_dtype", "base_cached", "notes"]


def _check_settings(top_k: int, epsilon: float) -> None:
    if int(top_k) < 1:
        raise SpectrascopeError(f"top_k must be at least 1 (got {top_k})")
    if not 0 < float(epsilon) <= 1:
        raise SpectrascopeError(f"epsilon must be in (0, 1] (got {epsilon}); the paper uses 0.5")


def compare_matrices(pairs: Iterable[tuple[MatrixInfo, torch.Tensor, torch.Tensor]], top_k: int = TOP_K,
                     epsilon: float = EPSILON, progress: Progress | None = None, *, total: int | None = None,
                     base_svd: BaseSvd | None = None, base_label: str = "base",
                     finetuned_label: str = "fine-tuned") -> IntruderReport:
    """Compare any stream of (info, W0, W) triples, e.g. per-expert merged matrices of a MoE-LoRA run.

    base_svd(info, W0) -> (U0, Σ0, from_cache) supplies the base SVD (see BaseSvdCache); computed otherwise.
    Matrices with NaN/Inf are skipped and listed in report.skipped.
    """
    _check_settings(top_k, epsilon)
    t0 = time.perf_counter()
    report = IntruderReport(base=base_label, finetuned=finetuned_label, top_k=int(top_k),
                            epsilon=float(epsilon), comparisons=[])
    for n, (info, W0, W) in enumerate(pairs, 1):
        _add_one(report, info, W0, W, base_svd)
        if progress:
            progress(n, total or n, info.name)
    report.elapsed_s = time.perf_counter() - t0
    return report


def _add_one(report: IntruderReport, info: MatrixInfo, W0: torch.Tensor, W: torch.Tensor,
             base_svd: BaseSvd | None, finetuned_name: str | None = None):
    """Compare one pair into the report (or list it as skipped); returns the fine-tuned (U, S, Vh) or None."""
    bad = _nonfinite(W0) or _nonfinite(W)
    if bad:
        report.skipped.append((info.name, f"non-finite weights ({bad}): not compared"))
        return None
    hit, usv = False, None
    if base_svd is not None:
        U0, S0, hit = base_svd(info, W0)
        usv = (U0, S0)
        report.cache_hits += int(hit)
        report.cache_misses += int(not hit)
    cmp, usv_ft = _compare(info, W0, W, report.top_k, usv)
    cmp.base_cached, cmp.finetuned_name = hit, finetuned_name
    report.comparisons.append(cmp)
    return usv_ft


# ---------------------------------------------------------------- base SVD cache

class BaseSvdCache:
    """On-disk cache of the base model's (U0, Σ0) per tensor, as safetensors in data_dir()/svd-cache/.

    Keyed by the base source's identity() (paths, sizes, mtimes) and the tensor name, hashed to a file name.
    A source without an identity, or marked "cacheable": False (an in-memory module), is never cached. `hits` / `misses` count look-ups.
    """

    def __init__(self, source, folder: Path | None = None):
        ident = source.identity() if hasattr(source, "identity") else None
        cacheable = bool(ident) and ident.get("cacheable", True) is not False
        self.key = json.dumps(ident, sort_keys=True, default=str) if cacheable else None
        self.folder = Path(folder) if folder is not None else data_dir() / "svd-cache"
        self.hits = self.misses = 0

    def path(self, info: MatrixInfo) -> Path:
        blob = json.dumps({"source": self.key, "name": info.name, "shape": [info.rows, info.cols],
                           "dtype": str(svd_dtype(info.rows, info.cols)), "version": CACHE_VERSION})
        return self.folder / (hashlib.sha256(blob.encode()).hexdigest()[:40] + ".safetensors")

    def __call__(self, info: MatrixInfo, W0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        from safetensors.torch import load_file, save_file
        path = self.path(info) if self.key else None
        if path is not None and path.exists():
            try:
                t = load_file(str(path))
                U0, S0 = t["U"], t["S"]
                if U0.shape[0] == W0.shape[0] and S0.numel() == min(W0.shape):
                    self.hits += 1
                    return U0, S0, True
            except (OSError, KeyError, RuntimeError, ValueError):
                pass                                       # damaged entry: recompute and overwrite
        U0, S0, _ = svd(W0)
        self.misses += 1
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".safetensors")
                os.close(fd)
                save_file({"U": U0.contiguous(), "S": S0.contiguous()}, tmp)
                os.replace(tmp, path)                      # atomic: never a half-written entry
            except OSError:
                pass                                       # a read-only data dir must not break the comparison
        return U0, S0, False


# ---------------------------------------------------------------- pairing two sources

def _find(name: str, by_name: dict[str, MatrixInfo]) -> MatrixInfo | None:
    """Exact name, else the unique name equal up to a leading prefix ("bert." / "model." …)."""
    if name in by_name:
        return by_name[name]
    hits = [i for n, i in by_name.items() if n.endswith("." + name) or name.endswith("." + n)]
    return hits[0] if len(hits) == 1 else None


def match_matrices(base_source, finetuned_source, include_embeddings: bool = False
                   ) -> list[tuple[MatrixInfo, MatrixInfo]]:
    """(base, fine-tuned) MatrixInfo pairs, in base order; SpectrascopeError naming the first mismatch."""
    b_label, f_label = _label(base_source), _label(finetuned_source)
    base = [i for i in base_source.matrices() if include_embeddings or i.module not in SKIP_MODULES]
    if not base:
        raise SpectrascopeError(f"base {b_label} has no weight matrices to compare"
                                + ("" if include_embeddings else " (embeddings and head are skipped)"))
    fine = {i.name: i for i in finetuned_source.matrices()}
    found = [(b, _find(b.name, fine)) for b in base]
    if all(f is None for _, f in found):
        first_f = next((n for n, i in fine.items() if i.module not in SKIP_MODULES), next(iter(fine), None))
        raise SpectrascopeError(f"{b_label} and {f_label} have no weight matrices in common (different "
                                f"architectures?): base has {base[0].name!r}"
                                + (f", fine-tuned has {first_f!r}" if first_f else ", fine-tuned has none"))
    for b, f in found:
        if f is None:
            raise SpectrascopeError(f"fine-tuned {f_label} has no matrix {b.name!r} of base {b_label}: "
                                    f"compare a fine-tune with its own base")
        if (b.rows, b.cols) != (f.rows, f.cols):
            raise SpectrascopeError(f"shape mismatch at {b.name!r}: base {b.rows}×{b.cols}, fine-tuned "
                                    f"{f.rows}×{f.cols}; {f_label} is not a fine-tune of {b_label}")
    return found


def _label(source) -> str:
    return str(getattr(source, "label", None) or type(source).__name__)


def compare(base_source, finetuned_source, top_k: int = TOP_K, epsilon: float = EPSILON,
            progress: Progress | None = None, *, include_embeddings: bool = False,
            use_cache: bool = True) -> IntruderReport:
    """Intruder dimensions of every matching matrix of two ModelSources (see docs/ARCHITECTURE.md).

    Matrices are matched by name (or by a unique suffix when one side has an extra prefix); embeddings and the
    head are skipped unless include_embeddings. The base SVD is read from / written to the on-disk cache.
    """
    _check_settings(top_k, epsilon)
    pairs = match_matrices(base_source, finetuned_source, include_embeddings)
    cache = BaseSvdCache(base_source) if use_cache else None

    def stream():
        for b, f in pairs:
            yield b, base_source.load(b.name), finetuned_source.load(f.name)

    report = compare_matrices(stream(), top_k, epsilon, progress, total=len(pairs), base_svd=cache,
                              base_label=_label(base_source), finetuned_label=_label(finetuned_source))
    names = {b.name: f.name for b, f in pairs}
    for c in report.comparisons:
        c.finetuned_name = names[c.info.name]
    report.flags = list(dict.fromkeys([*getattr(base_source, "flags", ()), *getattr(finetuned_source, "flags", ())]))
    return report


# ---------------------------------------------------------------- mitigation writer

_ST_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64", torch.int32: "I32",
             torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".onnx")
NOT_COPIED = ("adapter_config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass
class MitigationResult:
    """Where the mitigated checkpoint went, the comparison it was based on, and what was scaled."""

    out_dir: Path
    report: IntruderReport
    lam: float
    scaled: dict[str, list[int]]            # matrix name -> 1-based ranks of the scaled directions
    notes: list[str] = field(default_factory=list)

    @property
    def total_scaled(self) -> int:
        return sum(len(v) for v in self.scaled.values())


def _stored_tensors(source) -> dict[str, tuple[torch.dtype, tuple, Callable]]:
    """name -> (dtype, shape, loader) of every tensor the source's checkpoint stores (its `reader`), or {}."""
    reader = getattr(source, "reader", None)
    entries = getattr(reader, "entries", None) or {}
    out: dict[str, tuple[torch.dtype, tuple, Callable]] = {}
    for name, (shape, dtype) in entries.items():
        dt = getattr(torch, str(dtype), None)
        if dt not in _ST_NAMES:
            raise SpectrascopeError(f"tensor {name!r} of {_label(source)} has dtype {dtype}, which the mitigation "
                                    "writer does not handle")
        out[name] = (dt, tuple(shape), lambda name=name: reader.get(name))
    return out


def write_safetensors_streaming(path: Path, specs: list[tuple[str, torch.dtype, tuple]],
                                produce: Callable[[str], torch.Tensor], metadata: dict | None = None) -> None:
    """Write a .safetensors file one tensor at a time (the header is known from specs up front)."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, dtype, shape in specs:
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(".tmp-" + path.name)
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for name, dtype, shape in specs:
            t = produce(name).to(dtype).contiguous()
            if tuple(t.shape) != tuple(shape):
                raise SpectrascopeError(f"internal: tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
            fh.write(t.reshape(-1).view(torch.uint8).numpy().data)
    os.replace(tmp, path)


def mitigate(base_source, finetuned_source, out_dir, lam: float = LAMBDA, top_k: int = TOP_K,
             epsilon: float = EPSILON, progress: Progress | None = None, *, include_embeddings: bool = False,
             use_cache: bool = True) -> MitigationResult:
    """Write a checkpoint whose intruder singular values are scaled by λ: W' = W + Σ (λ − 1) σ_j u_j v_jᵀ.

    out_dir gets model.safetensors with the fine-tuned model's tensor names and dtypes (merged-LoRA sources
    use the base names; "transposed Conv1D" matrices are written back transposed) plus the non-weight files of
    finetuned_source.hf_folder() (config, tokenizer), so transformers' from_pretrained loads it. Tensors are
    streamed one at a time: the stored ones from the source's `reader` (ModelSource), 2-D matrices through
    `.load` (LoRA merged). Adapter `modules_to_save` copies are not written (they live only in the adapter).
    """
    _check_settings(top_k, epsilon)
    if not (math.isfinite(lam) and lam >= 0):
        raise SpectrascopeError(f"mitigation λ must be a finite number ≥ 0 (got {lam}); the paper uses 0.7")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise SpectrascopeError(f"{out_dir} already exists and is not an empty folder; choose a new folder")
    pairs = match_matrices(base_source, finetuned_source, include_embeddings)
    base_of = {f.name: b for b, f in pairs}
    ft_infos = {i.name: i for i in finetuned_source.matrices()}
    folder = finetuned_source.hf_folder() if hasattr(finetuned_source, "hf_folder") else None
    cache = BaseSvdCache(base_source) if use_cache else None
    report = IntruderReport(base=_label(base_source), finetuned=_label(finetuned_source), top_k=int(top_k),
                            epsilon=float(epsilon), comparisons=[])
    scaled: dict[str, list[int]] = {}
    notes: list[str] = []
    t0 = time.perf_counter()

    stored = _stored_tensors(finetuned_source)
    if not stored:
        notes.append("the source exposes no stored tensors: only its 2-D matrices were written")
    specs = [(n, dt, shape) for n, (dt, shape, _) in stored.items()]
    for name, info in ft_infos.items():              # matrices not among the stored tensors (or none stored)
        if name not in stored and (not stored or name in base_of):
            specs.append((name, torch.float32, (info.cols, info.rows) if _transposed(info) else (info.rows, info.cols)))

    def produce(name: str) -> torch.Tensor:
        info = ft_infos.get(name)
        if info is None:                             # norms, biases, buffers: as stored
            return stored[name][2]()
        W = finetuned_source.load(name)              # (out, in), float32, LoRA merged
        b = base_of.get(name)
        if b is not None:
            usv = _add_one(report, b, base_source.load(b.name), W, cache, name)
            idx = report.comparisons[-1].intruders(epsilon) if usv is not None else []
            if idx:
                scaled[b.name] = [j + 1 for j in idx]
                W = scale_directions(W, *usv, idx, lam)
            if progress:
                progress(len(report.comparisons) + len(report.skipped), len(pairs), b.name)
        return W.T if _transposed(info) else W       # GPT-2 Conv1D weights are stored (in, out)

    out_dir.mkdir(parents=True, exist_ok=True)
    write_safetensors_streaming(out_dir / "model.safetensors", specs, produce)
    if folder:
        for p in Path(folder).iterdir():
            if p.is_file() and not p.name.endswith(WEIGHT_SUFFIXES) and p.name not in NOT_COPIED:
                shutil.copy2(p, out_dir / p.name)
    report.elapsed_s = time.perf_counter() - t0
    report.flags = list(dict.fromkeys([*getattr(base_source, "flags", ()), *getattr(finetuned_source, "flags", ())]))
    (out_dir / "spectrascope_mitigation.json").write_text(json.dumps(
        {"paper": "Shuttleworth et al., LoRA vs Full Fine-tuning: An Illusion of Equivalence",
         "base": report.base, "finetuned": report.finetuned, "lambda": lam, "top_k": top_k, "epsilon": epsilon,
         "scaled": scaled, "notes": notes}, indent=1))
    return MitigationResult(out_dir=out_dir, report=report, lam=float(lam), scaled=scaled, notes=notes)


def _transposed(info: MatrixInfo) -> bool:
    return any("transposed" in n.lower() for n in info.notes)
