"""Fault suite, inputs (docs/guarantees.md): paths taken from file contents (shard names, pipeline
components, Hub revisions and refs) never lead outside the model folder; symbolic link loops are
named; a failing SVD costs only its matrix; an empty matrix is skipped with a reason."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hf_spectral import analyze, engine
from hf_spectral.cli import main
from hf_spectral.errors import SpectralError
from hf_spectral.sources import resolve
from tiny_models import fake_hub_cache, private_module_cache_fixture, save_ddpm_pipeline, save_tiny

private_module_cache = private_module_cache_fixture()


def weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(6, 4, generator=g), "b.weight": torch.randn(5, 6, generator=g),
            "c.weight": torch.randn(3, 5, generator=g)}


def sharded(folder: Path, shard_name: str) -> Path:
    """A model folder whose index names ``shard_name`` for one tensor (the other shard is inside)."""
    folder.mkdir(parents=True)
    tensors = weights()
    save_file({"a.weight": tensors["a.weight"]}, str(folder / "model-00001-of-00002.safetensors"))
    index = {"metadata": {}, "weight_map": {"a.weight": "model-00001-of-00002.safetensors", "b.weight": shard_name}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def one_line_error(source: str, *needles: str) -> str:
    with pytest.raises(SpectralError) as info:
        resolve(source)
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in needles), message
    return message


@pytest.mark.parametrize("shard", ["../outside/evil.safetensors", "../../outside/evil.safetensors",
                                   "/etc/shadow", "sub/../../evil.safetensors", "C:\\evil.safetensors"])
def test_index_naming_a_shard_outside_the_folder_is_refused(tmp_path: Path, shard: str) -> None:
    (tmp_path / "outside").mkdir()
    save_file({"b.weight": weights()["b.weight"]}, str(tmp_path / "outside" / "evil.safetensors"))
    folder = sharded(tmp_path / "models" / "m", shard)
    one_line_error(str(folder), "outside", repr(shard))
    one_line_error(str(folder / "model.safetensors.index.json"), "outside")  # the index file as SOURCE too


def test_shard_that_links_outside_the_folder_is_refused(tmp_path: Path) -> None:
    save_file({"b.weight": weights()["b.weight"]}, str(tmp_path / "evil.safetensors"))
    folder = sharded(tmp_path / "m", "model-00002-of-00002.safetensors")
    (folder / "model-00002-of-00002.safetensors").symlink_to(tmp_path / "evil.safetensors")
    one_line_error(str(folder), "links to", str(tmp_path / "evil.safetensors"))


def test_sharded_model_in_the_hub_cache_links_to_blobs_and_is_read(tmp_path: Path) -> None:
    model = save_tiny("gpt2", tmp_path / "local")  # several shards + index
    assert len(list((tmp_path / "local").glob("*.safetensors"))) > 1
    fake_hub_cache(tmp_path / "hub", "org/tiny", {"a" * 40: tmp_path / "local"}, {"main": "a" * 40})
    (checkpoint,) = resolve("org/tiny", cache_dir=tmp_path / "hub")
    name = "transformer.h.0.attn.c_attn.weight"
    part = checkpoint.parts[0]
    np.testing.assert_array_equal(part.reader.read(name).numpy(), model.state_dict()[name].numpy())
    checkpoint.close()


def test_pipeline_component_outside_the_folder_is_refused(tmp_path: Path) -> None:
    save_ddpm_pipeline(tmp_path / "outside")
    pipe = tmp_path / "pipes" / "p"
    save_ddpm_pipeline(pipe)
    index = json.loads((pipe / "model_index.json").read_text())
    index["../../outside/unet"] = ["diffusers", "UNet2DModel"]
    (pipe / "model_index.json").write_text(json.dumps(index))
    one_line_error(str(pipe), "model_index.json names component", "outside")


@pytest.mark.parametrize("revision", ["../../outside", "/etc", "main/../../x", "refs/../.."])
def test_offline_revision_that_reads_like_a_path_is_refused(tmp_path: Path, revision: str) -> None:
    save_tiny("gpt2", tmp_path / "local", max_shard_size="10MB")
    fake_hub_cache(tmp_path / "hub", "org/tiny", {"a" * 40: tmp_path / "local"}, {"main": "a" * 40})
    (tmp_path / "outside").write_text("a" * 40)  # a planted ref file outside the cache
    with pytest.raises(SpectralError, match="reads like a path") as info:
        resolve("org/tiny", revision=revision, cache_dir=tmp_path / "hub")
    assert "\n" not in str(info.value)


def test_planted_ref_pointing_outside_the_cache_is_refused(tmp_path: Path) -> None:
    save_tiny("gpt2", tmp_path / "local", max_shard_size="10MB")
    repo = tmp_path / "hub" / "models--org--tiny"
    fake_hub_cache(tmp_path / "hub", "org/tiny", {"a" * 40: tmp_path / "local"}, {"main": "a" * 40})
    save_tiny("gpt2", tmp_path / "elsewhere", max_shard_size="10MB")
    (repo / "refs" / "evil").write_text(os.path.relpath(tmp_path / "elsewhere", repo / "snapshots"))
    with pytest.raises(SpectralError, match="outside") as info:
        resolve("org/tiny", revision="evil", cache_dir=tmp_path / "hub")
    assert "\n" not in str(info.value)


def test_symlink_loop_is_named_as_such(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    one_line_error(str(tmp_path / "a"), "symbolic link loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "nothing")
    one_line_error(str(tmp_path / "dangling"), "symbolic link to", "does not exist")
    assert main(["analyze", str(tmp_path / "a"), "--no-progress"]) == 2
    assert "symbolic link loop" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ engine


def test_a_failing_svd_flags_its_matrix_and_keeps_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tensors = weights()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    real = engine.metrics.singular_values
    calls = []

    def failing(matrix, **kwargs):  # one matrix in three fails, as an injected fault
        calls.append(1)
        if len(calls) == 2:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return real(matrix, **kwargs)

    monkeypatch.setattr(engine.metrics, "singular_values", failing)
    snapshot = analyze(tmp_path / "model.safetensors", progress=False)
    rows = snapshot.table.set_index("name")
    failed = rows[rows["flag"].str.startswith("svd_failed")]
    assert len(failed) == 1 and failed["status"].item() == "flagged" and "converge" in failed["flag"].item()
    assert failed.index[0] not in snapshot.spectra
    for name in set(tensors) - set(failed.index):  # the others: exact against numpy float64
        expected = np.linalg.svd(tensors[name].double().numpy(), compute_uv=False)
        np.testing.assert_allclose(snapshot.spectra[name], expected, rtol=1e-5)
    assert snapshot.summary()["flagged"] == 1 and snapshot.summary()["matrices"] == 3


def test_empty_matrix_is_skipped_with_a_reason(tmp_path: Path) -> None:
    tensors = {**weights(), "empty.weight": torch.zeros(0, 8), "thin.weight": torch.zeros(8, 0)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    snapshot = analyze(tmp_path / "model.safetensors", progress=False)
    skipped = snapshot.skipped.set_index("name")
    assert skipped.loc["empty.weight", "flag"] == "empty 0x8 matrix: no singular values"
    assert skipped.loc["thin.weight", "flag"] == "empty 8x0 matrix: no singular values"
    expected = np.linalg.svd(tensors["b.weight"].double().numpy(), compute_uv=False)
    np.testing.assert_allclose(snapshot.spectra["b.weight"], expected, rtol=1e-5)


class _Planted:
    """Unpickling this runs code: it creates ``marker`` (a stand-in for anything an attacker runs)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_malicious_pickle_is_refused_and_never_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "code-ran"
    torch.save({"w.weight": torch.ones(3, 3), "payload": _Planted(marker)}, tmp_path / "pytorch_model.bin")
    assert not marker.exists()
    assert main(["analyze", str(tmp_path / "pytorch_model.bin"), "--output", str(tmp_path / "out"),
                 "--no-progress"]) == 2
    assert "not loaded for safety" in capsys.readouterr().err
    assert not marker.exists()
    torch.load(tmp_path / "pytorch_model.bin", weights_only=False)  # what an unsafe reader would do
    assert marker.exists()  # the payload is real
