"""A SOURCE (or several) → a time-ordered series of snapshots.

Accepted sources:

* a callback record: a folder of snapshot folders (``step-000100/`` ...), read as they are, with
  the record's ``log_history.json`` when present (a damaged snapshot is left out with a warning);
* a Trainer output folder (``checkpoint-*``) or a model folder that holds the callback's record
  ``spectral/``: that record (``sources.series_source`` decides; ``meta["series"]["notes"]`` says so);
* a Trainer output folder without a record: each checkpoint's own ``checkpoint-N/spectral/``
  summary when it has one, else the checkpoint analyzed through the analyzer's cache, so a second
  call recomputes nothing; the log history comes from the last checkpoint's ``trainer_state.json``;
* an explicit list of checkpoints (files, model folders, runs, snapshot folders, Hub ids);
* a Hub model id with ``revisions``: names, a comma-separated string, or globs (``'step*'``)
  matched against the repo's branches and tags (``huggingface_hub.list_repo_refs`` online, the
  refs of the local Hub cache offline).

Checkpoints with identical weight files (same ``checkpoint_fingerprint``) are analyzed once and
reported; revisions that cannot be read are reported and skipped.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from hf_spectral.analyzer import analyze_resolved_series
from hf_spectral.dynamics.compute import compute_dynamics
from hf_spectral.dynamics.types import Dynamics
from hf_spectral.engine import AnalysisOptions, checkpoint_meta
from hf_spectral.errors import SpectralError
from hf_spectral.sources.classify import ClassifiedSource, Revisions, SourceKind, SourceLike, classify, series_source
from hf_spectral.sources.fingerprint import identity_keys
from hf_spectral.sources.hub import expand_revisions, resolve_hub, step_from_name
from hf_spectral.sources.local import TRAINER_STATE_FILE, step_of
from hf_spectral.sources.resolve import open_source
from hf_spectral.sources.types import Checkpoint
from hf_spectral.store import CHECKPOINT_SUMMARY, LOG_HISTORY_FILE, Snapshot, is_snapshot, read_snapshot, snapshot_problem
from hf_spectral.utils.logging import get_logger

logger = get_logger(__name__)


@dataclass
class _Pending:
    """A checkpoint to analyze (or to copy from an identical one), in series order."""

    checkpoint: Checkpoint
    cache_dir: Path | None
    log_history: list[dict[str, Any]] | None = None
    snapshot: Snapshot | None = None
    key: str = ""  # equal for checkpoints with identical weight files


@dataclass
class _Series:
    """Series-level facts carried into every snapshot's ``meta["series"]``."""

    sources: list[str] = field(default_factory=list)
    missing: list[dict[str, str]] = field(default_factory=list)  # label, reason
    identical: list[list[str]] = field(default_factory=list)  # groups of labels, first one analyzed
    notes: list[str] = field(default_factory=list)  # what was read of each SOURCE, when there was a choice

    def to_meta(self) -> dict[str, Any]:
        return {"sources": self.sources, "missing": self.missing, "identical": self.identical, "notes": self.notes}


def load_series(
    source: SourceLike | Sequence[SourceLike],
    *,
    revisions: Revisions = None,
    cache_dir: str | os.PathLike | None = None,
    top_k: int = 20,
    alignment: bool = True,
    variant: str | None = None,
    hub_cache_dir: str | os.PathLike | None = None,
    **analysis_options: Any,
) -> list[Snapshot]:
    """The snapshots of a record, a Trainer run, a list of checkpoints or Hub revisions, in time order.

    Checkpoints are analyzed with ``top_k`` singular vectors (needed for agreement) and alignment;
    ``cache_dir`` stores their snapshots for reuse (default for a Trainer run: ``<run>/spectral_cache``).
    Every snapshot's ``meta`` gets ``label``, ``step``, ``series`` (sources, missing revisions,
    identical groups), ``identical_to`` for copies, and ``log_history`` when the source has one.
    """
    options = {"top_k": top_k, "alignment": alignment, **analysis_options}
    AnalysisOptions(**options)  # bad options fail before anything is resolved
    found = series_source(classify(source, revisions=revisions))
    items = found.items if found.kind is SourceKind.CHECKPOINTS else (found,)
    series = _Series(sources=[item.source for item in items], notes=[item.note for item in items if item.note])
    for note in series.notes:
        logger.info("hf_spectral: %s", note)
    user_cache = Path(cache_dir) if cache_dir is not None else None
    entries: list[Snapshot | _Pending] = []
    for item in items:
        entries += _entries(item, user_cache, variant, hub_cache_dir, series)
    if not entries:
        raise SpectralError(f"{', '.join(series.sources)}: no snapshot or checkpoint found")
    snapshots = _analyze(entries, options, series)
    _warn_about(series)
    shared = series.to_meta()
    for snapshot in snapshots:
        snapshot.meta["series"] = shared
    return _time_ordered(snapshots)


