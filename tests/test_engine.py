"""End to end: checkpoints of tiny real models -> snapshots whose every singular value matches numpy's
float64 SVD of a matrix reshaped here, from the model's own modules (not by hf_spectral's views)."""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from torch import nn

import hf_spectral
from hf_spectral import engine, module_cache
from hf_spectral.analyzer import analyze_series
from hf_spectral.engine import AnalysisOptions, analyze_model, deal_by_cost
from hf_spectral.processes import with_torch_threads as torch_threads
from tiny_models import (
    BUILDERS,
    build_tiny,
    fake_hub_cache,
    load_recipe,
    private_module_cache_fixture,
    save_ddpm_pipeline,
    save_tiny,
)

MODELS = list(BUILDERS)  # gpt2, bert, vit, resnet, wav2vec2, unet
TOL = {"float32": 1e-4, "float64": 1e-9}  # × σ_max

private_module_cache = private_module_cache_fixture()  # no ~/.cache/hf_spectral in tests


# ------------------------------------------------------------------ the independent reference


def reference_matrices(
    model: nn.Module, prefix: str = "", folder: Path | None = None, float64: bool = False
) -> tuple[dict[str, np.ndarray], set[str]]:
    """(matrix name -> float64 matrix, names of ≥2-D parameters that have no matrix), from the modules.

    Rows = output side: HF ``Conv1D`` stores (in, out) -> ``.T``; convs (out, in, *k) -> (out, in·∏k);
    weight-normed convs -> the module's effective ``weight``; a bare parameter of a custom module
    (ViT position table (1, n, d)) loses its leading 1-dims and is a matrix only if 2-D is left.
    With ``folder``, names are those the checkpoint stores (transformers 5 renames some keys on
    save, e.g. ViT's ``layers.0.attention.q_proj`` is stored as ``encoder.layer.0.attention.attention.query``),
    found by matching every parameter to the stored tensor with the same values. ``float64``: the
    effective weight of a weight-normed module is computed by the module in float64 (exact upcasts
    of the stored g and v), not rounded to float32.
    """
    from transformers.pytorch_utils import Conv1D

    stored = stored_names_by_content(model, folder) if folder is not None else {}
    if float64:
        model = copy.deepcopy(model).double()
    modules = dict(model.named_modules())
    out: dict[str, np.ndarray] = {}
    no_matrix: set[str] = set()
    for name, param in model.named_parameters():
        if param.ndim < 2:
            continue
        path, _, leaf = name.rpartition(".")
        if ".parametrizations." in f".{path}.":  # torch weight norm: W = g·v/‖v‖, computed by the module
            owner_path = path.split(".parametrizations.")[0]
            module = modules[owner_path]
            w = getattr(module, path.rsplit(".", 1)[-1]).detach()
            name = composed(stored.get(name, name))
        else:
            module = modules[path]
            w = param.detach()
            name = stored.get(name, name)
        w = w.to(torch.float64)
        if isinstance(module, Conv1D):
            matrix = w.T
        elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            matrix = w.reshape(w.shape[0], -1)
        elif isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            matrix = w.transpose(0, 1).reshape(w.shape[1], -1)
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            matrix = w
        else:
            shape = list(w.shape)
            while len(shape) > 1 and shape[0] == 1:
                shape.pop(0)
            if len(shape) != 2:
                no_matrix.add(prefix + name)
                continue
            matrix = w.reshape(shape)
        out[prefix + name] = matrix.numpy()
    return out, no_matrix


def numpy_sigma(matrix: np.ndarray) -> np.ndarray:
    return np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False)


def assert_spectra_match(snapshot: hf_spectral.Snapshot, reference: dict[str, np.ndarray], precision: str) -> None:
    matrices = snapshot.matrices
    assert list(matrices["status"].unique()) == ["ok"], matrices[matrices["status"] != "ok"]
    assert set(matrices["name"]) == set(reference)
    for _, row in matrices.iterrows():
        expected = numpy_sigma(reference[row["name"]])
        got = snapshot.singular_values(row["name"])
        assert (row["rows"], row["cols"]) == reference[row["name"]].shape, row["name"]
        assert got.dtype == np.float64 and got.shape == expected.shape, row["name"]
        err = np.max(np.abs(got - expected))
        assert err <= TOL[precision] * expected[0], (row["name"], err / expected[0])
        assert row["spectral_norm"] == pytest.approx(expected[0], rel=TOL[precision])


