"""``hf-spectral analyze``: the printed table, the written snapshot, Trainer runs, and one resolution per call."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import hf_spectral
from hf_spectral.cli import main
from hf_spectral.sources import hub

resolve_module = importlib.import_module("hf_spectral.sources.resolve")  # the module, not the function
from tiny_models import fake_hub_cache, private_module_cache_fixture, save_tiny, saved_tiny_fixture

private_module_cache = private_module_cache_fixture()  # no ~/.cache/hf_spectral in tests


gpt2_dir = saved_tiny_fixture("gpt2")


def run(capsys: pytest.CaptureFixture, *args: str) -> str:
    code = main(["analyze", *args, "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def numpy_sigma(t: torch.Tensor) -> np.ndarray:
    return np.linalg.svd(t.double().numpy(), compute_uv=False)


def test_table_summary_and_snapshot(gpt2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = run(capsys, str(gpt2_dir))
    lines = out.splitlines()
    assert lines[0].split() == ["name", "kind", "shape", "dtype", "erank/R", "srank/R", "sigma_max", "flag"]
    assert any(line.split()[:3] == ["transformer.h.0.attn.c_attn.weight", "fused_qkv", "96x32"] for line in lines)
    assert "11 matrices, 0 skipped, 0 flagged; mean erank/R" in out
    assert out.strip().endswith("snapshot written to spectral/gpt2")
    snapshot = hf_spectral.read_snapshot(tmp_path / "spectral" / "gpt2")
    from safetensors import safe_open

    index = {}
    for f in gpt2_dir.glob("*.safetensors"):
        with safe_open(str(f), "pt") as h:
            index.update({k: h.get_tensor(k) for k in h.keys()})
    # Conv1D stores (in, out): the matrix is its transpose, same singular values
    expected = numpy_sigma(index["transformer.h.1.mlp.c_proj.weight"])
    got = snapshot.singular_values("transformer.h.1.mlp.c_proj.weight")
    assert np.abs(got - expected).max() <= 1e-4 * expected[0]
    line = next(line for line in lines if line.startswith("transformer.h.1.mlp.c_proj.weight"))
    assert line.split()[2] == "32x128" and float(line.split()[6]) == pytest.approx(expected[0], rel=1e-3)


def test_options_reach_the_snapshot(gpt2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run(capsys, str(gpt2_dir), "--output", str(tmp_path / "o"), "--top-k", "2", "--alignment", "--dtype", "float64",
        "--include", r"\.h\.", "--exclude", "mlp", "--device", "cpu")
    snapshot = hf_spectral.read_snapshot(tmp_path / "o")
    options = snapshot.meta["options"]
    assert options["top_k"] == 2 and options["alignment"] and options["precision"] == "float64"
    assert options["include"] == [r"\.h\."] and options["exclude"] == ["mlp"] and options["device"] == "cpu"
    assert len(snapshot.matrices) == 4 and not snapshot.matrices["name"].str.contains("mlp").any()
    assert {u.shape[1] for u, _ in snapshot.vectors.values()} == {2}
    assert len(snapshot.alignment) > 0 and snapshot.meta["num_processes"] == 1


def test_long_tables_are_cut_unless_all(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    g = torch.Generator().manual_seed(0)
    save_file({f"layers.{i}.weight": torch.randn(4, 3, generator=g) for i in range(45)}, tmp_path / "m.safetensors")
    out = run(capsys, str(tmp_path / "m.safetensors"), "--output", str(tmp_path / "a"))
    assert "... 5 more matrices (--all prints every row)" in out and "layers.44.weight" not in out
    out = run(capsys, str(tmp_path / "m.safetensors"), "--output", str(tmp_path / "b"), "--all")
    assert "layers.44.weight" in out and "more matrices" not in out
    # rows in natural order (layers.2 before layers.10) without a config
    names = hf_spectral.read_snapshot(tmp_path / "b").matrices["name"].tolist()
    assert names[:3] == ["layers.0.weight", "layers.1.weight", "layers.2.weight"] and names[-1] == "layers.44.weight"


def test_trainer_run_gives_one_snapshot_per_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    models = {step: save_tiny("resnet", run_dir / f"checkpoint-{step}", seed=step) for step in (20, 5)}
    out = run(capsys, str(run_dir), "--output", str(tmp_path / "series"))
    assert out.splitlines()[0].startswith("checkpoint-5: 7 matrices") and "2 snapshots written under" in out
    snaps = [hf_spectral.read_snapshot(tmp_path / "series" / f"checkpoint-{s}") for s in (5, 20)]
    assert [s.step for s in snaps] == [5, 20]
    for snap, step in zip(snaps, (5, 20)):
        w = models[step].resnet.embedder.embedder.convolution.weight.detach()
        expected = numpy_sigma(w.reshape(w.shape[0], -1))
        got = snap.singular_values("resnet.embedder.embedder.convolution.weight")
        assert np.abs(got - expected).max() <= 1e-4 * expected[0]
    # a second call reuses every cached snapshot
    import hf_spectral.analyzer as analyzer

    monkeypatch.setattr(analyzer, "run_plan", lambda *a, **k: pytest.fail("recomputed a cached snapshot"))
    assert "2 snapshots written under" in run(capsys, str(run_dir), "--output", str(tmp_path / "series"))


def test_source_is_resolved_once(gpt2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[Path] = []
    real_open = resolve_module.open_checkpoint

    def counting_open(path: Path, **kwargs: object):  # type: ignore[no-untyped-def]
        opened.append(Path(path))
        return real_open(path, **kwargs)

    monkeypatch.setattr(resolve_module, "open_checkpoint", counting_open)
    monkeypatch.setattr(hub, "open_checkpoint", counting_open)
    run(capsys, str(gpt2_dir), "--output", str(tmp_path / "local"))
    assert opened == [gpt2_dir]

    # a Hub id: looked up in the (faked, offline) cache once
    commit = "d" * 40
    fake_hub_cache(tmp_path / "hub", "org/tiny", {commit: gpt2_dir}, {"main": commit})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    downloads = []
    real_download = hub._download
    monkeypatch.setattr(hub, "_download", lambda *a, **k: downloads.append(a) or real_download(*a, **k))
    opened.clear()
    out = run(capsys, "org/tiny", "--output", str(tmp_path / "from_hub"))
    assert len(downloads) == 1 and len(opened) == 1 and "11 matrices" in out
    assert hf_spectral.read_snapshot(tmp_path / "from_hub").meta["commit"] == commit


def test_output_over_a_previous_snapshot_is_replaced(gpt2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run(capsys, str(gpt2_dir), "--output", str(tmp_path / "o"), "--include", "wte")
    assert len(hf_spectral.read_snapshot(tmp_path / "o").matrices) == 1
    run(capsys, str(gpt2_dir), "--output", str(tmp_path / "o"))
    assert len(hf_spectral.read_snapshot(tmp_path / "o").matrices) == 11
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]
    shutil.rmtree(tmp_path / "o")


def test_version_is_the_installed_distribution(capsys: pytest.CaptureFixture) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"hf-spectral {version('hf-spectral')}"


def test_default_outputs_are_unique_per_source(tmp_path: Path, capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Two folders both named ``model`` never share ``spectral/model``; a file source gets no folder named
    ``model.safetensors``; the same source again reuses its folder."""
    monkeypatch.chdir(tmp_path)
    save_tiny("gpt2", tmp_path / "a" / "model", seed=0, max_shard_size="10MB")
    save_tiny("gpt2", tmp_path / "b" / "model", seed=1, max_shard_size="10MB")
    (tmp_path / "c").mkdir()
    shutil.copy(tmp_path / "b" / "model" / "model.safetensors", tmp_path / "c" / "model.safetensors")
    assert run(capsys, "a/model").strip().endswith("snapshot written to spectral/model")
    assert run(capsys, "b/model").strip().endswith("snapshot written to spectral/b_model")
    assert run(capsys, "c/model.safetensors").strip().endswith("snapshot written to spectral/c_model")
    assert run(capsys, "./a/model/").strip().endswith("snapshot written to spectral/model")  # the same source
    assert sorted(p.name for p in (tmp_path / "spectral").iterdir()) == ["b_model", "c_model", "model"]
    # each folder holds its own source's spectra (numpy on that source's weights)
    name = "transformer.h.1.mlp.c_proj.weight"
    for folder, weights in (("model", "a/model/model.safetensors"), ("b_model", "b/model/model.safetensors"),
                            ("c_model", "c/model.safetensors")):
        from safetensors.torch import load_file

        expected = numpy_sigma(load_file(tmp_path / weights)[name])
        got = hf_spectral.read_snapshot(tmp_path / "spectral" / folder).singular_values(name)
        assert np.abs(got - expected).max() <= 1e-4 * expected[0], folder
