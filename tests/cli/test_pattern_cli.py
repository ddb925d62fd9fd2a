"""The ``blochnet pattern`` command: output formats, thickness syntax and error handling."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from blochnet.cli import pattern as pattern_cli
from blochnet.cli.main import app
from blochnet.examples import example_path
from blochnet.experiment.pattern import simulate_pattern
from blochnet.io.cif import read_structure
from blochnet.physics.bloch import SOLVERS
from blochnet.physics.scattering import TABLES

# a small beam set keeps each run quick; the physics is tested elsewhere
SILICON_110 = ["pattern", "--example", "silicon", "--zone", "1", "1", "0", "--g-max", "1.2"]


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


@pytest.fixture(scope="module")
def silicon_110() -> dict:
    """The library's own pattern for the command line ``SILICON_110 -t 100 300``."""
    crystal = read_structure(example_path("silicon"))
    p = simulate_pattern(crystal, (1, 1, 0), [100.0, 300.0], g_max=1.2)
    return {"hkl": p.hkl, "intensity": p.intensities.detach().numpy()}


def test_csv_header_has_one_intensity_column_per_thickness_as_typed():
    result = run(*SILICON_110, "--thickness", "100,62.5", "--format", "csv")
    assert result.exit_code == 0, result.output
    header, *rows = csv_rows(result.stdout)
    assert result.stdout.splitlines()[0] == "h,k,l,g,s_g,I_100,I_62.5"
    assert header == ["h", "k", "l", "g", "s_g", "I_100", "I_62.5"]
    assert rows and all(len(row) == 7 for row in rows)
    for row in rows:
        [int(x) for x in row[:3]]
        [float(x) for x in row[3:]]


