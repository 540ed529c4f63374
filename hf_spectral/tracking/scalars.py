"""The live scalars of one snapshot, as they reach the loggers (names are documented in docs/tracking.md).

    spectral/erank/<matrix>       normalized effective rank (docs/definitions.md §2)
    spectral/sigma_max/<matrix>   top singular value
    spectral/agreement/<matrix>   mean of the top-10 diagonal agreement entries with the previous
                                  snapshot (paper Eq. 5; needs top_k >= 1)
    spectral/mean_erank, spectral/mean_stable_rank, spectral/mean_sigma_max, spectral/mean_agreement,
    spectral/flagged              model-level summaries (means over matrices whose metrics are defined)
    spectral/<measure>/<key>      user ``extra_measures``
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch

from hf_spectral import metrics
from hf_spectral.store import STATUS_OK, Snapshot

PREFIX = "spectral"
# Per-layer families: an extra measure may not take one of these names (its keys would collide).
LAYER_FAMILIES = ("erank", "sigma_max", "agreement")
AGREEMENT_TOP = 10  # the paper's summary score: mean of the top-10 diagonal entries

Vectors = Mapping[str, tuple[np.ndarray, np.ndarray]]


def agreement_scores(current: Vectors, previous: Vectors, top: int = AGREEMENT_TOP) -> dict[str, float]:
    """Per matrix, the mean of the first ``top`` entries of diag |U_tᵀU_prev|·|V_tᵀV_prev|."""
    scores: dict[str, float] = {}
    for name, (u, v) in current.items():
        if name not in previous:
            continue
        u_prev, v_prev = previous[name]
        if u.shape[0] != u_prev.shape[0] or v.shape[0] != v_prev.shape[0] or min(u.shape[1], u_prev.shape[1]) == 0:
            continue
        diagonal = metrics.agreement_diagonal(
            torch.from_numpy(np.asarray(u)), torch.from_numpy(np.asarray(v)),
            torch.from_numpy(np.asarray(u_prev)), torch.from_numpy(np.asarray(v_prev)),
        )
        scores[name] = metrics.top_score(diagonal, top)
    return scores


def live_scalars(snapshot: Snapshot, previous: Vectors | None, *, log_layers: bool = True) -> dict[str, float]:
    """The scalars logged for one snapshot (undefined values are left out, never logged as NaN)."""
    out: dict[str, float] = {}
    table = snapshot.matrices
    agreement = agreement_scores(snapshot.vectors, previous) if previous else {}
    defined = table[table["status"] == STATUS_OK]
    if log_layers:
        for name, erank, sigma_max in zip(defined["name"], defined["normalized_effective_rank"], defined["spectral_norm"]):
            _put(out, f"{PREFIX}/erank/{name}", erank)
            _put(out, f"{PREFIX}/sigma_max/{name}", sigma_max)
        for name, score in agreement.items():
            _put(out, f"{PREFIX}/agreement/{name}", score)
    summary = snapshot.summary()
    _put(out, f"{PREFIX}/mean_erank", summary.get("mean_normalized_effective_rank"))
    _put(out, f"{PREFIX}/mean_stable_rank", summary.get("mean_normalized_stable_rank"))
    _put(out, f"{PREFIX}/mean_sigma_max", summary.get("mean_spectral_norm"))
    if agreement:
        _put(out, f"{PREFIX}/mean_agreement", float(np.mean(list(agreement.values()))))
    out[f"{PREFIX}/flagged"] = float(summary.get("flagged", 0))
    return out


def measure_scalars(extras: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``spectral/<measure>/<key>`` for the values of the user's extra measures."""
    out: dict[str, float] = {}
    for measure, values in extras.items():
        for key, value in values.items():
            _put(out, f"{PREFIX}/{measure}/{key}" if key else f"{PREFIX}/{measure}", value)
    return out


def _put(out: dict[str, float], key: str, value: Any) -> None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return
    if math.isfinite(number):
        out[key] = number
