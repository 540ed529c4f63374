"""The end of a recipe run: from the SpectralCallback's record (``<output_dir>/spectral``) and the
Trainer's log history, write the dynamics report, the flagship figure and the model card, and print
a short console summary — all of its numbers from ``hf_spectral.highlights`` (``key_events``,
``layer_changes``), so that the report, the card and the console tell the same facts."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from hf_spectral.dynamics.compute import empty_table, training_table
from hf_spectral.dynamics.types import TABLES, Dynamics
from hf_spectral.errors import SpectralError
from hf_spectral.highlights import drop_coincides, key_events, layer_changes, mean_erank, metric_series, rate_before, training_metrics
from hf_spectral.atomic import atomic_file

RECORD = "spectral"  # SpectralCallback's default record folder under TrainingArguments.output_dir
LOG_FILE = "training_log.json"
SUMMARY_FILE = "summary.json"
REPORT_DIR = "report"
CARD_FILE = "README.md"
CARD_IMAGES = "spectral_plots"
RANK_FALLS = 3  # layers listed as "fell most"


@dataclass(frozen=True)
class Crossing:
    """``metric`` first reaching ``threshold``, named ``label`` in sentences (``train accuracy``)."""

    metric: str
    threshold: float
    label: str


@dataclass
class RunSummary:
    """What ``finish_run`` found and wrote. ``events`` / ``events_after`` are
    :func:`hf_spectral.key_events` (over the whole run / after the ``after`` crossing); ``measures``
    maps a label to the logged scalar's ``initial``, ``at_metric`` (at the metric's crossing) and
    ``final`` values; paths are None when not written (no spectral record)."""

    recipe: str
    output_dir: str
    metric: str
    higher_is_better: bool
    threshold: float | None
    train_seconds: float | None = None
    steps: int | None = None
    start_step: int = 0
    final_metric: float | None = None
    best_metric: float | None = None
    best_step: int | None = None
    metric_step: int | None = None
    after_step: int | None = None
    events: dict[str, Any] | None = None
    events_after: dict[str, Any] | None = None
    record_start: int | None = None
    erank_initial: float | None = None
    erank_at_metric: float | None = None
    erank_final: float | None = None
    rank_falls: list[dict[str, Any]] = field(default_factory=list)
    measures: dict[str, dict[str, float | None]] = field(default_factory=dict)
    alignment_initial: float | None = None
    alignment_final: float | None = None
    report: str | None = None
    figure: str | None = None
    model_card: str | None = None
    model_card_copy: str | None = None
    training_log: str | None = None
    lines: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (what ``summary.json`` holds); ``extra`` is merged at the top level."""
        data = dataclasses.asdict(self)
        return {**data.pop("extra"), **data}


