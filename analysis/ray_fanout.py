"""Analysis over a Ray cluster: a model's matrices (analyze) or matrix pairs (intruders) spread over Ray tasks.

Each task gets the source spec (model, adapter: names or paths, never weights) and the names of its shard's
matrices, opens the checkpoint itself where it lies (a filesystem every node shares, or a built-in / hub-cached
model every node has) and runs the engine's own per-matrix code: `engine.analyze_matrix` (through
`engine._analyze_stream`, with one BLAS thread as the local CPU path uses) and `intruders.compare_matrices`
(with the driver's torch thread count). So the table is the one a local run gives, bit for bit, when the nodes run
the same build on the same kind of CPU. Ray is imported only here, and only when an address is given.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from analysis.config import data_dir
from analysis.types import MatrixInfo, SpectrascopeError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARDS_PER_CPU = 2              # tasks per cluster CPU: small enough shards that a slow one does not hold the rest
CONNECT_TIMEOUT_S = 5.0         # a TCP check of the address before ray.init, which itself waits minutes
ENV_KEYS = ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "TRANSFORMERS_OFFLINE", "TRANSFORMERS_CACHE")


# ---------------------------------------------------------------- connecting

def check_address(address: str) -> str:
    """`address` if it looks like a Ray bootstrap (HOST:PORT) or Ray Client (ray://HOST:PORT) address and a TCP
    connection to it opens; else a SpectrascopeError saying what to give."""
    address = (address or "").strip()
    if address.startswith(("http://", "https://")):
        raise SpectrascopeError(f"--ray {address}: give the cluster's bootstrap address (HEAD:6379) or a Ray Client "
                                "address (ray://HEAD:10001), not the dashboard URL")
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SpectrascopeError(f"--ray {address!r}: expected HOST:PORT (e.g. 10.0.0.5:6379) or ray://HOST:10001")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise SpectrascopeError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}; is the head "
                                "running (ray start --head)?") from None
    return address


def worker_env() -> dict[str, str]:
    """What the tasks' processes need: the code path, the data folder (caches), the hub settings."""
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p),
           "SPECTRASCOPE_DATA": str(data_dir())}
    env.update({k: os.environ[k] for k in ENV_KEYS if k in os.environ})
    return env


@contextmanager
def session(address: str):
    """Ray connected to the cluster at `address` for the duration (an existing connection is reused and kept)."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    address = check_address(address)
    ray.init(address=address, runtime_env={"env_vars": worker_env()}, logging_level=logging.ERROR,
             log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _get(ray, ref):
    """ray.get, with a task's failure as one line (our own errors as they were said on the worker)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, SpectrascopeError):
            raise SpectrascopeError(f"on a Ray worker: {cause}") from None
        what = f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}"
        raise SpectrascopeError(f"a Ray task failed ({what}); see the task's log on the cluster") from None
    except ray.exceptions.RayError as exc:
        line = str(exc).strip().splitlines()
        raise SpectrascopeError(f"the Ray cluster lost a task: {line[0] if line else type(exc).__name__}") from None


def shards(items: list, costs: list[float], count: int) -> list[list]:
    """`items` cut into at most `count` consecutive runs of about equal total cost (none empty)."""
    count = max(1, min(count, len(items)))
    total = float(sum(costs)) or 1.0
    out, current, acc = [], [], 0.0
    for item, cost in zip(items, costs):
        current.append(item)
        acc += cost
        if len(out) < count - 1 and acc >= total * (len(out) + 1) / count:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def _cost(info: MatrixInfo) -> float:
    return float(info.rows) * info.cols * min(info.rows, info.cols)      # Gram product + eigensolver


def _spec(path):
    """A model or adapter argument the workers can open: an existing local path made absolute, else as given."""
    if path is None or not isinstance(path, (str, os.PathLike)):
        return path
    p = Path(path).expanduser()
    return str(p.resolve()) if p.exists() else str(path)


def _task_count(ray) -> int:
    return SHARDS_PER_CPU * max(1, int(ray.cluster_resources().get("CPU", 1)))


# ---------------------------------------------------------------- analyze

