"""Checkpoints known from safetensors headers alone, for plans and cost estimates (``--dry-run``).

A local SOURCE resolves as usual: its readers parse headers only (``readers.read_safetensors_header``)
and nothing reads tensor data until the engine asks. A Hub id never downloads weights:

* online, the configs (``config.json``, ``model_index.json``, components' ``config.json``) are fetched
  into the Hub cache and the weight headers read remotely with ``huggingface_hub.get_safetensors_metadata``
  (a plain model) or ``parse_safetensors_file_metadata`` (each component of a diffusers pipeline), a few
  kB of HTTP range requests per file; the headers are kept in ``$HF_SPECTRAL_CACHE/hub_headers``;
* offline, the cached snapshot is used: weight files in the Hub cache give their headers, else the
  headers kept by an earlier online dry run.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_spectral._lazy import LazyModule
from hf_spectral.errors import SpectralError
from hf_spectral.sources.types import Checkpoint, ModelPart, ReaderContext
from hf_spectral.tensor_info import TensorInfo

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")  # imported on first use: the numpy backend never needs torch

_CONFIG_PATTERNS = ["config.json", "model_index.json", "*/config.json"]
_HEADER_CACHE_VERSION = 1


class HeaderReader(ReaderContext):
    """A reader that knows names, shapes and dtypes (from headers) but holds no tensor data."""

    shares_storage = False

    def __init__(self, files: list[str], infos: list[TensorInfo]) -> None:
        self.files = [Path(f) for f in files]
        self._infos = list(infos)

    def tensors(self) -> list[TensorInfo]:
        """Names, shapes and dtypes, from the headers."""
        return list(self._infos)

    def read(self, name: str) -> torch.Tensor:
        raise SpectralError(
            f"{name}: only the headers of {', '.join(f.name for f in self.files)} are known here (a dry run); "
            "analyze without --dry-run to read the weights"
        )

    def close(self) -> None:
        """Nothing is open."""


def resolve_headers(source: str, *, revision: str | None = None, variant: str | None = None) -> list[Checkpoint]:
    """The checkpoints of SOURCE with no tensor data read (and, for a Hub id, no weights downloaded)."""
    from hf_spectral.sources.classify import SourceKind, classify
    from hf_spectral.sources.hub import is_offline
    from hf_spectral.sources.resolve import open_source

    found = classify(source, revision=revision)
    if not found.is_hub or found.kind is not SourceKind.CHECKPOINT:
        return open_source(found, variant=variant)
    if not is_offline():
        return [_remote_checkpoint(found.source, found.revision, variant)]
    try:
        return open_source(found, variant=variant)  # weights in the cache: their headers
    except SpectralError as missing:
        checkpoint = _cached_header_checkpoint(found.source, found.revision)
        if checkpoint is None:
            raise SpectralError(f"{missing} (or run the dry run once online to keep the headers)") from None
        return [checkpoint]


# ----------------------------------------------------------------------------------------- online


def _remote_checkpoint(source: str, revision: str | None, variant: str | None) -> Checkpoint:
    from huggingface_hub import HfApi

    from hf_spectral.sources.hub import hub_cache_dir, split_revision
    from hf_spectral.sources.hub import _download as download
    from hf_spectral.sources.layout import pipeline_components

    repo_id, at_rev = split_revision(source)
    rev = revision or at_rev or "main"
    folder = download(repo_id, rev, hub_cache_dir(), _CONFIG_PATTERNS, False, source)
    parts: dict[str, dict[str, list[TensorInfo]]] = {}
    if (folder / "model_index.json").is_file():
        files = set(HfApi().list_repo_files(repo_id, revision=rev))
        for component in pipeline_components(folder):
            if (folder / component / "config.json").is_file():
                found = _component_headers(repo_id, rev, component, files, variant)
                if found:
                    parts[component] = found
    else:
        parts[""] = _model_headers(repo_id, rev, variant)
    if not parts:
        raise SpectralError(f"Hub model {repo_id} (revision {rev}) has no safetensors weights to plan from")
    _keep_headers(repo_id, folder.name, parts)
    return _checkpoint(source, rev, folder, parts)


def _model_headers(repo_id: str, rev: str, variant: str | None) -> dict[str, list[TensorInfo]]:
    from huggingface_hub import get_safetensors_metadata
    from huggingface_hub.errors import NotASafetensorsRepoError

    if variant is not None:
        from huggingface_hub import HfApi

        return _component_headers(repo_id, rev, "", set(HfApi().list_repo_files(repo_id, revision=rev)), variant)
    try:
        metadata = get_safetensors_metadata(repo_id, revision=rev)
    except NotASafetensorsRepoError as exc:
        raise SpectralError(f"Hub model {repo_id} (revision {rev}) has no safetensors weights: "
                            "--dry-run plans from safetensors headers only") from exc
    return {name: _infos(file_meta) for name, file_meta in metadata.files_metadata.items()}


def _component_headers(repo_id: str, rev: str, component: str, files: set[str],
                       variant: str | None) -> dict[str, list[TensorInfo]]:
    """Headers of the safetensors weights of one folder of a repo (``""``: its root)."""
    from huggingface_hub import hf_hub_download, parse_safetensors_file_metadata

    from hf_spectral.sources.layout import SAFE_STEMS

    prefix = f"{component}/" if component else ""
    middle = f".{variant}" if variant else ""
    for stem in SAFE_STEMS:
        single, index = f"{prefix}{stem}{middle}.safetensors", f"{prefix}{stem}.safetensors.index{middle}.json"
        if single in files:
            return {single: _infos(parse_safetensors_file_metadata(repo_id, single, revision=rev))}
        if index in files:
            weight_map = json.loads(Path(hf_hub_download(repo_id, index, revision=rev)).read_text())["weight_map"]
            shards = sorted({f"{prefix}{shard}" for shard in weight_map.values()})
            return {shard: _infos(parse_safetensors_file_metadata(repo_id, shard, revision=rev)) for shard in shards}
    return {}


def _infos(file_meta: Any) -> list[TensorInfo]:
    """TensorInfos of one file's remote header, in data order (as the local reader lists them)."""
    tensors = sorted(file_meta.tensors.items(), key=lambda item: tuple(item[1].data_offsets))
    return [TensorInfo(name, tuple(int(d) for d in info.shape), str(info.dtype)) for name, info in tensors]


