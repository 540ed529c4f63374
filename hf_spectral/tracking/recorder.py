"""One spectral record of a training run, shared by ``SpectralCallback`` and ``SpectralTracker``.

A record is a folder of snapshots named ``step-000123`` in the analyzer's store format, plus
``log_history.json``. Snapshots are computed by the engine (every accelerate process takes a share
of the matrices), written atomically by the main process only, and turned into live scalars.
Only what the next snapshot needs stays in memory: the previous top-k vectors (for agreement)
and the latest table and singular values (for a checkpoint's summary).

Failures while training never propagate: a snapshot that cannot be computed or written is skipped
with a warning. Misconfiguration is reported by ``open`` as a ``SpectralError`` before training.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from hf_spectral.atomic import atomic_file, check_writable, recover_all, write_error
from hf_spectral.engine import (
    AnalysisOptions, Plan, analyze_checkpoint, analyze_model, frozen_plan, plan_model, process_state, run_plan,
)
from hf_spectral.errors import SpectralError
from hf_spectral.processes import CoreSplit
from hf_spectral.store import (
    CHECKPOINT_SUMMARY, LOG_HISTORY_FILE, Snapshot, is_snapshot, json_default, read_meta, read_snapshot,
    snapshot_problem, write_snapshot,
)
from hf_spectral.tracking.scalars import LAYER_FAMILIES, PREFIX, Vectors, live_scalars, measure_scalars
from hf_spectral.tracking.schedule import OverheadBudget
from hf_spectral.utils.logging import get_logger

logger = get_logger("hf_spectral.tracking")

_SNAPSHOT_NAME = re.compile(r"^step-(\d+)$")
DAMAGED_DIR = ".damaged"  # <record>/.damaged/step-N: snapshots found damaged on resume, set aside
_MEASURE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_RESERVED = set(LAYER_FAMILIES) | {"mean_erank", "mean_stable_rank", "mean_sigma_max", "mean_agreement", "flagged", "seconds"}

Measure = Callable[[nn.Module], Mapping[str, float]]


def snapshot_name(step: int) -> str:
    """Folder name of the snapshot at ``step`` inside a record: ``step-000123``."""
    return f"step-{int(step):06d}"


@dataclass
class FrozenSnapshot:
    """A snapshot taken but not computed yet: the plan reads CPU copies of the weights at ``step``.

    meta: the snapshot's meta.  extras: the extra measures of the model at ``step``.  previous: the
    vectors the agreement scalars compare with.  copy_seconds: what taking it cost the training thread.
    """

    step: int
    plan: Plan
    meta: dict[str, Any]
    extras: dict[str, dict[str, float]]
    previous: Vectors | None
    epoch: float | None
    copy_seconds: float


@dataclass
class ComputedSnapshot:
    """A snapshot computed (and written) by the worker. seconds: its own time, copy included."""

    step: int
    epoch: float | None
    snapshot: Snapshot
    scalars: dict[str, float]
    seconds: float


class Recorder:
    """Snapshots of one live model into one record folder."""

    def __init__(self, options: AnalysisOptions, *, log_layers: bool = True,
                 extra_measures: Mapping[str, Measure] | None = None, producer: str = "hf_spectral") -> None:
        self.options = options
        self.log_layers = log_layers
        self.extra_measures = check_extra_measures(extra_measures)
        self.producer = producer
        self.output_dir: Path | None = None
        self.recorded: set[int] = set()  # steps in the record, the same on every process
        self._previous: dict[str, tuple[np.ndarray, np.ndarray]] | None = None  # main process only
        self._latest: Snapshot | None = None  # main process only; without vectors
        self._failed_measures: set[str] = set()

    # ------------------------------------------------------------------------------------------
    # Opening a record

    def open(self, output_dir: str | os.PathLike, start_step: int, model: nn.Module | None = None) -> None:
        """Check the configuration, then continue the record at ``start_step``.

        Raises ``SpectralError`` for a bad regex, an empty selection or an unwritable folder. A fresh
        run (``start_step`` 0) replaces an earlier record in the folder; a resumed run keeps the
        snapshots up to ``start_step`` and drops later ones, which belong to the abandoned branch.
        """
        if model is not None:
            plan_model(model, self.options)  # planning raises SpectralError for bad include/exclude
        self.output_dir = Path(output_dir)
        self._previous, self._latest = None, None
        kept: list[int] = []
        if _is_main():
            ensure_writable(self.output_dir)
            try:
                kept = self._continue_record(start_step)
            except Exception as exc:  # an unreadable record must not stop training: start it afresh
                logger.warning("hf_spectral: cannot continue the record in %s (%s: %s); recording anew",
                               self.output_dir, type(exc).__name__, exc)
        self.recorded = set(_broadcast(kept))

    def _continue_record(self, start_step: int) -> list[int]:
        folder = self.output_dir
        assert folder is not None
        recover_all(folder)  # what a run killed while writing left behind
        found = {step: path for step, path in _recorded_steps(folder)}
        stale = sorted(s for s in found if start_step == 0 or s > start_step)
        if stale:
            logger.warning(
                "hf_spectral: %s holds %d snapshot(s) of an earlier run (steps %d..%d); they are replaced as "
                "this run continues the record from step %d",
                folder, len(stale), stale[0], stale[-1], start_step,
            )
            for step in stale:
                shutil.rmtree(found.pop(step), ignore_errors=True)
        kept = sorted(found)
        while kept:  # the latest intact snapshot gives the vectors the next agreement compares with
            try:
                latest = read_snapshot(found[kept[-1]])
            except SpectralError as exc:
                set_aside(found[kept.pop()], str(exc))
                continue
            self._previous = dict(latest.vectors) or None
            self._latest = _without_vectors(latest)
            break
        return kept

    # ------------------------------------------------------------------------------------------
    # Recording

    def record(self, model: nn.Module, step: int, meta: Mapping[str, Any] | None = None, *,
               cores: CoreSplit = CoreSplit()) -> dict[str, float] | None:
        """Snapshot the live ``model`` at ``step`` (all processes take part; the main one writes), its matrices
        sharing the cores as ``cores`` says.

        Returns the live scalars on the main process; None elsewhere, when ``step`` is already in
        the record, or when the snapshot failed (a warning says why).
        """
        def snapshot() -> Snapshot:
            with preserved_random_state():
                return analyze_model(model, self.options, step=step, meta=self._meta(step, meta),
                                     threads=cores.side_by_side, torch_threads=cores.torch_threads)

        return self._record(step, snapshot, model, f"at step {step}")

    def record_checkpoint(self, checkpoint: str | os.PathLike, step: int,
                          meta: Mapping[str, Any] | None = None) -> dict[str, float] | None:
        """Snapshot a saved checkpoint folder at ``step`` (for sharded models, whose live
        parameters are slices). Same returns as ``record``."""
        from hf_spectral.sources import SourceKind, classify, open_source

        def snapshot() -> Snapshot:
            found = classify(checkpoint)
            if found.kind is not SourceKind.CHECKPOINT:
                raise SpectralError(f"{checkpoint} is a {found.kind.value}, not one checkpoint: pass the folder "
                                    "that save_pretrained / Trainer wrote for this step")
            resolved = open_source(found)
            try:
                result = analyze_checkpoint(resolved[0], self.options)
            finally:
                for item in resolved:
                    item.close()
            result.meta.update(self._meta(step, {"checkpoint": str(checkpoint), **(meta or {})}))
            return result

        return self._record(step, snapshot, None, f"of {checkpoint}")

    def _record(self, step: int, snapshot: Callable[[], Snapshot], model: nn.Module | None,
                what: str) -> dict[str, float] | None:
        """Compute ``snapshot()`` once per step; a failure is a warning, never an exception (tracking
        must not kill training). The main process writes it and gets the live scalars."""
        if step in self.recorded:
            return None
        started = time.perf_counter()
        try:
            taken = snapshot()
        except Exception as exc:
            logger.warning("hf_spectral: spectral snapshot %s skipped: %s: %s", what, type(exc).__name__, exc)
            return None
        self.recorded.add(step)
        if not _is_main():
            return None
        return self._finish(taken, model, step, started)

    def _meta(self, step: int, meta: Mapping[str, Any] | None) -> dict[str, Any]:
        return {"step": int(step), "label": snapshot_name(step), "producer": self.producer, **(meta or {})}

    def _finish(self, snapshot: Snapshot, model: nn.Module | None, step: int, started: float) -> dict[str, float]:
        extras = self.measure(model, step) if model is not None and self.extra_measures else {}
        scalars = self._conclude(snapshot, extras, self._previous, step)
        self._keep(snapshot)
        scalars[f"{PREFIX}/seconds"] = round(time.perf_counter() - started, 4)
        return scalars

    def _conclude(self, snapshot: Snapshot, extras: dict[str, dict[str, float]], previous: Vectors | None,
                  step: int) -> dict[str, float]:
        """The live scalars of ``snapshot``, which is written to the record. Changes no state of the
        recorder: the snapshot worker runs it while the training thread goes on."""
        if extras:
            snapshot.meta["extra_measures"] = extras
        scalars = live_scalars(snapshot, previous, log_layers=self.log_layers)
        scalars.update(measure_scalars(extras))
        assert self.output_dir is not None
        self._write(snapshot, self.output_dir / snapshot_name(step), f"snapshot at step {step}")
        return scalars

    def _keep(self, snapshot: Snapshot) -> None:
        """Remember what the next snapshot and the checkpoint summaries need."""
        self._previous = dict(snapshot.vectors) or None
        self._latest = _without_vectors(snapshot)

    # ------------------------------------------------------------------------------------------
    # Snapshots computed off the training thread (SpectralCallback(background=...), docs/tracking.md)

    def freeze(self, model: nn.Module, step: int, meta: Mapping[str, Any] | None = None,
               epoch: float | None = None) -> FrozenSnapshot | None:
        """On the training thread: what ``compute`` needs to snapshot ``model`` as it is now — its plan
        over CPU copies of the planned weights, and the user's extra measures (functions of the live
        model). One process only. None (with a warning) when it fails or ``step`` is already recorded."""
        if step in self.recorded:
            return None
        started = time.perf_counter()
        try:
            plan = frozen_plan(plan_model(model, self.options))
        except Exception as exc:
            logger.warning("hf_spectral: spectral snapshot at step %d skipped: %s: %s", step, type(exc).__name__, exc)
            return None
        extras = self.measure(model, step) if self.extra_measures else {}
        full_meta = {"source": type(model).__name__, **self._meta(step, meta), "background": True}
        return FrozenSnapshot(step, plan, full_meta, extras, self._previous, epoch, time.perf_counter() - started)

    def compute(self, frozen: FrozenSnapshot) -> ComputedSnapshot | None:
        """In the snapshot worker: decompose, turn into scalars, write to the record. The RNGs are not
        touched (``fork_rng`` would save and restore the training's generator from another thread; the
        decompositions draw no random numbers). A failure is a warning and None."""
        started = time.perf_counter()
        try:
            snapshot = run_plan(frozen.plan, self.options, frozen.meta)
            scalars = self._conclude(snapshot, frozen.extras, frozen.previous, frozen.step)
        except Exception as exc:
            logger.warning("hf_spectral: spectral snapshot at step %d (computed in the background) skipped: %s: %s",
                           frozen.step, type(exc).__name__, exc)
            return None
        seconds = frozen.copy_seconds + time.perf_counter() - started
        scalars[f"{PREFIX}/seconds"] = round(seconds, 4)
        return ComputedSnapshot(frozen.step, frozen.epoch, snapshot, scalars, seconds)

    def accept(self, computed: ComputedSnapshot) -> dict[str, float]:
        """On the training thread: enter a computed snapshot into the record; its live scalars."""
        self.recorded.add(computed.step)
        self._keep(computed.snapshot)
        return computed.scalars

    def measure(self, model: nn.Module, step: int) -> dict[str, dict[str, float]]:
        """The user's extra measures of ``model``; a failing one is skipped with a warning."""
        out: dict[str, dict[str, float]] = {}
        modes = {module: module.training for module in model.modules()}
        try:
            for name, function in self.extra_measures.items():
                try:
                    with preserved_random_state(), torch.no_grad():
                        out[name] = _as_values(function(model))
                except Exception as exc:
                    # Warn once per measure: a broken measure would otherwise repeat at every snapshot.
                    level = logging.DEBUG if name in self._failed_measures else logging.WARNING
                    self._failed_measures.add(name)
                    logger.log(level, "hf_spectral: extra measure %r failed at step %d (%s: %s); skipped (later "
                               "failures of this measure are logged at DEBUG level)", name, step, type(exc).__name__, exc)
        finally:
            # A measure may switch the model to eval(): put every module back as training had it.
            for module, training in modes.items():
                module.training = training
        return out

    # ------------------------------------------------------------------------------------------
    # Checkpoint summaries and the log history

    def write_checkpoint_summary(self, model: nn.Module | None, step: int, checkpoint: str | os.PathLike) -> None:
        """Write the spectra at ``step`` (singular values and metrics, no vectors) into
        ``<checkpoint>/spectral``. Computes them (all processes) when ``step`` is not in the record."""
        target = Path(checkpoint) / CHECKPOINT_SUMMARY
        snapshot: Snapshot | None = None
        if step not in self.recorded:
            if model is None:
                return
            try:
                with preserved_random_state():
                    snapshot = analyze_model(model, replace(self.options, top_k=0), step=step, meta=self._meta(step, None))
            except Exception as exc:
                logger.warning("hf_spectral: spectral summary of %s skipped: %s: %s", checkpoint, type(exc).__name__, exc)
                return
        if not _is_main():
            return
        if not Path(checkpoint).is_dir():  # e.g. a hyperparameter-search trial saving elsewhere
            logger.debug("hf_spectral: no checkpoint folder %s; no spectral summary written", checkpoint)
            return
        if snapshot is None:
            snapshot = self._latest if self._latest is not None and self._latest.step == step else None
        if snapshot is None:
            assert self.output_dir is not None
            try:
                snapshot = read_snapshot(self.output_dir / snapshot_name(step))
            except Exception as exc:
                logger.warning("hf_spectral: spectral summary of %s skipped: %s", checkpoint, exc)
                return
        summary = _without_vectors(snapshot)
        summary.meta = {**summary.meta, "checkpoint": str(checkpoint)}
        self._write(summary, target, f"spectral summary in {checkpoint}")

    def write_log_history(self, history: list[dict[str, Any]]) -> None:
        """Write ``log_history.json`` into the record folder, atomically (main process only)."""
        if not _is_main() or self.output_dir is None:
            return
        try:
            write_json_atomic(self.output_dir / LOG_HISTORY_FILE, history)
        except (OSError, TypeError, ValueError) as exc:
            logger.warning("hf_spectral: could not write %s: %s", self.output_dir / LOG_HISTORY_FILE, exc)

    def _write(self, snapshot: Snapshot, folder: Path, what: str) -> bool:
        try:
            write_snapshot(snapshot, folder)
        except Exception as exc:  # disk full, permissions changed mid-run...
            logger.warning("hf_spectral: %s not written: %s", what, exc)
            return False
        return True


