"""Greedy CTC decoding and character / word error rates (hf_spectral.recipe_support.speech), against
hand-computed cases and an independent brute-force edit distance."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest

import hf_spectral
from hf_spectral.recipe_support.speech import edit_distance


def _brute_force_distance(a: str, b: str) -> int:
    """Edit distance by breadth-first search over single edits (independent of the DP under test)."""
    alphabet = sorted(set(a + b))
    frontier, seen, d = {a}, {a}, 0
    while b not in frontier:
        d += 1
        nxt = set()
        for s in frontier:
            for i in range(len(s) + 1):
                nxt.add(s[:i] + s[i + 1:])
                for c in alphabet:
                    nxt.add(s[:i] + c + s[i:])
                    nxt.add(s[:i] + c + s[i + 1:])
        frontier = nxt - seen
        seen |= nxt
    return d


@pytest.mark.parametrize("a, b, expected", [
    ("", "", 0), ("abc", "", 3), ("", "ab", 2), ("kitten", "sitting", 3), ("flaw", "lawn", 2),
    ("intention", "execution", 5), ("abc", "abc", 0), ("ab", "ba", 2),
])
def test_edit_distance_hand_computed(a, b, expected):
    assert edit_distance(a, b) == expected


def test_edit_distance_matches_brute_force():
    for a, b in itertools.product(["", "a", "ab", "aab", "bca"], ["", "b", "ba", "abb", "cab"]):
        assert edit_distance(a, b) == _brute_force_distance(a, b), (a, b)


def test_cer_and_wer_hand_computed():
    refs = ["one two three", "four five"]
    hyps = ["one too three", "four"]
    # CER: "two"→"too" is 1 substitution; "four five"→"four" deletes " five" (5); 13 + 9 = 22 reference chars
    assert hf_spectral.character_error_rate(refs, hyps) == pytest.approx(6 / 22)
    # WER: 1 substitution + 1 deletion over 5 reference words
    assert hf_spectral.word_error_rate(refs, hyps) == pytest.approx(2 / 5)
    assert hf_spectral.word_error_rate(["a b"], ["a b c d"]) == pytest.approx(1.0)  # insertions can exceed 1 too
    with pytest.raises(ValueError):
        hf_spectral.word_error_rate([""], [""])


def test_greedy_ctc_merges_repeats_then_drops_blanks():
    # blank 0: "a a _ a b b _ _ b" → a a b b ... the blank separates the doubled letter
    assert hf_spectral.ctc_greedy_ids([1, 1, 0, 1, 2, 2, 0, 0, 2, -100, -100], blank_id=0) == [1, 1, 2, 2]
    assert hf_spectral.ctc_greedy_ids([0, 0, 0], blank_id=0) == []


def test_ctc_metrics_from_logits_and_ids():
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, "a": 3, "b": 4}
    metrics = hf_spectral.ctc_metrics(vocab)
    frames = np.array([[3, 3, 0, 2, 4, 4, 0], [4, 0, 4, 0, 0, -100, -100]])  # "a b" and "bb"
    labels = np.array([[3, 2, 4, -100], [4, 4, 3, -100]])  # "a b" and "bba"
    out = metrics(SimpleNamespace(predictions=frames, label_ids=labels))
    assert out == {"cer": pytest.approx(1 / 6), "wer": pytest.approx(1 / 3)}
    logits = np.eye(5)[np.where(frames < 0, 0, frames)]  # one-hot logits give the same decoding
    assert metrics(SimpleNamespace(predictions=logits, label_ids=labels)) == out
