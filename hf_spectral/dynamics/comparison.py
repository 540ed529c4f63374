"""The comparison of two checkpoints as tables, computed from their snapshots (A, B and W_A − W_B):
per-matrix agreement of singular vectors (paper Eq. 5), both spectra, and the spectrum of the difference.

The snapshots are made by ``hf_spectral.comparison.compare`` (it drives the engine); this module only
reads them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hf_spectral import metrics
from hf_spectral.dynamics.compute import agreement_of
from hf_spectral.dynamics.io import write_tables
from hf_spectral.errors import SpectralError
from hf_spectral.store import Snapshot

META_FILE = "comparison.json"
TABLE_COLUMNS = {
    "layers": ["matrix", "component", "kind", "rows", "cols", "agreement", "subspace", "k",
               "erank_a", "erank_b", "srank_a", "srank_b", "sigma_max_a", "sigma_max_b", "frobenius_a", "frobenius_b",
               "diff_sigma_max", "diff_frobenius", "relative_difference", "diff_erank", "diff_flag"],
    "agreement": ["matrix", "index", "value"],
    "spectra": ["matrix", "model", "index", "sigma"],
    "mismatches": ["matrix", "reason"],
}


@dataclass
class Comparison:
    """Two checkpoints side by side, as tidy tables.

    layers:     one row per matrix present in both with the same shape (A's model order):
                agreement (mean of the top-10 S_ii), subspace (top-10 subspace overlap), k, normalized
                effective/stable rank, σ_max and Frobenius norm of A and B, and of W_A − W_B
                (``relative_difference`` = ‖W_A − W_B‖_F / ‖W_B‖_F).
    agreement:  S_ii per matrix (matrix, index, value).
    spectra:    singular values (matrix, model = "a" | "b" | "difference", index, sigma).
    mismatches: matrices not compared (only in one model, or shapes differ) and why.
    meta:       where A and B came from, options, ``top``.
    a, b, difference: the three snapshots (not saved by ``save``).
    """

    layers: pd.DataFrame
    agreement: pd.DataFrame
    spectra: pd.DataFrame
    mismatches: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    a: Snapshot | None = None
    b: Snapshot | None = None
    difference: Snapshot | None = None

    def save(self, folder: str | os.PathLike) -> Path:
        """``layers``/``agreement``/``spectra``/``mismatches`` parquet files + ``comparison.json``, atomically."""
        tables = {name: getattr(self, name) for name in TABLE_COLUMNS}
        return write_tables(tables, {"tables": list(TABLE_COLUMNS), **self.meta}, folder, META_FILE)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Comparison":
        """Read a folder written by :meth:`save`."""
        path = Path(folder)
        if not (path / META_FILE).is_file():
            raise SpectralError(f"{path} holds no {META_FILE}: pass a folder written by Comparison.save "
                                "/ `hf-spectral compare --output`")
        meta = json.loads((path / META_FILE).read_text())
        meta.pop("tables", None)
        tables = {}
        for name in TABLE_COLUMNS:
            file = path / f"{name}.parquet"
            tables[name] = pd.read_parquet(file) if file.is_file() else _empty(name)
        return cls(**tables, meta=meta)


# --------------------------------------------------------------------------------------------------
# Tables


def match_matrices(a: Snapshot, b: Snapshot) -> tuple[list[str], list[dict[str, str]]]:
    """Matrices of A also in B with the same shape (A's order), and the others with a reason."""
    rows_a = {r["name"]: r for r in a.matrices.to_dict("records")}
    rows_b = {r["name"]: r for r in b.matrices.to_dict("records")}
    shared, mismatches = [], []
    for name, row in rows_a.items():
        other = rows_b.get(name)
        if other is None:
            mismatches.append({"matrix": name, "reason": "only in A"})
        elif (row["rows"], row["cols"]) != (other["rows"], other["cols"]):
            mismatches.append({"matrix": name, "reason": f"shape {row['rows']}x{row['cols']} in A, "
                                                         f"{other['rows']}x{other['cols']} in B"})
        else:
            shared.append(name)
    mismatches += [{"matrix": name, "reason": "only in B"} for name in rows_b if name not in rows_a]
    return shared, mismatches


def comparison_tables(a: Snapshot, b: Snapshot, d: Snapshot, shared: list[str], mismatches: list[dict[str, str]],
                      top: int, meta: dict[str, Any]) -> Comparison:
    """The ``Comparison`` of snapshots ``a`` and ``b`` (and ``d`` of W_A − W_B) over the ``shared`` matrices."""
    rows_a = a.matrices.set_index("name")
    rows_b = b.matrices.set_index("name")
    rows_d = d.table.drop_duplicates("name").set_index("name")  # skipped rows too: their flag says why
    layers, agreement, spectra = [], [], []
    for name in shared:
        ra, rb = rows_a.loc[name], rows_b.loc[name]
        diagonal, subspace = _agreement(a, b, name, top)
        if len(diagonal):
            agreement.append(pd.DataFrame({"matrix": name, "index": np.arange(len(diagonal)), "value": diagonal}))
        for model, snapshot in (("a", a), ("b", b), ("difference", d)):
            if name in snapshot.spectra:
                sigma = np.asarray(snapshot.spectra[name], dtype=np.float64)
                spectra.append(pd.DataFrame({"matrix": name, "model": model, "index": np.arange(len(sigma)),
                                             "sigma": sigma}))
        rd = rows_d.loc[name] if name in rows_d.index else None
        diff_fro = _get(rd, "frobenius_norm")
        layers.append({
            "matrix": name, "component": ra["component"], "kind": ra["kind"],
            "rows": int(ra["rows"]), "cols": int(ra["cols"]),
            "agreement": metrics.top_score(torch.from_numpy(diagonal), top) if len(diagonal) else math.nan,
            "subspace": subspace, "k": len(diagonal),
            "erank_a": _get(ra, "normalized_effective_rank"), "erank_b": _get(rb, "normalized_effective_rank"),
            "srank_a": _get(ra, "normalized_stable_rank"), "srank_b": _get(rb, "normalized_stable_rank"),
            "sigma_max_a": _get(ra, "spectral_norm"), "sigma_max_b": _get(rb, "spectral_norm"),
            "frobenius_a": _get(ra, "frobenius_norm"), "frobenius_b": _get(rb, "frobenius_norm"),
            "diff_sigma_max": _get(rd, "spectral_norm"), "diff_frobenius": diff_fro,
            "relative_difference": _ratio(diff_fro, _get(rb, "frobenius_norm")),
            "diff_erank": _get(rd, "normalized_effective_rank"),
            "diff_flag": str(rd["flag"]) if rd is not None else "not decomposed",
        })
    if not a.vectors or not b.vectors:
        meta["agreement"] = "no singular vectors (top_k=0): compare with top_k >= 10 for agreement"
    return Comparison(
        layers=_frame("layers", layers), agreement=_concat("agreement", agreement), spectra=_concat("spectra", spectra),
        mismatches=_frame("mismatches", mismatches), meta=meta, a=a, b=b, difference=d,
    )


def _agreement(a: Snapshot, b: Snapshot, name: str, top: int) -> tuple[np.ndarray, float]:
    if name not in a.vectors or name not in b.vectors:
        return np.zeros(0), math.nan
    (u_a, v_a), (u_b, v_b) = a.vectors[name], b.vectors[name]
    return agreement_of(u_a, v_a, u_b, v_b, top)


def _get(row: pd.Series | None, column: str) -> float:
    if row is None or column not in row:
        return math.nan
    value = row[column]
    return float(value) if value is not None else math.nan


def _ratio(num: float, den: float) -> float:
    return num / den if math.isfinite(num) and math.isfinite(den) and den > 0 else math.nan


def _frame(name: str, rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=TABLE_COLUMNS[name]) if rows else _empty(name)


def _concat(name: str, frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True)[TABLE_COLUMNS[name]] if frames else _empty(name)


def _empty(name: str) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object" if c in _TEXT else "float64") for c in TABLE_COLUMNS[name]})


_TEXT = {"matrix", "component", "kind", "diff_flag", "model", "reason"}
