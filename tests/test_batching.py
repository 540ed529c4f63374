"""Batched decompositions of same-shaped matrices: the same singular values as numpy's float64 SVD (to the
bounds of the unbatched path), the same snapshot as the unbatched engine, balanced units of work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

import hf_spectral
from hf_spectral import metrics
from hf_spectral.batching import MAX_BATCH_ELEMENTS, work_units
from hf_spectral.engine import AnalysisOptions, deal_by_cost
from hf_spectral.errors import SpectralError
from hf_spectral.views.types import MatrixSpec
from tiny_models import private_module_cache_fixture, save_tiny

TOL = {"float32": 1e-4, "float64": 1e-9}  # × σ_max, the unbatched path's bounds
private_module_cache = private_module_cache_fixture()


def numpy_sigma(matrix: torch.Tensor) -> np.ndarray:
    return np.linalg.svd(matrix.to(torch.float64).numpy(), compute_uv=False)


def stack_of(count: int, rows: int, cols: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        m = torch.randn(rows, cols, generator=gen)
        if i % 2:  # low rank with a spread of scales: the small σ must be right too
            m = (torch.randn(rows, 3, generator=gen) * 10) @ torch.randn(3, cols, generator=gen) + 1e-3 * m
        out.append(m)
    return out


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(40, 24), (24, 40), (32, 32)])
def test_batch_matches_numpy_and_the_unbatched_path(precision: str, shape: tuple[int, int]) -> None:
    matrices = stack_of(5, *shape, seed=sum(shape))
    batched = metrics.singular_values_batch(matrices, precision=precision)
    assert len(batched) == len(matrices)
    for matrix, sigma in zip(matrices, batched):
        reference = numpy_sigma(matrix)
        assert sigma.dtype == torch.float64 and sigma.shape == reference.shape
        assert np.abs(sigma.numpy() - reference).max() <= TOL[precision] * reference[0]
        single = metrics.singular_values(matrix, precision=precision).numpy()
        assert np.abs(sigma.numpy() - single).max() <= 1e-10 * reference[0]


def test_batch_of_mixed_shapes_is_refused_and_empty_is_empty() -> None:
    assert metrics.singular_values_batch([]) == []
    with pytest.raises(metrics.MetricInputError):
        metrics.singular_values_batch([torch.ones(3, 2), torch.ones(2, 3)])


def test_overflowing_batch_is_redone_one_by_one() -> None:
    big = torch.full((6, 4), 1e200, dtype=torch.float64) + torch.eye(6, 4, dtype=torch.float64)
    matrices = [big, torch.randn(6, 4, dtype=torch.float64)]
    out = metrics.singular_values_batch(matrices)  # the Gram overflows: the single path scales itself
    for matrix, sigma in zip(matrices, out):
        reference = numpy_sigma(matrix)
        assert np.abs(sigma.numpy() - reference).max() <= 1e-4 * reference[0]


def spec(name: str, shape: tuple[int, int], dtype: str = "F32") -> MatrixSpec:
    return MatrixSpec(name, "linear", (name,), shape, shape, dtype)


def test_units_group_same_shapes_and_cut_groups_for_processes() -> None:
    specs = [spec(f"h.{i}.{kind}", shape) for i in range(6)
             for kind, shape in (("q", (64, 64)), ("up", (256, 64)), ("down", (64, 256)))]
    specs.append(spec("wte", (5000, 64)))
    specs.append(spec("h.0.q16", (64, 64), "F16"))  # another dtype: not in the F32 batch
    assert work_units(specs, batched=False) == [[i] for i in range(len(specs))]
    units = work_units(specs, batched=True, num_processes=1)
    assert sorted(i for unit in units for i in unit) == list(range(len(specs)))
    for unit in units:
        assert len({(specs[i].shape, specs[i].dtype) for i in unit}) == 1
    assert sorted(len(u) for u in units) == [1, 1, 6, 6, 6]
    # two processes: every 6-matrix group becomes 2 units of 3; dealing by cost balances them
    units2 = work_units(specs, batched=True, num_processes=2)
    assert sorted(len(u) for u in units2) == [1, 1, 3, 3, 3, 3, 3, 3]
    costs = [sum(specs[i].cost for i in unit) for unit in units2]
    loads = [sum(costs[j] for j in dealt) for dealt in deal_by_cost(costs, 2)]
    assert abs(loads[0] - loads[1]) <= max(costs)
    # vectors asked for: nothing is batched
    assert all(len(u) == 1 for u in work_units(specs, batched=True, top_k=2))


def test_batches_respect_the_memory_cap() -> None:
    shape = (2048, 1024)  # 2**21 elements: at most 16 per batch
    specs = [spec(f"m{i}", shape) for i in range(40)]
    units = work_units(specs, batched=True)
    assert max(len(u) for u in units) * shape[0] * shape[1] <= MAX_BATCH_ELEMENTS


def test_unknown_batch_mode_is_one_line_error() -> None:
    with pytest.raises(SpectralError, match="unknown batch mode 'yes'"):
        AnalysisOptions(batch="yes")


def test_engine_batched_snapshot_equals_unbatched(tmp_path: Path) -> None:
    folder = tmp_path / "gpt2"
    save_tiny("gpt2", folder)
    # a non-finite matrix among same-shaped ones must still be flagged as the unbatched path flags it
    gen = torch.Generator().manual_seed(3)
    tensors = {f"layer.{i}.weight": torch.randn(20, 12, generator=gen) for i in range(4)}
    tensors["layer.2.weight"][3, 4] = float("nan")
    save_file(tensors, tmp_path / "stack.safetensors")
    for source in (folder, tmp_path / "stack.safetensors"):
        on = hf_spectral.analyze(str(source), progress=False, device="cpu", batch="on")
        off = hf_spectral.analyze(str(source), progress=False, device="cpu", batch="off")
        pd.testing.assert_frame_equal(on.table, off.table, check_exact=False, rtol=1e-9, atol=1e-12)
        assert on.spectra.keys() == off.spectra.keys()
        for name, sigma in off.spectra.items():
            assert np.abs(on.spectra[name] - sigma).max() <= 1e-10 * sigma[0], name
    flagged = on.table.set_index("name").loc["layer.2.weight", "flag"]
    assert flagged == "non_finite"
    for name in ("layer.0.weight", "layer.3.weight"):
        reference = numpy_sigma(tensors[name])
        assert np.abs(on.spectra[name] - reference).max() <= 1e-4 * reference[0]
