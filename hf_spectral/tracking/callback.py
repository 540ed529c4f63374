"""``SpectralCallback``: spectral snapshots of the live model during ``Trainer.train()``.

    trainer = Trainer(..., callbacks=[SpectralCallback()])

Logging route (docs/tracking.md): ``Trainer.log`` appends to ``state.log_history`` and then calls
``on_log`` on every callback in order; user callbacks come after the reporting ones, so keys added
to ``logs`` in a user ``on_log`` reach no logger. At a snapshot this callback does what
``Trainer.log`` does itself: it appends ``{**scalars, "epoch", "step"}`` to ``state.log_history``
and calls the public ``on_log`` of the other callbacks of the Trainer's ``CallbackHandler`` (the
reporters: TensorBoard, W&B, trackio, MLflow...), at ``state.global_step``. The console printers
are skipped so that hundreds of per-layer scalars do not flood the terminal. A snapshot computed in the
background (``background``; ``tracking/background.py``) is logged the same way at a later event, at its
own step: the reporters get a shallow copy of the state at that step.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hf_spectral.engine import AnalysisOptions, launched_processes, process_state
from hf_spectral.errors import SpectralError
from hf_spectral.processes import CoreSplit
from hf_spectral.store import RECORD_FOLDER
from hf_spectral.tracking.background import (
    BackgroundSpec, SnapshotWorker, parse_background, use_background, waiting_split, waiting_threads,
)
from hf_spectral.tracking.recorder import ComputedSnapshot, Recorder, timed, within_budget
from hf_spectral.tracking.schedule import OverheadBudget, Schedule, ScheduleSpec
from hf_spectral.tracking.sharding import sharded_kind
from hf_spectral.utils.logging import get_logger

logger = get_logger("hf_spectral.tracking")


class SpectralCallback(TrainerCallback):
    """Snapshot the spectra of every weight matrix of the model being trained, on a schedule.

    schedule:   ``"log"`` (default: step 0, log-spaced steps and 10 evenly spaced ones, and the last
                step), an int N (every N steps, plus the last) or a list of steps.
    include / exclude: regexes on matrix names.  top_k: singular vectors kept per matrix (needed for
    the agreement scalars).  device / precision: as in ``hf_spectral.analyze``.
    output_dir: the record folder (default ``<TrainingArguments.output_dir>/spectral``).
    log_layers: log per-matrix scalars, not only model-level summaries.
    alignment:  also store consecutive-layer alignment in each snapshot (full SVDs of paired layers).
    heavy_tail: also compute weightwatcher's α metrics of every matrix (logged: ``spectral/mean_alpha``,
                per layer ``spectral/alpha/<matrix>``; docs/heavy_tailed.md).
    truncation_eval: at each snapshot also evaluate the model with every matrix truncated to the top and
                the bottom share of its SVD (0.5: ``eval_top50_*``, ``eval_bottom50_*``, next to the full model's
                ``eval_*``), through the Trainer's evaluation loop (paper Fig. 4 as a live curve). Needs an
                ``eval_dataset``; ``attach(trainer)`` is the explicit route to it.
    extra_measures: ``{name: function(model) -> {key: value}}``, computed at each snapshot, logged as
                ``spectral/<name>/<key>`` and stored in the snapshot's ``meta["extra_measures"]``.
    max_overhead: the largest share of the projected training time that tracking may take (default 0.05;
                all of it is counted: snapshots, writing them, the log history); a scheduled snapshot that would
                exceed it is skipped (``tracking.schedule.OverheadBudget`` says how the time is projected).
                Step 0 and the last step are always taken. Skipped steps are listed in
                ``meta["skipped_steps"]`` of the later snapshots and logged once at the end of
                training. ``None`` takes every scheduled snapshot. With ``background`` only the training
                thread's time is charged (copying the weights, waiting for the worker, emitting, writing).
    background: compute snapshots off the training thread: at a due step the training thread copies the
                planned weights to the CPU and one worker thread decomposes and writes them while training
                goes on; the scalars are logged at the next event, at the snapshot's step. At most one
                snapshot in flight (the next due one waits for it); the last step's snapshot is computed at
                once on the training thread (with the worker's cores too). ``"auto"`` (default): where it is safe and pays — one process, the analysis on the
                CPU, no ``truncation_eval``, a live (unsharded) model, a CPU copy of the weights within a quarter
                of the available memory, and as many idle cores as the training's torch threads (the worker
                runs with that count) or the model on an accelerator (docs/tracking.md). ``True``:
                wherever it is safe (else a warning, and on the training thread); ``False``: never.
    """

    def __init__(
        self,
        schedule: ScheduleSpec = "log",
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        top_k: int = 10,
        device: str = "auto",
        output_dir: str | os.PathLike | None = None,
        precision: str = "float32",
        log_layers: bool = True,
        alignment: bool = False,
        heavy_tail: bool = False,
        extra_measures: Mapping[str, Callable[[nn.Module], Mapping[str, float]]] | None = None,
        max_overhead: float | None = 0.05,
        truncation_eval: float | None = None,
        background: BackgroundSpec = "auto",
    ) -> None:
        if truncation_eval is not None and not 0.0 < truncation_eval <= 1.0:
            raise SpectralError(f"SpectralCallback truncation_eval={truncation_eval}: give the kept share of each SVD, "
                                "in (0, 1], e.g. 0.5")
        self.truncation_eval = truncation_eval
        self.background = parse_background(background)
        self._worker: SnapshotWorker | None = None  # the background worker of the current run
        self._trainer: Any = None  # needed only by truncation_eval (it evaluates through the Trainer)
        self.schedule = Schedule.parse(schedule)
        self.max_overhead = max_overhead
        self.budget = OverheadBudget(max_overhead) if max_overhead is not None else None  # validates it
        options = AnalysisOptions(include=include, exclude=exclude, top_k=top_k, device=device,
                                  precision=precision, alignment=alignment, progress=False, heavy_tail=heavy_tail)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.recorder = Recorder(options, log_layers=log_layers, extra_measures=extra_measures,
                                 producer="SpectralCallback")
        self._handler: Any = None
        self._attached = False  # handler given by attach(), else found at each on_train_begin
        self._live = True
        self._max_steps: int | None = None

    def attach(self, trainer: Any) -> "SpectralCallback":
        """Add this callback to ``trainer`` (unless it is there already) and keep the Trainer's public
        ``callback_handler``, through which the spectral scalars reach every ``report_to`` logger.

        The explicit route: ``SpectralCallback(...).attach(trainer)``. A callback only passed in
        ``Trainer(callbacks=[...])`` finds the handler by looking for it on the call stack when
        training begins (the fallback: it works with today's transformers; if a transformers
        change hides it, the scalars still reach ``trainer.state.log_history`` and a warning says so).
        """
        handler = getattr(trainer, "callback_handler", None)
        if handler is None or not hasattr(handler, "callbacks"):
            raise SpectralError(f"SpectralCallback.attach: {type(trainer).__name__} has no callback_handler; "
                                "pass a transformers Trainer (or put the callback in Trainer(callbacks=[...]))")
        if all(cb is not self for cb in handler.callbacks):
            trainer.add_callback(self)
        self._handler = handler
        self._trainer = trainer
        self._attached = True
        return self

    @property
    def _truncating(self) -> bool:
        """Whether snapshots also evaluate the truncated model (``attach`` keeps the Trainer either way)."""
        return self.truncation_eval is not None and self._trainer is not None

    @property
    def record_dir(self) -> Path | None:
        """The record folder (known once training has begun)."""
        return self.recorder.output_dir

    @property
    def in_flight_step(self) -> int | None:
        """The step of the snapshot the background worker is computing (its scalars are logged later), or None."""
        return self._worker.pending_step if self._worker is not None else None

    # ------------------------------------------------------------------------------------------
    # Trainer events

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: nn.Module | None = None, **kwargs: Any) -> None:
        if model is None:
            raise SpectralError("SpectralCallback got no model from the Trainer; pass model= to Trainer")
        if not self._attached:  # look for the handler dispatching this event (the fallback)
            self._handler = _calling_handler(self)
            if self.truncation_eval is not None:
                self._trainer = _calling_trainer(self)
        if self.truncation_eval is not None and getattr(self._trainer, "eval_dataset", None) is None:
            logger.warning("hf_spectral: truncation_eval needs a Trainer with an eval_dataset, reached through "
                           "SpectralCallback(...).attach(trainer); truncated evaluations are off for this run")
            self._trainer = None
        if self._handler is None:
            logger.warning("hf_spectral: spectral scalars go to trainer.state.log_history only: this trainer does "
                           "not dispatch events through transformers' CallbackHandler, so report_to loggers miss them")
        self._max_steps = state.max_steps if state.max_steps and state.max_steps > 0 else None
        if self.max_overhead is not None:
            self.budget = OverheadBudget(self.max_overhead)
            self.budget.start(state.global_step, self._max_steps)
        if args.world_size == 1 and launched_processes() > 1:
            logger.warning("hf_spectral: launched as %d processes, but the Trainer runs each one alone (on a machine "
                           "without GPUs pass use_cpu=True to TrainingArguments to train one run over gloo); every "
                           "process trains and writes the same output folder", launched_processes())
        kind = sharded_kind(model)
        self._live = kind is None
        if kind is not None:
            logger.warning("hf_spectral: the model's parameters are sharded (%s); spectral snapshots are taken from "
                           "the checkpoints the Trainer saves (save steps), not from the live model at the schedule",
                           kind)
        live = _unwrap(model) if self._live else None
        record = self.output_dir if self.output_dir is not None else Path(args.output_dir) / RECORD_FOLDER
        with timed(self.budget):
            self.recorder.open(record, state.global_step, live)  # misconfiguration raises here, before step 1
        self._close_worker()  # a worker left by a run that raised
        if live is not None and use_background(self.background, live, self.recorder.options, world_size=args.world_size,
                                               live=True, truncation_eval=self._truncating):
            self._worker = SnapshotWorker(self.recorder.compute)
            if self.budget is not None:  # the last snapshot's reserve
                self.budget.last_threads = self._waiting_cores(args).side_by_side
        if live is not None:
            self._snapshot(args, state, control, model, hold=True)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: nn.Module | None = None, **kwargs: Any) -> None:
        if self.budget is not None:
            self.budget.tick(state.global_step)
        if self._worker is not None:
            self._worker.release()  # the step-0 snapshot, held back through the first step
        self._drain(args, state, control, wait=False)
        if self._live and model is not None:
            self._snapshot(args, state, control, model)
        self._drain(args, state, control, wait=control.should_save)  # save_strategy="steps" decided it

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        self._drain(args, state, control, wait=control.should_save)  # save_strategy="epoch" decides here

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                model: nn.Module | None = None, **kwargs: Any) -> None:
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        if self.recorder.output_dir is None:  # not opened: this trainer never called on_train_begin
            return
        # the checkpoint's summary reuses the snapshot of its step: wait for it when it is in flight
        self._drain(args, state, control, wait=self.in_flight_step == state.global_step)
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if not self._live:
            process_state().wait_for_everyone()  # every process has finished writing its part
            scalars = self.recorder.record_checkpoint(checkpoint, state.global_step, {"epoch": state.epoch})
            if scalars:
                self._emit(args, state, control, scalars)
        live = _unwrap(model) if self._live and model is not None else None
        with timed(self.budget):
            self.recorder.write_checkpoint_summary(live, state.global_step, checkpoint)
            self.recorder.write_log_history(state.log_history)

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        # Keep log_history.json current with the validation metrics, for tools that read a live run.
        # save_strategy="best" decides to save after this evaluation (``_drain`` says why it waits).
        self._drain(args, state, control, wait=getattr(args.save_strategy, "value", args.save_strategy) == "best")
        with timed(self.budget):
            self.recorder.write_log_history(state.log_history)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     model: nn.Module | None = None, **kwargs: Any) -> None:
        # A run stopped early (EarlyStoppingCallback, should_training_stop) never reached its planned last
        # step: record where it ended. Not with load_best_model_at_end (the model is no longer the last one),
        # and not sent to the reporters, which close their writers in their own on_train_end.
        step = state.global_step
        with timed(self.budget):
            # the snapshot in flight (the reporters have closed their writers: log_history and the record only)
            done = self._worker.take(wait=True) if self._worker is not None else None
            cores = self._waiting_cores(args)
            self._close_worker()
            if done is not None and (scalars := self._accept(done)):
                state.log_history.append({**scalars, "epoch": done.epoch, "step": done.step})
            if (self._live and model is not None and self.schedule.kind != "steps" and not args.load_best_model_at_end
                    and step not in self.recorder.recorded):
                scalars = self.recorder.record(_unwrap(model), step, self._meta(state), cores=cores)
                if scalars:
                    state.log_history.append({**scalars, "step": step})
            self.recorder.write_log_history(state.log_history)
        summary = self.budget.summary() if self.budget is not None else None
        if summary and process_state().is_main_process:
            logger.warning(summary)

    # ------------------------------------------------------------------------------------------

    def _snapshot(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: nn.Module,
                  hold: bool = False) -> None:
        step = state.global_step
        if not self.schedule.is_due(step, self._max_steps) or step in self.recorder.recorded:
            return
        if not within_budget(self.budget, step, self._expected_wait()):
            return
        last = self._max_steps is not None and step >= self._max_steps
        if self._worker is not None and not last:
            self._snapshot_in_background(args, state, control, model, hold)
            return
        # Training waits for this one. The last step's with the worker: the weights no longer change, so no
        # copy; the worker's cores and the training's decompose it.
        cores = self._waiting_cores(args)
        with timed(self.budget, snapshot=True):
            self._drain(args, state, control, wait=True, charged=False)  # the one in flight first, at its step
            scalars = self.recorder.record(_unwrap(model), step, self._meta(state), cores=cores)
            if scalars and self._truncating:
                scalars.update(self._truncated_metrics())
            if scalars:
                self._emit(args, state, control, scalars)
                self.recorder.write_log_history(state.log_history)

    def _snapshot_in_background(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                                model: nn.Module, hold: bool = False) -> None:
        """Copy the weights and hand them to the worker (waiting for the one in flight: at most one).
        ``hold`` (the step-0 snapshot): the worker starts it after the first step, whose allocations (the
        optimizer state, the gradients) were measured to take ~0.4 s longer beside it."""
        assert self._worker is not None
        step = state.global_step
        with timed(self.budget, snapshot=True):
            self._drain(args, state, control, wait=True, charged=False)  # charged with this block
            frozen = self.recorder.freeze(_unwrap(model), step, self._meta(state), epoch=state.epoch)
            if frozen is not None:
                self._worker.submit(frozen, hold=hold)

    def _drain(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, wait: bool,
               charged: bool = True) -> None:
        """Take the worker's computed snapshot (``wait``: also one still in flight) and emit its scalars,
        at its own step, on this (the training) thread. The waiting and the emitting are charged to the
        budget (``charged`` False: the caller's block charges them).

        Before a checkpoint is saved it waits (``wait=control.should_save``): the Trainer writes
        trainer_state.json (with log_history) into the checkpoint before ``on_save``, and a run resumed
        from it must find the snapshot's entry there."""
        if self._worker is None or self._worker.pending_step is None:
            return
        with timed(self.budget) if charged else contextlib.nullcontext():
            done = self._worker.take(wait)
            if done is None:
                return
            scalars = self._accept(done)
            if scalars:
                self._emit(args, state, control, scalars, step=done.step, epoch=done.epoch)
                self.recorder.write_log_history(state.log_history)

    def _accept(self, done: ComputedSnapshot) -> dict[str, float]:
        """Enter ``done`` into the record and the budget; its scalars."""
        if self.budget is not None:
            self.budget.note_worker(done.seconds)
        return self.recorder.accept(done)

    def _expected_wait(self) -> float | None:
        """What waiting for the worker's snapshot in flight is expected to cost (0 when there is none)."""
        elapsed = self._worker.elapsed() if self._worker is not None else None
        if elapsed is None or self.budget is None:
            return 0.0
        return self.budget.expected_wait(elapsed)

    def _waiting_cores(self, args: TrainingArguments) -> CoreSplit:
        """How a snapshot training waits for shares the cores: with the worker (idle then) the worker's and the
        training's, in teams of torch's count; without it, the training's."""
        if self._worker is not None:
            return CoreSplit(waiting_threads(args.world_size))
        return waiting_split(args.world_size)

    def _close_worker(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def _truncated_metrics(self) -> dict[str, float]:
        """The full model's and its top-/bottom-truncated copies' eval metrics (``eval_top50_loss``...), through
        the Trainer's evaluation loop; a failure only warns (tracking never stops training)."""
        from hf_spectral.experiments.truncation import evaluate_truncated

        try:
            return evaluate_truncated(self._trainer, self.truncation_eval, full=True, log=False)
        except Exception as exc:  # noqa: BLE001 - any failure of an optional evaluation
            logger.warning("hf_spectral: truncated evaluation failed (%s: %s); training goes on", type(exc).__name__, exc)
            return {}

    def _meta(self, state: TrainerState) -> dict[str, Any]:
        meta: dict[str, Any] = {"epoch": state.epoch}
        if self.budget is not None:
            meta.update(self.budget.meta())
        return meta

    def _emit(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
              scalars: dict[str, float], step: int | None = None, epoch: float | None = None) -> None:
        """What ``Trainer.log`` does: one ``log_history`` entry, then ``on_log`` of every reporter, at
        ``step`` (a snapshot computed in the background is emitted later than its step: the reporters
        get a shallow copy of ``state`` at that step and epoch, so they plot it at the right x)."""
        if step is not None and step != state.global_step:
            state = copy.copy(state)  # shares log_history with the Trainer's state: the entry below goes there
            state.global_step, state.epoch = step, epoch
        logs: dict[str, float] = dict(scalars)
        if state.epoch is not None:
            logs["epoch"] = state.epoch
        state.log_history.append({**logs, "step": state.global_step})
        handler = self._handler
        if handler is None:
            return
        for callback in list(handler.callbacks):
            if callback is self or _is_console(callback):
                continue
            try:
                callback.on_log(
                    args, state, control, logs=dict(logs), model=handler.model,
                    processing_class=getattr(handler, "processing_class", None), optimizer=handler.optimizer,
                    lr_scheduler=handler.lr_scheduler, train_dataloader=handler.train_dataloader,
                    eval_dataloader=handler.eval_dataloader,
                )
            except Exception as exc:  # a logger's failure must not stop training either
                logger.warning("hf_spectral: %s could not log the spectral scalars: %s", type(callback).__name__, exc)


def _calling_handler(callback: TrainerCallback) -> Any:
    """The ``CallbackHandler`` dispatching the current event to ``callback`` (its ``call_event`` is
    on the stack), or None. The handler is the Trainer's public ``callback_handler``; this walk is the
    fallback for callbacks not given it with ``SpectralCallback.attach`` (the callback contract passes
    the model, optimizer and dataloaders to events, not the handler)."""
    from transformers.trainer_callback import CallbackHandler

    return _on_stack(lambda obj: isinstance(obj, CallbackHandler) and any(cb is callback for cb in obj.callbacks))


def _calling_trainer(callback: TrainerCallback) -> Any:
    """The Trainer whose handler dispatches the current event to ``callback`` (the same fallback), or None."""
    from transformers import Trainer

    return _on_stack(lambda obj: isinstance(obj, Trainer) and any(cb is callback for cb in obj.callback_handler.callbacks),
                     depth=12)


def _on_stack(match: Callable[[Any], bool], depth: int = 8) -> Any:
    """The first ``self`` among the callers' frames (up to ``depth``) that ``match`` accepts, or None."""
    frame = inspect.currentframe()
    try:
        caller = frame.f_back.f_back if frame is not None and frame.f_back is not None else None
        for _ in range(depth):
            if caller is None:
                return None
            candidate = caller.f_locals.get("self")
            if match(candidate):
                return candidate
            caller = caller.f_back
        return None
    finally:
        del frame


def _is_console(callback: TrainerCallback) -> bool:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    names = {cls.__name__ for cls in type(callback).__mro__}
    return isinstance(callback, (PrinterCallback, ProgressCallback)) or "NotebookProgressCallback" in names


def _unwrap(model: nn.Module) -> nn.Module:
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model, keep_torch_compile=False)
