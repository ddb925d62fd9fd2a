"""Site-symmetry constraints and the expansion of the asymmetric unit to the unit cell."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest
import torch

from blochnet.crystal import Atom, Cell, Crystal, SymOp
from blochnet.io.cif import read_structure
from blochnet.lattice import direct_matrix, uij_to_cartesian
from blochnet.physics.symmetry import UnitCellExpansion
from blochnet.sitesym import constraint_matrices, site_constraints
from conftest import structure_path

SHARED = ("quartz", "cspbbr3", "paracetamol", "glycine")


def _shared(name: str) -> Crystal:
    return read_structure(structure_path(name))


def _crystal(symbol: str, cell: tuple, atoms: list[tuple[str, tuple]]) -> Crystal:
    """A crystal built from gemmi's operators of a space-group symbol."""
    ops = []
    for op in gemmi.find_spacegroup_by_name(symbol).operations():
        rot = np.array(op.rot) // op.DEN
        ops.append(SymOp(rot, (np.array(op.tran) % op.DEN) / op.DEN, op.triplet()))
    atom_list = [
        Atom(label, "".join(filter(str.isalpha, label)), np.array(xyz, dtype=float), uiso=0.01)
        for label, xyz in atoms
    ]
    return Crystal(Cell(*cell), symbol, ops, atom_list)


def _diamond() -> Crystal:
    return _crystal("F d -3 m :1", (5.4309, 5.4309, 5.4309, 90, 90, 90), [("Si1", (0, 0, 0))])


def _trigonal(xyz=(1 / 3, 2 / 3, 0.2)) -> Crystal:
    return _crystal(
        "P -3 m 1", (4.9, 4.9, 5.4, 90, 90, 120), [("Si1", xyz), ("O1", (0.2, 0.1, 0.3))]
    )


def _crystals() -> list[Crystal]:
    return [_diamond(), _trigonal(), *(_shared(name) for name in SHARED)]


