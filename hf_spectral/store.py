"""Snapshots on disk: a per-matrix table (parquet), arrays (safetensors) and ``meta.json``.

One format serves the analyzer, the training callback and the dynamics tools. A snapshot folder:

    matrices.parquet     one row per weight matrix or skipped tensor (name, kind, shape, metrics, reason)
    alignment.parquet    one row per consecutive-layer pair (only when alignment was computed)
    spectra.safetensors  ``sigma/<name>`` singular values; ``U/<name>``, ``V/<name>`` top-k vectors;
                         ``align/<label>`` alignment diagonals
    meta.json            source, checkpoint, step, options, versions, summary

Folders are written atomically: everything goes to a hidden temporary sibling that is renamed into
place, so a reader never sees a half-written snapshot and a crash leaves the old one intact.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from hf_spectral.errors import SpectralError
from hf_spectral.status import FLAG_RANK_DEFICIENT, STATUS_FLAGGED, STATUS_OK, STATUS_SKIPPED  # noqa: F401 (re-exported)

FORMAT_VERSION = 1
MATRICES_FILE = "matrices.parquet"
ALIGNMENT_FILE = "alignment.parquet"
ARRAYS_FILE = "spectra.safetensors"
META_FILE = "meta.json"
# A callback record: snapshot folders (step-N/) and the training metrics beside them.
LOG_HISTORY_FILE = "log_history.json"
RECORD_FOLDER = "spectral"  # the callback's default record: <TrainingArguments.output_dir>/spectral



@dataclass
class Snapshot:
    """The spectra of every weight matrix of one checkpoint (or of a live model at one step).

    table:      one row per matrix or skipped tensor; ``status`` is ok | flagged | skipped and
                ``flag`` says why a row is flagged (zero_matrix, non_finite, rank_deficient) or skipped.
    spectra:    matrix name -> singular values (float64, descending).
    vectors:    matrix name -> (U, V), the top-k left/right singular vectors as columns.
    alignment:  one row per alignment pair (label, prev, next, mode, score); may be empty.
    alignment_diagonals: pair label -> diagonal A_ii.
    meta:       where it came from and how it was computed (``step``, ``source``, ``options``...).
    """

    table: pd.DataFrame
    spectra: dict[str, np.ndarray] = field(default_factory=dict)
    vectors: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    alignment: pd.DataFrame = field(default_factory=pd.DataFrame)
    alignment_diagonals: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> int | None:
        return self.meta.get("step")

    @property
    def matrices(self) -> pd.DataFrame:
        """Rows that were decomposed (ok or flagged), in model order."""
        return self.table[self.table["status"] != STATUS_SKIPPED]

    @property
    def skipped(self) -> pd.DataFrame:
        return self.table[self.table["status"] == STATUS_SKIPPED]

    def singular_values(self, name: str) -> np.ndarray:
        try:
            return self.spectra[name]
        except KeyError:
            raise KeyError(f"no singular values stored for {name!r}; stored: {_preview(self.spectra)}") from None

    def summary(self) -> dict[str, Any]:
        """Model-level numbers: counts, and means over the matrices whose metrics are defined."""
        return summarize(self.table)

    def save(self, path: str | os.PathLike) -> Path:
        return write_snapshot(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Snapshot":
        return read_snapshot(path)


def summarize(table: pd.DataFrame) -> dict[str, Any]:
    """Counts and means over rows whose metrics are defined (flagged zero/non-finite rows are
    counted, not averaged: a NaN never hides inside a mean)."""
    decomposed = table[table["status"] != STATUS_SKIPPED]
    defined = decomposed[decomposed["status"] == STATUS_OK]
    out: dict[str, Any] = {
        "matrices": int(len(decomposed)),
        "skipped": int((table["status"] == STATUS_SKIPPED).sum()),
        "flagged": int((decomposed["status"] == STATUS_FLAGGED).sum()),
        # defined metrics, but σ_min below the numerical-rank tolerance: worth seeing, not an error
        "rank_deficient": int((defined["flag"] == FLAG_RANK_DEFICIENT).sum()) if "flag" in defined else 0,
    }
    for column in ("normalized_effective_rank", "normalized_stable_rank", "normalized_mass90_rank", "spectral_norm"):
        if column in defined and len(defined):
            values = defined[column].astype(float)
            values = values[np.isfinite(values)]
            out[f"mean_{column}"] = float(values.mean()) if len(values) else math.nan
    return out


def write_snapshot(snapshot: Snapshot, path: str | os.PathLike) -> Path:
    """Write ``snapshot`` to folder ``path`` atomically, replacing a snapshot already there; returns
    the final path. Anything else at ``path`` (a file, a folder with other contents) is an error."""
    final = Path(path)
    _check_replaceable(final)
    created = _missing_parents(final)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        snapshot.table.to_parquet(tmp / MATRICES_FILE, index=False)
        if len(snapshot.alignment):
            snapshot.alignment.to_parquet(tmp / ALIGNMENT_FILE, index=False)
        save_file(_arrays(snapshot), str(tmp / ARRAYS_FILE))
        meta = {"format_version": FORMAT_VERSION, **snapshot.meta, "summary": snapshot.summary()}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=json_default))
        replace_folder(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:  # deepest first; only folders this call made, and only if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise SpectralError(f"cannot write snapshot to {final}: {reason}; choose a writable --output") from exc
        raise
    return final


def read_snapshot(path: str | os.PathLike) -> Snapshot:
    """Load a snapshot folder written by ``write_snapshot``."""
    folder = Path(path)
    if not is_snapshot(folder):
        raise SpectralError(
            f"{folder} is not an hf_spectral snapshot (no {META_FILE}/{MATRICES_FILE}); pass a folder written by hf-spectral"
        )
    try:
        meta = json.loads((folder / META_FILE).read_text())
        version = meta.pop("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise SpectralError(
                f"{folder} has snapshot format {version}, newer than this hf_spectral reads ({FORMAT_VERSION}): upgrade hf_spectral"
            )
        meta.pop("summary", None)  # derived from the table: Snapshot.summary() recomputes it
        table = pd.read_parquet(folder / MATRICES_FILE)
        alignment = pd.read_parquet(folder / ALIGNMENT_FILE) if (folder / ALIGNMENT_FILE).is_file() else pd.DataFrame()
        arrays = load_file(str(folder / ARRAYS_FILE)) if (folder / ARRAYS_FILE).is_file() else {}
    except SpectralError:
        raise
    except (OSError, ValueError, SafetensorError) as exc:  # ValueError: bad JSON or parquet
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise SpectralError(f"{folder} is a damaged snapshot ({detail}): compute it again") from exc
    spectra: dict[str, np.ndarray] = {}
    left: dict[str, np.ndarray] = {}
    right: dict[str, np.ndarray] = {}
    diagonals: dict[str, np.ndarray] = {}
    buckets = {"sigma": spectra, "U": left, "V": right, "align": diagonals}
    for key, value in arrays.items():
        kind, _, name = key.partition("/")
        if kind in buckets:
            buckets[kind][name] = value
    vectors = {name: (left[name], right[name]) for name in left if name in right}
    return Snapshot(table, spectra, vectors, alignment, diagonals, meta)


def is_snapshot(path: str | os.PathLike) -> bool:
    folder = Path(path)
    return (folder / META_FILE).is_file() and (folder / MATRICES_FILE).is_file()


def iter_snapshots(folder: str | os.PathLike) -> Iterator[Path]:
    """Snapshot folders directly inside ``folder`` (a callback record), sorted by step then name."""
    root = Path(folder)
    if not root.is_dir():
        raise SpectralError(f"no such folder of snapshots: {root}; pass a folder written by hf-spectral or the callback")
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and is_snapshot(p)]

    def key(p: Path) -> tuple[float, str]:
        step = json.loads((p / META_FILE).read_text()).get("step")
        return (math.inf if step is None else float(step), p.name)

    yield from sorted(found, key=key)


def _arrays(snapshot: Snapshot) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for name, sigma in snapshot.spectra.items():
        arrays[f"sigma/{name}"] = np.ascontiguousarray(sigma, dtype=np.float64)
    for name, (u, v) in snapshot.vectors.items():
        # Vectors keep float32 or float64 as computed (the engine gives float32 unless asked for
        # float64 precision: they are compared by |dot products|, and dominate a snapshot's size).
        arrays[f"U/{name}"] = np.ascontiguousarray(u, dtype=_vector_dtype(u))
        arrays[f"V/{name}"] = np.ascontiguousarray(v, dtype=_vector_dtype(v))
    for label, diagonal in snapshot.alignment_diagonals.items():
        arrays[f"align/{label}"] = np.ascontiguousarray(diagonal, dtype=np.float64)
    return arrays


def _vector_dtype(array: np.ndarray) -> type:
    return np.float64 if np.asarray(array).dtype == np.float64 else np.float32


def check_output(path: str | os.PathLike, *, folder_of_snapshots: bool = False) -> None:
    """Fail now, before any work, when ``path`` cannot receive a snapshot (or, with
    ``folder_of_snapshots``, snapshot subfolders): it holds something else, or is not writable."""
    final = Path(path)
    if folder_of_snapshots:
        if final.exists() and not final.is_dir():
            raise SpectralError(f"{final} exists and is not a folder: choose another --output or remove it")
        target = final
    else:
        _check_replaceable(final)
        target = final.parent
    existing = next((p for p in (target.absolute(), *target.absolute().parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise SpectralError(f"cannot write snapshot to {final}: {existing} is not a writable folder; choose a writable --output")


def _check_replaceable(final: Path) -> None:
    # Replacing a folder deletes it: only ever a snapshot or an empty folder (never ``--output ~``).
    if final.is_symlink() or final.is_file():
        raise SpectralError(f"{final} exists and is not a snapshot folder: choose another --output or remove it")
    if final.is_dir() and not is_snapshot(final):
        try:
            empty = not any(final.iterdir())
        except OSError:
            empty = False
        if not empty:
            raise SpectralError(
                f"{final} exists and is not an hf_spectral snapshot: choose another --output or remove that folder"
            )


def _missing_parents(final: Path) -> list[Path]:
    """The ancestors of ``final`` that do not exist yet, deepest first."""
    missing = []
    for parent in final.absolute().parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A hidden temporary sibling of ``path`` to write to: renamed over ``path`` when the block
    succeeds, removed when it fails, so ``path`` never holds a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def replace_folder(tmp: Path, final: Path) -> None:
    """Put the complete folder ``tmp`` at ``final``, replacing what is there."""
    # A directory cannot be renamed over a non-empty one: move the old one aside first, so that at
    # every moment either the old or the new complete snapshot is at ``final`` (or, for an instant,
    # the old one beside it, put back if the second rename fails).
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def jsonable(value: Any) -> Any:
    """``value`` as ``meta.json`` stores and reads it back (tuples become lists, numpy numbers
    python numbers, paths strings)."""
    return json.loads(json.dumps(value, default=json_default))


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for what metadata and logs hold: numpy/torch numbers and arrays,
    paths, sets and tuples; anything else as its repr."""
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (Path, os.PathLike)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "numel") and value.numel() == 1:  # a torch scalar (a logged loss)
        return value.item()
    if hasattr(value, "tolist"):  # numpy arrays, torch tensors
        return value.tolist()
    # Metadata must never cost a snapshot (the callback passes what the training loop gives it).
    return repr(value)


def _preview(names: dict[str, Any] | list[str], limit: int = 5) -> str:
    keys = list(names)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")
