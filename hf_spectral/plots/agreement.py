"""Agreement of singular vectors with a reference snapshot over time (paper Eq. 5)."""

from __future__ import annotations

from typing import Sequence

from matplotlib.figure import Figure

from hf_spectral.dynamics.types import Dynamics
from hf_spectral.plots._common import styled
from hf_spectral.plots._diagonals import diagonal_panels, score_heatmap


def _reference(table) -> str:
    labels = table["reference"].dropna().unique().tolist() if "reference" in table else []
    return f"snapshot {labels[0]}" if len(labels) == 1 else "the reference snapshot"


@styled
def plot_agreement(
    dyn: Dynamics,
    matrices: str | Sequence[str] | None = None,
    *,
    previous: bool = False,
    max_panels: int = 4,
    max_index: int = 100,
    scale: str = "auto",
) -> Figure:
    """Diagonal S_ii = |uᵢᵀu'ᵢ|·|vᵢᵀv'ᵢ| over time (i < ``max_index``) for a few matrices, against
    the reference snapshot, or against the previous snapshot when ``previous``."""
    table = dyn.agreement_previous if previous else dyn.agreement
    against = "the previous snapshot" if previous else _reference(table) if len(table) else ""
    return diagonal_panels(
        table, "matrix", [matrices] if isinstance(matrices, str) else matrices, order=dyn.matrices,
        what="agreement" + (" with the previous snapshot" if previous else ""),
        title=f"Agreement of singular vectors with {against} (diagonal Sᵢᵢ)",
        colorbar_label="Sᵢᵢ (1 = same direction)", max_panels=max_panels, max_index=max_index, scale=scale,
    )


@styled
def plot_agreement_scores(dyn: Dynamics, *, previous: bool = False, scale: str = "auto") -> Figure:
    """Every matrix × time, coloured by its agreement score (mean of the top-10 Sᵢᵢ)."""
    table = dyn.agreement_scores
    if len(table) and "reference_kind" in table:
        table = table[table["reference_kind"] == ("previous" if previous else "reference")]
    against = "the previous snapshot" if previous else _reference(table) if len(table) else ""
    return score_heatmap(
        table, "matrix", order=dyn.matrices, what="agreement scores",
        title=f"Agreement of top-10 singular vectors with {against}", ylabel="weight matrix (model order)",
        colorbar_label="agreement score (mean of top-10 Sᵢᵢ)", scale=scale,
    )