# ----------------------------------------------------------------------------------------------
# Helpers


def check_extra_measures(measures: Mapping[str, Measure] | None) -> dict[str, Measure]:
    """Validate ``extra_measures``: names usable in ``spectral/<name>/<key>``, callables as values."""
    if measures is None:
        return {}
    if not isinstance(measures, Mapping):
        raise SpectralError("extra_measures must be a dict {name: function(model) -> dict[str, float]}")
    for name, function in measures.items():
        if not isinstance(name, str) or not _MEASURE_NAME.match(name):
            raise SpectralError(f"extra_measures name {name!r}: use letters, digits, '_', '.' or '-'")
        if name in _RESERVED:
            raise SpectralError(f"extra_measures name {name!r} is taken by the spectral scalars; rename it")
        if not callable(function):
            raise SpectralError(f"extra_measures[{name!r}] is not callable; pass a function(model) -> dict[str, float]")
    return dict(measures)


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` and check a file can be written there; else a one-line ``SpectralError``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(f"spectral snapshots to {folder}", exc, "pass a writable output_dir") from None
    check_writable(folder, "pass a writable output_dir", what="spectral snapshots to ")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` via a temporary sibling and a rename."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=json_default))


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """Leave torch (CPU and current CUDA device), numpy and python RNG states as they were."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _recorded_steps(folder: Path) -> list[tuple[int, Path]]:
    """The intact snapshots of a record by step; damaged ones (torn meta, missing or cut-short
    arrays) are set aside with a warning, so that a resumed run never stops on them."""
    if not folder.is_dir():
        return []
    out = []
    for path in folder.iterdir():
        m = _SNAPSHOT_NAME.match(path.name)
        if not (m and path.is_dir() and is_snapshot(path)):
            continue
        problem = snapshot_problem(path)
        if problem is not None:
            set_aside(path, problem)
            continue
        step = read_meta(path).get("step")
        out.append((step if isinstance(step, int) else int(m.group(1)), path))
    return sorted(out)


def set_aside(snapshot: Path, problem: str) -> None:
    """Move a damaged snapshot into the record's ``.damaged/`` folder (never deleted), with a warning."""
    target = snapshot.parent / DAMAGED_DIR / snapshot.name
    try:
        target.parent.mkdir(exist_ok=True)
        if target.exists():
            target = target.with_name(f"{snapshot.name}-{uuid.uuid4().hex[:8]}")
        os.replace(snapshot, target)
    except OSError as exc:
        logger.warning("hf_spectral: %s; it could not be set aside (%s) and is ignored", problem, exc.strerror or exc)
        return
    logger.warning("hf_spectral: %s; moved to %s, and the record goes on without it", problem, target)


