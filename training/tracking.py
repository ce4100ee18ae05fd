"""MLflow tracking of runs: params, per-step loss, validation / test / lm-eval metrics, per-layer α, artifacts."""
from __future__ import annotations

import json
import math
import os
import queue
import re
import sys
import threading
import time
from pathlib import Path

from analysis.config import data_dir
from training import run_layout

EXPERIMENT = "spectrascope"             # the MLflow experiment every run goes to ($MLFLOW_EXPERIMENT_NAME overrides)
DB = "mlflow.db"                        # the default store: sqlite:///<data>/mlflow.db
ARTIFACT_ROOT = "mlflow-artifacts"      # … and its artifacts beside it: <data>/mlflow-artifacts
# TrainConfig fields that say where and whether a run is tracked: not hyperparameters, not logged as params.
TRACKING_FIELDS = ("mlflow", "mlflow_uri", "mlflow_alpha")
OFF_SWITCH = "SPECTRASCOPE_MLFLOW"      # =0: no run is tracked (e.g. a test suite that checks tracking elsewhere)
FLUSH_S = 2.0                           # progress metrics are sent in batches at most this often
PARAM_MAX = 6000                        # MLflow's longest param value (mlflow.utils.validation)
STATUS = {"done": "FINISHED", "failed": "FAILED", "cancelled": "KILLED", "lost": "FAILED"}


def warn(text: str) -> None:
    """A tracking problem, as one line in the run's log (stderr): tracking never fails a run."""
    print(f"warning: MLflow: {' '.join(str(text).split())[:500]}", file=sys.stderr, flush=True)


def default_uri(data: str | Path | None = None) -> str:
    """$MLFLOW_TRACKING_URI, else the SQLite store in the data directory (no server needed)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path(data) if data else data_dir()).resolve() / DB}"


def destination(config: dict) -> str | None:
    """Where a job's run logs: None when tracking is off (config mlflow false, or $SPECTRASCOPE_MLFLOW=0 for
    every run: a test suite's switch), else the config's mlflow_uri or default_uri()."""
    if config.get("mlflow") is False or os.environ.get(OFF_SWITCH, "").strip().lower() in ("0", "off", "false", "no"):
        return None
    return config.get("mlflow_uri") or default_uri()


def client(uri: str):
    """An MlflowClient for `uri`; a local SQLite store that does not exist yet is created atomically first."""
    from mlflow import MlflowClient

    if uri.startswith("sqlite:///"):
        create_store(Path(uri[len("sqlite:///"):]))
    return MlflowClient(tracking_uri=uri)


def create_store(path: Path) -> None:
    """Create MLflow's SQLite store at `path` when missing: its tables are made in a temporary file (MLflow's own
    migrations, ~5 s), then linked into place. A worker killed meanwhile, or two creating it at once, never
    leave a half-made store (MLflow cannot open one: 'table … already exists')."""
    if path.exists():
        return
    from mlflow import MlflowClient

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)
        try:
            os.link(tmp, path)                # atomic, and never over a store another process made meanwhile
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


def experiment_id(mlflow_client, uri: str) -> str:
    """The id of the experiment runs go to, created when missing (its artifacts beside a SQLite store)."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / ARTIFACT_ROOT).resolve().as_uri()
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
    except Exception:  # noqa: BLE001 - another worker created it at the same moment
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def params_of(config: dict) -> dict[str, str]:
    """The run's config as MLflow params: one per field (dicts and lists as JSON), tracking fields left out."""
    out = {}
    for key, value in sorted(config.items()):
        if key in TRACKING_FIELDS:
            continue
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        out[key] = text if len(text) <= PARAM_MAX else text[:PARAM_MAX - 3] + "..."
    return out


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metric_name(*parts: str) -> str:
    """A metric key MLflow accepts (letters, digits, _ - . / space :), e.g. lm_eval/hellaswag/acc_norm."""
    return "/".join(re.sub(r"[^A-Za-z0-9_\-. :]", "_", str(p)) for p in parts if str(p))


def result_metrics(result: dict) -> dict[str, float]:
    """The numbers of a run's result: test/<m>, validation/<m> (best pass), train_loss, seconds, steps…"""
    out = {}
    for group in ("test", "validation"):
        for key, value in (result.get(group) or {}).items():
            if _finite(value):
                out[metric_name(group, key)] = float(value)
    for key in ("train_loss", "seconds", "steps", "best_step", "trainable_params", "total_params"):
        if _finite(result.get(key)):
            out[key] = float(result[key])
    return out