def finish_run(
    output_dir: str | Path,
    *,
    recipe: str,
    metric: str,
    higher_is_better: bool = True,
    threshold: float | None = None,
    log_history: Sequence[Mapping[str, Any]] | None = None,
    title: str | None = None,
    after: Crossing | None = None,
    measures: Mapping[str, str] | None = None,
    metric_label: str | None = None,
    card_fields: Mapping[str, str] | None = None,
    description: str | None = None,
    training_details: str | None = None,
    model_card_copy: str | Path | None = None,
    alignment: bool = False,
    train_seconds: float | None = None,
    start_step: int = 0,
    extra: Mapping[str, Any] | None = None,
    quiet: bool = False,
) -> RunSummary:
    """Write the run's training log, report, flagship figure and model card; print and return the summary.

    ``metric``: the eval metric to judge the run by (``eval_accuracy``, ``eval_perplexity``);
    ``threshold``: the value that counts as reached (a metric that rises: ``higher_is_better``);
    ``after``: rank events are also told after this crossing (e.g. the training set memorized);
    ``measures``: other logged scalars (``{"spectral/fourier/top5_fraction": "Fourier top-5 share"}``)
    told at init → at the crossing → at the end. ``log_history``: the Trainer's
    (``trainer.state.log_history``, which also holds a final ``trainer.evaluate()``); default: the
    record's. Writes ``training_log.json``, ``summary.json`` (with ``extra``), and, when the
    record has snapshots, ``report/index.html``, ``<recipe>.png``, the model card ``README.md``
    (``card_fields`` fill its template: model_summary, model_type, training_details, ...;
    ``description`` / ``training_details``: shorthands for two of them) and its copy at
    ``model_card_copy`` with figures beside it. ``alignment``: tell the consecutive-layer alignment.
    ``train_seconds``: the wall time of ``trainer.train()``, told with the steps it took since ``start_step``
    (a branched or resumed run's first step: ``ExperimentArguments.start_step``).
    """
    if threshold is not None and not higher_is_better:
        raise SpectralError(f"finish_run(metric={metric!r}): a threshold counts as reached at >=; "
                            "pass higher_is_better=True or no threshold")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = out / RECORD
    tracked = record.is_dir() and any(record.glob("*/meta.json"))
    if log_history is None:
        saved = record / "log_history.json"
        log_history = json.loads(saved.read_text()) if saved.is_file() else []
    history = [dict(entry) for entry in log_history]
    dyn = _dynamics(record, history) if tracked else _training_only(history)
    target = math.inf if threshold is None else float(threshold)  # inf: no step counts as reached

    run = RunSummary(recipe=recipe, output_dir=str(out), metric=metric, higher_is_better=higher_is_better,
                     threshold=threshold, train_seconds=train_seconds, start_step=start_step, extra=dict(extra or {}))
    steps = [int(entry["step"]) for entry in history if isinstance(entry.get("step"), (int, float))]
    run.steps = max(steps) if steps else None
    run.training_log = str(_write_json(out / LOG_FILE, history))
    _fill_metric(run, dyn, target)
    if after is not None and after.metric in training_metrics(dyn):
        run.after_step = key_events(dyn, after.metric, after.threshold)["metric_step"]
    problem = None
    if tracked:
        _fill_rank(run, dyn, target, measures or {})
        try:  # the model is saved already: a report that cannot be drawn must not hide the summary
            run.report = str(_report(dyn, out, recipe, title, metric, target))
            figure = _figure(dyn, out / recipe, title, metric, metric_label or metric, target)
            run.figure = None if figure is None else str(figure)
            fields = _card_fields(run, {**_given(model_summary=description, training_details=training_details), **(card_fields or {})})
            card = _write_card(out / CARD_FILE, out / CARD_IMAGES, dyn, fields, metric, target)
            run.model_card = str(card)
            if model_card_copy is not None:
                run.model_card_copy = str(_copy_card(card, out / CARD_IMAGES, Path(model_card_copy)))
        except SpectralError as exc:
            problem = f"report incomplete: {exc}"
    run.lines = summary_text(run, title=title, after=after, metric_label=metric_label, alignment=alignment)
    if problem:
        run.lines.append(problem)
    _write_json(out / SUMMARY_FILE, run.to_dict())
    if not quiet:
        print("\n".join(["", *run.lines]), flush=True)
    return run


# ------------------------------------------------------------------------------------------------
# reading the run


def _dynamics(record: Path, history: list[dict[str, Any]]) -> Dynamics:
    from hf_spectral.series import dynamics_from_source

    dyn = dynamics_from_source(str(record))
    # the Trainer's history is the longer one: it holds evaluations after the last snapshot
    return dataclasses.replace(dyn, training=training_table(history)) if history else dyn


def _training_only(history: list[dict[str, Any]]) -> Dynamics:
    """A Dynamics with no snapshots, only the training log (a run with --track_spectra false)."""
    tables = {name: empty_table(name) for name in TABLES}
    tables["training"] = training_table(history)
    return Dynamics(**tables)


def _fill_metric(run: RunSummary, dyn: Dynamics, target: float) -> None:
    metric = run.metric if run.metric in training_metrics(dyn) else None
    events = key_events(dyn, metric, target) if len(dyn.training) else None
    if metric is None or events is None:
        return
    run.final_metric, run.metric_step = events["metric_final"], events["metric_step"]
    values = metric_series(dyn, metric).dropna()
    if len(values):
        best = values.idxmax() if run.higher_is_better else values.idxmin()
        run.best_step, run.best_metric = int(best), float(values.loc[best])


def _fill_rank(run: RunSummary, dyn: Dynamics, target: float, measures: Mapping[str, str]) -> None:
    metric = run.metric if run.metric in training_metrics(dyn) else None
    run.events = key_events(dyn, metric, target)
    if run.after_step is not None:
        run.events_after = key_events(dyn, metric, target, after=run.after_step)
    run.erank_initial, run.erank_final = run.events["erank_initial"], run.events["erank_final"]
    erank = mean_erank(dyn).dropna()
    run.record_start = int(erank.index[0]) if len(erank) else None  # a branch's record starts at its split step
    run.erank_at_metric = value_at(erank, run.metric_step)
    changes = layer_changes(dyn).dropna(subset=["erank_change"])
    falls = changes[changes["erank_change"] < 0].nsmallest(RANK_FALLS, "erank_change")
    run.rank_falls = [{"matrix": r.matrix, "erank_first": float(r.erank_first), "erank_last": float(r.erank_last)}
                      for r in falls.itertuples()]
    logged = set(training_metrics(dyn))
    for key, label in measures.items():
        series = metric_series(dyn, key) if key in logged else pd.Series(dtype=float)
        run.measures[label] = {"initial": value_at(series, 0), "at_metric": value_at(series, run.metric_step),
                               "final": value_at(series, None)}
    aligned = dyn.summary.set_index("step")["mean_alignment"].dropna() if len(dyn.summary) else pd.Series(dtype=float)
    if len(aligned):
        run.alignment_initial, run.alignment_final = float(aligned.iloc[0]), float(aligned.iloc[-1])


