"""Numerical corner cases, in float64 and float32: exact zone axes, a beam exactly on the
Ewald sphere, systematically absent reflections and vanishing structure factors, very thin
and very thick crystals, one beam and several hundred: intensities and their gradients
with respect to every structural parameter and the thickness stay finite."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blochnet.examples import example_path
from blochnet.experiment.pattern import simulate_pattern
from blochnet.io.cif import read_structure
from blochnet.lattice import direct_matrix, reciprocal_matrix
from blochnet.physics.crystal_model import CrystalModel, FreeParameters
from blochnet.units import energy_to_wavelength

DTYPES = [torch.float64, torch.float32]


def _crystal(name: str, uiso: float | None = None):
    crystal = read_structure(example_path(name))
    for atom in crystal.atoms:
        if uiso is not None:
            atom.uij, atom.uiso = None, uiso
        elif name == "silicon":
            atom.uiso = 0.005
    return crystal


def _pattern_and_gradients(crystal, zone, thickness, dtype, **options):
    """The pattern and the gradients of Σ w·I over (free xyz, free ADPs, occupancy, t)."""
    model = CrystalModel(crystal, voltage=200e3, dtype=dtype)
    start = model.free_parameters()
    leaves = [x.detach().clone().requires_grad_() for x in (start.xyz, start.adp, start.occupancy)]
    t = torch.as_tensor(thickness, dtype=dtype).requires_grad_()
    atoms = model.atoms_from_free(FreeParameters(*leaves))
    pattern = simulate_pattern(crystal, zone, t, atoms=atoms, dtype=dtype, **options)
    intensities = pattern.intensities
    weights = torch.linspace(0.5, 1.5, intensities.shape[-1], dtype=intensities.dtype)
    (intensities * weights).sum().backward()
    return pattern, [*leaves, t]


def _assert_finite(pattern, leaves) -> None:
    assert torch.all(torch.isfinite(pattern.intensities))
    assert torch.all(pattern.intensities >= -1e-6)
    for leaf in leaves:
        assert leaf.grad is not None and torch.all(torch.isfinite(leaf.grad))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, zone", [("silicon", (1, 1, 0)), ("silicon", (1, 1, 1)),
                                        ("quartz", (0, 0, 1)), ("quartz", (1, 0, 0))])  # fmt: skip
def test_exact_zone_axes_give_finite_intensities_and_gradients(name, zone, dtype):
    pattern, leaves = _pattern_and_gradients(
        _crystal(name), zone, [50.0, 400.0, 1500.0], dtype, g_max=1.6, sg_max=0.04
    )
    _assert_finite(pattern, leaves)


def _zone_with_beam_on_the_ewald_sphere(crystal, hkl) -> np.ndarray:
    """A direct-lattice direction [uvw] for which reflection ``hkl`` has s_g ≈ 0."""
    g = reciprocal_matrix(crystal.cell) @ np.asarray(hkl, dtype=float)
    k = 1 / energy_to_wavelength(200e3)
    sin_theta = np.linalg.norm(g) / (2 * k)
    unit_g = g / np.linalg.norm(g)
    perpendicular = np.cross(unit_g, [0.1, 0.2, 1.0])
    perpendicular /= np.linalg.norm(perpendicular)
    beam = np.sqrt(1 - sin_theta**2) * perpendicular - sin_theta * unit_g
    return np.linalg.solve(direct_matrix(crystal.cell), beam)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_beam_exactly_on_the_ewald_sphere_keeps_intensities_and_gradients_finite(dtype):
    crystal = _crystal("quartz")
    zone = _zone_with_beam_on_the_ewald_sphere(crystal, (1, 0, 1))
    pattern, leaves = _pattern_and_gradients(
        crystal, zone, [300.0, 900.0], dtype, g_max=1.5, sg_max=0.03
    )
    hkl = pattern.hkl.tolist() if hasattr(pattern.hkl, "tolist") else list(pattern.hkl)
    s_g = np.asarray(pattern.excitation_error, dtype=float)[hkl.index([1, 0, 1])]
    assert abs(s_g) < 2e-4  # on the sphere up to the mean inner potential's refraction
    _assert_finite(pattern, leaves)


@pytest.mark.parametrize("dtype", DTYPES)
def test_forbidden_and_absent_reflections_in_the_beam_set_keep_everything_finite(dtype):
    """Silicon [110] holds 002 and 222 (F = 0 by the diamond glide) and quartz [100] the
    screw-axis absences 00l, l ≠ 3n."""
    for name, zone, absent in (
        ("silicon", (1, -1, 0), (0, 0, 2)),
        ("quartz", (1, 0, 0), (0, 0, 1)),
    ):
        pattern, leaves = _pattern_and_gradients(
            _crystal(name), zone, [200.0, 800.0], dtype, g_max=1.6, sg_max=0.04
        )
        assert list(absent) in np.asarray(pattern.hkl).tolist()
        _assert_finite(pattern, leaves)


@pytest.mark.parametrize("dtype", DTYPES)
def test_vanishing_structure_factors_keep_gradients_finite(dtype):
    """Every U_g ≈ 0 (huge ADPs): the structure matrix is diagonal and degenerate at the
    zone axis, where the divided differences of the backward pass are 0/0."""
    crystal = _crystal("silicon", uiso=20.0)
    pattern, leaves = _pattern_and_gradients(
        crystal, (0, 0, 1), [100.0, 1000.0], dtype, g_max=1.2, sg_max=0.05
    )
    _assert_finite(pattern, leaves)
    intensities = pattern.intensities.detach().double()
    assert torch.allclose(intensities[:, 0], torch.ones_like(intensities[:, 0]), atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("thickness", [[1e-3, 0.5], [2e4, 5e4]])
def test_very_thin_and_very_thick_crystals_keep_everything_finite(thickness, dtype):
    pattern, leaves = _pattern_and_gradients(
        _crystal("quartz"), (1, 1, 0.3), thickness, dtype, g_max=1.4, sg_max=0.03
    )
    _assert_finite(pattern, leaves)
    total = pattern.intensities.detach().double().sum(-1)
    assert torch.allclose(
        total, torch.ones_like(total), atol=1e-3 if dtype == torch.float32 else 1e-8
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "g_max, sg_max, n_min, n_max", [(0.05, 0.01, 1, 1), (2.6, 0.12, 400, 2000)]
)
def test_one_beam_and_several_hundred_beams_keep_everything_finite(
    g_max, sg_max, n_min, n_max, dtype
):
    pattern, leaves = _pattern_and_gradients(
        _crystal("quartz"), (0.3, -0.2, 1.0), [400.0], dtype, g_max=g_max, sg_max=sg_max
    )
    assert n_min <= pattern.intensities.shape[-1] <= n_max
    _assert_finite(pattern, leaves)
