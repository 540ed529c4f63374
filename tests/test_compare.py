"""hf_spectral.dynamics.compare: agreement of two checkpoints, both spectra and the spectrum of
W_A − W_B, checked against float64 numpy; self comparison; pruned vs dense; mismatches; save/load."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_spectral.comparison import compare
from hf_spectral.dynamics import Comparison
from hf_spectral.errors import SpectralError
from tiny_models import save_tiny

GPT2_MATRICES = ("transformer.wte.weight", "transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_proj.weight",
                 "lm_head.weight")


def numpy_sigma(matrix: torch.Tensor | np.ndarray) -> np.ndarray:
    array = matrix.detach().double().numpy() if isinstance(matrix, torch.Tensor) else matrix
    return np.linalg.svd(array.reshape(array.shape[0], -1), compute_uv=False)


def sigma_of(result: Comparison, matrix: str, model: str) -> np.ndarray:
    rows = result.spectra[(result.spectra["matrix"] == matrix) & (result.spectra["model"] == model)]
    return rows.sort_values("index")["sigma"].to_numpy()


@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("gpt2")
    save_tiny("gpt2", root / "a", seed=0, max_shard_size="10MB")
    save_tiny("gpt2", root / "b", seed=1, max_shard_size="10MB")
    return root / "a", root / "b"


def test_difference_spectrum_equals_numpy(gpt2_pair: tuple[Path, Path]) -> None:
    a, b = gpt2_pair
    result = compare(a, b, progress=False)
    weights_a, weights_b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert len(result.layers) == 11 and len(result.mismatches) == 0
    for name in GPT2_MATRICES:
        want_d = numpy_sigma(weights_a[name].double() - weights_b[name].double())
        np.testing.assert_allclose(sigma_of(result, name, "difference"), want_d, atol=1e-6 * want_d[0])
        for model, weights in (("a", weights_a), ("b", weights_b)):
            want = numpy_sigma(weights[name])
            np.testing.assert_allclose(sigma_of(result, name, model), want, atol=1e-6 * want[0])
        row = result.layers.set_index("matrix").loc[name]
        fro = np.linalg.norm((weights_a[name].double() - weights_b[name].double()).numpy())
        assert row["diff_frobenius"] == pytest.approx(fro, rel=1e-6)
        assert row["relative_difference"] == pytest.approx(fro / np.linalg.norm(weights_b[name].double().numpy()), rel=1e-6)
        assert row["diff_sigma_max"] == pytest.approx(want_d[0], rel=1e-6)
        assert 0 <= row["agreement"] < 0.9 and row["k"] == 20  # two random inits share no direction
    assert result.meta["a"]["path"] == str(a) and result.meta["top"] == 10


def test_self_comparison_agrees_exactly_and_differs_by_zero(gpt2_pair: tuple[Path, Path]) -> None:
    a, _ = gpt2_pair
    result = compare(a, a, include=r"\.h\.0\.", progress=False)
    assert len(result.layers) == 4  # the filter applies to A, B and the difference
    assert (result.agreement["value"] == 1.0).all() and len(result.agreement) == 4 * 20
    assert (result.layers[["agreement", "subspace"]] == 1.0).all().all()
    difference = result.spectra[result.spectra["model"] == "difference"]
    assert len(difference) == 32 * 4 and (difference["sigma"] == 0.0).all()
    assert (result.layers["diff_flag"] == "zero_matrix").all() and (result.layers["diff_frobenius"] == 0).all()


def _orthonormal(rows: int, cols: int, seed: int) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((rows, cols)))[0]


def test_known_rotation_agreement_and_pruned_vs_dense(tmp_path: Path) -> None:
    """A: a pruned model (``fc.weight_orig``·``fc.weight_mask``) whose top two right singular directions are
    rotated; B: the dense original plus a layer A lacks and one of another shape."""
    sigma = np.array([8.0, 6.0, 4.0, 3.0, 2.0, 1.0])
    u, v = _orthonormal(10, 6, 0), _orthonormal(6, 6, 1)
    dense = u @ np.diag(sigma) @ v.T
    theta = 0.4
    r = np.eye(6)
    r[0, 0] = r[1, 1] = math.cos(theta)
    r[0, 1], r[1, 0] = -math.sin(theta), math.sin(theta)
    rotated = u @ np.diag(sigma) @ (v @ r).T
    mask = (np.random.default_rng(2).random(rotated.shape) > 0.3).astype(np.float64)
    f32 = lambda x: torch.from_numpy(np.ascontiguousarray(x)).float()  # noqa: E731
    save_file({"fc.weight_orig": f32(rotated), "fc.weight_mask": f32(mask), "fc.bias": torch.zeros(10),
               "head.weight": f32(_orthonormal(4, 10, 3)), "odd.weight": torch.ones(3, 5)}, tmp_path / "a.safetensors")
    save_file({"fc.weight": f32(dense), "head.weight": f32(_orthonormal(4, 10, 3)), "extra.weight": torch.ones(2, 2),
               "odd.weight": torch.ones(5, 3)}, tmp_path / "b.safetensors")
    result = compare(tmp_path / "a.safetensors", tmp_path / "b.safetensors", top_k=6, progress=False)
    assert result.layers["matrix"].tolist() == ["fc.weight", "head.weight"]
    reasons = dict(result.mismatches.values.tolist())
    assert reasons == {"odd.weight": "shape 3x5 in A, 5x3 in B", "extra.weight": "only in B"}
    # The difference is of the composed (pruned) weight, not of its stored parts.
    pruned = np.float32(rotated) * np.float32(mask)
    want = numpy_sigma(pruned.astype(np.float64) - np.float32(dense).astype(np.float64))
    np.testing.assert_allclose(sigma_of(result, "fc.weight", "difference"), want, atol=1e-6 * want[0])
    np.testing.assert_allclose(sigma_of(result, "fc.weight", "a"), numpy_sigma(pruned.astype(np.float64)), atol=1e-5)
    assert (sigma_of(result, "head.weight", "difference") == 0).all()
    # Agreement of the head with itself is 1; of fc: compare with float64 numpy of the same two matrices.
    agree = result.agreement.pivot(index="index", columns="matrix", values="value")
    assert (agree["head.weight"].dropna() == 1.0).all()
    ua, _, vat = np.linalg.svd(pruned.astype(np.float64), full_matrices=False)
    ub, _, vbt = np.linalg.svd(np.float32(dense).astype(np.float64), full_matrices=False)
    expected = np.abs((ua * ub).sum(0)) * np.abs((vat * vbt).sum(1))
    np.testing.assert_allclose(agree["fc.weight"].to_numpy(), expected, atol=1e-5)

    # Without the mask, the known rotation: S_00 = S_11 = cos θ, the rest 1.
    save_file({"fc.weight": f32(rotated)}, tmp_path / "r.safetensors")
    plain = compare(tmp_path / "r.safetensors", tmp_path / "b.safetensors", top_k=6, progress=False)
    known = np.ones(6)
    known[:2] = math.cos(theta)
    np.testing.assert_allclose(plain.agreement.sort_values("index")["value"].to_numpy(), known, atol=1e-6)
    assert plain.layers["agreement"].item() == pytest.approx(known.mean(), abs=1e-6)  # k = 6 < 10: mean of 6
    assert plain.mismatches["reason"].tolist() == ["only in B"] * 3


def test_save_load_and_errors(gpt2_pair: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = gpt2_pair
    result = compare(a, b, include="lm_head", progress=False)
    out = result.save(tmp_path / "cmp")
    assert json.loads((out / "comparison.json").read_text())["a"]["source"] == str(a)
    back = Comparison.load(out)
    for name in ("layers", "agreement", "spectra", "mismatches"):
        pd.testing.assert_frame_equal(getattr(back, name), getattr(result, name), check_dtype=False)
    save_file({"x.weight": torch.ones(3, 3)}, tmp_path / "other.safetensors")
    with pytest.raises(SpectralError, match=r"share no weight matrix of the same shape"):
        compare(a, tmp_path / "other.safetensors", progress=False)
    run = tmp_path / "run"
    for step in (1, 2):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        save_file({"x.weight": torch.ones(3, 3)}, run / f"checkpoint-{step}" / "model.safetensors")
    with pytest.raises(SpectralError, match=r"holds 2 checkpoints"):
        compare(run, a, progress=False)


def test_base_model_against_its_fine_tuned_head_model(tmp_path: Path) -> None:
    """A base BertModel and a BertForSequenceClassification fine-tune of it (names ``bert.*``), both saved with
    save_pretrained: matched by name as from_pretrained does; W_head − W_base equals numpy's."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=3)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(tmp_path / "base")
    head = BertForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=3)
    with torch.no_grad():  # a "fine-tune": a small change of every weight
        for param in head.parameters():
            param.add_(1e-4 * torch.randn_like(param))
    head.save_pretrained(tmp_path / "head")
    base_w, head_w = load_file(tmp_path / "base" / "model.safetensors"), load_file(tmp_path / "head" / "model.safetensors")
    assert all(name.startswith(("bert.", "classifier.")) for name in head_w)

    for a, b, head_side in ((tmp_path / "head", tmp_path / "base", "a"), (tmp_path / "base", tmp_path / "head", "b")):
        result = compare(a, b, progress=False)
        assert result.meta["renamed"] == [{"side": head_side, "component": "", "prefix": "bert."}]
        matrices = set(result.layers["matrix"])
        base_matrices = {n for n, w in base_w.items() if w.ndim == 2 and "position_ids" not in n}
        assert base_matrices <= matrices | {"embeddings.token_type_embeddings.weight"}
        assert "embeddings.word_embeddings.weight" in matrices and "encoder.layer.1.output.dense.weight" in matrices
        assert {m["matrix"] for m in result.mismatches.to_dict("records")} >= {"classifier.weight"}
        name = "encoder.layer.0.attention.self.query.weight"
        first, second = (head_w[f"bert.{name}"], base_w[name]) if head_side == "a" else (base_w[name], head_w[f"bert.{name}"])
        want = numpy_sigma(first.double() - second.double())
        np.testing.assert_allclose(sigma_of(result, name, "difference"), want, atol=1e-6 * want[0])
        assert result.layers.set_index("matrix").loc[name, "agreement"] > 0.9  # a small change keeps the directions
