"""hf_spectral.dynamics.compute_dynamics and save/load: agreement of a known rotation, exact self
agreement, references, alignment/summary tables, empty tables without vectors, parquet round trip."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from hf_spectral.dynamics import TABLES, compute_dynamics, load_dynamics, save_dynamics
from hf_spectral.series import load_series
from hf_spectral.dynamics.compute import COLUMNS
from hf_spectral.engine import AnalysisOptions, analyze_model
from hf_spectral.errors import SpectralError
from tiny_models import TinyMLP

THETA = 0.6  # rotation of the top two left singular directions of "left.weight"
PHI = 1.1  # rotation of the 2nd and 3rd right singular directions of "right.weight"
SIGMA = np.array([9.0, 7.0, 5.0, 4.0, 3.0, 2.5, 2.0, 1.5, 1.2, 1.0, 0.8, 0.5])


def orthonormal(rows: int, cols: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((rows, cols)))
    return q


def rotation(size: int, i: int, j: int, angle: float) -> np.ndarray:
    r = np.eye(size)
    r[[i, j], [i, j]] = math.cos(angle)
    r[i, j], r[j, i] = -math.sin(angle), math.sin(angle)
    return r


@pytest.fixture(scope="module")
def rotated(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two checkpoints with known singular vectors: "final" and "rotated" (= final with two singular
    directions mixed by a known angle), as float64 numpy matrices and saved float32 files."""
    root = tmp_path_factory.mktemp("rotation")
    u, v = orthonormal(16, 12, 0), orthonormal(12, 12, 1)
    u2, v2 = orthonormal(20, 12, 2), orthonormal(16, 12, 3)
    final = {"left.weight": u @ np.diag(SIGMA) @ v.T, "right.weight": u2 @ np.diag(SIGMA) @ v2.T}
    moved = {"left.weight": u @ rotation(12, 0, 1, THETA) @ np.diag(SIGMA) @ v.T,
             "right.weight": u2 @ np.diag(SIGMA) @ (v2 @ rotation(12, 1, 2, PHI)).T}
    paths = {}
    for name, weights in (("rotated", moved), ("final", final)):
        path = root / f"{name}.safetensors"
        save_file({k: torch.from_numpy(w).float().contiguous() for k, w in weights.items()}, path)
        paths[name] = path
    return {"paths": paths, "final": final, "rotated": moved}


