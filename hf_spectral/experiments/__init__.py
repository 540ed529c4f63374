"""Experiments of the paper beyond plain training runs: random labels (and, later, the interventions of
issue 12). Names load lazily, so ``import hf_spectral.experiments`` imports neither datasets nor torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hf_spectral._lazy import lazy_exports

_PUBLIC = {
    "permute_labels": "hf_spectral.experiments.labels",
}

__all__ = sorted(_PUBLIC)


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)


if TYPE_CHECKING:  # pragma: no cover
    from hf_spectral.experiments.labels import permute_labels
