"""hf_spectral.sources: every SOURCE kind resolves to checkpoints whose readers return the saved tensors."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hf_spectral.errors import SpectralError
from hf_spectral.sources import (
    Checkpoint,
    SafetensorsReader,
    TorchBinReader,
    checkpoint_fingerprint,
    file_digest,
    open_checkpoint,
    resolve,
)
from hf_spectral.sources import hub
from tiny_models import TinyMLP, fake_hub_cache, save_ddpm_pipeline, save_tiny

# Independent of the code under test: torch dtype -> safetensors code.
CODES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-exact equality (works for fp8/bool too)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def assert_matches_state_dict(ckpt: Checkpoint, sd: dict[str, torch.Tensor], component: str = "") -> set[str]:
    """Headers give the state dict's shapes/dtypes and every read is bit-exact; returns the names."""
    (part,) = [p for p in ckpt.parts if p.component == component]
    infos = part.reader.tensors()
    names = [t.name for t in infos]
    assert len(names) == len(set(names)) and names
    for info in infos:
        ref = sd[info.name]
        assert info.shape == tuple(ref.shape), info.name
        assert info.dtype == CODES[ref.dtype], info.name
        got = part.reader.read(info.name)
        assert same_bits(got, ref.detach().cpu()), info.name
    return set(names)


def mlp_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in TinyMLP().state_dict().items()}


# ---------------------------------------------------------------- fixtures (built once per module)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("models")
    out: dict[str, object] = {"root": root}
    out["gpt2"] = save_tiny("gpt2", root / "gpt2", max_shard_size="20KB")  # 9 shards + index
    out["bert"] = save_tiny("bert", root / "bert", max_shard_size="10MB")  # one file, tied decoder
    out["unet"] = save_ddpm_pipeline(root / "pipe")
    out["unet16"] = save_ddpm_pipeline(root / "pipe16", seed=1, variant="fp16")
    return out


# ---------------------------------------------------------------- 1. a .safetensors file


def test_single_safetensors_file_with_config_beside_it(tmp_path: Path) -> None:
    sd = mlp_state(0)
    save_file(sd, tmp_path / "weights.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mlp", "sizes": [12, 16, 16, 5]}))
    (ckpt,) = resolve(str(tmp_path / "weights.safetensors"))
    assert ckpt.label == "weights.safetensors" and ckpt.step is None and ckpt.revision is None
    assert [p.component for p in ckpt.parts] == [""]
    assert ckpt.parts[0].config == {"model_type": "mlp", "sizes": [12, 16, 16, 5]}
    assert assert_matches_state_dict(ckpt, sd) == set(sd)


def test_single_file_without_config_has_none(tmp_path: Path) -> None:
    save_file(mlp_state(0), tmp_path / "w.safetensors")
    (ckpt,) = resolve(tmp_path / "w.safetensors")
    assert ckpt.parts[0].config is None


# ---------------------------------------------------------------- 2. model folders


def test_sharded_transformers_folder(built: dict) -> None:
    folder = built["root"] / "gpt2"
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 1  # really sharded
    (ckpt,) = resolve(str(folder))
    sd = built["gpt2"].state_dict()
    assert assert_matches_state_dict(ckpt, sd) == set(sd)
    reader = ckpt.parts[0].reader
    assert isinstance(reader, SafetensorsReader) and len(reader.files) > 1
    assert ckpt.parts[0].config["model_type"] == "gpt2"
    assert ckpt.label == "gpt2" and ckpt.path == folder


def test_single_file_folder_with_tied_weights(built: dict) -> None:
    (ckpt,) = resolve(str(built["root"] / "bert"))
    sd = built["bert"].state_dict()
    names = assert_matches_state_dict(ckpt, sd)
    # the file omits tied copies only: every missing name shares storage with a saved tensor
    saved_ptrs = {sd[n].data_ptr() for n in names}
    assert names < set(sd)
    assert all(sd[n].data_ptr() in saved_ptrs for n in set(sd) - names)


