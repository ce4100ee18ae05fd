"""Model sources for hub ids: cached snapshots, or shards read as they download (analysis starts on the first one)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import hub
from .sources import ModelSource, SafetensorsReader, TorchBinReader, _natural_key, _read_json, find_weight_files
from .types import SourceError


class LazySafetensorsReader(SafetensorsReader):
    """A SafetensorsReader whose shards may still be downloading: shapes and dtypes come from the shard headers
    (read remotely by range requests), and reading a tensor first waits for its shard (Download.ensure)."""

    def __init__(self, folder: Path, shards: list[str], headers: dict[str, dict], download: hub.Download):
        self.files = [folder / name for name in shards]
        self.entries, self._file_of, self._codes, self._layout = {}, {}, {}, {}
        self._download = download
        for file in self.files:
            if file.name in headers:
                tensors = headers[file.name]
            else:                                        # already cached: its own header
                start, header = self._file_layout(file)
                tensors = {n: (tuple(t["shape"]), t["dtype"]) for n, t in header.items() if n != "__metadata__"}
            for name, (shape, code) in tensors.items():
                if name not in self.entries:
                    self.entries[name] = (tuple(shape), _dtype_name(code))
                    self._file_of[name] = file
                    self._codes[name] = code
        need = [self._file_of[n].name for n in sorted(self.entries, key=_natural_key) if len(self.entries[n][0]) == 2]
        order = list(dict.fromkeys(need + [f.name for f in self.files]))
        download.order.sort(key=lambda n: order.index(n) if n in order else -1)   # shards as first read

    def get(self, name: str):
        self._download.ensure(self._file_of[name].name)
        return super().get(name)

    def get_array(self, name: str) -> np.ndarray:
        self._download.ensure(self._file_of[name].name)
        return super().get_array(name)


def _dtype_name(code: str) -> str:
    from .sources import _SAFETENSORS_DTYPES
    return _SAFETENSORS_DTYPES.get(code, code.lower())


class HubSource(ModelSource):
    """A hub model at a resolved commit. Its identity is the repo, the commit and the weight files' names and sizes
    (content-addressed: the same whether the files are cached or still downloading)."""

    hub_model: hub.HubModel | None = None

    def identity(self) -> dict:
        folder = self.folder
        origin = hub.snapshot_origin(folder)
        if origin is None:                               # not a commit snapshot: paths, sizes and mtimes
            return super().identity()
        files = {}
        for file in self.reader.files:
            size = self.hub_model.download.sizes.get(file.name) if self.hub_model else None
            if size is None and file.is_file():
                size = file.stat().st_size
            files[file.relative_to(folder).as_posix()] = size
        return {"kind": "hub", "label": self.label, "hub": {**origin, "files": files}, **self._extra_identity,
                "adapter": self.adapter.identity() if self.adapter is not None else None}

    def hf_folder(self) -> Path | None:
        """The snapshot folder, once every chosen file (weights, config, tokenizer) is downloaded."""
        if self.hub_model is not None:
            self.hub_model.download.wait_all()
        return super().hf_folder()

    @property
    def commit(self) -> str | None:
        return (hub.snapshot_origin(self.folder) or {}).get("commit")


def open_hub(spec: str, trust_remote_code: bool = False, download: hub.DownloadProgress | None = None) -> ModelSource:
    """A hub id (`org/name` or `org/name@revision`): from the cache when HF_HUB_OFFLINE=1 (or the hub cannot be
    reached and the cache has it), else resolved online and downloaded into the cache as it is read."""
    repo, revision = hub.parse_spec(spec)
    if hub.offline_mode():
        folder = hub.cached_snapshot(repo, revision)
        if folder is None:
            raise hub.not_cached_error(spec)
        return _cached(spec, folder, trust_remote_code, flags=())
    try:
        model = hub.resolve(spec, download)
    except SourceError as err:
        folder = hub.cached_snapshot(repo, revision)
        if folder is None or not str(err).startswith("could not reach"):
            raise
        return _cached(spec, folder, trust_remote_code,
                       flags=(f"the hub could not be reached: the cached snapshot {folder.name[:12]} is used",))
    for name in model.tokenizer:                          # small: fetched before the first shard
        model.download.ensure(name)
    config = _read_json(model.folder / "config.json") if (model.folder / "config.json").is_file() else None
    if model.fmt == "safetensors" and model.headers:
        reader = LazySafetensorsReader(model.folder, model.weights, model.headers, model.download)
    else:                                                 # all cached, or .bin (torch.load needs whole files)
        for name in model.weights:
            model.download.ensure(name)
        files = [model.folder / n for n in model.weights]
        reader = SafetensorsReader(files) if model.fmt == "safetensors" else TorchBinReader(files)
    source = HubSource(spec, reader, kind="hub", config=config, folder=model.folder,
                       trust_remote_code=trust_remote_code)
    source.hub_model = model
    return source


def _cached(spec: str, folder: Path, trust_remote_code: bool, flags: tuple[str, ...]) -> ModelSource:
    """A snapshot already in the cache, read as it is (no network)."""
    if (folder / "adapter_config.json").is_file():
        from .sources import open_source
        return open_source(None, folder, trust_remote_code=trust_remote_code)
    fmt, files = find_weight_files(folder)
    if fmt == "gguf":                                     # converted once into the data folder
        from .sources import _open_folder
        return _open_folder(folder, spec, "hub-cache", trust_remote_code)
    reader = SafetensorsReader(files) if fmt == "safetensors" else TorchBinReader(files)
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else None
    return HubSource(spec, reader, kind="hub-cache", config=config, flags=flags, folder=folder,
                     trust_remote_code=trust_remote_code)