def lm_eval_metrics(results: dict) -> dict[str, float]:
    """lm-eval's numbers as lm_eval/<task>/<metric>: its `results` section (or the dict itself), filters kept
    after a '/' ('acc,none' -> acc, 'exact_match,strict-match' -> exact_match/strict-match)."""
    section = results.get("results", results) if isinstance(results, dict) else {}
    out = {}
    for task, values in (section or {}).items():
        if _finite(values):
            out[metric_name("lm_eval", task)] = float(values)
            continue
        for key, value in (values or {}).items() if isinstance(values, dict) else ():
            if _finite(value):
                metric, _, flt = str(key).partition(",")
                out[metric_name("lm_eval", task, metric, "" if flt in ("", "none") else flt)] = float(value)
    return out


def progress_metrics(line: dict) -> dict[str, float]:
    """The metrics of one progress line (logged at its step): loss, lr, tokens_per_s, val/<m> on validation steps."""
    out = {k: float(line[k]) for k in ("loss", "lr", "tokens_per_s") if _finite(line.get(k))}
    for key, value in (line.get("eval") or {}).items():
        if _finite(value):
            out[metric_name("val", key)] = float(value)
    return out


def alpha_metrics(run_dir: str | Path) -> dict[str, float]:
    """Per-layer mean α (weightwatcher) of the base (`alpha/layer_03/before`) and of the tuned weights
    (`…/after`: base + adapter, the full model, or the merged run); MoE-LoRA has no single tuned matrix: before
    only. The base's analysis is cached in the data directory, so it costs once per base model."""
    from analysis.engine import analyze
    from analysis.sources import open_source
    from training.runs_index import list_runs

    run_dir = Path(run_dir)
    run = next((r for r in list_runs(run_dir.parent) if r.folder.name == run_dir.name), None)
    if run is None:
        return {}
    out = {}
    tuned = run.finetuned_source()
    for when, source in (("before", open_source(run.base)), ("after", tuned)):
        if source is None:
            continue
        for row in analyze(source=source).layer_rows:
            if _finite(row.get("alpha")):
                out[metric_name("alpha", f"layer_{int(row['layer']):02d}", when)] = float(row["alpha"])
    return out


def _metrics(values: dict[str, float], step: int = 0):
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, v, now, step) for k, v in values.items()]


def _log_metrics(mlflow_client, run_id: str, metrics: list) -> None:
    for start in range(0, len(metrics), 1000):
        mlflow_client.log_batch(run_id, metrics=metrics[start:start + 1000])