def test_index_file_as_source(built: dict) -> None:
    (ckpt,) = resolve(str(built["root"] / "gpt2" / "model.safetensors.index.json"))
    sd = built["gpt2"].state_dict()
    assert assert_matches_state_dict(ckpt, sd) == set(sd)


def test_single_diffusers_model_folder_sharded_variant(built: dict, tmp_path: Path) -> None:
    unet = built["unet"]
    unet.save_pretrained(tmp_path / "u16", variant="fp16", max_shard_size="20KB")
    unet.save_pretrained(tmp_path / "u", max_shard_size="20KB")
    assert (tmp_path / "u16" / "diffusion_pytorch_model.safetensors.index.fp16.json").is_file()
    sd = unet.state_dict()
    for name in ("u16", "u"):
        (ckpt,) = resolve(str(tmp_path / name))
        assert assert_matches_state_dict(ckpt, sd) == set(sd)
        assert ckpt.parts[0].config["_class_name"] == "UNet2DModel"
    assert resolve(str(tmp_path / "u16"))[0].meta["variant"] == "fp16"


def test_readers_order_is_stable_and_files_follow_index(built: dict) -> None:
    folder = built["root"] / "gpt2"
    a = [t.name for t in resolve(str(folder))[0].parts[0].reader.tensors()]
    b = [t.name for t in resolve(str(folder))[0].parts[0].reader.tensors()]
    assert a == b
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    reader = resolve(str(folder))[0].parts[0].reader
    assert all(reader.file_of(n).name == index[n] for n in a)


# ---------------------------------------------------------------- 3. diffusers pipelines


def test_pipeline_folder_one_part_per_weighted_component(built: dict) -> None:
    (ckpt,) = resolve(str(built["root"] / "pipe"))
    assert [p.component for p in ckpt.parts] == ["unet"]  # scheduler has no weights
    assert ckpt.parts[0].config["_class_name"] == "UNet2DModel"
    assert ckpt.meta["pipeline_class"] == "DDPMPipeline"
    sd = built["unet"].state_dict()
    assert assert_matches_state_dict(ckpt, sd, "unet") == set(sd)


