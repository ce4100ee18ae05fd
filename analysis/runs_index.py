"""Finished fine-tuning runs on disk (data_dir()/runs/<id>-<name>/) and what of each can be compared to its base."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from analysis.config import data_dir

RUN_DIR = re.compile(r"^(\d+)-(.+)$")
METHOD_LABELS = {"lora": "LoRA", "moe_lora": "MoE-LoRA", "full": "full fine-tune"}
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
    method: str                       # lora | moe_lora | full
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
        bits = [METHOD_LABELS.get(self.method, self.method)]
        if self.method in ("lora", "moe_lora") and self.settings.get("rank"):
            bits.append(f"r={self.settings['rank']}")
        if self.method == "moe_lora" and self.settings.get("experts"):
            bits.append(f"{self.settings['experts']} experts")
        if self.task:
            bits.append(Path(str(self.task)).stem)
        return f"{self.key} ({', '.join(bits)})"

    def sources(self) -> tuple[str | None, str | None, str | None]:
        """(base, fine-tuned model, adapter) as open_source arguments: LoRA → base + adapter; full → the folder.

        MoE-LoRA has no ModelSource form (it is merged per expert by the page): (base, None, None).
        """
        if self.method == "lora":
            return self.base, self.base, str(self.artifact)
        if self.method == "full":
            return self.base, str(self.artifact), None
        return self.base, None, None


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _has_weights(folder: Path) -> bool:
    return any(any(folder.glob(g)) for g in WEIGHT_GLOBS)


def find_artifact(run_folder: Path) -> tuple[str, Path] | None:
    """(method, folder) of the run's saved weights, recognised by their files (not by the job database).

    Looks in artifacts/ and its sub-folders (adapter/, moe_lora/, model/ today): adapter_config.json → LoRA,
    moe_lora_config.json + moe_lora.safetensors → MoE-LoRA, config.json + weights → full model.
    """
    root = run_folder / "artifacts"
    if not root.is_dir():
        return None
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
    if method == "lora":
        base = _read_json(artifact / LORA_MARKER).get("base_model_name_or_path")
        if base and (Path(str(base)).expanduser().is_dir() or resolve_builtin(str(base))):
            return str(base)
    return None


def list_runs(root: str | Path | None = None) -> list[RunArtifact]:
    """Finished runs (result.json status "done", or weights saved when there is no result.json) under
    root (default data_dir()/runs), by run id; runs without recognisable weights are left out."""
    root = Path(root) if root is not None else data_dir() / "runs"
    if not root.is_dir():
        return []
    out = []
    for folder in root.iterdir():
        m = RUN_DIR.match(folder.name)
        if not m or not folder.is_dir():
            continue
        result = _read_json(folder / "result.json")
        if result and result.get("status") not in (None, "done"):
            continue                                  # failed / cancelled / lost runs have nothing to compare
        found = find_artifact(folder)
        if found is None:
            continue
        method, artifact = found
        manifest = _read_json(folder / "manifest.json")
        config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
        settings = {k: config[k] for k in ("rank", "alpha", "experts", "top_k", "max_steps", "epochs", "lr", "seed")
                    if config.get(k) is not None}
        if result.get("steps") is not None:
            settings["steps"] = result["steps"]
        test = result.get("test") if isinstance(result.get("test"), dict) else {}
        out.append(RunArtifact(run_id=int(m.group(1)), name=m.group(2), folder=folder, method=method,
                               artifact=artifact, base=_base_of(manifest, method, artifact),
                               task=manifest.get("task") or config.get("task"), settings=settings,
                               metrics={k: v for k, v in test.items() if isinstance(v, (int, float))}))
    return sorted(out, key=lambda r: (r.run_id, r.name))
