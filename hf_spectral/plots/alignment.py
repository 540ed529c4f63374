"""Alignment of consecutive layers over time (paper Eqs. 3–4): layer i's output singular vectors
against layer i+1's input singular vectors."""

from __future__ import annotations

from typing import Sequence

from matplotlib.figure import Figure

from hf_spectral.dynamics.types import Dynamics
from hf_spectral.plots._common import styled
from hf_spectral.plots._diagonals import diagonal_panels, score_heatmap


def _pair_order(dyn: Dynamics, table) -> list[str]:
    return list(dict.fromkeys(table["pair"])) if len(table) else []


@styled
def plot_alignment(
    dyn: Dynamics,
    pairs: str | Sequence[str] | None = None,
    *,
    max_panels: int = 4,
    max_index: int = 100,
    scale: str = "auto",
) -> Figure:
    """Diagonal Aᵢᵢ = |⟨uᵢ, v'ᵢ⟩| over time for a few layer pairs (default: spread over depth)."""
    table = dyn.alignment
    return diagonal_panels(
        table, "pair", [pairs] if isinstance(pairs, str) else pairs, order=_pair_order(dyn, table),
        what="alignment", title="Alignment of consecutive layers (diagonal Aᵢᵢ)",
        colorbar_label="Aᵢᵢ (1 = aligned)", max_panels=max_panels, max_index=max_index, scale=scale,
    )


@styled
def plot_alignment_scores(dyn: Dynamics, *, scale: str = "auto") -> Figure:
    """Every layer pair × time, coloured by its alignment score (mean of the top-10 Aᵢᵢ)."""
    table = dyn.alignment_scores
    return score_heatmap(
        table, "pair", order=_pair_order(dyn, table), what="alignment scores",
        title="Alignment of consecutive layers (top-10 score)", ylabel="layer pair (model order)",
        colorbar_label="alignment score (mean of top-10 Aᵢᵢ)", scale=scale,
    )
