"""The paper's experiments as interventions on any HF/PyTorch model: low-rank truncation, random labels,
lottery-ticket masks, linear mode connectivity and perturbation (docs/experiments.md).

Names load lazily: ``import hf_spectral.experiments`` imports neither transformers nor datasets.
"""

from __future__ import annotations

from hf_spectral._lazy import lazy_exports

_MODULES = {  # module: its public names
    "labels": ("permute_labels",),
    "truncation": ("truncate", "low_rank", "recompute_batchnorm", "evaluate_truncated"),
    "masks": ("magnitude_mask", "random_mask", "apply_mask", "density", "mask_agreement", "MaskCallback"),
    "lmc": ("interpolate", "linear_path", "barrier", "perturb", "BranchPair", "LMCReport", "endpoint_agreement", "lmc_report"),
}
_PUBLIC = {name: f"hf_spectral.experiments.{module}" for module, names in _MODULES.items() for name in names}

__all__ = sorted(_PUBLIC)

__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
