"""Hugging Face hub ids: which files to fetch, a background shard-by-shard download into the cache, clear errors."""
from __future__ import annotations

import functools
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .types import SourceError

# f(bytes done, bytes total, file name), called from the thread that reads the model (never the download thread)
DownloadProgress = Callable[[int, int, str], None]

HUB_SPEC = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
_SNAPSHOT = re.compile(r"^models--(?P<repo>.+)$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt")
SAFETENSORS_INDEX, BIN_INDEX = "model.safetensors.index.json", "pytorch_model.bin.index.json"
_ADAPTER_FILES = {"adapter_model.safetensors", "adapter_model.bin", "adapter_config.json"}


def parse_spec(spec) -> tuple[str, str | None] | None:
    """(repo id, revision or None) for `org/name` or `org/name@revision`, else None."""
    match = HUB_SPEC.match(str(spec))
    return (match["repo"], match["revision"]) if match else None


def offline_mode() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub read it when it was imported."""
    from huggingface_hub import constants
    return bool(constants.is_offline_mode())


def endpoint() -> str:
    from huggingface_hub import constants
    return constants.ENDPOINT


def repo_cache(repo: str) -> Path:
    """The repo's folder in the Hugging Face cache (HF_HUB_CACHE, default ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))


def cached_snapshot(repo: str, revision: str | None) -> Path | None:
    """The cached snapshot folder of repo@revision (a branch, tag or commit), or None; never the network."""
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(repo, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - LocalEntryNotFoundError and friends: simply not cached
        return None


def snapshot_origin(folder) -> dict | None:
    """{"repo", "commit"} when `folder` is a snapshot in a Hugging Face cache (models--org--name/snapshots/<sha>)."""
    folder = Path(folder)
    match = _SNAPSHOT.match(folder.parent.parent.name) if folder.parent.name == "snapshots" else None
    if match is None or not _COMMIT.match(folder.name):
        return None
    return {"repo": match["repo"].replace("--", "/", 1), "commit": folder.name}


def not_cached_error(spec: str) -> SourceError:
    """The error for a hub id that is not cached while HF_HUB_OFFLINE=1 is set."""
    repo, revision = parse_spec(spec) or (spec, None)
    return SourceError(
        f"{spec!r} is not a local file or folder, and it is not in the local Hugging Face cache "
        f"({repo_cache(repo).parent}); HF_HUB_OFFLINE=1 is set, so nothing is downloaded: unset it to download "
        f"from {endpoint()}, or on a machine with no network download it elsewhere "
        f"(`hf download {repo}{' --revision ' + revision if revision else ''}`) and copy the cache in, "
        "or give a folder path")


def explain(err: Exception, spec: str) -> SourceError:
    """One line for a huggingface_hub / network failure: what went wrong and what to do."""
    import httpx2
    from huggingface_hub import get_token
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
    repo, revision = parse_spec(spec) or (spec, None)
    url = endpoint()
    status = getattr(getattr(err, "response", None), "status_code", None)
    token = "the token in use has no access to it" if get_token() else "no token is set"
    said = " ".join(str(err).split())[:300]                 # huggingface_hub's messages span lines
    if isinstance(err, GatedRepoError):
        return SourceError(f"access to {repo} was refused ({status}: a gated repository, {token}): accept its terms "
                           f"at {url}/{repo} and log in with `hf auth login` or set HF_TOKEN to a token that can "
                           "read it")
    if isinstance(err, RevisionNotFoundError):
        return SourceError(f"no such revision {revision!r} of {repo} on the hub (check the id / revision: a branch, "
                           "tag or commit hash)")
    if isinstance(err, RepositoryNotFoundError):
        return SourceError(f"no such model on the hub: {repo} (check the id / revision; a private repository also "
                           f"answers this when {token}: `hf auth login` or HF_TOKEN)")
    if status in (401, 403):
        return SourceError(f"access to {repo} was refused ({status}, {token}): log in with `hf auth login` or set "
                           "HF_TOKEN to a token that can read it")
    if isinstance(err, RemoteEntryNotFoundError):
        return SourceError(f"{repo}: a file the repository lists is missing on the hub ({said}); try another revision")
    if isinstance(err, OfflineModeIsEnabled):
        return not_cached_error(spec)
    if isinstance(err, (httpx2.TransportError, LocalEntryNotFoundError, ConnectionError, TimeoutError)):
        return SourceError(f"could not reach {url} to download {spec} ({type(err).__name__}): no network? Connect, "
                           f"or download it elsewhere (`hf download {repo}`) into the Hugging Face cache, or give a "
                           "folder path; set HF_ENDPOINT if you use a mirror")
    if isinstance(err, OSError) and "Consistency check failed" in str(err):
        return SourceError(f"a download of {spec} ended short ({said}); run again to retry")
    if isinstance(err, OSError):
        return SourceError(f"could not write {spec} into the Hugging Face cache ({said}); free disk space or set "
                           "HF_HOME to a writable folder")
    return SourceError(f"downloading {spec} from {url} failed: {type(err).__name__}: {said}")


# --------------------------------------------------------------------------------------------- file choice

def choose_files(names: list[str]) -> tuple[str, str | None, list[str], list[str]]:
    """(format, index file or None, weight files if known without the index, other files) for a repo listing:
    config and tokenizer files, and the safetensors weights (else the .bin ones); top-level files only."""
    top = set(n for n in names if "/" not in n)
    extras = [n for n in (*CONFIG_FILES, *TOKENIZER_FILES) if n in top]
    extras += sorted(n for n in top if re.fullmatch(r"tokenizer[^/]*\.json", n) and n not in extras)
    for fmt, index, single, suffix in (("safetensors", SAFETENSORS_INDEX, "model.safetensors", ".safetensors"),
                                       ("bin", BIN_INDEX, "pytorch_model.bin", ".bin")):
        if index in top:
            return fmt, index, [], extras
        if single in top:
            return fmt, None, [single], extras
        if fmt == "safetensors":
            loose = sorted(n for n in top if n.endswith(suffix) and n not in _ADAPTER_FILES)
            if loose:
                return fmt, None, loose, extras
    if "adapter_config.json" in top:
        raise SourceError("is a PEFT adapter repository, not a model: download it (`hf download …`), pass its folder "
                          "as the adapter and its base model as the model")
    ggufs = sorted(n for n in names if n.endswith(".gguf"))
    hint = f" (it holds GGUF files: `hf download <repo> {ggufs[0]}` and give that file's path)" if ggufs else ""
    raise SourceError(f"has no safetensors or pytorch_model.bin weights at its top level{hint}")


# --------------------------------------------------------------------------------------------- downloads

class _Meter:
    """The tqdm_class handed to hf_hub_download: counts one file's bytes for a Download, prints nothing."""

    def __init__(self, download: "Download | None", name: str, total=None, initial=0, **_):
        self.download, self.name, self.n = download, name, initial or 0
        if download is not None:
            if total:
                download.sizes[name] = int(total)
            download._current = (name, self.n)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.download is not None:
            self.download._current = (self.name, self.n)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def close(self) -> None:
        pass


def fetch(spec: str, repo: str, name: str, commit: str, download: "Download | None" = None) -> Path:
    """One file of a commit into the cache (hf_hub_download: ETag-checked, resumed by Range after a dropped
    connection); its path under snapshots/<commit>/. Failures are one line."""
    from huggingface_hub import hf_hub_download
    try:
        return Path(hf_hub_download(repo, name, revision=commit, tqdm_class=functools.partial(_Meter, download, name)))
    except Exception as e:  # noqa: BLE001 - translated into one line
        raise explain(e, spec) from e


class Download:
    """Files of one commit fetched one at a time by a background thread, in the order they are needed.

    The thread starts on the first `ensure` (so a cached analysis downloads nothing). `ensure(name)` moves the file
    to the front of the queue, waits for it and reports progress meanwhile; a failure is raised (as one line) by
    the `ensure` that needs the file, and by every later one.
    """

    def __init__(self, spec: str, repo: str, commit: str, order: list[str], sizes: dict[str, int],
                 progress: DownloadProgress | None = None):
        self.spec, self.repo, self.commit, self.progress = spec, repo, commit, progress
        self.order = list(order)                        # files still to fetch, in the order they are needed
        self.sizes = dict(sizes)
        self._done = {name: threading.Event() for name in order}
        self._errors: dict[str, SourceError] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._current: tuple[str, int] | None = None
        self._finished = 0                              # bytes of the files done

    def pending(self) -> list[str]:
        return [n for n, e in self._done.items() if not e.is_set()]

    def ensure(self, name: str) -> None:
        """Block until `name` is in the cache (starting the downloads if needed), reporting progress."""
        event = self._done.get(name)
        if event is None:
            return
        with self._lock:
            if name in self.order:                          # needed now: fetch it next
                self.order.remove(name)
                self.order.insert(0, name)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"download {self.repo}", daemon=True)
                self._thread.start()
        while not event.wait(0.2):
            self.report()
        self.report()
        if name in self._errors:
            raise self._errors[name]

    def wait_all(self) -> None:
        for name in list(self._done):
            self.ensure(name)

    def report(self) -> None:
        if self.progress is None:
            return
        current = self._current
        in_flight = current[1] if current is not None and not self._done[current[0]].is_set() else 0
        total = sum(self.sizes.get(n, 0) for n in self._done)
        self.progress(min(self._finished + in_flight, total), total, current[0] if current else "")

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self.order:
                    return
                name = self.order.pop(0)
            try:
                path = fetch(self.spec, self.repo, name, self.commit, self)
                self.sizes[name] = path.stat().st_size
                self._finished += self.sizes[name]
            except BaseException as e:  # noqa: BLE001 - handed to whoever waits for this file (and the rest)
                err = e if isinstance(e, SourceError) else explain(e, self.spec)
                with self._lock:
                    for rest in [name, *self.order]:
                        self._errors[rest] = err
                        self._done[rest].set()
                    self.order.clear()
                return
            self._done[name].set()


