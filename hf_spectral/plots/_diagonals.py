"""Shared drawing for agreement and alignment: diagonal entries (index × time) per matrix or pair,
and one score per matrix or pair (items × time). Both live in [0, 1]."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hf_spectral.plots._common import (
    StepAxis, draw_heatmap, grid_shape, heatmap_height, new_figure, note, pick_evenly, pivot, require, short_names, thin_labels,
)

CMAP = "magma"


def diagonal_panels(
    table: pd.DataFrame,
    key: str,
    items: Sequence[str] | None,
    *,
    order: Sequence[str],
    what: str,
    title: str,
    colorbar_label: str,
    max_panels: int,
    max_index: int,
    scale: str,
) -> Figure:
    """A grid of heat maps, one per item: rows = diagonal index i (0 on top), columns = steps."""
    require(len(table) > 0, f"no {what} to plot: the series has none")
    available = list(dict.fromkeys(table[key]))
    if items is None:
        ordered = [m for m in order if m in set(available)] or available
        items = pick_evenly(ordered, max_panels)
    missing = [m for m in items if m not in set(available)]
    require(not missing, f"no {what} for {', '.join(map(str, missing))}; available: {', '.join(map(str, available[:5]))}{'...' if len(available) > 5 else ''}")

    steps = sorted(table["step"].unique().tolist())
    axis = StepAxis.for_steps(steps, scale)
    rows, cols = grid_shape(len(items))
    fig = new_figure(5.0 * cols + 1.2, 3.0 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False)
    mesh = None
    for ax, item, name in zip(axes.flat, items, short_names(list(items), max_length=44)):
        part = table[(table[key] == item) & (table["index"] < max_index)]
        count = int(part["index"].max()) + 1 if len(part) else 1
        grid = pivot(part, "index", "value", list(range(count)), steps)
        mesh = draw_heatmap(ax, grid, steps, axis, cmap=CMAP, vmin=0.0, vmax=1.0)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        ax.set_ylabel("index i (0 = top σ)")
        ax.set_title(name)
    for ax in list(axes.flat)[len(items):]:
        ax.set_visible(False)
    fig.colorbar(mesh, ax=axes.ravel().tolist(), label=colorbar_label, shrink=0.9)
    fig.suptitle(title)
    return fig


def score_heatmap(
    table: pd.DataFrame,
    key: str,
    *,
    order: Sequence[str],
    what: str,
    title: str,
    ylabel: str,
    colorbar_label: str,
    scale: str,
) -> Figure:
    """Items (``order``) × time, coloured by ``score`` in [0, 1]."""
    require(len(table) > 0, f"no {what} to plot: the series has none")
    present = set(table[key])
    items = [m for m in order if m in present] + [m for m in dict.fromkeys(table[key]) if m not in set(order)]
    steps = sorted(table["step"].unique().tolist())
    grid = pivot(table, key, "score", items, steps)
    height = heatmap_height(len(items))
    fig = new_figure(8.5, height)
    ax = fig.add_subplot()
    mesh = draw_heatmap(ax, grid, steps, StepAxis.for_steps(steps, scale), cmap=CMAP, vmin=0.0, vmax=1.0)
    thin_labels(ax, short_names(items, max_length=48), axis_inches=height - 1.2)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(mesh, ax=ax, label=colorbar_label)
    if np.isnan(grid).any():
        note(ax, "grey: not computed")
    return fig