# ----------------------------------------------------------------------------------------- the cache


def _header_cache(repo_id: str, commit: str) -> Path | None:
    from hf_spectral.caches import cache_root

    root = cache_root()
    if root is None:
        return None
    return root / "hub_headers" / repo_id.replace("/", "--") / f"{commit}.json"


def _keep_headers(repo_id: str, commit: str, parts: dict[str, dict[str, list[TensorInfo]]]) -> None:
    path = _header_cache(repo_id, commit)
    if path is None:
        return
    from hf_spectral.atomic import atomic_file

    value = {"version": _HEADER_CACHE_VERSION, "parts": {
        component: {file: [[i.name, list(i.shape), i.dtype] for i in infos] for file, infos in files.items()}
        for component, files in parts.items()}}
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(value))


def _cached_header_checkpoint(source: str, revision: str | None) -> Checkpoint | None:
    from hf_spectral.sources.hub import hub_cache_dir, split_revision
    from hf_spectral.sources.hub import _download as download

    repo_id, at_rev = split_revision(source)
    rev = revision or at_rev or "main"
    try:
        folder = download(repo_id, rev, hub_cache_dir(), _CONFIG_PATTERNS, True, source)
    except SpectralError:
        return None
    path = _header_cache(repo_id, folder.name)
    try:
        value = json.loads(path.read_text()) if path is not None else None
        parts = {component: {file: [TensorInfo(n, tuple(s), d) for n, s, d in infos] for file, infos in files.items()}
                 for component, files in value["parts"].items()}
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return _checkpoint(source, rev, folder, parts)


def _checkpoint(source: str, rev: str, folder: Path, parts: dict[str, dict[str, list[TensorInfo]]]) -> Checkpoint:
    from hf_spectral.sources.layout import read_config

    model_parts = []
    for component, files in parts.items():
        infos = [info for file in sorted(files) for info in files[file]]
        model_parts.append(ModelPart(component, HeaderReader(sorted(files), infos), read_config(folder / component)))
    return Checkpoint(label=rev, path=folder, parts=model_parts, source=source, revision=rev, commit=folder.name,
                      meta={"format": "headers"})