def stored_tensors(folder: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor in the folder's safetensors files, read with safetensors itself."""
    out = {}
    for file in folder.rglob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            component = "" if file.parent == folder else f"{file.parent.relative_to(folder)}/"
            for key in f.keys():
                out[component + key] = tuple(f.get_slice(key).get_shape())
    return out


def stored_names_by_content(model: nn.Module, folder: Path) -> dict[str, str]:
    """Model parameter name -> the name of the stored tensor holding exactly its values."""
    by_content: dict[tuple, str] = {}
    for file in folder.rglob("*.safetensors"):
        component = "" if file.parent == folder else f"{file.parent.relative_to(folder)}/"
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                by_content[(tuple(t.shape), t.dtype, t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())] = component + key
    out = {}
    for name, p in model.named_parameters():
        t = p.detach()
        data = t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
        hit = by_content.get((tuple(t.shape), t.dtype, data))
        if hit is not None:
            out[name] = hit.split("/", 1)[-1] if "/" in hit else hit
    return out


def composed(name: str) -> str:
    """``X.parametrizations.weight.original0`` -> ``X.weight`` (weight norm's stored parts)."""
    if ".parametrizations." in name:
        head, _, tail = name.partition(".parametrizations.")
        return f"{head}.{tail.split('.')[0]}"
    return name


def assert_every_tensor_accounted_for(snapshot: hf_spectral.Snapshot, folder: Path) -> None:
    table = snapshot.table.set_index("name")
    for name, shape in stored_tensors(folder).items():
        if len(shape) < 2:
            continue
        row = table.loc[composed(name)] if composed(name) in table.index else None
        assert row is not None, f"{name} {shape} is neither a row nor a skipped row"
        if row["status"] == "skipped":
            assert isinstance(row["flag"], str) and len(row["flag"]) > 5, name


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, Path]]:
    root = tmp_path_factory.mktemp("models")
    return {name: (save_tiny(name, root / name), root / name) for name in MODELS}


def quiet(**kwargs: object) -> dict:
    return {"progress": False, **kwargs}


# ------------------------------------------------------------------ every σ of every model


@pytest.mark.parametrize("name", MODELS)
def test_every_singular_value_matches_numpy(saved: dict, name: str) -> None:
    model, folder = saved[name]
    assert len(list(folder.glob("*.safetensors"))) > 1  # saved sharded: the index path is exercised
    snapshot = hf_spectral.analyze(str(folder), **quiet())
    reference, no_matrix = reference_matrices(model, folder=folder)
    assert_spectra_match(snapshot, reference, "float32")
    assert set(snapshot.skipped["name"]) == no_matrix
    assert_every_tensor_accounted_for(snapshot, folder)
    # rows follow the model's named_parameters order (the depth axis of the paper's heat maps)
    assert list(snapshot.matrices["name"]) == list(reference)


