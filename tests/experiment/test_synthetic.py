"""Synthetic experiments: reproducible files, the true model fits them, thickness laws hold."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from blochnet.crystal import Atom
from blochnet.errors import ConfigurationError
from blochnet.examples import example_path
from blochnet.experiment.config import SelectionRule, SimulationConfig
from blochnet.experiment.frames import FrameSimulator
from blochnet.experiment.geometry import rotation, u_matrix, zone_axis_deviation
from blochnet.experiment.merit import figures_of_merit, optimal_scales
from blochnet.experiment.selection import select_reflections
from blochnet.experiment.specimen import (
    ConstantThickness,
    PerFrameThickness,
    SampledThickness,
    WedgeThickness,
)
from blochnet.experiment.synthetic import (
    GeneratedGeometry,
    NoiseModel,
    simulate_experiment,
    truth_crystal,
    truth_path,
    write_synthetic,
)
from blochnet.io.cif import read_structure
from blochnet.io.pets import read_pets
from blochnet.lattice import direct_matrix, reciprocal_matrix
from conftest import dataset_path

torch.set_num_threads(1)

CONFIG = SimulationConfig(n_tilts=5, g_max=1.5)
SCAN = GeneratedGeometry(rotation=(-14.0, -5.0, 1.0), resolution=1.6)  # 10 frames
WEDGE = WedgeThickness(mean_start=300.0, mean_end=600.0, spread=0.2, samples=5)
NOISE_FREE = NoiseModel(poisson=False, background=0.0, scale_jitter=0.1)


@pytest.fixture(scope="module")
def quartz():
    return read_structure(example_path("quartz"))


def _simulate(crystal, **options):
    options = {"generated": SCAN, "thickness": WEDGE, "config": CONFIG, "seed": 3} | options
    return simulate_experiment(crystal, **options)


def _written_and_read(dataset, truth, folder):
    path = folder / "synthetic.cif_pets"
    write_synthetic(dataset, truth, path)
    return read_pets(path), json.loads(truth_path(path).read_text())


def _merit(crystal, dataset, truth):
    """Figures of merit of ``crystal`` at the true thickness, with least-squares scales."""
    simulator = FrameSimulator.build(crystal, dataset, SimulationConfig(**truth["config"]))
    thickness = torch.as_tensor(truth["frames"]["thickness_samples"], dtype=torch.float64)
    weights = torch.as_tensor(truth["frames"]["thickness_weights"], dtype=torch.float64)
    i_calc = simulator.intensities(simulator.model.atom_tensors(), thickness)
    i_calc = (i_calc * weights[simulator.frame_of_used]).sum(1)
    rows, frame = simulator.used_rows, torch.as_tensor(simulator.frame_of_used)
    i_obs = torch.as_tensor(dataset.reflections.intensity[rows])
    sigma = torch.as_tensor(dataset.reflections.sigma[rows])
    k = optimal_scales(i_obs, sigma, i_calc, frame, dataset.n_frames)
    merit = figures_of_merit(i_obs, sigma, k[frame] * i_calc, frame, dataset.frames.id)
    return merit, k.numpy()


def test_the_same_seed_writes_identical_files_and_another_seed_does_not(quartz, tmp_path):
    noise = NoiseModel(dose=1e6, scale_jitter=0.1)
    texts = []
    for folder, seed in (("a", 7), ("b", 7), ("c", 8)):
        (tmp_path / folder).mkdir()
        path = tmp_path / folder / "data.cif_pets"
        write_synthetic(*_simulate(quartz, seed=seed, noise=noise), path)
        texts.append((path.read_text(), truth_path(path).read_text()))
    assert texts[0] == texts[1]
    assert texts[0][0] != texts[2][0] and texts[0][1] != texts[2][1]


def test_noise_free_data_are_fitted_by_the_true_model_with_r1_near_zero(quartz, tmp_path):
    dataset, truth = _written_and_read(*_simulate(quartz, noise=NOISE_FREE), tmp_path)
    assert truth["n_rows"] == len(dataset.reflections) > 100
    merit, k = _merit(truth_crystal(truth), dataset, truth)
    assert merit.n_all == len(dataset.reflections)
    assert merit.r1_all < 1e-6 and merit.wr2 < 1e-6
    expected_scales = NOISE_FREE.dose * np.array(truth["frames"]["scale"])
    np.testing.assert_allclose(k, expected_scales, rtol=1e-6)
    assert np.std(truth["frames"]["scale"]) > 0.02  # the jitter really varied the scales


def test_poisson_noise_gives_a_goodness_of_fit_near_one_for_the_true_model(quartz, tmp_path):
    noise = NoiseModel(dose=1e6, background=2.0, scale_jitter=0.1)
    dataset, truth = _written_and_read(*_simulate(quartz, noise=noise), tmp_path)
    merit, _ = _merit(truth_crystal(truth), dataset, truth)
    assert merit.n_all > 150
    assert merit.gof == pytest.approx(1.0, rel=0.15)
    assert 0 < merit.r1_obs < 0.03


def test_oxygen_moved_by_a_tenth_of_an_angstrom_fits_clearly_worse(quartz, tmp_path):
    noise = NoiseModel(dose=1e6, background=2.0)
    dataset, truth = _written_and_read(*_simulate(quartz, noise=noise), tmp_path)
    true = truth_crystal(truth)
    shift = np.linalg.solve(direct_matrix(true.cell), [0.1, 0.0, 0.0])  # 0.1 Å along x
    moved = [dataclasses.replace(a, xyz=a.xyz + shift * (a.label == "O1")) for a in true.atoms]
    good, _ = _merit(true, dataset, truth)
    bad, _ = _merit(dataclasses.replace(true, atoms=moved), dataset, truth)
    assert bad.r1_obs > 5 * good.r1_obs and bad.r1_obs > 0.05
    assert bad.gof > 5 * good.gof


@pytest.mark.parametrize("law", ["linear", "inverse_cosine"])
@pytest.mark.parametrize("distribution", ["uniform", "gaussian"])
def test_wedge_mean_thickness_follows_the_requested_law(quartz, law, distribution):
    if law == "linear":
        start, end = 300.0, 600.0
        expected = lambda a: 300.0 + 300.0 * (a + 14.0) / 9.0  # noqa: E731
    else:  # a 400 Å slab whose normal is along the beam at α = 20°
        start, end = 400 / np.cos(np.radians(-34.0)), 400 / np.cos(np.radians(-25.0))
        expected = lambda a: 400.0 / np.cos(np.radians(a - 20.0))  # noqa: E731
    wedge = WedgeThickness(
        mean_start=start, mean_end=end, law=law, spread=0.1, distribution=distribution
    )
    _, truth = _simulate(quartz, thickness=wedge, noise=NOISE_FREE)
    frames = truth["frames"]
    alpha, mean = np.array(frames["alpha"]), np.array(frames["thickness_mean"])
    np.testing.assert_allclose(mean, expected(alpha), rtol=1e-9)
    np.testing.assert_allclose(np.sum(frames["thickness_weights"], axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(frames["thickness_std"], 0.1 * mean, rtol=0.05)
    assert np.array(frames["thickness_samples"]).shape == (10, 9)


def test_constant_per_frame_and_given_thicknesses_become_frame_sample_tables():
    alpha = np.arange(3.0)
    t, w = ConstantThickness(value=250.0).sample(alpha)
    assert t.tolist() == [[250.0]] * 3 and w.tolist() == [[1.0]] * 3
    t, w = PerFrameThickness(values=[100.0, 200.0, 300.0]).sample(alpha)
    assert t[:, 0].tolist() == [100.0, 200.0, 300.0] and np.all(w == 1)
    given = SampledThickness(thickness=[[100.0, 200.0]] * 3, weights=[[1.0, 3.0]] * 3)
    t, w = given.sample(alpha)
    assert w.tolist() == [[0.25, 0.75]] * 3
    with pytest.raises(ConfigurationError, match="2 frames"):
        PerFrameThickness(values=[100.0, 200.0]).sample(alpha)
    with pytest.raises(ValidationError):
        SampledThickness(thickness=[[100.0, 200.0], [100.0]])


def test_generated_rows_are_excited_within_the_resolution_and_zone_axes_follow_pets(
    quartz, tmp_path
):
    dataset, _ = _written_and_read(*_simulate(quartz, noise=NOISE_FREE), tmp_path)
    selection = select_reflections(dataset, SelectionRule(g_max=1.6 + 1e-9, rsg_max=1.0 + 1e-6))
    assert selection.used.all()
    assert np.all(zone_axis_deviation(dataset) < 1e-3)  # zone axis = −beam, as PETS writes
    assert dataset.frames.alpha.tolist() == list(np.arange(-14.0, -4.5, 1.0))
    assert np.all(dataset.frames.semi_angle == 0.5)


def test_a_given_orientation_makes_ub_equal_u_times_b(quartz):
    u = rotation(0, 30.0) @ rotation(2, -50.0)
    scan = GeneratedGeometry(**SCAN.model_dump() | {"orientation": u.tolist()})
    dataset, truth = _simulate(quartz, generated=scan)
    np.testing.assert_allclose(dataset.ub, u @ reciprocal_matrix(quartz.cell), atol=1e-12)
    np.testing.assert_allclose(u_matrix(dataset), u, atol=1e-12)
    assert truth["geometry"]["orientation"] == u.tolist()


def test_precession_geometry_is_written_and_read_back(quartz, tmp_path):
    scan = GeneratedGeometry(**SCAN.model_dump() | {"geometry": "precession", "semi_angle": 1.0})
    dataset, _ = _written_and_read(*_simulate(quartz, generated=scan), tmp_path)
    assert dataset.geometry == "precession" and np.all(dataset.frames.semi_angle == 1.0)


def test_like_copies_the_frames_and_hkl_rows_of_the_shared_quartz_file(quartz):
    measured = read_pets(dataset_path("quartz"))
    ids = measured.frames.id[:4]
    keep = np.isin(measured.reflections.frame_id, ids)
    refl = measured.reflections
    frames, rows = measured.frames.select(slice(4)), refl.select(keep)
    small = dataclasses.replace(measured, frames=frames, reflections=rows)
    dataset, truth = simulate_experiment(
        quartz, geometry_from=small, config=CONFIG, noise=NOISE_FREE
    )
    for name in ("id", "zone_axis", "alpha", "beta", "omega", "semi_angle"):
        np.testing.assert_array_equal(getattr(dataset.frames, name), getattr(frames, name))
    np.testing.assert_array_equal(dataset.reflections.hkl, rows.hkl)
    np.testing.assert_array_equal(dataset.reflections.frame_id, rows.frame_id)
    assert np.all(dataset.reflections.intensity >= 0) and np.any(dataset.reflections.intensity)
    assert truth["structure"]["cell"]["a"] == measured.cell.a  # put in the data file's cell
    assert truth["warnings"] and "cell" in truth["warnings"][0]
    assert small.reflections.intensity.tolist() == refl.intensity[keep].tolist()  # untouched


def test_truth_json_gives_back_the_true_structure(quartz, tmp_path):
    _, truth = _written_and_read(*_simulate(quartz, noise=NOISE_FREE), tmp_path)
    crystal = truth_crystal(truth)
    assert crystal.cell == quartz.cell and crystal.spacegroup == quartz.spacegroup
    for mine, theirs in zip(crystal.atoms, quartz.atoms, strict=True):
        assert isinstance(mine, Atom) and mine.label == theirs.label
        np.testing.assert_array_equal(mine.xyz, theirs.xyz)
        np.testing.assert_array_equal(mine.uij, theirs.uij)
    assert len(crystal.operators) == len(quartz.operators)
    assert {"dose", "background", "seed", "voltage", "config"} <= set(truth)
    assert truth["voltage"] == pytest.approx(200.0, rel=1e-6)


def test_a_failed_write_leaves_no_file_behind(quartz, tmp_path, monkeypatch):
    dataset, truth = _simulate(quartz, noise=NOISE_FREE)

    def broken(dataset, path):
        raise OSError("disk full")

    monkeypatch.setattr("blochnet.experiment.synthetic.write_pets", broken)
    with pytest.raises(OSError, match="disk full"):
        write_synthetic(dataset, truth, tmp_path / "data.cif_pets")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "make",
    [
        lambda: GeneratedGeometry(rotation=(0.0, 10.0, 0.0)),
        lambda: GeneratedGeometry(orientation=((1, 0, 0), (0, 1, 0), (0, 0, -1))),
        lambda: GeneratedGeometry(voltage=200.0, colour="blue"),
        lambda: NoiseModel(dose=-1.0),
        lambda: WedgeThickness(mean_start=100.0, mean_end=0.0),
    ],
    ids=["zero step", "improper U", "unknown field", "negative dose", "zero thickness"],
)
def test_invalid_settings_are_refused(make):
    with pytest.raises(ValidationError):
        make()


def test_geometry_must_be_copied_or_generated_but_not_both(quartz):
    with pytest.raises(ConfigurationError, match="either"):
        simulate_experiment(quartz)
    wide = WedgeThickness(mean_start=300.0, mean_end=600.0, spread=0.5, distribution="gaussian")
    with pytest.raises(ConfigurationError, match="spread"):
        _simulate(quartz, thickness=wide)
