"""Compare two checkpoints (two LMC branches, a pruned and a dense model, a fine-tune and its base).

All three decompositions (A, B and W_A − W_B) go through the engine; W_A − W_B is read through a
``DifferenceReader`` (``hf_spectral.sources.difference``); the tables are computed from the three
snapshots by ``hf_spectral.dynamics.comparison``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import torch

from hf_spectral.dynamics.comparison import Comparison, comparison_tables, match_matrices
from hf_spectral.dynamics.compute import DEFAULT_TOP
from hf_spectral.engine import AnalysisOptions, analyze_checkpoint, checkpoint_meta
from hf_spectral.errors import SpectralError
from hf_spectral.sources import resolve
from hf_spectral.sources.difference import difference_checkpoint
from hf_spectral.sources.renamed import RenamedReader
from hf_spectral.sources.types import Checkpoint
from hf_spectral.views import base_model_prefix

__all__ = ["Comparison", "compare"]


def compare(
    a: str | os.PathLike,
    b: str | os.PathLike,
    *,
    revision_a: str | None = None,
    revision_b: str | None = None,
    top_k: int = 20,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    variant: str | None = None,
    top: int = DEFAULT_TOP,
    **analysis_options: Any,
) -> Comparison:
    """Compare checkpoint ``a`` with checkpoint ``b`` (files, folders or Hub ids, each at an optional
    revision): agreement of their top-``top_k`` singular vectors, both spectra and the spectrum of
    W_A − W_B, for every matrix both hold with the same shape. A base model and a head model of it (a
    fine-tune saved as ``BertForSequenceClassification``) are matched by name as transformers does
    (:func:`match_base_prefix`)."""
    analysis_options.setdefault("alignment", False)
    options = AnalysisOptions(include=include, exclude=exclude, top_k=top_k, **analysis_options)
    first = _one_checkpoint(a, revision_a, variant)
    try:
        second = _one_checkpoint(b, revision_b, variant)
    except BaseException:
        first.close()
        raise
    try:
        renamed = match_base_prefix(first, second)
        snap_a = analyze_checkpoint(first, options)
        snap_b = analyze_checkpoint(second, options)
        shared, mismatches = match_matrices(snap_a, snap_b)
        if not shared:
            raise SpectralError(
                f"{first.source} and {second.source} share no weight matrix of the same shape; compare checkpoints "
                "of the same architecture (or select matrices with --include)"
            )
        precision = torch.float64 if options.precision == "float64" else torch.float32
        difference = difference_checkpoint(first, second, dtype=precision)
        try:
            snap_d = analyze_checkpoint(difference, dataclasses.replace(options, top_k=0, alignment=False))
        finally:
            difference.close()
    finally:
        first.close()
        second.close()
    meta = {"a": _describe(first), "b": _describe(second), "top": int(top), "options": options.to_meta(),
            "renamed": renamed}
    return comparison_tables(snap_a, snap_b, snap_d, shared, mismatches, int(top), meta)


def match_base_prefix(a: Checkpoint, b: Checkpoint) -> list[dict[str, str]]:
    """Line up a base model with a head model of it, as ``from_pretrained`` does when it loads one into
    the other: when one side's tensor names carry the architecture's ``base_model_prefix`` (``bert.``
    in ``BertForSequenceClassification``) and the other side's do not, that prefix is stripped from the
    first side's names (its head's own weights, ``classifier.*``, keep theirs and stay unmatched).
    Returns what was renamed, one ``{"side", "component", "prefix"}`` per part (in place)."""
    theirs = {part.component: part for part in b.parts}
    renamed: list[dict[str, str]] = []
    for mine in a.parts:
        other = theirs.get(mine.component)
        if other is None:
            continue
        prefix = base_model_prefix(mine.config) or base_model_prefix(other.config)
        if prefix is None:
            continue
        lead = f"{prefix}."
        prefixed = [any(t.name.startswith(lead) for t in part.reader.tensors()) for part in (mine, other)]
        if prefixed[0] == prefixed[1]:
            continue
        side, part = ("a", mine) if prefixed[0] else ("b", other)
        part.reader = RenamedReader(part.reader, lambda name, lead=lead: name.removeprefix(lead))
        renamed.append({"side": side, "component": mine.component, "prefix": lead})
    return renamed


def _one_checkpoint(source: str | os.PathLike, revision: str | None, variant: str | None) -> Checkpoint:
    checkpoints = resolve(str(source), revision=revision, variant=variant)
    if len(checkpoints) != 1:
        for c in checkpoints:
            c.close()
        labels = ", ".join(c.label for c in checkpoints[:4])
        raise SpectralError(
            f"{source} holds {len(checkpoints)} checkpoints ({labels}, ...); compare two single checkpoints, "
            f"e.g. {checkpoints[-1].path}"
        )
    return checkpoints[0]


def _describe(checkpoint: Checkpoint) -> dict[str, Any]:
    return {**checkpoint_meta(checkpoint), "path": str(checkpoint.path)}
