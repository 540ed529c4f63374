"""The on-disk cache of module classes, parameter order and buffers of architectures the registry
does not know completely (learned by building the model on the meta device)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from hf_spectral._version import __version__
from hf_spectral.views import module_types_from_config


def module_info_for(config: dict[str, Any]) -> tuple[dict[str, str], list[str], set[str]] | None:
    """``views.module_types_from_config``, remembered on disk across processes.

    Only asked for families the registry does not know completely (the registry plans the others from
    names). Building the model on the meta device is cheap, but importing its modeling code (transformers
    or diffusers) costs ~2.5 s (GPT-2 small's analysis takes ~5 s); the answer depends only on the
    config and the library versions, so it is cached per (config, versions) in
    ``$HF_SPECTRAL_CACHE/module_types`` (default ``~/.cache/hf_spectral``; ``HF_SPECTRAL_CACHE=off``
    disables it). Any cache problem falls back to computing.
    """
    path = _module_cache_path(config)
    if path is not None:
        try:
            cached = json.loads(path.read_text())
            if cached is None:
                return None
            return dict(cached["types"]), list(cached["order"]), set(cached["buffers"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # absent or unreadable: compute it
    info = module_types_from_config(config)
    if path is not None:
        value = None if info is None else {"types": info[0], "order": info[1], "buffers": sorted(info[2])}
        with contextlib.suppress(OSError, TypeError, ValueError):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(value))
            os.replace(tmp, path)  # atomic: concurrent processes never read half a file
    return info


_MODULE_CACHE_VERSION = 1
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "_commit_hash", "transformers_version", "_diffusers_version")


def _module_cache_path(config: dict[str, Any]) -> Path | None:
    root = os.environ.get("HF_SPECTRAL_CACHE")
    if root is not None and root.strip().lower() in ("", "0", "off", "false", "no"):
        return None
    base = Path(root).expanduser() if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hf_spectral"
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return None
    versions = []
    for package in ("transformers", "diffusers", "torch"):
        try:
            versions.append(f"{package}={version(package)}")
        except PackageNotFoundError:
            versions.append(f"{package}=none")
    stable = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
    try:
        text = json.dumps([_MODULE_CACHE_VERSION, __version__, versions, stable], sort_keys=True)
    except (TypeError, ValueError):
        return None
    return base / "module_types" / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.json"
