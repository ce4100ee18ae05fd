"""Slurm backend: each run is one Slurm job (sbatch of a generated script), followed with squeue, stopped by scancel."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path

from analysis.types import SpectrascopeError
from training import run_layout
from training.backends import Backend, Remote

OPTIONS = ("partition", "nodes", "gpus_per_node", "time", "account")
FLAGS = {"partition": "--partition", "nodes": "--nodes", "gpus_per_node": "--gpus-per-node", "time": "--time",
         "account": "--account", "address": "--ray-address"}
# Slurm's time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (sbatch --time)
TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
WORD_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
CLIENT_TIMEOUT_S = 30.0            # one squeue / sbatch / scancel call (Slurm's own MessageTimeout is 10 s)
CANCEL_WAIT_S = 120.0              # scancel: how long to wait for the job's processes to end (KillWait and more)
RDZV_PORT = 29400                  # multi-node torchrun rendezvous: this port plus the job id modulo 1000
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
          "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
WAITING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SUSPENDED", "STOPPED",
           "SPECIAL_EXIT"}
ENDINGS = {"TIMEOUT": "time limit reached", "NODE_FAIL": "node failure", "PREEMPTED": "preempted",
           "CANCELLED": "cancelled", "OUT_OF_MEMORY": "out of memory", "BOOT_FAIL": "node boot failure",
           "DEADLINE": "deadline reached", "FAILED": "the batch script exited non-zero",
           "COMPLETED": "the batch script exited"}


class SlurmBackend(Backend):
    """A run is one Slurm job; its worker runs on a node that sees the same code path and data directory."""

    name = "slurm"
    label = "Slurm"

    # ---- submit-time checks ---------------------------------------------------------------------------------
    def check(self, options: dict, config: dict) -> dict:
        clean = _clean_options(options, config)
        partitions = _partitions()
        name = clean.get("partition") or next((p for p, v in partitions.items() if v.get("Default") == "YES"), None)
        if name is None:
            raise SpectrascopeError("the Slurm cluster has no default partition: pass --partition (one of "
                                    f"{', '.join(sorted(partitions)) or 'none'})")
        if name not in partitions:
            raise SpectrascopeError(f"unknown Slurm partition {name!r}: the cluster has "
                                    f"{', '.join(sorted(partitions)) or 'none'}")
        part = partitions[name]
        nodes, gpus = clean.get("nodes", 1), clean.get("gpus_per_node", 0)
        total = _int(part.get("TotalNodes"), 0)
        if nodes > total:
            raise SpectrascopeError(f"--nodes {nodes}: Slurm partition {name!r} has {total} node{'s' * (total != 1)}")
        limit = _int(part.get("MaxNodes"), None)
        if limit is not None and nodes > limit:
            raise SpectrascopeError(f"--nodes {nodes}: Slurm partition {name!r} allows at most {limit} per job")
        if gpus:
            counts = sorted((_gpus(n.get("Gres", "")) for n in _nodes(part.get("Nodes", ""))), reverse=True)
            enough = sum(1 for c in counts if c >= gpus)
            if enough < nodes:
                most = counts[0] if counts else 0
                have = f"only {enough} node{'s' * (enough != 1)}" if enough else "no node"
                raise SpectrascopeError(
                    f"--gpus-per-node {gpus} on {nodes} node{'s' * (nodes != 1)}: Slurm partition {name!r} has {have} "
                    f"with {gpus} GPU{'s' * (gpus != 1)} (at most {most} per node)")
        if "time" in clean and part.get("MaxTime") not in (None, "UNLIMITED", "INFINITE"):
            asked, most = _minutes(clean["time"]), _minutes(part["MaxTime"])
            if most is not None and asked > most:
                raise SpectrascopeError(f"--time {clean['time']}: Slurm partition {name!r} allows at most "
                                        f"{part['MaxTime']}")
        # Slurm's own word last: sbatch --test-only validates everything (account, QOS, limits) and queues nothing
        _client(["sbatch", "--test-only", *_sbatch_options(clean, config)], stdin="#!/bin/sh\ntrue\n",
                what="sbatch --test-only")
        return clean

    # ---- launching ------------------------------------------------------------------------------------------
    def launch(self, job, command: list[str], env: dict[str, str]) -> str:
        options = job.backend_options or {}
        log = run_layout.log(job.run_dir)
        args = ["sbatch", "--parsable", "--job-name", f"spectrascope-{job.id}-{job.name}"[:128],
                "--output", str(log).replace("%", "%%"), "--open-mode", "append",
                "--chdir", str(Path(__file__).resolve().parents[2]), "--export", "ALL",
                *_sbatch_options(options, job.config)]
        out = _client(args, stdin=batch_script(job.id, command, options, job.config), env=env, what="sbatch")
        external = out.strip().split(";")[0]
        if not external.isdigit():
            raise SpectrascopeError(f"sbatch answered {out.strip()!r} instead of a job id")
        return external

    # ---- following ------------------------------------------------------------------------------------------
    def poll(self, job) -> Remote:
        if not job.external_id:
            return Remote("unreachable", "the run has no Slurm job id")
        try:
            out = _client(["squeue", "--noheader", "--states", "all", "--jobs", str(job.external_id),
                           "--format", "%T|%r"], what="squeue")
        except SpectrascopeError as exc:
            text = str(exc)
            if "invalid job id" in text.lower():          # finished longer ago than the controller's MinJobAge
                return Remote("ended", _accounted(job.external_id))
            return Remote("unreachable", text)
        lines = [ln for ln in out.splitlines() if ln.strip()]
        if not lines:
            return Remote("ended", _accounted(job.external_id))
        state, _, reason = lines[0].partition("|")
        state = state.strip().split()[0] if state.strip() else "UNKNOWN"
        reason = reason.strip() if reason.strip() not in ("", "None", "(null)") else None
        if state in WAITING:
            return Remote("pending", f"{state}: {reason}" if reason else state)
        if state in ACTIVE:
            return Remote("running", reason)
        return Remote("ended", _ending(state, reason))

    def cancel(self, job) -> None:
        if not job.external_id:
            return
        try:
            _client(["scancel", str(job.external_id)], what="scancel")
        except SpectrascopeError as exc:
            if "already completing or completed" not in str(exc).lower() and "invalid job id" not in str(exc).lower():
                raise
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:          # until the job's processes are gone, not merely signalled
            state = self.poll(job)
            if state.state == "ended":
                return
            if state.state == "unreachable":
                raise SpectrascopeError(f"scancel sent, but Slurm stopped answering: {state.reason}")
            time.sleep(0.3)
        raise SpectrascopeError(f"Slurm job {job.external_id} still ends {CANCEL_WAIT_S:.0f} s after scancel: "
                                f"check `squeue -j {job.external_id}`")

    def logs(self, job, lines: int = 50) -> str:
        from training.jobs import log_tail

        return log_tail(run_layout.log(job.run_dir), lines) if job.run_dir else ""


def processes_per_node(options: dict, config: dict) -> int:
    """Data-parallel processes on each node: one per GPU asked for, else the config's cpu_processes."""
    gpus = int(options.get("gpus_per_node") or 0)
    return gpus if gpus > 0 else max(1, int(config.get("cpu_processes") or 1))


