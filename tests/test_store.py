"""Snapshots on disk: exact round trip, atomic replacement, clear errors for outputs that cannot be written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hf_spectral import store
from hf_spectral.engine import AnalysisOptions, analyze_model
from hf_spectral.errors import SpectralError
from hf_spectral.store import Snapshot, is_snapshot, iter_snapshots, read_snapshot, write_snapshot
from tiny_models import TinyMLP, build_tiny, private_module_cache_fixture

private_module_cache = private_module_cache_fixture()  # no ~/.cache/hf_spectral in tests


@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    """A real snapshot with every part filled: table (with a skipped row), spectra, vectors, alignment."""
    return analyze_model(build_tiny("vit"), AnalysisOptions(top_k=3, alignment=True, progress=False), step=5,
                         meta={"label": "step-5", "extra": (1, 2)})


def assert_same(a: Snapshot, b: Snapshot) -> None:
    pd.testing.assert_frame_equal(a.table, b.table)
    pd.testing.assert_frame_equal(a.alignment, b.alignment)
    assert a.spectra.keys() == b.spectra.keys()
    for name in a.spectra:
        assert a.spectra[name].dtype == b.spectra[name].dtype == np.float64
        assert np.array_equal(a.spectra[name], b.spectra[name])
    assert a.vectors.keys() == b.vectors.keys()
    for name, (u, v) in a.vectors.items():
        assert u.dtype == b.vectors[name][0].dtype and v.dtype == b.vectors[name][1].dtype
        assert np.array_equal(u, b.vectors[name][0]) and np.array_equal(v, b.vectors[name][1])
    assert a.alignment_diagonals.keys() == b.alignment_diagonals.keys()
    for label, diagonal in a.alignment_diagonals.items():
        assert np.array_equal(diagonal, b.alignment_diagonals[label])
    assert a.meta == b.meta


def test_round_trip_is_exact(snapshot: Snapshot, tmp_path: Path) -> None:
    assert len(snapshot.skipped) and len(snapshot.vectors) and len(snapshot.alignment) and snapshot.alignment_diagonals
    assert snapshot.meta["extra"] == [1, 2]  # meta holds JSON types from the start
    path = write_snapshot(snapshot, tmp_path / "snap")
    assert path == tmp_path / "snap" and is_snapshot(path)
    back = read_snapshot(path)
    assert_same(snapshot, back)
    assert back.step == 5 and back.summary() == snapshot.summary()
    on_disk = json.loads((path / "meta.json").read_text())
    assert on_disk["format_version"] == store.FORMAT_VERSION and on_disk["summary"]["matrices"] == len(snapshot.matrices)
    assert Snapshot.load(snapshot.save(tmp_path / "again")).meta == snapshot.meta


def test_round_trip_float64_vectors_flagged_rows_and_no_alignment(tmp_path: Path) -> None:
    model = TinyMLP()
    with_nan = model.net[2].weight
    with_nan.data[0, 0] = float("nan")
    snap = analyze_model(model, AnalysisOptions(top_k=2, precision="float64", progress=False))
    flagged = snap.table.set_index("name").loc["net.2.weight"]
    assert flagged["status"] == "flagged" and flagged["flag"] == "non_finite"
    assert {u.dtype for u, _ in snap.vectors.values()} == {np.dtype(np.float64)}
    back = read_snapshot(write_snapshot(snap, tmp_path / "s"))
    assert_same(snap, back)
    assert not (tmp_path / "s" / "alignment.parquet").exists() and back.alignment.empty


def test_failure_mid_write_keeps_the_previous_snapshot(snapshot: Snapshot, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    write_snapshot(snapshot, tmp_path / "snap")
    before = sorted(os.listdir(tmp_path))
    newer = Snapshot(snapshot.table.head(2), meta={"step": 99})

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store, "save_file", broken)  # after the parquet table, before meta.json
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_snapshot(newer, tmp_path / "snap")
    assert sorted(os.listdir(tmp_path)) == before  # no temporary folder left behind
    assert_same(snapshot, read_snapshot(tmp_path / "snap"))

    monkeypatch.setattr(store, "save_file", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        write_snapshot(newer, tmp_path / "snap")
    assert sorted(os.listdir(tmp_path)) == before


def test_failure_while_swapping_folders_puts_the_old_one_back(snapshot: Snapshot, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    write_snapshot(snapshot, tmp_path / "snap")
    real_replace = os.replace
    calls = []

    def second_rename_fails(src: str | Path, dst: str | Path) -> None:
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # old -> aside worked; tmp -> final fails
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", second_rename_fails)
    with pytest.raises(SpectralError, match=r"cannot write snapshot to .*snap: No space left on device"):
        write_snapshot(Snapshot(snapshot.table.head(1)), tmp_path / "snap")
    monkeypatch.setattr(store.os, "replace", real_replace)
    assert os.listdir(tmp_path) == ["snap"]
    assert_same(snapshot, read_snapshot(tmp_path / "snap"))


def test_unwritable_output_is_a_one_line_error(snapshot: Snapshot, tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    for target in (tmp_path / "a_file" / "snap", tmp_path / "a_file"):
        with pytest.raises(SpectralError) as info:
            write_snapshot(snapshot, target)
        assert "\n" not in str(info.value) and str(target) in str(info.value)
        with pytest.raises(SpectralError):
            store.check_output(target)
    assert sorted(os.listdir(tmp_path)) == ["a_file"] and (tmp_path / "a_file").read_text() == "not a folder"


def test_created_parent_folders_are_removed_on_failure(snapshot: Snapshot, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError(5, "Input/output error")))
    with pytest.raises(SpectralError, match="Input/output error"):
        write_snapshot(snapshot, tmp_path / "new" / "deeper" / "snap")
    assert os.listdir(tmp_path) == []


def test_never_replaces_a_folder_that_is_not_a_snapshot(snapshot: Snapshot, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(SpectralError, match="not an hf_spectral snapshot: choose another --output"):
        write_snapshot(snapshot, home)
    assert (home / "thesis.tex").read_text() == "years of work"
    (tmp_path / "empty").mkdir()
    assert is_snapshot(write_snapshot(snapshot, tmp_path / "empty"))


def test_iter_snapshots_by_step_and_bad_folders(snapshot: Snapshot, tmp_path: Path) -> None:
    for name, step in (("b", 20), ("a", 100), ("c", 3)):
        write_snapshot(Snapshot(snapshot.table, meta={"step": step}), tmp_path / "run" / name)
    (tmp_path / "run" / "notes").mkdir()
    assert [p.name for p in iter_snapshots(tmp_path / "run")] == ["c", "b", "a"]
    with pytest.raises(SpectralError, match="no such folder of snapshots"):
        list(iter_snapshots(tmp_path / "missing"))
    with pytest.raises(SpectralError, match="is not an hf_spectral snapshot"):
        read_snapshot(tmp_path / "run" / "notes")
    (tmp_path / "run" / "c" / "meta.json").write_text("{broken")
    with pytest.raises(SpectralError, match="damaged snapshot"):
        read_snapshot(tmp_path / "run" / "c")


def test_summary_counts_rank_deficient_rows_apart_from_undefined_ones(tmp_path):
    """A rank-deficient matrix has defined metrics: it is counted as such, averaged, and not 'flagged'."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    low_rank = (rng.standard_normal((16, 2)) @ rng.standard_normal((2, 12))).astype(np.float32)
    full_rank = rng.standard_normal((8, 8)).astype(np.float32)
    save_file({"a.weight": low_rank, "b.weight": full_rank,
               "c.weight": np.zeros((4, 4), np.float32)}, str(tmp_path / "m.safetensors"))
    import hf_spectral

    summary = hf_spectral.analyze(str(tmp_path / "m.safetensors"), progress=False, device="cpu").summary()
    assert summary["rank_deficient"] == 1 and summary["flagged"] == 1 and summary["matrices"] == 3

    def erank(w: np.ndarray) -> float:  # exp(entropy of σ/Σσ) / R in float64, 0·log 0 = 0
        sigma = np.linalg.svd(w.astype(np.float64), compute_uv=False)
        p = sigma / sigma.sum()
        p = p[p > 0]
        return float(np.exp(-(p * np.log(p)).sum()) / len(sigma))

    # the mean covers the two defined rows (a, b); the zero matrix c is counted, not averaged
    expected = (erank(low_rank) + erank(np.asarray(full_rank))) / 2
    assert summary["mean_normalized_effective_rank"] == pytest.approx(expected, abs=1e-4)
