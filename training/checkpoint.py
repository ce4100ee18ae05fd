"""Training checkpoints: what a stopped run needs to continue exactly (weights, optimizer, RNGs, data position)."""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

from analysis.types import SpectrascopeError
from training import run_layout

STATE = "state.pt"          # torch.save of the state dict below (tensors, numbers, lists: loads with weights_only)
META = "meta.json"          # written last inside the temporary folder: a folder without it is incomplete
TMP = ".tmp-"               # checkpoints/.tmp-step-000010-<pid>: being written, renamed when complete
DEFAULT_KEEP = 2


# ----------------------------------------------------------------------------------------------- finding them

def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of the complete checkpoints of a run, oldest first (no torch import: the job store asks)."""
    root = run_layout.checkpoints(run_dir)
    out = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    for folder in entries:
        name = folder.name
        if not name.startswith(run_layout.CHECKPOINT_PREFIX) or not (folder / META).is_file():
            continue
        try:
            out.append((int(name[len(run_layout.CHECKPOINT_PREFIX):]), folder))
        except ValueError:
            continue
    return sorted(out)


def latest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def step_of(folder: str | Path) -> int:
    """The optimizer step a checkpoint folder holds the state after."""
    return int(json.loads((Path(folder) / META).read_text())["step"])


# ----------------------------------------------------------------------------------------------- writing

def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(run_dir: str | Path, step: int, state: dict, keep: int = DEFAULT_KEEP) -> Path:
    """Write `state` as the checkpoint of `step`, atomically: into a temporary folder (state, then meta.json,
    both synced), then one rename. A SIGKILL at any point leaves the previous checkpoints intact and at most a
    temporary folder, which the next save removes. Keeps the newest `keep` checkpoints."""
    import torch

    final = run_layout.checkpoint(run_dir, step)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(TMP + "*"):             # left by a process killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f"{TMP}{final.name}-{os.getpid()}"
    tmp.mkdir()
    torch.save(state, tmp / STATE)
    _fsync(tmp / STATE)
    meta = {"step": int(step), "time": time.time(), "bytes": (tmp / STATE).stat().st_size}
    (tmp / META).write_text(json.dumps(meta))
    _fsync(tmp / META)
    if final.exists():                             # the same step again (a resumed run's final step)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync(root)
    prune(run_dir, keep)
    return final


def prune(run_dir: str | Path, keep: int) -> None:
    """Remove all but the newest `keep` checkpoints."""
    for _, folder in list_checkpoints(run_dir)[:-max(1, keep)]:
        shutil.rmtree(folder, ignore_errors=True)


def remove_all(run_dir: str | Path) -> None:
    """Drop a run's checkpoints (a finished run is not resumed; its artifacts are what stays)."""
    shutil.rmtree(run_layout.checkpoints(run_dir), ignore_errors=True)


def load(folder: str | Path) -> dict:
    """The state saved in a checkpoint folder (torch.load with weights_only)."""
    import torch

    path = Path(folder) / STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise SpectrascopeError(f"checkpoint {folder} cannot be read ({exc}): resume from an older one or submit "
                                "the run again") from None


# ----------------------------------------------------------------------------------------------- the state

def weights(model) -> dict:
    """The trained part of a model: trainable parameters (the adapter, or every weight of a full fine-tune) and
    the buffers (small: position ids, AdaLoRA's rank counts…)."""
    out = {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad}
    out.update({f"buffer:{name}": b.detach().cpu() for name, b in model.named_buffers()})
    return out


def restore_weights(model, saved: dict) -> None:
    """Copy `weights(model)`'s output back into the model, in place."""
    import torch

    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    with torch.no_grad():
        for key, value in saved.items():
            target = buffers[key[len("buffer:"):]] if key.startswith("buffer:") else params[key]
            target.copy_(value.to(target.device))


