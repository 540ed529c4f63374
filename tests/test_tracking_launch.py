"""A 2-process CPU `accelerate launch` Trainer run writes one spectral record, computed by both processes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import hf_spectral
from hf_spectral.store import read_snapshot
from hf_spectral.tracking import log_spaced_steps
from tiny_models import two_cpu_processes

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parent / "scripts" / "tracking_ddp_train.py"


def test_two_process_launch_writes_one_record(tmp_path):
    command = two_cpu_processes(SCRIPT, str(tmp_path))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "rank 0 of 2 done at step 12" in done.stdout and "rank 1 of 2 done at step 12" in done.stdout

    record = tmp_path / "spectral"
    names = sorted(p.name for p in record.iterdir())
    planned = log_spaced_steps(12)
    assert names == ["log_history.json"] + [f"step-{s:06d}" for s in planned]  # one record, no leftovers
    for step in planned:
        assert read_snapshot(record / f"step-{step:06d}").meta["num_processes"] == 2  # both computed a share
    for step in (6, 12):
        ours = read_snapshot(record / f"step-{step:06d}")
        theirs = hf_spectral.analyze(tmp_path / f"checkpoint-{step}", progress=False)
        assert set(ours.spectra) == set(theirs.spectra)
        for name, sigma in theirs.spectra.items():
            np.testing.assert_allclose(ours.spectra[name], sigma, rtol=1e-6)
