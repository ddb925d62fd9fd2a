"""Frames shared among processes: the shares, and plans whose intensities and forward-mode
Jacobians, summed over the processes, are those of one process."""

from __future__ import annotations

import dataclasses
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist

from blochnet.examples import example_path
from blochnet.experiment.frame_tangents import frame_jacobian
from blochnet.experiment.prepared import prepare
from blochnet.experiment.shards import Processes, frame_shares
from blochnet.io.cif import read_structure
from refinement.small_data import SIMULATION, small_quartz_frames

FRAME = SIMULATION
INTEGRATED = FRAME.model_copy(update={"rocking": "integrated"})


@pytest.mark.parametrize(
    "costs, size",
    [
        ([1, 1, 100], 3),
        ([100, 1, 1], 2),
        ([1] * 10, 3),
        ([0, 0, 5, 0, 5, 0], 2),
        ([3, 0, 0, 1, 1, 1], 4),
        ([0, 9, 0, 0, 0, 1], 3),
        ([0, 0, 0], 2),
        ([5, 5], 4),
    ],
)
def test_frame_shares_are_contiguous_runs_each_with_work(costs, size):
    costs = np.array(costs, dtype=float)
    share = frame_shares(costs, size)
    assert share[0] == 0 and np.all(np.diff(share) >= 0) and np.all(np.diff(share) <= 1)
    runs = min(size, int((costs > 0).sum()))
    assert share.max() == max(runs - 1, 0)
    for r in range(runs):
        assert costs[share == r].sum() > 0


def test_frame_shares_balance_the_cost_within_one_frame():
    rng = np.random.default_rng(4)
    for size in (2, 3, 7):
        costs = rng.random(126) ** 3 * 100
        share = frame_shares(costs, size)
        totals = np.bincount(share, weights=costs, minlength=size)
        assert totals.max() - totals.min() <= 2 * costs.max()


@pytest.fixture(scope="module")
def one_process_group():
    """A process group of one (the sums over processes are then the process's own)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def quartz():
    crystal = read_structure(example_path("quartz"))
    return crystal, small_quartz_frames(crystal, seed=2)


@pytest.mark.parametrize("settings", [FRAME, INTEGRATED], ids=["frame", "integrated"])
def test_the_shares_of_three_processes_sum_to_the_intensities_of_one_and_so_do_their_sample_bases(
    quartz, one_process_group, settings
):
    crystal, dataset = quartz
    n = dataset.n_frames
    thickness = torch.linspace(300, 500, n, dtype=torch.float64)[:, None].repeat(1, 2)
    weights = torch.tensor([[0.3, 0.7]], dtype=torch.float64).repeat(n, 1)
    rotations = torch.from_numpy(np.random.default_rng(1).normal(0, 1e-3, (n, 3)))

    other = torch.tensor([[0.9, 0.1]], dtype=torch.float64).repeat(n, 1)

    def simulate(processes):
        sim = prepare(crystal, dataset, settings, processes=processes).simulator()
        atoms = sim.model.atom_tensors()
        ic = sim.intensities(atoms, thickness, rotations=rotations, weights=weights)
        # the intensities at the samples per (row, frame) serve any weights on them
        basis = sim.sample_basis(atoms, thickness, rotations=rotations)
        for w, expected in ((weights, ic), (other, None)):
            if expected is None:
                expected = sim.intensities(atoms, thickness, rotations=rotations, weights=w)
            torch.testing.assert_close(
                basis.intensities(w), expected, rtol=1e-12, atol=1e-14 * float(ic.max())
            )
        return sim, ic

    whole_sim, whole = simulate(None)
    total = torch.zeros_like(whole)
    solved = 0
    for rank in range(3):
        sim, own = simulate(Processes(rank, 3))  # a group of one: only its own rows
        mine = np.isin(sim.frame_of_used, sim.plan.own_frames)
        assert torch.all(own[torch.from_numpy(~mine)] == 0)
        assert torch.all(own[torch.from_numpy(mine)] > 0)
        total += own
        solved += sim.n_orientations
    # (batches of other sizes: other padding, rounding of order 1e-16 of the largest)
    torch.testing.assert_close(total, whole, rtol=1e-12, atol=1e-14 * float(whole.max()))
    assert solved >= whole_sim.n_orientations  # (shared rotation samples solved twice)
    if settings.rocking == "frame":
        assert solved == whole_sim.n_orientations


def test_the_shares_of_two_processes_sum_to_the_forward_mode_jacobian_of_one(
    quartz, one_process_group
):
    crystal, dataset = quartz
    n = dataset.n_frames
    thickness = torch.full((n, 1), 450.0, dtype=torch.float64)
    weights = torch.ones(n, 1, dtype=torch.float64)

    def jacobian(processes):
        sim = prepare(crystal, dataset, INTEGRATED, processes=processes).simulator()
        atoms = sim.model.atom_tensors()
        tangents = []
        for i in range(len(atoms.xyz)):  # each atom moved along x, y and z at once
            xyz = torch.zeros_like(atoms.xyz)
            xyz[i] = 1e-2
            tangents.append(dataclasses.replace(atoms, xyz=xyz, uij=torch.zeros_like(atoms.uij)))
        return frame_jacobian(sim, atoms, tangents, thickness, weights, orientation=True)

    whole = jacobian(None)
    parts = [jacobian(Processes(rank, 2)) for rank in range(2)]
    for field in ("intensities", "structure", "orientation"):
        summed = sum(getattr(p, field) for p in parts)
        expected = getattr(whole, field)
        scale = float(expected.abs().max())
        torch.testing.assert_close(summed, expected, rtol=1e-12, atol=1e-13 * scale)
