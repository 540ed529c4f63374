"""Lottery tickets (paper finding 9): global magnitude masks, random masks with the same per-layer density,
and a Trainer callback that keeps a mask applied while training (re-masked after every optimizer step).

A mask maps parameter names to boolean tensors of the parameter's shape (True = kept). The spectral side
is the analyzer's: ``apply_mask`` gives the masked model whose spectra ``hf_spectral.compare`` sets
against the dense one, and a model pruned with ``torch.nn.utils.prune`` is composed by the analyzer
(``weight_orig × weight_mask``) on its own.
"""

from __future__ import annotations

import copy
from typing import Mapping

import pandas as pd
import torch
from torch import nn
from transformers import TrainerCallback

from hf_spectral.views import build_matrix
from hf_spectral.experiments._matrices import as_matrix, live_matrices, matrix_agreement

Mask = dict[str, torch.Tensor]


def magnitude_mask(model: nn.Module, density: float, exclude_last: bool = True,
                   within: Mapping[str, torch.Tensor] | None = None) -> Mask:
    """A one-shot global magnitude mask keeping the ``density`` fraction of largest-|w| entries over all weight
    matrices (the analyzer's, all but the last by default). ``within`` (a previous mask) restricts the choice
    to its kept entries, with ``density`` still relative to all entries: one round of iterative pruning."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    entries = live_matrices(model, exclude_last=exclude_last, what="a mask")
    names = [e.spec.tensors[0] for e in entries]
    scores = []
    for entry, name in zip(entries, names):
        score = entry.parameter.detach().abs().to(torch.float64).flatten()
        if within is not None and name in within:
            score = torch.where(within[name].flatten().to(score.device), score, torch.full_like(score, -1.0))
        scores.append(score)
    flat = torch.cat(scores)
    keep = round(density * flat.numel())
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    if keep:
        # exactly ``keep`` entries (ties broken by position), never a masked-out one from ``within``
        chosen[torch.topk(flat, keep, sorted=False).indices.cpu()] = True
    mask: Mask = {}
    offset = 0
    for entry, name in zip(entries, names):
        n = entry.parameter.numel()
        mask[name] = chosen[offset:offset + n].reshape(entry.parameter.shape)
        offset += n
    return mask


def random_mask(model: nn.Module, like: Mapping[str, torch.Tensor], seed: int = 0) -> Mask:
    """A mask with the same number of kept entries per parameter as ``like``, at random positions (the
    authors' control for a magnitude mask)."""
    params = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(seed)
    mask: Mask = {}
    for name, reference in like.items():
        if name not in params:
            raise KeyError(f"{name}: the mask names a parameter that {type(model).__name__} does not have")
        n, kept = reference.numel(), int(reference.sum())
        chosen = torch.zeros(n, dtype=torch.bool)
        chosen[torch.randperm(n, generator=generator)[:kept]] = True
        mask[name] = chosen.reshape(reference.shape)
    return mask


def density(mask: Mapping[str, torch.Tensor]) -> float:
    """The fraction of entries a mask keeps, over all its parameters."""
    total = sum(m.numel() for m in mask.values())
    return sum(int(m.sum()) for m in mask.values()) / total if total else 1.0


@torch.no_grad()
def mask_in_place(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> nn.Module:
    """Zero the masked-out entries of ``model``'s parameters (in place)."""
    params = dict(model.named_parameters())
    for name, m in mask.items():
        p = params[name]
        p.mul_(m.to(device=p.device, dtype=p.dtype))
    return model


def apply_mask(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` with ``mask`` applied (mask ⊙ W)."""
    return mask_in_place(copy.deepcopy(model), mask)


def mask_agreement(model: nn.Module, mask: Mapping[str, torch.Tensor], top: int = 10) -> pd.DataFrame:
    """How well ``mask`` ⊙ W keeps W's top singular vectors (paper finding 9: a magnitude mask keeps them, a
    random one does not): one row per masked matrix — ``matrix``, ``density`` (its kept fraction),
    ``agreement`` (mean of the top-``top`` S_ii between the SVDs of mask ⊙ W and W, paper Eq. 5) and
    ``subspace`` (top-``top`` subspace overlap)."""
    rows = []
    for entry in live_matrices(model, what="a mask comparison"):
        name = entry.spec.tensors[0]
        if name not in mask:
            continue
        dense = as_matrix(entry)
        kept = mask[name].to(entry.parameter.device)
        masked = build_matrix(entry.spec, lambda _n: entry.parameter.detach() * kept)
        score, subspace = matrix_agreement(masked, dense, top)
        rows.append({"matrix": entry.spec.name, "density": float(kept.float().mean()), "agreement": score, "subspace": subspace})
    return pd.DataFrame(rows, columns=["matrix", "density", "agreement", "subspace"])


class MaskCallback(TrainerCallback):
    """Keep ``mask`` applied during ``Trainer.train``: at the start and after every optimizer step (the
    authors re-mask after each step, so momentum and weight decay cannot revive a pruned weight)."""

    def __init__(self, mask: Mapping[str, torch.Tensor]) -> None:
        self.mask = dict(mask)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            mask_in_place(model, self.mask)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            mask_in_place(model, self.mask)
