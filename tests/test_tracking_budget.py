"""The overhead budget of SpectralCallback and SpectralTracker: on a run whose SVDs are made slow on purpose,
tracking stays within max_overhead of the training time, the first and the last step are always taken, and
what was skipped is recorded and logged once."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import pytest
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).parent / "scripts"))

from tracking_common import lm_trainer  # noqa: E402

import hf_spectral.metrics  # noqa: E402
import hf_spectral.tracking.background  # noqa: E402
from hf_spectral import SpectralCallback, SpectralTracker  # noqa: E402
from hf_spectral.errors import SpectralError  # noqa: E402
from hf_spectral.tracking import schedule  # noqa: E402
from hf_spectral.tracking.schedule import COST_MARGIN, OverheadBudget, Schedule  # noqa: E402


class SteadySteps(TrainerCallback):
    """Each training step takes at least ``seconds`` (a stand-in for a real model's step time)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_begin(self, args, state, control, **kwargs):
        time.sleep(self.seconds)


@pytest.fixture
def slow_svd(monkeypatch):
    """Every decomposition takes 10 ms longer (a stand-in for a real model's big matrices)."""
    real = hf_spectral.metrics.decompose

    def slow_decompose(*args, **kwargs):
        time.sleep(0.01)
        return real(*args, **kwargs)

    monkeypatch.setattr(hf_spectral.metrics, "decompose", slow_decompose)
    # one matrix at a time: sleeps side by side would cost nothing, unlike real decompositions on busy cores
    monkeypatch.setattr(hf_spectral.tracking.background, "MAX_WAITING_THREADS", 1)


def test_budget_arithmetic():
    m = COST_MARGIN  # a snapshot's expected cost is m × max(mean, latest)
    budget = OverheadBudget(0.1)
    assert budget.allows(1, 100, 1.0)  # nothing measured yet: take it
    budget.charge(2.0)  # step 0 cost 2 s
    # 10 of 100 steps took 10 s -> 10 + 90 s projected, budget 10 s: 2 spent + 2.5 now + 2.5 reserved for the last
    assert budget.allows(10, 100, 10.0)
    budget.charge(2.0)
    assert budget.allows(10, 100, 10.0)  # 4 + 2·2.5 = 9 <= 10
    # a step time below the mean (the first steps were slow) projects less: 10 + 90·0.5 = 55 s -> 5.5 s
    assert not budget.allows(10, 100, 10.0, step_seconds=0.5)
    budget.charge(2.0)
    assert not budget.allows(10, 100, 10.0)  # 6 + 2·2.5 > 10
    assert budget.allows(10, 1000, 10.0)  # a longer run affords more
    # a snapshot dearer than the mean (a busier machine) sets the expected cost
    rising = OverheadBudget(0.1)
    rising.charge(0.5)
    rising.charge(3.0)
    assert rising.allows(10, 100, 10.0) is False  # 3.5 + 2·m·3 = 11 > 10 (with the mean, 1.75: 7.9 <= 10)
    # unknown length: the time elapsed so far is the projection, nothing reserved
    assert not OverheadBudget(0.1, spent=1.0, taken=1, latest=1.0).allows(5, None, 5.0)
    assert OverheadBudget(0.5, spent=1.0, taken=1, latest=1.0).allows(5, None, 5.0)  # 1 + m <= 2.5
    for bad in (0, -0.1, "5%", True):
        with pytest.raises(SpectralError, match="max_overhead"):
            SpectralCallback(max_overhead=bad)
        with pytest.raises(SpectralError, match="max_overhead"):
            SpectralTracker("unused", max_overhead=bad)


def test_budget_distrusts_a_slow_first_step(monkeypatch):
    """The step time is measured outside tracking work, and a slow first step (warm-up) does not
    inflate the projection: the overshoot of the 500-step MiniLM runs came from early snapshots
    charged against a projection made from the first, slow steps."""
    clock = [0.0]
    monkeypatch.setattr(schedule.time, "perf_counter", lambda: clock[0])
    budget = OverheadBudget(0.05)
    budget.start(0, 100)
    with budget.timed(snapshot=True):
        clock[0] += 2.0  # the step-0 snapshot
    clock[0] += 10.0  # step 1: warm-up
    budget.tick(1)
    for step in range(2, 11):
        clock[0] += 1.0
        budget.tick(step)
    assert budget.train_seconds() == pytest.approx(19.0)
    assert budget.step_seconds(10, 19.0) == pytest.approx(1.0)
    # 19 + 90·1 = 109 s projected -> 5.45 s: 2 + 2·2.5 does not fit; the mean step (1.9 s) would have let it in
    assert not budget.fits(10)
    assert budget.allows(10, 100, 19.0)
    assert budget.fits(0) and budget.fits(100)  # the first and the last step always
    with budget.timed():  # tracking work inside a step is not step time
        clock[0] += 5.0
    clock[0] += 1.0
    budget.tick(11)
    assert budget._recent[-1] == pytest.approx(1.0) and budget.spent == pytest.approx(7.0)
    assert budget.meta() == {"max_overhead": 0.05, "skipped_steps": []}


def test_budget_holds_on_a_slow_svd(tmp_path, slow_svd, caplog):
    max_steps, share = 40, 0.5
    # snapshots on the training thread: all their time is charged (the background worker's budget:
    # tests/test_tracking_background.py)
    callback = SpectralCallback(top_k=2, max_overhead=share, background=False)
    trainer = lm_trainer(tmp_path, [callback, SteadySteps(0.03)], max_steps=max_steps, save_strategy="no")
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="hf_spectral.tracking"):
        trainer.train()
    wall = time.perf_counter() - started

    entries = [e for e in trainer.state.log_history if "spectral/seconds" in e]
    taken = [e["step"] for e in entries]
    spent = sum(e["spectral/seconds"] for e in entries)
    planned = Schedule.parse("log").planned(max_steps)
    assert taken[0] == 0 and taken[-1] == max_steps
    skipped = sorted(set(planned) - set(taken))
    assert skipped and len(taken) >= 3, (taken, skipped)
    # within the share of the training time (outside snapshots), up to the error of the cost estimate;
    # all the callback's time counts (writing, the log history), not only the snapshots' own seconds
    assert callback.budget is not None and callback.budget.spent >= spent
    assert callback.budget.spent <= 1.25 * share * (wall - callback.budget.spent), (callback.budget.spent, wall)
    # recorded in the last snapshot's meta, logged once
    meta = json.loads((tmp_path / "spectral" / f"step-{max_steps:06d}" / "meta.json").read_text())
    assert meta["skipped_steps"] == skipped and meta["max_overhead"] == share
    assert callback.budget is not None and callback.budget.skipped == skipped
    messages = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(messages) == 1 and f"skipped {len(skipped)} of {len(planned)}" in messages[0]


