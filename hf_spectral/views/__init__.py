"""Views: named tensors (+ config, module classes) → matrices to decompose, skipped tensors, alignment pairs."""

from hf_spectral.views.build import build_matrix, restore_weight
from hf_spectral.views.modules import config_from_model, module_types_from_config, module_types_from_model
from hf_spectral.views.alignment import alignment_pairs
from hf_spectral.views.naming import natural_key
from hf_spectral.views.plan import compile_patterns, plan_matrices, select
from hf_spectral.views.registry import base_model_prefix, rules_for
from hf_spectral.views.types import AlignmentMode, AlignmentPair, MatrixKind, MatrixSlice, MatrixSpec, SkippedTensor

__all__ = [
    "AlignmentMode",
    "AlignmentPair",
    "MatrixKind",
    "MatrixSlice",
    "MatrixSpec",
    "SkippedTensor",
    "alignment_pairs",
    "base_model_prefix",
    "build_matrix",
    "compile_patterns",
    "config_from_model",
    "module_types_from_config",
    "module_types_from_model",
    "natural_key",
    "plan_matrices",
    "restore_weight",
    "rules_for",
    "select",
]