# --------------------------------------------------------------------------------------------------
# What each SOURCE holds


def _entries(found: ClassifiedSource, user_cache: Path | None, variant: str | None,
             hub_cache_dir: str | os.PathLike | None, series: _Series) -> list[Snapshot | _Pending]:
    """Snapshots read as they are (a snapshot, a record) or checkpoints to analyze."""
    if found.kind is SourceKind.SNAPSHOT:
        assert found.path is not None
        return [_labelled(read_snapshot(found.path), found.path.name)]
    if found.kind is SourceKind.RECORD:
        assert found.path is not None
        return _record(found.path, list(found.folders), series)
    if found.kind is SourceKind.TRAINER_RUN:
        return _trainer_run(found, user_cache, variant, series)
    if found.kind is SourceKind.HUB_REVISIONS:
        return _hub_revisions(found, user_cache, variant, hub_cache_dir, series)
    return [_Pending(c, user_cache) for c in open_source(found, variant=variant, cache_dir=hub_cache_dir)]


def _record(folder: Path, snapshot_folders: list[Path], series: _Series) -> list[Snapshot | _Pending]:
    """The record's snapshots; a damaged or incomplete one (torn meta, a step that is not a number,
    missing or cut-short arrays) is left out and reported in ``series.missing``: the series goes on."""
    history = _log_history_file(folder / LOG_HISTORY_FILE)
    snapshots: list[Snapshot | _Pending] = []
    reasons = []
    for sub in snapshot_folders:
        try:
            snapshot = _labelled(read_snapshot(sub), sub.name)
        except SpectralError as exc:
            series.missing.append({"label": sub.name, "reason": str(exc)})
            reasons.append(str(exc))
            continue
        if history is not None:
            snapshot.meta["log_history"] = history
        snapshots.append(snapshot)
    if reasons and not snapshots:
        raise SpectralError(f"none of the {len(reasons)} snapshots of {folder} can be read ({reasons[0]})")
    return snapshots


def _trainer_run(found: ClassifiedSource, user_cache: Path | None, variant: str | None,
                 series: _Series) -> list[Snapshot | _Pending]:
    """The run's checkpoints: each one's own ``checkpoint-N/spectral`` summary when every checkpoint
    has an intact one (the callback wrote them: no SVD to repeat), else every checkpoint analyzed."""
    assert found.path is not None
    last_state = found.folders[-1] / TRAINER_STATE_FILE if found.folders else None
    history = _log_history_file(last_state) if last_state is not None else None
    summaries = [folder / CHECKPOINT_SUMMARY for folder in found.folders]
    if summaries and all(is_snapshot(s) and snapshot_problem(s) is None for s in summaries):
        series.notes.append(
            f"{found.source}: reading the spectral summaries the callback saved in its {len(summaries)} checkpoint "
            "folders (singular values and metrics, no singular vectors, so no agreement); pass the checkpoint "
            "folders themselves to analyze them")
        snapshots: list[Snapshot | _Pending] = []
        for folder, summary in zip(found.folders, summaries):
            snapshot = read_snapshot(summary)
            snapshot.meta.update(label=folder.name, checkpoint=str(folder), source=found.source)
            if snapshot.meta.get("step") is None:
                snapshot.meta["step"] = step_of(folder)
            if history is not None:
                snapshot.meta["log_history"] = history
            snapshots.append(snapshot)
        return snapshots
    return [_Pending(c, user_cache, history) for c in open_source(found, variant=variant)]


def _hub_revisions(found: ClassifiedSource, user_cache: Path | None, variant: str | None,
                   hub_cache_dir: str | os.PathLike | None, series: _Series) -> list[Snapshot | _Pending]:
    """Every revision that can be read; the others are reported in ``series.missing``."""
    repo_id, revisions = found.repo_id, found.revisions
    assert repo_id is not None and revisions is not None
    names = expand_revisions(repo_id, revisions, hub_cache_dir=hub_cache_dir)
    pending: list[Snapshot | _Pending] = []
    failures: list[str] = []
    for name in names:
        try:
            checkpoints = resolve_hub(repo_id, revision=name, variant=variant, cache_dir=hub_cache_dir)
        except SpectralError as exc:
            series.missing.append({"label": name, "reason": str(exc)})
            failures.append(str(exc))
            continue
        pending += [_Pending(c, user_cache) for c in checkpoints]
    if not pending:
        raise SpectralError(f"none of the {len(names)} revisions of {repo_id} can be read ({failures[0]})")
    return pending


# --------------------------------------------------------------------------------------------------
# Analysis, deduplication


