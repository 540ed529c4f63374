"""Two processes launched by ``accelerate launch`` give the snapshot one process gives, with the work
dealt by cost and the CPU cores split between the processes while they decompose.

``accelerate launch --cpu --num_processes 2`` starts ONE process in accelerate 1.x unless MPI
(``--mpirun_hostfile``) is installed; its torchrun launcher (``--multi_gpu``) starts two, which the
engine joins in a CPU (gloo) process group when the machine has no accelerator.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hf_spectral
from tiny_models import private_module_cache_fixture, save_tiny, two_cpu_processes

SCRIPT = Path(__file__).parent / "scripts" / "analyze_two_processes.py"

private_module_cache = private_module_cache_fixture()  # no ~/.cache/hf_spectral in tests


@pytest.mark.slow
def test_two_processes_give_the_one_process_snapshot(tmp_path: Path) -> None:
    source = tmp_path / "bert"
    save_tiny("bert", source)
    records = tmp_path / "records"
    records.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    command = two_cpu_processes(SCRIPT, str(source), str(tmp_path / "two"), str(records))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr

    ranks = [json.loads((records / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert [r["num_processes"] for r in ranks] == [2, 2] and [r["code"] for r in ranks] == [0, 0]
    assert ranks[0]["distributed_type"].endswith("MULTI_CPU") or torch_cuda_available()

    two = hf_spectral.read_snapshot(tmp_path / "two")
    one = hf_spectral.analyze(str(source), progress=False, device="cpu", top_k=2, alignment=True)
    assert two.meta["num_processes"] == 2 and one.meta["num_processes"] == 1

    # the same rows, metrics and singular values (to rounding: thread counts change summation order)
    pd.testing.assert_frame_equal(one.table, two.table, check_exact=False, rtol=1e-9, atol=1e-12)
    assert one.spectra.keys() == two.spectra.keys()
    for name, sigma in one.spectra.items():
        assert np.abs(sigma - two.spectra[name]).max() <= 1e-12 * max(sigma[0], 1.0), name
        for a, b in zip(one.vectors[name], two.vectors[name]):
            np.testing.assert_allclose(a, b, atol=1e-5)
    pd.testing.assert_frame_equal(one.alignment, two.alignment, check_exact=False, rtol=1e-9, atol=1e-12)
    for label, diagonal in one.alignment_diagonals.items():
        np.testing.assert_allclose(diagonal, two.alignment_diagonals[label], atol=1e-9)

    # every task computed exactly once, by one of the two processes
    done_by = [[t["task"] for t in r["tasks"]] for r in ranks]
    everything = list(one.matrices["name"]) + list(one.alignment["label"])
    assert sorted(done_by[0] + done_by[1]) == sorted(everything)
    assert done_by[0] and done_by[1]

    # dealt by cost: loads balance to within the largest task, and the costliest tasks are split
    shapes = {row["name"]: (row["rows"], row["cols"]) for _, row in one.matrices.iterrows()}
    costs = {name: float(m) * n * min(m, n) for name, (m, n) in shapes.items()}
    for _, pair in one.alignment.iterrows():
        costs[pair["label"]] = costs[pair["prev"]] + costs[pair["next"]]
    loads = [sum(costs[t] for t in tasks) for tasks in done_by]
    assert abs(loads[0] - loads[1]) <= max(costs.values()), loads
    costliest = sorted(costs, key=costs.get, reverse=True)[:2]
    assert (costliest[0] in done_by[0]) != (costliest[1] in done_by[0])
    half = len(everything) // 2
    assert set(done_by[0]) != set(everything[:half]) and set(done_by[0]) != set(everything[half:])

    # the cores are split while decomposing, and the caller's setting is restored afterwards
    expected_threads = max(1, len(os.sched_getaffinity(0)) // 2)
    for r in ranks:
        assert {t["threads"] for t in r["tasks"]} == {expected_threads}
        assert r["threads_after"] == 3


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.slow
def test_two_processes_deal_the_checkpoints_of_a_sweep(tmp_path: Path) -> None:
    """A Trainer run under a 2-process launch: whole checkpoints are dealt to the processes (each
    decomposes its own alone), and every snapshot equals the one-process analysis."""
    import torch
    from safetensors.torch import save_file

    run = tmp_path / "run"
    gen = torch.Generator().manual_seed(0)
    for step in (10, 20, 30, 40):
        folder = run / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file({f"layer.{i}.weight": torch.randn(24, 16, generator=gen) for i in range(3)},
                  folder / "model.safetensors")
    script = tmp_path / "cli.py"
    script.write_text("import sys\nfrom hf_spectral.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    command = two_cpu_processes(script, "analyze", str(run), "--output", str(tmp_path / "two"), "--no-progress",
                                "--device", "cpu")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    from safetensors.numpy import load_file

    one = hf_spectral.analyze_series(str(run), progress=False, device="cpu")
    dealt = []
    for snapshot in one:
        label = snapshot.meta["label"]
        two = hf_spectral.read_snapshot(tmp_path / "two" / label)
        pd.testing.assert_frame_equal(snapshot.table, two.table, check_exact=False, rtol=1e-9, atol=1e-12)
        for name, weight in load_file(run / label / "model.safetensors").items():
            reference = np.linalg.svd(weight.astype(np.float64), compute_uv=False)
            assert np.abs(two.spectra[name] - reference).max() <= 1e-4 * reference[0]
        dealt.append(two.meta["dealt_to_process"])
        assert two.meta["num_processes"] == 1  # decomposed by one process alone
    assert sorted(dealt) == [0, 0, 1, 1]  # four equal checkpoints, two each