def recorded_run(run_dir: str | Path) -> dict | None:
    """{"run_id", "uri", "experiment_id"} of the MLflow run a run folder logs to (mlflow_run.json), or None."""
    try:
        value = json.loads(run_layout.mlflow_run(run_dir).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and value.get("run_id") and value.get("uri") else None


def log_lm_eval(run_dir_or_job, results: dict) -> int:
    """Log lm-eval results (lm_eval.simple_evaluate's dict, or its `results` section) to the MLflow run of a run
    folder or a Job; returns how many metrics were logged (0 when the run is not tracked). Never raises: a
    failure is a warning line on stderr."""
    run_dir = getattr(run_dir_or_job, "run_dir", run_dir_or_job)
    try:
        found = recorded_run(run_dir)
        values = lm_eval_metrics(results)
        if found is None or not values:
            return 0
        _log_metrics(client(found["uri"]), found["run_id"], _metrics(values))
        return len(values)
    except Exception as exc:  # noqa: BLE001 - tracking never fails the caller
        warn(f"lm-eval results not logged: {type(exc).__name__}: {exc}")
        return 0


class Tracker(threading.Thread):
    """One job's MLflow run, logged from a background thread so training never waits on it: `progress(line)`
    queues a progress line, `finish(result, status)` logs the outcome and waits for the thread (bounded).

    A resumed run (mlflow_run.json in its folder) continues its MLflow run: params are not logged again, and
    progress steps the run already has (logged before a kill, after the checkpoint) are skipped, so the loss
    history keeps one entry per step.
    """

    def __init__(self, job_id: int, name: str, config: dict, run_dir: str | Path, uri: str,
                 earlier: list[dict] | None = None):
        super().__init__(daemon=True, name="mlflow")
        self.earlier = list(earlier or [])      # progress lines before this process (a resumed run's)
        self.job_id, self.name, self.config, self.run_dir, self.uri = job_id, name, config, Path(run_dir), uri
        self.inbox: queue.Queue = queue.Queue()
        self.client = None
        self.run_id: str | None = None
        self.failed = False

    # ---- called from the worker --------------------------------------------------------------------------------
    def progress(self, line: dict) -> None:
        self.inbox.put(("progress", line))

    def finish(self, result: dict, status: str, timeout: float = 300.0) -> None:
        self.inbox.put(("finish", (result, status)))
        self.join(timeout)
        if self.is_alive():
            warn(f"still logging after {timeout:.0f} s; the run's outcome is recorded without it")

    # ---- the thread ------------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._open()
        except Exception as exc:  # noqa: BLE001 - tracking never fails a run
            self._fail("could not open the run", exc)
        try:
            self._loop()
        except Exception as exc:  # noqa: BLE001
            self._fail("logging stopped", exc)

    def _loop(self) -> None:
        pending, skip, last = [], self._logged_steps(), time.monotonic()
        for line in self.earlier:            # steps up to the checkpoint that MLflow has not got (killed before)
            if "step" in line and int(line["step"]) not in skip:
                pending += _metrics(progress_metrics(line), int(line["step"]))
        while True:
            try:
                kind, value = self.inbox.get(timeout=FLUSH_S)
            except queue.Empty:
                kind, value = None, None
            if kind == "progress" and "step" in value and int(value["step"]) not in skip:
                pending += _metrics(progress_metrics(value), int(value["step"]))
            if pending and (kind in (None, "finish") or time.monotonic() - last >= FLUSH_S):
                self._safely("progress metrics not logged", _log_metrics, self.client, self.run_id, pending)
                pending, last = [], time.monotonic()
            if kind == "finish":
                self._safely("the outcome not logged", self._close, *value)
                return

    def _open(self) -> None:
        self.client = client(self.uri)
        found = recorded_run(self.run_dir)
        if found is not None and found["uri"] == self.uri:
            self.run_id = found["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "resumed", str(int(found.get("resumes", 0)) + 1))
            found["resumes"] = int(found.get("resumes", 0)) + 1
            self._record(found)
            return
        tags = {"job_id": str(self.job_id), "run_dir": str(self.run_dir), "method": str(self.config.get("method")),
                "task": str(self.config.get("task")), "model": str(self.config.get("model") or "default")}
        run = self.client.create_run(experiment_id(self.client, self.uri), run_name=self.name, tags=tags)
        self.run_id = run.info.run_id
        self._record({"run_id": self.run_id, "uri": self.uri, "experiment_id": run.info.experiment_id})
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in params_of(self.config).items()]
        for start in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def _record(self, value: dict) -> None:
        path = run_layout.mlflow_run(self.run_dir)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)

    def _logged_steps(self) -> set[int]:
        if self.failed or self.run_id is None:
            return set()
        try:
            return {int(m.step) for m in self.client.get_metric_history(self.run_id, "loss")}
        except Exception as exc:  # noqa: BLE001
            self._fail("could not read the loss history", exc)
            return set()

    def _close(self, result: dict, status: str) -> None:
        metrics = result_metrics(result)
        if result.get("lm_eval"):
            metrics.update(lm_eval_metrics(result["lm_eval"]))
        if status == "done" and self.config.get("mlflow_alpha", True) and "method" in self.config:
            try:
                metrics.update(alpha_metrics(self.run_dir))
            except Exception as exc:  # noqa: BLE001 - α is extra: the rest is still logged
                warn(f"per-layer alpha not logged: {type(exc).__name__}: {exc}")
        _log_metrics(self.client, self.run_id, _metrics(metrics, int(result.get("steps") or 0)))
        if status == "failed" and result.get("error"):
            self.client.set_tag(self.run_id, "error", str(result["error"])[:5000])
        for name in (run_layout.MANIFEST, run_layout.RESULT, run_layout.PROGRESS):
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        artifacts = run_layout.artifacts(self.run_dir)
        if status == "done" and artifacts.is_dir():
            self.client.log_artifacts(self.run_id, str(artifacts), run_layout.ARTIFACTS)
        self.client.set_terminated(self.run_id, STATUS.get(status, "FAILED"))

    def _safely(self, what: str, fn, *args) -> None:
        if self.failed:
            return
        for attempt in range(2):             # once more after a pause: a shared SQLite store may be busy
            try:
                fn(*args)
                return
            except Exception as exc:  # noqa: BLE001 - tracking never fails a run
                if attempt:
                    self._fail(what, exc)
                else:
                    time.sleep(1.0)

    def _fail(self, what: str, exc: BaseException) -> None:
        self.failed = True
        warn(f"{what} ({type(exc).__name__}: {exc}); the run goes on without MLflow")


def start(job_id: int, name: str, config: dict, run_dir: str | Path) -> Tracker | None:
    """A started Tracker for a job, or None when its config turns tracking off (`mlflow: false`). MLflow is
    imported and opened in the tracker's thread: a failure there is a warning, and the run goes on."""
    uri = destination(config)
    if uri is None:
        return None
    from training.jobs import read_jsonl

    tracker = Tracker(job_id, name, config, run_dir, uri, read_jsonl(run_layout.progress(run_dir)))
    tracker.start()
    return tracker