def rng_state() -> dict:
    """Every random state a run draws from: torch's CPU generator (which also keys FastDropout's SFC64 masks,
    reseeded from it on every call, so it has no state of its own to keep), CUDA's, numpy's and Python's."""
    import numpy as np
    import torch

    np_state = np.random.get_state()
    py_version, py_words, py_gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                      "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
            "python": {"version": py_version, "words": list(py_words), "gauss": py_gauss}}


def set_rng_state(state: dict) -> None:
    """Restore rng_state()'s output."""
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["words"]), p["gauss"]))


def method_state(model) -> dict:
    """State a method keeps outside the weights: a peft RankAllocator's importance averages and the rank pattern
    it pruned to (without them a resumed run past the final pruning step fails)."""
    tuner = getattr(model, "base_model", None)
    allocator = getattr(tuner, "rankallocator", None)
    if allocator is None:
        return {}
    config = tuner.peft_config[tuner.trainable_adapter_name]
    return {"rank_allocator": {key: {k: v.detach().cpu().clone() for k, v in getattr(allocator, key).items()}
                               for key in ("ipt", "exp_avg_ipt", "exp_avg_unc")}
            | {"rank_pattern": json.dumps(config.rank_pattern)}}


def restore_method_state(model, state: dict) -> None:
    if "rank_allocator" not in state:
        return
    tuner = model.base_model
    allocator, saved = tuner.rankallocator, dict(state["rank_allocator"])
    tuner.peft_config[tuner.trainable_adapter_name].rank_pattern = json.loads(saved.pop("rank_pattern"))
    device = next(model.parameters()).device
    for key, values in saved.items():
        setattr(allocator, key, {k: v.to(device) for k, v in values.items()})


LOOP_KEYS = ("step", "epoch", "next_batch", "total", "best", "best_step", "best_state", "last_losses")


def due(step: int, total: int, every: int | None, eval_every: int) -> bool:
    """Whether the trainer writes a checkpoint after `step`: with `every` None at each validation pass (every
    `eval_every` steps and the last), with 0 never, else every `every` steps and the last."""
    if every == 0:
        return False
    period = eval_every if every is None else every
    return step == total or bool(period and step % period == 0)


def capture(model, optimizer, scheduler, loop: dict) -> dict:
    """The whole training state after a step: `loop` holds LOOP_KEYS (step, data position, best pass…)."""
    missing = set(LOOP_KEYS) - set(loop)
    assert not missing, missing
    return {"weights": weights(model), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "method": method_state(model), "rng": rng_state(), "loop": dict(loop)}


def restore(folder: str | Path, model, optimizer, scheduler, total: int) -> dict:
    """Put a checkpoint's state back into the model, optimizer, scheduler and RNGs; return its loop values.
    The RNGs are set last: call this right before the training loop."""
    state = load(folder)
    loop = state["loop"]
    if loop["total"] != total:
        raise SpectrascopeError(f"checkpoint {Path(folder).name} is of a run of {loop['total']} steps, this one has "
                                f"{total}: the config changed; submit it again")
    restore_weights(model, state["weights"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_method_state(model, state["method"])
    set_rng_state(state["rng"])
    return loop


def record_resume(run_dir: str | Path, folder: Path, data_hash: str) -> None:
    """Note a resume in manifest.json (`resumes`: time, step, checkpoint), after checking the data is the same."""
    path = run_layout.manifest(run_dir)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        raise SpectrascopeError(f"{run_dir} has no readable manifest.json: it cannot be resumed") from None
    if manifest.get("data_hash") != data_hash:
        raise SpectrascopeError(f"the task data changed since run {Path(run_dir).name} started: it cannot be "
                                "resumed; submit it again")
    manifest.setdefault("resumes", []).append({"time": time.time(), "step": step_of(folder),
                                               "checkpoint": folder.name})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(tmp, path)


def truncate_progress(run_dir: str | Path, step: int) -> int:
    """Keep the progress lines of steps up to `step` (a resume continues after it), dropping later ones and a
    partly written last line; atomically. Returns how many lines were dropped."""
    path = run_layout.progress(run_dir)
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    keep = []
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if not isinstance(value, dict) or int(value.get("step", 0)) <= step:
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)
    return len(lines) - len(keep)