def analyze_shard(model, adapter, names: list[str], device: str, batch_size: int | None) -> list[tuple]:
    """On a Ray worker: (name, row, eigenvalues) of the named matrices, by the engine's own per-matrix path."""
    from threadpoolctl import threadpool_limits

    from analysis import engine
    from analysis.sources import open_source

    src = open_source(model, adapter)
    device = engine.resolve_device(device)
    by_name = {i.name: i for i in src.matrices()}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise SpectrascopeError(f"{src.label} on this node has no matrix {missing[0]!r}: do the nodes see the same "
                                "checkpoint?")
    items = ((by_name[n], src.load_array(n)) for n in names)
    with threadpool_limits(limits=1, user_api="blas"):        # as the local CPU path's worker threads
        return [(info.name, row, ev) for info, (row, ev) in engine._analyze_stream(items, device, batch_size, 1)]


def analyze_stream(address: str, model, adapter, infos: list[MatrixInfo], device: str = "auto",
                   batch_size: int | None = None) -> Iterator[tuple[MatrixInfo, tuple[dict, object]]]:
    """(info, (row, eigenvalues)) for each of `infos`, in order, computed by Ray tasks (engine.analyze(ray=…))."""
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise SpectrascopeError(f"unknown device {device!r}: use auto, cpu or cuda")
    model, adapter = _spec(model), _spec(adapter)
    with session(address) as ray:
        task = ray.remote(analyze_shard).options(num_cpus=1, num_gpus=1 if str(device).startswith("cuda") else 0)
        parts = shards(infos, [_cost(i) for i in infos], _task_count(ray))
        refs = [task.remote(model, adapter, [i.name for i in part], device, batch_size) for part in parts]
        for part, ref in zip(parts, refs):
            got = {name: (row, ev) for name, row, ev in _get(ray, ref)}
            for info in part:
                yield info, got[info.name]


# ---------------------------------------------------------------- intruders

def compare_shard(base, finetuned, names: list[tuple[str, str]], top_k: int, epsilon: float, use_cache: bool,
                  threads: int):
    """On a Ray worker: intruders.compare_matrices over the named (base, fine-tuned) pairs; an IntruderReport."""
    import torch

    from analysis import intruders
    from analysis.sources import open_source

    torch.set_num_threads(threads)            # the driver's: the same LAPACK blocking, the same bits
    base_src, fine_src = open_source(*base), open_source(*finetuned)
    infos = {i.name: i for i in base_src.matrices()}
    stream = ((infos[b], base_src.load(b), fine_src.load(f)) for b, f in names)
    cache = intruders.BaseSvdCache(base_src) if use_cache else None
    return intruders.compare_matrices(stream, top_k, epsilon, base_svd=cache)


def compare(address: str, base: tuple, finetuned: tuple, top_k: int = 10, epsilon: float = 0.5, progress=None, *,
            include_embeddings: bool = False, use_cache: bool = True):
    """intruders.compare over Ray tasks; `base` and `finetuned` are (model, adapter) specs for open_source.
    The same IntruderReport as a local run (with the cache, `base_cached` says where each base SVD came from)."""
    import torch

    from analysis import intruders
    from analysis.sources import open_source

    intruders._check_settings(top_k, epsilon)
    base, finetuned = tuple(map(_spec, base)), tuple(map(_spec, finetuned))
    base_src, fine_src = open_source(*base), open_source(*finetuned)
    pairs = intruders.match_matrices(base_src, fine_src, include_embeddings)
    t0 = time.perf_counter()
    report = intruders.IntruderReport(base=_label(base_src), finetuned=_label(fine_src), top_k=int(top_k),
                                      epsilon=float(epsilon), comparisons=[])
    with session(address) as ray:
        task = ray.remote(compare_shard).options(num_cpus=1)
        parts = shards(pairs, [_cost(b) for b, _ in pairs], _task_count(ray))
        refs = [task.remote(base, finetuned, [(b.name, f.name) for b, f in part], int(top_k), float(epsilon),
                            bool(use_cache), torch.get_num_threads()) for part in parts]
        for ref in refs:
            part = _get(ray, ref)
            report.comparisons += part.comparisons
            report.skipped += part.skipped
            report.cache_hits += part.cache_hits
            report.cache_misses += part.cache_misses
            if progress:
                done = len(report.comparisons) + len(report.skipped)
                progress(done, len(pairs), report.comparisons[-1].info.name if report.comparisons else "")
    names = {b.name: f.name for b, f in pairs}
    for c in report.comparisons:
        c.finetuned_name = names[c.info.name]
    report.flags = list(dict.fromkeys([*getattr(base_src, "flags", ()), *getattr(fine_src, "flags", ())]))
    report.elapsed_s = time.perf_counter() - t0
    return report


def _label(source) -> str:
    return str(getattr(source, "label", None) or type(source).__name__)
