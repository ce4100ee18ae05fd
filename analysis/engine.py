"""The spectral engine: stream a model's matrices, compute ESDs, α estimators and metrics, cache the result."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from analysis import esd
from analysis.config import data_dir
from analysis.metrics import norm_metrics
from analysis.types import MatrixInfo, SpectrascopeError

if TYPE_CHECKING:
    import pandas as pd

ENGINE_VERSION = 5          # bump when any number the engine writes changes meaning
NON_BLOCK_KINDS = ("embedding", "head")
WW_MAX_N = 50_000           # weightwatcher skips matrices with a side longer than this (max_N)
WW_MAX_EVALS = 15_000       # ... or with more eigenvalues than this (max_evals)

Progress = Callable[[int, int, str], None]

# columns of AnalysisResult.matrices, in order (the CLI contract's columns come first)
# verdict / alpha_hill_verdict: esd.verdict (thresholds esd.KS_D_MAX, ALPHA_SPURIOUS, MIN_TAIL, rank < min(N, M));
# alpha_se / alpha_hill_se: (α − 1)/√n of the tail; eig_method: "gram", or "svd" where Gram could not resolve σ
COLUMNS = ["name", "layer", "module", "rows", "cols", "alpha", "alpha_hill", "xmin", "D", "stable_rank",
           "log_spectral_norm", "num_pl_spikes", "sigma", "alpha_mid", "alpha_hill_xmin", "alpha_hill_D",
           "alpha_se", "alpha_hill_se", "alpha_hill_tail_n", "verdict", "verdict_reason", "alpha_hill_verdict",
           "alpha_hill_reason", "alpha_weighted", "log_norm", "log_alpha_norm", "entropy", "matrix_rank", "mp_edge",
           "num_spikes", "num_evals", "eig_method", "label", "status", "fit", "dtype", "notes", "ww_comparable"]
TEXT_COLUMNS = {"name", "module", "label", "status", "fit", "dtype", "notes", "ww_comparable", "verdict",
                "verdict_reason", "alpha_hill_verdict", "alpha_hill_reason", "eig_method"}
LAYER_METRICS = ["alpha", "alpha_mid", "alpha_weighted", "log_norm", "log_spectral_norm", "log_alpha_norm",
                 "stable_rank", "entropy", "num_spikes"]
# per layer also: the standard error of each mean α (√Σσ²/k) and how many of the block's fits are unreliable
LAYER_COLUMNS = ["layer", "alphalora_score", "matrices"] + LAYER_METRICS + [
    "alphalora_score_se", "alpha_se", "unreliable", "alpha_hill_unreliable"]


@dataclass
class AnalysisResult:
    """Per-matrix rows, per-layer summary, eigenvalues, and what was skipped, for one model.

    The rows are plain dicts (COLUMNS keys): the CLI writes them without importing pandas (≈0.25 s of
    every run); `matrices` and `layers` give them as DataFrames, built on first use.
    """

    model: str
    flags: list[str]
    identity: dict
    settings: dict
    rows: list[dict]
    evals: dict[str, np.ndarray]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    num_parameters: int | None = None
    elapsed_s: float = 0.0               # the analysis of the matrices
    from_cache: bool = False
    open_s: float = 0.0                  # opening before it: a download, a GGUF conversion, reading the headers

    @cached_property
    def layer_rows(self) -> list[dict]:
        """One dict per transformer block (see layer_summary)."""
        return layer_summary(self.rows)

    @cached_property
    def matrices(self) -> "pd.DataFrame":
        """One row per matrix, COLUMNS in order."""
        import pandas as pd
        return pd.DataFrame(self.rows).reindex(columns=COLUMNS)

    @cached_property
    def layers(self) -> "pd.DataFrame":
        """One row per transformer block: layer, alphalora_score, matrices, and the mean of LAYER_METRICS."""
        import pandas as pd
        return pd.DataFrame(self.layer_rows, columns=LAYER_COLUMNS)

    def layer_scores(self, column: str = "alphalora_score") -> list[float]:
        """AlphaLoRA's per-layer quality score (mean PL_Alpha_Hill of the block's matrices), layer 0..L−1."""
        return [float(r[column]) for r in self.layer_rows]

    def matrix(self, name: str) -> "pd.Series":
        """The metrics row of one matrix by its checkpoint name."""
        hit = self.matrices[self.matrices["name"] == name]
        if hit.empty:
            raise SpectrascopeError(f"matrix {name!r} is not in the analysis of {self.model}")
        return hit.iloc[0]


# ---------------------------------------------------------------- one matrix

def analyze_matrix(info: MatrixInfo, W, device: str = "cpu",
                   evals: np.ndarray | None = None) -> tuple[dict, np.ndarray | None]:
    """All metrics of one matrix; returns (row, eigenvalues) — eigenvalues None when it could not be analysed."""
    row: dict = {"name": info.name, "layer": info.layer, "module": info.module, "rows": info.rows,
                 "cols": info.cols, "dtype": info.dtype, "notes": "; ".join(info.notes)}
    M, N = min(info.rows, info.cols), max(info.rows, info.cols)
    row["ww_comparable"] = bool(esd.MIN_EVALS <= M <= WW_MAX_EVALS and N <= WW_MAX_N)
    if evals is None:
        W = esd.to_numpy(W)
        if not np.isfinite(W).all():                # one temporary bool array; counts only when something is bad
            n_nan, n_inf = int(np.isnan(W).sum()), int(np.isinf(W).sum())
            row["status"] = f"non-finite weights ({n_nan} NaN, {n_inf} Inf): not analysed"
            row["verdict"] = row["alpha_hill_verdict"] = "no fit"
            row["verdict_reason"] = row["alpha_hill_reason"] = row["status"]
            return row, None
        evals = esd.eigenvalues(W, device=device)
    row["eig_method"] = "gram"
    if esd.gram_unresolved(evals):                  # σ below ≈1e-8·σ_max: Gram cannot resolve them, SVD can
        evals = esd.eigenvalues_svd(W)
        row["eig_method"] = "svd"
    row["num_evals"] = int(evals.size)
    eps = esd.rank_eps(info.dtype)
    if M < esd.MIN_EVALS:
        row["status"] = f"fewer than {esd.MIN_EVALS} eigenvalues: no power-law fit"
        row.update(norm_metrics(evals, float("nan"), info.rows, info.cols, eps))
        row["verdict"], row["verdict_reason"] = "no fit", row["status"]
        row["alpha_hill_verdict"], row["alpha_hill_reason"] = "no fit", row["status"]
        return row, evals
    ww = esd.alpha_ww(evals)
    hill = esd.alpha_hill(evals, "peak")
    mid = esd.alpha_hill(evals, "mid")
    row.update(alpha=ww.alpha, xmin=ww.xmin, D=ww.D, num_pl_spikes=ww.num_pl_spikes, sigma=ww.sigma,
               fit=ww.status, alpha_hill=hill.alpha, alpha_hill_xmin=hill.xmin, alpha_hill_D=hill.D,
               alpha_mid=mid.alpha, label=esd.quality_label(ww.alpha), status="ok",
               alpha_se=esd.standard_error(ww.alpha, ww.num_pl_spikes),
               alpha_hill_se=esd.standard_error(hill.alpha, hill.num_pl_spikes), alpha_hill_tail_n=hill.num_pl_spikes)
    row.update(norm_metrics(evals, ww.alpha, info.rows, info.cols, eps))
    rank = row["matrix_rank"]
    row["verdict"], row["verdict_reason"] = esd.verdict(ww.alpha, ww.D, ww.num_pl_spikes, rank, M)
    row["alpha_hill_verdict"], row["alpha_hill_reason"] = esd.verdict(hill.alpha, hill.D, hill.num_pl_spikes,
                                                                      rank, M, bands=False)
    return row, evals


def _batched_evals(batch: list[np.ndarray], device: str) -> list[np.ndarray]:
    """Eigenvalues of several same-shape matrices in one batched eigvalsh in torch (used on CUDA)."""
    import torch
    if len(batch) == 1:
        return [esd.eigenvalues(batch[0], device=device)]
    tall = [esd.as_tensor(w if w.shape[0] >= w.shape[1] else w.T) for w in batch]
    W = torch.stack(tall).to(device, torch.float64)
    G = W.transpose(1, 2) @ W                                 # (B, M, M)
    ev = torch.linalg.eigvalsh(G).clamp_min(0.0).cpu().numpy()
    return list(ev)


def _analyze_stream(items, device: str, batch_size: int | None, workers: int | None, budget_bytes: int = 0):
    """Yield (info, (row, evals)) in input order for a stream of (MatrixInfo, array).

    On CPU, matrices go to a pool of `workers` threads; more are queued while the queued weights fit in
    `budget_bytes` (the engine passes workers × the largest matrix), so a long matrix at the head of the line
    does not leave the other threads idle, and memory stays bounded by the budget plus one matrix loading.
    """
    if device.startswith("cuda") or (batch_size or 1) > 1:
        bs = batch_size or 8
        pending: list[tuple[MatrixInfo, np.ndarray]] = []

        def flush():
            good = [(i, w) for i, w in pending if np.isfinite(w).all()]
            ev_list = _batched_evals([w for _, w in good], device) if len(good) > 1 else None
            ev_by_name = {i.name: e for (i, _), e in zip(good, ev_list)} if ev_list is not None else {}
            out = [(i, analyze_matrix(i, w, device, evals=ev_by_name.get(i.name))) for i, w in pending]
            pending.clear()
            return out

        for info, W in items:
            if pending and (len(pending) >= bs or tuple(pending[0][1].shape) != tuple(W.shape)):
                yield from flush()
            pending.append((info, W))
        yield from flush()
        return
    n = workers or min(os.cpu_count() or 1, 4)
    if n <= 1:
        for info, W in items:
            yield info, analyze_matrix(info, W, device)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):      # one BLAS thread per worker thread
        with ThreadPoolExecutor(max_workers=n) as pool:
            queue: deque = deque()
            queued = 0                                 # bytes of the weights the pool holds
            for info, W in items:
                queue.append((info, W.nbytes, pool.submit(analyze_matrix, info, W, device)))
                queued += W.nbytes
                del W                                  # only the pool keeps it
                while len(queue) >= n and (queued >= budget_bytes or len(queue) >= 8 * n):
                    head, size, fut = queue.popleft()
                    queued -= size
                    yield head, fut.result()
            while queue:
                head, _, fut = queue.popleft()
                yield head, fut.result()


# ---------------------------------------------------------------- layers

def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def layer_summary(rows: list[dict]) -> list[dict]:
    """One dict per transformer block, by layer: AlphaLoRA score (mean PL_Alpha_Hill over the block's matrices,
    embeddings and head excluded), the number of such matrices, and the mean of each of LAYER_METRICS
    (missing values skipped, NaN when there are none)."""
    blocks: dict[int, list[dict]] = {}
    for r in rows:
        if _is_number(r.get("layer")) and r.get("module") not in NON_BLOCK_KINDS and _is_number(r.get("alpha_hill")):
            blocks.setdefault(int(r["layer"]), []).append(r)
    out = []
    for layer in sorted(blocks):
        members = blocks[layer]
        summary = {"layer": layer, "alphalora_score": float(np.mean([r["alpha_hill"] for r in members])),
                   "matrices": len(members)}
        for col in LAYER_METRICS:
            vals = [float(r[col]) for r in members if _is_number(r.get(col))]
            summary[col] = float(np.mean(vals)) if vals else float("nan")
        for col, se in (("alphalora_score_se", "alpha_hill_se"), ("alpha_se", "alpha_se")):
            ses = [float(r[se]) for r in members if _is_number(r.get(se))]
            summary[col] = float(np.sqrt(np.sum(np.square(ses))) / len(ses)) if ses else float("nan")
        summary["unreliable"] = sum(r.get("verdict") == esd.UNRELIABLE for r in members)
        summary["alpha_hill_unreliable"] = sum(r.get("alpha_hill_verdict") == esd.UNRELIABLE for r in members)
        out.append(summary)
    return out


def json_rows(rows: list[dict]) -> list[dict]:
    """Rows with NaN/inf and NumPy scalars made JSON-safe (None, int, float)."""
    def clean(v):
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        if isinstance(v, (int, np.integer)):
            return int(v)
        if isinstance(v, (float, np.floating)):
            return float(v) if math.isfinite(v) else None
        return v
    return [{k: clean(v) for k, v in r.items()} for r in rows]


# ---------------------------------------------------------------- cache

def _cache_dir(identity: dict, settings: dict) -> Path:
    blob = json.dumps({"identity": identity, "settings": settings, "engine": ENGINE_VERSION}, sort_keys=True,
                      default=str)
    return data_dir() / "cache" / "analysis" / hashlib.sha256(blob.encode()).hexdigest()[:32]


def _save_cache(path: Path, result: AnalysisResult) -> None:
    """Write atomically (temp folder, then rename) so a crash never leaves a half cache entry."""
    from safetensors.numpy import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
    try:
        (tmp / "matrices.json").write_text(json.dumps(json_rows(result.rows)))
        keys = {f"m{i}": n for i, n in enumerate(result.evals)}
        save_file({k: np.ascontiguousarray(result.evals[n]) for k, n in keys.items()} or
                  {"_empty": np.zeros(0)}, str(tmp / "evals.safetensors"))
        meta = {"model": result.model, "flags": result.flags, "identity": result.identity,
                "settings": result.settings, "skipped": result.skipped, "evals_keys": keys,
                "num_parameters": result.num_parameters, "elapsed_s": result.elapsed_s, "open_s": result.open_s}
        (tmp / "meta.json").write_text(json.dumps(meta, default=str))
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_cache(path: Path) -> AnalysisResult | None:
    from safetensors.numpy import load_file
    try:
        meta = json.loads((path / "meta.json").read_text())
        arrays = load_file(str(path / "evals.safetensors"))
        rows = json.loads((path / "matrices.json").read_text())
        evals = {name: arrays[k] for k, name in meta["evals_keys"].items()}
    except (OSError, ValueError, KeyError):
        return None                                  # missing or damaged entry: recompute
    nan = float("nan")
    rows = [{k: (nan if v is None and k not in TEXT_COLUMNS else v) for k, v in r.items()} for r in rows]
    return AnalysisResult(model=meta["model"], flags=meta["flags"], identity=meta["identity"],
                          settings=meta["settings"], rows=rows, evals=evals,
                          skipped=[tuple(s) for s in meta["skipped"]], num_parameters=meta["num_parameters"],
                          elapsed_s=meta["elapsed_s"], open_s=meta.get("open_s", 0.0), from_cache=True)


# ---------------------------------------------------------------- whole model

def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU; answered without importing torch (≈0.7 s) when no NVIDIA device exists."""
    if "torch" not in sys.modules and not Path("/dev/nvidiactl").exists() and not Path("/dev/dxg").exists():
        return False
    import torch
    return torch.cuda.is_available()


