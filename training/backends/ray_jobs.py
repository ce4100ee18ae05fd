"""Ray backend: each run is one Ray job (Job Submission API), followed by its status, stopped by `ray job stop`."""
from __future__ import annotations

import os
import shlex
import threading
import time
import uuid

from analysis.types import SpectrascopeError
from training.backends import Backend, Remote

OPTIONS = ("address",)
SLURM_ONLY = ("partition", "nodes", "gpus_per_node", "time", "account")
HTTP_TIMEOUT_S = 10.0              # one request to the dashboard (the Ray client itself sets none)
STOP_WAIT_S = 20.0                 # ray job stop: SIGTERM, Ray's RAY_JOB_STOP_WAIT_TIME_S (3 s), SIGKILL, and margin
# The worker environment the Ray job gets (runtime_env env_vars): the data folder, the code path, hub settings.
ENV_KEYS = ("PYTHONPATH", "PYTHONUNBUFFERED", "TOKENIZERS_PARALLELISM")
ENV_PREFIXES = ("SPECTRASCOPE_", "HF_", "TRANSFORMERS_")
ENV_SECRETS = ("HF_TOKEN", "HF_API_TOKEN")      # never copied into the Ray job's record
PENDING, RUNNING, ENDED = ("PENDING",), ("RUNNING",), ("SUCCEEDED", "FAILED", "STOPPED")

_CLIENTS: dict[str, object] = {}
_LOCK = threading.Lock()


class RayBackend(Backend):
    """A run is one Ray job whose entrypoint is the worker command; the head's dashboard address is its option."""

    name = "ray"
    label = "Ray"

    # ---- submit-time checks ---------------------------------------------------------------------------------
    def check(self, options: dict, config: dict) -> dict:
        slurm = sorted(k for k in options if k in SLURM_ONLY)
        if slurm:
            raise SpectrascopeError(f"{', '.join('--' + k.replace('_', '-') for k in slurm)}: Slurm options; a Ray "
                                    "run takes only --ray-address (its GPUs come from --gpus)")
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise SpectrascopeError(f"unknown Ray option(s) {', '.join(unknown)}: the Ray backend takes only address")
        address = (options.get("address") or os.environ.get("RAY_ADDRESS") or "").strip()
        if not address:
            raise SpectrascopeError("no Ray cluster given: pass --ray-address http://HEAD:8265 (the dashboard "
                                    "address) or set $RAY_ADDRESS")
        client(address)                                          # unreachable: one line, nothing queued
        nodes = alive_nodes(address)
        gpus = [int(n.get("GPU", 0)) for n in nodes]
        cpus = [int(n.get("CPU", 0)) for n in nodes]
        want = max(1, int(config.get("gpus") or 1))
        if not any(gpus):                                        # a CPU cluster: CPU processes, as on a CPU machine
            if want > 1:
                raise SpectrascopeError(f"gpus={want}: the Ray cluster at {address} has no GPU; ask for at most 1 "
                                        "(a CPU run) or use cpu_processes (--cpu-processes)")
            processes = max(1, int(config.get("cpu_processes") or 1))
            if processes > sum(cpus):
                raise SpectrascopeError(f"cpu_processes={processes}: the Ray cluster at {address} has "
                                        f"{sum(cpus)} CPUs in all")
            return {"address": address, "num_gpus": 0, "num_cpus": 1, "processes": processes}
        if want > sum(gpus):
            raise SpectrascopeError(f"gpus={want}: more GPUs than the Ray cluster at {address} offers "
                                    f"({sum(gpus)} in all)")
        return {"address": address, "num_gpus": want, "num_cpus": 1, "processes": want}   # over nodes: Ray Train

    # ---- launching ------------------------------------------------------------------------------------------
    def launch(self, job, command: list[str], env: dict[str, str]) -> str:
        options = job.backend_options or {}
        processes = int(options.get("processes") or 1)
        driver = {"entrypoint_num_cpus": float(options.get("num_cpus", 1)),
                  "entrypoint_num_gpus": float(options.get("num_gpus", 0))}
        if processes > 1:        # data-parallel ranks on one node or many: Ray Train workers (backends.ray_train)
            command = [command[0], "-m", "training.backends.ray_train", "--job", str(job.id), "--workers",
                       str(processes), *(["--gpu"] if options.get("num_gpus") else [])]
            driver = {"entrypoint_num_cpus": 0.0, "entrypoint_num_gpus": 0.0}      # the workers hold the resources
        submission = f"spectrascope-{job.id}-{uuid.uuid4().hex[:8]}"
        env_vars = {k: v for k, v in env.items()
                    if (k in ENV_KEYS or k.startswith(ENV_PREFIXES)) and k not in ENV_SECRETS}
        return client(options["address"]).submit_job(
            entrypoint=shlex.join(command), submission_id=submission,
            runtime_env={"env_vars": env_vars}, **driver,
            metadata={"spectrascope_job": str(job.id), "spectrascope_name": job.name,
                      "spectrascope_data": env.get("SPECTRASCOPE_DATA", "")})

    # ---- following ------------------------------------------------------------------------------------------
    def poll(self, job) -> Remote:
        address = (job.backend_options or {}).get("address")
        try:
            info = client(address).get_job_info(job.external_id)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the engine did not answer
            if _missing(exc):
                return Remote("ended", f"the Ray cluster at {address} has no job {job.external_id} (restarted?)")
            _forget(address)
            return Remote("unreachable", _one_line(exc))
        status = str(getattr(info.status, "value", info.status))
        message = (info.message or "").strip() or None
        if status in PENDING:
            return Remote("pending", message)
        if status in RUNNING:
            return Remote("running")
        return Remote("ended", f"{status}: {message}" if message else status)

    def cancel(self, job) -> None:
        address = (job.backend_options or {}).get("address")
        if not job.external_id:
            return
        try:
            ray_client = client(address)
            ray_client.stop_job(job.external_id)
            deadline = time.monotonic() + STOP_WAIT_S
            while time.monotonic() < deadline:
                status = str(getattr(ray_client.get_job_status(job.external_id), "value", ""))
                if status in ENDED:
                    return
                time.sleep(0.25)
        except SpectrascopeError:
            raise
        except Exception as exc:  # noqa: BLE001
            if _missing(exc):
                return                                    # the cluster no longer has it: nothing left to stop
            raise SpectrascopeError(f"could not stop Ray job {job.external_id} at {address}: {_one_line(exc)}; "
                                    "try again when the cluster answers") from None
        raise SpectrascopeError(f"Ray job {job.external_id} did not stop within {STOP_WAIT_S:.0f} s: see "
                                f"`ray job status {job.external_id} --address {address}`")

    def logs(self, job, lines: int = 50) -> str:
        address = (job.backend_options or {}).get("address")
        if not job.external_id:
            return ""
        try:
            text = client(address).get_job_logs(job.external_id)
        except Exception:  # noqa: BLE001 - no logs to show: the caller falls back to the run folder's log
            return ""
        return "\n".join(text.splitlines()[-lines:])


