"""Bad input through the CLI and the Python API: one ``error: ...`` line naming the file or layer, exit
status 2, no traceback, and no output left behind; odd but valid tensors are flagged or skipped."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import hf_spectral
from hf_spectral.analyzer import analyze_resolved
from hf_spectral.cli import main
from hf_spectral.engine import AnalysisOptions
from hf_spectral.errors import SpectralError
from hf_spectral.sources import resolve
from tiny_models import private_module_cache_fixture, saved_tiny_fixture

private_module_cache = private_module_cache_fixture()  # no ~/.cache/hf_spectral in tests


gpt2_dir = saved_tiny_fixture("gpt2")


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory: the CLI's default output (spectral/...) would appear here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def copy_of(folder: Path, where: Path) -> Path:
    target = where / folder.name
    shutil.copytree(folder, target)
    return target


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def cli_fails(capsys: pytest.CaptureFixture, work: Path, source: str, *patterns: str, extra: tuple[str, ...] = ()) -> str:
    """The CLI prints exactly one ``error:`` line with every pattern, exits 2 and writes nothing."""
    before = tree(work)
    code = main(["analyze", source, "--no-progress", "--output", str(work / "out"), *extra])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    for pattern in patterns:
        assert pattern in lines[0], (pattern, lines[0])
    assert not (work / "out").exists()
    assert tree(work) == before
    # the default output folder is not made either
    code = main(["analyze", source, "--no-progress", *extra])
    assert code == 2 and not (work / "spectral").exists()
    capsys.readouterr()
    return lines[0]


def api_fails(source: str, *patterns: str, **kwargs: object) -> str:
    with pytest.raises(SpectralError) as info:
        hf_spectral.analyze(source, progress=False, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for pattern in patterns:
        assert pattern in message, (pattern, message)
    return message


def test_missing_path(work: Path, capsys: pytest.CaptureFixture) -> None:
    missing = str(work / "no" / "such" / "model")
    cli_fails(capsys, work, missing, f"no such file or folder: {missing}")
    api_fails(missing, f"no such file or folder: {missing}")


def test_hub_id_absent_from_the_cache_while_offline(work: Path, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(work / "empty_cache"))
    for run in (lambda *p: cli_fails(capsys, work, "org/absent-model", *p), lambda *p: api_fails("org/absent-model", *p)):
        run("org/absent-model", "hf download org/absent-model --revision main", "HF_HUB_OFFLINE")


def test_truncated_shard(gpt2_dir: Path, work: Path, capsys: pytest.CaptureFixture) -> None:
    folder = copy_of(gpt2_dir, work)
    shard = sorted(folder.glob("*.safetensors"))[2]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 64])
    cli_fails(capsys, work, str(folder), str(shard), "truncated or corrupt", "re-download")
    api_fails(str(folder), str(shard), "truncated or corrupt")


def test_corrupt_safetensors_header(work: Path, capsys: pytest.CaptureFixture) -> None:
    path = work / "weights.safetensors"
    save_file({"w": torch.randn(8, 8)}, path)
    data = path.read_bytes()
    path.write_bytes(data[:8] + b"{not json" + data[17:])
    cli_fails(capsys, work, str(path), str(path), "truncated or corrupt")
    api_fails(str(path), str(path), "truncated or corrupt")


def test_index_names_a_missing_shard(gpt2_dir: Path, work: Path, capsys: pytest.CaptureFixture) -> None:
    folder = copy_of(gpt2_dir, work)
    shard = sorted(folder.glob("*.safetensors"))[-1]
    shard.unlink()
    index = folder / "model.safetensors.index.json"
    cli_fails(capsys, work, str(folder), str(index), shard.name, "missing")
    api_fails(str(folder), str(index), shard.name)


def test_filter_that_selects_nothing_lists_what_exists(gpt2_dir: Path, work: Path, capsys: pytest.CaptureFixture) -> None:
    line = cli_fails(capsys, work, str(gpt2_dir), str(gpt2_dir), "--include 'attn.q_proj'", "available matrices:",
                     "transformer.wte.weight", extra=("--include", "attn.q_proj"))
    assert "11 in all" in line
    api_fails(str(gpt2_dir), "--exclude '.'", "transformer.wte.weight", exclude=".")


def test_unwritable_output_fails_before_any_work(gpt2_dir: Path, work: Path, capsys: pytest.CaptureFixture) -> None:
    (work / "a_file").write_text("x")
    code = main(["analyze", str(gpt2_dir), "--no-progress", "--output", str(work / "a_file" / "snap")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: cannot write snapshot to ")
    assert str(work / "a_file" / "snap") in err[0]
    (work / "notes").mkdir()
    (work / "notes" / "keep.txt").write_text("mine")
    code = main(["analyze", str(gpt2_dir), "--no-progress", "--output", str(work / "notes")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not an hf_spectral snapshot" in err[0]
    assert sorted(os.listdir(work)) == ["a_file", "notes"] and (work / "notes" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("backend, method", [("torch", "read"), ("numpy", "read_array")])
def test_tensor_unreadable_during_the_svds_names_the_layer(gpt2_dir: Path, work: Path, backend: str, method: str) -> None:
    (checkpoint,) = resolve(str(gpt2_dir))
    reader = checkpoint.parts[0].reader
    real_read = getattr(reader, method)

    def flaky(name: str) -> torch.Tensor:
        if name == "transformer.h.1.mlp.c_fc.weight":
            raise OSError(5, "Input/output error")
        return real_read(name)

    setattr(reader, method, flaky)
    options = AnalysisOptions(progress=False, device="cpu", backend=backend)
    with pytest.raises(SpectralError) as info:
        analyze_resolved([checkpoint], options, source=str(gpt2_dir), output=work / "out")
    assert str(info.value).startswith("transformer.h.1.mlp.c_fc.weight: cannot read transformer.h.1.mlp.c_fc.weight")
    assert "Input/output error" in str(info.value) and "\n" not in str(info.value)
    assert not (work / "out").exists()


# ------------------------------------------------------------------ valid but odd: the run goes on


def test_non_finite_weights_are_flagged_and_left_out_of_means(work: Path, capsys: pytest.CaptureFixture) -> None:
    g = torch.Generator().manual_seed(0)
    weights = {f"layers.{i}.weight": torch.randn(12, 10, generator=g) for i in range(4)}
    weights["layers.1.weight"][3, 4] = float("inf")
    weights["layers.2.weight"][0, 0] = float("nan")
    save_file(weights, work / "model.safetensors")
    code = main(["analyze", str(work / "model.safetensors"), "--no-progress", "--output", str(work / "out")])
    out = capsys.readouterr().out
    assert code == 0 and "2 flagged" in out and "non_finite" in out
    snapshot = hf_spectral.read_snapshot(work / "out")
    table = snapshot.table.set_index("name")
    assert list(table["status"]) == ["ok", "flagged", "flagged", "ok"]
    assert set(table.loc[["layers.1.weight", "layers.2.weight"], "flag"]) == {"non_finite"}
    assert table.loc[["layers.1.weight", "layers.2.weight"], "normalized_effective_rank"].isna().all()
    assert set(snapshot.spectra) == {"layers.0.weight", "layers.3.weight"}
    # means over the finite matrices only, recomputed here from numpy's σ
    eranks = []
    for name in ("layers.0.weight", "layers.3.weight"):
        s = np.linalg.svd(weights[name].double().numpy(), compute_uv=False)
        p = s / s.sum()
        eranks.append(np.exp(-(p * np.log(p)).sum()) / len(s))
    summary = snapshot.summary()
    assert summary["flagged"] == 2 and summary["matrices"] == 4
    assert summary["mean_normalized_effective_rank"] == pytest.approx(np.mean(eranks), rel=1e-6)
    assert json.loads((work / "out" / "meta.json").read_text())["summary"]["flagged"] == 2


def test_integer_and_quantized_tensors_are_skipped_with_a_reason(work: Path, capsys: pytest.CaptureFixture) -> None:
    g = torch.Generator().manual_seed(0)
    fp8 = torch.randn(6, 5, generator=g).to(torch.float8_e4m3fn)
    save_file({
        "dense.weight": torch.randn(6, 5, generator=g),
        "q.weight": torch.randint(-127, 127, (6, 5), dtype=torch.int8, generator=g),
        "packed.weight": torch.randint(0, 255, (6, 3), dtype=torch.uint8, generator=g),
        "fp8.weight": fp8,
    }, work / "model.safetensors")
    code = main(["analyze", str(work / "model.safetensors"), "--no-progress", "--output", str(work / "out")])
    out = capsys.readouterr().out
    assert code == 0 and "skipped 2 tensors" in out
    table = hf_spectral.read_snapshot(work / "out").table.set_index("name")
    assert table.loc["q.weight", "status"] == "skipped" and "integer/quantized dtype I8" in table.loc["q.weight", "flag"]
    assert table.loc["packed.weight", "status"] == "skipped" and "U8" in table.loc["packed.weight", "flag"]
    assert table.loc["dense.weight", "status"] == "ok" and table.loc["fp8.weight", "status"] == "ok"
    assert table.loc["fp8.weight", "dtype"] == "F8_E4M3"  # float8 is a float weight: upcast exactly
    expected = np.linalg.svd(fp8.to(torch.float64).numpy(), compute_uv=False)
    got = hf_spectral.read_snapshot(work / "out").singular_values("fp8.weight")
    assert np.abs(got - expected).max() <= 1e-4 * expected[0]
    with pytest.raises(SpectralError, match="no weight matrix to analyze.*integer/quantized"):
        save_file({"q.weight": torch.zeros(4, 4, dtype=torch.int8)}, work / "only_int.safetensors")
        hf_spectral.analyze(str(work / "only_int.safetensors"), progress=False)
