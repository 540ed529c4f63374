"""The numpy backend: singular values as exact as the torch backend's (against numpy's float64 SVD), arrays
read straight from safetensors files (BF16 widened exactly), the engine choosing it only where it can do the
whole analysis, and a CPU ``hf-spectral analyze`` of a local folder that never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import hf_spectral
from hf_spectral import engine, metrics, processes
from hf_spectral.errors import SpectralError
from hf_spectral.metrics import numpy_backend
from hf_spectral.sources import SafetensorsReader, resolve
from tiny_models import private_module_cache_fixture, save_tiny

TOL = {"float32": 1e-4, "float64": 1e-9}  # × σ_max: the bounds singular_values promises
private_module_cache = private_module_cache_fixture()


def reference(matrix: np.ndarray) -> np.ndarray:
    return np.linalg.svd(matrix.astype(np.float64), compute_uv=False)


def test_numpy_backend_meets_the_bounds_and_matches_the_torch_backend() -> None:
    rng = np.random.default_rng(0)
    low_rank = (rng.standard_normal((300, 4)) * 10) @ rng.standard_normal((4, 90)) + 1e-3 * rng.standard_normal((300, 90))
    cases = [rng.standard_normal((120, 40)), rng.standard_normal((40, 120)), rng.standard_normal((64, 64)), low_rank,
             rng.standard_normal((2500, 16)) * 1e-3]  # 2500 rows: more than one float64 chunk below
    for matrix in cases:
        for precision in ("float32", "float64"):
            for dtype in (np.float32, np.float64, np.float16):
                stored = matrix.astype(dtype)
                sigma = metrics.singular_values(stored, precision=precision)
                assert isinstance(sigma, np.ndarray) and sigma.dtype == np.float64
                expected = reference(stored)
                assert sigma.shape == expected.shape and np.all(np.diff(sigma) <= 0)
                assert np.abs(sigma - expected).max() <= TOL[precision] * expected[0]
                torch_sigma = metrics.singular_values(torch.from_numpy(stored), precision=precision).numpy()
                assert np.abs(sigma - torch_sigma).max() <= 1e-10 * expected[0]  # the same computation


def test_numpy_backend_chunks_overflow_failures_and_bad_input() -> None:
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((500, 30)).astype(np.float32)
    chunked = numpy_backend.sigma_gram(matrix, chunk_elements=1000)  # 33 rows at a time
    assert np.abs(chunked - reference(matrix)).max() <= 1e-6 * reference(matrix)[0]
    huge = rng.standard_normal((40, 20)) * 1e200  # the float64 Gram overflows: the direct SVD scales itself
    assert np.allclose(metrics.singular_values(huge), reference(huge), rtol=1e-10)
    assert metrics.singular_values(np.zeros((0, 5), dtype=np.float32)).shape == (0,)
    broken = matrix.copy()
    broken[3, 4] = np.nan
    with pytest.raises(metrics.DecompositionError, match="500x30 matrix failed"):
        metrics.singular_values(broken)
    with pytest.raises(metrics.MetricInputError, match="2-D"):
        metrics.singular_values(np.zeros((2, 3, 4), dtype=np.float32))
    with pytest.raises(metrics.MetricInputError, match="precision"):
        metrics.singular_values(matrix, precision="float16")


def test_read_array_is_the_stored_tensor_without_a_copy(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    tensors = {
        "a.f32": torch.randn(7, 5, generator=gen),
        "b.f64": torch.randn(3, 4, generator=gen, dtype=torch.float64),
        "c.f16": torch.randn(6, 2, generator=gen).half(),
        "d.bf16": torch.randn(4, 9, generator=gen).bfloat16(),
        "e.conv": torch.randn(4, 3, 2, 2, generator=gen),
        "f.f8": torch.randn(4, 4, generator=gen).to(torch.float8_e4m3fn),
        "g.int": torch.arange(6, dtype=torch.int64),
    }
    save_file(tensors, tmp_path / "one.safetensors")
    save_file({"h.second": torch.randn(5, 5, generator=gen)}, tmp_path / "two.safetensors")
    with SafetensorsReader([tmp_path / "one.safetensors", tmp_path / "two.safetensors"]) as reader:
        for name in ("a.f32", "b.f64", "c.f16", "e.conv", "h.second"):
            array = reader.read_array(name)
            assert reader.can_read_array(name)
            assert np.array_equal(array, reader.read(name).numpy()) and array.dtype == reader.read(name).numpy().dtype
            assert not array.flags.owndata  # a view of the file mapping
        widened = reader.read_array("d.bf16")
        assert widened.dtype == np.float32 and np.array_equal(widened, tensors["d.bf16"].float().numpy())
        assert not reader.can_read_array("f.f8") and not reader.can_read_array("g.int")
        with pytest.raises(KeyError, match="no tensor 'absent'"):
            reader.read_array("absent")


def conv1d_checkpoint(folder: Path) -> Path:
    """A GPT-2 (Conv1D weights, stored transposed) with one bf16, one zero-filled and one non-finite matrix."""
    save_tiny("gpt2", folder)
    files = sorted(folder.glob("*.safetensors"))
    for file in files:
        tensors = load_file(file)
        for name in list(tensors):
            if name.endswith("h.0.mlp.c_fc.weight"):
                tensors[name] = torch.zeros_like(tensors[name])
            if name.endswith("h.1.attn.c_proj.weight"):
                tensors[name][0, 0] = float("inf")
            if name.endswith("h.1.mlp.c_proj.weight"):
                tensors[name] = tensors[name].bfloat16()
        save_file(tensors, file, metadata={"format": "pt"})
    return folder


def test_numpy_and_torch_backends_give_the_same_snapshot(tmp_path: Path, private_module_cache: Path) -> None:
    folder = conv1d_checkpoint(tmp_path / "gpt2")
    for extra in ({}, {"heavy_tail": True}, {"precision": "float64"}):
        by_numpy = hf_spectral.analyze(folder, progress=False, device="cpu", backend="numpy", **extra)
        by_torch = hf_spectral.analyze(folder, progress=False, device="cpu", backend="torch", **extra)
        assert (by_numpy.meta["backend"], by_torch.meta["backend"]) == ("numpy", "torch")
        assert by_numpy.spectra.keys() == by_torch.spectra.keys() and len(by_numpy.spectra) > 5
        for name, sigma in by_torch.spectra.items():
            assert np.abs(by_numpy.spectra[name] - sigma).max() <= 1e-10 * max(sigma[0], 1e-300)
        left, right = by_numpy.table, by_torch.table
        assert left.columns.tolist() == right.columns.tolist() and left.dtypes.tolist() == right.dtypes.tolist()
        for column in left.columns:
            if left[column].dtype.kind == "f":
                np.testing.assert_allclose(left[column], right[column], rtol=1e-8, atol=1e-12, equal_nan=True)
            else:
                assert left[column].tolist() == right[column].tolist(), column
        flags = dict(zip(left["name"], left["flag"]))
        assert flags["transformer.h.0.mlp.c_fc.weight"] == "zero_matrix"
        assert flags["transformer.h.1.attn.c_proj.weight"] == "non_finite"
    # the matrices themselves: numpy's float64 SVD of the stored weights (Conv1D transposed, bf16 upcast)
    stored = {k: v for f in folder.glob("*.safetensors") for k, v in load_file(f).items()}
    snapshot = hf_spectral.analyze(folder, progress=False, device="cpu", backend="numpy")
    for name in ("transformer.h.1.mlp.c_proj.weight", "transformer.h.0.attn.c_attn.weight"):
        expected = reference(stored[name].float().numpy().T)
        assert np.abs(snapshot.spectra[name] - expected).max() <= TOL["float32"] * expected[0]


def test_auto_chooses_numpy_only_where_it_can_do_the_whole_plan(tmp_path: Path, private_module_cache: Path) -> None:
    save_tiny("gpt2", tmp_path / "gpt2")
    (checkpoint,) = resolve(str(tmp_path / "gpt2"))
    state = engine.process_state()

    def backend(**options: object) -> str:
        return engine.compute_backend(engine.plan_checkpoint(checkpoint, engine.AnalysisOptions(**options)),
                                      engine.AnalysisOptions(**options), state)

    assert backend(device="cpu") == "numpy"
    assert backend(device="cpu", heavy_tail=True) == "numpy"
    assert backend(device="auto") == ("torch" if torch.cuda.is_available() else "numpy")
    for options in ({"top_k": 3}, {"alignment": True}, {"batch": "on"}, {"backend": "torch"},
                    {"heavy_tail": True, "view": "ww"}):
        assert backend(device="cpu", **options) == "torch", options
    with pytest.raises(SpectralError, match="backend 'numpy' cannot compute this analysis: singular vectors"):
        backend(device="cpu", top_k=3, backend="numpy")
    with pytest.raises(SpectralError, match="unknown backend"):
        engine.AnalysisOptions(backend="jax")
    checkpoint.close()
    # a .bin checkpoint and a float8 tensor are torch's
    torch.save({"w.weight": torch.randn(6, 4)}, tmp_path / "pytorch_model.bin")
    save_file({"w.weight": torch.randn(6, 4).to(torch.float8_e4m3fn)}, tmp_path / "f8.safetensors")
    for source in (tmp_path / "pytorch_model.bin", tmp_path / "f8.safetensors"):
        snapshot = hf_spectral.analyze(source, progress=False, device="cpu")
        assert snapshot.meta["backend"] == "torch" and len(snapshot.spectra) == 1


def test_torch_build_file_decides_auto_without_importing_torch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    package = tmp_path / "torch"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    spec = type("Spec", (), {"origin": str(package / "__init__.py")})()
    monkeypatch.setattr(processes.importlib.util, "find_spec", lambda name: spec)
    monkeypatch.setattr(processes.sys, "platform", "linux")
    cases = {
        "cuda: Optional[str] = None\nhip: Optional[str] = None\nrocm: Optional[str] = None\nxpu: Optional[str] = None\n": False,
        "cuda: Optional[str] = '12.8'\nhip: Optional[str] = None\n": True,
        "cuda = None\nhip = '6.2.4'\n": True,
        "__version__ = '9.0'\n": True,  # cannot tell: torch decides
    }
    for text, has in cases.items():
        (package / "version.py").write_text(text)
        processes.torch_build_has_accelerator.cache_clear()
        assert processes.torch_build_has_accelerator() is has, text
    processes.torch_build_has_accelerator.cache_clear()


NOT_NEEDED = ("torch", "accelerate", "transformers", "diffusers", "huggingface_hub", "matplotlib")


def test_cli_analyze_of_a_local_folder_imports_no_torch(tmp_path: Path, private_module_cache: Path) -> None:
    folder = tmp_path / "gpt2"
    save_tiny("gpt2", folder)
    probe = (
        "import json, sys\n"
        "from hf_spectral.cli import main\n"
        f"code = main(['analyze', {str(folder)!r}, '--output', {str(tmp_path / 'out')!r}, '--no-progress', "
        "'--device', *sys.argv[1:]])\n"
        f"print('LOADED ' + json.dumps([m for m in {NOT_NEEDED!r} if m in sys.modules]))\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(hf_spectral.__file__).parents[1]), "HF_HUB_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)
    for device, *extra in (("cpu", "--metrics", "heavy_tail"), ("auto",)):
        done = subprocess.run([sys.executable, "-c", probe, device, *extra], capture_output=True, text=True, env=env,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        loaded = json.loads(done.stdout.split("LOADED ", 1)[1])
        expected = [] if device == "cpu" or not processes.torch_build_has_accelerator() else ["torch", "accelerate"]
        assert [m for m in loaded if m not in expected] == [], (device, loaded)
        snapshot = hf_spectral.read_snapshot(tmp_path / "out")
        on_gpu = device == "auto" and torch.cuda.is_available()
        assert snapshot.meta["backend"] == ("torch" if on_gpu else "numpy") and len(snapshot.spectra) > 5
