"""Frame simulation, the reflection-selection rule and thickness scans on real data."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from blochnet.cli.main import app
from blochnet.dataset import structure_in_data_cell
from blochnet.experiment.config import SelectionRule, SimulationConfig
from blochnet.experiment.evaluate import evaluate
from blochnet.experiment.frame_tangents import frame_jacobian
from blochnet.experiment.frames import FrameSimulator, rotation_matrices
from blochnet.experiment.geometry import beam_directions, goniometer_axis_crystal
from blochnet.experiment.pattern import simulate_pattern
from blochnet.experiment.rocking import (
    grid_directions,
    grid_frames,
    resolve_rocking,
    rocking_directions,
    turned_beam,
)
from blochnet.experiment.selection import select_reflections
from blochnet.io.cif import read_structure
from blochnet.io.pets import read_pets
from blochnet.lattice import direct_matrix
from conftest import dataset_path, structure_path


def _load(name):
    dataset = read_pets(dataset_path(name))
    crystal = read_structure(structure_path(name))
    return structure_in_data_cell(crystal, dataset), dataset


def _first_frames(dataset, n):
    """The data set restricted to its first n frames and their reflections."""
    keep = np.isin(dataset.reflections.frame_id, dataset.frames.id[:n])
    frames, refl = dataset.frames.select(slice(n)), dataset.reflections.select(keep)
    return dataclasses.replace(dataset, frames=frames, reflections=refl)


@pytest.mark.parametrize("name", ["quartz", "glycine"])
def test_every_reflection_row_is_used_or_excluded_with_a_reason(name):
    _, dataset = _load(name)
    selection = select_reflections(dataset, SelectionRule())
    assert len(selection.used) == len(dataset.reflections)
    assert np.all(selection.used == (selection.reason == ""))
    assert sum(selection.counts().values()) == len(dataset.reflections)
    assert 0 < selection.used.sum() < len(dataset.reflections)


def test_selection_rule_follows_its_definition():
    _, dataset = _load("quartz")
    rule = SelectionRule(g_max=1.2, rsg_max=0.5)
    selection = select_reflections(dataset, rule)
    g = np.linalg.norm(dataset.reflections.hkl @ np.linalg.inv(direct_matrix(dataset.cell)), axis=1)
    expected = (g <= 1.2) & (selection.rsg <= 0.5)
    assert np.array_equal(selection.used, expected)


def test_omitted_reflections_leave_every_frame_and_say_why():
    _, dataset = _load("quartz")
    hkl = dataset.reflections.hkl
    plain = select_reflections(dataset, SelectionRule())
    target = tuple(int(i) for i in hkl[np.flatnonzero(plain.used)[0]])
    rule = SelectionRule(omit=[target, (0, 0, 8)])
    selection = select_reflections(dataset, rule)
    listed = np.all(hkl == np.array(target), axis=1) | np.all(hkl == [0, 0, 8], axis=1)
    assert listed.sum() >= 2 and not selection.used[listed].any()
    assert set(selection.reason[listed]) == {"omitted by hand (selection.omit)"}
    # nothing else changes: not the equivalents, not the other rows
    assert np.array_equal(selection.used[~listed], plain.used[~listed])
    assert "not omitted by hand (" in selection.rule and "0 0 8" in selection.rule


def test_an_omitted_reflection_the_data_lack_is_reported_and_origin_refused():
    _, dataset = _load("quartz")
    with pytest.warns(UserWarning, match="selection.omit lists 0 0 99, which no row"):
        select_reflections(dataset, SelectionRule(omit=[(0, 0, 99)]))
    with pytest.raises(ValidationError, match="0 0 0"):
        SelectionRule(omit=[(0, 0, 0)])
    with pytest.raises(ValidationError):
        SelectionRule(omit=[(1, 2)])


def test_continuous_rotation_samples_turn_about_the_goniometer_axis():
    _, dataset = _load("glycine")
    n = 6
    directions = rocking_directions(dataset, n)
    axis = goniometer_axis_crystal(dataset)
    centre = beam_directions(dataset)
    assert np.allclose(np.linalg.norm(directions, axis=-1), 1)
    # every sample keeps its angle to the axis; the samples span ±semi-angle at midpoints
    assert np.allclose(
        np.einsum("fti,fi->ft", directions, axis),
        np.einsum("fi,fi->f", centre, axis)[:, None],
        atol=1e-12,
    )
    first_last = np.degrees(np.arccos(np.einsum("fi,fi->f", directions[:, 0], directions[:, -1])))
    sin_axis = np.sqrt(1 - np.einsum("fi,fi->f", centre, axis) ** 2)
    span = 2 * dataset.frames.semi_angle * (n - 1) / n
    assert np.allclose(first_last, span * sin_axis, rtol=1e-3)


def test_one_sampled_orientation_reproduces_the_single_pattern_calculation():
    crystal, dataset = _load("quartz")
    dataset = _first_frames(dataset, 2)
    config = SimulationConfig(rocking="frame", n_tilts=1, g_max=1.6, sg_max=0.05)
    simulator = FrameSimulator.build(crystal, dataset, config)
    t = torch.tensor([[300.0, 700.0]] * 2, dtype=torch.float64)
    frame_values = simulator.intensities(simulator.model.atom_tensors(), t)
    uvw = np.linalg.solve(direct_matrix(crystal.cell), beam_directions(dataset)[0])
    pattern = simulate_pattern(
        crystal, uvw, [300.0, 700.0], voltage=dataset.voltage, g_max=1.6, sg_max=0.05
    )
    index = {tuple(h): i for i, h in enumerate(pattern.hkl)}
    rows = np.flatnonzero(simulator.frame_of_used == 0)
    hkl = dataset.reflections.hkl[simulator.used_rows[rows]]
    expected = pattern.intensities.detach().numpy()[:, [index[tuple(h)] for h in hkl]].T
    np.testing.assert_allclose(frame_values[rows].detach().numpy(), expected, atol=1e-12)


def test_thickness_samples_per_frame_are_independent():
    crystal, dataset = _load("quartz")
    dataset = _first_frames(dataset, 3)
    simulator = FrameSimulator.build(crystal, dataset, SimulationConfig(rocking="frame", n_tilts=3))
    atoms = simulator.model.atom_tensors()
    both = simulator.intensities(atoms, torch.tensor([[400.0, 900.0]] * 3, dtype=torch.float64))
    mixed = simulator.intensities(
        atoms, torch.tensor([[400.0], [900.0], [400.0]], dtype=torch.float64)
    )
    frame = simulator.frame_of_used
    expected = torch.where(torch.as_tensor(frame == 1), both[:, 1], both[:, 0])
    assert torch.allclose(mixed[:, 0], expected, atol=1e-14)


def test_gradients_flow_from_frame_intensities_to_structure_and_thickness():
    crystal, dataset = _load("quartz")
    two_frames = _first_frames(dataset, 2)
    simulator = FrameSimulator.build(crystal, two_frames, SimulationConfig(n_tilts=2))
    atoms = simulator.model.atom_tensors()
    atoms.xyz.requires_grad_()
    thickness = torch.tensor([[500.0], [520.0]], dtype=torch.float64, requires_grad=True)
    simulator.intensities(atoms, thickness).sum().backward()
    assert torch.all(torch.isfinite(atoms.xyz.grad)) and atoms.xyz.grad.abs().sum() > 0
    assert torch.all(thickness.grad != 0)


@pytest.mark.parametrize("rocking", ["frame", "integrated"])
def test_recomputing_batches_in_the_backward_pass_gives_the_same_gradients(rocking):
    crystal, dataset = _load("quartz")
    three = _first_frames(dataset, 3)
    config = SimulationConfig(n_tilts=3, rocking=rocking)
    simulator = FrameSimulator.build(crystal, three, config)
    assert len(simulator.groups) > 1 and simulator.kept_bytes() > 0

    def gradients(recompute):
        simulator.recompute = recompute
        atoms = simulator.model.atom_tensors()
        atoms.xyz.requires_grad_()
        atoms.uij.requires_grad_()
        thickness = torch.tensor([[400.0, 600.0]] * 3, dtype=torch.float64, requires_grad=True)
        weights = torch.tensor([[0.4, 0.6]] * 3, dtype=torch.float64, requires_grad=True)
        rotations = torch.full((3, 3), 1e-3, dtype=torch.float64, requires_grad=True)
        ic = simulator.intensities(atoms, thickness, weights=weights, rotations=rotations)
        (ic * torch.linspace(1, 2, len(ic), dtype=ic.dtype)).sum().backward()
        return ic.detach(), [x.grad for x in (atoms.xyz, atoms.uij, thickness, weights, rotations)]

    kept, recomputed = gradients(False), gradients(True)
    torch.testing.assert_close(recomputed[0], kept[0], rtol=0, atol=0)
    for a, b in zip(recomputed[1], kept[1], strict=True):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-13, atol=0)


def test_quartz_thickness_scan_has_an_interior_minimum():
    crystal, dataset = _load("quartz")
    result = evaluate(
        crystal, dataset, np.linspace(200, 1800, 9), config=SimulationConfig(n_tilts=21)
    )
    r1 = np.array([m.r1_obs for m in result.merit])
    assert 0 < result.best < len(r1) - 1
    assert r1[0] > r1[result.best] + 0.01 and r1[-1] > r1[result.best] + 0.05
    assert result.best_merit.n_obs > 800


def test_evaluate_command_prints_json_with_counts(tmp_path):
    crystal, dataset = _load("quartz")
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(structure_path("quartz")),
            str(dataset_path("quartz")),
            "--thickness",
            "600",
            "--n-tilts",
            "3",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    counts = report["selection"]["counts"]
    assert sum(counts.values()) == len(dataset.reflections)
    assert report["best"]["n_all"] == counts["used"]


def test_evaluate_command_refuses_two_thickness_options():
    result = CliRunner().invoke(
        app,
        ["evaluate", "a.cif", "b.cif_pets", "--thickness", "5", "--thickness-scan", "1", "2", "3"],
    )
    assert result.exit_code == 2


def test_orientation_corrections_rotate_the_beam_and_carry_gradients():
    crystal, dataset = _load("quartz")
    dataset = _first_frames(dataset, 2)
    simulator = FrameSimulator.build(
        crystal, dataset, SimulationConfig(rocking="frame", n_tilts=1, sg_max=0.05)
    )
    atoms = simulator.model.atom_tensors()
    t = torch.tensor([[500.0], [500.0]], dtype=torch.float64)
    zero = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    unrotated = simulator.intensities(atoms, t, rotations=zero)
    assert torch.equal(unrotated, simulator.intensities(atoms, t))
    unrotated.sum().backward()
    assert torch.all(torch.isfinite(zero.grad)) and zero.grad.abs().sum() > 0
    # a 0.05° turn about the beam itself changes nothing; one about another axis does
    beam = torch.as_tensor(beam_directions(dataset), dtype=torch.float64)
    about_beam = simulator.intensities(atoms, t, rotations=np.radians(0.05) * beam)
    assert torch.allclose(about_beam, unrotated, atol=1e-6)
    other = torch.cross(beam, torch.tensor([[0.0, 0.0, 1.0]] * 2, dtype=torch.float64), dim=1)
    tilted = simulator.intensities(atoms, t, rotations=np.radians(0.05) * other)
    assert (tilted - unrotated).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["quartz", "glycine"])
def test_rows_repeating_one_intensity_per_reflection_are_whole_rocking_curves(name):
    _, dataset = _load(name)
    assert dataset.repeats_intensities()
    assert resolve_rocking(SimulationConfig(), dataset) == "integrated"
    assert resolve_rocking(SimulationConfig(rocking="frame"), dataset) == "frame"
    changed = dataclasses.replace(
        dataset,
        reflections=dataclasses.replace(
            dataset.reflections,
            intensity=dataset.reflections.intensity
            * (1 + 1e-3 * np.arange(len(dataset.reflections))),
        ),
    )
    assert not changed.repeats_intensities()
    assert resolve_rocking(SimulationConfig(), changed) == "frame"


def test_rotation_grid_points_turn_about_the_axis_and_blend_the_frames_on_either_side():
    _, dataset = _load("glycine")
    step = 0.001  # the frame angles (three decimals) lie on the grid
    alpha = dataset.frames.alpha
    grid = np.round(alpha / step).astype(int)
    directions, where = grid_directions(dataset, grid, step)
    assert np.allclose(where.lower + where.blend, np.arange(dataset.n_frames))  # frames in order
    # at its own angle a frame's sample is its beam direction
    assert np.allclose(directions, beam_directions(dataset), atol=1e-12)
    # part-way to the next frame: each frame's orientation turned about its axis by
    # φ − α, blended linearly by angle (this file's frames, refined separately, disagree
    # there by up to 0.25°: turning the wrong way would leave them a whole step apart)
    d, a = beam_directions(dataset), goniometer_axis_crystal(dataset)
    between = np.round((alpha[:-1] + 0.3 * np.diff(alpha)) / step).astype(int)
    phi = between * step
    fraction = ((phi - alpha[:-1]) / np.diff(alpha))[:, None]
    from_left = turned_beam(d[:-1], a[:-1], np.radians(phi - alpha[:-1]))
    from_right = turned_beam(d[1:], a[1:], np.radians(phi - alpha[1:]))
    cosine = np.clip(np.einsum("fi,fi->f", from_left, from_right), -1, 1)
    assert np.all(np.degrees(np.arccos(cosine)) < 0.25)
    blended = (1 - fraction) * from_left + fraction * from_right
    blended /= np.linalg.norm(blended, axis=1, keepdims=True)
    got, where = grid_directions(dataset, between, step)
    assert np.allclose(got, blended, atol=1e-12)
    assert np.array_equal(where.lower, np.arange(dataset.n_frames - 1))
    assert np.array_equal(where.upper, np.arange(1, dataset.n_frames))
    assert np.allclose(where.blend, fraction[:, 0]) and np.all(abs(where.blend - 0.3) < 0.01)
    # continuous along the whole scan: no jump between neighbouring grid points, and
    # beyond the first and last frames their own orientation turned
    fine = np.arange(int(alpha[0] / step) - 500, int(alpha[-1] / step) + 500, 10)
    path, _ = grid_directions(dataset, fine, step)
    jump = np.degrees(np.arccos(np.clip(np.einsum("fi,fi->f", path[1:], path[:-1]), -1, 1)))
    assert jump.max() < 10 * step * 1.05
    ends = grid_frames(dataset, fine[[0, -1]], step)
    assert list(ends.lower) == list(ends.upper) == [0, dataset.n_frames - 1]
    assert np.all(ends.blend == 0)


def test_integrated_rows_sum_their_reflection_over_the_grid_points_of_their_window():
    crystal, dataset = _load("quartz")
    dataset = _first_frames(dataset, 1)
    config = SimulationConfig(
        rocking="integrated", rocking_step=0.1, rocking_window=0.004, g_max=1.6, sg_max=0.05
    )
    simulator = FrameSimulator.build(crystal, dataset, config)
    assert simulator.rocking == "integrated" and simulator.n_used > 5
    t = [300.0, 700.0]
    values = simulator.intensities(
        simulator.model.atom_tensors(), torch.tensor([t], dtype=torch.float64)
    ).numpy()
    windows = simulator.windows
    semi = dataset.frames.semi_angle[0]
    for row in range(0, simulator.n_used, max(1, simulator.n_used // 4)):
        hkl = tuple(dataset.reflections.hkl[simulator.used_rows[row]])
        expected = np.zeros(2)
        grid = np.arange(windows.start[row], windows.stop[row])
        assert 1 <= len(grid) < 60
        directions, _ = grid_directions(dataset, grid, config.rocking_step)
        for d in directions:
            uvw = np.linalg.solve(direct_matrix(crystal.cell), d)
            pattern = simulate_pattern(
                crystal, uvw, t, voltage=dataset.voltage, g_max=1.6, sg_max=0.05
            )
            index = {tuple(h): i for i, h in enumerate(pattern.hkl)}
            expected += pattern.intensities.detach().numpy()[:, index[hkl]]
        expected *= config.rocking_step / (2 * semi)
        np.testing.assert_allclose(values[row], expected, rtol=1e-9, atol=1e-14)


def test_integrated_samples_between_frames_blend_their_thickness_and_correction():
    """A rocking curve crossing a frame boundary sees the thickness and the orientation
    correction change linearly from one frame's to the next's, not in a step."""
    crystal, dataset = _load("quartz")
    dataset = _first_frames(dataset, 2)
    # every beam |g| ≤ 1 Å⁻¹ in every beam set (sg_max beyond reach), so that the
    # corrected orientations have the same beams as the single-pattern calculations
    config = SimulationConfig(
        rocking="integrated",
        rocking_step=0.1,
        rocking_window=0.004,
        g_max=1.0,
        sg_max=10.0,
        selection=SelectionRule(g_max=1.0),
    )
    simulator = FrameSimulator.build(crystal, dataset, config)
    thickness = np.array([[300.0], [700.0]])
    turn = np.array([[0.0, 0.0, 0.0], [0.002, -0.001, 0.005]])  # [rad]
    values = simulator.intensities(
        simulator.model.atom_tensors(),
        torch.tensor(thickness),
        rotations=torch.tensor(turn),
    ).numpy()[:, 0]
    windows = simulator.windows
    semi = dataset.frames.semi_angle[0]
    blended_rows = 0
    for row in range(simulator.n_used):
        grid = np.arange(windows.start[row], windows.stop[row])
        where = grid_frames(dataset, grid, config.rocking_step)
        if not np.any((where.blend > 0.2) & (where.blend < 0.8)):
            continue
        blended_rows += 1
        hkl = tuple(dataset.reflections.hkl[simulator.used_rows[row]])
        directions, _ = grid_directions(dataset, grid, config.rocking_step)
        expected = 0.0
        for d, lo, hi, b in zip(directions, where.lower, where.upper, where.blend, strict=True):
            t = (1 - b) * thickness[lo, 0] + b * thickness[hi, 0]
            vector = (1 - b) * turn[lo] + b * turn[hi]
            d = rotation_matrices(torch.tensor(vector)).numpy() @ d
            uvw = np.linalg.solve(direct_matrix(crystal.cell), d)
            pattern = simulate_pattern(
                crystal, uvw, [t], voltage=dataset.voltage, g_max=1.0, sg_max=10.0
            )
            index = {tuple(h): i for i, h in enumerate(pattern.hkl)}
            expected += pattern.intensities.detach().numpy()[0, index[hkl]]
        expected *= config.rocking_step / (2 * semi)
        np.testing.assert_allclose(values[row], expected, rtol=1e-9, atol=1e-14)
        if blended_rows == 3:
            break
    assert blended_rows == 3
    # the per-frame Jacobian structure knows that such rows depend on both frames
    pairs = {tuple(p) for p in simulator.dependencies}
    assert any((r, 0) in pairs and (r, 1) in pairs for r in range(simulator.n_used))


@pytest.mark.parametrize(("name", "frames"), [("quartz", 4), ("glycine", 3)])
def test_forward_mode_jacobian_equals_the_reverse_mode_gradient(name, frames):
    """Every column of frame_jacobian (structure directions and each frame's
    rotation vector) contracts with a probe vector to the backward pass's gradient:
    complex (quartz, whole rocking curves blending neighbouring frames) and real
    (glycine, centrosymmetric; frame rows) structure matrices."""
    crystal, dataset = _load(name)
    dataset = _first_frames(dataset, frames)
    config = SimulationConfig(g_max=1.4, sg_max=0.01, n_tilts=3, selection=SelectionRule(g_max=1.0))
    simulator = FrameSimulator.build(crystal, dataset, config)
    assert simulator.n_used > 10
    atoms = simulator.model.atom_tensors()
    n_atoms = atoms.xyz.shape[0]
    gen = torch.Generator().manual_seed(4)
    tangents = []
    for k in range(3):  # random changes of coordinates, Uij and occupancies
        tangents.append(dataclasses.replace(
            atoms,
            xyz=torch.randn(n_atoms, 3, generator=gen, dtype=torch.float64) * 1e-2,
            uij=torch.randn(n_atoms, 6, generator=gen, dtype=torch.float64) * 1e-3 * (k > 0),
            occupancy=torch.randn(n_atoms, generator=gen, dtype=torch.float64) * (k == 2),
        ))  # fmt: skip
    thickness = torch.linspace(200.0, 900.0, 5, dtype=torch.float64).expand(frames, -1)
    weights = torch.softmax(torch.randn(frames, 5, generator=gen, dtype=torch.float64), -1)
    turn = torch.randn(frames, 3, generator=gen, dtype=torch.float64) * 1e-3
    jac = frame_jacobian(
        simulator, atoms, tangents, thickness, weights, rotations=turn, orientation=True
    )
    rotations = turn.clone().requires_grad_(True)
    leaves = [atoms.xyz, atoms.uij, atoms.occupancy]
    leaves = [x.clone().requires_grad_(True) for x in leaves]
    moved = dataclasses.replace(atoms, xyz=leaves[0], uij=leaves[1], occupancy=leaves[2])
    ic = simulator.intensities(moved, thickness, rotations=rotations, weights=weights)
    torch.testing.assert_close(jac.intensities, ic.detach(), rtol=1e-12, atol=1e-15)
    probe = torch.randn(len(ic), generator=gen, dtype=torch.float64)
    (probe * ic).sum().backward()
    for k, tangent in enumerate(tangents):
        reverse = sum(
            (leaf.grad * change).sum()
            for leaf, change in zip(leaves, (tangent.xyz, tangent.uij, tangent.occupancy),
                                    strict=True)
        )  # fmt: skip
        torch.testing.assert_close(probe @ jac.structure[:, k], reverse, rtol=1e-9, atol=1e-12)
    forward_turn = torch.einsum("o,ofc->fc", probe, jac.orientation)
    torch.testing.assert_close(forward_turn, rotations.grad, rtol=1e-9, atol=1e-12)
    assert float(rotations.grad.abs().max()) > 0 and float(jac.structure.abs().max()) > 0


def test_the_potential_in_pieces_equals_the_whole_with_its_gradient(monkeypatch):
    from blochnet.experiment import frames
    from blochnet.physics.crystal_model import CrystalModel

    model = CrystalModel(read_structure(structure_path("quartz")), voltage=200.0)
    hkl = torch.cartesian_prod(*[torch.arange(-4, 5)] * 3)
    monkeypatch.setattr(frames, "_POTENTIAL_ELEMENTS", 50)  # 50 // 9 sites: 5 per piece

    def potential(compute):
        atoms = model.atom_tensors()
        atoms.xyz.requires_grad_()
        u = compute(model, hkl, atoms)
        (u.abs() ** 2).sum().backward()
        return u.detach(), atoms.xyz.grad

    pieces = potential(frames.potential_in_chunks)
    whole = potential(lambda m, h, a: m.potential(h, a))
    for a, b in zip(pieces, whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14 * float(b.abs().max()))
