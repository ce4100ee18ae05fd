"""Saved allocations shared between pages: data_dir()/allocations/<name>.json plus current.json (the one to train)."""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from analysis.allocation import Allocation, from_json, to_json
from analysis.config import data_dir
from analysis.types import SpectrascopeError

FOLDER = "allocations"
CURRENT = "current"                       # current.json: a copy of the chosen allocation plus its "name"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
MAX_BYTES = 8 * 1024 * 1024               # an allocation file is a few kB; refuse anything absurd


@dataclass(frozen=True)
class SavedAllocation:
    """One saved allocation as listed: its name, file, a short summary, or why it could not be read."""

    name: str
    path: Path
    modified: float
    strategy: str | None = None
    model: str | None = None
    total: int | None = None
    n_layers: int | None = None
    current: bool = False
    error: str | None = None


def store_dir(root: Path | str | None = None) -> Path:
    """The allocations folder (created if missing): <root, default data_dir()>/allocations."""
    path = (Path(root) if root is not None else data_dir()) / FOLDER
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_name(name) -> str:
    """A valid allocation name (letters, digits, '.', '_', '-'; starts with a letter or digit; ≤ 80 characters)."""
    if not isinstance(name, str):
        raise SpectrascopeError(f"the allocation name must be text, got {name!r}.")
    name = name.strip()
    if name.endswith(".json"):
        name = name[:-len(".json")]
    if not NAME_RE.fullmatch(name) or ".." in name:
        shown = name or "(empty)"
        raise SpectrascopeError(
            f"invalid allocation name {shown!r}: use 1–80 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit (no '/', spaces or '..'), e.g. alphalora-T30.")
    if name.lower() == CURRENT:
        raise SpectrascopeError(f"{name!r} is reserved for the allocation chosen for training; pick another name.")
    return name


def safe_name(text: str, fallback: str = "allocation") -> str:
    """Turn any text (a model path, a strategy) into a valid allocation name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text or "")).strip("-._")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)[-80:].strip("-._")
    try:
        return check_name(cleaned)
    except SpectrascopeError:
        return fallback


def path_of(name: str, root: Path | str | None = None) -> Path:
    """The file of a saved allocation (the name is validated first, so it cannot leave the folder)."""
    return store_dir(root) / f"{check_name(name)}.json"


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(alloc: Allocation, name: str, *, make_current: bool = True, root: Path | str | None = None) -> Path:
    """Save an allocation as <name>.json (validated by loading it back); optionally make it current.json too."""
    path = path_of(name, root)
    text = to_json(alloc)
    checked = from_json(text)                         # the file will be readable by every consumer
    try:
        _write_atomic(path, text)
        if make_current:
            d = checked.to_dict()
            d["name"] = path.stem
            _write_atomic(store_dir(root) / f"{CURRENT}.json", json.dumps(d, indent=2, ensure_ascii=False))
    except OSError as exc:
        raise SpectrascopeError(f"cannot write {path}: {exc.strerror or exc}; check the data directory "
                                "($SPECTRASCOPE_DATA) is writable.") from None
    return path


def _read(path: Path) -> Allocation:
    try:
        if path.stat().st_size > MAX_BYTES:
            raise SpectrascopeError(f"{path.name} is larger than {MAX_BYTES // 2**20} MiB; not an allocation file.")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise SpectrascopeError(f"cannot read {path}: {exc}") from None
    try:
        return from_json(text)
    except SpectrascopeError as exc:
        raise SpectrascopeError(f"{path.name}: {exc}") from None


def load(name: str, root: Path | str | None = None) -> Allocation:
    """A saved allocation by name (validated with from_json)."""
    path = path_of(name, root)
    try:
        return _read(path)
    except FileNotFoundError:
        names = [s.name for s in list_saved(root)]
        hint = f"saved: {', '.join(names)}" if names else "none is saved yet"
        raise SpectrascopeError(f"no saved allocation named {path.stem!r} ({hint}).") from None


def current_name(root: Path | str | None = None) -> str | None:
    """The name of the allocation chosen for training, or None."""
    path = store_dir(root) / f"{CURRENT}.json"
    try:
        name = json.loads(path.read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def load_current(root: Path | str | None = None) -> Allocation | None:
    """The allocation chosen for training (current.json), or None if none was chosen."""
    try:
        return _read(store_dir(root) / f"{CURRENT}.json")
    except FileNotFoundError:
        return None


def current_path(root: Path | str | None = None) -> Path | None:
    """The path of current.json if an allocation was chosen for training (usable as a trainer allocation_file)."""
    path = store_dir(root) / f"{CURRENT}.json"
    return path if path.is_file() else None


def list_saved(root: Path | str | None = None) -> list[SavedAllocation]:
    """Saved allocations, newest first (unreadable files are listed with their error, not hidden)."""
    folder = store_dir(root)
    chosen = current_name(root)
    out = []
    for path in folder.glob("*.json"):
        if path.stem == CURRENT or not NAME_RE.fullmatch(path.stem) or not path.is_file():
            continue
        try:
            modified = path.stat().st_mtime
        except OSError:
            continue
        try:
            alloc = _read(path)
        except (SpectrascopeError, FileNotFoundError) as exc:
            out.append(SavedAllocation(path.stem, path, modified, error=str(exc)))
            continue
        out.append(SavedAllocation(path.stem, path, modified, alloc.strategy, alloc.model, alloc.total,
                                   len(alloc.experts), path.stem == chosen))
    return sorted(out, key=lambda s: (-s.modified, s.name))
