"""Bad input files are answered where the cause is: truncation, empty files, swapped
arguments, damaged text in fields blochnet does not use, a cell against its symmetry."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from blochnet.cli.main import app
from blochnet.errors import InputFileError
from blochnet.experiment.summary import summarize_file
from blochnet.io.cif import read_structure
from blochnet.io.pets import read_pets
from conftest import dataset_path, structure_path


def _lines(path: Path) -> list[str]:
    return path.read_text().split("\n")


def _error(reader, path: Path) -> str:
    with pytest.raises(InputFileError) as caught:
        reader(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and "\n" not in message
    return message


def _first_line(lines: list[str], pattern: str) -> int:
    return next(i for i, line in enumerate(lines) if re.match(pattern, line))


@pytest.mark.parametrize("cut", [0.3, 0.61, 0.999])
def test_a_truncated_data_file_is_called_truncated_at_its_last_line(tmp_path, cut):
    text = dataset_path("quartz").read_text()
    truncated = text[: int(cut * len(text))]
    if truncated.endswith("\n") or len(truncated.rsplit("\n", 1)[-1].split()) in (0, 6):
        truncated = truncated[:-3]  # end inside a row whatever the cut
    path = tmp_path / "cut.cif_pets"
    path.write_text(truncated)
    message = _error(read_pets, path)
    last_line = truncated.count("\n") + 1
    assert f"line {last_line}: the file ends inside a row of the loop of _refln_index_h" in message
    assert message.endswith("the file looks truncated")


def test_a_row_with_a_value_missing_is_named_by_its_own_line(tmp_path):
    lines = _lines(dataset_path("glycine"))
    row = _first_line(lines, r"^\s*_refln_") + 40
    lines[row] = " ".join(lines[row].split()[:-1])
    path = tmp_path / "short.cif_pets"
    path.write_text("\n".join(lines))
    message = _error(read_pets, path)
    assert f"line {row + 1}: " in message and "values in a row of the loop" in message


@pytest.mark.parametrize("reader, kind", [(read_structure, "CIF"), (read_pets, ".cif_pets")])
@pytest.mark.parametrize("content", ["", "\n\n   \n"])
def test_an_empty_file_is_called_empty(tmp_path, reader, kind, content):
    path = tmp_path / "empty.cif"
    path.write_text(content)
    assert "the file is empty" in _error(reader, path)


def test_a_data_file_given_as_the_structure_is_called_swapped():
    message = _error(read_structure, dataset_path("glycine"))
    assert "this is a 3D-ED data file" in message and "swapped" in message


def test_a_structure_given_as_the_data_file_is_called_swapped():
    message = _error(read_pets, structure_path("cspbbr3"))
    assert "this is a structure" in message and "swapped" in message


def test_refine_with_swapped_files_says_so_in_one_line(tmp_path):
    args = [str(dataset_path("quartz")), str(structure_path("quartz"))]
    result = CliRunner().invoke(app, ["refine", *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "swapped" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _with_line(path: Path, tmp_path: Path, extra: list[str]) -> tuple[Path, int]:
    lines = _lines(path)
    at = _first_line(lines, r"^_cell_length_a")
    out = tmp_path / "edited.cif"
    out.write_text("\n".join(lines[:at] + extra + lines[at:]))
    return out, at + 1


@pytest.mark.parametrize(
    "damaged",
    ["_publ_section_title 'Structure of the perovskite", '_journal_name_full "Acta Cryst'],
)
def test_an_unterminated_quote_in_a_text_field_blochnet_ignores_is_read_with_a_warning(
    tmp_path, damaged
):
    path, line = _with_line(structure_path("cspbbr3"), tmp_path, [damaged])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        crystal = read_structure(path)
    assert len(crystal.atoms) == len(read_structure(structure_path("cspbbr3")).atoms)
    tag = damaged.split()[0]
    assert any(
        f"line {line}: unterminated quote in the value of {tag}" in str(w.message) for w in caught
    )


def test_an_unterminated_quote_in_a_used_value_is_refused_with_its_line(tmp_path):
    lines = _lines(structure_path("cspbbr3"))
    at = _first_line(lines, r"^_cell_length_a")
    lines[at] = "_cell_length_a '8.1189(4)"
    path = tmp_path / "bad.cif"
    path.write_text("\n".join(lines))
    message = _error(read_structure, path)
    assert f"line {at + 1}: unterminated quote in the value of _cell_length_a" in message


def test_a_text_field_never_closed_names_the_line_that_opened_it(tmp_path):
    path, line = _with_line(
        structure_path("cspbbr3"), tmp_path, ["_publ_section_title", ";", "never closed"]
    )
    assert f"line {line + 1}: a text field opened here" in _error(read_structure, path)


def _with_alpha(tmp_path: Path, alpha: str) -> Path:
    lines = _lines(structure_path("glycine"))
    at = _first_line(lines, r"^_cell_angle_alpha")
    lines[at] = f"_cell_angle_alpha {alpha}"
    gamma = _first_line(lines, r"^_cell_angle_gamma")
    lines[gamma] = "_cell_angle_gamma 90"
    path = tmp_path / "monoclinic.cif"
    path.write_text("\n".join(lines))
    return path


def test_info_says_when_a_monoclinic_cell_has_alpha_off_90_degrees(tmp_path):
    odd = [o["message"] for o in summarize_file(_with_alpha(tmp_path, "91.2"))["oddities"]]
    hits = [m for m in odd if "breaks the symmetry of the monoclinic space group" in m]
    assert hits and "α 91.2° (symmetry needs 90°)" in hits[0] and "γ" not in hits[0]
    clean = [o["message"] for o in summarize_file(_with_alpha(tmp_path, "90"))["oddities"]]
    assert not any("breaks the symmetry" in m for m in clean)


@pytest.mark.parametrize("name", ["quartz", "cspbbr3", "paracetamol"])
def test_cells_that_fit_their_space_group_are_not_flagged(name):
    odd = [o["message"] for o in summarize_file(structure_path(name))["oddities"]]
    assert not any("breaks the symmetry" in m for m in odd)


@pytest.mark.parametrize("command", ["pattern", "info", "evaluate", "simulate", "refine", "plot"])
def test_help_shows_no_bool_type_and_keeps_square_brackets(command):
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0
    assert "<bool>" not in result.stdout
    if command == "plot":
        assert 'pip install "blochnet[plot]"' in " ".join(result.stdout.split())


def test_the_structure_and_data_arguments_have_the_same_names_in_every_command():
    usage = {
        command: CliRunner().invoke(app, [command, "--help"]).stdout.splitlines()[0]
        for command in ("evaluate", "refine", "simulate")
    }
    assert all("STRUCTURE" in line for line in usage.values()), usage
    assert "DATA" in usage["evaluate"] and "DATA" in usage["refine"]


def test_refine_help_describes_the_default_robust_loss():
    text = " ".join(CliRunner().invoke(app, ["refine", "--help"]).stdout.split())
    assert "robust (Cauchy) loss" in text and "robust = 0" in text