def _two_variant_pipeline(tmp_path: Path) -> tuple[Path, dict, dict]:
    """unet with plain (seed 0) and fp16 (seed 1) files, differing in value."""
    folder = tmp_path / "pipe"
    plain = save_ddpm_pipeline(folder, seed=0).state_dict()
    fp16 = save_ddpm_pipeline(folder, seed=1, variant="fp16").state_dict()
    names = sorted(p.name for p in (folder / "unet").iterdir())
    assert names == ["config.json", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors"]
    return folder, plain, fp16


def test_pipeline_variant_selection(tmp_path: Path) -> None:
    folder, plain, fp16 = _two_variant_pipeline(tmp_path)
    assert_matches_state_dict(resolve(str(folder))[0], plain, "unet")  # plain wins with variant=None
    (ckpt,) = resolve(str(folder), variant="fp16")
    assert_matches_state_dict(ckpt, fp16, "unet")
    assert ckpt.meta["variants"] == {"unet": "fp16"}


def test_pipeline_only_variant_is_used_without_variant(built: dict) -> None:
    (ckpt,) = resolve(str(built["root"] / "pipe16"))
    assert_matches_state_dict(ckpt, built["unet16"].state_dict(), "unet")


def test_pipeline_several_variants_need_variant(tmp_path: Path) -> None:
    folder, _, fp16 = _two_variant_pipeline(tmp_path)
    unet = folder / "unet"
    os.rename(unet / "diffusion_pytorch_model.safetensors", unet / "diffusion_pytorch_model.ema.safetensors")
    with pytest.raises(SpectralError, match=r"ema, fp16.*--variant"):
        resolve(str(folder))
    assert_matches_state_dict(resolve(str(folder), variant="fp16")[0], fp16, "unet")


def test_pipeline_component_falls_back_to_plain_files(tmp_path: Path) -> None:
    folder, plain, fp16 = _two_variant_pipeline(tmp_path)
    # a second model component with plain weights only
    (folder / "vae").mkdir()
    shutil.copy(folder / "unet" / "config.json", folder / "vae" / "config.json")
    shutil.copy(folder / "unet" / "diffusion_pytorch_model.safetensors", folder / "vae")
    index = json.loads((folder / "model_index.json").read_text())
    index["vae"] = ["diffusers", "UNet2DModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    (ckpt,) = resolve(str(folder), variant="fp16")
    assert [p.component for p in ckpt.parts] == ["unet", "vae"]
    assert_matches_state_dict(ckpt, fp16, "unet")
    assert_matches_state_dict(ckpt, plain, "vae")


def test_pipeline_sharded_variant_component(built: dict, tmp_path: Path) -> None:
    folder = tmp_path / "pipe"
    save_ddpm_pipeline(folder, seed=0)
    unet = built["unet"]
    shutil.rmtree(folder / "unet")
    unet.save_pretrained(folder / "unet", variant="fp16", max_shard_size="20KB")
    assert len(list((folder / "unet").glob("diffusion_pytorch_model.fp16-*-of-*.safetensors"))) > 1
    (ckpt,) = resolve(str(folder))
    assert_matches_state_dict(ckpt, unet.state_dict(), "unet")


# ---------------------------------------------------------------- 4. Trainer runs


def _write_run(run: Path) -> dict[int, dict[str, torch.Tensor]]:
    states = {}
    for n, seed in [(10, 1), (2, 0), (100, 2)]:
        d = run / f"checkpoint-{n}"
        d.mkdir(parents=True)
        states[n] = mlp_state(seed)
        save_file(states[n], d / "model.safetensors")
        torch.save({"lr": 1.0}, d / "optimizer.pt")  # Trainer extras are ignored
        if n != 10:  # checkpoint-10 has no trainer_state.json: its step comes from the name
            (d / "trainer_state.json").write_text(json.dumps({"global_step": n * 3, "epoch": n / 100}))
    save_file(mlp_state(9), run / "model.safetensors")  # final weights at the root: not included
    (run / "runs").mkdir()  # tensorboard logs
    return states


def test_trainer_run_is_a_numeric_time_series(tmp_path: Path) -> None:
    states = _write_run(tmp_path / "run")
    ckpts = resolve(str(tmp_path / "run"))
    assert [c.label for c in ckpts] == ["checkpoint-2", "checkpoint-10", "checkpoint-100"]
    assert [c.step for c in ckpts] == [6, 10, 300]
    assert all(c.source == str(tmp_path / "run") for c in ckpts)
    for c, n in zip(ckpts, [2, 10, 100]):
        assert c.path == tmp_path / "run" / f"checkpoint-{n}"
        assert_matches_state_dict(c, states[n])


def test_single_trainer_checkpoint_folder_gets_its_step(tmp_path: Path) -> None:
    _write_run(tmp_path / "run")
    (ckpt,) = resolve(str(tmp_path / "run" / "checkpoint-100"))
    assert ckpt.step == 300 and ckpt.label == "checkpoint-100"
    (ckpt,) = resolve(str(tmp_path / "run" / "checkpoint-10"))
    assert ckpt.step == 10


def test_diffusers_training_script_checkpoints_use_model_subfolders(tmp_path: Path) -> None:
    # train_unconditional.py & co: accelerate state in checkpoint-N/, the model in checkpoint-N/unet/
    run = tmp_path / "ddpm-out"
    states = {}
    for n, seed in [(500, 0), (1000, 1)]:
        unet = run / f"checkpoint-{n}" / "unet"
        unet.mkdir(parents=True)
        states[n] = mlp_state(seed)
        save_file(states[n], unet / "diffusion_pytorch_model.safetensors")
        (unet / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
        (run / f"checkpoint-{n}" / "random_states_0.pkl").write_bytes(b"x")
    (run / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DModel"]}))  # final pipeline
    (run / "unet").mkdir()
    save_file(mlp_state(9), run / "unet" / "diffusion_pytorch_model.safetensors")
    ckpts = resolve(str(run))
    assert [(c.label, c.step) for c in ckpts] == [("checkpoint-500", 500), ("checkpoint-1000", 1000)]
    for c, n in zip(ckpts, [500, 1000]):
        assert [p.component for p in c.parts] == ["unet"]
        assert_matches_state_dict(c, states[n], "unet")


def test_accelerate_checkpoint_underscore_folders(tmp_path: Path) -> None:
    for n in (0, 1, 11):
        (tmp_path / "checkpoints" / f"checkpoint_{n}").mkdir(parents=True)
        save_file(mlp_state(n), tmp_path / "checkpoints" / f"checkpoint_{n}" / "model.safetensors")
    ckpts = resolve(str(tmp_path / "checkpoints"))
    assert [c.label for c in ckpts] == ["checkpoint_0", "checkpoint_1", "checkpoint_11"]
    assert [c.step for c in ckpts] == [None, None, None]  # accelerate numbers saves, not steps
    assert_matches_state_dict(ckpts[2], mlp_state(11))


# ---------------------------------------------------------------- 6. legacy .bin


def _odd_dtypes() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g)
    return {
        "f32": x, "f64": x.double(), "f16": x.half(), "bf16": x.bfloat16(),
        "f8e4": x.to(torch.float8_e4m3fn), "f8e5": x.to(torch.float8_e5m2),
        "i64": torch.arange(12).reshape(3, 4), "i32": torch.arange(6, dtype=torch.int32),
        "i8": torch.arange(-3, 3, dtype=torch.int8), "u8": torch.arange(5, dtype=torch.uint8),
        "mask": x > 0, "scalar": torch.tensor(3.5),
    }


def test_integer_bool_fp8_tensors_read_in_both_formats(tmp_path: Path) -> None:
    sd = _odd_dtypes()
    save_file(sd, tmp_path / "odd.safetensors")
    torch.save(sd, tmp_path / "odd.bin")
    a = resolve(str(tmp_path / "odd.safetensors"))[0]
    b = resolve(str(tmp_path / "odd.bin"))[0]
    assert isinstance(b.parts[0].reader, TorchBinReader)
    assert assert_matches_state_dict(a, sd) == set(sd) == assert_matches_state_dict(b, sd)
    assert set(a.parts[0].reader.tensors()) == set(b.parts[0].reader.tensors())


def test_pytorch_model_bin_folder_and_sharded_index(tmp_path: Path) -> None:
    sd = mlp_state(3)
    (tmp_path / "single").mkdir()
    torch.save(sd, tmp_path / "single" / "pytorch_model.bin")
    (ckpt,) = resolve(str(tmp_path / "single"))
    assert ckpt.meta["format"] == "bin"
    assert assert_matches_state_dict(ckpt, sd) == set(sd)

    folder = tmp_path / "sharded"
    folder.mkdir()
    names = list(sd)
    shards = {"pytorch_model-00001-of-00002.bin": names[:2], "pytorch_model-00002-of-00002.bin": names[2:]}
    weight_map = {}
    for fname, keys in shards.items():
        torch.save({k: sd[k] for k in keys}, folder / fname)
        weight_map.update({k: fname for k in keys})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (ckpt,) = resolve(str(folder))
    reader = ckpt.parts[0].reader
    assert isinstance(reader, TorchBinReader) and len(reader.files) == 2
    assert assert_matches_state_dict(ckpt, sd) == set(sd)
    assert [t.name for t in reader.tensors()] == names  # saved (module) order kept


def test_safetensors_preferred_over_bin_in_one_folder(tmp_path: Path) -> None:
    save_file(mlp_state(0), tmp_path / "model.safetensors")
    torch.save(mlp_state(1), tmp_path / "pytorch_model.bin")
    (ckpt,) = resolve(str(tmp_path))
    assert isinstance(ckpt.parts[0].reader, SafetensorsReader)
    assert_matches_state_dict(ckpt, mlp_state(0))


def test_lightning_style_checkpoint_is_unwrapped(tmp_path: Path) -> None:
    sd = mlp_state(0)
    torch.save({"epoch": 3, "state_dict": sd, "optimizer_states": [{"lr": 0.1}]}, tmp_path / "last.ckpt")
    assert assert_matches_state_dict(resolve(str(tmp_path / "last.ckpt"))[0], sd) == set(sd)


def mapped_file(t: torch.Tensor) -> str | None:
    """The file whose memory mapping holds the tensor's data (Linux /proc/self/maps), else None."""
    ptr = t.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= ptr < hi:
            return fields[5] if len(fields) == 6 else None
    return None


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_reads_are_zero_copy_views_of_the_file(tmp_path: Path) -> None:
    sd = {"a": torch.randn(256, 256), "b": torch.randn(300, 200)}
    torch.save(sd, tmp_path / "pytorch_model.bin")
    save_file(sd, tmp_path / "model.safetensors")
    for reader in (TorchBinReader([tmp_path / "pytorch_model.bin"]), SafetensorsReader([tmp_path / "model.safetensors"])):
        with reader:
            for name in sd:
                # backed by the file's pages, not by an anonymous copy
                assert mapped_file(reader.read(name)) == str(reader.files[0]), (type(reader).__name__, name)


# ---------------------------------------------------------------- readers: handles, pickling


def test_reader_opens_lazily_closes_and_reopens(built: dict) -> None:
    reader = resolve(str(built["root"] / "gpt2"))[0].parts[0].reader
    assert reader._handles == {}  # resolve checks headers but keeps nothing open
    name = reader.tensors()[0].name
    first = reader.read(name).clone()
    assert len(reader._handles) == 1
    reader.close()
    assert reader._handles == {}
    assert torch.equal(reader.read(name), first)  # usable again after close
    with reader:
        pass
    assert reader._handles == {}


def test_readers_pickle_as_paths_and_reopen_in_another_process(built: dict, tmp_path: Path) -> None:
    sd = _odd_dtypes()
    save_file(sd, tmp_path / "odd.safetensors")
    torch.save(sd, tmp_path / "odd.bin")
    readers = [SafetensorsReader([tmp_path / "odd.safetensors"]), TorchBinReader([tmp_path / "odd.bin"])]
    for r in readers:
        r.read("f32")  # open handles/mappings before pickling
        state = pickle.dumps(r)
        assert len(state) < 4000  # paths and header facts, no tensor data
    (tmp_path / "readers.pkl").write_bytes(pickle.dumps(readers))
    code = (
        "import pickle, sys; rs = pickle.load(open(sys.argv[1], 'rb'));"
        "print(repr([float(r.read('f32').double().sum()) for r in rs]))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "readers.pkl")], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).parents[1], timeout=120)
    expected = float(sd["f32"].double().sum())
    assert eval(out.stdout.strip()) == [expected, expected]


def test_open_checkpoint_of_one_folder(built: dict) -> None:
    ckpt = open_checkpoint(built["root"] / "gpt2", label="x", step=7)
    assert ckpt.label == "x" and ckpt.step == 7 and len(ckpt.parts) == 1
    ckpt.close()


# ---------------------------------------------------------------- fingerprint


def test_fingerprint_equal_for_identical_and_different_for_changed(tmp_path: Path) -> None:
    sd = mlp_state(0)
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        save_file(sd, tmp_path / d / "model.safetensors")
    changed = dict(sd)
    changed["net.0.weight"] = sd["net.0.weight"].clone()
    changed["net.0.weight"][0, 0] += 1.0
    (tmp_path / "c").mkdir()
    save_file(changed, tmp_path / "c" / "model.safetensors")
    fa, fb, fc = (checkpoint_fingerprint(resolve(str(tmp_path / d))[0]) for d in "abc")
    assert fa == fb and fa != fc
    assert resolve(str(tmp_path / "a"))[0].fingerprint() == fa
    assert file_digest(tmp_path / "a" / "model.safetensors") == (
        "sha256:" + hashlib.sha256((tmp_path / "a" / "model.safetensors").read_bytes()).hexdigest()
    )


def test_fingerprint_of_sharded_model_covers_every_shard(built: dict, tmp_path: Path) -> None:
    src = built["root"] / "gpt2"
    shutil.copytree(src, tmp_path / "copy")
    f0 = resolve(str(src))[0].fingerprint()
    assert resolve(str(tmp_path / "copy"))[0].fingerprint() == f0
    sd = built["gpt2"].state_dict()
    index = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    last = sorted(set(index.values()))[-1]
    shard = {k: sd[k].clone().contiguous() for k, v in index.items() if v == last}
    name = next(iter(shard))
    shard[name].view(-1)[0] += 1
    save_file(shard, tmp_path / "copy" / last, metadata={"format": "pt"})
    assert resolve(str(tmp_path / "copy"))[0].fingerprint() != f0


# ---------------------------------------------------------------- 5. Hub ids (faked cache, offline)


COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


@pytest.fixture()
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict, dict]:
    assert hub.is_offline()  # conftest sets HF_HUB_OFFLINE=1 before huggingface_hub is imported
    src_a, src_b = tmp_path / "src_a", tmp_path / "src_b"
    sd_a, sd_b = mlp_state(0), mlp_state(1)
    for d, sd in ((src_a, sd_a), (src_b, sd_b)):
        d.mkdir()
        save_file(sd, d / "model.safetensors")
        (d / "config.json").write_text(json.dumps({"model_type": "mlp"}))
    cache = tmp_path / "hf_cache"
    fake_hub_cache(cache, "org/tiny", {COMMIT_A: src_a, COMMIT_B: src_b}, {"main": COMMIT_A, "v1": COMMIT_B})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache, sd_a, sd_b


def test_hub_id_resolves_offline_from_cache(hub_cache: tuple) -> None:
    cache, sd_a, _ = hub_cache
    (ckpt,) = resolve("org/tiny")
    assert ckpt.revision == "main" and ckpt.commit == COMMIT_A and ckpt.label == "main"
    assert ckpt.path == cache / "models--org--tiny" / "snapshots" / COMMIT_A
    assert ckpt.source == "org/tiny" and ckpt.parts[0].config == {"model_type": "mlp"}
    assert assert_matches_state_dict(ckpt, sd_a) == set(sd_a)


def test_hub_tag_second_revision_and_commit(hub_cache: tuple) -> None:
    _, sd_a, sd_b = hub_cache
    for args, kwargs in [(("org/tiny",), {"revision": "v1"}), (("org/tiny@v1",), {}), (("org/tiny",), {"revision": COMMIT_B})]:
        (ckpt,) = resolve(*args, **kwargs)
        assert ckpt.commit == COMMIT_B
        assert_matches_state_dict(ckpt, sd_b)
    assert resolve("org/tiny", revision="v1")[0].revision == "v1"


def test_hub_uncached_revision_and_repo_are_clear_errors(hub_cache: tuple) -> None:
    with pytest.raises(SpectralError) as e:
        resolve("org/tiny", revision="v2")
    msg = str(e.value)
    assert 'hf download org/tiny --revision v2 --include "*.json" "*.safetensors"' in msg and "HF_HUB_OFFLINE" in msg and "cached: main, v1" in msg
    with pytest.raises(SpectralError, match=r"no such file or folder: org/absent.*hf download org/absent --revision main"):
        resolve("org/absent")


def test_hub_cache_dir_from_hf_home_and_argument(hub_cache: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, sd_a, _ = hub_cache
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    os.symlink(cache, home / "hub")
    monkeypatch.setenv("HF_HOME", str(home))
    assert hub.hub_cache_dir() == home / "hub"
    assert_matches_state_dict(resolve("org/tiny")[0], sd_a)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))
    with pytest.raises(SpectralError):
        resolve("org/tiny")
    assert_matches_state_dict(resolve("org/tiny", cache_dir=cache)[0], sd_a)


def test_hub_fingerprint_uses_blob_hashes(hub_cache: tuple, tmp_path: Path) -> None:
    (ckpt,) = resolve("org/tiny")
    snap_file = ckpt.parts[0].reader.files[0]
    assert snap_file.is_symlink()
    blob = os.path.basename(os.path.realpath(snap_file))
    assert file_digest(snap_file) == f"sha256:{blob}"
    # an LFS blob name is the sha256 of the bytes: a local copy fingerprints the same
    (tmp_path / "local").mkdir()
    shutil.copy(snap_file, tmp_path / "local" / "model.safetensors")
    assert resolve(str(tmp_path / "local"))[0].fingerprint() == ckpt.fingerprint()
    assert resolve("org/tiny@v1")[0].fingerprint() != ckpt.fingerprint()


def test_hub_blob_name_is_trusted_without_reading(tmp_path: Path) -> None:
    blobs = tmp_path / "models--o--n" / "blobs"
    blobs.mkdir(parents=True)
    fake = "0123456789abcdef" * 4
    (blobs / fake).write_bytes(b"not what the name says")
    (tmp_path / "link.safetensors").symlink_to(blobs / fake)
    assert file_digest(tmp_path / "link.safetensors") == f"sha256:{fake}"


def test_hub_pipeline_from_cache(built: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    fake_hub_cache(cache, "org/pipe", {COMMIT_A: built["root"] / "pipe"}, {"main": COMMIT_A})
    (ckpt,) = resolve("org/pipe", cache_dir=cache)
    assert [p.component for p in ckpt.parts] == ["unet"]
    assert_matches_state_dict(ckpt, built["unet"].state_dict(), "unet")


def test_hub_partial_cache_with_tree_listing_still_resolves(hub_cache: tuple) -> None:
    cache, sd_a, _ = hub_cache
    # huggingface_hub 2.4 records the repo's full file list; offline it then reports files that
    # match our patterns but were never downloaded (IncompleteSnapshotError). What is there suffices.
    repo = cache / "models--org--tiny"
    (repo / "trees").mkdir()
    files = {"config.json": {"size": 1, "blob_id": "0" * 40},
             "model.safetensors": {"size": 1, "blob_id": "1" * 40},
             "model.safetensors.index.json": {"size": 1, "blob_id": "2" * 40}}
    (repo / "trees" / f"{COMMIT_A}.json").write_text(json.dumps({"format_version": 1, "files": files}))
    assert_matches_state_dict(resolve("org/tiny")[0], sd_a)


# ---------------------------------------------------------------- 5b. what is downloaded (online, faked)


class FakeHub:
    """Stands in for ``snapshot_download``: a remote repo (relative path -> bytes) copied into a
    snapshot folder, file by file, as ``allow_patterns`` select (huggingface_hub's own matcher)."""

    def __init__(self, remote: dict[str, bytes], folder: Path) -> None:
        self.remote, self.folder, self.calls = remote, folder, []

    def __call__(self, repo_id: str, **kwargs: object) -> str:
        from huggingface_hub.utils import filter_repo_objects

        self.calls.append(kwargs)
        assert kwargs["local_files_only"] is False
        for rel in filter_repo_objects(self.remote, allow_patterns=kwargs["allow_patterns"]):
            (self.folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.folder / rel).write_bytes(self.remote[rel])
        return str(self.folder)

    def fetched(self, call: int) -> set[str]:
        from huggingface_hub.utils import filter_repo_objects

        return set(filter_repo_objects(self.remote, allow_patterns=self.calls[call]["allow_patterns"]))


def _online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, remote: dict[str, bytes]) -> FakeHub:
    fake = FakeHub(remote, tmp_path / "snapshots" / COMMIT_A)
    fake.folder.mkdir(parents=True)
    monkeypatch.setattr(hub, "snapshot_download", fake)
    monkeypatch.setattr(hub, "is_offline", lambda: False)
    return fake


def _blob(sd: dict[str, torch.Tensor], tmp_path: Path) -> bytes:
    save_file(sd, tmp_path / "blob.safetensors")
    return (tmp_path / "blob.safetensors").read_bytes()


def test_hub_first_call_fetches_only_configs_and_plain_safetensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = mlp_state(0)
    torch.save(sd, tmp_path / "pm.bin")
    remote = {
        "config.json": b'{"model_type": "mlp"}', "model.safetensors": _blob(sd, tmp_path),
        "pytorch_model.bin": (tmp_path / "pm.bin").read_bytes(), "tf_model.h5": b"x", "flax_model.msgpack": b"x",
        "onnx/model.onnx": b"x", "model.gguf": b"x", "tokenizer.json": b"{}", "README.md": b"x",
        "model.fp16.safetensors": b"x", "checkpoint-500/model.safetensors": b"x", "original/consolidated.pth": b"x",
    }
    fake = _online(monkeypatch, tmp_path, remote)
    (ckpt,) = resolve("org/tiny", revision="v1")
    assert len(fake.calls) == 1
    patterns = fake.calls[0]["allow_patterns"]
    assert not any(p.endswith((".bin", ".msgpack", ".h5", ".onnx", ".gguf", ".pth")) for p in patterns)
    assert fake.fetched(0) == {"config.json", "model.safetensors"}
    assert fake.calls[0]["revision"] == "v1"
    assert ckpt.revision == "v1" and ckpt.commit == COMMIT_A
    assert_matches_state_dict(ckpt, sd)


def test_hub_falls_back_to_bin_only_when_no_safetensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = mlp_state(0)
    torch.save(sd, tmp_path / "pm.bin")
    remote = {"config.json": b"{}", "pytorch_model.bin": (tmp_path / "pm.bin").read_bytes(), "tf_model.h5": b"x"}
    fake = _online(monkeypatch, tmp_path, remote)
    (ckpt,) = resolve("org/legacy")
    assert fake.fetched(0) == {"config.json"}
    assert fake.fetched(1) == {"pytorch_model.bin"}
    assert len(fake.calls) == 2
    assert_matches_state_dict(ckpt, sd)


def test_hub_pipeline_fetches_components_of_the_variant_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain, fp16 = mlp_state(0), mlp_state(1)
    remote = {
        "model_index.json": json.dumps({"_class_name": "P", "unet": ["diffusers", "UNet2DModel"],
                                        "scheduler": ["diffusers", "DDPMScheduler"], "tokenizer": [None, None]}).encode(),
        "unet/config.json": b"{}", "unet/diffusion_pytorch_model.safetensors": _blob(plain, tmp_path),
        "unet/diffusion_pytorch_model.fp16.safetensors": _blob(fp16, tmp_path),
        "unet/diffusion_pytorch_model.non_ema.safetensors": b"x", "unet/diffusion_pytorch_model.bin": b"x",
        "scheduler/scheduler_config.json": b"{}", "single_file_checkpoint.safetensors": b"x",
    }
    fake = _online(monkeypatch, tmp_path, remote)
    (ckpt,) = resolve("org/pipe", variant="fp16")
    fetched = set().union(*(fake.fetched(i) for i in range(len(fake.calls))))
    assert fetched == {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors"}
    assert_matches_state_dict(ckpt, fp16, "unet")


def test_hub_only_variant_present_is_fetched_in_a_later_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fp16 = mlp_state(1)
    remote = {"config.json": b"{}", "model.fp16.safetensors": _blob(fp16, tmp_path), "pytorch_model.fp16.bin": b"x"}
    fake = _online(monkeypatch, tmp_path, remote)
    (ckpt,) = resolve("org/v")
    assert fake.fetched(0) == {"config.json"}
    assert "model.fp16.safetensors" in set().union(*(fake.fetched(i) for i in range(len(fake.calls))))
    assert not any("pytorch_model.fp16.bin" in fake.fetched(i) for i in range(len(fake.calls)))
    assert_matches_state_dict(ckpt, fp16)


def test_hub_repo_without_readable_weights_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _online(monkeypatch, tmp_path, {"config.json": b"{}", "tf_model.h5": b"x"})
    with pytest.raises(SpectralError, match=r"Hub model org/tf \(revision main\) has no weights"):
        resolve("org/tf")
