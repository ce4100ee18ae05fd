"""Finished fine-tuning runs on disk (data_dir()/runs/<id>-<name>/) and what of each can be compared to its base."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from analysis.config import data_dir
from training import registry, run_layout

RUN_DIR = run_layout.RUN_DIR
# Run folders without a manifest are recognised by their files: a peft adapter, MoE-LoRA's files, a model folder.
LORA_MARKER = "adapter_config.json"
MOE_MARKERS = ("moe_lora_config.json", "moe_lora.safetensors")
FULL_MARKER = "config.json"
WEIGHT_GLOBS = ("*.safetensors", "*.bin")


@dataclass(frozen=True)
class RunArtifact:
    """One finished run's comparable artifact: a LoRA adapter (base + adapter), a full model folder, or MoE-LoRA."""

    run_id: int | None
    name: str
    folder: Path                      # the run folder
    method: str                       # a registered method (training.registry)
    artifact: Path                    # adapter folder / MoE-LoRA folder / full model folder
    base: str | None                  # the base model (built-in name or folder); None: unknown, use the page's base
    task: str | None = None
    settings: dict = field(default_factory=dict, compare=False, hash=False)   # rank, alpha, experts, steps …
    metrics: dict = field(default_factory=dict, compare=False, hash=False)    # test metrics from result.json

    @property
    def key(self) -> str:
        """A stable id for selections and URLs: the run folder's name."""
        return self.folder.name

    @property
    def label(self) -> str:
        """'<key> (method, rank, allocation or experts, task, seed)': a full fine-tune has no rank, a MoE-LoRA run
        with an allocation shows it ('alphalora 4-5-6-5-4-6 (30)') instead of the unused default expert count."""
        s = self.settings
        bits = [registry.label(self.method)]
        if s.get("rank"):                             # only methods that take a rank have one in settings
            bits.append(f"r={s['rank']}")
        if s.get("allocation"):
            bits.append(str(s["allocation"]))
        elif s.get("experts"):
            bits.append(f"{s['experts']} experts")
        if self.task:
            bits.append(Path(str(self.task)).stem)
        if s.get("seed") is not None:
            bits.append(f"seed {s['seed']}")
        return f"{self.key} ({', '.join(bits)})"

    @property
    def recipe(self) -> tuple:
        """Everything that defines the run except its seed (and the steps it ended at): runs with the same recipe
        and different seeds measure seed-to-seed noise."""
        return (self.method, self.base, self.task,
                tuple(sorted((k, str(v)) for k, v in self.settings.items() if k not in ("seed", "steps"))))

    def sources(self) -> tuple[str | None, str | None, str | None]:
        """(base, fine-tuned model, adapter) as open_source arguments, by the method's weights: a peft adapter →
        base + adapter; a whole model → the folder. MoE-LoRA ("moe") has no ModelSource form (it is merged per
        expert by the page) and a "merged" run is loaded and merged (finetuned_source): (base, None, None)."""
        weights = self.weights
        if weights == "adapter":
            return self.base, self.base, str(self.artifact)
        if weights == "model":
            return self.base, str(self.artifact), None
        return self.base, None, None

    def finetuned_source(self):
        """The tuned weights as an analysis ModelSource: base + adapter, the model folder, or ("merged") the run
        loaded with its adapter merged in memory (training.merged); None for MoE-LoRA."""
        if self.weights == "merged":
            from training.merged import merged_source

            return merged_source(self.folder)
        _, model, adapter = self.sources()
        if model is None:
            return None
        from analysis.sources import open_source

        return open_source(model, adapter)

    @property
    def weights(self) -> str:
        """How the tuned weights are read (registry.Method.weights): adapter, model, moe, or merged."""
        return registry.get(self.method).weights if self.method in registry.names() else "adapter"


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _has_weights(folder: Path) -> bool:
    return any(any(folder.glob(g)) for g in WEIGHT_GLOBS)


def find_artifact(run_folder: Path) -> tuple[str, Path] | None:
    """(method, folder) of the run's saved weights: the manifest's method and its artifact folder when both are
    there, else recognised by their files (not by the job database) in artifacts/ and its sub-folders:
    adapter_config.json → a peft adapter (LoRA), moe_lora_config.json + moe_lora.safetensors → MoE-LoRA,
    config.json + weights → a full model.
    """
    root = run_layout.artifacts(run_folder)
    if not root.is_dir():
        return None
    method = (_read_json(run_layout.manifest(run_folder)).get("config") or {}).get("method")
    if method in registry.names():
        folder = run_layout.artifact_folder(run_folder, method)
        if folder.is_dir() and (_has_weights(folder) or any(folder.iterdir())):
            return method, folder
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    for folder in candidates:
        if all((folder / m).is_file() for m in MOE_MARKERS):
            return "moe_lora", folder
        if (folder / LORA_MARKER).is_file() and _has_weights(folder):
            return "lora", folder
    for folder in candidates:
        if (folder / FULL_MARKER).is_file() and _has_weights(folder):
            return "full", folder
    return None