def _without_vectors(snapshot: Snapshot) -> Snapshot:
    return Snapshot(snapshot.table, dict(snapshot.spectra), {}, snapshot.alignment,
                    dict(snapshot.alignment_diagonals), dict(snapshot.meta))


def _as_values(value: Any) -> dict[str, float]:
    if isinstance(value, Mapping):
        return {str(k): float(v) for k, v in value.items()}
    return {"value": float(value)}


def within_budget(budget: OverheadBudget | None, step: int, wait: float | None = 0.0) -> bool:
    """Whether ``budget`` (None: no budget) allows a snapshot at ``step`` (``wait``: as in
    ``OverheadBudget.fits``). Decided on the main process and broadcast, since every process must take
    part in the same snapshots; a refusal is recorded in ``budget.skipped`` on every process."""
    if budget is None:
        return True
    fits = bool(_broadcast(budget.fits(step, wait)))
    if not fits:
        budget.skipped.append(step)
    return fits


def timed(budget: OverheadBudget | None, snapshot: bool = False) -> contextlib.AbstractContextManager:
    """``budget.timed(snapshot)``, or nothing when there is no budget."""
    return budget.timed(snapshot) if budget is not None else contextlib.nullcontext()


def _is_main() -> bool:
    return process_state().is_main_process


def _broadcast(value: Any) -> Any:
    """The main process's ``value`` on every process."""
    if process_state().num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]