def test_csv_lists_every_beam_and_intensities_sum_to_one_without_absorption(silicon_110):
    result = run(*SILICON_110, "--thickness", "100", "300", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = np.array(csv_rows(result.stdout)[1:], dtype=float)
    assert len(rows) == len(silicon_110["hkl"])
    np.testing.assert_allclose(rows[:, 5:].sum(axis=0), [1.0, 1.0], atol=1e-8)


def test_csv_sorted_by_g_starts_with_the_incident_beam():
    result = run(*SILICON_110, "-t", "100", "--format", "csv", "--sort", "g")
    g = np.array([float(row[3]) for row in csv_rows(result.stdout)[1:]])
    assert csv_rows(result.stdout)[1][:3] == ["0", "0", "0"]
    assert np.all(np.diff(g) >= 0)


def test_thickness_accepts_spaces_commas_and_repetition_alike():
    outputs = {
        run(*SILICON_110, *args, "--format", "csv").stdout
        for args in (
            ["--thickness", "100", "300"],
            ["--thickness", "100,300"],
            ["--thickness", "100", "--thickness", "300"],
            ["-t", "100", "300", "--sg-max", "0.05"],
            ["--thickness=100", "300"],
        )
    }
    assert len(outputs) == 1
    assert next(iter(outputs)).startswith("h,k,l,g,s_g,I_100,I_300\n")


def test_thickness_expansion_takes_only_numbers_after_the_flag():
    expand = pattern_cli._expand_thickness_args
    assert expand(["-t", "1", "2,3", "x.cif"]) == ["-t", "1", "--thickness", "2,3", "x.cif"]
    assert expand(["--zone", "1", "1", "0"]) == ["--zone", "1", "1", "0"]
    assert expand(["-t", "1", "--", "2"]) == ["-t", "1", "--", "2"]


def test_json_output_parses_and_carries_metadata_and_beams(silicon_110):
    result = run(*SILICON_110, "--thickness", "100", "300", "--format", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["zone"] == [1, 1, 0]
    assert document["thickness"] == [100.0, 300.0]
    assert document["voltage"] == 200.0 and document["scattering"] == "lobato"
    assert document["wavelength"] == pytest.approx(0.02508, abs=1e-5)
    beams = document["beams"]
    assert len(beams) == len(silicon_110["hkl"])
    assert set(beams[0]) == {"h", "k", "l", "g", "s_g", "intensity"}
    total = np.sum([beam["intensity"] for beam in beams], axis=0)
    np.testing.assert_allclose(total, [1.0, 1.0], atol=1e-8)


def test_table_lists_the_strongest_diffracted_beam(silicon_110):
    result = run(*SILICON_110, "--thickness", "100", "300")
    assert result.exit_code == 0, result.output
    strongest = silicon_110["intensity"].max(axis=0)
    strongest[0] = -1  # skip the incident beam
    h, k, l = silicon_110["hkl"][int(np.argmax(strongest))]
    assert re.search(rf"^\s*{h}\s+{k}\s+{l}\s+\d", result.stdout, re.MULTILINE), result.stdout
    assert "I(100 Å)" in result.stdout and "I(300 Å)" in result.stdout
    assert "F d -3 m" in result.stdout


def test_table_footer_reports_flux_and_hidden_beams():
    result = run(*SILICON_110, "-t", "100", "--min-intensity", "0.01")
    assert result.exit_code == 0, result.output
    assert re.search(r"Σ all\s+1\.00000", result.stdout), result.stdout
    assert re.search(r"\d+ beams with I < 0\.01 at every thickness not listed", result.stdout)


def test_example_option_runs_the_readme_command():
    result = run(
        "pattern", "--example", "silicon", "--zone", "1", "1", "0", "--thickness", "100", "300"
    )
    assert result.exit_code == 0, result.output
    assert "silicon" in result.stdout and "I(300 Å)" in result.stdout


def test_structure_file_argument_is_read():
    path = str(example_path("quartz"))
    result = run(
        "pattern", path, "--zone", "0", "0", "1", "-t", "50", "--g-max", "1", "--format", "csv"
    )
    assert result.exit_code == 0, result.output
    rows = np.array(csv_rows(result.stdout)[1:], dtype=float)
    assert rows[:, 5].sum() == pytest.approx(1.0, abs=1e-8)


def assert_user_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output


def test_missing_file_exits_2_naming_the_file():
    result = run("pattern", "no_such_structure.cif", "--zone", "1", "1", "0", "-t", "100")
    assert_user_error(result, "no_such_structure.cif")
    assert result.stdout == ""


def test_zero_zone_axis_exits_2_with_a_message():
    assert_user_error(run(*SILICON_110, "--zone", "0", "0", "0", "-t", "100"), "zone")


@pytest.mark.parametrize("values", [["-5"], ["100", "-5"], ["100,-5"], ["abc"], ["nan"]])
def test_negative_or_non_numeric_thickness_exits_2(values):
    assert_user_error(run(*SILICON_110, "--thickness", *values), "thickness")


def test_unknown_scattering_table_exits_2():
    assert_user_error(run(*SILICON_110, "-t", "100", "--scattering", "doyle"), "scattering")


def test_unknown_example_and_ambiguous_structure_exit_2():
    assert_user_error(run("pattern", "--example", "gold", "--zone", "1", "1", "0", "-t", "1"))
    assert_user_error(run("pattern", "--zone", "1", "1", "0", "-t", "1"), "--example")
    both = run("pattern", str(example_path("quartz")), *SILICON_110[1:], "-t", "1")
    assert_user_error(both, "not both")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_device_without_cuda_exits_2():
    assert_user_error(run(*SILICON_110, "-t", "100", "--device", "cuda"), "CUDA")


def test_interrupt_exits_130(monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("blochnet.experiment.pattern.simulate_pattern", interrupted)
    result = run(*SILICON_110, "-t", "100")
    assert result.exit_code == 130
    assert "interrupted" in result.output


def test_cli_choices_match_the_library():
    assert [s.value for s in pattern_cli.Scattering] == list(TABLES)
    assert [s.value for s in pattern_cli.Solver] == list(SOLVERS)


def test_help_documents_thickness_syntax_and_sign_conventions():
    result = CliRunner().invoke(app, ["pattern", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    for text in ("K+g", "Ewald sphere", "+[uvw]", "--thickness 100,300,500", "surface normal"):
        assert text in result.stdout
    assert run("--help").exit_code == 0
    assert re.match(r"blochnet \S+", run("--version").stdout)


def test_python_dash_m_blochnet_shows_help():
    result = subprocess.run(
        [sys.executable, "-m", "blochnet", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "pattern" in result.stdout
