"""The auto choice of torch CPU threads (hf_spectral.set_cpu_threads): the idle cores at the start."""

import os

import pytest

import hf_spectral
from hf_spectral.recipe_support import threads


def test_an_explicit_request_wins():
    assert threads.choose_threads(3, idle=0.0) == 3
    assert threads.choose_threads(1, world_size=4) == 1


@pytest.mark.parametrize("idle, expected", [(0.0, 1), (0.4, 1), (0.9, 1), (1.6, 2), (7.5, 2)])
def test_auto_takes_the_idle_cores_between_one_and_the_usable_ones(monkeypatch, idle, expected):
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    assert threads.choose_threads(0, idle=idle) == expected


def test_several_processes_share_the_cores(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    assert threads.choose_threads(0, world_size=2) == 4
    assert threads.choose_threads(0, world_size=16) == 1


def test_idle_cores_is_the_idle_share_of_the_jiffies_times_the_cores(monkeypatch):
    samples = iter([(1000.0, 4000.0), (1150.0, 4400.0)])  # 150 of 400 jiffies idle
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert threads.idle_cores(interval=0.0) == pytest.approx(4 * 150 / 400)
    monkeypatch.setattr(threads, "_cpu_times", lambda: None)  # no /proc/stat: unknown, and auto takes every core
    assert threads.idle_cores(interval=0.0) is None
    monkeypatch.setattr(threads, "usable_cores", lambda: 3)
    assert threads.choose_threads(0) == 3


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux /proc/stat")
def test_the_real_measurement_lies_between_zero_and_all_cores():
    idle = threads.idle_cores(interval=0.05)
    assert 0.0 <= idle <= os.cpu_count() + 1e-9


def test_set_cpu_threads_sets_torch(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        assert hf_spectral.set_cpu_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setattr(threads, "idle_cores", lambda interval=0.3: 0.2)
        assert hf_spectral.set_cpu_threads(0) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
