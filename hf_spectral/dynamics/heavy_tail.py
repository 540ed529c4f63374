"""Heavy-tail columns for the dynamics tables, from what a snapshot stores.

A snapshot analyzed with ``heavy_tail=True`` carries α and friends in its table; one analyzed
without them (every callback record made before they existed, or with the default options) still
stores all singular values, and the paper-view ESD λ = σ² is all the power-law fit needs — so α is
computed here from the stored spectra (~1 ms for a 128x128 matrix, 808 of them in 0.9 s). The
Marchenko–Pastur fit is left out of this fallback (it costs ~10x the power-law fit: 7.8 s for the
same 808; ``mp_softrank`` stays NaN): analyze with ``heavy_tail=True`` for it. A conv kernel's
``ww`` view needs the kernel itself: only a snapshot analyzed with ``view="ww"`` has it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hf_spectral import metrics
from hf_spectral.store import STATUS_OK, Snapshot
from hf_spectral.tensor_info import DTYPE_EPS

HEAVY_TAIL_COLUMNS = [*metrics.HEAVY_TAIL_METRICS, "heavy_tail_flag"]


def with_heavy_tail(snapshot: Snapshot) -> pd.DataFrame:
    """The snapshot's table with the heavy-tail columns, computed from stored spectra when absent."""
    table = snapshot.table
    if "alpha" in table or not len(table):
        return table
    rows = []
    for name, status, dtype, m, n in zip(table["name"], table["status"], table["dtype"], table["rows"], table["cols"]):
        sigma = snapshot.spectra.get(name)
        if status != STATUS_OK or sigma is None or len(sigma) == 0:
            rows.append(metrics.undefined_heavy_tail_metrics("no stored spectrum" if status == STATUS_OK else status))
            continue
        eps = max(DTYPE_EPS.get(str(dtype), DTYPE_EPS["F32"]), DTYPE_EPS["F32"])
        rows.append(metrics.heavy_tail_metrics(metrics.esd(np.asarray(sigma)), (int(m), int(n)), eps=eps, mp=False))
    extra = pd.DataFrame(rows, index=table.index, columns=HEAVY_TAIL_COLUMNS)
    return pd.concat([table, extra], axis=1)