# --------------------------------------------------------------------------------------------- resolving

@dataclass
class HubModel:
    """A hub id resolved to a commit: what to read, where it lands in the cache, and its download."""

    spec: str
    repo: str
    revision: str | None
    commit: str
    folder: Path                                       # <HF_HUB_CACHE>/models--org--name/snapshots/<commit>
    fmt: str                                           # "safetensors" or "bin"
    weights: list[str]
    download: Download
    tokenizer: list[str]                               # tokenizer files still to fetch (first, before the weights)
    headers: dict[str, dict] = field(default_factory=dict)   # missing safetensors file -> {tensor: (shape, code)}


def resolve(spec: str, progress: DownloadProgress | None = None) -> HubModel:
    """Resolve `org/name[@revision]` online: its commit and the files to read; config.json and the shard index are
    fetched now, the safetensors headers of missing shards read with HTTP range requests (a few kB each); the
    tokenizer files and the weights are queued for the background download (Download), the weights in the order
    they are read."""
    from huggingface_hub import HfApi
    repo, revision = parse_spec(spec)
    api = HfApi()
    try:
        info = api.model_info(repo, revision=revision, files_metadata=True)
    except Exception as e:  # noqa: BLE001 - translated into one line
        raise explain(e, spec) from e
    commit, siblings = info.sha, info.siblings or []
    try:
        fmt, index, weights, extras = choose_files([s.rfilename for s in siblings])
    except SourceError as e:
        raise SourceError(f"{spec} {e}") from None
    folder = repo_cache(repo) / "snapshots" / commit
    for name in [n for n in CONFIG_FILES if n in extras] + ([index] if index else []):
        fetch(spec, repo, name, commit)
    _write_ref(repo, revision or "main", commit)
    if index:
        weight_map = json.loads((folder / index).read_text()).get("weight_map", {})
        weights = list(dict.fromkeys(weight_map.values()))
        if not weights:
            raise SourceError(f"{spec}: {index} lists no shards; choose another revision")
    missing = [n for n in weights if not (folder / n).is_file()]
    tokenizer = [n for n in extras if n not in CONFIG_FILES and not (folder / n).is_file()]
    sizes = {s.rfilename: int(s.size) for s in siblings if s.size is not None}
    model = HubModel(spec, repo, revision, commit, folder, fmt, weights,
                     Download(spec, repo, commit, tokenizer + missing, sizes, progress), tokenizer)
    if fmt == "safetensors":
        for name in missing:
            try:
                meta = api.parse_safetensors_file_metadata(repo, name, revision=commit)
            except Exception as e:  # noqa: BLE001
                raise explain(e, spec) from e
            model.headers[name] = {t: (tuple(i.shape), i.dtype) for t, i in meta.tensors.items()}
    return model


def _write_ref(repo: str, revision: str, commit: str) -> None:
    """refs/<revision> -> commit, as hf_hub_download writes it, so the cache answers `repo@revision` offline later."""
    if revision == commit:
        return
    ref = repo_cache(repo) / "refs" / revision
    try:
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not ref.is_file() or ref.read_text() != commit:
            ref.write_text(commit)
    except OSError:
        pass
