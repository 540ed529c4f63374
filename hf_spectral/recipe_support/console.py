"""The console of a training run: a tqdm bar and, every N steps, one short line with the loss, the
chosen eval metrics and the mean normalized effective rank (``spectral/mean_erank``), instead of
the Trainer's full log dicts and a bar per evaluation."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

MEAN_ERANK = "spectral/mean_erank"  # the SpectralCallback's model-level scalar (tracking/scalars.py)
LINES_PER_RUN = 25


def metric_label(key: str) -> str:
    """A short console label: eval_val_accuracy → val acc, eval_perplexity → perplexity,
    spectral/fourier/top5_fraction → fourier top5 fraction, spectral/mean_erank → mean erank."""
    if key == "eval_loss":
        return "eval loss"
    name = key.removeprefix("eval_").removeprefix("spectral/").replace("/", " ").replace("_", " ")
    return name.replace("accuracy", "acc")


def _number(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"


def console_line(step: int, logs: Mapping[str, Any], metrics: Sequence[str] = ()) -> str:
    """`step  1,150  loss 0.0021  val acc 0.9030  mean erank 0.4120`: the loss, each of ``metrics``
    and the mean normalized effective rank, those present in ``logs`` (the newest value of each key)."""
    parts = [f"step {step:>6,}"]
    for key in ("loss", *metrics, MEAN_ERANK):
        value = logs.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{metric_label(key)} {_number(float(value))}")
    return "  ".join(parts)


def progress_every(max_steps: int, eval_steps: int | None = None, lines: int = LINES_PER_RUN) -> int:
    """Steps between two console lines: ~``lines`` per run, a multiple of ``eval_steps`` when given
    (so that every line shows a fresh evaluation)."""
    unit = max(1, eval_steps or 1)
    return unit * max(1, round(max_steps / lines / unit))


class ConsoleCallback(TrainerCallback):
    """A tqdm bar (unless ``--disable_tqdm``) and, every ``every`` steps (default: ~25 lines per run,
    a multiple of ``eval_steps``) and at the last step, one :func:`console_line` with ``metrics``.

    A step's line is written once all of that step's logs are in (evaluations of several eval
    datasets, the spectral snapshot): at the start of the next step, or at the end of training. A
    snapshot of that step still computed in the background (``spectral``: the run's ``SpectralCallback``,
    which ``attach_console`` finds) holds the line until its scalars are logged, or the next line is due.
    Only the main process writes. Use :func:`attach_console` to replace the Trainer's printers."""

    def __init__(self, metrics: str | Sequence[str] = (), every: int | None = None, bar: bool = True) -> None:
        self.metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        self.every, self.use_bar = every, bar
        self.bar: Any = None
        self.latest: dict[str, Any] = {}
        self.pending: int | None = None
        self.main = True
        self.spectral: Any = None  # the run's SpectralCallback (its in_flight_step), set by attach_console
        self.held: dict[str, Any] | None = None  # the logs of a line waiting for its background snapshot

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.every is None:
            eval_steps = args.eval_steps if args.eval_strategy == "steps" else None
            self.every = progress_every(state.max_steps, int(eval_steps) if eval_steps and eval_steps >= 1 else None)
        self.main = state.is_world_process_zero
        if state.is_world_process_zero and self.use_bar and not args.disable_tqdm:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, dynamic_ncols=True, initial=state.global_step)

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.pending is None or getattr(self.spectral, "in_flight_step", None) != self.pending:
            self._flush()
        elif self.held is None:  # the line waits for its snapshot's scalars (on_log), with its step's values
            self.held = dict(self.latest)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
        if state.global_step % (self.every or 1) == 0 or state.global_step == state.max_steps:
            self._flush()  # a line still waiting for a background snapshot goes out as it is
            self.pending = state.global_step

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.latest.update(logs or {})
        if self.held is not None and state.global_step == self.pending:
            self.held.update(logs or {})  # the awaited snapshot's scalars (later steps' values stay out)
        if state.global_step == 0 and any(k.startswith("eval_") for k in logs or {}):
            self.pending = 0  # eval_on_start: the line of the initialization
        elif (MEAN_ERANK in (logs or {}) and self.pending == state.global_step
              and getattr(self.spectral, "in_flight_step", None) is None):
            self._flush()  # the background snapshot this line waited for (state: at the snapshot's step)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._flush()
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _flush(self) -> None:
        if self.pending is None:
            return
        line = console_line(self.pending, self.held if self.held is not None else self.latest, self.metrics)
        self.pending, self.held = None, None
        if not self.main:
            return
        if self.bar is not None:
            self.bar.write(line)  # above the bar, which stays at the bottom
        else:
            print(line, flush=True)


def attach_console(trainer: Trainer, metrics: str | Sequence[str] = (), every: int | None = None) -> ConsoleCallback:
    """Replace the Trainer's progress bar and log printer by a :class:`ConsoleCallback`; returns it."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    console = ConsoleCallback(metrics, every=every)
    from hf_spectral.tracking.callback import SpectralCallback

    console.spectral = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, SpectralCallback)), None)
    trainer.add_callback(console)
    return console
