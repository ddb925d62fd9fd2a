"""Reading structures from CIF files: real files, symmetry variants and broken files."""

from __future__ import annotations

import warnings
from pathlib import Path

import gemmi
import numpy as np
import pytest

from blochnet.errors import InputFileError
from blochnet.io.cif import element_symbol, parse_number, read_structure
from blochnet.lattice import uij_to_cartesian
from blochnet.sitesym import site_constraints
from conftest import structure_path

QUARTZ = structure_path("quartz")
CSPBBR3 = structure_path("cspbbr3")
GLYCINE = structure_path("glycine")

SHARED = [
    ("quartz", 2, "P 32 2 1", 6, 9),
    ("glycine", 10, "P 1 21/n 1", 4, 40),
    ("cspbbr3", 4, "P b n m", 8, 20),
    ("paracetamol", 11, "P b c a", 8, 88),
]


def _write(tmp_path: Path, text: str, name: str = "test.cif") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _mutate(tmp_path: Path, source: Path, old: str, new: str) -> Path:
    text = source.read_text()
    assert old in text, f"{old!r} not in {source}"
    return _write(tmp_path, text.replace(old, new, 1), source.name)


def _read_quietly(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return read_structure(path)


SILICON = """data_si
_cell_length_a 5.4309
_cell_length_b 5.4309
_cell_length_c 5.4309
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
{symmetry}
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_U_iso_or_equiv
Si1 Si {xyz} 0.005
"""

MONOCLINIC = """data_{name}
_cell_length_a 5.1
_cell_length_b 11.9
_cell_length_c 5.5
_cell_angle_alpha 90
_cell_angle_beta 111.7
_cell_angle_gamma 90
{symmetry}
loop_
_atom_site_label
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_U_iso_or_equiv
_atom_site_occupancy
{atoms}
"""


# --- the real files ------------------------------------------------------------------


@pytest.mark.parametrize(("name", "n_atoms", "spacegroup", "n_ops", "n_sites"), SHARED)
def test_every_real_cif_loads_with_its_atoms_and_space_group(
    name, n_atoms, spacegroup, n_ops, n_sites
):
    crystal = _read_quietly(structure_path(name))
    assert len(crystal.atoms) == n_atoms
    assert crystal.spacegroup == spacegroup
    assert len(crystal.operators) == n_ops
    assert crystal.operators[0].xyz == "x,y,z"
    assert sum(c.multiplicity for c in site_constraints(crystal)) == n_sites
    for op in crystal.operators:
        assert np.all((op.translation >= 0) & (op.translation < 1))
    assert crystal.source == str(structure_path(name))


def test_standard_uncertainties_are_kept_for_cell_coordinates_and_adps():
    crystal = read_structure(CSPBBR3)
    assert crystal.cell.a == pytest.approx(8.1189)
    assert crystal.cell.su["a"] == pytest.approx(0.0004)
    assert crystal.cell.su["c"] == pytest.approx(0.001)
    assert "alpha" not in crystal.cell.su
    cs = crystal.atom("Cs1")
    assert cs.xyz[0] == pytest.approx(0.51538)
    assert cs.su["x"] == pytest.approx(0.00012)
    assert "z" not in cs.su
    assert crystal.atom("Pb1").su["U11"] == pytest.approx(0.0002)
    assert crystal.block == "cspbbr3"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.51538(12)", (0.51538, 0.00012)),
        ("130(60)", (130.0, 60.0)),
        ("-.5(1)", (-0.5, 0.1)),
        ("1.2e-3(4)", (0.0012, 0.0004)),
        ("0.75", (0.75, None)),
        ("?", None),
        (".", None),
    ],
)
def test_numbers_are_split_into_value_and_standard_uncertainty(text, expected):
    parsed = parse_number(text)
    if expected is None:
        assert parsed is None
    else:
        assert parsed[0] == pytest.approx(expected[0])
        assert parsed[1] == (None if expected[1] is None else pytest.approx(expected[1]))


def test_aniso_loop_in_nonstandard_column_order_is_read_by_tag_name():
    crystal = read_structure(QUARTZ)
    si = crystal.atom("Si1")
    np.testing.assert_allclose(
        si.uij, [0.012306, 0.011452, 0.005230, 0.006153, -0.001064, -0.000532]
    )
    ueq = np.trace(uij_to_cartesian(crystal.cell, si.uij)) / 3
    assert si.uiso == pytest.approx(ueq)
    assert si.is_anisotropic


def test_glycine_hydrogen_atoms_are_read_from_a_crlf_file():
    assert b"\r\n" in GLYCINE.read_bytes()
    crystal = read_structure(GLYCINE)
    hydrogens = [a for a in crystal.atoms if a.element == "H"]
    assert len(hydrogens) == 5
    assert crystal.atom("H1").uiso == pytest.approx(0.0196)
    assert crystal.atom("O1").xyz[0] == pytest.approx(1.1613)


