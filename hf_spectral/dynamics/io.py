"""``Dynamics`` on disk: one ``<table>.parquet`` per table plus ``dynamics.json`` (meta), written
atomically (a hidden temporary sibling renamed into place, as snapshots are)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from hf_spectral.dynamics.compute import empty_table
from hf_spectral.dynamics.types import TABLES, Dynamics
from hf_spectral.atomic import atomic_folder, write_error
from hf_spectral.errors import SpectralError
from hf_spectral.store import json_default

FORMAT_VERSION = 1
META_FILE = "dynamics.json"


def save_dynamics(dyn: Dynamics, folder: str | os.PathLike) -> Path:
    """Write every table of ``dyn`` and its meta to ``folder`` (replaced atomically); returns the path."""
    tables = {name: getattr(dyn, name) for name in TABLES}
    meta = {"format_version": FORMAT_VERSION, "tables": list(TABLES), **dyn.meta}
    return write_tables(tables, meta, folder, META_FILE)


def load_dynamics(folder: str | os.PathLike) -> Dynamics:
    """Read a folder written by :func:`save_dynamics` (a missing table reads as an empty one)."""
    path = Path(folder)
    if not (path / META_FILE).is_file():
        raise SpectralError(
            f"{path} holds no {META_FILE}: pass a folder written by save_dynamics / `hf-spectral dynamics --output`")
    meta = json.loads((path / META_FILE).read_text())
    meta.pop("format_version", None)
    meta.pop("tables", None)
    tables = {name: _read_table(path, name) for name in TABLES}
    return Dynamics(**tables, meta=meta)


def write_tables(tables: dict[str, pd.DataFrame], meta: dict[str, Any], folder: str | os.PathLike,
                 meta_file: str) -> Path:
    """``<name>.parquet`` per table and ``meta_file`` (JSON) into ``folder``, atomically."""
    final = Path(folder)
    _check_replaceable(final, meta_file)
    try:
        with atomic_folder(final) as tmp:
            for name, table in tables.items():
                table.to_parquet(tmp / f"{name}.parquet", index=False)
            (tmp / meta_file).write_text(json.dumps(meta, indent=2, default=json_default))
    except OSError as exc:
        raise write_error(final, exc, "free space or choose a writable --output") from exc
    return final


def _check_replaceable(final: Path, meta_file: str) -> None:
    # Replacing a folder deletes it: only ever one written here before, or an empty one (never ``--output ~``).
    if final.is_symlink() or final.is_file():
        raise SpectralError(f"{final} exists and is not a folder of tables: choose another --output or remove it")
    if final.is_dir() and not (final / meta_file).is_file() and any(final.iterdir()):
        raise SpectralError(
            f"{final} exists and holds other files (no {meta_file}): choose another --output or remove that folder")


def _read_table(folder: Path, name: str) -> pd.DataFrame:
    file = folder / f"{name}.parquet"
    return pd.read_parquet(file) if file.is_file() else empty_table(name)
