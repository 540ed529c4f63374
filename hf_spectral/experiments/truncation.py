"""Low-rank truncation (paper finding 4): keep the top (or bottom) part of every weight matrix's SVD and
evaluate without retraining. The top half stays close to the full model; the bottom half does not.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Iterable, Literal

import torch
from torch import nn

from hf_spectral.errors import SpectralError
from hf_spectral.experiments._matrices import as_matrix, live_matrices, write_matrix
from hf_spectral.views import build_matrix

logger = logging.getLogger(__name__)

Keep = Literal["top", "bottom"]


def low_rank(matrix: torch.Tensor, fraction: float, keep: Keep = "top") -> torch.Tensor:
    """``matrix`` rebuilt from its top (or bottom) ⌈fraction·R⌉ singular triplets, R = min(m, n), in float64."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if keep not in ("top", "bottom"):
        raise ValueError(f"keep must be 'top' or 'bottom', got {keep!r}")
    w = matrix.to(torch.float64)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    k = math.ceil(fraction * s.numel() - 1e-9)
    part = slice(0, k) if keep == "top" else slice(s.numel() - k, s.numel())
    return (u[:, part] * s[part]) @ vh[part]


def truncate(model: nn.Module, fraction: float = 0.5, keep: Keep = "top", exclude_last: bool = True) -> nn.Module:
    """A copy of ``model`` whose every weight matrix (the analyzer's views: convs flattened and reshaped back,
    GPT-2 ``Conv1D`` orientation respected, fused QKV whole) is replaced by its rank-⌈fraction·R⌉ truncation
    to the top or bottom singular directions. The last matrix is kept by default, as the authors did.
    Models with BatchNorm want :func:`recompute_batchnorm` afterwards."""
    live_matrices(model, exclude_last=exclude_last, what="truncation")  # refuses composed weights before copying
    truncated = copy.deepcopy(model)
    for entry in live_matrices(truncated, exclude_last=exclude_last, what="truncation"):
        write_matrix(entry, low_rank(as_matrix(entry), fraction, keep))
    return truncated


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, dataloader: Iterable, num_batches: int | None = None) -> nn.Module:
    """Re-estimate the running statistics of every BatchNorm layer of ``model`` (in place) from
    ``dataloader``: statistics reset, then a cumulative average over the batches in train mode.

    Batches may be dicts (``model(**batch)``), tuples/lists (``model(batch[0])``) or tensors. GroupNorm and
    LayerNorm keep no running statistics, so a model without BatchNorm is returned unchanged (and says so).
    """
    norms = _batchnorms(model)
    if not norms:
        logger.info("%s has no BatchNorm layer: nothing to re-estimate (GroupNorm/LayerNorm need none)",
                    type(model).__name__)
        return model
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    device = next(model.parameters()).device
    try:
        for i, batch in enumerate(dataloader):
            if num_batches is not None and i >= num_batches:
                break
            if isinstance(batch, dict):
                model(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
            elif isinstance(batch, (tuple, list)):
                model(batch[0].to(device))
            else:
                model(batch.to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return model


def truncation_prefix(keep: Keep, fraction: float, prefix: str = "eval") -> str:
    """The metric prefix of a truncated evaluation: ``eval_top50`` for the top half."""
    return f"{prefix}_{keep}{round(100 * fraction):d}"


def evaluate_truncated(trainer, fraction: float = 0.5, keeps: tuple[Keep, ...] = ("top", "bottom"),
                       exclude_last: bool = True, dataloader: Iterable | None = None, full: bool = False,
                       log: bool = True) -> dict[str, float]:
    """Evaluate the Trainer's model with every weight matrix truncated to its top (and bottom) ⌈fraction·R⌉
    singular directions, without retraining: metrics ``eval_top50_loss``, ``eval_bottom50_loss``... (and the
    full model's ``eval_*`` with ``full``), logged through ``trainer.log`` unless ``log=False``.

    The Trainer's own evaluation loop computes them (``compute_metrics`` included) without firing
    ``on_evaluate``: early stopping and best-model tracking see only the Trainer's regular evaluations.
    The weights are swapped in place and restored exactly; BatchNorm statistics are re-estimated from
    ``dataloader`` when given, and restored too."""
    if trainer.eval_dataset is None:
        raise SpectralError("truncated evaluation needs an eval_dataset in the Trainer")
    model = trainer.model
    entries = live_matrices(model, exclude_last=exclude_last, what="truncated evaluation")
    with torch.no_grad():
        saved = [entry.parameter.detach().clone() for entry in entries]
    norms = _batchnorms(model)
    saved_stats = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms] if dataloader is not None else []
    results: dict[str, float] = _evaluation(trainer, "eval") if full else {}
    try:
        for keep in keeps:
            with torch.no_grad():
                for entry, original in zip(entries, saved):
                    w = build_matrix(entry.spec, lambda _name, t=original: t).to(torch.float64)
                    write_matrix(entry, low_rank(w, fraction, keep))
            if dataloader is not None:
                recompute_batchnorm(model, dataloader)
            results.update(_evaluation(trainer, truncation_prefix(keep, fraction)))
    finally:
        with torch.no_grad():
            for entry, original in zip(entries, saved):
                entry.parameter.copy_(original)
        for m, stats in zip(norms, saved_stats):
            m.load_state_dict(stats)
    if log:
        trainer.log(dict(results))
    return results


def _evaluation(trainer, prefix: str) -> dict[str, float]:
    output = trainer.evaluation_loop(trainer.get_eval_dataloader(), description=f"Evaluation ({prefix})",
                                     prediction_loss_only=True if trainer.compute_metrics is None else None,
                                     metric_key_prefix=prefix)
    return {k: float(v) for k, v in output.metrics.items() if isinstance(v, (int, float))}