def test_crlf_line_endings_and_a_byte_order_mark_read_like_the_original(tmp_path):
    original = read_structure(QUARTZ)
    text = QUARTZ.read_text().replace("\n", "\r\n")
    path = tmp_path / "bom.cif"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    copy = read_structure(path)
    assert copy.cell == original.cell
    for a, b in zip(copy.atoms, original.atoms, strict=True):
        np.testing.assert_array_equal(a.uij, b.uij)


# --- symmetry ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "xyz"), [("F d -3 m :1", "0 0 0"), ("F d -3 m :2", "0.125 0.125 0.125")]
)
def test_symbol_only_fd3m_gives_192_operators_and_8_atoms_per_cell(tmp_path, symbol, xyz):
    text = SILICON.format(symmetry=f"_space_group_name_H-M_alt '{symbol}'", xyz=xyz)
    crystal = _read_quietly(_write(tmp_path, text))
    assert len(crystal.operators) == 192
    assert crystal.spacegroup == symbol.replace(" :", ":")
    constraint = site_constraints(crystal)[0]
    assert constraint.multiplicity == 8
    assert constraint.symmetry == "-43m"


def test_hall_symbol_alone_gives_the_operators(tmp_path):
    text = MONOCLINIC.format(
        name="hall", symmetry="_space_group_name_Hall '-P 2yn'", atoms="C1 0.1 0.2 0.3 0.01 1"
    )
    crystal = _read_quietly(_write(tmp_path, text))
    assert crystal.spacegroup == "P 1 21/n 1"
    assert {op.xyz for op in crystal.operators} == {
        "x,y,z",
        "-x,-y,-z",
        "-x+1/2,y+1/2,-z+1/2",
        "x+1/2,-y+1/2,z+1/2",
    }


@pytest.mark.parametrize("symbol", ["P 32 2 1", "P3221"])
def test_hm_symbol_alone_gives_the_same_operators_as_the_loop(tmp_path, symbol):
    text = QUARTZ.read_text()
    start, end = text.index("loop_\n_symmetry_equiv_pos_site_id"), text.index("loop_\n_atom_site")
    text = text[:start] + text[end:]
    text = text.replace("'P3221'", f"'{symbol}'")
    crystal = _read_quietly(_write(tmp_path, text))
    loop = read_structure(QUARTZ)
    assert {op.xyz for op in crystal.operators} == {op.xyz for op in loop.operators}


def test_operator_loop_wins_over_a_disagreeing_symbol_with_a_warning(tmp_path):
    path = _mutate(tmp_path, QUARTZ, "'P3221'", "'P3121'")
    with pytest.warns(UserWarning, match="disagrees with the operator loop"):
        crystal = read_structure(path)
    assert "-y,x-y,z+2/3" in {op.xyz for op in crystal.operators}


def test_an_incomplete_operator_loop_is_completed_with_a_warning(tmp_path):
    loop = "loop_\n_symmetry_equiv_pos_as_xyz\n x,y,z\n -x,-y,-z\n -x+1/2,y+1/2,-z+1/2"
    text = MONOCLINIC.format(name="gen", symmetry=loop, atoms="C1 0.1 0.2 0.3 0.01 1")
    with pytest.warns(UserWarning, match="completed to 4"):
        crystal = read_structure(_write(tmp_path, text))
    assert len(crystal.operators) == 4


def test_coset_representatives_of_a_centred_group_are_completed_when_the_symbol_agrees(
    tmp_path,
):
    ops = gemmi.find_spacegroup_by_name("F d -3 m :2").operations().sym_ops
    loop = "loop_\n_symmetry_equiv_pos_as_xyz\n" + "\n".join(f"'{op.triplet()}'" for op in ops)
    symmetry = f"_symmetry_space_group_name_H-M 'F d -3 m'\n{loop}"
    path = _write(tmp_path, SILICON.format(symmetry=symmetry, xyz="0.125 0.125 0.125"))
    with pytest.warns(UserWarning, match="48 operators, completed to 192"):
        crystal = read_structure(path)
    assert crystal.spacegroup == "F d -3 m:2"
    assert site_constraints(crystal)[0].multiplicity == 8


def test_global_block_without_atoms_is_skipped_and_extra_atom_blocks_warned(tmp_path):
    symmetry = "_symmetry_space_group_name_H-M 'P 21/c'"
    global_block = "data_global\n_cell_length_a 99\n_computing_structure_refinement JANA2020\n"
    first = MONOCLINIC.format(name="phase1", symmetry=symmetry, atoms="C1 0.1 0.2 0.3 0.01 1")
    second = MONOCLINIC.format(name="phase2", symmetry=symmetry, atoms="N1 0.3 0.2 0.1 0.01 1")
    path = _write(tmp_path, global_block + first + second)
    with pytest.warns(UserWarning, match="data_phase2"):
        crystal = read_structure(path)
    assert crystal.block == "phase1"
    assert crystal.cell.a == pytest.approx(5.1)
    assert [a.label for a in crystal.atoms] == ["C1"]


