"""Training-time tracking: ``SpectralCallback`` (HF Trainer), ``SpectralTracker`` (custom loops).

Names load lazily: ``SpectralTracker`` and the schedule do not need transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_PUBLIC = {
    "SpectralCallback": "hf_spectral.tracking.callback",
    "SpectralTracker": "hf_spectral.tracking.tracker",
    "log_spaced_steps": "hf_spectral.tracking.schedule",
    "Schedule": "hf_spectral.tracking.schedule",
    "snapshot_name": "hf_spectral.tracking.recorder",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hf_spectral.tracking' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from hf_spectral.tracking.callback import SpectralCallback
    from hf_spectral.tracking.recorder import snapshot_name
    from hf_spectral.tracking.schedule import Schedule, log_spaced_steps
    from hf_spectral.tracking.tracker import SpectralTracker
