"""``hf_spectral.register_architecture``: a user's own model family joins the registry (views, order,
pairing) without an entry inside the library; the CLI loads such registrations with ``--register``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import hf_spectral
from hf_spectral.cli import main
from hf_spectral.errors import SpectralError
from hf_spectral.store import read_snapshot
from hf_spectral.tensor_info import TensorInfo
from hf_spectral.views import alignment_pairs, plan_matrices, rules_for
from hf_spectral.views import registry

CONFIG = {"model_type": "toy_chain"}


@pytest.fixture(autouse=True)
def private_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations last for the process: each test gets its own copy of the registry."""
    monkeypatch.setattr(registry, "_BY_KEY", dict(registry._BY_KEY))


def toy_tensors() -> dict[str, torch.Tensor]:
    """A chain stored out of registration order, with one weight stored (in, out) like an HF Conv1D."""
    g = torch.Generator().manual_seed(0)
    return {"head.weight": torch.randn(3, 6, generator=g), "proj.weight": torch.randn(4, 6, generator=g),
            "stem.weight": torch.randn(4, 5, generator=g)}


def infos(tensors: dict[str, torch.Tensor]) -> list[TensorInfo]:
    return [TensorInfo(k, tuple(v.shape), "F32") for k, v in tensors.items()]


def register_toy(**overrides) -> registry.Family:
    fields = dict(conv1d=(r"(^|\.)proj\.weight$",), first=("stem", "proj", "head"), complete=True,
                  pairing=hf_spectral.SequentialPairing())
    return hf_spectral.register_architecture("toy_chain", **{**fields, **overrides})


def test_registered_family_plans_orders_and_pairs() -> None:
    assert rules_for(CONFIG).name == "generic"
    specs, _ = plan_matrices(infos(toy_tensors()), config=CONFIG)
    assert [s.name for s in specs][0] != "stem.weight" and specs[0].kind == "matrix"  # generic: unknown roles
    family = register_toy()
    assert rules_for(CONFIG).name == "toy_chain" and any(f is family for f in registry.registered_families())
    specs, _ = plan_matrices(infos(toy_tensors()), config=CONFIG)
    assert [(s.name, s.kind, s.shape) for s in specs] == [
        ("stem.weight", "linear", (4, 5)), ("proj.weight", "conv1d_hf", (6, 4)), ("head.weight", "linear", (3, 6))]
    pairs = alignment_pairs(specs, config=CONFIG)
    assert [(p.prev.matrix, p.next.matrix, p.mode) for p in pairs] == [
        ("stem.weight", "proj.weight", "out_in"), ("proj.weight", "head.weight", "out_in")]


def test_registration_conflicts_and_repeats() -> None:
    register_toy()
    register_toy()  # the same family again (a re-imported recipe): nothing changes
    with pytest.raises(SpectralError, match=r"'toy_chain' is already registered.*replace=True"):
        register_toy(first=())
    with pytest.raises(SpectralError, match=r"'gpt2' is already registered"):
        hf_spectral.register_architecture("mine", keys=("gpt2",))
    assert register_toy(first=(), replace=True).first == ()
    with pytest.raises(SpectralError, match=r"register_architecture\('bad'\).*unexpected keyword"):
        hf_spectral.register_architecture("bad", colour="blue")


def test_cli_register_loads_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = tmp_path / "model"
    model.mkdir()
    tensors = toy_tensors()
    save_file(tensors, model / "model.safetensors")
    (model / "config.json").write_text(json.dumps(CONFIG))
    plugin = tmp_path / "toy_plugin.py"
    plugin.write_text("import hf_spectral\n"
                      "hf_spectral.register_architecture('toy_chain', conv1d=(r'(^|\\.)proj\\.weight$',),\n"
                      "                                  first=('stem', 'proj', 'head'), complete=True)\n")
    out = tmp_path / "out"
    assert main(["analyze", str(model), "--no-progress", "--output", str(out), "--register", str(plugin)]) == 0
    rows = read_snapshot(out).matrices.set_index("name")
    assert list(rows.index) == ["stem.weight", "proj.weight", "head.weight"]
    assert (rows.loc["proj.weight", "kind"], rows.loc["proj.weight", "rows"]) == ("conv1d_hf", 6)
    sigma = read_snapshot(out).spectra["proj.weight"]
    np.testing.assert_allclose(sigma, np.linalg.svd(tensors["proj.weight"].double().numpy().T, compute_uv=False),
                               rtol=1e-6)
    capsys.readouterr()
    assert main(["analyze", str(model), "--register", str(tmp_path / "absent.py")]) == 2
    assert "--register" in capsys.readouterr().err