def value_at(series: pd.Series, step: int | None) -> float | None:
    """A by-step series' value at the last step <= ``step`` (None: the last value); None if none."""
    values = series.dropna().sort_index()
    if step is not None:
        values = values[values.index <= step]
    return float(values.iloc[-1]) if len(values) else None


# ------------------------------------------------------------------------------------------------
# writing


def _write_json(path: Path, data: Any) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=_plain))
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _report(dyn: Dynamics, out: Path, recipe: str, title: str | None, metric: str, target: float) -> Path:
    from hf_spectral.report import write_report

    return write_report(dyn, out / REPORT_DIR, title=f"{recipe} ({title})" if title else recipe, formats=("png",),
                        metric=_known(dyn, metric), threshold=target)


def _figure(dyn: Dynamics, stem: Path, title: str | None, metric: str, label: str, target: float) -> Path | None:
    """The flagship figure: ``metric`` and the effective rank on one step axis (``<recipe>.png``)."""
    from hf_spectral.plots import plot_training_and_rank, save_figure

    if _known(dyn, metric) is None:
        return None
    figure = plot_training_and_rank(dyn, metric, threshold=target)
    if title:
        figure.axes[0].set_title(f"{stem.name} ({title}):\n{label} and normalized effective rank", fontsize=10)
    (png,) = save_figure(figure, stem, ("png",))
    return png


def _known(dyn: Dynamics, metric: str) -> str | None:
    return metric if metric in training_metrics(dyn) else None


def _given(**fields: str | None) -> dict[str, str]:
    return {key: value for key, value in fields.items() if value}


def _card_fields(run: RunSummary, given: Mapping[str, str]) -> dict[str, str]:
    fields = {"model_name": run.recipe, **given}
    if run.final_metric is not None and "evaluation" not in fields:
        best = f" (best {_num(run.best_metric)} at step {run.best_step:,})" if run.best_step is not None else ""
        fields["evaluation"] = f"`{run.metric}` at the end of training: {_num(run.final_metric)}{best}."
    return fields