def client(address: str):
    """A JobSubmissionClient for the dashboard at `address` (kept per address; every request times out after
    HTTP_TIMEOUT_S); a SpectrascopeError when the cluster does not answer."""
    with _LOCK:
        if address in _CLIENTS:
            return _CLIENTS[address]
        with _explicit_address():
            try:
                made = _client_class()(address)
            except Exception as exc:  # noqa: BLE001 - connection refused, timeout, not a Ray dashboard …
                raise SpectrascopeError(f"cannot reach the Ray cluster at {address}: {_one_line(exc)}; give the "
                                        "head's dashboard address, e.g. --ray-address http://HEAD:8265") from None
        _CLIENTS[address] = made
        return made


def alive_nodes(address: str) -> list[dict]:
    """The total resources ({"CPU": …, "GPU": …}) of each live node of the cluster (Ray's state API)."""
    from ray.util.state import list_nodes

    with _LOCK, _explicit_address():
        try:
            nodes = list_nodes(address=address, filters=[("state", "=", "ALIVE")], timeout=int(HTTP_TIMEOUT_S))
        except Exception as exc:  # noqa: BLE001
            raise SpectrascopeError(f"cannot list the nodes of the Ray cluster at {address}: "
                                    f"{_one_line(exc)}") from None
    return [dict(getattr(n, "resources_total", None) or {}) for n in nodes]


def _client_class():
    from ray.job_submission import JobSubmissionClient

    class TimedClient(JobSubmissionClient):
        """Ray's client with a timeout on every request: a dead head must not hang the queue."""

        def _do_request(self, method, endpoint, **kwargs):
            kwargs.setdefault("timeout", HTTP_TIMEOUT_S)
            return super()._do_request(method, endpoint, **kwargs)

    return TimedClient


class _explicit_address:
    """Ray's clients take $RAY_ADDRESS / $RAY_API_SERVER_ADDRESS over the address they are given; while one is
    made (under _LOCK) those are set aside, so a run goes where its options say."""

    KEYS = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")

    def __enter__(self):
        self.saved = {k: os.environ.pop(k) for k in self.KEYS if k in os.environ}

    def __exit__(self, *exc):
        os.environ.update(self.saved)


def _forget(address: str | None) -> None:
    with _LOCK:
        _CLIENTS.pop(address, None)


def _missing(exc: BaseException) -> bool:
    """Whether the dashboard answered that it has no such job (HTTP 404)."""
    text = str(exc)
    return "status code 404" in text or "does not exist" in text


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


BACKEND = RayBackend()
