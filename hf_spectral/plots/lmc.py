"""The linear-mode-connectivity figure (paper Fig. 11, finding 10): the loss along the straight line between
branch endpoints per split step, the barrier and the endpoints' top-10 agreement against the split step (same
trunk, and the cross-trunk control), and the perturbation sweep (barrier and agreement against η)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hf_spectral.errors import SpectralError
from hf_spectral.plots._common import StepAxis, new_figure, styled

KIND_STYLE = {"branches": ("#3b6ea8", "o", "same trunk, different data order"),
              "cross-trunk": ("#8c8c8c", "s", "different trunks (control)")}


@styled
def plot_lmc(summary: pd.DataFrame, paths: pd.DataFrame, metric: str = "loss") -> Figure:
    """Four panels from an ``experiments.LMCReport`` (its ``summary`` and ``paths``): ``metric`` along the path
    (mean over the same-trunk pairs of each split step), its barrier and the endpoints' agreement against the split
    step (one dot per pair, lines through the means), and the η sweep of the perturbed pairs (when there are any)."""
    if f"barrier_{metric}" not in summary.columns:
        raise SpectralError(f"the LMC summary has no barrier of {metric!r}; choose one of "
                            f"{[c[len('barrier_'):] for c in summary.columns if c.startswith('barrier_')]}")
    fig = new_figure(10.0, 6.6)
    (path_ax, barrier_ax), (agree_ax, eta_ax) = fig.subplots(2, 2)
    branches = paths[paths["kind"] == "branches"]
    splits = sorted(branches["split"].unique())
    colors = dict(zip(splits, matplotlib.colormaps["viridis"](np.linspace(0.0, 0.9, max(len(splits), 1)))))
    for split in splits:
        mean = branches[branches["split"] == split].groupby("alpha")[metric].mean()
        path_ax.plot(mean.index, mean.to_numpy(), color=colors[split], marker=".", label=f"split {split}")
    path_ax.set_xlabel("α (interpolation between the two endpoints)")
    path_ax.set_ylabel(metric)
    path_ax.set_title(f"{metric} along the path, same trunk")
    if splits:
        path_ax.legend(loc="best", ncol=2)
    steps = summary.loc[summary["kind"].isin(KIND_STYLE), "split"]
    axis = StepAxis.for_steps(steps) if len(steps) else None
    for ax, column, ylabel in ((barrier_ax, f"barrier_{metric}", f"{metric} barrier"),
                               (agree_ax, "agreement", "top-10 agreement of the endpoints")):
        for kind, (color, marker, label) in KIND_STYLE.items():
            rows = summary[summary["kind"] == kind]
            if rows.empty:
                continue
            mean = rows.groupby("split")[column].mean()
            ax.scatter(axis.x(rows["split"]), rows[column], color=color, marker=marker, alpha=0.5, s=14)
            ax.plot(axis.x(mean.index), mean.to_numpy(), color=color, marker=marker, label=label)
        if axis is not None:
            axis.apply(ax, "split step")
        ax.set_ylabel(ylabel)
        ax.legend(loc="best")
    barrier_ax.axhline(0.0, color="black", linewidth=0.6)
    agree_ax.set_ylim(0.0, 1.02)
    _eta_panel(eta_ax, summary[summary["kind"] == "perturbed"], metric)
    fig.suptitle("Linear mode connectivity: barrier and agreement of branch endpoints")
    return fig


def _eta_panel(ax, perturbed: pd.DataFrame, metric: str) -> None:
    """Barrier (left axis) and agreement (right axis) against η, or a note that there is no sweep."""
    if perturbed.empty:
        ax.axis("off")
        ax.text(0.5, 0.5, "no perturbation sweep", ha="center", va="center", transform=ax.transAxes)
        return
    mean = perturbed.groupby("eta").mean(numeric_only=True)
    ax.plot(mean.index, mean[f"barrier_{metric}"], color="#c0392b", marker="o", label=f"{metric} barrier")
    ax.set_xlabel("η (norm-preserving noise at the split point)")
    ax.set_ylabel(f"{metric} barrier", color="#c0392b")
    twin = ax.twinx()
    twin.plot(mean.index, mean["agreement"], color="#3b6ea8", marker="s", label="agreement")
    twin.set_ylabel("top-10 agreement", color="#3b6ea8")
    twin.set_ylim(0.0, 1.02)
    twin.grid(False)
    splits = sorted(perturbed["split"].unique())
    ax.set_title(f"perturbation at split step {', '.join(map(str, splits))}")