def _write_card(path: Path, images: Path, dyn: Dynamics, fields: dict[str, str], metric: str, target: float) -> Path:
    """A fresh model card at ``path`` from the template, with the spectral section and figures in ``images``."""
    from hf_spectral.cards import new_card, update_model_card

    card = update_model_card(new_card(dyn, **fields), dyn, images_dir=images, metric=_known(dyn, metric), threshold=target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        card.save(tmp)
    return path


def _copy_card(card: Path, images: Path, copy: Path) -> Path:
    """The card at ``copy`` with its figures in ``<copy stem>_plots/`` beside it (copied, not redrawn)."""
    folder = copy.with_name(f"{copy.stem}_plots")
    copy.parent.mkdir(parents=True, exist_ok=True)
    if images.is_dir():
        shutil.copytree(images, folder, dirs_exist_ok=True)
    text = card.read_text(encoding="utf-8").replace(f"]({images.name}/", f"]({folder.name}/")
    with atomic_file(copy) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return copy


# ------------------------------------------------------------------------------------------------
# the console summary


def summary_text(run: RunSummary, *, title: str | None = None, after: Crossing | None = None,
                 metric_label: str | None = None, alignment: bool = False) -> list[str]:
    """The 5–10 line console summary of ``run``: the metric (its crossing), the fastest rank drop
    and the rank around the crossing, mean rank init → end, the layers whose rank fell most,
    alignment, where the report and card are."""
    label = metric_label or run.metric
    lines = [f"== {run.recipe} summary" + (f" ({title})" if title else "") + " =="]
    if run.train_seconds is not None:
        trained = (run.steps or 0) - run.start_step
        pace = f" ({run.train_seconds / trained:.4f} s/step)" if trained > 0 else ""
        since = f" (steps {run.start_step:,}-{run.steps:,})" if run.start_step else ""
        lines.append(f"trained {trained:,} steps{since} in {run.train_seconds:.1f} s{pace}")
    if run.threshold is not None:
        text = f"{label} >= {_share(run.threshold)}: {_at(run.metric_step)}"
        if after is not None:
            text += f" ({after.label} >= {_share(after.threshold)}: {_at(run.after_step)})"
        lines.append(text)
    events = run.events
    if events is not None:
        lines += _rank_lines(run, events, label, after)
    if run.final_metric is not None:
        best = (f" (best {_num(run.best_metric)} at step {run.best_step:,})"
                if run.best_step is not None and run.best_metric != run.final_metric else "")
        lines.append(f"final {label}: {_num(run.final_metric)}{best}")
    else:
        lines.append(f"final {label}: not logged (evaluate with the Trainer, e.g. --eval_strategy steps)")
    if alignment:
        lines.append("consecutive-layer alignment (mean score): " + (
            f"{_num(run.alignment_initial)} {_start(run)} -> {_num(run.alignment_final)} at the end"
            if run.alignment_final is not None else "not recorded (SpectralCallback(alignment=True, top_k > 0))"))
    if run.events is None:
        lines.append("no spectral record (--track_spectra false): no report")
    if run.report is not None:
        lines.append(f"report: {run.report}")
    if run.figure is not None:
        lines.append(f"figure: {run.figure}")
    if run.model_card is not None:
        copy = f" (copy: {run.model_card_copy})" if run.model_card_copy else ""
        lines.append(f"model card: {run.model_card}{copy}")
    lines.append(f"training log: {run.training_log}")
    return lines


def _rank_lines(run: RunSummary, events: dict[str, Any], label: str, after: Crossing | None) -> list[str]:
    crossed = run.metric_step
    lines = []
    if events["rank_drop_interval"] is None:
        lines.append("mean normalized effective rank: never fell")
    else:
        a, b = events["rank_drop_interval"]
        lines.append(f"mean normalized effective rank fell fastest: steps {a:,}-{b:,} "
                     f"({events['erank_before']:.3f} -> {events['erank_after']:.3f})")
        if crossed is not None:
            lines.append(f"side by side: the fastest rank drop ends at step {b:,}, {_when(events['lag'])} "
                         f"{label} crossed (step {crossed:,})")
    later = run.events_after
    if later is not None and later["rank_drop_interval"] is not None:
        a, b = later["rank_drop_interval"]
        where = f", {_when(later['lag'])} {label} crossed" if crossed is not None else ""
        since = f"{after.label} reached {_share(after.threshold)}" if after is not None else "that"
        lines.append(f"after {since} (step {run.after_step:,}) it fell fastest at steps {a:,}-{b:,} "
                     f"({later['erank_before']:.3f} -> {later['erank_after']:.3f}){where}")
    if events.get("around_metric") is not None:
        lines.append(around_text(events["around_metric"]))
    middle = f" -> {_num(run.erank_at_metric)} at step {crossed:,}" if crossed is not None and run.erank_at_metric is not None else ""
    change = ""
    if run.erank_initial and run.erank_final is not None:
        change = f" ({(run.erank_final - run.erank_initial) / run.erank_initial:+.1%})"
    lines.append(f"mean normalized effective rank: {_num(run.erank_initial)} {_start(run)}{middle} -> "
                 f"{_num(run.erank_final)} at the end{change}")
    if run.rank_falls:
        lines.append("rank fell most in: " + ", ".join(
            f"{r['matrix']} ({r['erank_first']:.3f} -> {r['erank_last']:.3f})" for r in run.rank_falls))
    for name, values in run.measures.items():
        if values["final"] is None:
            continue
        middle = f" -> {_num(values['at_metric'])} at step {crossed:,}" if crossed is not None and values["at_metric"] is not None else ""
        lines.append(f"{name}: {_num(values['initial'])} at init{middle} -> {_num(values['final'])} at the end")
    return lines


def _start(run: RunSummary) -> str:
    """Where the record starts: "at init", or "at step N" (a branched or resumed run)."""
    return "at init" if not run.record_start else f"at step {run.record_start:,}"


def around_text(around: dict[str, Any]) -> str:
    """`the rank drop coincides with the crossing (10.0x the rate before): around it (steps a-b) the
    mean rank fell 0.120; in the 4,000 steps before, it fell 0.012` (``key_events(...)["around_metric"]``;
    "does not coincide" below :data:`hf_spectral.highlights.COINCIDES`)."""
    (a, b), (c, _) = around["window"], around["window_before"]
    verdict = "coincides" if drop_coincides(around) else "does not coincide"
    return (f"the rank drop {verdict} with the crossing{rate_before(around, 'x')}: around it (steps {a:,}-{b:,}) the mean rank "
            f"{_moved(around['change'])}; in the {a - c:,} steps before, it {_moved(around['change_before'])}")


def _moved(change: float) -> str:
    return f"fell {-change:.3f}" if change < 0 else f"rose {change:.3f}"


def _when(lag: int) -> str:
    return "at the step" if lag == 0 else f"{abs(lag):,} steps {'after' if lag > 0 else 'before'}"


def _at(step: int | None) -> str:
    return "never" if step is None else f"step {step:,}"


def _num(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:,.1f}"


def _share(value: float) -> str:
    return f"{value:.0%}" if 0 < value <= 1 else f"{value:g}"
