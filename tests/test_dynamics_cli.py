"""``hf-spectral dynamics`` and ``hf-spectral compare``: printed per-layer tables, written tables, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hf_spectral.cli import main
from hf_spectral.dynamics import Comparison, load_dynamics


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    """A run of a 2-layer linear model without config: checkpoint-{1,2,3}/model.safetensors + trainer_state.json."""
    gen = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(8, 6, generator=gen), torch.randn(4, 8, generator=gen)
    history = []
    for step in (1, 2, 3):
        w1, w2 = w1 * 1.2, w2 + 0.1 * torch.randn(4, 8, generator=gen)
        history.append({"loss": 1.0 / step, "step": step})
        folder = tmp_path / "run" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file({"l1.weight": w1.contiguous(), "l2.weight": w2.contiguous()}, folder / "model.safetensors")
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))
    return tmp_path / "run"


def test_dynamics_command_prints_and_writes(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tables"
    assert main(["dynamics", str(run), "--output", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "3 snapshots, steps 1..3; reference: checkpoint-3" in printed
    assert "erank/R first" in printed and "agree@10 first" in printed and "l2.weight" in printed
    dyn = load_dynamics(out)
    assert dyn.steps == [1, 2, 3] and dyn.matrices == ["l1.weight", "l2.weight"]
    assert dyn.training["value"].tolist() == [1.0, 0.5, 1.0 / 3]
    # l1 is only scaled: its singular vectors agree exactly with the final ones (up to float32 storage).
    first = dyn.agreement_scores.query("matrix == 'l1.weight' and step == 1 and reference_kind == 'reference'")
    assert first["score"].item() == pytest.approx(1.0, abs=1e-6)
    assert not (run / "spectral_cache").exists()  # snapshots go to the cache every command shares
    # Another reference; tables replaced in place.
    assert main(["dynamics", str(run), "--output", str(out), "--reference", "checkpoint-1", "--no-progress"]) == 0
    assert load_dynamics(out).meta["reference"] == "checkpoint-1"


def test_dynamics_command_on_several_checkpoints(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "two"
    sources = [str(run / "checkpoint-3"), str(run / "checkpoint-1")]
    assert main(["dynamics", *sources, "--output", str(out), "--top-k", "3", "--no-progress"]) == 0
    dyn = load_dynamics(out)
    assert dyn.meta["labels"] == ["checkpoint-1", "checkpoint-3"]  # both steps known: time order
    assert dyn.agreement.groupby(["step", "matrix"]).size().max() == 3
    assert not (tmp_path / "two-snapshots").exists()  # cached in $HF_SPECTRAL_CACHE, not beside the tables


def test_dynamics_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dynamics", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    assert "error: no such file or folder" in capsys.readouterr().err
    assert main(["dynamics", str(tmp_path), "--revisions", "step*"]) == 2
    assert "--revisions applies to Hub model ids only" in capsys.readouterr().err


def test_compare_command(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    a, b = run / "checkpoint-1", run / "checkpoint-3"
    assert main(["compare", str(a), str(b), "--output", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "agree@10" in printed and "sigma_max(A-B)" in printed and "l1.weight" in printed
    result = Comparison.load(out)
    # l1 at step 3 is 1.2² × l1 at step 1: the difference is −0.44 × l1(1), its σ_max 0.44 σ_max(A).
    row = result.layers.set_index("matrix").loc["l1.weight"]
    assert row["diff_sigma_max"] == pytest.approx(0.44 * row["sigma_max_a"], rel=1e-5)
    assert row["agreement"] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(row["sigma_max_b"] / row["sigma_max_a"], 1.44, rtol=1e-6)
    assert main(["compare", str(a), str(run), "--no-progress"]) == 2
    assert "holds 3 checkpoints" in capsys.readouterr().err


def test_hub_revisions_on_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A minimal Hub cache (snapshots/<commit>/model.safetensors, refs/<tag>): dynamics over 'step*', and
    compare of two revisions."""
    import hashlib
    import os

    repo = tmp_path / "hub" / "models--org--tiny"
    gen = torch.Generator().manual_seed(1)
    weights = {}
    for step in (1, 2, 3):
        commit = str(step) * 40
        weights[step] = torch.randn(5, 4, generator=gen)
        folder = tmp_path / f"w{step}"
        folder.mkdir()
        save_file({"fc.weight": weights[step]}, folder / "model.safetensors")
        data = (folder / "model.safetensors").read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / "model.safetensors"
        link.parent.mkdir(parents=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / f"step{step}").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    assert main(["dynamics", "org/tiny", "--revisions", "step*", "--no-progress"]) == 0
    assert "3 snapshots, steps 1..3; reference: step3" in capsys.readouterr().out
    dyn = load_dynamics(tmp_path / "spectral" / "tiny" / "dynamics")
    assert dyn.meta["labels"] == ["step1", "step2", "step3"]
    assert main(["compare", "org/tiny", "org/tiny", "--revision-a", "step1", "--revision-b", "step3", "--no-progress"]) == 0
    assert "A: org/tiny@step1" in capsys.readouterr().out
    assert main(["compare", "org/tiny", "org/tiny", "--revision-a", "step1", "--revision-b", "step3", "--no-progress",
                 "--output", "cmp"]) == 0
    result = Comparison.load(tmp_path / "cmp")
    want = np.linalg.svd((weights[1].double() - weights[3].double()).numpy(), compute_uv=False)
    got = result.spectra.query("model == 'difference'").sort_values("index")["sigma"].to_numpy()
    np.testing.assert_allclose(got, want, atol=1e-6 * want[0])
