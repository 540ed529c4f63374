"""What a SOURCE is, decided in one place: a snapshot, a callback record, a Trainer run, a list of
checkpoints, a Hub id with revisions, or a single checkpoint (a local file or folder, a Hub id).

The CLI, the analyzer, the series loader and the recorder all ask ``classify``; nothing here reads
a tensor or contacts the Hub (a Hub id is recognised by its spelling; ``open_source`` in
``resolve.py`` fetches it). Local paths win over Hub ids: ``org/name`` that exists on disk is a folder.

Rules for an existing path, tried in this order:

1. a snapshot folder (``meta.json`` + ``matrices.parquet``)                 → ``SNAPSHOT``
2. a folder of snapshot folders without weights of its own (a callback
   record, or what ``hf-spectral analyze run/`` wrote for a run)            → ``RECORD``
3. a folder with ``checkpoint-N`` / ``checkpoint_N`` subfolders              → ``TRAINER_RUN``
   (see ``_trainer_output`` for a run that also holds the callback's record)
4. anything else (weights file, model folder, diffusers pipeline)           → ``CHECKPOINT``

Otherwise a Hub model id (``org/name``, ``name``, ``org/name@rev``): ``CHECKPOINT`` at one revision,
or ``HUB_REVISIONS`` with ``revisions``. Several SOURCEs are a ``CHECKPOINTS`` list of these.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Sequence

from hf_spectral.errors import SpectralError
from hf_spectral.sources.layout import weight_sets
from hf_spectral.sources.local import run_checkpoints
from hf_spectral.store import RECORD_FOLDER, is_snapshot, iter_snapshots

SourceLike = str | os.PathLike
Revisions = str | Sequence[str] | None


class SourceKind(str, Enum):
    """The kinds of SOURCE hf_spectral reads (a ``str`` enum: Python 3.10 has no ``StrEnum``)."""

    SNAPSHOT = "snapshot"  # one snapshot folder: spectra, read as they are
    RECORD = "record"  # a folder of snapshot folders (callback record): read as they are
    TRAINER_RUN = "trainer run"  # checkpoint-* folders: one checkpoint each, analyzed
    CHECKPOINTS = "checkpoint list"  # several SOURCEs, each classified on its own
    HUB_REVISIONS = "hub revisions"  # a Hub id and revision names or globs
    CHECKPOINT = "checkpoint"  # one checkpoint: a weights file, a model or pipeline folder, a Hub id


@dataclass(frozen=True)
class ClassifiedSource:
    """A SOURCE and what it is.

    source:    the SOURCE as given (for a list: the items joined by ", ").
    path:      the local path; None for a Hub id.
    folders:   RECORD: its snapshot folders (by step); TRAINER_RUN: its checkpoint folders (by N).
    record:    TRAINER_RUN: the callback's record inside the run folder (``spectral/``), if any.
    repo_id:   a Hub id without ``@revision`` (CHECKPOINT from the Hub, HUB_REVISIONS).
    revision:  CHECKPOINT from the Hub: the revision asked for (None: ``@rev`` of the id, else main).
    revisions: HUB_REVISIONS: names, a comma-separated string or globs, as given.
    items:     CHECKPOINTS: each SOURCE of the list, classified.
    """

    kind: SourceKind
    source: str
    path: Path | None = None
    folders: tuple[Path, ...] = ()
    record: Path | None = None
    repo_id: str | None = None
    revision: str | None = None
    revisions: str | tuple[str, ...] | None = None
    items: tuple["ClassifiedSource", ...] = ()

    @property
    def is_hub(self) -> bool:
        """Whether it names a Hub model (no local path)."""
        return self.repo_id is not None

    @property
    def is_series(self) -> bool:
        """Whether it holds more than one point in time (a run with one checkpoint is one point)."""
        if self.kind is SourceKind.TRAINER_RUN:
            return len(self.folders) > 1
        return self.kind in (SourceKind.RECORD, SourceKind.CHECKPOINTS, SourceKind.HUB_REVISIONS)


def classify(source: SourceLike | Sequence[SourceLike], *, revision: str | None = None,
             revisions: Revisions = None) -> ClassifiedSource:
    """What ``source`` is. ``revision`` (one Hub revision) and ``revisions`` (a series of them) apply
    to Hub ids only; a list of SOURCEs takes neither, except a list of one."""
    if revision is not None and revisions is not None:
        raise SpectralError("--revision and --revisions were both given: give one of them")
    if not isinstance(source, (str, os.PathLike)):
        items = list(source)
        if not items:
            raise SpectralError("empty series: pass a callback record, a Trainer run, checkpoints or a Hub model id")
        if len(items) == 1:
            return classify(items[0], revision=revision, revisions=revisions)
        if revision is not None or revisions is not None:
            raise SpectralError("--revisions applies to one Hub model id; pass a single SOURCE with --revisions")
        classified = tuple(classify(item) for item in items)
        return ClassifiedSource(SourceKind.CHECKPOINTS, ", ".join(c.source for c in classified), items=classified)
    text = str(source)
    if not text.strip():
        raise SpectralError("empty SOURCE: pass a weights file, a model or run folder, or a Hub model id")
    path = Path(text).expanduser()
    if path.exists():
        return _local(text, path, revision, revisions)
    return _hub(text, revision, revisions)


def _local(text: str, path: Path, revision: str | None, revisions: Revisions) -> ClassifiedSource:
    for flag, given in (("--revision", revision), ("--revisions", revisions)):
        if given is not None:
            raise SpectralError(f"{flag} applies to Hub model ids only, but {text} is a local path: drop {flag}")
    if is_snapshot(path):
        return ClassifiedSource(SourceKind.SNAPSHOT, text, path)
    if path.is_dir():
        # Snapshot folders before checkpoint folders: `hf-spectral analyze run/` writes checkpoint-N/
        # snapshots, a record. A folder with weights of its own is a checkpoint, though: a Trainer
        # checkpoint-N/ keeps its own spectra in spectral/.
        snapshots = tuple(iter_snapshots(path))
        if snapshots and not _holds_weights(path):
            return ClassifiedSource(SourceKind.RECORD, text, path, folders=snapshots)
        run = run_checkpoints(path)
        if run:
            return _trainer_output(text, path, tuple(run))
    return ClassifiedSource(SourceKind.CHECKPOINT, text, path)


def _holds_weights(folder: Path) -> bool:
    return bool(weight_sets(folder)) or (folder / "model_index.json").is_file()


def _trainer_output(text: str, path: Path, run: tuple[Path, ...]) -> ClassifiedSource:
    """A Trainer ``output_dir`` with checkpoint-* folders, and perhaps the callback's record beside them.

    THE RULE for a run holding both (one branch, here): today the checkpoints are the series
    (analyzed through the cache); the record is noted in ``record`` but not read. To prefer the
    record, return ``ClassifiedSource(SourceKind.RECORD, text, record, folders=...)`` when it is set.
    """
    record = _callback_record(path)
    return ClassifiedSource(SourceKind.TRAINER_RUN, text, path, folders=run, record=record)


def _callback_record(run: Path) -> Path | None:
    """``<run>/spectral`` when it holds snapshot folders (what ``SpectralCallback`` writes by default)."""
    folder = run / RECORD_FOLDER
    return folder if folder.is_dir() and any(iter_snapshots(folder)) else None


def _hub(text: str, revision: str | None, revisions: Revisions) -> ClassifiedSource:
    from hf_spectral.sources.hub import looks_like_hub_id, split_revision

    if not looks_like_hub_id(text):
        raise SpectralError(f"no such file or folder: {text}")
    repo_id, at_revision = split_revision(text)
    if revisions is None:
        return ClassifiedSource(SourceKind.CHECKPOINT, text, repo_id=repo_id, revision=revision)
    if at_revision is not None:
        raise SpectralError(f"{text} names revision {at_revision} and --revisions is given too: give one of them")
    given = revisions if isinstance(revisions, str) else tuple(str(r) for r in revisions)
    return ClassifiedSource(SourceKind.HUB_REVISIONS, text, repo_id=repo_id, revisions=given)