def batch_script(job_id: int, command: list[str], options: dict, config: dict) -> str:
    """The batch script of a run (given to sbatch on stdin): the worker itself, torchrun of it on one node, or
    srun starting one torchrun per node that meet at the first node (c10d rendezvous). Every word is quoted."""
    nodes, per_node = int(options.get("nodes") or 1), processes_per_node(options, config)
    head = ["#!/bin/bash", "# Spectrascope run (training.backends.slurm)", "set -e"]
    if per_node > 1 and int(options.get("gpus_per_node") or 0) == 0:      # CPU ranks share the cores
        head.append(f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{max(1, (os.cpu_count() or 1) // per_node)}}}")
    python = command[0]
    if nodes == 1 and per_node == 1:
        return "\n".join([*head, "exec " + shlex.join(command), ""])
    if nodes == 1:
        run = [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(per_node),
               "-m", "training.worker", "--job", str(job_id)]
        return "\n".join([*head, "exec " + shlex.join(run), ""])
    step = ["srun", "--nodes", str(nodes), "--ntasks-per-node", "1", "--kill-on-bad-exit=1"]
    if per_node > 1:            # Slurm 22.05's srun no longer inherits the batch job's --cpus-per-task
        step += ["--cpus-per-task", str(per_node)]
    if int(options.get("gpus_per_node") or 0):
        step += ["--gpus-per-node", str(int(options["gpus_per_node"]))]
    run = shlex.join([*step, python, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc_per_node",
                      str(per_node), "--rdzv_backend", "c10d", "--rdzv_id", str(job_id)])
    return "\n".join([*head,
                      'first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                      f"port=$(( {RDZV_PORT} + SLURM_JOB_ID % 1000 ))",
                      f'exec {run} --rdzv_endpoint "$first:$port" -m training.worker --job {int(job_id)}', ""])


def _sbatch_options(options: dict, config: dict) -> list[str]:
    args = ["--nodes", str(int(options.get("nodes") or 1)), "--ntasks-per-node", "1"]
    per_node = processes_per_node(options, config)
    if per_node > 1:
        args += ["--cpus-per-task", str(per_node)]
    if int(options.get("gpus_per_node") or 0):
        args += ["--gpus-per-node", str(int(options["gpus_per_node"]))]
    for key in ("partition", "time", "account"):
        if options.get(key):
            args += [f"--{key}", str(options[key])]
    return args


def _clean_options(options: dict, config: dict) -> dict:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        flags = ", ".join(FLAGS.get(k, k) for k in unknown)
        raise SpectrascopeError(f"the Slurm backend does not take {flags}: use --partition, --nodes, "
                                "--gpus-per-node, --time, --account")
    clean = {k: v for k, v in options.items() if v is not None and v != ""}
    for key in ("nodes", "gpus_per_node"):
        if key in clean:
            value = clean[key]
            if isinstance(value, bool) or not str(value).isdigit():
                raise SpectrascopeError(f"{FLAGS[key]} must be a whole number, got {value!r}")
            clean[key] = int(value)
    if clean.get("nodes", 1) < 1:
        raise SpectrascopeError("--nodes must be at least 1")
    if "gpus_per_node" not in clean and int(config.get("gpus") or 1) > 1:
        clean["gpus_per_node"] = int(config["gpus"])           # `gpus: N` asks for N GPUs of one node
    for key in ("partition", "account"):
        if key in clean and not WORD_RE.fullmatch(str(clean[key])):
            raise SpectrascopeError(f"{FLAGS[key]} {clean[key]!r} is no Slurm name: use letters, digits, '_.+-'")
    if "time" in clean:
        clean["time"] = str(clean["time"])
        if not TIME_RE.fullmatch(clean["time"]) or _minutes(clean["time"]) == 0:
            raise SpectrascopeError(f"--time {clean['time']!r}: use HH:MM:SS (or D-HH:MM:SS, or minutes), above zero")
    return clean


def _minutes(text: str) -> float | None:
    """A Slurm time (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) in minutes, or None when it is not one."""
    m = TIME_RE.fullmatch(str(text).strip())
    if not m:
        return None
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if days is not None:
        return days * 1440 + a * 60 + (b or 0) + (c or 0) / 60
    if c is not None:
        return a * 60 + b + c / 60
    return a + (b or 0) / 60


def _client(args: list[str], stdin: str | None = None, env: dict | None = None, what: str = "slurm") -> str:
    """Run a Slurm client command (argument list); its stdout, or a SpectrascopeError with its first error line."""
    try:
        proc = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S,
                              env=env if env is not None else dict(os.environ), stdin=None if stdin else
                              subprocess.DEVNULL)
    except FileNotFoundError:
        raise SpectrascopeError(f"{args[0]} not found: install Slurm's client commands (sbatch, squeue, scancel) "
                                "on this machine, or submit with another --backend") from None
    except subprocess.TimeoutExpired:
        raise SpectrascopeError(f"{what}: the Slurm controller did not answer within {CLIENT_TIMEOUT_S:.0f} s"
                                ) from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
        error = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else f"exit {proc.returncode}")
        error = re.sub(r"^(sbatch|squeue|scancel|scontrol|sinfo|sacct): error: ", "", error)
        if "unable to contact slurm controller" in error.lower() or "connection refused" in error.lower():
            error += " (is slurmctld running, and SLURM_CONF set to its slurm.conf?)"
        raise SpectrascopeError(f"{what}: {error}")
    return proc.stdout


def _records(text: str) -> list[dict]:
    """`scontrol show … --oneliner` output as dicts of Key=Value (values without spaces)."""
    records = []
    for line in text.splitlines():
        pairs = re.findall(r"(\S+?)=(\S*)", line)
        if pairs:
            records.append(dict(pairs))
    return records


def _partitions() -> dict[str, dict]:
    out = _client(["scontrol", "--oneliner", "show", "partition"], what="Slurm controller not reachable")
    return {r["PartitionName"]: r for r in _records(out) if "PartitionName" in r}


def _nodes(nodelist: str) -> list[dict]:
    if not nodelist or nodelist == "(null)":
        return []
    out = _client(["scontrol", "--oneliner", "show", "node", nodelist], what="scontrol show node")
    return [r for r in _records(out) if "NodeName" in r]


def _gpus(gres: str) -> int:
    """GPUs in a node's Gres string (gpu:4, gpu:a100:2(S:0-1), …)."""
    total = 0
    for item in re.split(r",(?![^()]*\))", gres or ""):
        parts = item.split("(")[0].split(":")
        if parts and parts[0] == "gpu" and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def _int(text, default):
    return int(text) if text is not None and str(text).isdigit() else default


def _ending(state: str, reason: str | None) -> str:
    gloss = ENDINGS.get(state)
    text = f"{state}: {gloss}" if gloss else state
    return f"{text}, reason {reason}" if reason and reason not in ("TimeLimit", "NonZeroExitCode") else text


def _accounted(external_id: str) -> str:
    """Why a job that squeue no longer lists ended: its accounting record, when the cluster keeps one."""
    try:
        out = _client(["sacct", "--noheader", "--parsable2", "--allocations", "--jobs", str(external_id),
                       "--format", "State"], what="sacct")
    except SpectrascopeError:
        out = ""
    line = next((ln for ln in out.splitlines() if ln.strip()), "")
    if line:
        return _ending(line.split()[0], None)
    return "no longer known to the Slurm controller"


BACKEND = SlurmBackend()
