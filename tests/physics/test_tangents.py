"""Forward-mode derivatives of the Bloch intensities against finite differences and
against the reverse-mode gradient of the same intensities."""

from __future__ import annotations

import pytest
import torch

from blochnet.physics.bloch import bloch_intensities
from blochnet.physics.tangents import weighted_intensity_tangents


def _hermitian(n_orient, n, *, real, seed, degenerate=False):
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if real else torch.complex128
    x = torch.randn(n_orient, n, n, generator=gen, dtype=dtype) * 0.01
    a = (x + x.mH) / 2
    diag = torch.randn(n_orient, n, generator=gen, dtype=torch.float64) * 0.05
    if degenerate:  # a zone-axis-like pair of equal diagonal entries and no coupling
        diag[:, 2] = diag[:, 1]
        a[:, 1, 2] = a[:, 2, 1] = 0
    return a + torch.diag_embed(diag.to(dtype))


def _weighted(a, thickness, c, weights):
    return (bloch_intensities(a, thickness, c) * weights[:, :, None]).sum(1)


@pytest.mark.parametrize("real", [True, False])
@pytest.mark.parametrize("degenerate", [False, True])
def test_tangents_match_central_differences(real, degenerate):
    a = _hermitian(3, 9, real=real, seed=1, degenerate=degenerate)
    d = _hermitian(3, 9, real=real, seed=2)
    thickness = torch.linspace(50.0, 900.0, 7, dtype=torch.float64).expand(3, -1)
    weights = torch.rand(3, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    c = torch.full((3,), 0.12, dtype=torch.float64)
    c_dot = torch.tensor([[1e-3, -2e-3, 0.0]], dtype=torch.float64)
    intensity, tangent = weighted_intensity_tangents(a, thickness, c, weights, d[None], c_dot)
    h = 1e-6
    plus = _weighted(a + h * d, thickness, c + h * c_dot[0], weights)
    minus = _weighted(a - h * d, thickness, c - h * c_dot[0], weights)
    numeric = (plus - minus) / (2 * h)
    torch.testing.assert_close(
        intensity, _weighted(a, thickness, c, weights), rtol=1e-10, atol=1e-12
    )
    assert float(numeric.abs().max()) > 1e-3  # the direction changes the intensities
    torch.testing.assert_close(tangent[0], numeric, rtol=1e-6, atol=1e-8)


def test_tangents_agree_with_the_reverse_mode_gradient():
    """⟨Ī, J d⟩ from the forward mode equals ⟨∇_A(Ī·I), d⟩ from the backward pass."""
    a = _hermitian(4, 12, real=False, seed=5)
    directions = torch.stack([_hermitian(4, 12, real=False, seed=s) for s in (6, 7)])
    thickness = torch.linspace(100.0, 1500.0, 5, dtype=torch.float64).expand(4, -1)
    weights = torch.full((4, 5), 0.2, dtype=torch.float64)
    c = torch.full((4,), 0.1, dtype=torch.float64)
    probe = torch.randn(4, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    _, tangent = weighted_intensity_tangents(a, thickness, c, weights, directions)
    leaf = a.clone().requires_grad_(True)
    (probe * _weighted(leaf, thickness, c, weights)).sum().backward()
    for k in range(2):
        reverse = torch.real((leaf.grad.conj() * directions[k]).sum())
        torch.testing.assert_close((probe * tangent[k]).sum(), reverse, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("real", [True, False])
@pytest.mark.parametrize("degenerate", [False, True])
def test_tangents_of_chosen_rows_are_those_rows_of_all(real, degenerate):
    a = _hermitian(3, 9, real=real, seed=1, degenerate=degenerate)
    d = torch.stack([_hermitian(3, 9, real=real, seed=s) for s in (2, 4)])
    thickness = torch.linspace(50.0, 900.0, 7, dtype=torch.float64).expand(3, -1)
    weights = torch.full((3, 7), 1 / 7, dtype=torch.float64)
    c = torch.full((3,), 0.12, dtype=torch.float64)
    rows = torch.tensor([[0, 3, 3, 8], [1, 2, 5, 0], [7, 6, 4, 2]])  # (repeats allowed)
    _, every = weighted_intensity_tangents(a, thickness, c, weights, d)
    _, chosen = weighted_intensity_tangents(a, thickness, c, weights, d, rows=rows)
    expected = torch.gather(every, 2, rows[None].expand(2, -1, -1))
    torch.testing.assert_close(chosen, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("real", [True, False])
@pytest.mark.parametrize("degenerate", [False, True])
def test_single_precision_products_give_the_tangents_to_single_precision(real, degenerate):
    """``single``: the direction-dependent products in complex64 / float32 (the
    eigendecomposition in float64) give the float64 tangents to ~1e-6 relative, in float64
    tensors, with c changing too and on chosen rows; the intensities stay exact."""
    a = _hermitian(5, 16, real=real, seed=11, degenerate=degenerate)
    d = torch.stack([_hermitian(5, 16, real=real, seed=s) for s in (12, 13, 14)])
    thickness = torch.linspace(80.0, 1800.0, 9, dtype=torch.float64).expand(5, -1)
    weights = torch.full((5, 9), 1 / 9, dtype=torch.float64)
    c = torch.full((5,), 0.08, dtype=torch.float64)
    c_dot = torch.tensor([[1e-3] * 5, [0.0] * 5, [-2e-3] * 5], dtype=torch.float64)
    rows = torch.tensor([[0, 3, 9], [1, 2, 15], [7, 6, 4], [0, 0, 1], [5, 8, 11]])
    exact = weighted_intensity_tangents(a, thickness, c, weights, d, c_dot, rows=rows)
    single = weighted_intensity_tangents(a, thickness, c, weights, d, c_dot, rows=rows,
                                         single=True)  # fmt: skip
    assert single[1].dtype == torch.float64
    torch.testing.assert_close(single[0], exact[0], rtol=1e-14, atol=0)
    scale = float(exact[1].abs().max())
    error = float((single[1] - exact[1]).abs().max()) / scale
    assert 1e-12 < error < 1e-5  # rounded in single precision, and only that


@pytest.mark.parametrize("real", [True, False])
@pytest.mark.parametrize("degenerate", [False, True])
def test_diagonal_tangents_match_central_differences_and_the_dense_form(real, degenerate):
    """A block of diagonal Ȧ (direction, orient, beam), as a rotation of the beam makes
    (only the excitation errors move), gives the tangents of A + h diag(Ȧ) by central
    differences and those of the same Ȧ passed as full matrices, in blocks of directions
    and on chosen rows."""
    a = _hermitian(3, 9, real=real, seed=21, degenerate=degenerate)
    gen = torch.Generator().manual_seed(22)
    d = torch.randn(2, 3, 9, generator=gen, dtype=torch.float64) * 0.05
    thickness = torch.linspace(50.0, 900.0, 7, dtype=torch.float64).expand(3, -1)
    weights = torch.full((3, 7), 1 / 7, dtype=torch.float64)
    c = torch.full((3,), 0.12, dtype=torch.float64)
    rows = torch.tensor([[0, 3, 8], [1, 2, 5], [7, 6, 4]])
    _, diagonal = weighted_intensity_tangents(
        a, thickness, c, weights, lambda: [(d[:1], None), (d[1:], None)]
    )
    dense = torch.diag_embed(d).to(a.dtype)
    _, full = weighted_intensity_tangents(a, thickness, c, weights, dense)
    torch.testing.assert_close(diagonal, full, rtol=1e-10, atol=1e-13)
    _, chosen = weighted_intensity_tangents(
        a, thickness, c, weights, lambda: [(d, None)], rows=rows
    )
    torch.testing.assert_close(
        chosen, torch.gather(full, 2, rows[None].expand(2, -1, -1)), rtol=1e-10, atol=1e-13
    )
    h = 1e-6
    for k in range(2):
        step = h * dense[k]
        numeric = (
            _weighted(a + step, thickness, c, weights) - _weighted(a - step, thickness, c, weights)
        ) / (2 * h)
        assert float(numeric.abs().max()) > 1e-4  # the direction changes the intensities
        torch.testing.assert_close(diagonal[k], numeric, rtol=1e-6, atol=1e-8)
