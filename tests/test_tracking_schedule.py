"""The snapshot schedule and the live scalars, without training."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from hf_spectral import SpectralError
from hf_spectral.store import Snapshot
from hf_spectral.tracking import Schedule, log_spaced_steps
from hf_spectral.tracking.scalars import agreement_scores, live_scalars


def test_log_spaced_steps_are_dense_early_and_cover_the_run():
    steps = log_spaced_steps(400)
    geometric = {math.floor(10 ** (i / 8) + 0.5) for i in range(0, 21)}  # up to 10^(20/8) = 316
    linear = {40 * j for j in range(1, 11)}
    assert steps == sorted({0} | geometric | linear)
    assert steps[:6] == [0, 1, 2, 3, 4, 6]  # the initialization and the fast early dynamics
    assert steps[-1] == 400 and len(steps) == 30
    assert max(b - a for a, b in zip(steps, steps[1:])) <= 40  # the even fill bounds late gaps
    assert len(log_spaced_steps(40_000)) < 50  # the count grows with log(steps), not steps
    assert log_spaced_steps(0) == [0]


@pytest.mark.parametrize("spec, steps", [
    ("log", log_spaced_steps(50)),
    (10, [0, 10, 20, 30, 40, 50]),
    (15, [0, 15, 30, 45, 50]),  # every N, and the last step
    ("15", [0, 15, 30, 45, 50]),
    ([5, 0, 5, 77], [0, 5]),  # explicit steps: exactly those (within the run)
    ("0, 7,30", [0, 7, 30]),
])
def test_schedule_parse_and_due(spec, steps):
    schedule = Schedule.parse(spec)
    assert schedule.planned(50) == steps
    assert [s for s in range(0, 60) if schedule.is_due(s, 50)] == steps


def test_log_schedule_without_a_known_length_is_geometric():
    schedule = Schedule.parse("log")
    due = [s for s in range(0, 200) if schedule.is_due(s, None)]
    assert due == [0] + sorted({math.floor(10 ** (i / 8) + 0.5) for i in range(0, 19)} - {0})


@pytest.mark.parametrize("spec", [0, -3, True, "often", [], [-1, 2], [1.5, "a"], None])
def test_bad_schedules(spec):
    with pytest.raises(SpectralError):
        Schedule.parse(spec)


def _orthonormal(rows: int, cols: int, seed: int) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((rows, cols)))[0]


def test_agreement_scores_match_eq5_in_numpy():
    u0, v0 = _orthonormal(9, 4, 0), _orthonormal(7, 4, 1)
    u1 = np.linalg.qr(u0 + 0.3 * _orthonormal(9, 4, 2))[0]
    v1 = -np.linalg.qr(v0 + 0.3 * _orthonormal(7, 4, 3))[0]  # signs do not matter
    scores = agreement_scores({"w": (u1, v1), "new": (u1, v1)}, {"w": (u0, v0)})
    expected = np.mean([abs(u1[:, i] @ u0[:, i]) * abs(v1[:, i] @ v0[:, i]) for i in range(4)])
    assert set(scores) == {"w"}  # no previous vectors, no score
    assert scores["w"] == pytest.approx(expected, rel=1e-12)
    assert agreement_scores({"w": (u0, v0)}, {"w": (u0, v0)})["w"] == pytest.approx(1.0)


def test_live_scalars_name_layers_and_leave_out_undefined_values():
    table = pd.DataFrame({
        "name": ["a.weight", "zero.weight", "b.weight", "bias_2d"],
        "status": ["ok", "flagged", "ok", "skipped"],
        "normalized_effective_rank": [0.5, np.nan, 0.7, np.nan],
        "normalized_stable_rank": [0.2, np.nan, 0.4, np.nan],
        "normalized_mass90_rank": [0.3, np.nan, 0.5, np.nan],
        "spectral_norm": [2.0, 0.0, 4.0, np.nan],
    })
    scalars = live_scalars(Snapshot(table), None)
    assert scalars == {
        "spectral/erank/a.weight": 0.5, "spectral/sigma_max/a.weight": 2.0,
        "spectral/erank/b.weight": 0.7, "spectral/sigma_max/b.weight": 4.0,
        "spectral/mean_erank": pytest.approx(0.6), "spectral/mean_stable_rank": pytest.approx(0.3),
        "spectral/mean_sigma_max": pytest.approx(3.0), "spectral/flagged": 1.0,
    }
    assert set(live_scalars(Snapshot(table), None, log_layers=False)) == {
        "spectral/mean_erank", "spectral/mean_stable_rank", "spectral/mean_sigma_max", "spectral/flagged"}
