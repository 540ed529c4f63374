"""Bad SOURCEs fail early with one-line SpectralErrors that name the file and the fix, writing nothing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hf_spectral.errors import SpectralError
from hf_spectral.sources import hub, resolve
from tiny_models import TinyMLP


def mlp_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in TinyMLP().state_dict().items()}


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def fails(tmp_path: Path, source: str, *patterns: str, **kwargs: object) -> str:
    """resolve(source) raises a one-line SpectralError containing every pattern; tmp_path is untouched."""
    before = tree(tmp_path)
    cwd_before = sorted(os.listdir("."))
    with pytest.raises(SpectralError) as info:
        ckpts = resolve(source, **kwargs)
        for c in ckpts:  # .bin files are checked when their tensors are listed (planning time)
            for part in c.parts:
                part.reader.tensors()
    msg = str(info.value)
    assert "\n" not in msg and msg
    for pattern in patterns:
        assert pattern in msg, (pattern, msg)
    assert tree(tmp_path) == before
    assert sorted(os.listdir(".")) == cwd_before
    return msg


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "m"
    d.mkdir()
    names = list(mlp_state())
    sd = mlp_state()
    weight_map = {}
    for i, keys in enumerate([names[:2], names[2:]], start=1):
        fname = f"model-{i:05d}-of-00002.safetensors"
        save_file({k: sd[k] for k in keys}, d / fname)
        weight_map.update({k: fname for k in keys})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (d / "config.json").write_text(json.dumps({"model_type": "mlp"}))
    return d


def test_missing_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_hub(*a: object, **k: object) -> None:
        raise AssertionError("a path-like SOURCE must not reach the Hub")

    monkeypatch.setattr(hub, "snapshot_download", no_hub)
    for source in (str(tmp_path / "nope"), "./nope", "a/b/c", "weights.safetensors", "~/nope", "../x"):
        msg = fails(tmp_path, source, f"no such file or folder: {source}")
        assert msg == f"no such file or folder: {source}"


def test_empty_source(tmp_path: Path) -> None:
    fails(tmp_path, "", "empty SOURCE")


def test_hub_id_not_cached_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    fails(tmp_path, "org/absent", "no such file or folder: org/absent", "hf download org/absent --revision main",
          "HF_HUB_OFFLINE")
    fails(tmp_path, "org/absent", "hf download org/absent --revision v3", revision="v3")


def test_truncated_safetensors_detected_at_resolve(model_dir: Path, tmp_path: Path) -> None:
    shard = model_dir / "model-00002-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 10])
    fails(tmp_path, str(model_dir), str(shard), "truncated or corrupt", "re-download or re-save")


def test_garbage_safetensors_file(tmp_path: Path) -> None:
    (tmp_path / "x.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    fails(tmp_path, str(tmp_path / "x.safetensors"), str(tmp_path / "x.safetensors"), "re-download or re-save")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    fails(tmp_path, str(tmp_path / "empty.safetensors"), "empty.safetensors", "truncated or corrupt")


def test_index_names_missing_shard(model_dir: Path, tmp_path: Path) -> None:
    (model_dir / "model-00002-of-00002.safetensors").unlink()
    fails(tmp_path, str(model_dir), str(model_dir / "model.safetensors.index.json"),
          "model-00002-of-00002.safetensors", "missing", "re-download")


def test_index_disagrees_with_shards(model_dir: Path, tmp_path: Path) -> None:
    index = model_dir / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["net.9.weight"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(data))
    fails(tmp_path, str(model_dir), str(index), "net.9.weight", "re-download")


def test_bad_index_json(model_dir: Path, tmp_path: Path) -> None:
    (model_dir / "model.safetensors.index.json").write_text("{oops")
    fails(tmp_path, str(model_dir), str(model_dir / "model.safetensors.index.json"), "not valid JSON")


def test_shards_without_index_and_missing(model_dir: Path, tmp_path: Path) -> None:
    (model_dir / "model.safetensors.index.json").unlink()
    assert len(resolve(str(model_dir))[0].parts[0].reader.files) == 2  # complete shards need no index
    (model_dir / "model-00001-of-00002.safetensors").unlink()
    fails(tmp_path, str(model_dir), str(model_dir), "no index", "re-download")


def test_folder_without_weights_lists_found_and_expected(tmp_path: Path) -> None:
    d = tmp_path / "empty_model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "tokenizer.json").write_text("{}")
    fails(tmp_path, str(d), f"no weights in {d}", "config.json, tokenizer.json", "expected model.safetensors")
    (d / "tf_model.h5").write_bytes(b"x")
    fails(tmp_path, str(d), "TensorFlow", "not supported")
    (d / "adapter_model.safetensors").write_bytes(b"x")
    fails(tmp_path, str(d), "pass that file itself")


def test_snapshots_are_not_taken_for_weights(model_dir: Path, tmp_path: Path) -> None:
    """A snapshot's spectra.safetensors holds top-k U/V factors: read as weights they would give
    plausible-looking garbage, so a snapshot, its arrays file and a record are refused by name."""
    import hf_spectral

    record = tmp_path / "record"
    hf_spectral.analyze(str(model_dir), output=record / "step-000010", top_k=2, progress=False, device="cpu")
    snapshot = record / "step-000010"
    fails(tmp_path, str(snapshot), f"{snapshot} is an hf_spectral snapshot (spectra, not weights)", "read_snapshot")
    fails(tmp_path, str(snapshot / "spectra.safetensors"), "is an hf_spectral snapshot")
    fails(tmp_path, str(record), f"{record} holds hf_spectral snapshots", "hf-spectral dynamics")


def test_folder_of_model_folders_points_at_them(model_dir: Path, tmp_path: Path) -> None:
    fails(tmp_path, str(tmp_path), "its subfolders m/ hold models")


def test_bad_config_json(model_dir: Path, tmp_path: Path) -> None:
    (model_dir / "config.json").write_text('{"model_type": "mlp",}')
    fails(tmp_path, str(model_dir), str(model_dir / "config.json"), "not valid JSON")
    (model_dir / "config.json").write_text("[1, 2]")
    fails(tmp_path, str(model_dir), str(model_dir / "config.json"), "not a JSON object")


def test_bad_model_index_and_trainer_state(tmp_path: Path) -> None:
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "model_index.json").write_text("not json")
    fails(tmp_path, str(pipe), str(pipe / "model_index.json"))
    run = tmp_path / "run" / "checkpoint-5"
    run.mkdir(parents=True)
    save_file(mlp_state(), run / "model.safetensors")
    (run / "trainer_state.json").write_text("{")
    fails(tmp_path, str(tmp_path / "run"), str(run / "trainer_state.json"))


def test_run_checkpoint_without_weights(tmp_path: Path) -> None:
    for n in (1, 2):
        (tmp_path / "run" / f"checkpoint-{n}").mkdir(parents=True)
    save_file(mlp_state(), tmp_path / "run" / "checkpoint-1" / "model.safetensors")
    (tmp_path / "run" / "checkpoint-2" / "optimizer.pt").write_bytes(b"x")
    msg = fails(tmp_path, str(tmp_path / "run"), str(tmp_path / "run" / "checkpoint-2"), "optimizer.pt")
    assert "pass that file" not in msg  # Trainer extras are not offered as weights


def _variants_dir(tmp_path: Path, variants: list[str | None]) -> Path:
    d = tmp_path / "v"
    d.mkdir()
    for v in variants:
        save_file(mlp_state(), d / ("model.safetensors" if v is None else f"model.{v}.safetensors"))
    return d


def test_several_variants_and_no_plain(tmp_path: Path) -> None:
    d = _variants_dir(tmp_path, ["fp16", "ema"])
    fails(tmp_path, str(d), str(d), "ema, fp16", "--variant")
    assert resolve(str(d), variant="ema")[0].parts[0].reader.files == [d / "model.ema.safetensors"]


def test_requested_variant_absent(tmp_path: Path) -> None:
    d = _variants_dir(tmp_path, [None, "fp16"])
    fails(tmp_path, str(d), "no 'bf16' variant", "plain, fp16", variant="bf16")


def test_pipeline_component_config_without_weights(tmp_path: Path) -> None:
    pipe = tmp_path / "pipe"
    (pipe / "unet").mkdir(parents=True)
    (pipe / "scheduler").mkdir()
    (pipe / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DModel"],
                                                       "scheduler": ["diffusers", "DDPMScheduler"]}))
    (pipe / "unet" / "config.json").write_text("{}")
    (pipe / "scheduler" / "scheduler_config.json").write_text("{}")
    fails(tmp_path, str(pipe), f"model component {pipe / 'unet'} has a config.json but no weights")


def test_pipeline_variant_that_no_component_has(tmp_path: Path) -> None:
    pipe = tmp_path / "pipe"
    (pipe / "unet").mkdir(parents=True)
    (pipe / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DModel"]}))
    save_file(mlp_state(), pipe / "unet" / "diffusion_pytorch_model.safetensors")
    fails(tmp_path, str(pipe), "no component", "'fp16' variant", variant="fp16")


def test_corrupt_and_unsafe_bin(tmp_path: Path) -> None:
    (tmp_path / "bad.bin").write_bytes(b"PK\x03\x04 this is not a zip")
    fails(tmp_path, str(tmp_path / "bad.bin"), str(tmp_path / "bad.bin"), "truncated or corrupt")
    torch.save({"w": torch.ones(2), "obj": torch.nn.Linear(2, 2)}, tmp_path / "pickled.bin")
    fails(tmp_path, str(tmp_path / "pickled.bin"), str(tmp_path / "pickled.bin"), "safetensors.torch.save_file")
    torch.save({"epoch": 3}, tmp_path / "notensors.pt")
    fails(tmp_path, str(tmp_path / "notensors.pt"), "holds no tensors")


def test_legacy_non_zip_bin_still_reads(tmp_path: Path) -> None:
    sd = mlp_state()
    torch.save(sd, tmp_path / "old.bin", _use_new_zipfile_serialization=False)
    reader = resolve(str(tmp_path / "old.bin"))[0].parts[0].reader
    assert all(torch.equal(reader.read(k), v) for k, v in sd.items())


def test_unsupported_file_kind(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    fails(tmp_path, str(tmp_path / "notes.txt"), "is not a weights file")


def test_revision_with_local_path_and_conflicting_revisions(model_dir: Path, tmp_path: Path) -> None:
    fails(tmp_path, str(model_dir), "--revision applies to Hub model ids only", revision="main")
    fails(tmp_path, "org/x@v1", "names revision v1 but --revision is v2", revision="v2")


def test_copy_of_good_model_resolves(model_dir: Path, tmp_path: Path) -> None:
    # the fixture itself is valid: the failures above come from the damage each test does
    shutil.copytree(model_dir, tmp_path / "copy")
    (ckpt,) = resolve(str(tmp_path / "copy"))
    assert {t.name for t in ckpt.parts[0].reader.tensors()} == set(mlp_state())
