"""``analyze`` and ``analyze_series``: a SOURCE string in, snapshots out (written when asked)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

from hf_spectral.engine import AnalysisOptions, analyze_checkpoint
from hf_spectral.errors import SpectralError
from hf_spectral.sources import resolve
from hf_spectral.sources.types import Checkpoint
from hf_spectral.store import META_FILE, Snapshot, is_snapshot, read_snapshot, write_snapshot


def analyze(
    source: str | os.PathLike,
    revision: str | None = None,
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    top_k: int = 0,
    device: str = "auto",
    precision: str = "float32",
    alignment: bool = False,
    variant: str | None = None,
    output: str | os.PathLike | None = None,
    progress: bool = True,
) -> Snapshot:
    """Spectra of every weight matrix of one checkpoint: a local file or folder, a diffusers
    pipeline, or a Hub model id at ``revision``. Writes the snapshot to ``output`` when given.

    For a Trainer run (several ``checkpoint-*`` folders) use ``analyze_series``.
    """
    options = AnalysisOptions(include, exclude, top_k, device, precision, alignment, progress=progress)
    checkpoints = resolve(str(source), revision=revision, variant=variant)
    if len(checkpoints) != 1:
        labels = ", ".join(c.label for c in checkpoints[:4])
        raise SpectralError(
            f"{source} holds {len(checkpoints)} checkpoints ({labels}, ...); analyze one of them "
            f"(e.g. {checkpoints[-1].path}) or use analyze_series / `hf-spectral dynamics`"
        )
    checkpoint = checkpoints[0]
    try:
        snapshot = analyze_checkpoint(checkpoint, options)
    finally:
        checkpoint.close()
    if output is not None:
        _write_on_main(snapshot, Path(output))
    return snapshot


def analyze_series(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    revision: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    variant: str | None = None,
    **options: Any,
) -> list[Snapshot]:
    """Snapshots of every checkpoint of a Trainer run (or of an explicit list of checkpoints), in
    time order. With ``cache_dir`` each snapshot is stored there and reused when the checkpoint's
    files and the options are unchanged, so a second call recomputes nothing.
    """
    analysis = AnalysisOptions(**options)
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    checkpoints: list[Checkpoint] = []
    for item in sources:
        checkpoints += resolve(str(item), revision=revision, variant=variant)
    snapshots = []
    for checkpoint in checkpoints:
        snapshots.append(_analyze_cached(checkpoint, analysis, Path(cache_dir) if cache_dir else None))
    return snapshots


def _analyze_cached(checkpoint: Checkpoint, options: AnalysisOptions, cache_dir: Path | None) -> Snapshot:
    key = cache_key(checkpoint, options)
    folder = cache_dir / _slug(checkpoint.label) if cache_dir else None
    if folder is not None and is_snapshot(folder):
        if json.loads((folder / META_FILE).read_text()).get("cache_key") == key:
            checkpoint.close()
            return read_snapshot(folder)
    try:
        snapshot = analyze_checkpoint(checkpoint, options)
    finally:
        checkpoint.close()
    snapshot.meta["cache_key"] = key
    if folder is not None:
        _write_on_main(snapshot, folder)
    return snapshot


def cache_key(checkpoint: Checkpoint, options: AnalysisOptions) -> str:
    """Changes when a weight file of the checkpoint or an analysis option changes (file size and
    modification time stand in for content: hashing every weight file on every call would cost more
    than many analyses)."""
    digest = hashlib.sha256(json.dumps(options.to_meta(), sort_keys=True, default=str).encode())
    for part in checkpoint.parts:
        for file in sorted(part.reader.files):
            stat = Path(file).stat()
            digest.update(f"{part.component}|{Path(file).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _write_on_main(snapshot: Snapshot, folder: Path) -> None:
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        write_snapshot(snapshot, folder)
    state.wait_for_everyone()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "snapshot"


def default_output(source: str) -> Path:
    """Where the CLI writes when no ``--output`` is given: ``spectral/<source name>``."""
    return Path("spectral") / _slug(Path(str(source).rstrip("/")).name or str(source))
