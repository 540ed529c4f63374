"""The weight matrices of a live model, as the analyzer sees them, for the interventions.

Every intervention (truncation, masks, perturbation) acts on exactly the matrices the analyzer
decomposes — the same views, the same order (``named_parameters()``), tied weights once — so that what
is changed is what the spectra describe. Planning a live model reads no data (``engine.plan_model``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hf_spectral import metrics
from hf_spectral.engine import AnalysisOptions, plan_model
from hf_spectral.errors import SpectralError
from hf_spectral.views import MatrixSpec, build_matrix, restore_weight


@dataclass(frozen=True)
class LiveMatrix:
    """One analyzed matrix of a live model: its spec and the parameter that stores it."""

    spec: MatrixSpec
    parameter: nn.Parameter


def live_matrices(model: nn.Module, *, exclude_last: bool = False, what: str = "this intervention") -> list[LiveMatrix]:
    """The model's weight matrices in model order; ``exclude_last`` drops the last one (the classifier or
    unembedding, which the authors leave untouched). Composed weights (pruning, weight norm) are refused:
    their stored parts are not the matrix."""
    composed = _composed_weights(model)
    if composed:
        raise SpectralError(
            f"{composed[0]}: the weight is composed (pruning or weight norm), so {what} cannot write it back; "
            "remove the parametrization first (torch.nn.utils.prune.remove / parametrize.remove_parametrizations)"
        )
    plan = plan_model(model, AnalysisOptions(progress=False))
    params = dict(model.named_parameters())
    specs = plan.specs[:-1] if exclude_last else plan.specs
    # a live model's plan reads named_parameters(): every spec is one parameter (tied ones listed once)
    found = [LiveMatrix(spec, params[spec.tensors[0]]) for spec in specs]
    return found


def _composed_weights(model: nn.Module) -> list[str]:
    """Names of weights held as parts: ``X_orig`` × ``X_mask`` (prune), ``weight_g``/``weight_v`` or
    ``parametrizations.*`` (weight norm and other parametrizations)."""
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    pruned = [n[: -len("_orig")] for n in names if n.endswith("_orig") and n[: -len("_orig")] + "_mask" in names]
    normed = [n for n in names if ".parametrizations." in f".{n}" or n.endswith(".weight_g") or n == "weight_g"]
    return sorted(pruned + normed)


def as_matrix(entry: LiveMatrix) -> torch.Tensor:
    """The (rows = output, cols = input) matrix of ``entry`` in float64, a copy."""
    return build_matrix(entry.spec, lambda _name: entry.parameter.detach()).to(torch.float64)


def write_matrix(entry: LiveMatrix, matrix: torch.Tensor) -> None:
    """Store ``matrix`` (in the matrix view) back into the parameter, in its stored shape and dtype."""
    stored = restore_weight(entry.spec, matrix)
    with torch.no_grad():
        entry.parameter.copy_(stored.to(entry.parameter.dtype))


def matrix_agreement(a: torch.Tensor, b: torch.Tensor, top: int = 10) -> tuple[float, float]:
    """How much two same-shaped matrices share their top singular vectors: the mean of the top-``top`` S_ii
    (paper Eq. 5, the score the dynamics reports) and the top-``top`` subspace overlap, from float64 SVDs."""
    u_a, _, vh_a = torch.linalg.svd(a.to(torch.float64), full_matrices=False)
    u_b, _, vh_b = torch.linalg.svd(b.to(torch.float64), full_matrices=False)
    k = min(top, u_a.shape[1])
    diagonal = metrics.agreement_diagonal(u_a[:, :k], vh_a[:k].mT, u_b[:, :k], vh_b[:k].mT)
    return metrics.top_score(diagonal, top), metrics.agreement_subspace(u_a, vh_a.mT, u_b, vh_b.mT, k=k)