def test_no_budget_takes_every_scheduled_step(tmp_path, slow_svd):
    callback = SpectralCallback(top_k=2, max_overhead=None)
    trainer = lm_trainer(tmp_path, [callback], max_steps=12, save_strategy="no")
    trainer.train()
    taken = [e["step"] for e in trainer.state.log_history if "spectral/seconds" in e]
    assert taken == Schedule.parse("log").planned(12)


def test_tracker_budget_holds_on_a_slow_svd(tmp_path, slow_svd, caplog):
    """The same budget in a hand-written loop: SpectralTracker charges its own time against the loop's."""
    import torch

    max_steps, share = 40, 0.5
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = SpectralTracker(tmp_path / "spectral", max_steps=max_steps, top_k=2, max_overhead=share)
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="hf_spectral.tracking"):
        tracker.step(model, 0)
        for step in range(1, max_steps + 1):
            time.sleep(0.03)  # a stand-in for a real model's step time
            loss = model(torch.randn(8, 16)).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            tracker.step(model, step)
        tracker.close()
        tracker.close()  # logged once, however often it is closed
    wall = time.perf_counter() - started

    entries = [e for e in tracker.history if "spectral/seconds" in e]
    taken = [e["step"] for e in entries]
    planned = Schedule.parse("log").planned(max_steps)
    assert taken[0] == 0 and taken[-1] == max_steps
    skipped = sorted(set(planned) - set(taken))
    assert skipped and len(taken) >= 3, (taken, skipped)
    # all the tracker's time (not only the snapshots' own seconds) within the share of the loop's time
    assert tracker.budget is not None
    assert tracker.budget.spent <= 1.25 * share * (wall - tracker.budget.spent), (tracker.budget.spent, wall)
    meta = json.loads((tmp_path / "spectral" / f"step-{max_steps:06d}" / "meta.json").read_text())
    assert meta["skipped_steps"] == skipped and meta["max_overhead"] == share
    messages = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(messages) == 1 and f"skipped {len(skipped)} of {len(planned)}" in messages[0]
    # without a budget every scheduled step is taken
    free = SpectralTracker(tmp_path / "free", max_steps=12, top_k=2, max_overhead=None)
    took = [step for step in range(13) if free.step(model, step)]
    assert took == Schedule.parse("log").planned(12)
