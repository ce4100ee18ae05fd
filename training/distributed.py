"""Data-parallel training over several processes started by torchrun: process group, batch shards, agreed stops.

One job with `gpus: N` (or `cpu_processes: N` on a CPU machine) runs as N processes launched by
`python -m torch.distributed.run --standalone --nproc_per_node N -m training.worker --job ID`. Every rank
builds the same model and walks the same seeded batches; each takes its own slice of every batch, and
DistributedDataParallel averages the gradients (NCCL on GPUs, gloo on CPU), so a step sees the whole batch as
one process would. Rank 0 alone writes progress, artifacts and the result.

torchrun rather than `accelerate launch`: accelerate's launcher runs CPU data parallelism only through MPI,
so torchrun gives one launch path that the CPU test suite exercises and that GPUs use unchanged.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Ranks:
    """Where this process sits in its job: rank, world size, local rank (its GPU index)."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def launched_ranks() -> Ranks:
    """The ranks torchrun gave this process (RANK, WORLD_SIZE, LOCAL_RANK), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    return Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def setup(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the job's process group; returns this rank's device (cuda:LOCAL_RANK on GPUs)."""
    if not ranks.distributed:
        return device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", ranks.local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def teardown(ranks: Ranks) -> None:
    if ranks.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def wrap(model: torch.nn.Module, ranks: Ranks, device: torch.device, find_unused: bool = False) -> torch.nn.Module:
    """The model to call in the training step: DistributedDataParallel on several processes, else itself."""
    if not ranks.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


def shard(batch: dict[str, torch.Tensor], ranks: Ranks) -> dict[str, torch.Tensor] | None:
    """This rank's contiguous slice of a batch (sizes differ by at most one row); None when the batch has fewer
    rows than processes, so every rank skips it together (at most world−1 rows of an epoch's last batch)."""
    if not ranks.distributed:
        return batch
    n = len(next(iter(batch.values())))
    if n < ranks.world:
        return None
    bounds = [n * r // ranks.world for r in range(ranks.world + 1)]
    lo, hi = bounds[ranks.rank], bounds[ranks.rank + 1]
    return {k: v[lo:hi] for k, v in batch.items()}


def agree(flag: bool, ranks: Ranks, device: torch.device) -> bool:
    """True on every rank when any rank says True (so a cancel seen by one process stops all at the same step)."""
    if not ranks.distributed:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean(value: float, weight: float, ranks: Ranks, device: torch.device) -> float:
    """The weighted mean of a per-rank value over all ranks (e.g. the batch loss, weighted by shard rows)."""
    if not ranks.distributed:
        return value
    import torch.distributed as dist

    t = torch.tensor([value * weight, weight], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t[0] / t[1])
