"""The Bloch solver on matrices whose answer is known in closed form."""

import math

import numpy as np
import pytest
import torch

from blochnet.physics.bloch import SOLVERS, bloch_intensities
from blochnet.physics.structure_matrix import BeamBatch, group_by_size, structure_matrix

K = 39.87  # |K| at 200 kV [Å⁻¹]
C = math.pi / K


def two_beam_matrix(u_g: complex, s_g: float) -> torch.Tensor:
    a = torch.zeros(1, 2, 2, dtype=torch.complex128)
    a[0, 0, 1] = u_g
    a[0, 1, 0] = np.conj(u_g)
    a[0, 1, 1] = 2 * K * s_g
    return a


def random_hermitian(n_orient: int, n: int, *, complex_: bool = True, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.complex128 if complex_ else torch.float64
    a = torch.randn(n_orient, n, n, dtype=dtype, generator=gen) * 0.05
    return a + a.mH


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("s_g", [0.0, 0.002, -0.01])
def test_two_beam_intensity_matches_pendelloesung(solver, s_g):
    u_g = 0.03 * np.exp(0.7j)  # |U_g| [Å⁻²]
    t = torch.linspace(0.0, 1500.0, 31, dtype=torch.float64)
    intensity = bloch_intensities(two_beam_matrix(u_g, s_g), t, C, solver=solver)[0]
    xi = K / abs(u_g)
    w = math.sqrt(s_g**2 + 1 / xi**2)
    expected = torch.sin(math.pi * t * w) ** 2 / (xi * w) ** 2
    assert torch.allclose(intensity[:, 1], expected, atol=1e-10, rtol=0)
    assert torch.allclose(intensity[:, 0], 1 - expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_intensities_sum_to_one_without_absorption(solver):
    a = random_hermitian(3, 12)
    t = torch.tensor([10.0, 300.0, 1200.0], dtype=torch.float64)
    total = bloch_intensities(a, t, C, solver=solver).sum(-1)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-10, rtol=0)


def test_positive_absorptive_potential_removes_flux_monotonically():
    # d/dt Σ|ψ|² = −2c ψᴴA'ψ < 0 for a positive definite absorptive matrix
    a = random_hermitian(2, 10)
    b = random_hermitian(2, 10, seed=9)
    a_abs = 0.05 * b @ b.mH + 1e-4 * torch.eye(10)
    t = torch.linspace(0, 1000, 11, dtype=torch.float64)
    total = bloch_intensities(a, t, C, absorptive=a_abs, solver="eig").sum(-1)
    assert torch.all(total[:, 1:] < total[:, :-1])
    assert torch.all(total <= 1 + 1e-12)


def test_eig_and_expm_agree_with_absorption():
    a = random_hermitian(2, 10, seed=3)
    a_abs = 0.1 * random_hermitian(2, 10, seed=4)
    t = torch.tensor([50.0, 400.0], dtype=torch.float64)
    exact = bloch_intensities(a, t, C, absorptive=a_abs, solver="expm")
    eig = bloch_intensities(a, t, C, absorptive=a_abs, solver="eig")
    assert torch.allclose(eig, exact, atol=1e-11, rtol=0)


def test_real_symmetric_and_complex_hermitian_inputs_give_the_same_intensities():
    a = random_hermitian(2, 9, complex_=False)
    t = torch.tensor([100.0, 700.0], dtype=torch.float64)
    real = bloch_intensities(a, t, C)
    cplx = bloch_intensities(a.to(torch.complex128), t, C)
    assert torch.allclose(real, cplx, atol=1e-12, rtol=0)


@pytest.mark.parametrize("complex_", [False, True])
def test_gradients_match_finite_differences_for_random_matrices(complex_):
    a = random_hermitian(2, 7, complex_=complex_, seed=1).requires_grad_()
    t = torch.tensor([20.0, 250.0, 900.0], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([C, 1.1 * C], dtype=torch.float64, requires_grad=True)

    def intensities(a, t, c):  # symmetrise so that perturbations stay Hermitian
        return bloch_intensities((a + a.mH) / 2, t, c)

    assert torch.autograd.gradcheck(intensities, (a, t, c))


def test_gradients_stay_finite_and_exact_at_degenerate_eigenvalues():
    # Three exactly degenerate eigenvalues at x = 0, split linearly by the perturbation.
    base = torch.diag(torch.tensor([0.0, 0.3, 0.3, 0.3, -0.2], dtype=torch.float64))
    coupling = torch.ones(5, 5, dtype=torch.float64) - torch.eye(5, dtype=torch.float64)
    t = torch.tensor([30.0, 500.0], dtype=torch.float64)

    def intensities(x):
        return bloch_intensities((base + x * coupling)[None], t, C)

    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(intensities, (x,))
    # and for the full matrix at the degenerate point
    m = base.clone()[None].requires_grad_()
    grad = torch.autograd.grad(bloch_intensities((m + m.mT) / 2, t, C)[..., 1:].sum(), m)[0]
    assert torch.all(torch.isfinite(grad))


@pytest.mark.parametrize("solver", ["eigh", "eig"])
def test_absorption_gradients_match_finite_differences(solver):
    a = random_hermitian(1, 6, seed=5).requires_grad_()
    a_abs = (0.002 * random_hermitian(1, 6, seed=6)).requires_grad_()
    t = torch.tensor([40.0, 300.0], dtype=torch.float64)

    def intensities(a, a_abs):
        return bloch_intensities(
            (a + a.mH) / 2, t, C, absorptive=(a_abs + a_abs.mH) / 2, solver=solver
        )

    if solver == "eig":
        assert torch.autograd.gradcheck(intensities, (a, a_abs))
    else:
        # first-order route: exact derivative of its own intensities for A' (they depend on
        # A' only through the first-order eigenvalues) ...
        fixed = a.detach()
        assert torch.autograd.gradcheck(lambda b: intensities(fixed, b), (a_abs,))
        # ... and, for A, the exact propagator's derivative at first-order eigenvalues: close
        # to the exact gradient of the exact intensities (for A' the exact intensities also
        # depend on eigenvector changes, which the first-order route leaves out)
        numeric = torch.autograd.functional.jacobian(
            lambda a, b: bloch_intensities(
                (a + a.mH) / 2, t, C, absorptive=(b + b.mH) / 2, solver="eig"
            ),
            (a, a_abs),
        )
        analytic = torch.autograd.functional.jacobian(intensities, (a, a_abs))
        assert torch.allclose(numeric[0], analytic[0], atol=2e-2 * numeric[0].abs().max())


def test_float32_follows_float64():
    a = random_hermitian(2, 20)
    t = torch.tensor([100.0, 500.0], dtype=torch.float64)
    ref = bloch_intensities(a, t, C)
    single = bloch_intensities(a.to(torch.complex64), t.float(), C)
    assert single.dtype == torch.float32
    assert torch.allclose(single.double(), ref, atol=1e-4)


def test_phases_on_an_even_thickness_grid_match_the_exponential():
    """On evenly spaced thicknesses the phases are running products of one step's phase:
    equal to exp(i c t z) to 1e-13 over a 48-sample grid up to 2500 Å (absorbing
    eigenvalues included), and uneven thicknesses take the exponential itself."""
    from blochnet.physics.propagation import phases

    gen = torch.Generator().manual_seed(1)
    z = torch.complex(torch.randn(5, 30, dtype=torch.float64, generator=gen) * 0.05,
                      torch.rand(5, 30, dtype=torch.float64, generator=gen) * 1e-3)  # fmt: skip
    grid = torch.linspace(50.0, 2500.0, 48, dtype=torch.float64)
    ct = C * torch.stack([grid, grid + 7.0, grid, grid * 0.5, grid])  # even rows
    exact = torch.exp(1j * ct[:, :, None] * z[:, None, :])
    assert (phases(ct, z) - exact).abs().max() < 1e-13
    uneven = ct.clone()
    uneven[2, 10] += 1.0
    torch.testing.assert_close(
        phases(uneven, z), torch.exp(1j * uneven[:, :, None] * z[:, None, :]), rtol=0, atol=0
    )


def test_padded_batch_matches_separate_orientations():
    rng = np.random.default_rng(0)
    beam_sets = [rng.integers(-3, 4, size=(n, 3)) for n in (5, 8, 3)]
    for b in beam_sets:
        b[0] = 0
        b[1:] = np.unique(b[1:][np.any(b[1:] != 0, axis=1)], axis=0)[: len(b) - 1]
    beam_sets = [np.unique(b, axis=0) for b in beam_sets]
    beam_sets = [b[np.argsort(np.abs(b).sum(1), kind="stable")] for b in beam_sets]
    t = torch.tensor([100.0, 400.0], dtype=torch.float64)

    def potential(diff):
        h = diff.double()
        return (
            0.02
            * torch.exp(-(h**2).sum(-1) / 8)
            * torch.cos(h @ torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64))
        )

    batch = BeamBatch.from_lists(beam_sets)
    exc = torch.linspace(-0.01, 0.01, batch.hkl.shape[1], dtype=torch.float64).expand(3, -1)
    together = bloch_intensities(
        structure_matrix(batch, potential(batch.differences), exc, K), t, C
    )
    for i, beams in enumerate(beam_sets):
        single = BeamBatch.from_lists([beams])
        alone = bloch_intensities(
            structure_matrix(
                single, potential(single.differences), exc[i : i + 1, : len(beams)], K
            ),
            t,
            C,
        )
        assert torch.allclose(together[i, :, : len(beams)], alone[0], atol=1e-12)
        assert torch.all(together[i, :, len(beams) :].abs() < 1e-20)


def test_grouping_keeps_similar_sizes_together():
    groups = group_by_size([100, 50, 104, 52, 300], tolerance=0.1)
    assert sorted(map(sorted, groups)) == [[0, 2], [1, 3], [4]]
    # a memory bound splits a group: at most max_elements padded matrix elements each
    bounded = group_by_size([100] * 5 + [104] * 3, tolerance=0.1, max_elements=3 * 104**2)
    assert sorted(map(len, bounded)) == [2, 3, 3]
    sizes = [100] * 5 + [104] * 3
    assert all(len(g) * max(sizes[i] for i in g) ** 2 <= 3 * 104**2 for g in bounded)
    assert sorted(i for g in bounded for i in g) == list(range(8))
    assert group_by_size([500], max_elements=1) == [[0]]  # one orientation at least


@pytest.mark.parametrize("complex_", [False, True])
def test_eigenvectors_kept_in_single_precision_give_the_same_intensities_and_close_gradients(
    complex_,
):
    """``kept="single"`` changes only what the backward pass starts from: the intensities
    are those of the full route bit for bit, the gradient within single precision of it
    (and not equal to it, so the option does act)."""
    a = random_hermitian(3, 12, complex_=complex_, seed=4)
    t = torch.tensor([50.0, 400.0, 1200.0], dtype=torch.float64)
    weights = torch.rand(3, 3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    results = {}
    for kept in ("full", "single"):
        x = a.clone().requires_grad_()
        intensity = bloch_intensities(x, t, C, kept=kept)
        (grad,) = torch.autograd.grad((weights * intensity).sum(), x)
        results[kept] = intensity.detach(), grad
    assert torch.equal(results["single"][0], results["full"][0])
    full, single = results["full"][1], results["single"][1]
    error = (single - full).abs().max() / full.abs().max()
    assert 0 < error < 1e-5
