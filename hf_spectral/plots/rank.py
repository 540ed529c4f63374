"""Normalized effective rank (or any per-matrix metric) over time: a layers × time heat map and lines."""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from hf_spectral.dynamics.types import Dynamics
from hf_spectral.plots._common import (
    StepAxis, draw_heatmap, heatmap_height, new_figure, note, pivot, require, short_names, styled, thin_labels,
)
from hf_spectral.status import STATUS_FLAGGED

LABELS = {
    "normalized_effective_rank": "normalized effective rank",
    "normalized_stable_rank": "normalized stable rank",
    "normalized_mass90_rank": "normalized 90%-mass rank",
    "spectral_norm": "spectral norm σ₁",
    "frobenius_norm": "Frobenius norm",
    "nuclear_norm": "nuclear norm",
}


def metric_label(metric: str) -> str:
    return LABELS.get(metric, metric.replace("_", " "))


def _metric_grid(dyn: Dynamics, metric: str) -> tuple[list[str], list[float], np.ndarray]:
    table = dyn.trajectories
    require(len(table) > 0, "no trajectories to plot: the series has no decomposed matrices")
    require(metric in table, f"trajectories have no column {metric!r}; choose one of the spectrum metrics, e.g. normalized_effective_rank")
    matrices, steps = dyn.matrices, sorted(table["step"].unique().tolist())
    # Flagged rows (zero or non-finite matrices) have no defined metric: NaN → a gap, never a value.
    if "status" in table:
        table = table.assign(**{metric: table[metric].where(table["status"] != STATUS_FLAGGED)})
    return matrices, steps, pivot(table, "matrix", metric, matrices, steps)


@styled
def plot_rank_heatmap(dyn: Dynamics, metric: str = "normalized_effective_rank", *, scale: str = "auto") -> Figure:
    """Layers (model order, top to bottom) × time, coloured by ``metric``; flagged cells are grey gaps."""
    matrices, steps, grid = _metric_grid(dyn, metric)
    height = heatmap_height(len(matrices))
    fig = new_figure(8.5, height)
    ax = fig.add_subplot()
    mesh = draw_heatmap(ax, grid, steps, StepAxis.for_steps(steps, scale))
    thin_labels(ax, short_names(matrices), axis_inches=height - 1.2)
    ax.set_ylabel("weight matrix (model order)")
    label = metric_label(metric)
    ax.set_title(f"{label[0].upper()}{label[1:]} of every weight matrix over training")
    fig.colorbar(mesh, ax=ax, label=label)
    if np.isnan(grid).any():
        note(ax, "grey: undefined (flagged)")
    return fig


@styled
def plot_rank_lines(dyn: Dynamics, metric: str = "normalized_effective_rank", *, scale: str = "auto", max_legend: int = 10) -> Figure:
    """One line per matrix, coloured by depth, with the mean over matrices in black."""
    matrices, steps, grid = _metric_grid(dyn, metric)
    axis = StepAxis.for_steps(steps, scale)
    x = axis.x(steps)
    fig = new_figure(8.5, 4.2)
    ax = fig.add_subplot()
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.92, max(len(matrices), 1)))
    names = short_names(matrices)
    marker = "o" if len(steps) < 3 else None
    width, alpha = (1.4, 0.9) if len(matrices) <= max_legend else (0.8, 0.6)
    for row, color, name in zip(grid, colors, names):
        ax.plot(x, row, color=color, lw=width, alpha=alpha, marker=marker, ms=3, label=name)
    with np.errstate(all="ignore"):
        mean = np.nanmean(np.where(np.isfinite(grid), grid, np.nan), axis=0) if grid.size else np.array([])
    ax.plot(x, mean, color="black", lw=2.4, ls="--", marker=marker, label="mean over matrices")
    axis.apply(ax)
    label = metric_label(metric)
    ax.set_ylabel(label)
    ax.set_title(f"{label[0].upper()}{label[1:]} per weight matrix")
    if len(matrices) <= max_legend:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    else:
        mappable = matplotlib.cm.ScalarMappable(cmap=matplotlib.colors.ListedColormap(colors), norm=matplotlib.colors.Normalize(0, len(matrices) - 1))
        bar = fig.colorbar(mappable, ax=ax, label="matrix index (model order)")
        bar.ax.invert_yaxis()  # first layer on top, like the heat map
        ax.legend(handles=[Line2D([], [], color="black", lw=2.4, ls="--")], labels=["mean over matrices"], loc="best")
    return fig
