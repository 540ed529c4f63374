"""A series of snapshots → the tidy ``Dynamics`` tables (docs/definitions.md §2-§4): trajectories of every scalar
metric and of the full spectrum, agreement S_ii(t) with a reference and with the previous snapshot,
and consecutive-layer alignment A_ii(t). Pure computation: no files, no analysis.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from hf_spectral import metrics
from hf_spectral.dynamics.types import TABLES, Dynamics
from hf_spectral.errors import SpectralError
from hf_spectral.store import STATUS_FLAGGED, STATUS_SKIPPED, Snapshot, summarize

DEFAULT_TOP = 10

_KEYS = ["step", "label"]
COLUMNS: dict[str, list[str]] = {
    "trajectories": _KEYS + ["matrix", "component", "kind", "rows", "cols", "status", "flag",
                             *metrics.SPECTRUM_METRICS],
    "singular_values": _KEYS + ["matrix", "index", "sigma"],
    "agreement": _KEYS + ["matrix", "reference", "index", "value"],
    "agreement_previous": _KEYS + ["matrix", "reference", "index", "value"],
    "agreement_scores": _KEYS + ["matrix", "reference_kind", "reference", "score", "subspace", "k"],
    "alignment": _KEYS + ["pair", "prev", "next", "mode", "index", "value"],
    "alignment_scores": _KEYS + ["pair", "prev", "next", "mode", "score", "k", "flag"],
    "summary": _KEYS + ["matrices", "flagged", "mean_normalized_effective_rank", "mean_normalized_stable_rank",
                        "mean_spectral_norm", "mean_agreement", "mean_alignment"],
    "training": ["step", "metric", "value"],
}
assert set(COLUMNS) == set(TABLES)


def empty_table(name: str) -> pd.DataFrame:
    """The table ``name`` with its columns and no rows."""
    return pd.DataFrame({column: pd.Series(dtype=_dtype(column)) for column in COLUMNS[name]})


def compute_dynamics(snapshots: Sequence[Snapshot], *, reference: str | int = "final",
                     top: int = DEFAULT_TOP) -> Dynamics:
    """Tidy tables of how the spectra change over ``snapshots`` (in series order).

    reference: the snapshot agreement is measured against — ``"final"`` (default), ``"first"``, a
    label (``"checkpoint-500"``, ``"step1000"``), a step given as text (``"500"``) or a position
    (``0``, ``-1``). ``top``: how many leading diagonal entries the scores average (paper: 10).
    Agreement needs stored singular vectors (``top_k`` > 0); without them its tables are empty and
    ``meta["agreement"]`` says why.
    """
    snapshots = list(snapshots)
    if not snapshots:
        raise SpectralError("no snapshots to compute dynamics from: pass a non-empty series")
    top = int(top)
    if top < 1:
        raise SpectralError(f"top must be >= 1, got {top}")
    steps, by_position = _steps(snapshots)
    labels = [_label(s, i, None if by_position else steps[i]) for i, s in enumerate(snapshots)]
    ref = reference_index(reference, labels, steps)

    with _one_thread():
        against_reference = [(t, ref) for t in range(len(snapshots))]
        against_previous = [(t, t - 1) for t in range(1, len(snapshots))]
        agreement, scores_ref, skipped = _agreement(snapshots, steps, labels, against_reference, top)
        previous, scores_prev, skipped_prev = _agreement(snapshots, steps, labels, against_previous, top)
    scores = _frame("agreement_scores", [*_tag(scores_ref, "reference"), *_tag(scores_prev, "previous")])
    alignment, alignment_scores = _alignment(snapshots, steps, labels, top)

    meta: dict[str, Any] = {
        "snapshots": len(snapshots), "labels": labels, "steps": steps, "step_is_position": by_position,
        "reference": labels[ref], "reference_index": ref, "reference_step": steps[ref], "top": top,
        "top_k": _stored_k(snapshots),
    }
    meta.update(_series_meta(snapshots))
    if not any(s.vectors for s in snapshots):
        meta["agreement"] = "no singular vectors stored (analyzed with top_k=0): analyze with top_k >= 10 for agreement"
    if skipped or skipped_prev:
        meta["agreement_skipped"] = sorted({*skipped, *skipped_prev})
    if not any(len(s.alignment) for s in snapshots):
        meta["alignment"] = "no alignment stored (analyzed without alignment, or no pairs for this architecture)"

    return Dynamics(
        trajectories=_trajectories(snapshots, steps, labels),
        singular_values=_singular_values(snapshots, steps, labels),
        agreement=agreement,
        agreement_previous=previous,
        agreement_scores=scores,
        alignment=alignment,
        alignment_scores=alignment_scores,
        summary=_summary(snapshots, steps, labels, scores, alignment_scores),
        training=training_table(_log_history(snapshots)),
        meta=meta,
    )


# --------------------------------------------------------------------------------------------------
# Time axis and reference


def _steps(snapshots: list[Snapshot]) -> tuple[list[int], bool]:
    """Training steps when every snapshot has a distinct one; else positions (and True)."""
    steps = [s.meta.get("step") for s in snapshots]
    known = all(_is_step(step) for step in steps) and len(set(int(s) for s in steps)) == len(steps)
    if known:
        return [int(step) for step in steps], False
    return list(range(len(snapshots))), True


def _is_step(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, (int, np.integer)):
        return True
    return isinstance(value, float) and value.is_integer()


def _label(snapshot: Snapshot, position: int, step: int | None) -> str:
    label = snapshot.meta.get("label")
    if label:
        return str(label)
    return f"step-{step}" if step is not None else f"snapshot-{position}"


def reference_index(reference: str | int, labels: Sequence[str], steps: Sequence[int]) -> int:
    """Position of the reference snapshot (see :func:`compute_dynamics`)."""
    n = len(labels)
    if isinstance(reference, (int, np.integer)) and not isinstance(reference, bool):
        if -n <= int(reference) < n:
            return int(reference) % n
        raise SpectralError(
            f"reference position {reference} is outside the series of {n} snapshots; use 0..{n - 1} or -1")
    text = str(reference)
    if text in ("final", "last"):
        return n - 1
    if text == "first":
        return 0
    if text in labels:
        return list(labels).index(text)
    if text.lstrip("-").isdigit() and int(text) in steps:
        return list(steps).index(int(text))
    shown = ", ".join(list(labels)[:6]) + (", ..." if n > 6 else "")
    raise SpectralError(
        f"reference {text!r} names no snapshot of the series; use final, first, a step or a label ({shown})")


# --------------------------------------------------------------------------------------------------
# Trajectories


def _trajectories(snapshots: list[Snapshot], steps: list[int], labels: list[str]) -> pd.DataFrame:
    frames = []
    for snapshot, step, label in zip(snapshots, steps, labels):
        rows = snapshot.matrices
        if not len(rows):
            continue
        columns: dict[str, Any] = {"step": np.full(len(rows), step), "label": np.full(len(rows), label, dtype=object),
                                   "matrix": rows["name"].to_numpy()}
        for column in COLUMNS["trajectories"][3:]:
            columns[column] = rows[column].to_numpy() if column in rows else np.full(len(rows), _missing(column))
        frames.append(pd.DataFrame(columns))
    return _concat("trajectories", frames)


def _singular_values(snapshots: list[Snapshot], steps: list[int], labels: list[str]) -> pd.DataFrame:
    table = _Long("singular_values")
    for snapshot, step, label in zip(snapshots, steps, labels):
        for name in _model_order(snapshot, snapshot.spectra):
            sigma = np.asarray(snapshot.spectra[name], dtype=np.float64)
            table.add({"step": step, "label": label, "matrix": name}, index=np.arange(len(sigma)), sigma=sigma)
    return table.frame()


# --------------------------------------------------------------------------------------------------
# Agreement (Eq. 5)


def _agreement(snapshots: list[Snapshot], steps: list[int], labels: list[str], pairs: list[tuple[int, int]],
               top: int) -> tuple[pd.DataFrame, list[dict[str, Any]], list[str]]:
    """S_ii of snapshot t against snapshot r for each (t, r): long diagonal rows, score rows, skipped matrices."""
    table = _Long("agreement")
    scores: list[dict[str, Any]] = []
    skipped: list[str] = []
    orders: dict[int, list[str]] = {}
    # Zero or non-finite matrices have no defined singular vectors: no agreement for them.
    undefined = [_flagged(s) for s in snapshots]
    for t, r in pairs:
        current, other = snapshots[t], snapshots[r]
        if t not in orders:
            orders[t] = _model_order(current, current.vectors)
        for name in orders[t]:
            if name not in other.vectors or name in undefined[t] or name in undefined[r]:
                continue
            (u_t, v_t), (u_r, v_r) = current.vectors[name], other.vectors[name]
            if u_t.shape[0] != u_r.shape[0] or v_t.shape[0] != v_r.shape[0]:
                skipped.append(f"{name}: shape {u_t.shape[0]}x{v_t.shape[0]} at {labels[t]} vs "
                               f"{u_r.shape[0]}x{v_r.shape[0]} at {labels[r]}")
                continue
            diagonal, subspace = agreement_of(u_t, v_t, u_r, v_r, top)
            table.add({"step": steps[t], "label": labels[t], "matrix": name, "reference": labels[r]},
                      index=np.arange(len(diagonal)), value=diagonal)
            scores.append({"step": steps[t], "label": labels[t], "matrix": name, "reference": labels[r],
                           "score": metrics.top_score(torch.from_numpy(diagonal), top) if len(diagonal) else math.nan,
                           "subspace": subspace, "k": len(diagonal)})
    return table.frame(), scores, skipped


def agreement_of(u_a: np.ndarray, v_a: np.ndarray, u_b: np.ndarray, v_b: np.ndarray,
                 top: int = DEFAULT_TOP) -> tuple[np.ndarray, float]:
    """Agreement diagonal S_ii and top-``top`` subspace overlap of two stored decompositions.

    Identical vectors agree exactly (1): stored vectors are float32, whose float64 norms differ from
    1 by ~1e-7, so the formula alone would give 0.9999999 for a snapshot against itself.
    """
    k = min(u_a.shape[1], u_b.shape[1])
    if k == 0:
        return np.zeros(0), math.nan
    if _same(u_a, u_b) and _same(v_a, v_b):
        return np.ones(k), 1.0
    tensors = [torch.from_numpy(np.asarray(x)) for x in (u_a, v_a, u_b, v_b)]
    diagonal = metrics.agreement_diagonal(*tensors, k=k).numpy()
    subspace = metrics.agreement_subspace(*tensors, k=top)
    return diagonal, subspace


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Many tiny products (k×n by n×k): thread start-up costs more than the math. Measured on 2 busy
    cores: a 10×768 by 768×10 float64 product took 32 ms with 2 threads, 0.1 ms with one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a is b or (a.shape == b.shape and np.array_equal(a, b))


def _tag(rows: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [{**row, "reference_kind": kind} for row in rows]


# --------------------------------------------------------------------------------------------------
# Alignment (Eqs. 3-4), as the analyzer stored it


def _alignment(snapshots: list[Snapshot], steps: list[int], labels: list[str],
               top: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    table = _Long("alignment")
    scores: list[dict[str, Any]] = []
    for snapshot, step, label in zip(snapshots, steps, labels):
        if not len(snapshot.alignment):
            continue
        for row in snapshot.alignment.to_dict("records"):
            pair = str(row["label"])
            diagonal = np.asarray(snapshot.alignment_diagonals.get(pair, np.zeros(0)), dtype=np.float64)
            keys = {"step": step, "label": label, "pair": pair, "prev": row.get("prev"), "next": row.get("next"),
                    "mode": row.get("mode")}
            if len(diagonal):
                table.add(keys, index=np.arange(len(diagonal)), value=diagonal)
            # Re-scored from the diagonal so that ``top`` applies to alignment as to agreement.
            score = metrics.top_score(torch.from_numpy(diagonal), top) if len(diagonal) else math.nan
            scores.append({**keys, "score": score, "k": len(diagonal), "flag": str(row.get("flag") or "")})
    return table.frame(), _frame("alignment_scores", scores)


# --------------------------------------------------------------------------------------------------
# Summary and training metrics


def _summary(snapshots: list[Snapshot], steps: list[int], labels: list[str], scores: pd.DataFrame,
             alignment_scores: pd.DataFrame) -> pd.DataFrame:
    agreement = _means_by_step(scores[scores["reference_kind"] == "reference"])
    alignment = _means_by_step(alignment_scores)
    rows = []
    for snapshot, step, label in zip(snapshots, steps, labels):
        counts = summarize(snapshot.table) if len(snapshot.table) else {"matrices": 0, "flagged": 0}
        rows.append({
            "step": step, "label": label, "matrices": counts["matrices"], "flagged": counts["flagged"],
            "mean_normalized_effective_rank": counts.get("mean_normalized_effective_rank", math.nan),
            "mean_normalized_stable_rank": counts.get("mean_normalized_stable_rank", math.nan),
            "mean_spectral_norm": counts.get("mean_spectral_norm", math.nan),
            "mean_agreement": agreement.get(step, math.nan),
            "mean_alignment": alignment.get(step, math.nan),
        })
    return _frame("summary", rows)


def training_table(log_history: Sequence[dict[str, Any]] | None) -> pd.DataFrame:
    """Trainer-style log history (dicts with ``step`` and numbers) → rows (step, metric, value)."""
    rows = []
    for entry in log_history or []:
        step = entry.get("step")
        if not _is_step(step):
            continue
        for metric, value in entry.items():
            if metric == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            rows.append({"step": int(step), "metric": str(metric), "value": float(value)})
    return _frame("training", rows)


def _log_history(snapshots: list[Snapshot]) -> list[dict[str, Any]] | None:
    """The longest log history carried by the snapshots (a record's, or the last Trainer checkpoint's)."""
    found = [s.meta.get("log_history") for s in snapshots if isinstance(s.meta.get("log_history"), list)]
    return max(found, key=len) if found else None


def _series_meta(snapshots: list[Snapshot]) -> dict[str, Any]:
    """Sources, missing revisions and identical checkpoints as ``load_series`` recorded them."""
    series = next((s.meta["series"] for s in reversed(snapshots) if isinstance(s.meta.get("series"), dict)), {})
    sources = [str(x) for x in series.get("sources", [])]
    source = ", ".join(sources) if sources else snapshots[-1].meta.get("source")
    return {"source": source, "sources": sources, "missing": series.get("missing", []),
            "identical": series.get("identical", [])}


# --------------------------------------------------------------------------------------------------
# Frames


def _model_order(snapshot: Snapshot, present: dict[str, Any]) -> list[str]:
    """Names in ``present`` in the snapshot's model order (then any others)."""
    table = snapshot.table
    names = table.loc[table["status"] != STATUS_SKIPPED, "name"] if "name" in table and "status" in table else []
    ordered = [n for n in names if n in present]
    seen = set(ordered)
    return ordered + [n for n in present if n not in seen]