def test_cell_and_symmetry_missing_from_the_atom_block_come_from_the_global_block(tmp_path):
    text = MONOCLINIC.format(
        name="global", symmetry="_space_group_name_Hall '-P 2yn'", atoms=""
    ).split("loop_")[0]
    text += "data_phase\nloop_\n_atom_site_label\n_atom_site_fract_x\n_atom_site_fract_y\n"
    text += "_atom_site_fract_z\n_atom_site_U_iso_or_equiv\nO1 0.1 0.2 0.3 0.02\n"
    crystal = _read_quietly(_write(tmp_path, text))
    assert crystal.block == "phase"
    assert crystal.cell.b == pytest.approx(11.9)
    assert len(crystal.operators) == 4


# --- atoms ---------------------------------------------------------------------------


def test_missing_occupancy_defaults_to_one_and_missing_uiso_uses_the_aniso_row(tmp_path):
    atoms = "C1 0.1 0.2 0.3 0.01 ?\nO1 0.4 0.1 0.2 ? .\nO2 0.2 0.4 0.1 . 0.5"
    aniso = (
        "loop_\n_atom_site_aniso_label\n_atom_site_aniso_U_11\n_atom_site_aniso_U_22\n"
        "_atom_site_aniso_U_33\n_atom_site_aniso_U_12\n_atom_site_aniso_U_13\n"
        "_atom_site_aniso_U_23\nO1 0.02 0.03 0.04 0 0.001 0\nO2 0.02 0.02 0.02 0 0 0\n"
    )
    text = MONOCLINIC.format(name="m", symmetry="_space_group_name_Hall '-P 2yn'", atoms=atoms)
    crystal = _read_quietly(_write(tmp_path, text + aniso))
    assert [a.occupancy for a in crystal.atoms] == [1.0, 1.0, 0.5]
    o1 = crystal.atom("O1")
    assert o1.uiso == pytest.approx(np.trace(uij_to_cartesian(crystal.cell, o1.uij)) / 3)
    assert not crystal.atom("C1").is_anisotropic


def test_missing_uiso_is_fine_when_the_atom_has_an_aniso_row(tmp_path):
    path = _mutate(tmp_path, CSPBBR3, "Uani 0.01530(10)", "Uani ?")
    pb = read_structure(path).atom("Pb1")
    assert pb.is_anisotropic
    assert pb.uiso > 0


def test_missing_uiso_without_aniso_row_names_the_atom_and_field(tmp_path):
    text = MONOCLINIC.format(
        name="m", symmetry="_space_group_name_Hall '-P 2yn'", atoms="C1 0.1 0.2 0.3 ? 1"
    )
    with pytest.raises(InputFileError, match=r"atom C1: _atom_site_U_iso_or_equiv"):
        read_structure(_write(tmp_path, text))


def test_partial_charges_are_read_with_their_su_and_bad_rows_are_named(tmp_path):
    loop = "\nloop_\n_blochnet_atom_site_label\n_blochnet_atom_site_charge\n"
    crystal = read_structure(_write(tmp_path, QUARTZ.read_text() + loop + "Si1 0.62(5)\n"))
    assert crystal.atom("Si1").charge == pytest.approx(0.62)
    assert crystal.atom("Si1").su["charge"] == pytest.approx(0.05)
    assert crystal.atom("O1").charge == 0.0  # not listed: neutral
    bad = _write(tmp_path, QUARTZ.read_text() + loop + "Si9 0.5\n", "bad.cif")
    with pytest.raises(InputFileError, match=r"bad.cif.*_blochnet_atom_site_label.*'Si9'"):
        read_structure(bad)
    bad = _write(tmp_path, QUARTZ.read_text() + loop + "Si1 plus\n", "bad2.cif")
    with pytest.raises(InputFileError, match=r"atom Si1: _blochnet_atom_site_charge"):
        read_structure(bad)


def test_b_values_are_converted_to_u(tmp_path):
    text = QUARTZ.read_text().replace("_atom_site_U_iso_or_equiv", "_atom_site_B_iso_or_equiv")
    text = text.replace("_atom_site_aniso_U_", "_atom_site_aniso_B_")
    factor = 8 * np.pi**2
    lines = []
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] in ("Si1", "O1") and len(fields) == 7 and "." in fields[1]:
            fields[1:] = [f"{float(v) * factor:.8f}" for v in fields[1:]]
        lines.append(" ".join(fields))
    crystal = read_structure(_write(tmp_path, "\n".join(lines)))
    original = read_structure(QUARTZ)
    for a, b in zip(crystal.atoms, original.atoms, strict=True):
        np.testing.assert_allclose(a.uij, b.uij, rtol=1e-7)


