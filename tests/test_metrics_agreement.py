"""hf_spectral.metrics.agreement against hand-computed values and numpy float64 loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_spectral import metrics


def orthonormal(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, k)))
    return q * np.sign(np.diag(r))


def rotate_first_two(q: np.ndarray, angle: float) -> np.ndarray:
    """Rotate columns 0 and 1 of q by `angle` inside their plane."""
    out = q.copy()
    c, s = math.cos(angle), math.sin(angle)
    out[:, 0] = c * q[:, 0] + s * q[:, 1]
    out[:, 1] = -s * q[:, 0] + c * q[:, 1]
    return out


def t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)


def numpy_left_vectors(w: np.ndarray) -> np.ndarray:
    return np.linalg.svd(w, full_matrices=False)[0]


def numpy_right_vectors(w: np.ndarray) -> np.ndarray:
    return np.linalg.svd(w, full_matrices=False)[2].T


# ---------------------------------------------------------------------------------------------
# agreement (Eq. 5)
# ---------------------------------------------------------------------------------------------


def test_agreement_with_itself_is_one():
    rng = np.random.default_rng(0)
    w = torch.tensor(rng.standard_normal((40, 25)) * np.linspace(3, 1, 25))
    u, _, v = metrics.top_singular_vectors(w, 10)
    full = metrics.agreement_matrix(u, v, u, v)
    assert full.shape == (10, 10) and full.dtype == torch.float64
    np.testing.assert_allclose(full.numpy(), np.eye(10), atol=1e-12)
    np.testing.assert_allclose(metrics.agreement_diagonal(u, v, u, v).numpy(), np.ones(10), atol=1e-12)
    assert metrics.agreement_subspace(u, v, u, v, 10) == pytest.approx(1.0)
    # signs do not matter
    np.testing.assert_allclose(metrics.agreement_diagonal(u, v, -u, -v).numpy(), np.ones(10), atol=1e-12)


def test_agreement_known_rotation():
    rng = np.random.default_rng(1)
    u, v = orthonormal(rng, 30, 6), orthonormal(rng, 20, 6)
    theta, phi = 0.3, 1.1
    u_b, v_b = rotate_first_two(u, theta), rotate_first_two(v, phi)
    full = metrics.agreement_matrix(t(u), t(v), t(u_b), t(v_b)).numpy()
    expected = np.eye(6)
    expected[0, 0] = expected[1, 1] = abs(math.cos(theta)) * abs(math.cos(phi))
    expected[0, 1] = expected[1, 0] = abs(math.sin(theta)) * abs(math.sin(phi))
    np.testing.assert_allclose(full, expected, atol=1e-12)
    diagonal = metrics.agreement_diagonal(t(u), t(v), t(u_b), t(v_b))
    np.testing.assert_allclose(diagonal.numpy(), np.diag(expected), atol=1e-12)
    np.testing.assert_allclose(metrics.agreement_diagonal(t(u), t(v), t(u_b), t(v_b), k=3).numpy(),
                               np.diag(expected)[:3], atol=1e-12)


def test_agreement_through_actual_matrices():
    # W_b has the same spectrum as W_a with its top two singular vectors rotated by θ (U) and φ (V).
    rng = np.random.default_rng(2)
    u, v = orthonormal(rng, 50, 12), orthonormal(rng, 35, 12)
    s = np.linspace(12, 1, 12)
    theta, phi = 0.4, 0.7
    w_a = (u * s) @ v.T
    w_b = (rotate_first_two(u, theta) * s) @ rotate_first_two(v, phi).T
    u_a, _, v_a = metrics.top_singular_vectors(torch.tensor(w_a, dtype=torch.float32), 12)
    u_b, _, v_b = metrics.top_singular_vectors(torch.tensor(w_b, dtype=torch.float32), 12)
    diagonal = metrics.agreement_diagonal(u_a, v_a, u_b, v_b).numpy()
    expected = np.ones(12)
    expected[:2] = math.cos(theta) * math.cos(phi)
    np.testing.assert_allclose(diagonal, expected, atol=1e-6)  # float32-stored weights
    assert metrics.top_score(torch.tensor(diagonal), top=10) == pytest.approx((2 * expected[0] + 8) / 10, abs=1e-6)


def test_subspace_overlap_survives_rotation_inside_the_subspace():
    rng = np.random.default_rng(3)
    u, v = orthonormal(rng, 25, 5), orthonormal(rng, 18, 5)
    u_b, v_b = rotate_first_two(u, math.pi / 4), rotate_first_two(v, math.pi / 4)
    diagonal = metrics.agreement_diagonal(t(u), t(v), t(u_b), t(v_b)).numpy()
    np.testing.assert_allclose(diagonal[:2], 0.5, atol=1e-12)  # cos²(45°): individual vectors moved
    assert metrics.subspace_overlap(t(u), t(u_b), 2) == pytest.approx(1.0, abs=1e-12)
    assert metrics.agreement_subspace(t(u), t(v), t(u_b), t(v_b), 2) == pytest.approx(1.0, abs=1e-12)
    # k = 1 cuts the rotated pair: overlap is cos² of the angle
    assert metrics.subspace_overlap(t(u), t(u_b), 1) == pytest.approx(0.5, abs=1e-12)


def test_subspace_overlap_known_values():
    e = np.eye(6)
    assert metrics.subspace_overlap(t(e[:, [0, 1]]), t(e[:, [0, 2]]), 2) == pytest.approx(0.5)
    assert metrics.subspace_overlap(t(e[:, [0, 1]]), t(e[:, [2, 3]]), 2) == pytest.approx(0.0)
    assert metrics.subspace_overlap(t(e[:, :3]), t(e[:, :2]), 5) == pytest.approx(1.0)  # k clipped to 2
    with pytest.raises(ValueError):
        metrics.subspace_overlap(t(e[:5, :2]), t(e[:, :2]), 2)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(2, 20), n=st.integers(2, 20), k=st.integers(1, 20))
def test_agreement_properties(seed, m, n, k):
    rng = np.random.default_rng(seed)
    r = min(m, n, k)
    u_a, v_a = orthonormal(rng, m, r), orthonormal(rng, n, r)
    u_b, v_b = orthonormal(rng, m, r), orthonormal(rng, n, r)
    full = metrics.agreement_matrix(t(u_a), t(v_a), t(u_b), t(v_b)).numpy()
    expected = np.abs(u_a.T @ u_b) * np.abs(v_a.T @ v_b)
    np.testing.assert_allclose(full, expected, atol=1e-12)
    assert np.all(full >= 0) and np.all(full <= 1 + 1e-12)
    overlap = metrics.subspace_overlap(t(u_a), t(u_b), r)
    assert 0 <= overlap <= 1 + 1e-12
    assert overlap == pytest.approx(metrics.subspace_overlap(t(u_b), t(u_a), r), abs=1e-12)
    assert overlap == pytest.approx(np.linalg.norm(u_a.T @ u_b) ** 2 / r, abs=1e-12)


def test_top_score():
    d = torch.arange(20, dtype=torch.float64)
    assert metrics.top_score(d) == pytest.approx(4.5)
    assert metrics.top_score(d, top=3) == pytest.approx(1.0)
    assert metrics.top_score(torch.tensor([0.2, 0.4])) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        metrics.top_score(torch.zeros(0))


def test_agreement_rejects_mismatched_shapes():
    rng = np.random.default_rng(4)
    with pytest.raises(ValueError):
        metrics.agreement_matrix(t(orthonormal(rng, 5, 2)), t(orthonormal(rng, 4, 2)),
                                 t(orthonormal(rng, 6, 2)), t(orthonormal(rng, 4, 2)))


# ---------------------------------------------------------------------------------------------
# alignment (Eqs. 3-4)
# ---------------------------------------------------------------------------------------------


def test_alignment_matrix_and_diagonal():
    rng = np.random.default_rng(5)
    u, v = orthonormal(rng, 16, 5), orthonormal(rng, 16, 7)
    full = metrics.alignment_matrix(t(u), t(v)).numpy()
    np.testing.assert_allclose(full, np.abs(u.T @ v), atol=1e-14)
    diagonal = metrics.alignment_diagonal(t(u), t(v)).numpy()
    np.testing.assert_allclose(diagonal, np.abs(np.diag(u.T @ v)), atol=1e-14)
    assert diagonal.shape == (5,)
    with pytest.raises(ValueError):
        metrics.alignment_matrix(t(u), t(orthonormal(rng, 15, 3)))


def test_out_in_alignment_shared_and_orthogonal_spaces():
    rng = np.random.default_rng(6)
    d, r = 24, 5
    basis = orthonormal(rng, d, 2 * r)
    shared, other = basis[:, :r], basis[:, r:]
    s_prev, s_next = np.linspace(9, 5, r), np.linspace(4, 1, r)
    w_prev = (shared * s_prev) @ orthonormal(rng, 30, r).T          # (d × 30), output space = shared
    w_next = (orthonormal(rng, 40, r) * s_next) @ shared.T          # (40 × d), input space = shared
    w_far = (orthonormal(rng, 40, r) * s_next) @ other.T            # input space ⟂ shared
    diagonal = metrics.out_in_alignment(torch.tensor(w_prev, dtype=torch.float32),
                                        torch.tensor(w_next, dtype=torch.float32), k=r)
    assert diagonal.dtype == torch.float64 and diagonal.shape == (r,)
    np.testing.assert_allclose(diagonal.numpy(), 1.0, atol=1e-6)
    far = metrics.out_in_alignment(t(w_prev), t(w_far), k=r)
    np.testing.assert_allclose(far.numpy(), 0.0, atol=1e-10)
    # default k = 100 is clipped to what both matrices have
    assert metrics.out_in_alignment(t(w_prev), t(w_next)).shape == (min(d, 30, 40),)
    with pytest.raises(ValueError, match="rows"):
        metrics.out_in_alignment(t(w_prev), t(w_prev))


def test_out_in_alignment_matches_numpy():
    rng = np.random.default_rng(7)
    w_prev = rng.standard_normal((20, 33)) * 1.0
    w_next = rng.standard_normal((15, 20))
    expected = np.abs(np.sum(numpy_left_vectors(w_prev)[:, :8] * numpy_right_vectors(w_next)[:, :8], axis=0))
    got = metrics.out_in_alignment(t(w_prev), t(w_next), k=8).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_in_in_alignment_embedding():
    rng = np.random.default_rng(8)
    d = 12
    v = orthonormal(rng, d, d)
    embedding = (orthonormal(rng, 100, d) * np.linspace(5, 1, d)) @ v.T  # (vocab, d)
    layer = (orthonormal(rng, 3 * d, d) * np.linspace(7, 2, d)) @ v.T    # (3d, d), same input space
    diagonal = metrics.in_in_alignment(t(embedding), t(layer))
    np.testing.assert_allclose(diagonal.numpy(), np.ones(d), atol=1e-9)
    expected = np.abs(np.sum(numpy_right_vectors(embedding) * numpy_right_vectors(layer), axis=0))
    np.testing.assert_allclose(diagonal.numpy(), expected, atol=1e-9)
    with pytest.raises(ValueError, match="cols"):
        metrics.in_in_alignment(t(embedding), t(layer.T))


def numpy_qk(w_q: np.ndarray, w_k: np.ndarray, heads: int, k: int) -> np.ndarray:
    d_head = w_q.shape[0] // heads
    out = []
    for h in range(heads):
        u_q = numpy_left_vectors(w_q[h * d_head:(h + 1) * d_head])[:, :k]
        u_k = numpy_left_vectors(w_k[h * d_head:(h + 1) * d_head])[:, :k]
        out.append(np.abs(np.diag(u_q.T @ u_k)))
    return np.array(out)


def test_qk_head_alignment_matches_numpy_loop():
    rng = np.random.default_rng(9)
    heads, d_model = 4, 32
    w_q = rng.standard_normal((d_model, d_model))
    w_k = rng.standard_normal((d_model, d_model))
    per_head = metrics.qk_head_alignment_per_head(t(w_q), t(w_k), heads, k=100)
    expected = numpy_qk(w_q, w_k, heads, 8)
    assert per_head.shape == (heads, 8)
    np.testing.assert_allclose(per_head.numpy(), expected, atol=1e-9)
    mean = metrics.qk_head_alignment(t(w_q), t(w_k), heads, k=5)
    np.testing.assert_allclose(mean.numpy(), expected[:, :5].mean(axis=0), atol=1e-9)
    # one head over all rows is a different (the "bad", unsplit) quantity
    assert not np.allclose(metrics.qk_head_alignment(t(w_q), t(w_k), 1, k=5).numpy(), mean.numpy())


def test_qk_head_alignment_shared_head_spaces():
    rng = np.random.default_rng(10)
    heads, d_head, d_model = 3, 4, 20
    blocks_q, blocks_k = [], []
    for _ in range(heads):
        u = orthonormal(rng, d_head, d_head)  # the same head-output basis for Q and K
        blocks_q.append((u * np.array([8.0, 4, 2, 1])) @ orthonormal(rng, d_model, d_head).T)
        blocks_k.append((u * np.array([5.0, 3, 2, 1])) @ orthonormal(rng, d_model, d_head).T)
    diagonal = metrics.qk_head_alignment(t(np.vstack(blocks_q)), t(np.vstack(blocks_k)), heads)
    np.testing.assert_allclose(diagonal.numpy(), np.ones(d_head), atol=1e-9)
    with pytest.raises(ValueError):
        metrics.qk_head_alignment(t(np.vstack(blocks_q)), t(np.vstack(blocks_k)), 5)


def numpy_conv_centre(w_prev: np.ndarray, kernel: np.ndarray, k: int) -> np.ndarray:
    c_in, spatial = kernel.shape[1], kernel.shape[2:]
    right = numpy_right_vectors(kernel.reshape(kernel.shape[0], -1))[:, :k]
    centre = tuple(s // 2 for s in spatial)
    sliced = np.stack([right[:, j].reshape(c_in, *spatial)[(slice(None), *centre)] for j in range(right.shape[1])], 1)
    u = numpy_left_vectors(w_prev)[:, :k]
    kk = min(u.shape[1], sliced.shape[1])
    return np.abs(np.sum(u[:, :kk] * sliced[:, :kk], axis=0))


@pytest.mark.parametrize("spatial", [(3, 3), (5,), (4, 4), (3, 1, 3)])
def test_conv_centre_alignment_matches_numpy_reshape(spatial):
    rng = np.random.default_rng(11)
    c_mid, c_out = 6, 9
    w_prev = rng.standard_normal((c_mid, 4 * 9))  # a flattened 3x3 conv with 4 inputs
    kernel = rng.standard_normal((c_out, c_mid, *spatial))
    got = metrics.conv_centre_alignment(t(w_prev), t(kernel), k=100).numpy()
    expected = numpy_conv_centre(w_prev, kernel, 100)
    assert got.shape == expected.shape == (c_mid,)
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_conv_centre_alignment_known_value():
    # next's kernel is non-zero only at the centre, where its input space equals prev's output space
    rng = np.random.default_rng(12)
    c_mid, c_out = 5, 8
    u = orthonormal(rng, c_mid, c_mid)
    w_prev = (u * np.linspace(5, 1, c_mid)) @ orthonormal(rng, 27, c_mid).T
    kernel = np.zeros((c_out, c_mid, 3, 3))
    kernel[:, :, 1, 1] = (orthonormal(rng, c_out, c_mid) * np.linspace(9, 4, c_mid)) @ u.T
    got = metrics.conv_centre_alignment(t(w_prev), t(kernel))
    np.testing.assert_allclose(got.numpy(), np.ones(c_mid), atol=1e-9)
    # the same weights one position off-centre: the centre slice is empty
    shifted = np.roll(kernel, 1, axis=3)
    np.testing.assert_allclose(metrics.conv_centre_alignment(t(w_prev), t(shifted)).numpy(), 0.0, atol=1e-12)
    with pytest.raises(ValueError):
        metrics.conv_centre_alignment(t(w_prev), t(np.zeros((c_out, c_mid + 1, 3, 3))))


def test_kernel_centre_renormalize():
    rng = np.random.default_rng(13)
    v = orthonormal(rng, 2 * 9, 4)
    raw = metrics.kernel_centre(t(v), 2, (3, 3)).numpy()
    np.testing.assert_allclose(raw, v.reshape(2, 3, 3, 4)[:, 1, 1, :], atol=0)
    unit = metrics.kernel_centre(t(v), 2, (3, 3), renormalize=True).numpy()
    np.testing.assert_allclose(np.linalg.norm(unit, axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=0), atol=1e-12)
