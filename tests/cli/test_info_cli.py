"""The ``blochnet info`` command: data-set and structure summaries, JSON output, errors."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from blochnet.cli.main import app
from blochnet.crystal import Atom
from blochnet.experiment.summary import dataset_summary, structure_summary
from blochnet.io.cif import read_structure
from blochnet.io.pets import read_pets
from conftest import DATASETS as DATASET_PATHS
from conftest import STRUCTURES as STRUCTURE_PATHS
from conftest import dataset_path, structure_path

DATASETS = sorted(DATASET_PATHS.values())
STRUCTURES = sorted(STRUCTURE_PATHS.values())
DATASET_KEYS = set(
    "kind file block cell wavelength voltage_kv geometry semi_angle rotation_axis_position "
    "mosaicity dstarmax ub frames reflections oddities".split()
)
STRUCTURE_KEYS = set("kind file block cell spacegroup atoms composition oddities".split())
ATOM_KEYS = set(
    "label element xyz xyz_su occupancy uiso anisotropic site_symmetry multiplicity "
    "free_xyz free_adp".split()
)


def run(*args):
    return CliRunner().invoke(app, ["info", *map(str, args)])


def info_json(path) -> dict:
    result = run(path, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_test_data_has_both_data_sets_and_the_structures_inside_the_repository():
    assert {p.name for p in DATASETS} == {"quartz.cif_pets", "glycine.cif_pets"}
    assert len(STRUCTURES) >= 5
    assert all(p.is_file() for p in [*DATASETS, *STRUCTURES])


@pytest.mark.parametrize("path", DATASETS, ids=lambda p: p.name)
def test_data_set_summary_gives_the_frame_and_reflection_counts_of_the_reader(path):
    dataset = read_pets(path)
    summary = info_json(path)
    assert summary["kind"] == "dataset"
    assert summary["frames"]["count"] == dataset.n_frames
    assert summary["reflections"]["rows"] == len(dataset.reflections)
    assert summary["reflections"]["unique_hkl"] == len(np.unique(dataset.reflections.hkl, axis=0))
    negative = int(np.sum(dataset.reflections.intensity < 0))
    assert summary["reflections"]["negative_intensities"] == negative

    text = run(path)
    assert text.exit_code == 0, text.output
    assert re.search(rf"^frames\s+{dataset.n_frames}\b", text.stdout, re.M)
    assert re.search(rf"^rows\s+{len(dataset.reflections)}\b", text.stdout, re.M)


def test_glycine_lists_its_ten_empty_frames():
    path = dataset_path("glycine")
    dataset = read_pets(path)
    empty = np.setdiff1d(dataset.frames.id, dataset.reflections.frame_id).tolist()
    assert len(empty) == 10
    assert info_json(path)["frames"]["without_reflections"] == empty
    result = run(path)
    assert f"10: ids {', '.join(map(str, empty))}" in result.stdout
    assert "rotation axis position 230.391°" in result.stdout


@pytest.mark.parametrize("name", ["quartz", "glycine"])
def test_data_sets_repeating_one_intensity_per_reflection_are_flagged(name):
    codes = [o["code"] for o in info_json(dataset_path(name))["oddities"]]
    assert "whole_rocking_curves" in codes


def test_quartz_data_set_says_which_settings_are_not_set():
    result = run(dataset_path("quartz"))
    assert result.exit_code == 0, result.output
    assert re.search(r"^mosaicity\s+not set", result.stdout, re.M)
    assert re.search(r"^dstarmax\s+not set", result.stdout, re.M)
    assert "every frame scale is 1" in result.stdout


@pytest.mark.parametrize("path", STRUCTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shared_structure_lists_its_atoms(path):
    crystal = read_structure(path)
    result = run(path)
    assert result.exit_code == 0, result.output
    for atom in crystal.atoms:
        assert re.search(rf"^{atom.label}\s+{atom.element}\s", result.stdout, re.M)
    summary = info_json(path)
    assert summary["kind"] == "structure"
    assert [a["label"] for a in summary["atoms"]] == [a.label for a in crystal.atoms]
    assert summary["spacegroup"]["operators"] == len(crystal.operators)


def test_quartz_silicon_sits_on_a_twofold_axis_with_one_free_coordinate():
    path = structure_path("quartz")
    atoms = {a["label"]: a for a in info_json(path)["atoms"]}
    assert atoms["Si1"]["site_symmetry"] == "2"
    assert atoms["Si1"]["multiplicity"] == 3
    assert len(atoms["Si1"]["free_xyz"]) == 1
    assert atoms["O1"]["free_xyz"] == ["x", "y", "z"]
    row = next(line for line in run(path).stdout.splitlines() if line.startswith("Si1 "))
    assert re.search(r"\byes\s+2\s+3\s+y\s", row), row


def test_quartz_composition_is_three_sio2_per_cell():
    summary = info_json(structure_path("quartz"))
    assert summary["composition"]["per_cell"] == {"Si": 3.0, "O": 6.0}
    assert summary["composition"]["z"] == 3
    assert summary["spacegroup"]["number"] == 154
    assert summary["spacegroup"]["centrosymmetric"] is False


def test_coordinates_are_printed_with_their_standard_uncertainties():
    result = run(structure_path("cspbbr3"))
    assert "0.51538(12)" in result.stdout
    assert "8.1189(4)" in result.stdout


@pytest.mark.parametrize("path", [*DATASETS, *STRUCTURES], ids=lambda p: p.name)
def test_json_output_is_one_object_with_the_stable_keys(path):
    summary = info_json(path)  # json.loads fails on anything but one JSON value
    expected = DATASET_KEYS if summary["kind"] == "dataset" else STRUCTURE_KEYS
    assert expected <= set(summary)
    assert all({"code", "message"} == set(odd) for odd in summary["oddities"])
    if summary["kind"] == "structure":
        assert all(ATOM_KEYS <= set(atom) for atom in summary["atoms"])
    else:
        assert {"count", "alpha_range", "alpha_step", "without_reflections"} <= set(
            summary["frames"]
        )


@pytest.mark.parametrize("path", [*DATASETS, *STRUCTURES], ids=lambda p: p.name)
def test_text_output_fits_in_100_columns(path):
    result = run(path)
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 100


def test_a_data_file_is_recognised_by_its_tags_whatever_its_name(tmp_path):
    copy = tmp_path / "measured.cif"
    shutil.copy(dataset_path("quartz"), copy)
    assert info_json(copy)["kind"] == "dataset"


@pytest.mark.parametrize(
    "name, text",
    [
        ("broken.cif_pets", 'data_x\nloop_\n_refln_index_h\n"unterminated\n'),
        ("broken.cif", "data_x\n_cell_length_a 5\n"),
        ("missing.cif", None),
    ],
)
def test_a_broken_or_missing_file_gives_exit_2_and_names_the_file(tmp_path, name, text):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    result = run(path)
    assert result.exit_code == 2
    assert name in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_data_set_oddities_flag_sparse_frames_and_duplicated_rows():
    dataset = read_pets(dataset_path("quartz"))
    refl = dataset.reflections
    sparse_frame = dataset.frames.id[0]
    keep = np.flatnonzero(refl.frame_id != sparse_frame)
    keep = np.concatenate([np.flatnonzero(refl.frame_id == sparse_frame)[:2], keep, keep[:1]])
    columns = ("hkl", "intensity", "sigma", "frame_id", "line")
    dataset.reflections = replace(refl, **{c: getattr(refl, c)[keep] for c in columns})
    odd = {o["code"]: o["message"] for o in dataset_summary(dataset)["oddities"]}
    assert f"ids [{sparse_frame}]" in odd["sparse_frames"]
    assert odd["duplicate_rows"].startswith("1 duplicated")


def test_structure_oddities_flag_hydrogen_values_and_close_atoms():
    crystal = read_structure(structure_path("cspbbr3"))
    br1 = crystal.atom("Br1")
    near = br1.xyz + np.array([0.05, 0.0, 0.0])  # 0.41 Å from Br1
    crystal.atoms.append(Atom("H9", "H", near, occupancy=1.5, uiso=0.3))
    odd = [o["message"] for o in structure_summary(crystal)["oddities"]]
    assert any(m.startswith("1 hydrogen atom(s): H9") for m in odd)
    assert any(m == "Uiso/Ueq > 0.2 Å²: H9" for m in odd)
    assert any(m == "occupancy > 1: H9" for m in odd)
    assert any(m.startswith("Br1 – H9 0.406 Å") for m in odd), odd
