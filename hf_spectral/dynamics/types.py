"""The dynamics tables: a series of snapshots turned into tidy (long-format) pandas tables.

Every table has a ``step`` column (training step; the snapshot's position when no step is known)
and a ``label`` column (the snapshot's label: ``step-000100``, ``checkpoint-500``, a revision).
Saved as ``<name>.parquet`` files in one folder (plus ``dynamics.json`` with ``meta``).

trajectories       one row per (step, matrix): step, label, matrix, component, kind, rows, cols,
                   status, flag, and every scalar metric of ``hf_spectral.metrics.SPECTRUM_METRICS``
                   (normalized_effective_rank, normalized_stable_rank, spectral_norm, ...), and the
                   heavy-tail columns ``metrics.HEAVY_TAIL_METRICS`` + ``heavy_tail_flag`` (α, pl_xmin,
                   pl_ks_distance, ...; computed from the stored spectra when the snapshots lack them).
singular_values    one row per (step, matrix, index): step, label, matrix, index (0 = largest), sigma.
agreement          one row per (step, matrix, index): step, label, matrix, reference (label of the
                   reference snapshot), index, value = S_ii (paper Eq. 5) against the reference
                   (the final snapshot unless another is chosen).
agreement_previous same columns, the reference being the previous snapshot.
agreement_scores   one row per (step, matrix, reference_kind): step, label, matrix,
                   reference_kind ("reference" | "previous"), reference, score (mean of the top-10
                   diagonal entries), subspace (top-10 subspace overlap, robust to near-equal σ).
alignment          one row per (step, pair, index): step, label, pair (AlignmentPair label), prev,
                   next, mode, index, value = A_ii.
alignment_scores   one row per (step, pair): step, label, pair, prev, next, mode, score.
summary            one row per step: step, label, matrices, flagged, mean_normalized_effective_rank,
                   mean_normalized_stable_rank, mean_spectral_norm, mean_agreement (mean over matrices
                   of the reference score), mean_alignment, mean_alpha (over matrices with a defined
                   power-law fit) and alpha_undefined (how many had none).
training           one row per (step, metric): step, metric (e.g. "eval_accuracy", "loss"), value —
                   the Trainer's log history when the series has one (empty otherwise).

Tables that cannot be computed (no stored vectors → no agreement; no alignment) are empty
DataFrames with the columns above, never missing attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

TABLES = (
    "trajectories",
    "singular_values",
    "agreement",
    "agreement_previous",
    "agreement_scores",
    "alignment",
    "alignment_scores",
    "summary",
    "training",
)


@dataclass
class Dynamics:
    """Tidy tables describing how the spectra of a model change over a series of snapshots."""

    trajectories: pd.DataFrame
    singular_values: pd.DataFrame
    agreement: pd.DataFrame
    agreement_previous: pd.DataFrame
    agreement_scores: pd.DataFrame
    alignment: pd.DataFrame
    alignment_scores: pd.DataFrame
    summary: pd.DataFrame
    training: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> list[int]:
        return sorted(self.summary["step"].unique().tolist()) if len(self.summary) else []

    @property
    def source_name(self) -> str | None:
        """A short name for what was analyzed: the source's last path part (for a callback record,
        ``<run>/spectral``, the run's), or None when the source is unknown."""
        source = self.meta.get("source")
        if not source:
            return None
        path = Path(str(source))
        if path.name == "spectral" and path.parent.name:
            return path.parent.name
        return path.name or str(source)

    @property
    def matrices(self) -> list[str]:
        """Matrix names in model order."""
        return list(dict.fromkeys(self.trajectories["matrix"])) if len(self.trajectories) else []
