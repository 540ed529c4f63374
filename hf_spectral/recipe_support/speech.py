"""Speech-recognition metrics for the CTC recipes, offline: greedy CTC decoding and character / word
error rates (Levenshtein distance over characters / words, summed over the corpus and divided by the
reference length, as ``jiwer`` and ``evaluate``'s ``cer`` / ``wer`` do).

    compute_metrics = hf_spectral.ctc_metrics(tokenizer.get_vocab())
    Trainer(..., compute_metrics=compute_metrics, preprocess_logits_for_metrics=hf_spectral.ctc_argmax)

Pure python / numpy: no model, file or Hub access.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np

IGNORE_INDEX = -100  # what the Trainer pads labels and gathered predictions with


def edit_distance(reference: Sequence[Hashable], hypothesis: Sequence[Hashable]) -> int:
    """Levenshtein distance: the fewest substitutions, insertions and deletions turning ``reference`` into ``hypothesis``."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, start=1):
        current = [i]
        for j, hyp in enumerate(hypothesis, start=1):
            current.append(min(previous[j] + 1,  # deletion
                               current[j - 1] + 1,  # insertion
                               previous[j - 1] + (ref != hyp)))  # substitution or match
        previous = current
    return previous[-1]


def _error_rate(references: Sequence[Sequence[Hashable]], hypotheses: Sequence[Sequence[Hashable]], what: str) -> float:
    if len(references) != len(hypotheses):
        raise ValueError(f"{what}: {len(references)} references but {len(hypotheses)} hypotheses")
    total = sum(len(r) for r in references)
    if total == 0:
        raise ValueError(f"{what}: the references are empty, so the error rate is undefined")
    return sum(edit_distance(r, h) for r, h in zip(references, hypotheses)) / total


def character_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus CER: total character edits / total reference characters (spaces count as characters)."""
    return _error_rate([list(r) for r in references], [list(h) for h in hypotheses], "character_error_rate")


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER: total word edits / total reference words (words split on whitespace)."""
    return _error_rate([r.split() for r in references], [h.split() for h in hypotheses], "word_error_rate")


def ctc_greedy_ids(frame_ids: Sequence[int], blank_id: int) -> list[int]:
    """Greedy (best-path) CTC decoding of per-frame argmax ids: merge repeats, then drop blanks (and padding)."""
    out: list[int] = []
    previous = None
    for token in frame_ids:
        token = int(token)
        if token != previous and token != blank_id and token != IGNORE_INDEX:
            out.append(token)
        previous = token
    return out


def ids_to_text(ids: Sequence[int], id_to_token: Mapping[int, str], word_delimiter: str = "|",
                skip: Sequence[int] = ()) -> str:
    """Label ids → text, the word delimiter becoming a space (padding and ``skip`` ids dropped)."""
    tokens = [id_to_token[int(i)] for i in ids if int(i) != IGNORE_INDEX and int(i) not in skip]
    return " ".join("".join(" " if t == word_delimiter else t for t in tokens).split())


def ctc_argmax(logits: Any, labels: Any) -> Any:
    """``preprocess_logits_for_metrics`` for CTC models: keep only the per-frame argmax (logits would
    be gathered whole over the evaluation set)."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def ctc_metrics(vocab: Mapping[str, int], *, blank_token: str = "<pad>", word_delimiter: str = "|",
                unk_token: str = "<unk>") -> Callable[[Any], dict[str, float]]:
    """A Trainer ``compute_metrics`` returning ``{"cer", "wer"}`` with greedy CTC decoding.

    ``vocab``: token → id (``tokenizer.get_vocab()``), the blank being ``blank_token`` (wav2vec2's
    CTC blank is its pad token). Predictions are per-frame ids (see ``ctc_argmax``) or logits.
    """
    if blank_token not in vocab:
        raise ValueError(f"ctc_metrics: the blank token {blank_token!r} is not in the vocabulary")
    id_to_token = {int(i): t for t, i in vocab.items()}
    blank = int(vocab[blank_token])
    skip = tuple(int(vocab[t]) for t in (blank_token, unk_token) if t in vocab)

    def compute(eval_pred: Any) -> dict[str, float]:
        predictions, label_ids = eval_pred.predictions, eval_pred.label_ids
        predictions = np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)
        if predictions.ndim == 3:
            predictions = predictions.argmax(-1)
        hypotheses = [ids_to_text(ctc_greedy_ids(row, blank), id_to_token, word_delimiter, skip) for row in predictions]
        references = [ids_to_text(row, id_to_token, word_delimiter, skip) for row in np.asarray(label_ids)]
        return {"cer": character_error_rate(references, hypotheses), "wer": word_error_rate(references, hypotheses)}

    return compute
