"""Linear mode connectivity (paper finding 10): interpolate two models, evaluate along the straight line,
measure the barrier; and the norm-preserving perturbation the authors apply at the branch point.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from hf_spectral.experiments._matrices import live_matrices
from hf_spectral.experiments.truncation import recompute_batchnorm


@torch.no_grad()
def interpolate(model_a: nn.Module, model_b: nn.Module, alpha: float) -> nn.Module:
    """A copy of ``model_a`` holding (1 − α)·θ_A + α·θ_B for every floating state-dict entry (parameters and
    buffers, BatchNorm statistics included); integer buffers (``num_batches_tracked``) come from the nearer end."""
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    if state_a.keys() != state_b.keys():
        only = sorted(set(state_a) ^ set(state_b))[:3]
        raise ValueError(f"the two models have different state-dict entries (e.g. {', '.join(only)})")
    merged = {}
    for name, a in state_a.items():
        b = state_b[name]
        if a.shape != b.shape:
            raise ValueError(f"{name}: shapes differ ({tuple(a.shape)} vs {tuple(b.shape)})")
        if a.is_floating_point():
            merged[name] = torch.lerp(a, b.to(a.dtype), float(alpha))
        else:
            merged[name] = (a if alpha < 0.5 else b).clone()
    model = copy.deepcopy(model_a)
    model.load_state_dict(merged)
    return model


def linear_path(model_a: nn.Module, model_b: nn.Module, evaluate: Callable[[nn.Module], Mapping[str, Any]],
                num: int = 11, dataloader: Iterable | None = None) -> pd.DataFrame:
    """``evaluate(model)`` at ``num`` evenly spaced α in [0, 1] on the line between the two models: a table
    with ``alpha`` and every metric ``evaluate`` returns. With ``dataloader``, BatchNorm statistics are
    re-estimated at each α (interpolated statistics do not describe the interpolated weights)."""
    rows = []
    for alpha in np.linspace(0.0, 1.0, num):
        model = interpolate(model_a, model_b, float(alpha))
        if dataloader is not None:
            recompute_batchnorm(model, dataloader)
        model.eval()
        rows.append({"alpha": float(alpha), **{k: float(v) for k, v in evaluate(model).items()}})
    return pd.DataFrame(rows)


def barrier(values: Sequence[float], alphas: Sequence[float] | None = None) -> float:
    """The largest rise of ``values`` (a loss along the path) above the straight line between its two
    endpoints, over the interior points only (negative when every interior point lies below the line).
    ``alphas`` default to evenly spaced points in [0, 1]."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 3:
        raise ValueError("a barrier needs the two endpoints and at least one interior point")
    t = np.linspace(0.0, 1.0, v.size) if alphas is None else np.asarray(alphas, dtype=np.float64)
    t = (t - t[0]) / (t[-1] - t[0])
    line = v[0] + (v[-1] - v[0]) * t
    return float(np.max(v[1:-1] - line[1:-1]))


@torch.no_grad()
def perturb(model: nn.Module, eta: float, seed: int = 0, exclude_last: bool = True) -> nn.Module:
    """A copy of ``model`` whose every weight matrix (all but the last by default) gets norm-preserving noise:
    W ← ‖W‖·(W + η‖W‖ε̂)/‖W + η‖W‖ε̂‖ with ε̂ a unit-Frobenius-norm Gaussian (η = 0 is the identity)."""
    live_matrices(model, exclude_last=exclude_last, what="perturbation")  # refuses composed weights before copying
    perturbed = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    for entry in live_matrices(perturbed, exclude_last=exclude_last, what="perturbation"):
        w = entry.parameter.detach().to(torch.float64)
        norm = torch.linalg.vector_norm(w)
        noise = torch.randn(w.shape, generator=generator, dtype=torch.float64)
        moved = w + eta * norm * noise / torch.linalg.vector_norm(noise)
        moved_norm = torch.linalg.vector_norm(moved)
        if norm == 0 or moved_norm == 0:
            continue  # a zero matrix has no direction to perturb
        entry.parameter.copy_((norm * moved / moved_norm).to(entry.parameter.dtype))
    return perturbed
