"""The paper's experiments as interventions on any HF/PyTorch model: low-rank truncation, random labels,
lottery-ticket masks, linear mode connectivity and perturbation (docs/experiments.md).

Names load lazily: ``import hf_spectral.experiments`` imports neither transformers nor datasets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hf_spectral._lazy import lazy_exports

_PUBLIC = {
    "permute_labels": "hf_spectral.experiments.labels",
    "truncate": "hf_spectral.experiments.truncation",
    "low_rank": "hf_spectral.experiments.truncation",
    "recompute_batchnorm": "hf_spectral.experiments.truncation",
    "evaluate_truncated": "hf_spectral.experiments.truncation",
    "magnitude_mask": "hf_spectral.experiments.masks",
    "random_mask": "hf_spectral.experiments.masks",
    "apply_mask": "hf_spectral.experiments.masks",
    "density": "hf_spectral.experiments.masks",
    "mask_agreement": "hf_spectral.experiments.masks",
    "MaskCallback": "hf_spectral.experiments.masks",
    "interpolate": "hf_spectral.experiments.lmc",
    "linear_path": "hf_spectral.experiments.lmc",
    "barrier": "hf_spectral.experiments.lmc",
    "perturb": "hf_spectral.experiments.lmc",
}

__all__ = sorted(_PUBLIC)

__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)

if TYPE_CHECKING:  # pragma: no cover
    from hf_spectral.experiments.labels import permute_labels
    from hf_spectral.experiments.lmc import barrier, interpolate, linear_path, perturb
    from hf_spectral.experiments.masks import (
        MaskCallback,
        apply_mask,
        density,
        magnitude_mask,
        mask_agreement,
        random_mask,
    )
    from hf_spectral.experiments.truncation import evaluate_truncated, low_rank, recompute_batchnorm, truncate