def _analyze(entries: list[Snapshot | _Pending], options: dict[str, Any], series: _Series) -> list[Snapshot]:
    """Analyze each distinct checkpoint once (through the analyzer's cache); copies for identical ones."""
    pending = [e for e in entries if isinstance(e, _Pending)]
    first_of: dict[str, _Pending] = {}
    groups: dict[str, list[str]] = {}
    try:
        keys = identity_keys([e.checkpoint for e in pending])
    except BaseException:
        for entry in pending:
            entry.checkpoint.close()
        raise
    for entry, key in zip(pending, keys):
        entry.key = key
        groups.setdefault(key, []).append(entry.checkpoint.label)
        first_of.setdefault(key, entry)
    unique = list(first_of.values())
    for entry in pending:
        if all(entry is not u for u in unique):
            entry.checkpoint.close()
    _run(unique, AnalysisOptions(**options))
    series.identical = [labels for labels in groups.values() if len(labels) > 1]
    out: list[Snapshot] = []
    for entry in entries:
        if not isinstance(entry, _Pending):
            out.append(entry)
            continue
        first = first_of[entry.key]
        snapshot = entry.snapshot if entry is first else _copy_of(first, entry)
        assert snapshot is not None
        snapshot.meta.update(_checkpoint_meta(entry.checkpoint))
        if entry.log_history is not None:
            snapshot.meta["log_history"] = entry.log_history
        out.append(snapshot)
    return out


def _run(entries: list[_Pending], options: AnalysisOptions) -> None:
    """Snapshots for ``entries``, one analyzer call per cache folder (it names the cached snapshots
    by label, telling apart labels that repeat, and reuses those whose files and options match)."""
    by_cache: dict[Path | None, list[_Pending]] = {}
    for entry in entries:
        by_cache.setdefault(entry.cache_dir, []).append(entry)
    try:
        for cache, group in by_cache.items():
            snapshots = analyze_resolved_series([e.checkpoint for e in group], options, cache_dir=cache)
            for entry, snapshot in zip(group, snapshots):
                entry.snapshot = snapshot
    finally:
        for entry in entries:
            entry.checkpoint.close()


def _copy_of(first: _Pending, entry: _Pending) -> Snapshot:
    """A snapshot for ``entry`` sharing the (read-only) arrays of the identical ``first``."""
    assert first.snapshot is not None
    source = first.snapshot
    meta = {**source.meta, "identical_to": first.checkpoint.label}
    return Snapshot(source.table, source.spectra, source.vectors, source.alignment, source.alignment_diagonals, meta)


def _checkpoint_meta(checkpoint: Checkpoint) -> dict[str, Any]:
    """The engine's ``checkpoint_meta``, with the step a Hub revision's name carries and the fingerprint."""
    meta = checkpoint_meta(checkpoint)
    if meta["step"] is None and checkpoint.revision:
        meta["step"] = step_from_name(checkpoint.revision)
    meta["fingerprint"] = checkpoint.meta.get("fingerprint")
    return meta


def _warn_about(series: _Series) -> None:
    if series.identical:
        groups = "; ".join(" = ".join(labels) for labels in series.identical)
        logger.warning(f"hf_spectral: identical checkpoints (same weight files), each analyzed once: {groups}")
    if series.missing:
        labels = ", ".join(m["label"] for m in series.missing)
        reason = series.missing[0]["reason"]
        logger.warning(f"hf_spectral: missing, damaged or unreadable, left out of the series: {labels} ({reason})")


# --------------------------------------------------------------------------------------------------
# Small helpers


def _labelled(snapshot: Snapshot, name: str) -> Snapshot:
    snapshot.meta.setdefault("label", None)
    if not snapshot.meta["label"]:
        snapshot.meta["label"] = name
    return snapshot


def _time_ordered(snapshots: list[Snapshot]) -> list[Snapshot]:
    """Sorted by step when every snapshot has one (stable); otherwise in the order given."""
    steps = [s.meta.get("step") for s in snapshots]
    if all(isinstance(step, int) and not isinstance(step, bool) for step in steps):
        return [s for _, s in sorted(zip(steps, snapshots), key=lambda t: t[0])]
    return snapshots


def _log_history_file(path: Path) -> list[dict[str, Any]] | None:
    """A record's ``log_history.json``: a list of log dicts, or ``{"log_history": [...]}``."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        logger.warning(f"hf_spectral: cannot read {path} ({exc}); the series has no training metrics")
        return None
    if isinstance(data, dict):
        data = data.get("log_history")
    return [entry for entry in data if isinstance(entry, dict)] if isinstance(data, list) else None




def dynamics_from_source(
    source: SourceLike | Sequence[SourceLike],
    *,
    revisions: Revisions = None,
    reference: str | int = "final",
    cache_dir: str | os.PathLike | None = None,
    top: int = 10,
    **analysis_options: Any,
) -> Dynamics:
    """:func:`load_series` then :func:`~hf_spectral.dynamics.compute.compute_dynamics` against ``reference``."""
    snapshots = load_series(source, revisions=revisions, cache_dir=cache_dir, **analysis_options)
    return compute_dynamics(snapshots, reference=reference, top=top)
