"""hf_spectral: the spectral dynamics of weights (singular values and vectors of every weight
matrix) for the HuggingFace ecosystem.

The public API is what this module names; everything else may change. Names load lazily so that
``import hf_spectral`` stays cheap (the callback needs transformers, the plots need matplotlib).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    # analyzer
    "analyze": "hf_spectral.analyzer",
    "analyze_series": "hf_spectral.analyzer",
    "AnalysisOptions": "hf_spectral.engine",
    "analyze_model": "hf_spectral.engine",
    # snapshots
    "Snapshot": "hf_spectral.store",
    "read_snapshot": "hf_spectral.store",
    "write_snapshot": "hf_spectral.store",
    # tracking
    "SpectralCallback": "hf_spectral.tracking",
    "SpectralTracker": "hf_spectral.tracking",
    # dynamics
    "Dynamics": "hf_spectral.dynamics",
    "compute_dynamics": "hf_spectral.dynamics",
    "dynamics_from_source": "hf_spectral.dynamics",
    "load_series": "hf_spectral.dynamics",
    "compare": "hf_spectral.dynamics",
    # faces
    "write_report": "hf_spectral.report",
    "update_model_card": "hf_spectral.cards",
    # errors
    "SpectralError": "hf_spectral.errors",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hf_spectral' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from hf_spectral.analyzer import analyze, analyze_series
    from hf_spectral.engine import AnalysisOptions, analyze_model
    from hf_spectral.errors import SpectralError
    from hf_spectral.store import Snapshot, read_snapshot, write_snapshot
