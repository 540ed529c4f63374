"""The weight-decay sweep figure: effective rank and total norm over time per weight decay, and the final
norm and eval metric against weight decay (paper finding 5: more weight decay, lower rank; too much
collapses the norm)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hf_spectral.plots._common import StepAxis, new_figure, styled


@styled
def plot_sweep(over_time: pd.DataFrame, runs: pd.DataFrame) -> Figure:
    """Four panels from ``experiments.sweep.sweep_tables``: mean normalized effective rank over time and
    Σ‖W‖_F over time (one line per weight decay, the mean over seeds), final norm and final metric
    against weight decay (one dot per seed; collapsed runs marked ×)."""
    fig = new_figure(10.0, 6.4)
    (rank_ax, norm_ax), (final_ax, metric_ax) = fig.subplots(2, 2)
    axis = StepAxis.for_steps(over_time["step"])
    decays = sorted(over_time["weight_decay"].unique())
    colors = dict(zip(decays, matplotlib.colormaps["viridis"](np.linspace(0.0, 0.9, len(decays)))))
    for decay in decays:
        mean = over_time[over_time["weight_decay"] == decay].groupby("step").mean(numeric_only=True)
        label = f"wd {decay:g}"
        rank_ax.plot(axis.x(mean.index), mean["mean_normalized_effective_rank"], color=colors[decay], label=label)
        norm_ax.plot(axis.x(mean.index), mean["total_frobenius"], color=colors[decay], label=label)
    rank_ax.set_ylabel("mean normalized effective rank")
    norm_ax.set_ylabel("Σ ‖W‖_F")
    norm_ax.set_yscale("log")
    for ax in (rank_ax, norm_ax):
        axis.apply(ax)
    rank_ax.legend(loc="best")
    # weight decay 0 has no place on a log axis: a symlog axis keeps it, linear up to the smallest non-zero value
    positive = [d for d in decays if d > 0]
    for ax, column, ylabel in ((final_ax, "norm_final", "final Σ ‖W‖_F"), (metric_ax, "metric_final", None)):
        ok = runs[~runs["collapsed"]]
        bad = runs[runs["collapsed"]]
        ax.scatter(ok["weight_decay"], ok[column], color="#3b6ea8", label="run")
        if len(bad):
            ax.scatter(bad["weight_decay"], bad[column], color="#c0392b", marker="x", label="norm collapsed")
            ax.legend(loc="best")
        if positive:
            ax.set_xscale("symlog", linthresh=min(positive))
        ax.set_xlabel("weight decay")
        ax.set_ylabel(ylabel or (runs["metric"].dropna().iloc[0] if runs["metric"].notna().any() else "metric"))
    final_ax.set_yscale("log")
    fig.suptitle("Weight-decay sweep")
    return fig
