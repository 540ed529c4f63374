"""``analyze --dry-run`` / ``estimate``: the plan analyze would run and its cost, from safetensors headers
alone — on a local folder, a diffusers pipeline and a Hub id (cached offline, or headers read remotely),
never reading a byte of tensor data nor downloading a weight file."""

from __future__ import annotations

import builtins
import json
import mmap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import hf_spectral
from hf_spectral import calibration, cost, engine
from hf_spectral.cli import main
from hf_spectral.dry_run import estimate
from hf_spectral.errors import SpectralError
from hf_spectral.sources import hub, readers
from hf_spectral.views.types import MatrixSpec
from tiny_models import fake_hub_cache, private_module_cache_fixture, save_ddpm_pipeline, save_tiny

private_module_cache = private_module_cache_fixture()
COMMIT = "c" * 40

# Round numbers, so that predicted seconds can be recomputed here by hand.
RATES = calibration.Calibration(
    device="cpu:threads=2", threads=2, torch_version=torch.__version__, gemm_flops_per_s=1e10,
    eigvalsh_s_per_n3=1e-9, eigh_s_per_n3=3e-9, svd_s_per_mn2=2e-9, convert_bytes_per_s=1e9,
    matrix_overhead_s=1e-4, batched_speedup=0.5, startup_s=1.5, load=0.0, cores=2, measured_at="test", seconds=0.0,
    startup_numpy_s=0.4,
)


@pytest.fixture(autouse=True)
def fixed_rates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(calibration, "calibration_for", lambda device, **kwargs: RATES)
    calibration._MEMO.clear()


class ReadCounter:
    """Counts the bytes Python reads from weight files; any mmap or safetensors/torch load is refused."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes: dict[str, int] = {}
        real_open = builtins.open
        counter = self

        class Counted:
            def __init__(self, handle, name):  # type: ignore[no-untyped-def]
                self._handle, self._name = handle, name

            def read(self, *args):  # type: ignore[no-untyped-def]
                data = self._handle.read(*args)
                counter.bytes[self._name] = counter.bytes.get(self._name, 0) + len(data)
                return data

            def __enter__(self):  # type: ignore[no-untyped-def]
                return self

            def __exit__(self, *exc):  # type: ignore[no-untyped-def]
                self._handle.close()

            def __getattr__(self, attr):  # type: ignore[no-untyped-def]
                return getattr(self._handle, attr)

        def counting_open(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
            handle = real_open(file, mode, *args, **kwargs)
            name = str(file)
            return Counted(handle, name) if name.endswith((".safetensors", ".bin")) else handle

        def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
            raise AssertionError("tensor data was mapped or loaded")

        monkeypatch.setattr(builtins, "open", counting_open)
        monkeypatch.setattr(readers, "safe_open", refuse)
        monkeypatch.setattr(mmap, "mmap", refuse)
        monkeypatch.setattr(torch, "load", refuse)


def header_bytes(files: list[Path]) -> int:
    """8 + the JSON header's length of each file: all a plan may read (computed before counting)."""
    return sum(8 + int.from_bytes(f.read_bytes()[:8], "little") for f in files)


def stored_bytes(files: list[Path]) -> dict[str, int]:
    out = {}
    for f in files:
        with safe_open(str(f), "pt") as handle:
            for key in handle.keys():
                out[key] = handle.get_tensor(key).nbytes
    return out


def expected_seconds(rows: int, cols: int) -> float:
    big, small = max(rows, cols), min(rows, cols)
    gram = 2 * big * small**2 * (5 / 8 if small >= 256 else 1)
    return big * small * 4 / 1e9 + gram / 1e10 + small**3 * 1e-9 + 1e-4


def test_local_folder_plan_and_cost_from_headers_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "gpt2"
    save_tiny("gpt2", folder)
    shards = sorted(folder.glob("*.safetensors"))
    assert len(shards) > 1
    allowed, sizes = header_bytes(shards), stored_bytes(shards)
    analyzed = hf_spectral.analyze(str(folder), progress=False, device="cpu", batch="off")

    counter = ReadCounter(monkeypatch)
    result = estimate(str(folder), device="cpu", batch="off")
    assert 0 < sum(counter.bytes.values()) == allowed  # exactly the headers, not one byte of data
    names = [r.name for r in result.single.matrices]
    assert names == list(analyzed.matrices["name"])
    for row in result.single.matrices:
        spec = next(s for s in result.plan.specs if s.name == row.name)
        assert row.bytes_read == sum(sizes[t] for t in spec.tensors)
        assert row.seconds == pytest.approx(expected_seconds(*row.shape), rel=1e-9)
    # the numpy backend's start-up (no torch import); --backend torch's, or several processes, are torch's
    kernel = sum(expected_seconds(*r.shape) for r in result.single.matrices)
    assert result.backend == "numpy" and result.single.wall_s == pytest.approx(0.4 + kernel)
    by_torch = estimate(str(folder), device="cpu", batch="off", backend="torch")
    assert by_torch.backend == "torch" and by_torch.single.wall_s == pytest.approx(1.5 + kernel)
    assert estimate(str(folder), device="cpu", batch="off", processes=2).cost.startup_s == 1.5

    assert main(["analyze", str(folder), "--dry-run", "--device", "cpu", "--all", "--processes", "2"]) == 0
    out = capsys.readouterr().out
    assert "no tensor data read" in out and "under accelerate launch with 2 processes" in out
    for name in names:
        assert name in out
    assert not (Path.cwd() / "spectral" / "gpt2").exists()  # nothing written