def _periodic_distances(cell: Cell, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(len(x), len(y)) shortest distances [Å] between fractional positions."""
    delta = x[:, None, :] - y[None, :, :]
    delta -= np.round(delta)
    shifts = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])
    cartesian = (delta[:, :, None, :] + shifts) @ direct_matrix(cell).T
    return np.linalg.norm(cartesian, axis=-1).min(axis=-1)


# --- constraints ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "label", "n_xyz", "n_u", "multiplicity", "symmetry"),
    [
        ("quartz", "Si1", 1, 4, 3, "2"),
        ("quartz", "O1", 3, 6, 6, "1"),
        ("cspbbr3", "Pb1", 0, 6, 4, "-1"),
        ("cspbbr3", "Cs1", 2, 4, 4, "m"),
        ("cspbbr3", "Br2", 2, 4, 4, "m"),
        ("cspbbr3", "Br1", 3, 6, 8, "1"),
    ],
)
def test_special_positions_have_the_right_number_of_free_parameters(
    name, label, n_xyz, n_u, multiplicity, symmetry
):
    crystal = _shared(name)
    index = [a.label for a in crystal.atoms].index(label)
    constraint = site_constraints(crystal)[index]
    assert constraint.xyz_basis.shape == (3, n_xyz)
    assert constraint.u_basis.shape == (6, n_u)
    assert constraint.multiplicity == multiplicity
    assert constraint.order * constraint.multiplicity == len(crystal.operators)
    assert constraint.symmetry == symmetry
    assert len(constraint.image_ops) == multiplicity
    assert constraint.image_ops[0] == 0


def test_quartz_si_has_one_free_coordinate_and_adps_u11_2u12_u13_2u23():
    crystal = _shared("quartz")
    si = site_constraints(crystal)[0]
    assert si.xyz_names == ["y"]
    np.testing.assert_allclose(si.xyz0, [1.0, 0.471256, 5 / 6], atol=1e-12)
    for u in si.u_basis.T:
        assert u[0] == pytest.approx(2 * u[3])
        assert u[4] == pytest.approx(2 * u[5])
    uij = crystal.atoms[0].uij
    np.testing.assert_allclose(si.u_basis @ si.free_u(uij), uij, atol=1e-6)


def test_atom_on_a_threefold_axis_has_u11_equal_u22_equal_2u12_and_no_u13_u23():
    si = site_constraints(_trigonal())[0]
    assert si.symmetry == "3m"
    assert si.xyz_names == ["z"]
    assert si.u_names == ["U11", "U33"]
    for u in si.u_basis.T:
        assert u[0] == pytest.approx(u[1])
        assert u[0] == pytest.approx(2 * u[3])
        assert u[4] == pytest.approx(0) and u[5] == pytest.approx(0)


def test_diamond_silicon_is_fixed_with_an_isotropic_looking_adp():
    si = site_constraints(_diamond())[0]
    assert si.symmetry == "-43m"
    assert (si.order, si.multiplicity) == (24, 8)
    assert si.xyz_basis.shape == (3, 0)
    np.testing.assert_allclose(si.u_basis[:, 0], [1, 1, 1, 0, 0, 0])


def test_rounded_special_coordinates_are_recognised_and_projected():
    si = site_constraints(_trigonal((0.3333, 0.6667, 0.2)))[0]
    assert si.order == 6
    np.testing.assert_allclose(si.xyz0, [1 / 3, 2 / 3, 0.2], atol=1e-12)


@pytest.mark.parametrize("crystal", _crystals(), ids=lambda c: c.spacegroup)
def test_constrained_parameters_reproduce_the_given_position(crystal):
    for atom, constraint in zip(crystal.atoms, site_constraints(crystal), strict=True):
        p0 = constraint.free_xyz(atom.xyz)
        xyz = constraint.xyz0 + constraint.xyz_basis @ p0
        np.testing.assert_allclose(xyz, atom.xyz, atol=1e-4)


@pytest.mark.parametrize("crystal", _crystals(), ids=lambda c: c.spacegroup)
def test_u_basis_is_invariant_under_the_site_operators_in_cartesian_coordinates(crystal):
    rng = np.random.default_rng(1)
    a = direct_matrix(crystal.cell)
    for constraint in site_constraints(crystal):
        uij = constraint.u_basis @ rng.normal(size=constraint.u_basis.shape[1])
        u = uij_to_cartesian(crystal.cell, uij)
        for g in constraint.site_ops:
            rc = a @ crystal.operators[g].rotation @ np.linalg.inv(a)
            np.testing.assert_allclose(rc @ u @ rc.T, u, atol=1e-12)


def test_constraint_matrices_stack_all_atoms_with_named_parameters():
    crystal = _shared("quartz")
    x0, p_all, q_all, names = constraint_matrices(site_constraints(crystal))
    assert x0.shape == (6,)
    assert p_all.shape == (6, 4)
    assert q_all.shape == (12, 10)
    assert names[:4] == [("Si1", "y"), ("O1", "x"), ("O1", "y"), ("O1", "z")]
    assert names[4:8] == [("Si1", "U11"), ("Si1", "U22"), ("Si1", "U33"), ("Si1", "U13")]
    xyz = np.concatenate([a.xyz for a in crystal.atoms])
    p = np.linalg.lstsq(p_all, xyz - x0, rcond=None)[0]
    np.testing.assert_allclose(x0 + p_all @ p, xyz, atol=1e-6)


# --- expansion -----------------------------------------------------------------------


def _asym(crystal: Crystal, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    xyz = torch.tensor(np.array([a.xyz for a in crystal.atoms]), dtype=dtype)
    uij = []
    for atom in crystal.atoms:
        if atom.uij is not None:
            uij.append(atom.uij)
        else:  # isotropic: U* = Uiso G*, so U_cif_ij = Uiso cos(angle between a*_i, a*_j)
            b = np.linalg.inv(direct_matrix(crystal.cell)).T
            cosines = (b.T @ b) / np.outer(*(2 * [np.linalg.norm(b, axis=0)]))
            uij.append(atom.uiso * cosines[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]])
    return xyz, torch.tensor(np.array(uij), dtype=dtype)


@pytest.mark.parametrize(
    ("name", "n_sites"),
    [("quartz", 9), ("cspbbr3", 20), ("paracetamol", 88), ("glycine", 40), ("diamond", 8)],
)
def test_expansion_gives_every_atom_of_the_unit_cell_once(name, n_sites):
    crystal = _diamond() if name == "diamond" else _shared(name)
    expansion = UnitCellExpansion.from_crystal(crystal)
    assert expansion.n_sites == n_sites
    positions = expansion.positions(_asym(crystal)[0]).numpy()
    assert np.all((positions >= -1e-9) & (positions < 1 + 1e-9))
    distances = _periodic_distances(crystal.cell, positions, positions)
    np.fill_diagonal(distances, np.inf)
    assert distances.min() > 0.5
    counts = torch.bincount(expansion.sites(), minlength=len(crystal.atoms))
    assert counts.tolist() == [c.multiplicity for c in site_constraints(crystal)]


@pytest.mark.parametrize("crystal", _crystals(), ids=lambda c: c.spacegroup)
def test_a_shift_along_the_free_coordinates_keeps_every_image_set_invariant(crystal):
    rng = np.random.default_rng(7)
    constraints = site_constraints(crystal)
    moved = [
        c.xyz0 + c.xyz_basis @ (c.free_xyz(a.xyz) + rng.normal(0, 0.01, c.xyz_basis.shape[1]))
        for a, c in zip(crystal.atoms, constraints, strict=True)
    ]
    expansion = UnitCellExpansion.from_crystal(crystal, constraints)
    positions = expansion.positions(torch.tensor(np.array(moved))).numpy()
    index = expansion.sites().numpy()
    for i in range(len(crystal.atoms)):
        images = positions[index == i]
        for op in crystal.operators:
            mapped = images @ op.rotation.T + op.translation
            distances = _periodic_distances(crystal.cell, mapped, images)
            assert np.all(distances.min(axis=1) < 1e-8)
        separations = _periodic_distances(crystal.cell, images, images)
        assert separations[~np.eye(len(images), dtype=bool)].min() > 1e-3  # still distinct


@pytest.mark.parametrize("crystal", _crystals(), ids=lambda c: c.spacegroup)
def test_u_images_are_symmetric_positive_definite(crystal):
    expansion = UnitCellExpansion.from_crystal(crystal)
    u = expansion.u_cartesian(_asym(crystal)[1])
    assert u.shape == (expansion.n_sites, 3, 3)
    torch.testing.assert_close(u, u.transpose(-1, -2))
    assert torch.linalg.eigvalsh(u).min() > 0
    # Ueq is kept where the operator is an isometry of the cell (not for glycine, whose
    # cell was edited away from monoclinic metric while keeping P21/n)
    rc = expansion.cartesian_rotations
    isometry = (rc @ rc.transpose(-1, -2) - torch.eye(3, dtype=rc.dtype)).abs().amax(
        (-1, -2)
    ) < 1e-9
    traces = torch.diagonal(u, dim1=-2, dim2=-1).sum(-1) / 3
    ueq = torch.tensor([crystal.atoms[i].uiso for i in expansion.sites()], dtype=u.dtype)
    torch.testing.assert_close(traces[isometry], ueq[isometry])
    assert isometry[expansion.operator_index == 0].all()


def test_sites_carry_the_chemical_occupancy_of_their_atom():
    crystal = _trigonal()
    crystal.atoms[1].occupancy = 0.25
    expansion = UnitCellExpansion.from_crystal(crystal)
    expected = [crystal.atoms[i].occupancy for i in expansion.sites()]
    assert expansion.occupancy.tolist() == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_expansion_follows_the_input_dtype(dtype):
    crystal = _trigonal()
    expansion = UnitCellExpansion.from_crystal(crystal, dtype=dtype)
    xyz, uij = _asym(crystal, dtype)
    assert expansion.positions(xyz).dtype == dtype
    assert expansion.u_cartesian(uij).dtype == dtype
    reference = UnitCellExpansion.from_crystal(crystal).positions(_asym(crystal)[0])
    torch.testing.assert_close(expansion.positions(xyz).double(), reference, atol=1e-6, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_expansion_runs_on_cuda():
    crystal = _trigonal()
    expansion = UnitCellExpansion.from_crystal(crystal, device="cuda")
    xyz, uij = (t.cuda() for t in _asym(crystal))
    assert expansion.positions(xyz).is_cuda
    assert expansion.u_cartesian(uij).is_cuda


@pytest.mark.parametrize("crystal", _crystals()[1:3], ids=lambda c: c.spacegroup)
def test_positions_and_u_images_pass_gradcheck(crystal):
    expansion = UnitCellExpansion.from_crystal(crystal)
    xyz, uij = _asym(crystal)
    assert torch.autograd.gradcheck(expansion.positions, (xyz.requires_grad_(),))
    assert torch.autograd.gradcheck(expansion.u_cartesian, (uij.requires_grad_(),))
