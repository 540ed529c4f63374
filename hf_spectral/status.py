"""The words a snapshot's table uses for a row's state, spelled once (no torch, no pandas: every layer may import it).

``status``: every row is ok (metrics defined), flagged (decomposed, metrics undefined) or skipped
(not a matrix to decompose). ``flag`` says why: the metrics' flags below, or a skip reason.
"""

STATUS_OK = "ok"
STATUS_FLAGGED = "flagged"
STATUS_SKIPPED = "skipped"

FLAG_ZERO = "zero_matrix"  # all zeros: ranks undefined
FLAG_NON_FINITE = "non_finite"  # NaN or inf entries
FLAG_RANK_DEFICIENT = "rank_deficient"  # numerical rank below min(rows, cols): metrics still defined
UNDEFINED_FLAGS = frozenset({FLAG_ZERO, FLAG_NON_FINITE})  # metrics not defined: the row is flagged
