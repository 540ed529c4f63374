"""SpectralCallback(background=...): snapshots computed by a worker thread while training goes on are of
the weights AT their step (float64 numpy SVD of weights captured then), equal the synchronous ones, are
logged at their own step, survive a failing worker, charge the budget with the training thread's time only,
and "auto" turns the worker on only where it is safe and has a core to run on."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).parent / "scripts"))

from tracking_common import lm_trainer  # noqa: E402

from hf_spectral import SpectralCallback, SpectralError  # noqa: E402
from hf_spectral.engine import AnalysisOptions  # noqa: E402
from hf_spectral.store import read_snapshot  # noqa: E402
from hf_spectral.tracking import background, log_spaced_steps, recorder, schedule  # noqa: E402
from hf_spectral.tracking import callback as callback_module  # noqa: E402
from hf_spectral.tracking.background import SnapshotWorker, use_background  # noqa: E402
from hf_spectral.tracking.schedule import COST_MARGIN, OverheadBudget  # noqa: E402

pytestmark = pytest.mark.slow


def np_sigma(name: str, weight: np.ndarray) -> np.ndarray:
    """float64 singular values, rows = output side (GPT-2's Conv1D attn/mlp weights are stored (in, out))."""
    matrix = weight.T if (".attn.c_" in name or ".mlp.c_" in name) else weight
    return np.linalg.svd(matrix.astype(np.float64), compute_uv=False)


class Watch(TrainerCallback):
    """Captures the 2-D weights at ``capture`` steps, the step training has reached, and (at ``release``)
    sets an event the slowed worker waits for."""

    def __init__(self, capture: tuple[int, ...] = (), release: int | None = None) -> None:
        self.capture, self.release = capture, release
        self.weights: dict[int, dict[str, np.ndarray]] = {}
        self.step = 0
        self.released = threading.Event()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.step = state.global_step
        if state.global_step in self.capture:
            self.weights[state.global_step] = {n: p.detach().double().numpy().copy()
                                               for n, p in model.named_parameters() if p.ndim >= 2}
        if state.global_step == self.release:
            self.released.set()


class Reporter(TrainerCallback):
    """A stand-in for TensorBoard & co.: the step on_log is called with, and the step training was at."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.logged: list[tuple[int, int]] = []  # (state.global_step, the training's step) of spectral logs

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and any(k.startswith("spectral/") for k in logs):
            self.logged.append((state.global_step, self.watch.step))


def spectral_steps(history: list[dict]) -> list[int]:
    return [e["step"] for e in history if "spectral/seconds" in e]


def test_a_slow_worker_snapshots_the_weights_of_its_step(tmp_path, monkeypatch):
    """The race: the worker computes the step-3 snapshot only once training has reached step 8; it must be
    the SVD of the weights at step 3, logged at step 3."""
    watch = Watch(capture=(3, 12), release=8)
    real_run_plan = recorder.run_plan
    seen: dict[str, object] = {}

    def slow_run_plan(plan, options, meta=None, **kwargs):
        if meta and meta.get("step") == 3:
            assert watch.released.wait(60), "training never reached step 8"
            seen["threads"] = torch.get_num_threads()
            seen["thread"] = threading.current_thread().name
        return real_run_plan(plan, options, meta, **kwargs)

    monkeypatch.setattr(recorder, "run_plan", slow_run_plan)
    callback = SpectralCallback(schedule=[0, 3, 12], top_k=2, max_overhead=None, background=True)
    reporter = Reporter(watch)
    trainer = lm_trainer(tmp_path, [watch, reporter], max_steps=12, save_strategy="no")
    callback.attach(trainer)
    threads = torch.get_num_threads()
    trainer.train()

    snapshot = read_snapshot(tmp_path / "spectral" / "step-000003")
    assert snapshot.meta["step"] == 3 and snapshot.meta["background"] is True
    moved = False
    for name, weight in watch.weights[3].items():
        reference = np_sigma(name, weight)
        np.testing.assert_allclose(snapshot.spectra[name], reference, rtol=0, atol=1e-6 * reference[0])
        later = np_sigma(name, watch.weights[12][name])
        moved |= not np.allclose(later, reference, rtol=0, atol=1e-6 * reference[0])
    assert moved, "the weights did not change between steps 3 and 12: the test would not see a late copy"
    # logged at step 3 although training was at step 8 or later when it was computed
    assert (3, 3) not in reporter.logged and any(at == 3 and real >= 8 for at, real in reporter.logged)
    assert [at for at, _ in reporter.logged] == [0, 3, 12]
    entry = next(e for e in trainer.state.log_history if e.get("step") == 3 and "spectral/seconds" in e)
    assert entry["epoch"] == pytest.approx(3 / 8)  # 8 batches per epoch: the snapshot's epoch, not the emit's
    # the worker is its own thread and runs with the training's torch thread count, which it leaves alone
    assert seen == {"threads": threads, "thread": seen["thread"]} and str(seen["thread"]).startswith("hf_spectral")
    assert torch.get_num_threads() == threads


def test_background_equals_the_training_thread(tmp_path):
    """Same seed, same steps: the same singular values, the same steps in log_history and at the reporters,
    and training itself unchanged (losses and final weights bit-identical)."""
    runs = {}
    for mode in (False, True):
        watch = Watch()
        reporter = Reporter(watch)
        callback = SpectralCallback(top_k=2, max_overhead=None, background=mode)
        trainer = lm_trainer(tmp_path / str(mode), [watch, reporter], max_steps=12, save_steps=5)
        callback.attach(trainer)
        trainer.train()
        runs[mode] = (trainer, reporter)
    planned = log_spaced_steps(12)
    for mode, (trainer, reporter) in runs.items():
        assert spectral_steps(trainer.state.log_history) == planned, mode
        assert [at for at, _ in reporter.logged] == planned, mode
        for step in planned:  # the last one is computed on the training thread, which waits for it anyway
            meta = read_snapshot(tmp_path / str(mode) / "spectral" / f"step-{step:06d}").meta
            assert meta.get("background", False) is (mode and step != planned[-1]), step
    for step in planned:
        off = read_snapshot(tmp_path / "False" / "spectral" / f"step-{step:06d}")
        on = read_snapshot(tmp_path / "True" / "spectral" / f"step-{step:06d}")
        assert set(on.spectra) == set(off.spectra)
        for name, sigma in off.spectra.items():
            np.testing.assert_allclose(on.spectra[name], sigma, rtol=1e-6, atol=1e-7)
    (off_trainer, _), (on_trainer, _) = runs[False], runs[True]
    losses = [[e["loss"] for e in t.state.log_history if "loss" in e] for t in (off_trainer, on_trainer)]
    assert losses[0] == losses[1]
    for (name, a), b in zip(off_trainer.model.named_parameters(), on_trainer.model.parameters()):
        assert torch.equal(a, b), name
    # the checkpoints carry the step's summary and the spectral entries up to their step
    summary = read_snapshot(tmp_path / "True" / "checkpoint-10" / "spectral")
    assert summary.meta["step"] == 10


def test_a_failing_worker_warns_and_training_goes_on(tmp_path, monkeypatch, caplog):
    real_run_plan = recorder.run_plan

    def failing_run_plan(plan, options, meta=None, **kwargs):
        if meta and meta.get("step") == 3:
            raise RuntimeError("linalg.eigh: The algorithm failed to converge")
        return real_run_plan(plan, options, meta, **kwargs)

    monkeypatch.setattr(recorder, "run_plan", failing_run_plan)
    callback = SpectralCallback(top_k=2, max_overhead=None, background=True)
    trainer = lm_trainer(tmp_path, [callback], max_steps=12, save_strategy="no")
    with caplog.at_level(logging.WARNING, logger="hf_spectral.tracking"):
        trainer.train()
    assert trainer.state.global_step == 12
    warnings = [r.getMessage() for r in caplog.records if r.name == "hf_spectral.tracking"]
    assert any("step 3 (computed in the background) skipped" in w and "failed to converge" in w for w in warnings)
    expected = [s for s in log_spaced_steps(12) if s != 3]
    assert spectral_steps(trainer.state.log_history) == expected
    assert sorted(int(p.name[5:]) for p in (tmp_path / "spectral").glob("step-*")) == expected


def test_the_worker_catches_what_compute_lets_through(caplog):
    def broken(frozen):
        raise MemoryError("out of memory")

    worker = SnapshotWorker(broken)
    frozen = recorder.FrozenSnapshot(7, None, {}, {}, None, None, 0.0)  # type: ignore[arg-type]
    worker.submit(frozen)
    with pytest.raises(RuntimeError, match="in flight"):
        worker.submit(frozen)
    with caplog.at_level(logging.WARNING, logger="hf_spectral.tracking"):
        assert worker.take(wait=True) is None
    assert worker.pending_step is None and worker.take(wait=True) is None
    assert any("step 7 skipped: the worker failed: MemoryError" in r.getMessage() for r in caplog.records)
    worker.close()


def test_a_held_snapshot_starts_at_release_or_when_waited_for():
    started: list[int] = []
    worker = SnapshotWorker(lambda frozen: started.append(frozen.step) or None)
    worker.submit(recorder.FrozenSnapshot(0, None, {}, {}, None, None, 0.0), hold=True)  # type: ignore[arg-type]
    time.sleep(0.05)
    assert started == [] and worker.pending_step == 0 and worker.elapsed() is None
    assert worker.take(wait=False) is None and worker.pending_step == 0  # not started: nothing to take yet
    worker.release()
    worker.take(wait=True)
    assert started == [0] and worker.pending_step is None
    worker.submit(recorder.FrozenSnapshot(5, None, {}, {}, None, None, 0.0), hold=True)  # type: ignore[arg-type]
    worker.take(wait=True)  # waiting starts it
    assert started == [0, 5]
    worker.close()


def test_the_step0_snapshot_starts_after_the_first_step(tmp_path, monkeypatch):
    """The first step's allocations (optimizer state, gradients) took ~0.4 s longer beside the step-0 snapshot
    (MiniLM, benchmarks/README.md): the worker starts it once step 1 has ended; it is still of step 0."""
    watch = Watch(capture=(0,))
    real_run_plan, started_at = recorder.run_plan, {}

    def run_plan(plan, options, meta=None, **kwargs):
        started_at[meta["step"]] = watch.step
        return real_run_plan(plan, options, meta, **kwargs)

    class Initial(TrainerCallback):  # the weights at step 0
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            watch.weights[0] = {n: p.detach().double().numpy().copy() for n, p in model.named_parameters() if p.ndim >= 2}

    monkeypatch.setattr(recorder, "run_plan", run_plan)
    callback = SpectralCallback(schedule=[0, 6], top_k=2, max_overhead=None, background=True)
    trainer = lm_trainer(tmp_path, [Initial(), watch], max_steps=6, save_strategy="no")
    callback.attach(trainer)
    trainer.train()
    assert started_at[0] >= 1 and spectral_steps(trainer.state.log_history) == [0, 6]
    snapshot = read_snapshot(tmp_path / "spectral" / "step-000000")
    for name, weight in watch.weights[0].items():
        reference = np_sigma(name, weight)
        np.testing.assert_allclose(snapshot.spectra[name], reference, rtol=0, atol=1e-6 * reference[0])


def test_auto_uses_the_worker_only_where_it_is_safe_and_pays(monkeypatch, caplog):
    model = torch.nn.Linear(4, 4)
    options = AnalysisOptions(top_k=2, progress=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(background.torch, "get_num_threads", lambda: 1)

    def decide(requested="auto", **kw):
        kw = {"world_size": 1, "live": True, "truncation_eval": False, **kw}
        return use_background(requested, model, options, **kw)

    assert decide() is True  # 2 cores, training on 1 thread: a core for the worker
    assert decide(truncation_eval=True) is False
    assert decide(live=False) is False
    assert decide(world_size=2) is False
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert decide() is False
    caplog.set_level(logging.WARNING, logger="hf_spectral.tracking")
    assert decide(True) is False  # forced, but unsafe: a warning, on the training thread
    assert any("background=True but the run has 2 processes" in r.getMessage() for r in caplog.records)
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setattr(background.torch, "get_num_threads", lambda: 2)
    assert decide() is False  # training takes both cores: no idle core
    assert decide(True) is True  # forced: safe, so taken even without an idle core
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)))
    assert decide() is True
    # the CPU copy of the weights (4×4 float32: 64 bytes) must fit in a quarter of the available memory
    monkeypatch.setattr(background, "available_memory", lambda: 255)
    assert decide() is False and decide(True) is False
    assert any("CPU copy of the weights" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(background, "available_memory", lambda: 256)
    assert decide() is True
    assert decide(False) is False
    with pytest.raises(SpectralError, match="background"):
        SpectralCallback(background="sometimes")
    assert SpectralCallback(background="off").background is False


def test_waiting_threads_fill_the_idle_cores(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cores, threads = [2], [1]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores[0])))
    monkeypatch.setattr(background.torch, "get_num_threads", lambda: threads[0])
    expected = {(2, 1): 2, (2, 2): 1, (4, 2): 2, (3, 2): 1, (6, 2): 3, (16, 1): background.MAX_WAITING_THREADS,
                (1, 4): 1}
    for (cores[0], threads[0]), want in expected.items():
        assert background.waiting_threads() == want, (cores, threads)
    # on the training thread (it waits; the count may change): the training's cores, at most 4 matrices side
    # by side; the idle cores are left alone
    cores[0] = 16
    for threads[0], want in {1: (1, None), 2: (2, 1), 3: (3, 1), 8: (4, 2), 16: (4, 4)}.items():
        assert background.waiting_split() == want, threads
    cores[0], threads[0] = 4, 1
    assert background.waiting_threads(world_size=2) == 1  # processes share the cores
    assert background.waiting_split(world_size=2) == (1, None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert background.waiting_threads() == 1 and background.waiting_split() == (1, None)


@pytest.mark.parametrize("mode", [True, False])
def test_snapshots_training_waits_for_use_the_idle_cores(tmp_path, monkeypatch, mode):
    """With the worker only the last step's snapshot is waited for: it alone is decomposed on the idle cores
    too; on the training thread every snapshot is."""
    real_run_plan, real_analyze_model, threads_at = recorder.run_plan, recorder.analyze_model, {}

    def run_plan(plan, options, meta=None, **kwargs):  # the worker's
        threads_at[meta["step"]] = (kwargs.get("threads", 1), kwargs.get("torch_threads"))
        return real_run_plan(plan, options, meta, **kwargs)

    def analyze_model(model, options, **kwargs):  # the training thread's
        threads_at[kwargs["step"]] = (kwargs.get("threads", 1), kwargs.get("torch_threads"))
        return real_analyze_model(model, options, **kwargs)

    monkeypatch.setattr(recorder, "run_plan", run_plan)
    monkeypatch.setattr(recorder, "analyze_model", analyze_model)
    monkeypatch.setattr(callback_module, "waiting_threads", lambda world_size=1: 2)
    monkeypatch.setattr(callback_module, "waiting_split", lambda world_size=1: background.CoreSplit(3, 1))
    callback = SpectralCallback(schedule=[0, 4, 8], top_k=2, max_overhead=None, background=mode)
    trainer = lm_trainer(tmp_path, [], max_steps=8, save_strategy="no")
    callback.attach(trainer)
    before = torch.get_num_threads()
    trainer.train()
    # the worker keeps torch's count (it must not change it); the training thread may, while it waits
    assert threads_at == ({0: (1, None), 4: (1, None), 8: (2, None)} if mode else {0: (3, 1), 4: (3, 1), 8: (3, 1)})
    assert torch.get_num_threads() == before
    assert spectral_steps(trainer.state.log_history) == [0, 4, 8]
    if mode:  # the budget reserves the last snapshot's cost split over those threads
        budgeted = SpectralCallback(schedule=[0, 8], top_k=2, background=True)
        trainer = lm_trainer(tmp_path / "budgeted", [], max_steps=8, save_strategy="no")
        budgeted.attach(trainer)
        trainer.train()
        assert budgeted.budget is not None and budgeted.budget.last_threads == 2


def test_budget_charges_the_training_thread_only(monkeypatch):
    """Fake clock: the worker's seconds are not charged, but they set the reserve for the last snapshot,
    which is waited for."""
    clock = [0.0]
    monkeypatch.setattr(schedule.time, "perf_counter", lambda: clock[0])
    budget = OverheadBudget(0.05)
    budget.start(0, 100)
    with budget.timed(snapshot=True):
        clock[0] += 0.05  # the training thread copies the weights; the worker then takes 2 s
    budget.note_worker(2.0)
    for step in range(1, 11):
        clock[0] += 1.0
        budget.tick(step)
    assert budget.spent == pytest.approx(0.05) and budget.train_seconds() == pytest.approx(10.0)
    # 100 s projected -> 5 s: 0.05 spent + m·0.05 now + m·2 reserved for the last = 2.61 s fits
    assert budget.fits(10)
    # due while the worker is busy: the expected wait is added (m·2 - 0.5 s already computing = 2 s)
    assert budget.expected_wait(0.5) == pytest.approx(COST_MARGIN * 2.0 - 0.5)
    assert budget.fits(10, budget.expected_wait(0.5))  # 2.61 + 2 <= 5
    assert not budget.fits(10, 2.5)
    assert not budget.fits(10, None) and budget.fits(100, None) and budget.fits(0, None)  # unknown wait
    assert OverheadBudget(0.05).expected_wait(0.5) is None  # no background snapshot has finished yet
    synchronous = OverheadBudget(0.05, spent=2.0, taken=1, latest=2.0)  # the same snapshot on the training thread
    assert not synchronous.allows(10, 100, 10.0)  # 2 + 2·m·2 = 7 > 5
    budget.note_worker(4.0)  # a dearer last snapshot expected: 0.05 + m·0.05 + m·4 > 5
    assert not budget.fits(10)
    budget.last_threads = 2  # ... but split over two threads: 0.05 + m·0.05 + m·4 / 2 = 2.61 <= 5
    assert budget.fits(10)
    budget.start(0, 100)
    assert budget.last_threads == 1  # a new run decides again


def test_a_real_run_charges_the_waits_not_the_overlapped_work(tmp_path, monkeypatch):
    """The step-0 snapshot (slowed to 0.6 s) overlaps the first steps: not charged; the last one is waited for
    (computed on the training thread: the weights no longer change)."""
    real_run_plan, real_analyze_model = recorder.run_plan, recorder.analyze_model

    def slow_run_plan(plan, options, meta=None, **kwargs):  # the worker's
        time.sleep(0.6)
        return real_run_plan(plan, options, meta, **kwargs)

    def slow_analyze_model(model, options, **kwargs):  # the training thread's
        time.sleep(0.6)
        return real_analyze_model(model, options, **kwargs)

    class SteadySteps(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            time.sleep(0.1)

    monkeypatch.setattr(recorder, "run_plan", slow_run_plan)
    monkeypatch.setattr(recorder, "analyze_model", slow_analyze_model)
    callback = SpectralCallback(schedule=[0, 12], top_k=2, max_overhead=1.0, background=True)
    trainer = lm_trainer(tmp_path, [callback, SteadySteps()], max_steps=12, save_strategy="no")
    trainer.train()
    seconds = {e["step"]: e["spectral/seconds"] for e in trainer.state.log_history if "spectral/seconds" in e}
    assert sorted(seconds) == [0, 12] and min(seconds.values()) >= 0.6
    budget = callback.budget
    assert budget is not None and budget.worker_taken == 1
    assert budget.worker_spent == pytest.approx(seconds[0], abs=1e-3)
    # charged: opening the record, the step-0 copy, the last snapshot (>= 0.6 s), emitting, writing; not the
    # step-0 snapshot's 0.6 s, computed during the first steps (1.2 s of them)
    assert 0.6 <= budget.spent <= seconds[0] + seconds[12] - 0.4, (budget.spent, seconds)


@pytest.mark.parametrize("strategy", ["steps", "epoch"])
def test_a_checkpoint_holds_the_snapshot_in_flight(tmp_path, monkeypatch, strategy):
    """The Trainer writes trainer_state.json before on_save: a (slow) snapshot in flight at a save, whichever
    event decides it, is waited for, so a run resumed from the checkpoint keeps its log entry."""
    import json

    real_run_plan = recorder.run_plan

    def slow_run_plan(plan, options, meta=None, **kwargs):
        time.sleep(0.3)
        return real_run_plan(plan, options, meta, **kwargs)

    monkeypatch.setattr(recorder, "run_plan", slow_run_plan)
    callback = SpectralCallback(schedule=[0, 8, 12], top_k=2, max_overhead=None, background=True)
    trainer = lm_trainer(tmp_path, [callback], max_steps=12, save_strategy=strategy, save_steps=8)
    trainer.train()  # 8 steps per epoch: both strategies save at step 8
    state = json.loads((tmp_path / "checkpoint-8" / "trainer_state.json").read_text())
    assert spectral_steps(state["log_history"]) == [0, 8]
    assert read_snapshot(tmp_path / "checkpoint-8" / "spectral").meta["step"] == 8
