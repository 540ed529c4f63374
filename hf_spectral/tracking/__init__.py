"""Training-time tracking: ``SpectralCallback`` (HF Trainer), ``SpectralTracker`` (custom loops).

Names load lazily: ``SpectralTracker`` and the schedule do not need transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hf_spectral._lazy import lazy_exports

_PUBLIC = {
    "SpectralCallback": "hf_spectral.tracking.callback",
    "SpectralTracker": "hf_spectral.tracking.tracker",
    "log_spaced_steps": "hf_spectral.tracking.schedule",
    "Schedule": "hf_spectral.tracking.schedule",
    "snapshot_name": "hf_spectral.tracking.recorder",
}

__all__ = sorted(_PUBLIC)


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)


if TYPE_CHECKING:  # pragma: no cover
    from hf_spectral.tracking.callback import SpectralCallback
    from hf_spectral.tracking.recorder import snapshot_name
    from hf_spectral.tracking.schedule import Schedule, log_spaced_steps
    from hf_spectral.tracking.tracker import SpectralTracker