def numpy_agreement(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """S_ii = |u_iᵀu'_i|·|v_iᵀv'_i| from float64 numpy SVDs (signs cancel in the absolute values)."""
    ua, _, vat = np.linalg.svd(a.astype(np.float32).astype(np.float64), full_matrices=False)
    ub, _, vbt = np.linalg.svd(b.astype(np.float32).astype(np.float64), full_matrices=False)
    return np.abs(np.sum(ua[:, :k] * ub[:, :k], axis=0)) * np.abs(np.sum(vat[:k].T * vbt[:k].T, axis=0))


def test_known_rotation_gives_known_agreement(rotated: dict) -> None:
    snapshots = load_series([rotated["paths"]["rotated"], rotated["paths"]["final"]], top_k=12, progress=False)
    dyn = compute_dynamics(snapshots)
    assert dyn.meta["reference"] == "final.safetensors"
    at = dyn.agreement[dyn.agreement["label"] == "rotated.safetensors"]
    for name, (i, j, angle) in {"left.weight": (0, 1, THETA), "right.weight": (1, 2, PHI)}.items():
        got = at[at["matrix"] == name].sort_values("index")["value"].to_numpy()
        expected = numpy_agreement(rotated["rotated"][name], rotated["final"][name], 12)
        np.testing.assert_allclose(got, expected, atol=1e-6)
        known = np.ones(12)
        known[[i, j]] = abs(math.cos(angle))
        np.testing.assert_allclose(got, known, atol=1e-6)
        score = dyn.agreement_scores.query("matrix == @name and reference_kind == 'reference' and step == 0")
        assert score["score"].item() == pytest.approx(known[:10].mean(), abs=1e-6)
        # The rotation stays inside the top-10 subspaces: their overlap is 1.
        assert score["subspace"].item() == pytest.approx(1.0, abs=1e-6)
        # Agreement with the previous snapshot: the same pair of snapshots, seen from the later one.
        previous = dyn.agreement_previous.query("matrix == @name").sort_values("index")["value"].to_numpy()
        np.testing.assert_allclose(previous, known, atol=1e-6)


def test_agreement_of_a_snapshot_with_itself_is_exactly_one(rotated: dict) -> None:
    snapshots = load_series([rotated["paths"]["rotated"], rotated["paths"]["final"]], top_k=12, progress=False)
    for reference in ("final", -1, "final.safetensors", 1):
        dyn = compute_dynamics(snapshots, reference=reference)
        mine = dyn.agreement[dyn.agreement["label"] == "final.safetensors"]
        assert len(mine) == 2 * 12 and (mine["value"] == 1.0).all() and (mine["reference"] == "final.safetensors").all()
    dyn = compute_dynamics(snapshots, reference="first")
    mine = dyn.agreement[dyn.agreement["label"] == "rotated.safetensors"]
    assert (mine["value"] == 1.0).all() and dyn.meta["reference_index"] == 0
    scores = dyn.agreement_scores[dyn.agreement_scores["reference_kind"] == "reference"]
    assert (scores[scores["label"] == "rotated.safetensors"][["score", "subspace"]] == 1.0).all().all()


def test_reference_must_name_a_snapshot(rotated: dict) -> None:
    snapshots = load_series([rotated["paths"]["rotated"], rotated["paths"]["final"]], top_k=4, progress=False)
    with pytest.raises(SpectralError, match=r"reference 'step-9' names no snapshot.*rotated.safetensors"):
        compute_dynamics(snapshots, reference="step-9")
    with pytest.raises(SpectralError, match=r"outside the series of 2"):
        compute_dynamics(snapshots, reference=5)
    with pytest.raises(SpectralError, match=r"no snapshots"):
        compute_dynamics([])


def test_without_vectors_agreement_tables_are_empty_with_columns(rotated: dict) -> None:
    snapshots = load_series([rotated["paths"]["rotated"], rotated["paths"]["final"]], top_k=0, progress=False)
    dyn = compute_dynamics(snapshots)
    for name in ("agreement", "agreement_previous", "agreement_scores"):
        table = getattr(dyn, name)
        assert len(table) == 0 and list(table.columns) == COLUMNS[name]
    assert "top_k" in dyn.meta["agreement"]
    assert len(dyn.singular_values) == 2 * (12 + 16)  # all min(m, n) values of 16x12 and 20x16; no vectors needed
    assert dyn.summary["mean_agreement"].isna().all()


# ---------------------------------------------------------------- tables built from live snapshots


@pytest.fixture(scope="module")
def mlp_series() -> list:
    """Three snapshots of a TinyMLP (with alignment), its weights scaled differently each time."""
    torch.manual_seed(0)
    model = TinyMLP()
    snapshots = []
    for step in (10, 20, 30):
        with torch.no_grad():
            model.net[0].weight.mul_(1.5)
        snapshots.append(analyze_model(model, AnalysisOptions(top_k=6, alignment=True, progress=False), step=step))
    return snapshots


def test_alignment_and_summary_tables(mlp_series: list) -> None:
    dyn = compute_dynamics(mlp_series, top=3)
    assert dyn.steps == [10, 20, 30] and dyn.meta["labels"] == ["step-10", "step-20", "step-30"]
    for snapshot in mlp_series:
        step = snapshot.step
        assert len(snapshot.alignment) >= 2
        for label in snapshot.alignment["label"]:
            diagonal = snapshot.alignment_diagonals[label]
            got = dyn.alignment.query("step == @step and pair == @label").sort_values("index")["value"].to_numpy()
            np.testing.assert_array_equal(got, diagonal)
            score = dyn.alignment_scores.query("step == @step and pair == @label")["score"].item()
            assert score == pytest.approx(float(np.mean(diagonal[:3])), rel=1e-12)
        traj = dyn.trajectories[dyn.trajectories["step"] == step]
        summary = dyn.summary[dyn.summary["step"] == step].iloc[0]
        assert summary["matrices"] == 3 and summary["flagged"] == 0
        assert summary["mean_normalized_effective_rank"] == pytest.approx(traj["normalized_effective_rank"].mean(), rel=1e-12)
        assert summary["mean_spectral_norm"] == pytest.approx(traj["spectral_norm"].mean(), rel=1e-12)
        scores = dyn.agreement_scores.query("step == @step and reference_kind == 'reference'")["score"]
        assert summary["mean_agreement"] == pytest.approx(scores.mean(), rel=1e-12)
        aligned = dyn.alignment_scores.query("step == @step")["score"]
        assert summary["mean_alignment"] == pytest.approx(aligned.mean(), rel=1e-12)
    # Scaling a matrix does not move its singular vectors: agreement 1 for every matrix and step.
    np.testing.assert_allclose(dyn.agreement["value"].to_numpy(), 1.0, atol=1e-6)
    # ... while its singular values grow by 1.5 per step.
    sigma = dyn.singular_values.query("matrix == 'net.0.weight' and index == 0").sort_values("step")["sigma"].to_numpy()
    np.testing.assert_allclose(sigma[1:] / sigma[:-1], 1.5, rtol=1e-6)
    assert dyn.matrices == ["net.0.weight", "net.2.weight", "net.4.weight"]


def test_save_and_load_round_trip(mlp_series: list, tmp_path: Path) -> None:
    dyn = compute_dynamics(mlp_series)
    out = save_dynamics(dyn, tmp_path / "dyn")
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{t}.parquet" for t in TABLES] + ["dynamics.json"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    back = load_dynamics(out)
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(back, name), getattr(dyn, name), check_dtype=False)
    assert back.meta["reference"] == dyn.meta["reference"] and back.meta["steps"] == [10, 20, 30]
    # Written again over itself (atomically), but never over a folder of other files.
    save_dynamics(dyn, out)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(SpectralError, match=r"holds other files"):
        save_dynamics(dyn, other)
    assert (other / "keep.txt").read_text() == "mine"
    with pytest.raises(SpectralError, match=r"no dynamics.json"):
        load_dynamics(other)


