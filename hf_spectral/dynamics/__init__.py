"""Dynamics: a series of snapshots → trajectories, agreement with a reference, alignment over time;
and the tables comparing two checkpoints' snapshots.

This package only reads snapshots (it imports ``store``, ``metrics`` and its own modules): making
them — loading a series, comparing two checkpoints — is ``hf_spectral.series`` and
``hf_spectral.comparison``, beside the analyzer. Names load lazily, so that importing
``hf_spectral.dynamics.types`` (plots, report) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hf_spectral._lazy import lazy_exports

_PUBLIC = {
    "Dynamics": "hf_spectral.dynamics.types",
    "TABLES": "hf_spectral.dynamics.types",
    "compute_dynamics": "hf_spectral.dynamics.compute",
    "save_dynamics": "hf_spectral.dynamics.io",
    "load_dynamics": "hf_spectral.dynamics.io",
    "Comparison": "hf_spectral.dynamics.comparison",
}

__all__ = sorted(_PUBLIC)


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)


if TYPE_CHECKING:  # pragma: no cover
    from hf_spectral.dynamics.comparison import Comparison
    from hf_spectral.dynamics.compute import compute_dynamics
    from hf_spectral.dynamics.io import load_dynamics, save_dynamics
    from hf_spectral.dynamics.types import TABLES, Dynamics
