"""``sources.classify``: the one place that decides what a SOURCE is (snapshot, record, Trainer run,
checkpoint list, Hub id + revisions, single checkpoint), on local stand-ins (no Hub access)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hf_spectral.errors import SpectralError
from hf_spectral.sources import ClassifiedSource, SourceKind, classify, open_source, resolve


def weights(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.ones(3, 2)}, folder / "model.safetensors")
    return folder


def snapshot_folder(folder: Path, step: int) -> Path:
    """The two files ``is_snapshot`` looks for (their content does not matter to the classifier)."""
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"step": step}))
    (folder / "matrices.parquet").write_bytes(b"")
    return folder


def test_single_checkpoints(tmp_path: Path) -> None:
    model = weights(tmp_path / "model")
    for source in (model, model / "model.safetensors", str(model)):
        found = classify(source)
        assert found.kind is SourceKind.CHECKPOINT and found.path == Path(source) and not found.is_series
        assert not found.is_hub
    hub = classify("org/name@step10")
    assert hub.kind is SourceKind.CHECKPOINT and hub.is_hub and hub.repo_id == "org/name" and hub.path is None
    assert classify("org/name", revision="v1").revision == "v1"


def test_snapshot_and_record(tmp_path: Path) -> None:
    record = tmp_path / "record"
    late = snapshot_folder(record / "step-000010", 10)
    early = snapshot_folder(record / "step-000002", 2)
    (record / "log_history.json").write_text("[]")
    assert classify(late) == ClassifiedSource(SourceKind.SNAPSHOT, str(late), late)
    found = classify(record)
    assert found.kind is SourceKind.RECORD and found.folders == (early, late) and found.is_series
    with pytest.raises(SpectralError, match=r"holds hf_spectral snapshots"):
        open_source(found)


def test_trainer_run_in_step_order(tmp_path: Path) -> None:
    run = tmp_path / "run"
    folders = [weights(run / f"checkpoint-{n}") for n in (10, 2)]
    found = classify(run)
    assert found.kind is SourceKind.TRAINER_RUN and found.folders == (folders[1], folders[0])
    assert found.record is None and found.is_series
    assert [c.label for c in open_source(found)] == ["checkpoint-2", "checkpoint-10"]
    one = tmp_path / "one"
    weights(one / "checkpoint-5")
    assert classify(one).kind is SourceKind.TRAINER_RUN and not classify(one).is_series


def test_trainer_output_with_callback_record(tmp_path: Path) -> None:
    """Today's rule (one branch, ``_trainer_output``): the checkpoints are the series; the record is noted."""
    run = tmp_path / "out"
    weights(run / "checkpoint-4")
    snapshot_folder(run / "spectral" / "step-000004", 4)
    found = classify(run)
    assert found.kind is SourceKind.TRAINER_RUN and found.record == run / "spectral"
    assert classify(run / "spectral").kind is SourceKind.RECORD


def test_lists_and_hub_revisions(tmp_path: Path) -> None:
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    found = classify([a, b])
    assert found.kind is SourceKind.CHECKPOINTS and found.is_series
    assert [item.kind for item in found.items] == [SourceKind.CHECKPOINT] * 2 and found.source == f"{a}, {b}"
    assert classify([a]).kind is SourceKind.CHECKPOINT  # a list of one is that SOURCE
    revs = classify("org/name", revisions="step*,main")
    assert revs.kind is SourceKind.HUB_REVISIONS and revs.revisions == "step*,main" and revs.repo_id == "org/name"
    assert classify("org/name", revisions=["s1", "s2"]).revisions == ("s1", "s2")
    assert [c.label for c in resolve(a)] == ["a"]


@pytest.mark.parametrize("source, kwargs, message", [
    ("", {}, r"empty SOURCE"),
    ([], {}, r"empty series"),
    ("./missing/folder", {}, r"no such file or folder: \./missing/folder"),
    ("org/name@v1", {"revisions": "step*"}, r"names revision v1 and --revisions is given too"),
    ("org/name", {"revision": "a", "revisions": "b"}, r"--revision and --revisions were both given"),
])
def test_bad_sources(source, kwargs, message) -> None:
    with pytest.raises(SpectralError, match=message):
        classify(source, **kwargs)


def test_revisions_on_local_paths(tmp_path: Path) -> None:
    model = weights(tmp_path / "m")
    with pytest.raises(SpectralError, match=r"--revisions applies to Hub model ids only.*drop --revisions"):
        classify(model, revisions="step*")
    with pytest.raises(SpectralError, match=r"--revision applies to Hub model ids only.*drop --revision$"):
        classify(model, revision="main")
    with pytest.raises(SpectralError, match=r"--revisions applies to one Hub model id"):
        classify([model, model], revisions="x")


def test_checkpoint_with_its_own_spectra_is_a_checkpoint(tmp_path: Path) -> None:
    checkpoint = weights(tmp_path / "checkpoint-10")
    snapshot_folder(checkpoint / "spectral", 10)  # what the callback writes into a saved checkpoint
    assert classify(checkpoint).kind is SourceKind.CHECKPOINT
