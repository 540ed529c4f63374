"""The flagship figure: a training metric (e.g. validation accuracy) and the mean effective rank on
one step axis, with the step the metric crossed its threshold and the fastest rank drop marked."""

from __future__ import annotations

import math
from typing import Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from hf_spectral.dynamics.types import Dynamics
from hf_spectral.highlights import ERANK, key_events, mean_erank, metric_series, training_metrics
from hf_spectral.plots._common import StepAxis, new_figure, pivot, require, styled


def companion_metrics(dyn: Dynamics, metric: str, limit: int = 2) -> list[str]:
    """Other logged metrics of the same kind (``eval_train_accuracy`` beside ``eval_val_accuracy``)."""
    kind = metric.rsplit("_", 1)[-1]
    return [m for m in training_metrics(dyn) if m != metric and m.rsplit("_", 1)[-1] == kind][:limit]


@styled
def plot_training_and_rank(
    dyn: Dynamics,
    metric: str = "eval_accuracy",
    *,
    threshold: float = 0.9,
    per_layer: bool = True,
    companions: Sequence[str] | None = None,
    scale: str = "auto",
) -> Figure:
    """``metric`` (left axis) and the mean normalized effective rank (right axis) over training,
    with thin per-layer rank lines when ``per_layer``; marks where ``metric`` first reached
    ``threshold`` and the interval of the steepest mean-rank drop (see ``key_events``)."""
    require(len(dyn.training) > 0, "no training log in this series: the figure needs one (e.g. a Trainer run with evaluation)")
    values = metric_series(dyn, metric)
    erank = mean_erank(dyn).dropna()
    require(len(erank) > 0, "no effective rank to plot: the series has no decomposed matrices")
    companions = companion_metrics(dyn, metric) if companions is None else list(companions)

    all_steps = sorted(set(values.index) | set(erank.index))
    axis = StepAxis.for_steps(erank.index if len(erank) >= 3 else all_steps, scale)
    events = key_events(dyn, metric, threshold, scale="log" if axis.log else "linear")

    fig = new_figure(9.0, 4.6)
    ax = fig.add_subplot()
    right = ax.twinx()
    ax.set_zorder(right.get_zorder() + 1)  # metric lines above the many rank lines
    ax.patch.set_visible(False)
    marker = "o" if len(values) < 12 else None
    ax.plot(axis.x(values.index), values.to_numpy(), color="C0", lw=2.2, marker=marker, ms=3, label=_pretty(metric))
    for i, other in enumerate(companions):
        series = metric_series(dyn, other)
        ax.plot(axis.x(series.index), series.to_numpy(), color="C0", lw=1.4, ls=(0, (4, 2)) if i == 0 else ":", alpha=0.8, label=_pretty(other))
    if math.isfinite(threshold):  # threshold=math.inf: a metric without a target (a loss, a perplexity)
        ax.axhline(threshold, color="C0", lw=0.6, ls=":", alpha=0.6)

    if per_layer and len(dyn.trajectories):
        table = dyn.trajectories
        if "status" in table:
            table = table.assign(**{ERANK: table[ERANK].where(table["status"] != "flagged")})
        steps = sorted(table["step"].unique().tolist())
        grid = pivot(table, "matrix", ERANK, dyn.matrices, steps)
        for row in grid:
            right.plot(axis.x(steps), row, color="C3", lw=0.6, alpha=0.22)
    right.plot(axis.x(erank.index), erank.to_numpy(), color="C3", lw=2.4, marker="o" if len(erank) < 12 else None, ms=3,
               label="mean normalized effective rank")

    handles, labels = [], []
    if events["metric_step"] is not None:
        line = ax.axvline(axis.x([events["metric_step"]])[0], color="C0", lw=1.2, ls="--")
        handles.append(line)
        labels.append(f"{_pretty(metric)} ≥ {threshold:g} at step {events['metric_step']:,}")
    if events["rank_drop_interval"] is not None:
        a, b = axis.x(events["rank_drop_interval"])
        ax.axvspan(a, b, color="C3", alpha=0.12, lw=0)
        handles.append(Patch(color="C3", alpha=0.25))
        labels.append(f"fastest rank drop: steps {events['rank_drop_interval'][0]:,}–{events['rank_drop_interval'][1]:,}")

    axis.apply(ax)
    ax.set_ylabel(_pretty(metric), color="C0")
    right.set_ylabel("normalized effective rank", color="C3")
    right.grid(False)
    right.spines["right"].set_visible(True)
    if metric.endswith("accuracy"):
        ax.set_ylim(-0.02, 1.02)
    elif metric.endswith("perplexity") and len(values) and values.min() > 0:
        ax.set_yscale("log")  # from ~vocabulary size at init to tens: a linear axis shows only the start
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = right.get_legend_handles_labels()
    if per_layer and len(dyn.trajectories):
        h2.append(Line2D([], [], color="C3", lw=0.8, alpha=0.5))
        l2.append("per-matrix effective rank")
    ax.legend(h1 + h2 + handles, l1 + l2 + labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=3, frameon=False)
    ax.set_title(f"{_pretty(metric)[0].upper()}{_pretty(metric)[1:]} and effective rank over training")
    return fig


def _pretty(metric: str) -> str:
    """eval_val_accuracy → validation accuracy; eval_train_accuracy → train accuracy (eval)."""
    name = metric
    if name.startswith("eval_"):
        name = name[5:]
        if name.startswith("val_"):
            return "validation " + name[4:].replace("_", " ")
        if name.startswith("train_"):
            return "train " + name[6:].replace("_", " ")
        return "validation " + name.replace("_", " ")
    return name.replace("_", " ")
