"""Singular values over time: one line per index σ_i(t), coloured by the index (0 = largest)."""

from __future__ import annotations

from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from hf_spectral.dynamics.types import Dynamics
from hf_spectral.plots._common import StepAxis, grid_shape, new_figure, pick_evenly, pivot, require, short_names, styled


def chosen_indices(count: int, max_lines: int) -> np.ndarray:
    """All indices when few; else every one of the top 16 and a geometric spread of the rest
    (the top values are where the dynamics are: "rich get richer")."""
    if count <= max_lines:
        return np.arange(count)
    head = np.arange(min(16, max_lines))
    rest = np.geomspace(len(head) + 1, count, max(max_lines - len(head), 2)).round().astype(int) - 1
    return np.unique(np.concatenate([head, rest]))


@styled
def plot_singular_values(
    dyn: Dynamics,
    matrices: str | Sequence[str] | None = None,
    *,
    max_panels: int = 4,
    max_lines: int = 64,
    log_y: bool = False,
    scale: str = "auto",
) -> Figure:
    """σ_i over training for one or a few matrices (default: up to ``max_panels`` spread over depth)."""
    table = dyn.singular_values
    require(len(table) > 0, "no singular values to plot: the series stored none")
    available = list(dict.fromkeys(table["matrix"]))
    if isinstance(matrices, str):
        matrices = [matrices]
    if matrices is None:
        ordered = [m for m in dyn.matrices if m in set(available)] or available
        matrices = pick_evenly(ordered, max_panels)
    missing = [m for m in matrices if m not in set(available)]
    require(not missing, f"no singular values for {', '.join(missing)}; available: {', '.join(available[:5])}{'...' if len(available) > 5 else ''}")

    steps = sorted(table["step"].unique().tolist())
    axis = StepAxis.for_steps(steps, scale)
    x = axis.x(steps)
    rows, cols = grid_shape(len(matrices))
    fig = new_figure(5.0 * cols + 1.2, 3.3 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False)
    cmap = matplotlib.colormaps["viridis"]
    titles = short_names(matrices, max_length=44)
    shapes = _shapes(dyn)
    largest = 1
    for ax, matrix, title in zip(axes.flat, matrices, titles):
        part = table[table["matrix"] == matrix]
        count = int(part["index"].max()) + 1
        largest = max(largest, count)
        indices = chosen_indices(count, max_lines)
        if len(steps) == 1:  # nothing moves: show the spectrum itself, σᵢ against i
            sigma = part.sort_values("index")
            ax.plot(sigma["index"], sigma["sigma"], color="0.6", lw=0.8)
            ax.scatter(sigma["index"], sigma["sigma"], c=sigma["index"] / max(count - 1, 1), cmap=cmap, vmin=0, vmax=1, s=10, zorder=3)
            ax.set_xlabel("index i (0 = largest)")
        else:
            grid = pivot(part, "index", "sigma", indices.tolist(), steps)
            marker = "o" if len(steps) < 3 else None
            # Smallest first so that the top values (the interesting ones) are drawn on top.
            for i, row in sorted(zip(indices, grid), key=lambda item: -item[0]):
                ax.plot(x, row, color=cmap(i / max(count - 1, 1)), lw=1.6 if i < 3 else 0.9, marker=marker, ms=3)
            axis.apply(ax)
        if log_y:
            ax.set_yscale("log")
        ax.set_ylabel("singular value σᵢ")
        ax.set_title(f"{title} {shapes.get(matrix, '')}".strip())
    for ax in list(axes.flat)[len(matrices):]:
        ax.set_visible(False)
    mappable = matplotlib.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(0, 1))
    bar = fig.colorbar(mappable, ax=axes.ravel().tolist(), label="singular value index (relative to R)", shrink=0.9)
    bar.set_ticks([0, 0.5, 1], labels=["largest", "middle", "smallest"])
    fig.suptitle("Singular values over training (one line per index)" if len(steps) > 1
                 else f"Singular values at step {steps[0]:,} (a single snapshot)")
    return fig


def _shapes(dyn: Dynamics) -> dict[str, str]:
    table = dyn.trajectories
    if not len(table) or "rows" not in table:
        return {}
    first = table.drop_duplicates("matrix")
    return {r.matrix: f"({int(r.rows)}×{int(r.cols)})" for r in first.itertuples() if np.isfinite(r.rows) and np.isfinite(r.cols)}