def test_processes_split_the_work_by_cost_and_cpu_processes_share_cores(tmp_path: Path) -> None:
    folder = tmp_path / "gpt2"
    save_tiny("gpt2", folder)
    one = estimate(str(folder), device="cpu", batch="off")
    two = estimate(str(folder), device="cpu", batch="off", processes=2)
    assert len(two.cost.per_process_s) == 2 and all(s > 0 for s in two.cost.per_process_s)
    # 2 CPU processes on 2 cores: 1 thread each, at half the 2-thread rate -> same total work, twice the seconds
    cores = len(__import__("os").sched_getaffinity(0))
    factor = 2 / max(1, cores // 2) if cores // 2 < 2 else 1.0
    assert sum(two.cost.per_process_s) == pytest.approx(one.single.kernel_s * factor, rel=1e-9)
    assert two.cost.kernel_s < sum(two.cost.per_process_s)  # both processes work
    with pytest.raises(SystemExit):
        main(["analyze", str(folder), "--dry-run", "--processes", "x"])
    assert main(["analyze", str(folder), "--dry-run", "--processes", "0"]) == 2
    assert main(["analyze", str(folder), "--processes", "2"]) == 2  # only with --dry-run


def test_batched_units_cost_their_members_over_the_measured_speedup(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    save_file({f"layer.{i}.weight": torch.randn(30, 20, generator=gen) for i in range(4)}, tmp_path / "m.safetensors")
    off = estimate(str(tmp_path / "m.safetensors"), device="cpu", batch="off")
    on = estimate(str(tmp_path / "m.safetensors"), device="cpu", batch="on")
    assert on.single.batched and len({r.unit for r in on.single.matrices}) == 1
    assert on.single.kernel_s == pytest.approx(off.single.kernel_s / RATES.batched_speedup)


def test_diffusers_pipeline_from_headers_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "pipe"
    save_ddpm_pipeline(folder)
    files = sorted(folder.rglob("*.safetensors"))
    allowed = header_bytes(files)
    analyzed = hf_spectral.analyze(str(folder), progress=False, device="cpu")
    counter = ReadCounter(monkeypatch)
    result = estimate(str(folder), device="cpu")
    assert sum(counter.bytes.values()) == allowed
    assert [r.name for r in result.single.matrices] == list(analyzed.matrices["name"])
    assert all(r.name.startswith("unet/") for r in result.single.matrices)


def test_hub_id_offline_from_the_cached_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    save_tiny("bert", src)
    cache = tmp_path / "hf_cache"
    fake_hub_cache(cache, "org/bert", {COMMIT: src}, {"main": COMMIT})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    files = sorted((cache / "models--org--bert" / "snapshots" / COMMIT).glob("*.safetensors"))
    allowed = header_bytes(files)
    analyzed = hf_spectral.analyze("org/bert", progress=False, device="cpu")
    counter = ReadCounter(monkeypatch)
    result = estimate("org/bert", device="cpu")
    assert sum(counter.bytes.values()) == allowed
    assert [r.name for r in result.single.matrices] == list(analyzed.matrices["name"])


def fake_remote(monkeypatch: pytest.MonkeyPatch, src: Path, cache: Path) -> list[list[str]]:
    """The Hub, online: snapshot_download copies the files its patterns select; headers come from the
    local files' headers, as the Hub's range requests would return them."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import SafetensorsFileMetadata, SafetensorsRepoMetadata, TensorInfo, filter_repo_objects

    remote = {str(p.relative_to(src)): p for p in src.rglob("*") if p.is_file()}
    fetched: list[list[str]] = []
    snapshot = cache / "models--org--remote" / "snapshots" / COMMIT

    def snapshot_download(repo_id, *, revision, cache_dir, allow_patterns, local_files_only, **kwargs):  # type: ignore[no-untyped-def]
        if local_files_only:
            if not snapshot.is_dir():
                from huggingface_hub.errors import LocalEntryNotFoundError

                raise LocalEntryNotFoundError("not cached")
            return str(snapshot)
        chosen = list(filter_repo_objects(remote, allow_patterns=allow_patterns))
        fetched.append(chosen)
        for rel in chosen:
            (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / rel).write_bytes(remote[rel].read_bytes())
        refs = cache / "models--org--remote" / "refs"
        refs.mkdir(parents=True, exist_ok=True)
        (refs / revision).write_text(COMMIT)
        return str(snapshot)

    def file_meta(rel: str) -> SafetensorsFileMetadata:
        header = json.loads(remote[rel].read_bytes()[8:8 + int.from_bytes(remote[rel].read_bytes()[:8], "little")])
        header.pop("__metadata__", None)
        return SafetensorsFileMetadata(metadata={}, tensors={
            k: TensorInfo(dtype=v["dtype"], shape=v["shape"], data_offsets=tuple(v["data_offsets"])) for k, v in header.items()})

    def get_safetensors_metadata(repo_id, revision=None, **kwargs):  # type: ignore[no-untyped-def]
        shards = sorted(rel for rel in remote if rel.endswith(".safetensors") and "/" not in rel)
        return SafetensorsRepoMetadata(metadata=None, sharded=len(shards) > 1, weight_map={},
                                       files_metadata={rel: file_meta(rel) for rel in shards})

    import huggingface_hub

    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(hub, "is_offline", lambda: False)
    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", get_safetensors_metadata)
    monkeypatch.setattr(huggingface_hub, "parse_safetensors_file_metadata", lambda repo_id, rel, **kw: file_meta(rel))
    monkeypatch.setattr(HfApi, "list_repo_files", lambda self, repo_id, revision=None: sorted(remote))
    return fetched


@pytest.mark.parametrize("kind", ["gpt2", "pipeline"])
def test_hub_id_online_reads_headers_remotely_and_keeps_them_for_offline(
        kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    save_tiny("gpt2", src) if kind == "gpt2" else save_ddpm_pipeline(src)
    analyzed = hf_spectral.analyze(str(src), progress=False, device="cpu")
    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    fetched = fake_remote(monkeypatch, src, cache)

    online = estimate("org/remote", device="cpu")
    assert [r.name for r in online.single.matrices] == list(analyzed.matrices["name"])
    downloaded = [rel for call in fetched for rel in call]
    assert downloaded and all(rel.endswith(".json") for rel in downloaded)  # configs only, never weights
    assert not list(cache.rglob("*.safetensors"))

    monkeypatch.setattr(hub, "is_offline", lambda: True)  # later, offline: the kept headers plan it
    offline = estimate("org/remote", device="cpu")
    assert [r.name for r in offline.single.matrices] == list(analyzed.matrices["name"])
    assert [r.bytes_read for r in offline.single.matrices] == [r.bytes_read for r in online.single.matrices]
    with pytest.raises(SpectralError, match="only the headers"):
        offline.plan.readers[offline.plan.specs[0].name](offline.plan.specs[0].tensors[0])


def test_uncached_hub_id_offline_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(SpectralError) as info:
        estimate("org/absent", device="cpu")
    assert "\n" not in str(info.value) and "hf download org/absent" in str(info.value)
    assert "dry run once online" in str(info.value)


def test_flops_model_matches_the_kernels_arithmetic() -> None:
    # Gram in 4 lower-triangular column blocks: blocks b=1..4 of width R/4 multiply b·R/4 columns each.
    rows, r = 3072, 768
    blocks = sum(2 * rows * (r // 4) * (b * r // 4) for b in range(1, 5))
    assert cost.matrix_flops((r, rows)) == pytest.approx(blocks + 4 / 3 * r**3)
    assert cost.matrix_flops((100, 40)) == pytest.approx(2 * 100 * 40**2 + 4 / 3 * 40**3)  # one block below 256
    assert cost.matrix_flops((100, 40), top_k=5) == pytest.approx(2 * 100 * 40**2 + 9 * 40**3 + 2 * 100 * 40 * 5)


def test_real_calibration_is_cached_per_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real calibration_for
    monkeypatch.setenv("HF_SPECTRAL_CACHE", str(tmp_path / "cache"))
    # the engine's batching choice measures only its probe (the first analysis pays hundredths of a second)
    same = [MatrixSpec(f"m{i}", "linear", (f"m{i}",), (30, 20), (30, 20), "F32") for i in range(3)]
    assert engine.use_batches(engine.AnalysisOptions(), torch.device("cpu"), same) in (True, False)
    assert [p.name.split(".", 1)[1] for p in (tmp_path / "cache" / "calibration").iterdir()] == ["batching.json"]
    measured = calibration.calibration_for("cpu")
    assert measured.gemm_flops_per_s > 1e8 and 0 < measured.batched_speedup < 100
    files = list((tmp_path / "cache" / "calibration").glob("*.rates.json"))
    assert len(files) == 1
    fake = replace(measured, gemm_flops_per_s=123.0)
    files[0].write_text(json.dumps(fake.__dict__))
    assert calibration.calibration_for("cpu").gemm_flops_per_s == 123.0  # read back, not measured again
    assert engine.use_batches(engine.AnalysisOptions(batch="off"), torch.device("cpu"), []) is False