def grokking_checkpoint(folder: Path, positions: str) -> nn.Module:
    """The grokking recipe's model (model_type ``grokking_transformer``), saved with ``save_pretrained``."""
    recipe = load_recipe("grokking")
    torch.manual_seed(0)
    model = recipe.GrokkingTransformer(recipe.GrokkingConfig(p=11, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                                             position_embedding_type=positions)).eval()
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("name", MODELS + ["grokking", "grokking_learned"])
def test_known_families_are_planned_without_building_the_model(saved: dict, name: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Registry-known families: no model is built on the meta device (no modeling code is imported), and
    every σ and the ``named_parameters()`` order are those of the model's own modules."""
    if name.startswith("grokking"):
        model = grokking_checkpoint(tmp_path, "learned" if name.endswith("learned") else "sinusoidal")
        folder = tmp_path
    else:
        model, folder = saved[name]
    monkeypatch.setattr(module_cache, "module_types_from_config", lambda config: pytest.fail("built the model"))
    monkeypatch.setattr(engine, "module_info_for", lambda config: pytest.fail("asked for module classes"))
    snapshot = hf_spectral.analyze(str(folder), **quiet())
    reference, no_matrix = reference_matrices(model, folder=folder)
    assert_spectra_match(snapshot, reference, "float32")
    assert set(snapshot.skipped["name"]) == no_matrix
    assert list(snapshot.matrices["name"]) == list(reference)  # named_parameters order
    assert set(snapshot.matrices["view"]) == {"registry"}


def test_gpt2_analysis_imports_no_modeling_code(saved: dict, tmp_path: Path) -> None:
    """A fresh process analyzing a GPT-2 checkpoint never imports transformers' GPT-2 code (the ~2.5 s the
    module classes used to cost on the first run of an architecture)."""
    import os
    import subprocess
    import sys

    folder = saved["gpt2"][1]
    code = ("import sys, hf_spectral; s = hf_spectral.analyze(sys.argv[1], progress=False); "
            "print(len(s.matrices), sorted(m for m in sys.modules if m.startswith(('transformers.models', 'diffusers'))))")
    env = {**os.environ, "HF_SPECTRAL_CACHE": str(tmp_path / "empty_cache")}
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, env=env, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "11 []"  # wte, wpe, 2 × 4 blocks, lm_head
    assert not (tmp_path / "empty_cache" / "module_types").exists()  # no module info was computed


@pytest.mark.parametrize("name", ["gpt2", "wav2vec2"])
def test_float64_precision_reaches_1e_9(saved: dict, name: str) -> None:
    model, folder = saved[name]
    snapshot = hf_spectral.analyze(str(folder), **quiet(precision="float64"))
    assert_spectra_match(snapshot, reference_matrices(model, folder=folder, float64=True)[0], "float64")
    assert snapshot.meta["options"]["precision"] == "float64"


def test_diffusers_pipeline_folder(tmp_path: Path) -> None:
    unet = save_ddpm_pipeline(tmp_path / "pipe")
    snapshot = hf_spectral.analyze(str(tmp_path / "pipe"), **quiet())
    assert_spectra_match(snapshot, reference_matrices(unet, "unet/", tmp_path / "pipe")[0], "float32")
    assert set(snapshot.matrices["component"]) == {"unet"}
    assert_every_tensor_accounted_for(snapshot, tmp_path / "pipe")


def test_hub_model_id_from_faked_cache(saved: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, folder = saved["gpt2"]
    commit = "c" * 40
    fake_hub_cache(tmp_path / "hub", "org/tiny-gpt2", {commit: folder}, {"main": commit})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = hf_spectral.analyze("org/tiny-gpt2", **quiet())
    assert_spectra_match(snapshot, reference_matrices(model)[0], "float32")
    assert snapshot.meta["source"] == "org/tiny-gpt2"
    assert snapshot.meta["revision"] == "main" and snapshot.meta["commit"] == commit


def test_legacy_pytorch_model_bin(saved: dict, tmp_path: Path) -> None:
    model, folder = saved["bert"]
    (tmp_path / "bin").mkdir()
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((folder / "config.json").read_text())
    snapshot = hf_spectral.analyze(str(tmp_path / "bin"), **quiet())
    assert_spectra_match(snapshot, reference_matrices(model)[0], "float32")
    # torch.save keeps the tied MLM head as a second name of the embedding's storage: listed once,
    # as named_parameters() does, the other name a skipped row saying why
    tied = snapshot.skipped.set_index("name").loc["cls.predictions.decoder.weight", "flag"]
    assert tied == "tied to bert.embeddings.word_embeddings.weight (the same stored tensor)"


@pytest.mark.parametrize("dtype, code", [(torch.bfloat16, "BF16"), (torch.float16, "F16")])
def test_half_precision_checkpoints_are_upcast(tmp_path: Path, dtype: torch.dtype, code: str) -> None:
    model = build_tiny("gpt2").to(dtype)
    model.save_pretrained(tmp_path / "half")
    snapshot = hf_spectral.analyze(str(tmp_path / "half"), **quiet())
    assert set(snapshot.matrices["dtype"]) == {code}
    # the reference is the stored half-precision values, exactly, in float64
    assert_spectra_match(snapshot, reference_matrices(model, folder=tmp_path / "half")[0], "float32")


def test_half_precision_ranks_match_the_same_weights_in_float32(tmp_path: Path) -> None:
    """bf16 / fp16 / fp8 storage: numerical rank, condition number and flag are those of the same stored
    values held in float32 (numpy float64 on the upcast values), not garbage from the storage eps."""
    from safetensors.torch import save_file

    rng = np.random.default_rng(0)
    spectrum = np.geomspace(1.0, 2e-4, 160)  # σ_min = 2e-4·σ₁: condition ~5e3, full rank
    q, _ = np.linalg.qr(rng.standard_normal((256, 160)))
    p, _ = np.linalg.qr(rng.standard_normal((160, 160)))
    weights = {"gauss.weight": torch.tensor(rng.standard_normal((192, 512)) * 0.02),
               "graded.weight": torch.tensor((q * spectrum) @ p.T)}
    eps32 = float(np.finfo(np.float32).eps)
    for dtype in (torch.bfloat16, torch.float16, torch.float8_e4m3fn):
        scale = 1.0 if dtype != torch.float8_e4m3fn else 64.0  # keep fp8's few values away from its subnormals
        stored = {name: (w * scale).to(dtype) for name, w in weights.items()}
        save_file(stored, str(tmp_path / "half.safetensors"))
        save_file({name: t.to(torch.float32) for name, t in stored.items()}, str(tmp_path / "f32.safetensors"))
        half = hf_spectral.analyze(str(tmp_path / "half.safetensors"), output=None, **quiet()).matrices.set_index("name")
        full = hf_spectral.analyze(str(tmp_path / "f32.safetensors"), output=None, **quiet()).matrices.set_index("name")
        for name, tensor in stored.items():
            upcast = tensor.to(torch.float64).numpy()
            sigma = np.linalg.svd(upcast, compute_uv=False)
            rank = np.linalg.matrix_rank(upcast, tol=max(upcast.shape) * eps32 * sigma[0])
            row = half.loc[name]
            assert row["numerical_rank"] == rank == full.loc[name, "numerical_rank"], (dtype, name)
            assert row["condition_number"] == pytest.approx(sigma[0] / sigma[-1], rel=1e-4), (dtype, name)
            assert row["condition_number"] == pytest.approx(full.loc[name, "condition_number"], rel=1e-9)
            assert row["flag"] == full.loc[name, "flag"] == ("" if rank == min(upcast.shape) else "rank_deficient")
        assert half.loc["gauss.weight", "numerical_rank"] == 192, dtype  # a Gaussian is full rank in any dtype


def test_top_k_vectors_reconstruct_the_top_k_approximation(saved: dict) -> None:
    model, folder = saved["vit"]
    k = 3
    snapshot = hf_spectral.analyze(str(folder), **quiet(top_k=k))
    reference = reference_matrices(model, folder=folder)[0]
    assert set(snapshot.vectors) == set(reference)
    for name, matrix in reference.items():
        u, v = snapshot.vectors[name]
        sigma = snapshot.singular_values(name)
        assert u.shape == (matrix.shape[0], k) and v.shape == (matrix.shape[1], k)
        assert u.dtype == np.float32  # float32 precision keeps float32 vectors
        np.testing.assert_allclose(u.T.astype(np.float64) @ u, np.eye(k), atol=1e-5)
        np.testing.assert_allclose(v.T.astype(np.float64) @ v, np.eye(k), atol=1e-5)
        uu, ss, vt = np.linalg.svd(matrix, full_matrices=False)
        best = (uu[:, :k] * ss[:k]) @ vt[:k]
        ours = (u.astype(np.float64) * sigma[:k]) @ v.astype(np.float64).T
        assert np.abs(ours - best).max() <= 1e-4 * ss[0], name


def test_alignment_table_with_an_independent_pair(saved: dict) -> None:
    model, folder = saved["gpt2"]
    snapshot = hf_spectral.analyze(str(folder), **quiet(alignment=True))
    table = snapshot.alignment
    assert len(table) > 5 and set(table["flag"]) == {""}
    assert set(table["label"]) == set(snapshot.alignment_diagonals)
    assert table["score"].between(0, 1).all()
    # V -> O of block 0: |U_vᵀ V_o| (rows of c_attn after the Conv1D transpose: [Q; K; V])
    block = model.transformer.h[0].attn
    d = block.c_proj.weight.shape[0]
    w_v = block.c_attn.weight.detach().double().numpy().T[2 * d:3 * d]
    w_o = block.c_proj.weight.detach().double().numpy().T
    u_v = np.linalg.svd(w_v)[0]
    v_o = np.linalg.svd(w_o)[2].T
    expected = np.abs(np.sum(u_v * v_o, axis=0))
    (label,) = [lbl for lbl in table["label"] if "h.0.attn.c_attn[V]" in lbl and "h.0.attn.c_proj" in lbl]
    np.testing.assert_allclose(snapshot.alignment_diagonals[label], expected[: len(snapshot.alignment_diagonals[label])], atol=1e-5)


def test_include_exclude_select_matrices_and_pairs(saved: dict) -> None:
    _, folder = saved["gpt2"]
    snapshot = hf_spectral.analyze(str(folder), **quiet(include=[r"\.h\.1\."], exclude="mlp", alignment=True))
    names = list(snapshot.matrices["name"])
    assert names == ["transformer.h.1.attn.c_attn.weight", "transformer.h.1.attn.c_proj.weight"]
    assert set(snapshot.alignment["prev"]) | set(snapshot.alignment["next"]) <= set(names)


def test_live_model_gives_the_same_spectra_as_its_checkpoint(saved: dict) -> None:
    model, folder = saved["wav2vec2"]
    live = analyze_model(model, AnalysisOptions(progress=False), step=7)
    assert live.step == 7
    assert_spectra_match(live, reference_matrices(model)[0], "float32")
    stored = hf_spectral.analyze(str(folder), **quiet())
    assert list(live.matrices["name"]) == list(stored.matrices["name"])
    assert all(p.requires_grad for p in model.parameters())  # the model is left as it was


# ------------------------------------------------------------------ dealing work


def test_deal_by_cost_balances_and_is_not_contiguous() -> None:
    costs = [100.0, 1, 1, 1, 90, 1, 1, 1, 80, 70]
    dealt = deal_by_cost(costs, 2)
    assert sorted(i for part in dealt for i in part) == list(range(len(costs)))
    loads = [sum(costs[i] for i in part) for part in dealt]
    assert max(loads) - min(loads) <= max(costs[i] for i in range(len(costs)) if costs[i] < 100)
    # the two costliest items go to different workers; contiguous halves would not balance
    assert (0 in dealt[0]) != (4 in dealt[0])
    assert dealt != [list(range(5)), list(range(5, 10))]
    assert deal_by_cost(costs, 1) == [list(range(len(costs)))]
    assert deal_by_cost([5.0], 3) == [[0], [], []]


def test_single_process_run_leaves_torch_threads_alone(saved: dict) -> None:
    before = torch.get_num_threads()
    hf_spectral.analyze(str(saved["resnet"][1]), **quiet())
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("top_k", [0, 3])
def test_side_by_side_threads_give_the_same_snapshot(saved: dict, top_k: int) -> None:
    """``threads=2`` decomposes matrices on two threads: every σ, vector and row as one thread gives them, in the
    plan's order, and σ as numpy's."""
    model, _ = saved["gpt2"]
    options = AnalysisOptions(progress=False, top_k=top_k, alignment=True)
    one, two = analyze_model(model, options, threads=1), analyze_model(model, options, threads=2)
    assert list(two.matrices["name"]) == list(one.matrices["name"]) and len(one.matrices) > 5
    pd.testing.assert_frame_equal(two.matrices, one.matrices)
    pd.testing.assert_frame_equal(two.alignment, one.alignment)
    for name in one.matrices["name"]:
        np.testing.assert_array_equal(two.singular_values(name), one.singular_values(name))
        if top_k:
            for a, b in zip(two.vectors[name], one.vectors[name]):
                np.testing.assert_array_equal(a, b)
    assert_spectra_match(two, reference_matrices(model)[0], "float32")


def test_side_by_side_threads_run_at_once_and_report_errors(saved: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = saved["bert"]
    options = AnalysisOptions(progress=False, top_k=2)
    real, names = engine.decompose, []

    def slow(spec, *args, **kwargs):  # the GIL is free while sleeping, as in a LAPACK call
        time.sleep(0.05)
        names.append(spec.name)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(engine, "decompose", slow)
    started = time.perf_counter()
    analyze_model(model, options, threads=1)
    alone = time.perf_counter() - started
    count = len(names)
    started = time.perf_counter()
    analyze_model(model, options, threads=2)
    side_by_side = time.perf_counter() - started
    assert len(names) == 2 * count and count >= 8
    assert side_by_side < 0.75 * alone, (side_by_side, alone)

    seen: set[tuple[str, int]] = set()

    def counting(spec, *args, **kwargs):  # each thread's torch thread count while it decomposes
        seen.add((threading.current_thread().name, torch.get_num_threads()))
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(engine, "decompose", counting)
    before = torch.get_num_threads()
    with torch_threads(2):
        analyze_model(model, options, threads=2, torch_threads=1)
        assert torch.get_num_threads() == 2  # restored
    assert {count for _, count in seen} == {1} and len({name for name, _ in seen}) == 2
    assert torch.get_num_threads() == before

    def failing(spec, *args, **kwargs):
        if spec.name.endswith("layer.0.attention.self.key.weight"):
            raise engine.SpectralError(f"{spec.name}: unreadable")
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(engine, "decompose", failing)
    with pytest.raises(engine.SpectralError, match="key.weight: unreadable"):
        analyze_model(model, options, threads=2)


# ------------------------------------------------------------------ series


def test_series_cache_folders_are_unique_and_reused(saved: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # two runs whose checkpoints carry the same label: an explicit list must not collide in the cache
    for run, name in (("a", "resnet"), ("b", "bert")):
        target = tmp_path / run / "checkpoint-10"
        target.mkdir(parents=True)
        for f in saved[name][1].iterdir():
            (target / f.name).write_bytes(f.read_bytes())
    sources = [str(tmp_path / "a" / "checkpoint-10"), str(tmp_path / "b" / "checkpoint-10")]
    cache = tmp_path / "cache"
    first = analyze_series(sources, cache_dir=cache, progress=False)
    assert [s.step for s in first] == [10, 10]
    folders = sorted(p.name for p in cache.iterdir())
    assert len(folders) == 2 and len(set(folders)) == 2, folders
    assert first[0].singular_values("resnet.embedder.embedder.convolution.weight").size > 0
    assert "bert.embeddings.word_embeddings.weight" in first[1].spectra

    def no_compute(*a: object, **k: object) -> None:
        raise AssertionError("a cached snapshot was computed again")

    import hf_spectral.analyzer as analyzer

    monkeypatch.setattr(analyzer, "run_plan", no_compute)
    again = analyze_series(sources, cache_dir=cache, progress=False)
    for a, b in zip(first, again):
        assert a.table.equals(b.table)
        assert a.meta == b.meta
    # a changed option is a cache miss
    with pytest.raises(AssertionError, match="computed again"):
        analyze_series(sources, cache_dir=cache, progress=False, top_k=2)
    assert json.loads((cache / folders[0] / "meta.json").read_text())["cache_key"] == first[0].meta["cache_key"]
    assert engine.AnalysisOptions(top_k=2).to_meta()["top_k"] == 2


# ------------------------------------------------------------------ module info remembered on disk


def tiny_llama() -> nn.Module:
    """A family the registry does not know completely: planned with the module classes of the model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=2, vocab_size=32, tie_word_embeddings=False)).eval()


def test_module_info_cache_gives_the_same_plans(saved: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hf_spectral.sources import resolve

    monkeypatch.setenv("HF_SPECTRAL_CACHE", str(tmp_path / "cache"))
    options = AnalysisOptions(progress=False, alignment=True)
    llama = tiny_llama()
    llama.save_pretrained(tmp_path / "llama", max_shard_size="20KB")
    folders = {"llama": tmp_path / "llama", "gpt2": saved["gpt2"][1]}

    def plan_of(folder: Path) -> tuple:
        (checkpoint,) = resolve(str(folder))
        plan = engine.plan_checkpoint(checkpoint, options)
        checkpoint.close()
        return ([(s.name, s.kind, s.shape, s.view, s.tensors) for s in plan.specs], plan.skipped,
                [p.label for p in plan.pairs])

    cold = {name: plan_of(folder) for name, folder in folders.items()}
    files = sorted((tmp_path / "cache" / "module_types").iterdir())
    assert len(files) == 1  # the unknown family only: GPT-2 is planned from its names
    # the module classes decided Llama's plan: its MLP is gate, up, down (a natural sort says down, gate, up)
    assert all(view == "module" for _, _, _, view, _ in cold["llama"][0])
    names = [name for name, *_ in cold["llama"][0]]
    assert names == [n for n, p in llama.named_parameters() if p.dim() >= 2]
    assert all(view == "registry" for _, _, _, view, _ in cold["gpt2"][0])
    monkeypatch.setattr(module_cache, "module_types_from_config", lambda config: pytest.fail("not read from the cache"))
    assert {name: plan_of(folder) for name, folder in folders.items()} == cold
    # a damaged entry is computed again, not trusted
    files[0].write_text("{half")
    monkeypatch.undo()
    monkeypatch.setenv("HF_SPECTRAL_CACHE", str(tmp_path / "cache"))
    assert {name: plan_of(folder) for name, folder in folders.items()} == cold
    assert json.loads(files[0].read_text())["types"]
    monkeypatch.setenv("HF_SPECTRAL_CACHE", "off")
    assert module_cache._module_cache_path({"model_type": "gpt2"}) is None
