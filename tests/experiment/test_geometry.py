"""Frame orientations: the PETS convention checked against the real files."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from blochnet.crystal import Cell
from blochnet.dataset import Dataset, FrameTable, ReflectionTable
from blochnet.experiment.geometry import (
    beam_directions,
    beam_zone_axes,
    excitation_errors,
    goniometer_axis_crystal,
    orientation_matrices,
    rotation,
    u_matrix,
    zone_axis_deviation,
)
from blochnet.io.pets import read_pets
from blochnet.io.pets_write import write_pets
from blochnet.lattice import reciprocal_matrix
from conftest import dataset_path

NAMES = ["quartz", "glycine"]


@pytest.fixture(scope="module", params=NAMES)
def dataset(request) -> Dataset:
    return read_pets(dataset_path(request.param))


def _axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    """Right-handed rotation by ``angle`` [deg] about the unit vector ``axis`` (Rodrigues)."""
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.radians(angle)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def _toy_dataset(alpha: float, beta: float = 0.0, omega: float = 0.0, p: float = 0.0) -> Dataset:
    """Cubic cell, U = identity (UB = B), one frame."""
    cell = Cell(4.0, 4.0, 4.0, 90.0, 90.0, 90.0)
    one = np.ones(1)
    frames = FrameTable(
        np.array([1]), np.array([[0.0, 0.0, 1.0]]), one, alpha * one, beta * one, omega * one, one
    )
    reflections = ReflectionTable(np.array([[1, 0, 0]]), one, one, np.array([1]))
    return Dataset(
        cell,
        0.02508,
        200e3,
        reciprocal_matrix(cell),
        "continuous rotation",
        1.0,
        p,
        None,
        None,
        {},
        frames,
        reflections,
    )


def test_ub_times_inverse_b_is_a_proper_rotation(dataset):
    u = dataset.ub @ np.linalg.inv(reciprocal_matrix(dataset.cell))
    assert np.abs(u.T @ u - np.eye(3)).max() < 1e-3
    assert np.linalg.det(u) == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(u_matrix(dataset), u, atol=1e-3)


def test_orientation_matrices_are_rotations(dataset):
    m = orientation_matrices(dataset)
    assert m.shape == (len(dataset.frames), 3, 3)
    np.testing.assert_allclose(
        m @ m.transpose(0, 2, 1), np.broadcast_to(np.eye(3), m.shape), atol=1e-12
    )
    np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=1e-12)


def test_beam_is_opposite_to_the_pets_zone_axis_in_every_frame(dataset):
    deviation = zone_axis_deviation(dataset)
    assert deviation.shape == (len(dataset.frames),)
    assert deviation.max() < 0.01  # degrees; measured 0.0012 (quartz), 0.0010 (glycine)
    np.testing.assert_allclose(beam_zone_axes(dataset), -dataset.frames.zone_axis, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(beam_directions(dataset), axis=1), 1.0)


def test_observed_reflections_lie_on_the_ewald_sphere_only_with_the_right_beam_sign(dataset):
    g = np.linalg.norm(dataset.reflections.hkl @ reciprocal_matrix(dataset.cell).T, axis=1)
    right = excitation_errors(dataset)
    wrong = excitation_errors(dataset, beam_sign=-1.0)
    # right sign: within the frames' rocking range (~1.3° x |g| <= 0.04 Å^-1), no bias
    assert np.median(np.abs(right)) < 0.025
    assert np.abs(np.mean(right / g**2)) < 0.05 * dataset.wavelength
    # wrong sign: every s_g shifted by -g²/k, i.e. s_g/g² biased by -λ
    assert np.mean(wrong / g**2) == pytest.approx(-dataset.wavelength, rel=0.05)
    assert np.median(np.abs(wrong)) > 1.6 * np.median(np.abs(right))


def test_tilt_about_the_goniometer_axis_rotates_the_crystal_about_that_axis(dataset):
    tilted = copy.deepcopy(dataset)
    tilted.frames.alpha = dataset.frames.alpha + 0.7
    m, m_tilted = orientation_matrices(dataset), orientation_matrices(tilted)
    axes = goniometer_axis_crystal(dataset)
    np.testing.assert_allclose(np.linalg.norm(axes, axis=1), 1.0)
    for i in range(0, len(dataset.frames), 5):
        np.testing.assert_allclose(m_tilted[i], m[i] @ _axis_angle(axes[i], 0.7), atol=1e-12)
    # the beam turns about the axis and stays perpendicular to it
    np.testing.assert_allclose(
        np.einsum("fi,fi->f", axes, beam_directions(dataset)), 0.0, atol=1e-12
    )


def test_rotation_axis_position_does_not_change_beam_directions(dataset):
    turned = copy.deepcopy(dataset)
    turned.rotation_axis_position = dataset.rotation_axis_position + 37.0
    np.testing.assert_allclose(beam_directions(turned), beam_directions(dataset), atol=1e-12)
    assert not np.allclose(orientation_matrices(turned), orientation_matrices(dataset))


def test_orientations_survive_writing_and_reading(dataset, tmp_path):
    changed = copy.deepcopy(dataset)
    changed.frames.alpha = dataset.frames.alpha * 0.5 + 3.25
    changed.frames.beta = dataset.frames.beta + 0.125
    out = tmp_path / "simulated.cif_pets"
    write_pets(changed, out)
    np.testing.assert_allclose(
        orientation_matrices(read_pets(out)), orientation_matrices(changed), atol=1e-7
    )


def test_positive_alpha_turns_the_beam_from_minus_c_towards_minus_b():
    np.testing.assert_allclose(beam_directions(_toy_dataset(0.0))[0], [0, 0, -1], atol=1e-15)
    np.testing.assert_allclose(beam_directions(_toy_dataset(90.0))[0], [0, -1, 0], atol=1e-15)
    np.testing.assert_allclose(
        beam_directions(_toy_dataset(0.0, beta=90.0))[0], [1, 0, 0], atol=1e-15
    )
    np.testing.assert_allclose(beam_zone_axes(_toy_dataset(45.0))[0], [0, -1, -1], atol=1e-12)
    np.testing.assert_allclose(
        goniometer_axis_crystal(_toy_dataset(30.0))[0], [1, 0, 0], atol=1e-15
    )
    np.testing.assert_allclose(
        goniometer_axis_crystal(_toy_dataset(0.0, beta=90.0))[0], [0, 0, 1], atol=1e-15
    )


def test_rotation_helper_is_right_handed():
    np.testing.assert_allclose(rotation(2, 90.0) @ [1, 0, 0], [0, 1, 0], atol=1e-15)
    np.testing.assert_allclose(rotation(0, 90.0) @ [0, 1, 0], [0, 0, 1], atol=1e-15)
    np.testing.assert_allclose(rotation(1, 90.0) @ [0, 0, 1], [1, 0, 0], atol=1e-15)
    assert rotation(0, np.zeros((4, 2))).shape == (4, 2, 3, 3)
