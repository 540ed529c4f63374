"""Which planned matrices of a model pair for alignment: the model family's pairing rule (from the
registry), falling back to the generic sequential rule when names do not follow the family's grammar."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from hf_spectral.views.pairs import Sequential
from hf_spectral.views.registry import rules_for
from hf_spectral.views.types import AlignmentPair, MatrixSpec


def alignment_pairs(specs: Sequence[MatrixSpec], *, config: Mapping[str, Any] | None) -> list[AlignmentPair]:
    """The alignment pairs among ``specs`` (planned matrices, in model order) for the model ``config`` describes."""
    rules = rules_for(config)
    specs = list(specs)
    pairs = rules.pairing.pairs(specs, rules)
    if not pairs and not isinstance(rules.pairing, Sequential):
        pairs = Sequential().pairs(specs, rules)  # names did not follow the family's grammar
    seen: set[tuple[Any, ...]] = set()
    out = []
    for pair in pairs:
        key = (pair.prev, pair.next, pair.mode)
        if key not in seen:
            seen.add(key)
            out.append(pair)
    return out
