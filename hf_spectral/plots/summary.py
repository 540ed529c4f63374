"""The model-level panel: means over matrices per step (rank, norm, agreement, alignment)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from hf_spectral.dynamics.types import Dynamics
from hf_spectral.plots._common import FLAT_SHARE, StepAxis, grid_shape, keep_flat_flat, new_figure, require, styled

PANELS = (
    ("mean_normalized_effective_rank", "mean normalized effective rank"),
    ("mean_normalized_stable_rank", "mean normalized stable rank"),
    ("mean_spectral_norm", "mean spectral norm σ₁"),
    ("mean_agreement", "mean agreement with reference"),
    ("mean_alignment", "mean alignment of layer pairs"),
    ("flagged", "flagged matrices"),
)


@styled
def plot_summary(dyn: Dynamics, *, scale: str = "auto") -> Figure:
    """One small panel per model-level quantity the summary defines, on a shared step axis."""
    summary = dyn.summary
    require(len(summary) > 0, "no summary to plot: the series is empty")
    summary = summary.sort_values("step")
    panels = []
    for column, label in PANELS:
        if column not in summary:
            continue
        values = summary[column].astype(float).to_numpy()
        if not np.isfinite(values).any() or (column == "flagged" and not np.nansum(values)):
            continue  # nothing to show (no agreement computed, no flagged matrix)
        panels.append((column, label, values))
    require(bool(panels), "the summary has no model-level metric to plot")
    steps = summary["step"].astype(float).to_numpy()
    axis = StepAxis.for_steps(steps, scale)
    x = axis.x(steps)
    rows, cols = grid_shape(len(panels), columns=3 if len(panels) > 4 else 2)
    fig = new_figure(4.2 * cols, 2.8 * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    marker = "o" if len(steps) < 12 else None
    for ax, (column, label, values) in zip(axes.flat, panels):
        ax.plot(x, values, color="C0" if column != "flagged" else "C3", lw=1.8, marker=marker, ms=3)
        ax.set_title(label)
        if column in ("mean_agreement", "mean_alignment"):
            ax.set_ylim(-0.02, 1.02)
        elif keep_flat_flat(ax, values):
            ax.set_title(f"{label} (changed < {FLAT_SHARE:.0%})")
    shown = list(axes.flat)[: len(panels)]
    for i, ax in enumerate(shown):
        # Label only the lowest panel of each column: the axis is shared.
        axis.apply(ax, label="step" if i + cols >= len(panels) else None)
        if i + cols >= len(panels):
            ax.xaxis.set_tick_params(labelbottom=True)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Model-level summary over training")
    return fig
