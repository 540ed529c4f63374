"""Fault suite, records and series (docs/guarantees.md): damaged snapshots in a record are named and
left out, never silently dropped; a run's callback record is preferred over its checkpoints (and
said so); checkpoint summaries are reused; one snapshot cache serves every command; a step that is
not known is never printed as one."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_spectral.cli import main
from hf_spectral.engine import AnalysisOptions, analyze_model
from hf_spectral.errors import SpectralError
from hf_spectral.series import load_series
from hf_spectral.store import write_snapshot
from test_dynamics_series import count_decompositions
from tiny_models import build_tiny, private_module_cache_fixture

private_module_cache = private_module_cache_fixture()

STEPS = (0, 1, 2, 3, 4)


def model_at(step: int) -> torch.nn.Module:
    model = build_tiny("gpt2")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.0 + 0.05 * step)
    return model


def write_record(folder: Path, steps=STEPS) -> None:
    for step in steps:
        snapshot = analyze_model(model_at(step), AnalysisOptions(top_k=2, progress=False), step=step,
                                 meta={"label": f"step-{step:06d}"})
        write_snapshot(snapshot, folder / f"step-{step:06d}")
    (folder / "log_history.json").write_text(json.dumps([{"step": s, "loss": 1.0 / (s + 1)} for s in steps]))


def write_checkpoints(run: Path, steps=(2, 4), summaries: bool = False) -> None:
    for step in steps:
        folder = run / f"checkpoint-{step}"
        model_at(step).save_pretrained(folder)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
        if summaries:
            summary = analyze_model(model_at(step), AnalysisOptions(progress=False), step=step)
            write_snapshot(summary, folder / "spectral")


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("record") / "spectral"
    write_record(folder)
    return folder


@pytest.fixture(scope="module")
def trainer_output(tmp_path_factory: pytest.TempPathFactory, record: Path) -> Path:
    run = tmp_path_factory.mktemp("trainer") / "run"
    write_checkpoints(run)
    shutil.copytree(record, run / "spectral")
    return run


def numpy_sigma(model: torch.nn.Module, name: str) -> np.ndarray:
    return np.linalg.svd(model.state_dict()[name].double().numpy().T, compute_uv=False)  # Conv1D: (in, out)


# ------------------------------------------------------------------------------------------------ preference


def test_trainer_output_reads_its_record_not_its_checkpoints(trainer_output: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    calls = count_decompositions(monkeypatch)
    snapshots = load_series(trainer_output, progress=False)
    assert calls == [] and [s.step for s in snapshots] == list(STEPS)  # the denser record, with step 0
    note = snapshots[0].meta["series"]["notes"][0]
    assert "callback record" in note and str(trainer_output / "spectral") in note and "2 checkpoint folders" in note
    assert main(["dynamics", str(trainer_output), "--output", str(tmp_path / "dyn"), "--no-progress"]) == 0
    assert "reading the callback record" in capsys.readouterr().out  # said which was used
    name = "transformer.h.0.mlp.c_fc.weight"
    np.testing.assert_allclose(snapshots[2].spectra[name], numpy_sigma(model_at(2), name), rtol=1e-5)


def test_a_checkpoint_passed_on_its_own_is_still_analyzed(trainer_output: Path, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    monkeypatch.setenv("HF_SPECTRAL_CACHE", str(tmp_path / "cache"))
    calls = count_decompositions(monkeypatch)
    (snapshot,) = load_series(trainer_output / "checkpoint-4", progress=False)
    assert calls and snapshot.step == 4


def test_report_of_a_recipe_folder_reads_its_record(record: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "recipe"
    model_at(4).save_pretrained(recipe)  # the final model.safetensors, as a recipe saves it
    shutil.copytree(record, recipe / "spectral")
    calls = count_decompositions(monkeypatch)
    assert main(["report", str(recipe), "--output", str(tmp_path / "report"), "--formats", "png", "--no-progress"]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert calls == [] and "5 snapshots, steps 0–4" in page
    assert "reading the callback record" in capsys.readouterr().out


def test_a_lone_final_model_is_not_labelled_with_a_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_SPECTRAL_CACHE", str(tmp_path / "cache"))
    model_at(4).save_pretrained(tmp_path / "final")
    assert main(["report", str(tmp_path / "final"), "--output", str(tmp_path / "report"), "--formats", "png",
                 "--no-progress"]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert "1 snapshot (training step unknown)" in page and "at step 0" not in page


def test_checkpoint_summaries_are_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    write_checkpoints(run, summaries=True)  # the callback's record was written elsewhere
    calls = count_decompositions(monkeypatch)
    snapshots = load_series(run, progress=False)
    assert calls == [] and [s.step for s in snapshots] == [2, 4]
    assert [s.meta["label"] for s in snapshots] == ["checkpoint-2", "checkpoint-4"]
    assert "spectral summaries" in snapshots[0].meta["series"]["notes"][0]
    name = "transformer.h.1.attn.c_proj.weight"
    np.testing.assert_allclose(snapshots[1].spectra[name], numpy_sigma(model_at(4), name), rtol=1e-5)


# ------------------------------------------------------------------------------------------------ damage


def tear_meta(folder: Path) -> None:
    text = (folder / "meta.json").read_text()
    (folder / "meta.json").write_text(text[: len(text) // 2])


def text_step(folder: Path) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "step": "two"}))


def drop_arrays(folder: Path) -> None:
    (folder / "spectra.safetensors").unlink()


def cut_arrays(folder: Path) -> None:
    data = (folder / "spectra.safetensors").read_bytes()
    (folder / "spectra.safetensors").write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage, words", [(tear_meta, "unreadable meta.json"), (text_step, "not a whole number"),
                                           (drop_arrays, "spectra.safetensors is missing"),
                                           (cut_arrays, "spectra.safetensors")])
def test_a_damaged_snapshot_is_named_and_left_out(record: Path, tmp_path: Path, damage, words: str,
                                                  capsys: pytest.CaptureFixture[str],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    copy = tmp_path / "spectral"
    shutil.copytree(record, copy)
    damage(copy / "step-000002")
    with caplog.at_level("WARNING", logger="hf_spectral"):
        snapshots = load_series(copy, progress=False)
    warned = [r.getMessage() for r in caplog.records if "left out of the series: step-000002" in r.getMessage()]
    assert len(warned) == 1 and words in warned[0]
    assert [s.step for s in snapshots] == [0, 1, 3, 4]
    missing = snapshots[0].meta["series"]["missing"]
    assert [m["label"] for m in missing] == ["step-000002"] and words in missing[0]["reason"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["dynamics", str(copy), "--output", str(tmp_path / "dyn"), "--no-progress"]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_a_record_with_nothing_readable_is_one_line(record: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "spectral"
    shutil.copytree(record, copy)
    for folder in copy.glob("step-*"):
        tear_meta(folder)
    with pytest.raises(SpectralError, match="none of the 5 snapshots"):
        load_series(copy, progress=False)
    assert main(["dynamics", str(copy), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: none of the 5 snapshots")


# ------------------------------------------------------------------------------------------------ cache


def test_one_cache_serves_every_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_SPECTRAL_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    write_checkpoints(run)
    calls = count_decompositions(monkeypatch)
    assert main(["dynamics", str(run), "--output", str(tmp_path / "a"), "--no-progress"]) == 0
    first = len(calls)
    assert first > 0 and len(list((tmp_path / "cache" / "snapshots").glob("*/meta.json"))) == 2
    assert main(["dynamics", str(run), "--output", str(tmp_path / "b"), "--no-progress"]) == 0
    assert len(calls) == first  # another --output: nothing recomputed (report and card load the same way)
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, moved)  # the same weights at another path: the same fingerprint
    snapshots = load_series(moved, progress=False)
    assert len(calls) == first and snapshots[0].meta["checkpoint"] == str(moved / "checkpoint-2")
    monkeypatch.setenv("HF_SPECTRAL_CACHE", "off")
    load_series(run, progress=False)
    assert len(calls) == 2 * first  # no cache: computed again
