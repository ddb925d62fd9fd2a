"""Kinematical structure factors against gemmi's independent calculator."""

import gemmi
import numpy as np
import pytest
import torch
from abtem_reference import zinc_blende_cif

from blochnet.io.cif import read_structure
from blochnet.physics.beams import reciprocal_lattice_points
from blochnet.physics.crystal_model import CrystalModel
from blochnet.physics.structure_factors import structure_factors
from conftest import structure_path


def _gemmi_structure_factors(path, model, hkl):
    """gemmi's F(hkl) with the ITC 4.3.2.2 table, for the same (symmetry-projected) sites.

    gemmi sums every operator for each site, so it wants crystallographic occupancies
    (chemical occupancy divided by the site-symmetry order).
    """
    small = gemmi.read_small_structure(str(path))
    xyz = model.atoms_from_free(model.free_parameters()).xyz.numpy()
    for site, position in zip(small.sites, xyz, strict=True):
        site.fract = gemmi.Fractional(*position)
    small.change_occupancies_to_crystallographic()
    calculator = gemmi.StructureFactorCalculatorE(small.cell)
    return np.array(
        [calculator.calculate_sf_from_small_structure(small, [*map(int, h)]) for h in hkl]
    )


def _ours_with_gemmi_form_factors(model, hkl):
    """Our structure factors with gemmi's own (float32-stored) c4322 coefficients."""
    hkl_t = torch.as_tensor(hkl)
    g = model.g_vectors(hkl_t)
    stol2 = ((torch.linalg.vector_norm(g, dim=-1) / 2) ** 2).numpy()
    f = torch.as_tensor(
        np.array(
            [[gemmi.Element(e).c4322.calculate_sf(float(s)) for s in stol2] for e in model.elements]
        )
    )
    site_element = [
        model.elements.index(model.crystal.atoms[i].element)
        for i in model.expansion.atom_index.tolist()
    ]
    atoms = model.atoms_from_free(model.free_parameters())
    return structure_factors(
        hkl_t,
        g,
        model.expansion.positions(atoms.xyz),
        model.expansion.u_cartesian(atoms.uij),
        atoms.occupancy[model.expansion.atom_index],
        f[site_element],
    ).numpy()


@pytest.mark.parametrize("name", ["quartz", "cspbbr3", "paracetamol"])
def test_structure_factors_match_gemmi(name):
    path = structure_path(name)
    model = CrystalModel(read_structure(path), voltage=200e3, table="peng")
    hkl = reciprocal_lattice_points(model.crystal.cell, 1.6)[1:]
    reference = _gemmi_structure_factors(path, model, hkl)
    significant = np.abs(reference) > 1e-3 * np.abs(reference).max()
    assert significant.sum() > 500

    same_factors = _ours_with_gemmi_form_factors(model, hkl)
    relative = np.abs(same_factors - reference)[significant] / np.abs(reference)[significant]
    assert relative.max() < 1e-6

    # our shipped ITC 4.3.2.2 table (published 4-decimal coefficients) against gemmi's copy
    table = model.structure_factors(
        torch.as_tensor(hkl), model.atoms_from_free(model.free_parameters())
    ).numpy()
    assert np.abs(table - reference).max() < 1e-6 * np.abs(reference).max()


def test_friedel_pairs_are_complex_conjugates():
    model = CrystalModel(read_structure(structure_path("quartz")), voltage=200e3)
    hkl = torch.as_tensor(reciprocal_lattice_points(model.crystal.cell, 1.5))
    f_plus = model.structure_factors(hkl, model.atom_tensors())
    f_minus = model.structure_factors(-hkl, model.atom_tensors())
    assert torch.allclose(f_plus, f_minus.conj(), atol=1e-12)


def test_centrosymmetric_crystal_has_real_structure_factors():
    model = CrystalModel(read_structure(structure_path("paracetamol")), voltage=200e3)
    assert model.centrosymmetric_at_origin
    hkl = torch.as_tensor(reciprocal_lattice_points(model.crystal.cell, 1.0))
    f = model.structure_factors(hkl, model.atom_tensors())
    assert f.imag.abs().max() < 1e-10 * f.abs().max()


def test_potential_coefficients_scale_with_the_lorentz_factor_over_pi_volume():
    crystal = read_structure(structure_path("quartz"))
    model = CrystalModel(crystal, voltage=200e3)
    hkl = torch.as_tensor([[1, 0, 0], [1, 0, 1]])
    ratio = model.potential(hkl, model.atom_tensors()) / model.structure_factors(
        -hkl, model.atom_tensors()
    )
    expected = 1.3913902 / (np.pi * crystal.cell.volume)
    assert np.allclose(ratio.numpy(), expected, rtol=1e-7)


def test_fourier_synthesis_of_the_potential_peaks_on_the_atoms_not_their_inverses(tmp_path):
    """U(r) = Σ_g U_g exp(+2πi g·r) must put the S atoms of zinc blende at (¼ ¼ ¼), not at
    the empty tetrahedral holes (¾ ¾ ¾) of the inverted structure: the sign that decides
    polarity and hand in every dynamical calculation."""
    path = tmp_path / "zns.cif"
    path.write_text(zinc_blende_cif(u_iso=0.01))
    model = CrystalModel(read_structure(path), voltage=200e3)
    hkl = torch.as_tensor(reciprocal_lattice_points(model.crystal.cell, 3.0))
    u = model.potential(hkl, model.atom_tensors(), real=False)

    def synthesis(x):
        phase = 2 * np.pi * (hkl.to(torch.float64) @ torch.tensor(x, dtype=torch.float64))
        return float((u * torch.exp(1j * phase)).sum().real)

    zinc, sulphur, hole = synthesis([0, 0, 0]), synthesis([0.25] * 3), synthesis([0.75] * 3)
    assert zinc > sulphur > 0
    assert hole < 0.05 * sulphur
