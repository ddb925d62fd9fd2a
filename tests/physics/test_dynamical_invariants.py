"""Things that must hold for the full forward model on real crystals."""

import math

import numpy as np
import pytest
import torch

from blochnet.examples import example_path
from blochnet.experiment.pattern import simulate_pattern
from blochnet.io.cif import read_structure
from blochnet.physics.crystal_model import CrystalModel


@pytest.fixture(scope="module")
def silicon():
    return read_structure(example_path("silicon"))


@pytest.fixture(scope="module")
def quartz():
    return read_structure(example_path("quartz"))


def intensities(pattern):
    return pattern.intensities.detach().numpy()


@pytest.mark.parametrize(
    ("name", "zone", "normal"),
    [
        ("silicon", (1, 1, 0), None),
        ("silicon", (1.0, 1.0, 0.12), (1, 1, 0)),
        ("quartz", (0, 0, 1), None),
        ("quartz", (0.31, -0.52, 1.07), (0, 0, 1)),
    ],
)
def test_intensities_sum_to_one_without_absorption(name, zone, normal, request):
    crystal = request.getfixturevalue(name)
    pattern = simulate_pattern(crystal, zone, [10, 200, 800, 2000], normal=normal, g_max=2.0)
    np.testing.assert_allclose(intensities(pattern).sum(1), 1.0, atol=1e-10, rtol=0)


def test_absorption_only_removes_intensity(quartz):
    pattern = simulate_pattern(
        quartz, (0.2, 0.1, 1), np.linspace(0, 1000, 6), absorption=0.08, solver="eig"
    )
    total = intensities(pattern).sum(1)
    assert total[0] == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.diff(total) < 0)


@pytest.mark.parametrize("zone", [(1, 1, 0.3), (2.1, 0.4, 1.3)])
def test_thin_crystal_follows_the_kinematical_limit(silicon, zone):
    t = 1.0  # multiple scattering adds a correction ∝ t relative to the kinematical term
    pattern = simulate_pattern(silicon, zone, [t], g_max=1.5, sg_max=0.04)
    model = CrystalModel(silicon, voltage=200e3)
    u_g = model.potential(torch.as_tensor(pattern.hkl), model.atom_tensors()).abs().numpy()
    s = pattern.excitation_error
    expected = (math.pi * u_g / pattern.k) ** 2 * np.sinc(s * t) ** 2 * t**2
    strong = (expected > 1e-9) & (np.abs(pattern.hkl).sum(1) > 0)
    assert strong.sum() > 10
    np.testing.assert_allclose(intensities(pattern)[0, strong], expected[strong], rtol=0.01)


def _beam_equivalents(crystal, zone, hkl):
    """Pairs (i, j) of beams related by an operator that leaves the beam direction fixed."""
    index = {tuple(h): i for i, h in enumerate(hkl)}
    pairs = []
    for op in crystal.operators:
        if not np.array_equal(op.rotation @ np.asarray(zone), np.asarray(zone)):
            continue
        for i, h in enumerate(hkl):
            j = index.get(tuple(np.asarray(h) @ op.rotation))
            if j is not None and j != i:
                pairs.append((i, j))
    return pairs


@pytest.mark.parametrize(
    ("name", "zone"), [("silicon", (1, 1, 0)), ("quartz", (0, 0, 1)), ("silicon", (1, 1, 1))]
)
def test_symmetry_equivalent_beams_have_equal_intensities(name, zone, request):
    crystal = request.getfixturevalue(name)
    pattern = simulate_pattern(crystal, zone, [100, 400, 1200], g_max=2.0)
    pairs = _beam_equivalents(crystal, zone, pattern.hkl)
    assert len(pairs) > 20
    i, j = np.array(pairs).T
    values = intensities(pattern)
    np.testing.assert_allclose(values[:, i], values[:, j], atol=1e-10, rtol=0)


def test_friedel_pairs_are_equal_at_a_zone_axis_of_a_centrosymmetric_crystal(silicon):
    pattern = simulate_pattern(silicon, (1, 1, 0), [150, 600], g_max=2.0, sg_max=0.06)
    index = {tuple(h): i for i, h in enumerate(pattern.hkl)}
    pairs = [(i, index[tuple(-h)]) for i, h in enumerate(pattern.hkl) if tuple(-h) in index]
    i, j = np.array(pairs).T
    np.testing.assert_allclose(intensities(pattern)[:, i], intensities(pattern)[:, j], atol=1e-10)


@pytest.mark.parametrize("zone", [(0.3, 0.2, 1), (1, 0.1, 0.2)])
def test_fast_and_exact_absorption_agree_for_small_kappa_off_zone_axes(quartz, zone):
    crystal = quartz
    kwargs = dict(g_max=2.0, sg_max=0.04, absorption=0.05)
    fast = simulate_pattern(crystal, zone, [100, 500], solver="eigh", **kwargs)
    exact = simulate_pattern(crystal, zone, [100, 500], solver="eig", **kwargs)
    assert np.abs(intensities(fast) - intensities(exact)).max() < 1e-3
    assert intensities(exact).sum(1)[1] < 0.95  # absorption is not negligible here


def test_float32_matches_float64(quartz):
    kwargs = dict(g_max=1.8, sg_max=0.03)
    double = simulate_pattern(quartz, (0.3, 0.2, 1), [300, 800], **kwargs)
    single = simulate_pattern(quartz, (0.3, 0.2, 1), [300, 800], dtype=torch.float32, **kwargs)
    assert single.intensities.dtype == torch.float32
    assert np.abs(intensities(single) - intensities(double)).max() < 2e-4
