"""``SpectralTracker``: spectral snapshots in a hand-written training loop (accelerate, diffusers scripts).

    tracker = SpectralTracker("runs/unet/spectral", max_steps=num_steps, accelerator=accelerator)
    tracker.step(model, 0)                     # the initialization
    for step in range(1, num_steps + 1):
        ...                                    # forward, backward, optimizer.step()
        tracker.step(model, step)              # snapshots only at scheduled steps
    tracker.close()

Same schedule, record format and scalars as ``SpectralCallback``; scalars go to
``accelerator.log`` (the trackers ``accelerator.init_trackers`` started) when an Accelerator is given.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from hf_spectral.engine import AnalysisOptions, process_state
from hf_spectral.errors import SpectralError
from hf_spectral.store import LOG_HISTORY_FILE
from hf_spectral.tracking.background import waiting_split
from hf_spectral.tracking.recorder import Recorder, timed, within_budget
from hf_spectral.tracking.schedule import OverheadBudget, Schedule, ScheduleSpec
from hf_spectral.tracking.sharding import sharded_kind
from hf_spectral.utils.logging import get_logger

logger = get_logger("hf_spectral.tracking")


class SpectralTracker:
    """Snapshot the spectra of a live model from a custom training loop.

    output_dir: the record folder.  max_steps: length of the run (the ``"log"`` schedule needs it for
    its even fill and last step; without it only the log-spaced steps are taken).
    accelerator: an ``accelerate.Accelerator``; the model is unwrapped with it and scalars go to
    ``accelerator.log``. max_overhead: the share of the projected training time tracking may take
    (default 0.05, ``None``: every scheduled snapshot), as in ``SpectralCallback``: the budget is
    ``tracking.schedule.OverheadBudget``, training time is the wall time between ``step`` calls outside
    tracking, and ``max_steps`` gives the run's length (without it, the time elapsed so far is the
    projection). The first and the last step are always taken; skipped steps are listed in the later
    snapshots' ``meta["skipped_steps"]`` and logged once by ``close``. Other arguments as ``SpectralCallback``.

    Call ``step(model, global_step)`` on every process after each optimizer step (and once with the
    starting step before training: 0, or the step a resumed run starts from). Snapshots are computed on
    the calling thread (no background worker as in ``SpectralCallback``): ``step`` returns the scalars of
    its own snapshot, and the loops it serves often run several processes, where a worker is unsafe.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        schedule: ScheduleSpec = "log",
        *,
        max_steps: int | None = None,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        top_k: int = 10,
        device: str = "auto",
        precision: str = "float32",
        log_layers: bool = True,
        alignment: bool = False,
        heavy_tail: bool = False,
        extra_measures: Mapping[str, Callable[[nn.Module], Mapping[str, float]]] | None = None,
        accelerator: Any = None,
        max_overhead: float | None = 0.05,
    ) -> None:
        self.schedule = Schedule.parse(schedule)
        self.budget = OverheadBudget(max_overhead) if max_overhead is not None else None  # validates it
        self.output_dir = Path(output_dir)
        self.max_steps = max_steps
        self.accelerator = accelerator
        options = AnalysisOptions(include=include, exclude=exclude, top_k=top_k, device=device,
                                  precision=precision, alignment=alignment, progress=False, heavy_tail=heavy_tail)
        self.recorder = Recorder(options, log_layers=log_layers, extra_measures=extra_measures,
                                 producer="SpectralTracker")
        self.history: list[dict[str, Any]] = []  # what goes to log_history.json: spectral and user scalars
        self._opened = False

    def step(self, model: nn.Module, global_step: int) -> dict[str, float] | None:
        """Snapshot ``model`` if ``global_step`` is scheduled; returns the logged scalars (main process).

        The first call opens the record: misconfiguration raises ``SpectralError`` there; later
        failures only warn.
        """
        if not self._opened:
            kind = sharded_kind(model)
            if kind is not None:
                raise SpectralError(
                    f"SpectralTracker: the model's parameters are sharded ({kind}), so their spectra are not the "
                    "weights'; save full checkpoints and analyze them with hf_spectral.analyze_series instead"
                )
            if self.budget is not None:
                self.budget.start(int(global_step), self.max_steps)
            with timed(self.budget):
                self.recorder.open(self.output_dir, int(global_step), self._unwrap(model))
                self.history = _earlier_history(self.output_dir / LOG_HISTORY_FILE, int(global_step)) + self.history
            self._opened = True
        step = int(global_step)
        if self.budget is not None:
            self.budget.tick(step)
        if not self.schedule.is_due(step, self.max_steps) or step in self.recorder.recorded:
            return None
        if not within_budget(self.budget, step):
            return None
        with timed(self.budget, snapshot=True):
            scalars = self.recorder.record(self._unwrap(model), step, self.budget.meta() if self.budget else None,
                                           cores=waiting_split(process_state().num_processes))
            if not scalars:
                return None
            self.history.append({**scalars, "step": step})
            self._forward(scalars, step, "the spectral scalars")
            self.recorder.write_log_history(self.history)
        return scalars

    def log(self, values: Mapping[str, float], step: int) -> None:
        """Log the loop's own metrics (loss, validation accuracy...): to ``accelerator.log`` when an
        Accelerator was given (as ``accelerator.log`` itself would), and to ``log_history.json``, so that
        the dynamics tools plot them next to the spectra (written at the next snapshot and at ``close``)."""
        values = dict(values)
        self.history.append({**values, "step": int(step)})
        self._forward(values, int(step), "the logged values")

    def _forward(self, values: dict[str, Any], step: int, what: str) -> None:
        if self.accelerator is None:
            return
        try:
            self.accelerator.log(values, step=step)
        except Exception as exc:  # a logger's failure must not stop training
            logger.warning("hf_spectral: accelerator.log failed for %s: %s", what, exc)

    def close(self) -> None:
        """Write ``log_history.json`` (main process); log once which snapshots the budget skipped."""
        if not self._opened:
            return
        with timed(self.budget):
            self.recorder.write_log_history(self.history)
        summary = self.budget.summary() if self.budget is not None else None
        if summary and process_state().is_main_process:
            logger.warning(summary)
        if self.budget is not None:
            self.budget.skipped = []  # logged once, also when close() is called again

    def __enter__(self) -> "SpectralTracker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unwrap(self, model: nn.Module) -> nn.Module:
        if self.accelerator is not None:
            return self.accelerator.unwrap_model(model, keep_torch_compile=False)
        from accelerate.utils import extract_model_from_parallel

        return extract_model_from_parallel(model, keep_torch_compile=False)


def _earlier_history(path: Path, start_step: int) -> list[dict[str, Any]]:
    """A resumed loop's history up to ``start_step`` (a fresh run, step 0, starts a new one)."""
    if start_step == 0 or not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        logger.warning("hf_spectral: could not read %s to continue it: %s", path, exc)
        return []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("step"), int) and e["step"] <= start_step]
