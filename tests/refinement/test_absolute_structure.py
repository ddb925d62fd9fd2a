"""Absolute structure: the inverse of a structure, and the choice of hand from the data."""

import json

import gemmi
import numpy as np
import pytest
import torch
from small_data import SIMULATION, small_quartz_frames

from blochnet.examples import example_path
from blochnet.experiment.prepared import prepare
from blochnet.io.cif import read_structure
from blochnet.io.cif_write import write_structure
from blochnet.physics.beams import reciprocal_lattice_points
from blochnet.physics.crystal_model import CrystalModel
from blochnet.refinement.absolute import choose_absolute_structure
from blochnet.refinement.config import LearningRates, RefineConfig
from blochnet.refinement.pipeline import refine
from blochnet.refinement.thickness import ThicknessConfig


@pytest.fixture(scope="module")
def quartz():
    return read_structure(example_path("quartz"))


@pytest.fixture(scope="module")
def inverse_data(quartz):
    """Frames simulated from the inverse of the bundled quartz (P3₁21)."""
    return small_quartz_frames(quartz.inverted(), seed=5)


def test_the_inverse_negates_coordinates_and_turns_p3221_into_p3121(quartz):
    inverse = quartz.inverted()
    assert quartz.spacegroup == "P 32 2 1" and inverse.spacegroup == "P 31 2 1"
    assert not quartz.is_centrosymmetric
    for atom, image in zip(quartz.atoms, inverse.atoms, strict=True):
        difference = (atom.xyz + image.xyz) % 1.0
        np.testing.assert_allclose(np.minimum(difference, 1 - difference), 0, atol=1e-12)
        assert np.all((image.xyz >= 0) & (image.xyz < 1))
        np.testing.assert_array_equal(image.uij, atom.uij)  # even under inversion
    again = inverse.inverted()
    assert again.spacegroup == quartz.spacegroup
    assert {op.triplet() for op in again.operators} == {op.triplet() for op in quartz.operators}


def test_structure_factors_of_the_inverse_are_those_of_minus_h_also_for_gemmi(quartz, tmp_path):
    """F_inverse(h) = F(−h) for any scattering factors; gemmi, reading the written CIF of
    the inverse (its own operator loop), agrees."""
    model, inverse = (CrystalModel(c, voltage=200e3) for c in (quartz, quartz.inverted()))
    hkl = torch.as_tensor(reciprocal_lattice_points(quartz.cell, 1.2)[1:])
    f_minus = model.structure_factors(-hkl, model.atom_tensors())
    f_inverse = inverse.structure_factors(hkl, inverse.atom_tensors())
    torch.testing.assert_close(f_inverse, f_minus, rtol=0, atol=1e-10)
    f_plus = model.structure_factors(hkl, model.atom_tensors())
    assert (f_inverse - f_plus).abs().max() > 0.1 * f_plus.abs().max()  # a different crystal

    path = write_structure(quartz.inverted(), tmp_path / "inverse.cif")
    small = gemmi.read_small_structure(str(path))
    assert small.spacegroup.xhm() == "P 31 2 1"
    small.change_occupancies_to_crystallographic()
    calculator = gemmi.StructureFactorCalculatorE(small.cell)
    reference = np.array(
        [calculator.calculate_sf_from_small_structure(small, [*map(int, h)]) for h in hkl]
    )
    ours = CrystalModel(quartz.inverted(), voltage=200e3, table="peng")
    values = ours.structure_factors(hkl, ours.atom_tensors()).numpy()
    assert np.abs(values - reference).max() < 1e-5 * np.abs(reference).max()


def test_a_centrosymmetric_structure_has_no_hand_to_check():
    silicon = read_structure(example_path("silicon"))
    assert silicon.is_centrosymmetric
    chosen, record = choose_absolute_structure(silicon, [], "check")
    assert chosen is silicon and not record.inverted and "centrosymmetric" in record.note


def test_the_check_finds_the_hand_of_the_data(quartz, inverse_data):
    data = [prepare(quartz, inverse_data, SIMULATION)]
    chosen, record = choose_absolute_structure(quartz, data, "check")
    assert record.inverted and chosen.spacegroup == "P 31 2 1"
    assert record.scan_r_obs["inverted"] < 0.5 * record.scan_r_obs["given"]
    assert record.scan_thickness == [500.0]
    assert "inverse of the file's structure" in record.describe()
    kept, given = choose_absolute_structure(quartz, data, "given")
    assert kept is quartz and not given.inverted and given.scan_r_obs is None
    forced, _ = choose_absolute_structure(quartz, data, "inverted")
    assert forced.spacegroup == "P 31 2 1"


def test_a_refinement_of_the_wrong_hand_turns_and_reports_the_evidence(
    quartz, inverse_data, tmp_path
):
    config = RefineConfig(
        simulation=SIMULATION,
        epochs=3,
        checkpoint_every=1,
        thickness=ThicknessConfig(kind="global", t0=500.0),
        learning_rates=LearningRates(xyz=5e-4, adp=0.0, orientation=0.0, thickness=0.0),
        refine_orientation=False,
        auto_setup=False,
    )
    lines = []

    def interrupt(record):  # Ctrl-C during epoch 3: resuming must keep the chosen hand
        if record.epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        refine(
            quartz, [inverse_data], tmp_path, config, report=interrupt, setup_report=lines.append
        )
    assert len(lines) == 1 and "inverse of the file's structure (P 31 2 1)" in lines[0]
    result = refine(quartz, [inverse_data], tmp_path, config, resume=True)
    assert result.crystal.spacegroup == "P 31 2 1"
    report = json.loads((tmp_path / "report.json").read_text())
    hand = report["absolute_structure"]
    assert hand["inverted"] and hand["mode"] == "check"
    assert hand["inverse_of_refined"]["r_obs"] > 2 * report["r_obs"]
    text = (tmp_path / "refined.cif").read_text()
    assert "_refine_ls_abs_structure_details" in text and "'P 31 2 1'" in text
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["absolute_structure"]["inverted"]
