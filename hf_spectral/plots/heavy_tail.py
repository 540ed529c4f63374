"""weightwatcher's power-law exponent α per weight matrix over time, beside the effective rank."""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from hf_spectral.dynamics.types import Dynamics
from hf_spectral.highlights import key_events
from hf_spectral.plots._common import StepAxis, new_figure, note, pivot, require, short_names, styled
from hf_spectral.status import STATUS_OK

ALPHA_CLIP = 12.0  # α of a random matrix can be 30+; above this the lines are clipped so the band stays readable


def has_alpha(dyn: Dynamics) -> bool:
    """Whether the trajectories hold at least one defined α."""
    table = dyn.trajectories
    return "alpha" in table and bool(np.isfinite(table["alpha"].astype(float)).any())


@styled
def plot_alpha(dyn: Dynamics, *, scale: str = "auto", metric: str | None = "auto", threshold: float = 0.9,
               max_legend: int = 10) -> Figure:
    """Top: α of every matrix over time (coloured by depth), the mean over fitted matrices (black)
    and weightwatcher's 2–6 band. Bottom: the mean normalized effective rank on the same axis.
    A dotted line marks when the training ``metric`` first reached ``threshold`` (when logged)."""
    from hf_spectral.metrics.heavy_tail import ALPHA_BAND  # here: importing the plots needs no torch

    require(has_alpha(dyn), "trajectories have no alpha: analyze with heavy_tail (or keep the singular values)")
    table = dyn.trajectories
    fitted = table["alpha"].where((table["status"] == STATUS_OK) & (table["heavy_tail_flag"].fillna("") == ""))
    table = table.assign(alpha=fitted)
    matrices, steps = dyn.matrices, sorted(table["step"].unique().tolist())
    grid = pivot(table, "matrix", "alpha", matrices, steps)
    erank = pivot(table, "matrix", "normalized_effective_rank", matrices, steps)
    axis = StepAxis.for_steps(steps, scale)
    x = axis.x(steps)

    fig = new_figure(8.5, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    top.axhspan(*ALPHA_BAND, color="tab:green", alpha=0.12, lw=0, label=f"α in {ALPHA_BAND[0]:g}–{ALPHA_BAND[1]:g}")
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.92, max(len(matrices), 1)))
    legend = len(matrices) <= max_legend
    for row, color, name in zip(grid, colors, short_names(matrices)):
        top.plot(x, np.minimum(row, ALPHA_CLIP), color=color, lw=1.0, alpha=0.75, label=name if legend else None)
    with np.errstate(all="ignore"):
        mean_alpha = np.nanmean(grid, axis=0)
        mean_erank = np.nanmean(np.where(np.isfinite(erank), erank, np.nan), axis=0)
    top.plot(x, np.minimum(mean_alpha, ALPHA_CLIP), color="black", lw=2.4, ls="--", label="mean α")
    top.set_ylim(1.0, min(ALPHA_CLIP, max(ALPHA_BAND[1] + 1, float(np.nanmax(grid)) * 1.05)))
    top.set_ylabel("power-law exponent α")
    top.set_title("Heavy-tailed exponent α per weight matrix (weightwatcher's fit) and effective rank")
    if np.nanmax(grid) > ALPHA_CLIP:
        note(top, f"lines clipped at α = {ALPHA_CLIP:g}")
    top.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)

    bottom.plot(x, mean_erank, color="tab:blue", lw=2.0, label="mean normalized effective rank")
    bottom.set_ylabel("normalized effective rank")
    bottom.legend(loc="best", frameon=False)
    events = key_events(dyn, metric, threshold) if len(dyn.training) and metric else {}
    if events.get("metric_step") is not None:
        for ax in (top, bottom):
            ax.axvline(axis.x([events["metric_step"]])[0], color="tab:red", ls=":", lw=1.4)
        bottom.annotate(f"{events['metric']} ≥ {threshold:g}", (axis.x([events["metric_step"]])[0], 1.0),
                        xycoords=("data", "axes fraction"), ha="left", va="top", color="tab:red", fontsize=8)
    axis.apply(bottom)
    return fig