def _base_of(manifest: dict, method: str, artifact: Path) -> str | None:
    """The run's base model: the manifest's model (a built-in name or an existing folder), else its folder."""
    from analysis.builtin_models import resolve_builtin
    for value in (manifest.get("model"), manifest.get("model_folder"),
                  (manifest.get("config") or {}).get("model")):
        if not value:
            continue
        value = str(value)
        if Path(value).expanduser().is_dir() or resolve_builtin(value):
            return value
    if (artifact / LORA_MARKER).is_file():
        base = _read_json(artifact / LORA_MARKER).get("base_model_name_or_path")
        if base and (Path(str(base)).expanduser().is_dir() or resolve_builtin(str(base))):
            return str(base)
    return None


def describe_allocation(alloc: dict, method: str) -> str | None:
    """Short text for a run's allocation JSON: 'alphalora 4-5-6-5-4-6 (30)' (experts per layer, total) for
    MoE-LoRA, 'alphalora ranks 4-8-8-4 (24)' for a LoRA rank allocation; None when it holds neither."""
    strategy = str(alloc.get("strategy") or "manual")
    experts, ranks = alloc.get("experts"), alloc.get("ranks")
    kind = registry.get(method).allocation if method in registry.names() else None
    if kind == "experts" and isinstance(experts, list) and experts:
        return f"{strategy} {'-'.join(str(n) for n in experts)} ({sum(int(n) for n in experts)})"
    if kind == "ranks" and isinstance(ranks, list) and ranks:
        return f"{strategy} ranks {'-'.join(str(n) for n in ranks)} ({sum(int(n) for n in ranks)})"
    if kind == "ranks" and alloc.get("rank_pattern"):
        return f"{strategy} rank pattern"
    return None


def run_settings(method: str, config: dict, manifest: dict | None = None) -> dict:
    """The settings a run is labelled and grouped by: rank/alpha/experts only where the method uses them (a full
    fine-tune has no rank; an allocation replaces the default expert count), steps, lr, seed, allocation."""
    takes = registry.get(method).takes if method in registry.names() else ()
    keys = [k for k in ("rank", "alpha", "experts", "top_k") if k in takes]
    settings = {k: config[k] for k in (*keys, "max_steps", "epochs", "lr", "seed") if config.get(k) is not None}
    alloc = config.get("allocation") or (manifest or {}).get("allocation")
    text = describe_allocation(alloc, method) if isinstance(alloc, dict) else None
    if text:
        settings["allocation"] = text
        settings.pop("experts", None)
        settings.pop("top_k", None)
        if isinstance(alloc.get("ranks"), list):
            settings.pop("rank", None)                # the allocation gives the ranks layer by layer
    return settings


def seed_pairs(runs: list[RunArtifact]) -> list[tuple[RunArtifact, RunArtifact]]:
    """Pairs of runs with the same recipe and different seeds (the first two seeds of each recipe, by run id)."""
    groups: dict[tuple, list[RunArtifact]] = {}
    for r in runs:
        groups.setdefault(r.recipe, []).append(r)
    out = []
    for group in groups.values():
        seeds: dict = {}
        for r in sorted(group, key=lambda r: (r.run_id is None, r.run_id, r.name)):
            seeds.setdefault(r.settings.get("seed"), r)
        if len(seeds) >= 2 and None not in list(seeds)[:2]:
            a, b = list(seeds.values())[:2]
            out.append((a, b))
    return out


def list_runs(root: str | Path | None = None) -> list[RunArtifact]:
    """Finished runs (result.json status "done", or weights saved when there is no result.json) under
    root (default data_dir()/runs), by run id; runs without recognisable weights are left out."""
    root = Path(root) if root is not None else run_layout.runs_root(data_dir())
    if not root.is_dir():
        return []
    out = []
    for folder in root.iterdir():
        m = RUN_DIR.match(folder.name)
        if not m or not folder.is_dir():
            continue
        result = _read_json(run_layout.result(folder))
        if result and result.get("status") not in (None, "done"):
            continue                                  # failed / cancelled / lost runs have nothing to compare
        found = find_artifact(folder)
        if found is None:
            continue
        method, artifact = found
        manifest = _read_json(run_layout.manifest(folder))
        config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
        settings = run_settings(method, config, manifest)
        if result.get("steps") is not None:
            settings["steps"] = result["steps"]
        test = result.get("test") if isinstance(result.get("test"), dict) else {}
        out.append(RunArtifact(run_id=int(m.group(1)), name=m.group(2), folder=folder, method=method,
                               artifact=artifact, base=_base_of(manifest, method, artifact),
                               task=manifest.get("task") or config.get("task"), settings=settings,
                               metrics={k: v for k, v in test.items() if isinstance(v, (int, float))}))
    return sorted(out, key=lambda r: (r.run_id, r.name))
