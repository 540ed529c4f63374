"""Offline evaluation metrics for ``Trainer(compute_metrics=...)``, the one approach every recipe
uses (``evaluate.load("accuracy")`` needs the Hub). Labels equal to -100 (padding, ignored
positions) are left out everywhere, as the Trainer's losses do."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

IGNORE_INDEX = -100  # transformers' label for "not a target"


def _predictions(eval_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(predictions, (tuple, list)):  # (logits, hidden states, ...): the logits come first
        predictions = predictions[0]
    return np.asarray(predictions), np.asarray(labels)


def accuracy_metrics(eval_pred: Any) -> dict[str, float]:
    """``{"accuracy": share of correct predictions}`` for classification: ``predictions`` are class
    ids, or logits/scores with the classes on the last axis (taken by argmax)."""
    predictions, labels = _predictions(eval_pred)
    if predictions.ndim == labels.ndim + 1:
        predictions = predictions.argmax(-1)
    mask = labels != IGNORE_INDEX
    if not mask.any():
        return {"accuracy": math.nan}
    return {"accuracy": float((predictions[mask] == labels[mask]).mean())}


def perplexity(loss: float) -> float:
    """exp(mean token cross-entropy in nats); inf when that overflows, nan for a nan loss."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def causal_lm_scores(logits: Any, labels: Any) -> Any:
    """``Trainer(preprocess_logits_for_metrics=...)`` for causal LMs: per position, the cross-entropy
    of the next token and whether the argmax predicted it, stacked as ``(batch, length - 1, 2)`` —
    so evaluation gathers two numbers per token instead of the logits over the whole vocabulary."""
    import torch
    import torch.nn.functional as F

    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    logits, targets = logits[:, :-1].float(), labels[:, 1:]  # position t predicts token t + 1
    safe = targets.clamp(min=0)  # ignored positions: any class, masked by the labels later
    nll = F.cross_entropy(logits.transpose(1, 2), safe, reduction="none")
    correct = (logits.argmax(-1) == safe).float()
    return torch.stack([nll, correct], dim=-1)


def causal_lm_metrics(eval_pred: Any) -> dict[str, float]:
    """``compute_metrics`` for causal LMs with :func:`causal_lm_scores`: ``perplexity`` (exp of the
    mean cross-entropy over every predicted token, weighting tokens, not batches) and
    ``token_accuracy`` (next-token argmax accuracy). Exact, where exp(eval_loss) is not: transformers
    5 divides a T-token block's summed losses of its T − 1 predicted tokens by T."""
    scores, labels = _predictions(eval_pred)
    mask = np.asarray(labels)[:, 1:] != IGNORE_INDEX
    mask = mask[:, : scores.shape[1]]
    if not mask.any():
        return {"perplexity": math.nan, "token_accuracy": math.nan}
    nll = scores[..., 0][mask].astype(np.float64)
    correct = scores[..., 1][mask].astype(np.float64)
    return {"perplexity": perplexity(float(nll.mean())), "token_accuracy": float(correct.mean())}
