"""Hydrogen atoms placed geometrically: bond lengths, tetrahedral angles, staggering."""

import numpy as np
import pytest
from typer.testing import CliRunner

from blochnet.cli.main import app
from blochnet.crystal import Atom, Cell, Crystal, SymOp
from blochnet.errors import ConfigurationError
from blochnet.io.cif import read_structure
from blochnet.io.cif_write import write_structure
from blochnet.lattice import direct_matrix
from blochnet.refinement.hydrogens import TETRAHEDRAL, place_hydrogens


def _propane():
    """C1–C2–C3 with C–C 1.54 Å and the angle 112° in a 12 Å cubic P1 cell."""
    cell = Cell(12.0, 12.0, 12.0, 90, 90, 90)
    half = np.radians(56.0)
    c2 = np.array([6.0, 6.0, 6.0])
    c1 = c2 + 1.54 * np.array([-np.sin(half), -np.cos(half), 0])
    c3 = c2 + 1.54 * np.array([np.sin(half), -np.cos(half), 0])
    atoms = [
        Atom(label, "C", xyz / 12.0, uiso=0.02)
        for label, xyz in (("C1", c1), ("C2", c2), ("C3", c3))
    ]
    return Crystal(cell, "P 1", [SymOp(np.eye(3, dtype=int), np.zeros(3), "x,y,z")], atoms)


def _angle(a, b, c):
    u, v = a - b, c - b
    return np.degrees(np.arccos(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v)))


def _torsion(a, b, c, d):
    b1, b2, b3 = b - a, c - b, d - c
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    x = np.dot(n1, n2)
    y = np.dot(np.cross(n1, n2), b2 / np.linalg.norm(b2))
    return np.degrees(np.arctan2(y, x))


def test_methyl_hydrogens_are_tetrahedral_at_1_09_angstrom_and_staggered():
    crystal = place_hydrogens(_propane(), {"C1": "XH3", "C2": "XH2"})
    m = direct_matrix(crystal.cell)
    pos = {a.label: m @ a.xyz for a in crystal.atoms}
    methyl = ["H1A", "H1B", "H1C"]
    for h in methyl:
        assert np.linalg.norm(pos[h] - pos["C1"]) == pytest.approx(1.09)
        assert _angle(pos[h], pos["C1"], pos["C2"]) == pytest.approx(TETRAHEDRAL)
        assert crystal.atom(h).uiso == pytest.approx(1.5 * 0.02)
    assert _angle(pos["H1A"], pos["C1"], pos["H1B"]) == pytest.approx(TETRAHEDRAL)
    torsions = sorted(abs(_torsion(pos[h], pos["C1"], pos["C2"], pos["C3"])) for h in methyl)
    assert torsions == pytest.approx([60, 60, 180], abs=1e-6)  # staggered against C3


def test_methylene_hydrogens_bisect_the_carbon_angle_perpendicular_to_its_plane():
    crystal = place_hydrogens(_propane(), {"C2": "XH2"})
    m = direct_matrix(crystal.cell)
    pos = {a.label: m @ a.xyz for a in crystal.atoms}
    assert _angle(pos["H2A"], pos["C2"], pos["H2B"]) == pytest.approx(TETRAHEDRAL)
    assert _angle(pos["H2A"], pos["C2"], pos["C1"]) == pytest.approx(
        _angle(pos["H2A"], pos["C2"], pos["C3"])
    )
    assert crystal.atom("H2A").uiso == pytest.approx(1.2 * 0.02)


def test_a_group_its_carrier_cannot_hold_is_refused_by_name():
    with pytest.raises(ConfigurationError, match="C1: a XH2 group needs 2"):
        place_hydrogens(_propane(), {"C1": "XH2"})
    with pytest.raises(ConfigurationError, match="unknown hydrogen group 'CH9'"):
        place_hydrogens(_propane(), {"C1": "CH9"})


def test_hydrogens_command_writes_a_structure_that_reads_back_with_them(tmp_path):
    write_structure(_propane(), tmp_path / "propane.cif")
    run = CliRunner().invoke(app, [
        "hydrogens", str(tmp_path / "propane.cif"), "--group", "C1=XH3", "--group", "C3=XH3",
        "--group", "C2=XH2", "--out", str(tmp_path / "with_h.cif"),
    ])  # fmt: skip
    assert run.exit_code == 0, run.output
    crystal = read_structure(tmp_path / "with_h.cif")
    assert sum(a.element == "H" for a in crystal.atoms) == 8
