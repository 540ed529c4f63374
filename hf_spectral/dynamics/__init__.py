"""Dynamics: a series of snapshots → trajectories, agreement with a reference, alignment over time;
and the comparison of two checkpoints.

Names load lazily, so that importing ``hf_spectral.dynamics.types`` (plots, report) stays cheap.
The comparison lives in ``comparison.py``: a submodule named ``compare`` would shadow the function
``compare`` as an attribute of this package once imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hf_spectral._lazy import lazy_exports

_PUBLIC = {
    "Dynamics": "hf_spectral.dynamics.types",
    "TABLES": "hf_spectral.dynamics.types",
    "compute_dynamics": "hf_spectral.dynamics.compute",
    "load_series": "hf_spectral.dynamics.series",
    "dynamics_from_source": "hf_spectral.dynamics.series",
    "save_dynamics": "hf_spectral.dynamics.io",
    "load_dynamics": "hf_spectral.dynamics.io",
    "compare": "hf_spectral.dynamics.comparison",
    "Comparison": "hf_spectral.dynamics.comparison",
}

__all__ = sorted(_PUBLIC)


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)


if TYPE_CHECKING:  # pragma: no cover
    from hf_spectral.dynamics.comparison import Comparison, compare
    from hf_spectral.dynamics.compute import compute_dynamics
    from hf_spectral.dynamics.io import load_dynamics, save_dynamics
    from hf_spectral.dynamics.series import dynamics_from_source, load_series
    from hf_spectral.dynamics.types import TABLES, Dynamics
