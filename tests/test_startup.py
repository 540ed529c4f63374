"""The cheap start-up and I/O savings: reading the next matrix while the current one is decomposed, and
the console entry point's fast exit (which must still flush every line and keep the exit code)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import hf_spectral
from hf_spectral import engine
from hf_spectral.prefetch import read_ahead
from tiny_models import private_module_cache_fixture

private_module_cache = private_module_cache_fixture()


def test_read_ahead_loads_the_next_item_while_the_current_one_is_used() -> None:
    events: list[str] = []
    started = {i: threading.Event() for i in range(3)}

    def load(i: int) -> int:
        events.append(f"load {i} in {threading.current_thread().name.split('_')[0]}")
        started[i].set()
        return i * 10

    seen = []
    for item, get in read_ahead([0, 1, 2], load):
        if item + 1 < 3:
            assert started[item + 1].wait(5)  # the next load runs before this item is finished
        seen.append(get())
    assert seen == [0, 10, 20]
    assert all(e.endswith("in hf") for e in events)  # in the background thread

    def failing(i: int) -> int:
        raise KeyError(i)

    with pytest.raises(KeyError):
        for _, get in read_ahead([0], failing):
            get()


def test_engine_reads_ahead_in_order_and_gets_the_same_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(1)
    tensors = {f"layer.{i}.weight": torch.randn(30 + i, 20, generator=gen) for i in range(5)}
    save_file(tensors, tmp_path / "m.safetensors")
    reads: list[tuple[str, str]] = []
    real = engine._materialize

    def recording(spec, read, precision="float32"):  # type: ignore[no-untyped-def]
        reads.append((spec.name, threading.current_thread().name))
        return real(spec, read, precision)

    monkeypatch.setattr(engine, "_materialize", recording)
    snapshot = hf_spectral.analyze(str(tmp_path / "m.safetensors"), progress=False, device="cpu", batch="off")
    assert [name for name, _ in reads] == list(tensors)
    assert all(thread.startswith("hf_spectral_read") for _, thread in reads)
    for name, matrix in tensors.items():
        reference = np.linalg.svd(matrix.double().numpy(), compute_uv=False)
        assert np.abs(snapshot.spectra[name] - reference).max() <= 1e-4 * reference[0]


def test_console_entry_exits_fast_with_its_code_and_all_its_output(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(2)
    save_file({"w.weight": torch.randn(8, 6, generator=gen)}, tmp_path / "m.safetensors")
    env = {**os.environ, "PYTHONPATH": str(Path(hf_spectral.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-m", "hf_spectral", "analyze", str(tmp_path / "m.safetensors"),
                           "--output", str(tmp_path / "out"), "--no-progress"], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith(f"snapshot written to {tmp_path / 'out'}")
    assert hf_spectral.read_snapshot(tmp_path / "out").matrices["name"].tolist() == ["w.weight"]
    bad = subprocess.run([sys.executable, "-m", "hf_spectral", "analyze", str(tmp_path / "absent")],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: no such file or folder: {tmp_path / 'absent'}"