def test_training_table_from_log_history(mlp_series: list) -> None:
    history = [{"loss": 2.0, "epoch": 0.5, "step": 10}, {"eval_accuracy": 0.25, "step": 20, "eval_runtime": 1},
               {"train_runtime": 3.0, "total_flos": 1e9}, {"note": "text", "step": 30, "flag": True}]
    snapshots = [type(s)(s.table, s.spectra, s.vectors, s.alignment, s.alignment_diagonals, dict(s.meta)) for s in mlp_series]
    snapshots[-1].meta["log_history"] = history
    dyn = compute_dynamics(snapshots)
    assert dyn.training.values.tolist() == [[10, "loss", 2.0], [10, "epoch", 0.5], [20, "eval_accuracy", 0.25],
                                            [20, "eval_runtime", 1.0]]
    assert len(compute_dynamics(mlp_series).training) == 0


def test_zero_matrix_has_trajectory_but_no_agreement() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Linear(5, 3))
    with torch.no_grad():
        model[0].weight.zero_()
    options = AnalysisOptions(top_k=3, progress=False)
    dyn = compute_dynamics([analyze_model(model, options, step=1), analyze_model(model, options, step=2)])
    flagged = dyn.trajectories[dyn.trajectories["matrix"] == "0.weight"]
    assert (flagged["status"] == "flagged").all() and (flagged["flag"] == "zero_matrix").all()
    assert (flagged["spectral_norm"] == 0).all() and flagged["normalized_effective_rank"].isna().all()
    assert set(dyn.agreement["matrix"]) == {"1.weight"} and set(dyn.agreement_scores["matrix"]) == {"1.weight"}
    assert (dyn.summary["flagged"] == 1).all()
