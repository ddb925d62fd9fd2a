"""Physically impossible inputs are refused before any work, each with one line naming
the file or option, the atom or field, and the range that was expected."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from blochnet.cli.main import app
from blochnet.errors import ConfigurationError, InputFileError
from blochnet.examples import example_path
from blochnet.experiment.sanity import (
    check_beam_set,
    check_structure,
    check_thickness,
    check_voltage,
)
from blochnet.io.cif import read_structure
from blochnet.io.pets import read_pets
from conftest import dataset_path, structure_path

QUARTZ = example_path("quartz")


def _edited(tmp_path: Path, source: Path, old: str, new: str, name: str) -> Path:
    text = source.read_text()
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    return path


def _one_line_cli_error(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_an_occupancy_above_one_names_the_atom_and_the_range(tmp_path):
    crystal = read_structure(structure_path("paracetamol"))
    crystal.atoms[2].occupancy = 1.5
    with pytest.raises(InputFileError, match=r"atom \S+: _atom_site_occupancy: expected an"):
        check_structure(crystal)


def test_an_adp_that_is_not_positive_definite_is_refused_with_its_principal_values(tmp_path):
    path = _edited(tmp_path, QUARTZ, "O1 0.013019", "O1 -0.013019", "npd.cif")
    with pytest.raises(InputFileError) as caught:
        check_structure(read_structure(path))
    message = str(caught.value)
    assert message.startswith(f"{path}: atom O1: _atom_site_aniso_U_*: the ADP is not positive")
    values = [float(v) for v in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", message.split("values")[1])]
    assert min(values) < 0


def test_a_negative_uiso_is_refused():
    crystal = read_structure(structure_path("paracetamol"))
    crystal.atoms[0].uiso = -0.01
    with pytest.raises(InputFileError, match="expected Uiso ≥ 0"):
        check_structure(crystal)


def test_an_atom_listed_twice_is_refused_with_both_labels_and_the_distance():
    crystal = read_structure(QUARTZ)
    twin = copy.deepcopy(crystal.atom("O1"))
    twin.label, twin.xyz = "O2", twin.xyz + np.array([0.01, 0.0, 0.0])
    crystal.atoms.append(twin)
    with pytest.raises(InputFileError, match=r"atoms O1 and O2: 0\.0\d\d Å apart"):
        check_structure(crystal)


def test_split_sites_whose_occupancies_add_to_one_may_be_close():
    crystal = read_structure(QUARTZ)
    half = copy.deepcopy(crystal.atom("O1"))
    crystal.atom("O1").occupancy = 0.5
    half.label, half.occupancy = "O1B", 0.5
    half.xyz = half.xyz + np.array([0.05, 0.0, 0.0])
    crystal.atoms.append(half)
    check_structure(crystal)


@pytest.mark.parametrize("name", ["quartz", "cspbbr3", "paracetamol", "glycine"])
def test_the_real_structures_pass(name):
    check_structure(read_structure(structure_path(name)))


def test_a_wavelength_that_is_not_of_electrons_is_refused_naming_its_line(tmp_path):
    text = dataset_path("quartz").read_text()
    line = next(x for x in text.splitlines() if x.startswith("_diffrn_radiation_wavelength"))
    path = tmp_path / "xray.cif_pets"
    path.write_text(text.replace(line, "_diffrn_radiation_wavelength 1.5406"))
    with pytest.raises(InputFileError, match=r"line \d+, _diffrn_radiation_wavelength: 1\.5406 Å"):
        read_pets(path)


@pytest.mark.parametrize(
    "kv, ok", [(5, False), (19.9, False), (200, True), (3000, True), (1e5, False)]
)
def test_a_voltage_outside_that_of_electron_microscopes_is_refused(kv, ok):
    if ok:
        check_voltage(kv)
    else:
        with pytest.raises(ConfigurationError, match=f"--voltage {kv:g}: expected an acc"):
            check_voltage(kv)


def test_pattern_refuses_an_absurd_voltage_and_thickness_in_one_line():
    line = _one_line_cli_error(["pattern", "--example", "quartz", "--zone", "0", "0", "1",
                                "--voltage", "5", "--thickness", "100"])  # fmt: skip
    assert "--voltage 5: expected an accelerating voltage of 20–3000 kV" in line
    line = _one_line_cli_error(["pattern", "--example", "quartz", "--zone", "0", "0", "1",
                                "--thickness", "1e9"])  # fmt: skip
    assert "--thickness 1e+09: expected a crystal thickness of 1–50000 Å" in line


@pytest.mark.parametrize("thickness", [0.1, 1e6, float("nan")])
def test_an_absurd_thickness_is_refused(thickness):
    with pytest.raises(ConfigurationError, match="expected a crystal thickness"):
        check_thickness([500.0, thickness], "--thickness")


def test_a_beam_set_that_misses_every_reflection_or_explodes_is_refused():
    dataset = read_pets(dataset_path("quartz"))
    check_beam_set(2.0, [dataset])
    with pytest.raises(ConfigurationError, match="below every observed reflection"):
        check_beam_set(0.05, [dataset])
    with pytest.raises(ConfigurationError, match="expected at most 8 Å⁻¹"):
        check_beam_set(50.0, [dataset])


def test_refine_refuses_an_absurd_g_max_from_the_configuration_before_the_epochs(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[simulation]\ng_max = 0.05\n")
    line = _one_line_cli_error(["refine", "--example", "quartz", "--config", str(config),
                                "--out", str(tmp_path / "o")])  # fmt: skip
    assert "[simulation] g_max 0.05: below every observed reflection" in line


def test_a_structure_cell_far_from_the_data_cell_is_refused(tmp_path):
    path = _edited(tmp_path, QUARTZ, "_cell_length_c", "_cell_length_c 6.2\n#", "long_c.cif")
    line = _one_line_cli_error(["evaluate", str(path), str(dataset_path("quartz")),
                                "--thickness", "500"])  # fmt: skip
    assert "the cells differ too much" in line and "allowed 3.0% and 2°" in line


def test_an_orientation_matrix_that_is_not_a_rotation_times_the_cell_is_refused(tmp_path):
    text = dataset_path("quartz").read_text()
    line = next(x for x in text.splitlines() if x.startswith("_diffrn_orient_matrix_UB_11"))
    value = float(line.split()[1])
    path = tmp_path / "ub.cif_pets"
    path.write_text(text.replace(line, f"_diffrn_orient_matrix_UB_11 {3 * value:.6f}"))
    with pytest.raises(InputFileError, match="UB·B\\^-1 is not a proper rotation"):
        read_pets(path)


@pytest.mark.parametrize("value, expected", [("1e300", "a length of 1–2000 Å"),
                                             ("0.0001", "a length of 1–2000 Å")])  # fmt: skip
def test_a_cell_length_outside_physical_cells_is_refused(tmp_path, value, expected):
    path = _edited(tmp_path, QUARTZ, "_cell_length_c", f"_cell_length_c {value}\n#", "c.cif")
    with pytest.raises(InputFileError, match=f"_cell_length_c: expected {expected}"):
        read_structure(path)
