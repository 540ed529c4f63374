"""SpectralCallback robustness: misconfiguration fails before step 1, failures during training only
warn and skip a snapshot, a resumed run continues the record, sharded models fall back to checkpoints."""

from __future__ import annotations

import errno
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).parent / "scripts"))

from tracking_common import lm_trainer  # noqa: E402

import hf_spectral  # noqa: E402
from hf_spectral import SpectralCallback, SpectralError  # noqa: E402
from hf_spectral.store import read_snapshot  # noqa: E402
from hf_spectral.tracking import log_spaced_steps  # noqa: E402

pytestmark = pytest.mark.slow



def record_steps(record: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in record.iterdir() if p.is_dir() and p.name.startswith("step-"))


def spectral_steps(history: list[dict]) -> list[int]:
    return [e["step"] for e in history if any(k.startswith("spectral/") for k in e)]


# ------------------------------------------------------------------------------------------------
# misconfiguration


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"include": "h.(0"}, "not a valid regular expression"),
        ({"exclude": ["ok", "[z-a]"]}, "not a valid regular expression"),
        ({"schedule": 0}, "N must be >= 1"),
        ({"schedule": "sometimes"}, "not understood"),
        ({"top_k": -1}, "top_k"),
        ({"precision": "float16"}, "precision"),
        ({"extra_measures": {"erank": lambda m: {}}}, "taken by the spectral scalars"),
        ({"extra_measures": {"fourier": 3}}, "not callable"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(SpectralError, match=message):
        SpectralCallback(**kwargs)


def test_empty_selection_and_unwritable_folder_fail_before_the_first_step(tmp_path):
    trainer = lm_trainer(tmp_path / "a", [SpectralCallback(include="no_such_layer")], max_steps=5)
    with pytest.raises(SpectralError, match="no_such_layer.*select no weight matrix"):
        trainer.train()
    assert trainer.state.global_step == 0

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    trainer = lm_trainer(tmp_path / "b", [SpectralCallback(output_dir=blocker / "spectral")], max_steps=5)
    with pytest.raises(SpectralError, match="cannot write spectral snapshots.*writable output_dir"):
        trainer.train()
    assert trainer.state.global_step == 0


# ------------------------------------------------------------------------------------------------
# failures during training


def test_failures_mid_run_warn_skip_and_training_completes(tmp_path, monkeypatch, caplog):
    import hf_spectral.store as store
    import hf_spectral.tracking.recorder as recorder

    real_analyze, real_save = recorder.analyze_model, store.save_file

    def analyze_model(model, options, *, step=None, meta=None, **cores):
        if step == 6:
            raise RuntimeError("linalg.svd: The algorithm failed to converge")
        return real_analyze(model, options, step=step, meta=meta, **cores)

    def save_file(arrays, path):
        if ".step-000010." in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(arrays, path)

    def broken_measure(model):
        raise ValueError("measure bug")

    monkeypatch.setattr(recorder, "analyze_model", analyze_model)
    monkeypatch.setattr(store, "save_file", save_file)
    # on the training thread (the worker's failures: tests/test_tracking_background.py)
    callback = SpectralCallback(max_overhead=None, top_k=2, extra_measures={"broken": broken_measure}, background=False)
    trainer = lm_trainer(tmp_path, [callback], max_steps=12, save_strategy="no")
    with caplog.at_level(logging.WARNING, logger="hf_spectral.tracking"):
        trainer.train()

    assert trainer.state.global_step == 12  # training completed
    warnings = [r.getMessage() for r in caplog.records if r.name == "hf_spectral.tracking"]
    assert any("step 6 skipped" in w and "failed to converge" in w for w in warnings)
    assert any("snapshot at step 10 not written" in w and "No space left" in w for w in warnings)
    assert len([w for w in warnings if "'broken' failed" in w]) == 1  # reported once, not at every snapshot
    record = tmp_path / "spectral"
    assert {6, 10} <= set(log_spaced_steps(12))
    expected = [s for s in log_spaced_steps(12) if s not in (6, 10)]
    assert record_steps(record) == expected
    assert not [p for p in record.iterdir() if p.name.startswith(".")]  # nothing half-written left
    # the step-10 numbers were computed, so they are still logged; step 6 has none
    assert spectral_steps(trainer.state.log_history) == [s for s in log_spaced_steps(12) if s != 6]


def test_processes_the_trainer_does_not_join_are_named(tmp_path, monkeypatch, caplog):
    """A CPU-only `torchrun`/`accelerate launch --multi_gpu` of a Trainer without use_cpu=True runs
    every process alone; the callback says so instead of letting them overwrite each other's record."""
    trainer = lm_trainer(tmp_path, [SpectralCallback(max_overhead=None, top_k=2, schedule=[0, 2])], max_steps=2, save_strategy="no")
    assert trainer.args.world_size == 1
    monkeypatch.setenv("WORLD_SIZE", "2")  # what the launcher sets in each process
    with caplog.at_level(logging.WARNING, logger="hf_spectral.tracking"):
        trainer.train()
    warnings = [r.getMessage() for r in caplog.records if r.name == "hf_spectral.tracking"]
    assert any("launched as 2 processes, but the Trainer runs each one alone" in w and "use_cpu=True" in w
               for w in warnings)
    assert trainer.state.global_step == 2 and record_steps(tmp_path / "spectral") == [0, 2]


# ------------------------------------------------------------------------------------------------
# resuming


class StopAt(TrainerCallback):
    """Ends training early, like a crash after a checkpoint (the last steps are not saved)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resumed_run_continues_the_record(tmp_path):
    run = tmp_path / "run"
    first = lm_trainer(run, [SpectralCallback(max_overhead=None, top_k=2), StopAt(15)], max_steps=20, save_steps=10)
    first.train()
    record = run / "spectral"
    planned = log_spaced_steps(20)
    # stopped early: the step it ended at is recorded too
    assert record_steps(record) == [s for s in planned if s <= 15] + ([15] if 15 not in planned else [])
    kept_meta = (record / "step-000010" / "meta.json").read_text()

    second = lm_trainer(run, [SpectralCallback(max_overhead=None, top_k=2)], max_steps=20, save_steps=10)
    second.train(resume_from_checkpoint=str(run / "checkpoint-10"))

    assert record_steps(record) == planned  # nothing duplicated, nothing lost, the abandoned 15 is gone
    assert (record / "step-000010" / "meta.json").read_text() == kept_meta  # kept, not recomputed
    history = json.loads((record / "log_history.json").read_text())
    assert spectral_steps(history) == planned
    # the first snapshot after resuming compares with the step-10 snapshot read back from disk
    first_after = next(e for e in history if e["step"] == planned[planned.index(10) + 1] and "spectral/mean_erank" in e)
    assert "spectral/mean_agreement" in first_after

    # The continued record equals an uninterrupted run's (resume restores weights, optimizer, RNG, data order).
    reference = lm_trainer(tmp_path / "reference", [SpectralCallback(max_overhead=None, top_k=2)], max_steps=20, save_strategy="no")
    reference.train()
    for step in (12, 20):
        ours = read_snapshot(record / f"step-{step:06d}")
        theirs = read_snapshot(tmp_path / "reference" / "spectral" / f"step-{step:06d}")
        for name, sigma in theirs.spectra.items():
            np.testing.assert_allclose(ours.spectra[name], sigma, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# sharded parameters (FSDP / ZeRO-3): snapshots come from the saved checkpoints


def test_sharded_model_falls_back_to_saved_checkpoints(tmp_path, monkeypatch, caplog):
    import hf_spectral.tracking.callback as callback_module

    monkeypatch.setattr(callback_module, "sharded_kind", lambda model: "FSDP")
    trainer = lm_trainer(tmp_path, [SpectralCallback(max_overhead=None, top_k=2)], max_steps=20, save_steps=10)
    with caplog.at_level(logging.WARNING, logger="hf_spectral.tracking"):
        trainer.train()
    assert any("sharded (FSDP)" in r.getMessage() for r in caplog.records)
    record = tmp_path / "spectral"
    assert record_steps(record) == [10, 20]
    assert spectral_steps(trainer.state.log_history) == [10, 20]
    for step in (10, 20):
        ours = read_snapshot(record / f"step-{step:06d}")
        assert ours.meta["step"] == step and ours.meta["label"] == f"step-{step:06d}"
        theirs = hf_spectral.analyze(tmp_path / f"checkpoint-{step}", progress=False)
        for name, sigma in theirs.spectra.items():
            np.testing.assert_allclose(ours.spectra[name], sigma, rtol=1e-9)
        assert read_snapshot(tmp_path / f"checkpoint-{step}" / "spectral").meta["step"] == step


def test_resume_sets_damaged_snapshots_aside_and_trains_on(tmp_path, caplog):
    """A torn meta.json in a kept snapshot and a cut-short arrays file in the latest one: moved to
    <record>/.damaged (never deleted) with a warning; training resumes and the record goes on."""
    run = tmp_path / "run"
    lm_trainer(run, [SpectralCallback(max_overhead=None, top_k=2), StopAt(15)], max_steps=20, save_steps=10).train()
    record = run / "spectral"
    kept = [s for s in record_steps(record) if s <= 10]
    torn, latest = record / f"step-{kept[1]:06d}", record / "step-000010"
    torn_meta = (torn / "meta.json").read_text()[:40]
    (torn / "meta.json").write_text(torn_meta)
    arrays = (latest / "spectra.safetensors").read_bytes()
    (latest / "spectra.safetensors").write_bytes(arrays[: len(arrays) // 2])

    second = lm_trainer(run, [SpectralCallback(max_overhead=None, top_k=2)], max_steps=20, save_steps=10)
    with caplog.at_level(logging.WARNING, logger="hf_spectral"):
        second.train(resume_from_checkpoint=str(run / "checkpoint-10"))
    assert second.state.global_step == 20  # trained to the end
    damaged = record / ".damaged"
    assert sorted(p.name for p in damaged.iterdir()) == sorted([torn.name, latest.name])
    assert (damaged / torn.name / "meta.json").read_text() == torn_meta  # set aside as it was, not deleted
    assert "unreadable meta.json" in caplog.text and "moved to" in caplog.text
    # step 10 is the resumed model's first snapshot again (from the same weights); the torn one is gone
    assert record_steps(record) == [s for s in log_spaced_steps(20) if s != kept[1]]
    assert read_snapshot(record / "step-000010").spectra


# ------------------------------------------------------------------------------------------------
# the route to the Trainer's CallbackHandler (report_to loggers)


class LogCatcher(TrainerCallback):
    """A stand-in for a report_to logger: the logs its on_log receives."""

    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def test_attach_reaches_loggers_without_the_stack_walk(tmp_path, monkeypatch, caplog):
    import hf_spectral.tracking.callback as callback_module

    monkeypatch.setattr(callback_module, "_calling_handler", lambda cb: pytest.fail("walked the stack"))
    catcher = LogCatcher()
    trainer = lm_trainer(tmp_path / "run", [catcher], max_steps=4, save_strategy="no")
    callback = SpectralCallback(max_overhead=None, schedule=2, top_k=0).attach(trainer)
    assert callback.attach(trainer) is callback  # attaching twice adds it once
    assert sum(cb is callback for cb in trainer.callback_handler.callbacks) == 1
    with caplog.at_level(logging.WARNING, logger="hf_spectral.tracking"):
        trainer.train()
    assert [e["step"] for e in trainer.state.log_history if "spectral/mean_erank" in e] == [0, 2, 4]
    assert len([log for log in catcher.logs if "spectral/mean_erank" in log]) == 3
    assert not any("log_history only" in r.getMessage() for r in caplog.records)


def test_a_hidden_handler_degrades_to_a_warning_and_log_history(tmp_path, monkeypatch, caplog):
    """A transformers change that hides the handler from the fallback: a warning, the scalars still in
    ``log_history``, training completes."""
    import hf_spectral.tracking.callback as callback_module

    monkeypatch.setattr(callback_module, "_calling_handler", lambda cb: None)
    catcher = LogCatcher()
    trainer = lm_trainer(tmp_path / "run", [catcher, SpectralCallback(max_overhead=None, schedule=2, top_k=0)], max_steps=4,
                         save_strategy="no")
    with caplog.at_level(logging.WARNING, logger="hf_spectral.tracking"):
        trainer.train()
    assert trainer.state.global_step == 4
    assert [e["step"] for e in trainer.state.log_history if "spectral/mean_erank" in e] == [0, 2, 4]
    assert not [log for log in catcher.logs if "spectral/mean_erank" in log]
    assert any("trainer.state.log_history only" in r.getMessage() for r in caplog.records)
