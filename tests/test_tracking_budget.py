"""SpectralCallback's overhead budget: on a run whose SVDs are made slow on purpose, snapshots stay within
max_overhead of the training time, step 0 and the last step are always taken, and what was skipped is
recorded and logged once."""

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
from hf_spectral import SpectralCallback  # noqa: E402
from hf_spectral.errors import SpectralError  # noqa: E402
from hf_spectral.tracking.schedule import OverheadBudget, Schedule  # noqa: E402


class SteadySteps(TrainerCallback):
    """Each training step takes at least ``seconds`` (a stand-in for a real model's step time)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_begin(self, args, state, control, **kwargs):
        time.sleep(self.seconds)


def test_budget_arithmetic():
    budget = OverheadBudget(0.1)
    assert budget.allows(1, 100, 1.0)  # nothing measured yet: take it
    budget.charge(2.0)  # step 0 cost 2 s
    # 10 steps took 10 s -> 100 s projected, budget 10 s: 2 spent + 2 now + 2 reserved for the last <= 10
    assert budget.allows(10, 100, 10.0)
    budget.charge(2.0)
    budget.charge(2.0)
    assert budget.allows(10, 100, 10.0)  # 6 + 2 + 2 = 10 <= 10
    budget.charge(2.0)
    assert not budget.allows(10, 100, 10.0)  # 8 + 2 + 2 > 10
    assert budget.allows(10, 1000, 10.0)  # a longer run affords more
    # a snapshot dearer than the mean (a busier machine) is the expected cost
    rising = OverheadBudget(0.1)
    rising.charge(1.0)
    rising.charge(3.5)
    assert rising.allows(10, 100, 10.0) is False  # 4.5 + 3.5 + 3.5 > 10 (with the mean, 2.25: 9 <= 10)
    # unknown length: the time elapsed so far is the projection, nothing reserved
    assert not OverheadBudget(0.1, spent=1.0, taken=1, latest=1.0).allows(5, None, 5.0)
    assert OverheadBudget(0.5, spent=1.0, taken=1, latest=1.0).allows(5, None, 5.0)
    for bad in (0, -0.1, "5%"):
        with pytest.raises(SpectralError, match="max_overhead"):
            SpectralCallback(max_overhead=bad)


def test_budget_holds_on_a_slow_svd(tmp_path, monkeypatch, caplog):
    real = hf_spectral.metrics.decompose

    def slow_decompose(*args, **kwargs):
        time.sleep(0.01)
        return real(*args, **kwargs)

    monkeypatch.setattr(hf_spectral.metrics, "decompose", slow_decompose)
    max_steps, share = 40, 0.3
    callback = SpectralCallback(top_k=2, max_overhead=share)
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
    # within the share of the training time (outside snapshots), up to the error of the cost estimate
    assert spent <= 1.25 * share * (wall - spent), (spent, wall)
    # recorded in the last snapshot's meta, logged once
    meta = json.loads((tmp_path / "spectral" / f"step-{max_steps:06d}" / "meta.json").read_text())
    assert meta["skipped_steps"] == skipped and meta["max_overhead"] == share
    assert callback.budget is not None and callback.budget.skipped == skipped
    messages = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(messages) == 1 and f"skipped {len(skipped)} of {len(planned)}" in messages[0]


def test_no_budget_takes_every_scheduled_step(tmp_path, monkeypatch):
    real = hf_spectral.metrics.decompose
    monkeypatch.setattr(hf_spectral.metrics, "decompose", lambda *a, **k: (time.sleep(0.01), real(*a, **k))[1])
    callback = SpectralCallback(top_k=2, max_overhead=None)
    trainer = lm_trainer(tmp_path, [callback], max_steps=12, save_strategy="no")
    trainer.train()
    taken = [e["step"] for e in trainer.state.log_history if "spectral/seconds" in e]
    assert taken == Schedule.parse("log").planned(12)
