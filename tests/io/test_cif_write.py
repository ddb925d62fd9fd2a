"""Writing structures as CIF: round trips through our reader and gemmi, s.u. notation."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import replace
from pathlib import Path

import gemmi
import numpy as np
import pytest
from gemmi import cif

import blochnet.io.cif_write as cif_write
from blochnet.crystal import CELL_NAMES, UIJ_NAMES, SymOp
from blochnet.io.cif import parse_number, read_structure
from blochnet.io.cif_write import format_su, write_structure
from blochnet.sitesym import site_constraints
from conftest import STRUCTURES, structure_path

SHARED = sorted(STRUCTURES)
CSPBBR3 = structure_path("cspbbr3")
QUARTZ = structure_path("quartz")
GLYCINE = structure_path("glycine")

REFINEMENT = {
    "r_obs": 0.0506,
    "r_all": 0.0712,
    "wr2": 0.1234,
    "gof": 1.234,
    "n_reflections": 7952,
    "n_parameters": 123,
    "n_obs": 958,
    "max_shift_su": 0.001,
    "wavelength": 0.0250793,
    "details": "Observed: I > 3 sigma(I).\nThickness: one per frame, 820-850 Å.\n;quirk",
}


def _read_quietly(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return read_structure(path)


def _round_trip(tmp_path: Path, name: str):
    original = _read_quietly(structure_path(name))
    path = write_structure(original, tmp_path / "out.cif")
    return original, _read_quietly(path), path


def _normalised(xyz: str) -> str:
    return gemmi.Op(xyz).wrap().triplet()


def _half_unit(su: float | None) -> float:
    """Half a unit of the last digit written for a value with s.u. ``su``."""
    if su is None:
        return 1e-6
    exponent = math.floor(math.log10(su) + 1e-9)
    leading = round(su / 10**exponent, 6)
    return 0.5 * 10 ** (exponent - (1 if leading < 2 else 0)) + 1e-12


def _assert_rounded_su(read: float | None, original: float, where: str) -> None:
    """The s.u. read back is the original rounded to 1 digit, or 2 when it starts with 1."""
    assert read is not None, f"{where}: s.u. lost"
    unit = 2 * (_half_unit(read) - 1e-12)
    digits = read / unit
    assert abs(digits - round(digits)) < 1e-6, where
    assert 2 <= round(digits) <= 19, where
    assert abs(read - original) <= unit / 2 + 1e-12, where


# --- format_su -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "su", "expected"),
    [
        (0.471256, 0.000123, "0.47126(12)"),
        (0.00957, 0.00031, "0.0096(3)"),
        (12.3456, 0.0019, "12.3456(19)"),
        (0.0123, 0.00096, "0.0123(10)"),
        (5.0, 0.0195, "5.00(2)"),
        (1.1613, 0.001, "1.1613(10)"),
        (1234.5, 25.0, "1230(30)"),
        (-1e-7, 1e-5, "0.000000(10)"),
        (0.99999, 0.00999, "1.000(10)"),  # the s.u. rounds up into the next decade
        (-0.2, 0.0999, "-0.20(10)"),
        (2.0, 1.0, "2.0(10)"),
        (-0.00004, 0.0003, "0.0000(3)"),  # no negative zero
        (12345.6, 23.0, "12350(20)"),
        (143.4248, 0.0651, "143.42(7)"),
    ],
)
def test_format_su_rounds_the_su_to_one_digit_or_two_when_it_starts_with_one(value, su, expected):
    assert format_su(value, su) == expected
    parsed_value, parsed_su = parse_number(expected)
    assert abs(parsed_value - value) <= _half_unit(parsed_su)


@pytest.mark.parametrize(
    ("value", "decimals", "expected"),
    [
        (0.25, 6, "0.250000"),
        (1 / 3, 6, "0.333333"),
        (0.009567777, 5, "0.00957"),
        (0.012306, 5, "0.012306"),
        (-0.000001, 4, "-0.000001"),
        (-1e-12, 5, "0.00000"),
    ],
)
def test_format_su_without_su_writes_a_plain_value_with_enough_decimals(value, decimals, expected):
    assert format_su(value, None, decimals) == expected
    assert format_su(value, 0.0, decimals) == expected


def test_format_su_rejects_a_negative_su():
    with pytest.raises(ValueError, match="negative"):
        format_su(1.0, -0.1)


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("structure", SHARED)
def test_written_file_reads_back_as_the_same_structure(tmp_path, structure):
    original, read, _ = _round_trip(tmp_path, structure)
    for name, a, b in zip(CELL_NAMES, original.cell.parameters, read.cell.parameters, strict=True):
        assert abs(a - b) <= _half_unit(read.cell.su.get(name)), name
        if original.cell.su.get(name):  # an s.u. of 0 ("19.0180(0)") is written as none
            _assert_rounded_su(read.cell.su.get(name), original.cell.su[name], name)
    assert read.spacegroup == original.spacegroup
    assert {_normalised(op.xyz) for op in read.operators} == {
        _normalised(op.xyz) for op in original.operators
    }
    assert [a.label for a in read.atoms] == [a.label for a in original.atoms]
    assert [a.element for a in read.atoms] == [a.element for a in original.atoms]
    for old, new, site in zip(original.atoms, read.atoms, site_constraints(original), strict=True):
        fixed = {axis for axis, row in zip("xyz", site.xyz_basis, strict=True) if not row.any()}
        fixed |= {name for name, row in zip(UIJ_NAMES, site.u_basis, strict=True) if not row.any()}
        for key in old.su.keys() - fixed:
            _assert_rounded_su(new.su.get(key), old.su[key], f"{old.label} {key}")
        assert not fixed & new.su.keys(), f"{old.label}: s.u. on a parameter fixed by symmetry"
        for axis, a, b in zip("xyz", old.xyz, new.xyz, strict=True):
            assert abs(a - b) <= _half_unit(new.su.get(axis)), f"{old.label} {axis}"
        assert new.occupancy == pytest.approx(old.occupancy, abs=1e-6)
        assert new.is_anisotropic == old.is_anisotropic
        if old.is_anisotropic:
            for name, a, b in zip(UIJ_NAMES, old.uij, new.uij, strict=True):
                assert abs(a - b) <= _half_unit(new.su.get(name)), f"{old.label} {name}"
            tolerance = max(_half_unit(new.su.get(name)) for name in UIJ_NAMES)
        else:
            tolerance = _half_unit(new.su.get("uiso"))
        assert abs(new.uiso - old.uiso) <= tolerance, f"{old.label} uiso"


@pytest.mark.parametrize("structure", SHARED)
def test_gemmi_reads_the_written_file_and_agrees(tmp_path, structure):
    _, read, path = _round_trip(tmp_path, structure)
    small = gemmi.read_small_structure(str(path))
    assert small.cell.parameters == pytest.approx(read.cell.parameters, abs=1e-9)
    expected = gemmi.find_spacegroup_by_ops(
        gemmi.GroupOps([gemmi.Op(op.xyz) for op in read.operators])
    )
    assert small.spacegroup_number == expected.number
    assert small.check_spacegroup() == ""
    assert {_normalised(xyz) for xyz in small.symops} == {
        _normalised(op.xyz) for op in read.operators
    }
    assert [site.label for site in small.sites] == [atom.label for atom in read.atoms]
    for site, atom in zip(small.sites, read.atoms, strict=True):
        assert site.element.name == atom.element
        assert site.fract.tolist() == pytest.approx(atom.xyz.tolist(), abs=1e-9)
        assert site.occ == pytest.approx(atom.occupancy, abs=1e-9)
        if atom.is_anisotropic:
            aniso = site.aniso
            uij = [aniso.u11, aniso.u22, aniso.u33, aniso.u12, aniso.u13, aniso.u23]
            assert uij == pytest.approx(atom.uij.tolist(), abs=1e-9)
            assert site.u_iso == pytest.approx(atom.uiso, abs=1e-4)  # Ueq, rounded
        else:
            assert site.u_iso == pytest.approx(atom.uiso, abs=1e-9)


def test_values_fixed_by_symmetry_are_written_as_exact_special_values_without_su(tmp_path):
    crystal = _read_quietly(CSPBBR3)
    cs1 = crystal.atom("Cs1")  # on a mirror z = 1/4: give it a rounded z with an s.u.
    cs1.xyz = np.array([cs1.xyz[0], cs1.xyz[1], 0.7501])
    cs1.su["z"] = 0.0002
    cs1.uij = cs1.uij + np.array([0, 0, 0, 0, 1e-7, 0])
    write_structure(crystal, tmp_path / "out.cif")
    block = cif.read(str(tmp_path / "out.cif")).sole_block()
    sites = block.find("_atom_site_", ["label", "fract_x", "fract_z", "site_symmetry_order"])
    rows = {row[0]: list(row) for row in sites}
    assert rows["Cs1"][1] == "0.51538(12)"
    assert rows["Cs1"][2] == "0.750000"
    assert rows["Cs1"][3] == "2"
    assert rows["Pb1"][1:] == ["0.500000", "0.500000", "2"]  # on an inversion centre
    aniso = block.find("_atom_site_aniso_", ["label", "U_13", "U_23"])
    assert [list(row) for row in aniso if row[0] == "Cs1"] == [["Cs1", "0.00000", "0.00000"]]
    quartz = write_structure(_read_quietly(QUARTZ), tmp_path / "quartz.cif")
    si1 = next(
        row
        for row in cif.read(str(quartz))
        .sole_block()
        .find("_atom_site_", ["label", "fract_x", "fract_y", "fract_z"])
        if row[0] == "Si1"
    )
    assert list(si1) == ["Si1", "1.000000", "0.471256", "0.833333"]


def test_cell_volume_carries_the_su_propagated_from_the_cell(tmp_path):
    crystal = _read_quietly(GLYCINE)
    write_structure(crystal, tmp_path / "out.cif")
    written = cif.read(str(tmp_path / "out.cif")).sole_block().find_value("_cell_volume")
    volume, su = parse_number(written)
    assert volume == pytest.approx(crystal.cell.volume, abs=0.01)
    variance = 0.0
    for name in CELL_NAMES:
        step = 1e-6
        shifted = replace(crystal.cell, **{name: getattr(crystal.cell, name) + step})
        gradient = (shifted.volume - crystal.cell.volume) / step
        variance += (gradient * crystal.cell.su.get(name, 0.0)) ** 2
    _assert_rounded_su(su, math.sqrt(variance), "_cell_volume")
    no_su = replace(crystal.cell, su={})
    write_structure(replace(crystal, cell=no_su), tmp_path / "plain.cif")
    plain = cif.read(str(tmp_path / "plain.cif")).sole_block().find_value("_cell_volume")
    assert "(" not in plain


def test_refinement_statistics_and_details_appear_in_the_file(tmp_path):
    path = write_structure(_read_quietly(QUARTZ), tmp_path / "out.cif", refinement=REFINEMENT)
    block = cif.read(str(path)).sole_block()
    assert cif.as_string(block.find_value("_diffrn_radiation_type")) == "electron"
    assert float(block.find_value("_refine_ls_R_factor_gt")) == 0.0506
    assert float(block.find_value("_refine_ls_R_factor_all")) == 0.0712
    assert float(block.find_value("_refine_ls_wR_factor_ref")) == 0.1234
    assert float(block.find_value("_refine_ls_goodness_of_fit_ref")) == 1.234
    assert int(block.find_value("_refine_ls_number_reflns")) == 7952
    assert int(block.find_value("_refine_ls_number_parameters")) == 123
    assert int(block.find_value("_reflns_number_gt")) == 958
    assert float(block.find_value("_refine_ls_shift/su_max")) == 0.001
    assert float(block.find_value("_diffrn_radiation_wavelength")) == pytest.approx(0.025079)
    details = cif.as_string(block.find_value("_refine_special_details"))
    assert "I > 3 sigma(I)" in details and "820-850 Å" in details and "quirk" in details
    assert _read_quietly(path).atoms[0].label == "Si1"


def test_a_subset_of_refinement_keys_writes_only_those(tmp_path):
    path = write_structure(_read_quietly(QUARTZ), tmp_path / "out.cif", refinement={"r_obs": 0.05})
    block = cif.read(str(path)).sole_block()
    assert block.find_value("_refine_ls_R_factor_gt") == "0.0500"
    assert block.find_value("_refine_ls_wR_factor_ref") is None
    assert block.find_value("_refine_special_details") is None
    plain = cif.read(str(write_structure(_read_quietly(QUARTZ), tmp_path / "p.cif")))
    assert plain.sole_block().find_value("_diffrn_radiation_type") is None


def test_an_unknown_refinement_key_is_rejected_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="r_free"):
        write_structure(_read_quietly(QUARTZ), tmp_path / "out.cif", refinement={"r_free": 0.1})
    assert list(tmp_path.iterdir()) == []


def test_header_names_the_block_and_the_program(tmp_path):
    path = write_structure(_read_quietly(QUARTZ), tmp_path / "out.cif", block_name="my quartz!")
    block = cif.read(str(path)).sole_block()
    assert block.name == "my_quartz_"
    method = cif.as_string(block.find_value("_audit_creation_method"))
    assert method.startswith("blochnet ") and len(method) > len("blochnet ")
    assert block.find_value("_space_group_IT_number") == "154"
    assert cif.as_string(block.find_value("_space_group_name_H-M_alt")) == "P 32 2 1"


def test_operators_without_a_triplet_are_formatted_from_rotation_and_translation(tmp_path):
    crystal = _read_quietly(QUARTZ)
    crystal.operators = [SymOp(op.rotation, op.translation) for op in crystal.operators]
    read = _read_quietly(write_structure(crystal, tmp_path / "out.cif"))
    assert {_normalised(op.xyz) for op in read.operators} == {
        "x,y,z",
        "-y,x-y,z+2/3",
        "-x+y,-x,z+1/3",
        "y,x,-z",
        "x-y,-y,-z+1/3",
        "-x,-x+y,-z+2/3",
    }


def test_writing_replaces_the_file_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "out.cif"
    target.write_text("old")
    write_structure(_read_quietly(QUARTZ), target)
    write_structure(_read_quietly(CSPBBR3), target)
    assert [p.name for p in tmp_path.iterdir()] == ["out.cif"]
    assert _read_quietly(target).spacegroup == "P b n m"


@pytest.mark.parametrize("failing", ["fsync", "format_su"])
def test_a_failure_while_writing_leaves_the_old_file_intact(tmp_path, monkeypatch, failing):
    target = tmp_path / "out.cif"
    target.write_text("old contents\n")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    if failing == "fsync":
        monkeypatch.setattr(os, "fsync", fail)
    else:
        monkeypatch.setattr(cif_write, "format_su", fail)
    with pytest.raises(OSError, match="disk full"):
        write_structure(_read_quietly(QUARTZ), target)
    assert target.read_text() == "old contents\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.cif"]
