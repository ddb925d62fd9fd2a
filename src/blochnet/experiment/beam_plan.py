"""Which orientations a frame simulation solves, with which beams, and where each compared
row's intensity comes from.

An :class:`Orientation` is one beam direction with its beam set (|g| ≤ g_max, |s_g| ≤
sg_max, the incident beam and every reflection compared there) and the (row, beam, weight)
pairs that read its intensities. :func:`frame_orientations` builds them for the ``frame``
rocking mode (``n_tilts`` per frame), :func:`integrated_orientations` for the
``integrated`` mode (one shared rotation grid); :func:`build_groups` batches orientations
of similar beam count into tensors, solved together by one batched eigendecomposition.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from blochnet.crystal import Cell
from blochnet.dataset import Dataset
from blochnet.experiment.config import SimulationConfig
from blochnet.experiment.rocking import RockingWindows, grid_directions
from blochnet.lattice import reciprocal_matrix
from blochnet.physics.beams import reciprocal_lattice_points
from blochnet.physics.structure_matrix import BeamBatch, group_by_size

# one batch's padded matrices hold at most this many elements (complex128: 16 MiB), so
# that building, solving and differentiating many beam sets does not hold every
# temporary of the whole data set at once. Measured on the bundled quartz (62 beams, 4,057
# orientations, 2 threads), one objective evaluation with its gradient: 2^22 elements
# 6.1 s and 1.82 GB, 2^20 4.1 s and 1.32 GB, 2^18 4.4 s and 1.26 GB; whole quartz
# refinements (eigenvectors kept in single precision): 2^19 peaks 0.15 GB below 2^20 at
# the same wall time within the machine's spread (benchmarks/README.md)
MAX_BATCH_ELEMENTS = 2**19


@dataclass
class Orientation:
    direction: np.ndarray  # (3,) beam direction, crystal frame
    frame: int  # frame whose thickness and orientation correction it uses
    beams: np.ndarray  # (beam, 3) hkl
    columns: np.ndarray  # (pair,) beam column of each compared row
    rows: np.ndarray  # (pair,) used-row index
    weights: np.ndarray  # (pair,)
    neighbour: int = -1  # with ``blend``: (1 − blend)·frame's + blend·neighbour's (-1: frame)
    blend: float = 0.0


@dataclass
class OrientationGroup:
    batch: BeamBatch
    directions: Tensor  # (orient, 3)
    frame: Tensor  # (orient,) frame row of each orientation
    neighbour: Tensor  # (orient,) frame blended in with weight ``blend`` (integrated mode)
    blend: Tensor  # (orient,) weight of ``neighbour``'s thickness and orientation correction
    blended: bool  # any blend > 0
    obs_orient: Tensor  # (m,) orientation row of each (orientation, observation) pair
    obs_beam: Tensor  # (m,) beam column
    obs_row: Tensor  # (m,) index into the used observations
    obs_weight: Tensor  # (m,) weight of the pair in the row's intensity
    # (difference,) row of each of ``batch.differences`` in the plan's table of every
    # batch's differences (:func:`shared_differences`), so U is computed once per pass
    difference_rows: Tensor | None = None


@dataclass
class BeamTable:
    """Candidate beams of a data set: every reciprocal-lattice point up to the larger of
    g_max and the largest compared |g|."""

    hkl: np.ndarray  # (n, 3) int
    g: np.ndarray  # (n, 3) [Å⁻¹], Cartesian crystal frame
    g2: np.ndarray  # (n,) |g|² [Å⁻²]
    candidate: np.ndarray  # (n,) bool: |g| ≤ g_max
    compared: np.ndarray  # (obs,) table index of each compared row's reflection


def beam_table(cell: Cell, hkl_compared: np.ndarray, g_max: float) -> BeamTable:
    """The candidate beams for rows of reflections ``hkl_compared`` (obs, 3)."""
    b = reciprocal_matrix(cell)
    g_obs_max = float(np.linalg.norm(hkl_compared @ b.T, axis=1).max(initial=0.0))
    hkl = reciprocal_lattice_points(cell, max(g_max, g_obs_max))
    g = hkl @ b.T
    g2 = np.sum(g**2, 1)
    return BeamTable(hkl, g, g2, np.sqrt(g2) <= g_max, _row_index(hkl, hkl_compared))


def frame_orientations(
    table: BeamTable,
    directions: np.ndarray,
    frame_of_used: np.ndarray,
    k0: float,
    sg_max: float,
) -> list[Orientation]:
    """``frame`` mode: the tilts ``directions`` (frame, tilt, 3) of each frame, each read by
    the frame's rows with weight 1/tilt (a row is the mean over its frame's tilts)."""
    n_tilts = directions.shape[1]
    out = []
    for f in range(directions.shape[0]):
        rows = np.flatnonzero(frame_of_used == f)
        if len(rows) == 0:
            continue
        keep, position = _beam_sets(table, directions[f], table.compared[rows], k0, sg_max)
        weights = np.full(len(rows), 1.0 / n_tilts)
        for j in range(n_tilts):
            out.append(
                Orientation(
                    directions[f, j],
                    f,
                    table.hkl[keep[:, j]],
                    position[table.compared[rows], j],
                    rows,
                    weights,
                )
            )
    return out


def integrated_orientations(
    table: BeamTable,
    dataset: Dataset,
    windows: RockingWindows,
    frame_of_used: np.ndarray,
    config: SimulationConfig,
) -> list[Orientation]:
    """``integrated`` mode: one orientation per point of the shared rotation grid that some
    row's window covers, read by those rows with weight step / (2Δ) of the row's frame; a
    point between two frames blends their thickness and orientation correction linearly
    (:func:`blochnet.experiment.rocking.grid_frames`)."""
    k0 = 1.0 / dataset.wavelength
    length = windows.stop - windows.start
    pair_row = np.repeat(np.arange(len(frame_of_used)), length)
    pair_grid = np.repeat(windows.start - np.cumsum(length) + length, length) + np.arange(
        int(length.sum())
    )
    semi = dataset.frames.semi_angle[frame_of_used]
    pair_weight = (config.rocking_step / (2 * semi))[pair_row]
    grid, inverse = np.unique(pair_grid, return_inverse=True)
    directions, where = grid_directions(dataset, grid, config.rocking_step)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(grid) + 1))
    out = []
    for j in range(len(grid)):
        pairs = order[bounds[j] : bounds[j + 1]]
        rows = pair_row[pairs]
        keep, position = _beam_sets(
            table, directions[j : j + 1], table.compared[rows], k0, config.sg_max
        )
        out.append(
            Orientation(
                directions[j],
                int(where.lower[j]),
                table.hkl[keep[:, 0]],
                position[table.compared[rows], 0],
                rows,
                pair_weight[pairs],
                int(where.upper[j]),
                float(where.blend[j]),
            )
        )
    return out


def build_groups(
    orientations: list[Orientation], *, dtype: torch.dtype, device
) -> list[OrientationGroup]:
    """Orientations batched by beam count (within 10 %, at most ``MAX_BATCH_ELEMENTS``
    matrix elements per batch), as tensors on ``device``."""
    groups = []
    sizes = [len(o.beams) for o in orientations]
    for members in group_by_size(sizes, tolerance=0.1, max_elements=MAX_BATCH_ELEMENTS):
        chosen = [orientations[i] for i in members]
        batch = BeamBatch.from_lists([o.beams for o in chosen], device=device)
        orient = np.concatenate([np.full(len(o.rows), n) for n, o in enumerate(chosen)])

        def cat(name, chosen=chosen):
            return np.concatenate([getattr(o, name) for o in chosen])

        def long(x):
            return torch.as_tensor(x, dtype=torch.long, device=device)

        groups.append(
            OrientationGroup(
                batch=batch,
                directions=torch.as_tensor(
                    np.array([o.direction for o in chosen]), dtype=dtype, device=device
                ),
                frame=long([o.frame for o in chosen]),
                neighbour=long([o.frame if o.neighbour < 0 else o.neighbour for o in chosen]),
                blend=torch.as_tensor([o.blend for o in chosen], dtype=dtype, device=device),
                blended=any(o.blend > 0 for o in chosen),
                obs_orient=long(orient),
                obs_beam=long(cat("columns")),
                obs_row=long(cat("rows")),
                obs_weight=torch.as_tensor(cat("weights"), dtype=dtype, device=device),
            )
        )
    return groups


def shared_differences(
    groups: list[OrientationGroup],
) -> tuple[Tensor, list[OrientationGroup]]:
    """The distinct differences g − h of every batch (difference, 3), and the batches with
    ``difference_rows`` into them: a simulation computes the potential once for all
    batches (small batches of large beam sets share most of their differences)."""
    if not groups:
        return torch.zeros(0, 3, dtype=torch.long), []
    every = torch.cat([g.batch.differences for g in groups])
    values = every.cpu().numpy()
    # (h, k, l) as one integer: numpy's unique of a vector is fast
    key = _hkl_keys(values, int(np.abs(values).max(initial=0)) + 1)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    table = every[torch.as_tensor(first, device=every.device)]
    inverse = torch.as_tensor(inverse.reshape(-1), device=every.device)
    rows = inverse.split([len(g.batch.differences) for g in groups])
    pairs = zip(groups, rows, strict=True)
    return table, [dataclasses.replace(g, difference_rows=r) for g, r in pairs]


def _beam_sets(table: BeamTable, directions: np.ndarray, compared: np.ndarray, k0, sg_max):
    """Beam sets of orientations ``directions`` (m, 3).

    Returns keep (hkl, m) bool: candidates with |s_g| ≤ ``sg_max``, the incident beam and
    the compared reflections (rows ``compared`` of the table); and position (hkl, m): each
    kept beam's column in its orientation's beam set.
    """
    s = -(2 * k0 * table.g @ directions.T + table.g2[:, None]) / (2 * k0)  # (hkl, m)
    keep = table.candidate[:, None] & (np.abs(s) <= sg_max)
    keep[0] = True  # the incident beam
    keep[compared] = True
    return keep, np.cumsum(keep, axis=0) - 1


def _row_index(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Index in ``table`` (n, 3) int of every row of ``rows`` (m, 3); all must be present."""
    span = int(max(np.abs(table).max(initial=0), np.abs(rows).max(initial=0))) + 1
    keys = _hkl_keys(table, span)
    order = np.argsort(keys)
    return order[np.searchsorted(keys, _hkl_keys(rows, span), sorter=order)]


def _hkl_keys(hkl: np.ndarray, span: int) -> np.ndarray:
    """One integer per row of ``hkl`` (n, 3), distinct for distinct rows whose indices lie
    within ±``span``, in the rows' lexicographic order."""
    base = 2 * span + 1
    return ((hkl[:, 0] + span) * base + hkl[:, 1] + span) * base + hkl[:, 2] + span