def resolve_device(device: str = "auto") -> str:
    """'auto' → 'cuda' when a GPU is visible, else 'cpu'; an unavailable 'cuda' is a clear error."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device.startswith("cuda") and not cuda_available():
        raise SpectrascopeError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise SpectrascopeError(f"unknown device {device!r}: use auto, cpu or cuda")
    return device


def analyze(model=None, adapter=None, *, device: str = "auto", use_cache: bool = True,
            progress: Progress | None = None, source=None, batch_size: int | None = None,
            workers: int | None = None, download=None, ray: str | None = None, phase=None) -> AnalysisResult:
    """Analyse every 2-D weight matrix of a model (see analysis.sources.open_source for what `model` may be;
    `download(done_bytes, total_bytes, file)` reports a hub model's download, which runs while it is analysed).

    Streams the matrices; on CUDA same-shape matrices go through one batched eigvalsh (batch_size, default 8);
    on CPU `workers` threads (default: one per core, at most 4) each run single-threaded LAPACK on their own
    matrix, which beats one multi-threaded call on the small matrices transformers have (see
    benchmarks/analysis_speed.py); at most `workers` + 1 matrices are in memory at once (peak RSS bound). Results are cached in the data directory, keyed by the checkpoint's
    identity (paths, sizes, mtimes) and the settings, so an unchanged checkpoint returns at once.
    With `ray` (a Ray cluster's address) Ray tasks compute the matrices (analysis.ray_fanout): each opens the
    checkpoint itself and runs the same per-matrix code, so the rows are the local run's.
    `phase(text)` hears what opening is doing before the first matrix (converting a GGUF file once, reading the
    checkpoint's matrix list); the result's `open_s` is that time and `elapsed_s` the analysis after it.
    """
    from analysis.builtin_models import phases
    from analysis.sources import open_source
    t_call = time.perf_counter()
    device = resolve_device(device) if ray is None else device      # Ray tasks resolve it on their node
    if ray is not None and source is not None:
        raise SpectrascopeError("analysis on Ray takes the model by name or path (its tasks open it), not a source")
    with phases(phase):
        src = source if source is not None else open_source(model, adapter, download=download)
    settings = {"evals_thresh": esd.EVALS_THRESH, "hill_bins": esd.HILL_BINS, "ks_d_max": esd.KS_D_MAX,
                "alpha_spurious": esd.ALPHA_SPURIOUS, "min_tail": esd.MIN_TAIL, "gram_rcond": esd.GRAM_RCOND}
    identity = src.identity()
    cache_path = _cache_dir(identity, settings) if identity else None
    if use_cache and cache_path is not None and cache_path.exists():
        cached = _load_cache(cache_path)
        if cached is not None:
            return cached

    if phase is not None:
        phase("reading the checkpoint's matrix list")
    infos = src.matrices()
    t0 = time.perf_counter()
    if not infos:
        raise SpectrascopeError(f"{src.label} has no 2-D weight matrices to analyse; is it a transformer checkpoint?")
    rows: list[dict] = []
    evals: dict[str, np.ndarray] = {}
    skipped: list[tuple[str, str]] = []
    n_workers = workers or min(os.cpu_count() or 1, 4)
    budget = n_workers * max(4 * i.rows * i.cols for i in infos)     # float32 bytes
    if ray is None:
        stream = _analyze_stream(_arrays(src), device, batch_size, n_workers, budget)
    else:
        from analysis import ray_fanout
        stream = ray_fanout.analyze_stream(ray, model, adapter, infos, device, batch_size)
    for info, (row, ev) in stream:
        rows.append(row)
        if ev is not None:
            evals[info.name] = ev
        if row["status"] != "ok":
            skipped.append((info.name, row["status"]))
        if progress:
            progress(len(rows), len(infos), info.name)

    nan = float("nan")
    rows = [{c: row.get(c, nan if c not in TEXT_COLUMNS else None) for c in COLUMNS} for row in rows]
    if src.flags:  # every output row carries the source's caveats (e.g. dequantised 4-bit weights)
        for row in rows:
            row["notes"] = "; ".join(n for n in [row["notes"] or "", *src.flags] if n)
    result = AnalysisResult(model=src.label, flags=list(src.flags), identity=identity, settings=settings,
                            rows=rows, evals=evals, skipped=skipped,
                            num_parameters=_safe_num_parameters(src), elapsed_s=time.perf_counter() - t0,
                            open_s=t0 - t_call)
    if cache_path is not None:
        try:
            _save_cache(cache_path, result)
        except OSError:
            pass                                         # a read-only data dir must not break analysis
    return result


def _arrays(src):
    """(MatrixInfo, float32 NumPy array) pairs of a source (sources without iter_arrays yield torch tensors)."""
    if hasattr(src, "iter_arrays"):
        yield from src.iter_arrays()
    else:
        for info, W in src.iter_matrices():
            yield info, esd.to_numpy(W)


def _safe_num_parameters(src) -> int | None:
    try:
        return int(src.num_parameters())
    except (AttributeError, NotImplementedError, TypeError):
        return None


def finite_or_none(x) -> float | None:
    """JSON-friendly float: NaN/inf → None."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None
