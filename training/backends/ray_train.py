"""A data-parallel run on Ray: a Ray Train TorchTrainer whose workers (on one node or many) are the job's ranks.

The Ray job's entrypoint is `python -m training.backends.ray_train --job ID --workers N [--gpu]`. Ray Train
places the N workers (one GPU each with --gpu, else one CPU each), sets up their process group (NCCL / gloo) and
the rank variables; each worker then runs exactly what a torchrun rank runs (`training.worker`): rank 0 records
progress, artifacts and the result, the others train beside it (training.distributed finds the process group
already joined). This is how a run asks for more GPUs than one node has.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def rank_loop(config: dict) -> None:
    """One Ray Train worker: the torchrun rank variables from Ray Train's context, then the job's worker."""
    import ray.train

    ctx = ray.train.get_context()
    os.environ.update(RANK=str(ctx.get_world_rank()), WORLD_SIZE=str(ctx.get_world_size()),
                      LOCAL_RANK=str(ctx.get_local_rank()), LOCAL_WORLD_SIZE=str(ctx.get_local_world_size()))
    from training import worker

    status = worker.main(["--job", str(config["job"])])
    if status != 0 and ctx.get_world_rank() == 0:
        raise RuntimeError(f"job {config['job']} did not finish (its status and error are in the runs table)")


def fit(job_id: int, workers: int, gpu: bool, storage: Path) -> None:
    """Run job `job_id` as `workers` Ray Train workers (the driver needs no CPU or GPU of its own)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    per_worker = {"CPU": 1, "GPU": 1} if gpu else {"CPU": 1}
    trainer = TorchTrainer(rank_loop, train_loop_config={"job": job_id},
                           scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu,
                                                        resources_per_worker=per_worker),
                           run_config=RunConfig(name=f"spectrascope-{job_id}", storage_path=str(storage)))
    trainer.fit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.backends.ray_train", description=__doc__)
    parser.add_argument("--job", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker (NCCL); else one CPU each (gloo)")
    args = parser.parse_args(argv)
    from training.jobs import JobStore

    job = JobStore().get(args.job)
    fit(args.job, args.workers, args.gpu, Path(job.run_dir).resolve() / "ray_train")
    return 0


if __name__ == "__main__":
    sys.exit(main())
