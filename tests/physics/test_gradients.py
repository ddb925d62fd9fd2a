"""Gradients of intensities with respect to every structural parameter and the thickness."""

import numpy as np
import pytest
import torch

from blochnet.examples import example_path
from blochnet.experiment.pattern import simulate_pattern
from blochnet.io.cif import read_structure
from blochnet.physics.crystal_model import CrystalModel, FreeParameters
from blochnet.physics.structure_matrix import BeamBatch, structure_matrix


def _intensity_function(crystal, zone, *, g_max, sg_max, solver="eigh", absorption=0.0):
    """Intensities as a function of (free xyz, free ADPs, occupancies, thicknesses)."""
    model = CrystalModel(crystal, voltage=200e3)

    def intensities(xyz, adp, occupancy, thickness):
        atoms = model.atoms_from_free(FreeParameters(xyz, adp, occupancy))
        pattern = simulate_pattern(
            crystal,
            zone,
            thickness,
            g_max=g_max,
            sg_max=sg_max,
            atoms=atoms,
            solver=solver,
            absorption=absorption,
        )
        return pattern.intensities

    return intensities, model.free_parameters(), model


def _leaves(start, thickness):
    return tuple(
        x.detach().clone().requires_grad_()
        for x in (
            start.xyz,
            start.adp,
            start.occupancy,
            torch.as_tensor(thickness, dtype=torch.float64),
        )
    )


GRADCHECK_BEAMS = dict(g_max=1.3, sg_max=0.03)


@pytest.mark.parametrize("zone", [(1, 1, 0), (0, 0, 1), (1, 1, 0.2)])
def test_silicon_gradients_pass_gradcheck_at_and_near_zone_axes(zone):
    crystal = read_structure(example_path("silicon"))
    crystal.atoms[0].uiso = 0.005
    f, start, _ = _intensity_function(crystal, zone, **GRADCHECK_BEAMS)
    leaves = _leaves(start, [150.0, 420.0])
    assert leaves[0].numel() == 0  # diamond Si has no free coordinate
    assert torch.autograd.gradcheck(f, leaves, fast_mode=True)


def _eigenvalue_gaps(zone):
    crystal = read_structure(example_path("silicon"))
    pattern = simulate_pattern(crystal, zone, [0.0], **GRADCHECK_BEAMS)
    model = CrystalModel(crystal, voltage=200e3)
    batch = BeamBatch.from_lists([pattern.hkl])
    u = model.potential(batch.differences, model.atom_tensors())
    a = structure_matrix(batch, u, torch.as_tensor(pattern.excitation_error)[None], pattern.k)
    return torch.diff(torch.linalg.eigvalsh(a)[0]), torch.pi / pattern.k


def test_silicon_zone_axes_in_the_gradcheck_have_degenerate_eigenvalues():
    """The cases above really exercise (near-)degenerate eigenvalues: exact ones at [001]
    (4mm, two-dimensional irreducible representations) and ones close enough at [110] for
    the divided differences to use their series (|c t Δλ| < 0.3 at 420 Å)."""
    gaps_001, _ = _eigenvalue_gaps((0, 0, 1))
    assert torch.sum(gaps_001 < 1e-12) >= 10
    gaps_110, c = _eigenvalue_gaps((1, 1, 0))
    assert torch.sum(gaps_110 * c * 420 < 0.3) >= 2


@pytest.mark.parametrize("zone", [(0, 0, 1), (0.3, -0.2, 1.0)])
def test_quartz_gradients_pass_gradcheck_for_coordinates_anisotropic_adps_and_thickness(zone):
    crystal = read_structure(example_path("quartz"))
    f, start, model = _intensity_function(crystal, zone, g_max=1.2, sg_max=0.03)
    leaves = _leaves(start, [200.0, 600.0])
    assert leaves[0].numel() == 4  # Si: 1 free coordinate, O: 3
    assert leaves[1].numel() == 10  # Si on a 2-fold axis: 4 Uij, O: 6
    assert torch.autograd.gradcheck(f, leaves, fast_mode=True)


def test_quartz_gradients_with_exact_absorption_pass_gradcheck():
    crystal = read_structure(example_path("quartz"))
    f, start, _ = _intensity_function(
        crystal, (0.3, -0.2, 1.0), g_max=1.0, sg_max=0.03, solver="eig", absorption=0.05
    )
    assert torch.autograd.gradcheck(f, _leaves(start, [300.0]), fast_mode=True)


def test_isotropic_gradients_pass_gradcheck_for_uiso_and_occupancy():
    crystal = read_structure(example_path("quartz"))
    for atom in crystal.atoms:
        atom.uij = None
        atom.uiso = 0.01
    f, start, model = _intensity_function(crystal, (0.1, 0.4, 1.0), g_max=1.2, sg_max=0.03)
    assert [name for _, name in model.parameter_names[4:]] == ["Uiso", "Uiso"]
    assert torch.autograd.gradcheck(f, _leaves(start, [350.0]), fast_mode=True)


def test_no_gradient_is_nan_at_zero_thickness_and_exact_zone_axis():
    crystal = read_structure(example_path("silicon"))
    f, start, _ = _intensity_function(crystal, (1, 1, 1), g_max=2.0, sg_max=0.05)
    leaves = _leaves(start, [0.0, 1e-3, 800.0])
    f(*leaves).sum().backward()
    for leaf in leaves:
        assert torch.all(torch.isfinite(leaf.grad))
    assert np.any(leaves[1].grad.numpy() != 0)