@pytest.mark.parametrize(
    ("text", "element"),
    [
        ("O1A", "O"),
        ("Si1", "Si"),
        ("H12", "H"),
        ("CL1", "Cl"),
        ("O2-", "O"),
        ("Si4+", "Si"),
        ("D1", "H"),
        ("Xx", None),
    ],
)
def test_elements_come_from_type_symbols_or_labels(text, element):
    assert element_symbol(text) == element


def test_labels_give_the_element_when_type_symbol_is_missing_or_charged(tmp_path):
    atoms = "CL1 Cl1- 0.1 0.2 0.3 0.01\nO1A ? 0.2 0.1 0.3 0.01\nD1 . 0.3 0.3 0.3 0.02"
    loop = MONOCLINIC.split("loop_")[0] + (
        "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n"
        "_atom_site_fract_y\n_atom_site_fract_z\n_atom_site_U_iso_or_equiv\n" + atoms + "\n"
    )
    text = loop.format(name="el", symmetry="_space_group_name_Hall '-P 2yn'")
    crystal = _read_quietly(_write(tmp_path, text))
    assert [a.element for a in crystal.atoms] == ["Cl", "O", "H"]


# --- broken files --------------------------------------------------------------------


def test_a_missing_file_raises_input_file_error(tmp_path):
    path = tmp_path / "absent.cif"
    with pytest.raises(InputFileError, match="absent.cif"):
        read_structure(path)


def test_invalid_cif_syntax_reports_the_line(tmp_path):
    path = _mutate(tmp_path, QUARTZ, "O1 O 0.854729", "O1 O 'unterminated 0.854729")
    with pytest.raises(
        InputFileError, match=r"quartz.cif: line \d+: unterminated quote in a loop value"
    ):
        read_structure(path)


@pytest.mark.parametrize(
    ("source", "old", "new", "where"),
    [
        (QUARTZ, "_atom_site_fract_x", "_atom_site_frac_x", "_atom_site_fract_x"),
        (QUARTZ, "_cell_length_b 4.92260\n", "", "_cell_length_b"),
        (QUARTZ, "_cell_length_c 5.40030", "_cell_length_c ?", "_cell_length_c"),
        (QUARTZ, "Si1 Si 1.000000", "Si1 Si one", "atom Si1: _atom_site_fract_x"),
        (QUARTZ, "O1 O 0.854729", "O1 Qq 0.854729", "atom O1: _atom_site_type_symbol"),
        (QUARTZ, "_cell_length_a 4.92260", "_cell_length_a -4.9", "_cell_length_a"),
        (QUARTZ, "_cell_angle_gamma 120.00000", "_cell_angle_gamma 190", "_cell_angle_gamma"),
        (QUARTZ, "_cell_angle_alpha 90.00000", "_cell_angle_alpha 20", "_cell_angle_alpha"),
        (QUARTZ, "2 -y,x-y,z+2/3", "2 -y,x-y", "_symmetry_equiv_pos_as_xyz row 2"),
        (QUARTZ, "2 -y,x-y,z+2/3", "2 -y,x-y,z+1/4", "_symmetry_equiv_pos_as_xyz"),
        (QUARTZ, "2 -y,x-y,z+2/3", "2 x,x,z+2/3", "_symmetry_equiv_pos_as_xyz row 2"),
        (
            QUARTZ,
            "loop_\n_atom_site_aniso_label",
            "loop_\n_atom_site_aniso_lab",
            "_atom_site_aniso_label",
        ),
        (CSPBBR3, "0.0168(2)", "0.0168(2", "atom Pb1: _atom_site_aniso_U_11"),
    ],
)
def test_broken_files_raise_input_file_error_naming_file_and_field(
    tmp_path, source, old, new, where
):
    path = _mutate(tmp_path, source, old, new)
    with pytest.raises(InputFileError) as info:
        read_structure(path)
    message = str(info.value)
    assert str(path) in message
    assert where in message
    assert "Traceback" not in message


def test_unknown_space_group_symbol_raises_input_file_error(tmp_path):
    text = MONOCLINIC.format(
        name="bad", symmetry="_symmetry_space_group_name_H-M 'Q 42'", atoms="C1 0.1 0.2 0.3 0.1 1"
    )
    with pytest.raises(InputFileError, match="_symmetry_space_group_name_H-M.*'Q 42'"):
        read_structure(_write(tmp_path, text))


def test_no_symmetry_at_all_raises_input_file_error(tmp_path):
    text = MONOCLINIC.format(name="none", symmetry="", atoms="C1 0.1 0.2 0.3 0.1 1")
    with pytest.raises(InputFileError, match="no space-group information"):
        read_structure(_write(tmp_path, text))