def _flagged(snapshot: Snapshot) -> set[str]:
    table = snapshot.table
    if "status" not in table or "name" not in table:
        return set()
    return set(table.loc[table["status"] == STATUS_FLAGGED, "name"])


def _stored_k(snapshots: list[Snapshot]) -> int:
    ks = [u.shape[1] for s in snapshots for u, _ in s.vectors.values()]
    return int(min(ks)) if ks else 0


def _means_by_step(scores: pd.DataFrame) -> dict[int, float]:
    """Mean of the finite ``score`` values at each step (steps are unique; labels may repeat)."""
    values = scores.assign(score=scores["score"].astype(np.float64))
    values = values[np.isfinite(values["score"])]
    return {int(step): float(mean) for step, mean in values.groupby("step")["score"].mean().items()}


def _frame(name: str, rows: list[dict[str, Any]]) -> pd.DataFrame:
    if not rows:
        return empty_table(name)
    frame = pd.DataFrame(rows)
    return frame[COLUMNS[name] + [c for c in frame.columns if c not in COLUMNS[name]]]


class _Long:
    """A long table gathered in blocks (scalar keys repeated along arrays) and built once: one
    DataFrame per matrix and snapshot would dominate the run time of long series."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.blocks: list[tuple[dict[str, Any], dict[str, np.ndarray]]] = []

    def add(self, keys: dict[str, Any], **arrays: np.ndarray) -> None:
        self.blocks.append((keys, arrays))

    def frame(self) -> pd.DataFrame:
        if not self.blocks:
            return empty_table(self.name)
        lengths = [len(next(iter(arrays.values()))) for _, arrays in self.blocks]
        columns: dict[str, np.ndarray] = {}
        for column in COLUMNS[self.name]:
            if column in self.blocks[0][1]:
                columns[column] = np.concatenate([arrays[column] for _, arrays in self.blocks])
            elif column in _TEXT_COLUMNS:
                # Text keys repeat over millions of rows (a label per singular value): taken from an
                # index of the few distinct values, 20x faster than converting a repeated object array.
                keys = [None if k[column] is None else str(k[column]) for k, _ in self.blocks]
                distinct = list(dict.fromkeys(keys))
                position = {key: i for i, key in enumerate(distinct)}
                codes = np.repeat(np.array([position[key] for key in keys], dtype=np.int64), lengths)
                columns[column] = pd.Index(distinct, dtype="str").take(codes)
            else:
                columns[column] = np.repeat(np.array([k[column] for k, _ in self.blocks]), lengths)
        return pd.DataFrame(columns)


def _concat(name: str, frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return empty_table(name)
    frame = pd.concat(frames, ignore_index=True)
    return frame[COLUMNS[name] + [c for c in frame.columns if c not in COLUMNS[name]]]


_INT_COLUMNS = {"step", "index", "rows", "cols", "matrices", "flagged", "k"}
_TEXT_COLUMNS = {"label", "matrix", "component", "kind", "status", "flag", "reference", "reference_kind", "pair",
                 "prev", "next", "mode", "metric"}


def _dtype(column: str) -> str:
    if column in _INT_COLUMNS:
        return "int64"
    if column in _TEXT_COLUMNS:
        return "object"
    return "float64"


def _missing(column: str) -> Any:
    return "" if column in _TEXT_COLUMNS else math.nan


