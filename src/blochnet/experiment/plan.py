"""The frame plan: everything a frame simulation needs that the structure does not change.

A :class:`FramePlan` depends only on the cell and the data set (orientations, frames,
observations) and on the simulation settings: which observations are compared
(:mod:`blochnet.experiment.selection`), how each row integrates its rocking curve
(:mod:`blochnet.experiment.rocking`), which orientations are solved with which beam sets,
batched by size (:mod:`blochnet.experiment.beam_plan`), and which frames each row depends
on. :func:`build_plan` makes one; a run builds it once per data set and settings and hands
it to every stage (both hands of a non-centrosymmetric structure share it: inverting the
structure keeps the cell). :class:`~blochnet.experiment.frames.FrameSimulator` takes a
plan and a crystal model and only computes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from blochnet.dataset import Dataset
from blochnet.experiment.beam_plan import (
    Orientation,
    OrientationGroup,
    beam_table,
    build_groups,
    frame_orientations,
    integrated_orientations,
    shared_differences,
)
from blochnet.experiment.config import SimulationConfig
from blochnet.experiment.rocking import (
    RockingWindows,
    resolve_rocking,
    rocking_directions,
    rocking_windows,
)
from blochnet.experiment.selection import ReflectionSelection, select_reflections
from blochnet.experiment.shards import Processes, frame_shares


@dataclass(frozen=True, eq=False)
class FramePlan:
    """What to solve for one data set at one set of simulation settings.

    Attributes
    ----------
    dataset : the data set (its cell is the cell of every simulation with this plan).
    settings : the simulation settings the plan was built for (the solver, absorption and
        scattering table are read from here by the simulator).
    rocking : ``"frame"`` or ``"integrated"`` (``settings.rocking`` resolved for the data).
    selection : which rows are compared, and why not the others.
    windows : integration window of every used row (integrated mode), else None.
    used_rows : (obs,) rows of the reflection table that are simulated.
    frame_of_used : (obs,) frame row of each.
    groups : orientations batched by beam count, as tensors.
    dependencies : (pair, 2) (used row, frame) whenever the row's intensity uses that
        frame's orientation or thickness (its own frame; in integrated mode also neighbours).
    frames : the frames whose rows are simulated (None: every frame).
    processes : the processes the frames are shared among (see
        :mod:`blochnet.experiment.shards`): ``groups`` then hold the orientations that
        this process's frames' rows read, and every other field the whole data set's.
    own_frames : the frame rows this process simulates (None: all of ``frames``).
    differences : (difference, 3) every distinct g − h of the batches (each batch's
        ``difference_rows`` point into it).
    """

    dataset: Dataset
    settings: SimulationConfig
    rocking: str
    selection: ReflectionSelection
    windows: RockingWindows | None
    used_rows: np.ndarray
    frame_of_used: np.ndarray
    groups: tuple[OrientationGroup, ...]
    dependencies: np.ndarray
    frames: np.ndarray | None = None
    processes: Processes = Processes()
    own_frames: np.ndarray | None = None
    differences: torch.Tensor | None = None

    @property
    def n_used(self) -> int:
        return len(self.used_rows)

    @property
    def n_orientations(self) -> int:
        return sum(int(g.batch.mask.shape[0]) for g in self.groups)


def build_plan(
    dataset: Dataset,
    settings: SimulationConfig | None = None,
    *,
    frames: np.ndarray | None = None,
    processes: Processes | None = None,
    dtype: torch.dtype = torch.float64,
    device=None,
) -> FramePlan:
    """The :class:`FramePlan` of ``dataset`` at ``settings`` (defaults without).

    ``frames`` (frame rows): simulate only the rows of these frames (the rest of the data
    set still sets the selection, the windows and the rotation grid), as a convergence
    check on a subset of frames does.

    ``processes``: the frames are shared among these processes (one by default), and the
    plan solves this process's share (:func:`~blochnet.experiment.shards.frame_shares`).
    """
    settings = settings or SimulationConfig()
    rocking = resolve_rocking(settings, dataset)
    selection = select_reflections(dataset, settings.selection, rocking)
    windows = None
    if rocking == "integrated":
        windows = _apply_windows(dataset, selection, settings)
    used = selection.used
    if frames is not None:
        used = used & np.isin(dataset.frame_index(), frames)
    used_rows = np.flatnonzero(used)
    if windows is not None and frames is not None:
        keep = np.isin(np.flatnonzero(selection.used), used_rows)
        windows = RockingWindows(windows.start[keep], windows.stop[keep], windows.reason[keep])
    frame_of_used = dataset.frame_index()[used_rows]
    table = beam_table(dataset.cell, dataset.reflections.hkl[used_rows], settings.g_max)
    if windows is None:
        directions = rocking_directions(dataset, settings.n_tilts)
        orientations = frame_orientations(
            table, directions, frame_of_used, 1 / dataset.wavelength, settings.sg_max
        )
    else:
        orientations = integrated_orientations(table, dataset, windows, frame_of_used, settings)
    processes = processes or Processes()
    dependencies = _dependencies(orientations, frame_of_used, max(dataset.n_frames, 1))
    own = None
    if processes.shared:
        share = frame_shares(_frame_costs(orientations, dataset.n_frames), processes.size)
        own = np.flatnonzero(share == processes.rank)
        orientations = _read_by(orientations, np.isin(frame_of_used, own))
    differences, groups = shared_differences(build_groups(orientations, dtype=dtype, device=device))
    return FramePlan(
        dataset=dataset,
        settings=settings,
        rocking=rocking,
        selection=selection,
        windows=windows,
        used_rows=used_rows,
        frame_of_used=frame_of_used,
        groups=tuple(groups),
        differences=differences,
        dependencies=dependencies,
        frames=None if frames is None else np.asarray(frames),
        processes=processes,
        own_frames=own,
    )


def _frame_costs(orientations: list[Orientation], n_frames: int) -> np.ndarray:
    """(frame,) cost of solving each frame's orientations: Σ N³ over them, N beams."""
    costs = np.zeros(n_frames)
    for o in orientations:
        costs[o.frame] += float(len(o.beams)) ** 3
    return costs


def _read_by(orientations: list[Orientation], own_rows: np.ndarray) -> list[Orientation]:
    """The orientations that rows ``own_rows`` ((obs,) bool) read, each with its whole
    beam set and only those rows' (row, beam, weight) pairs."""
    out = []
    for o in orientations:
        keep = own_rows[o.rows]
        if keep.any():
            out.append(
                dataclasses.replace(
                    o, columns=o.columns[keep], rows=o.rows[keep], weights=o.weights[keep]
                )
            )
    return out


def _apply_windows(
    dataset: Dataset, selection: ReflectionSelection, settings: SimulationConfig
) -> RockingWindows:
    """Integration windows of the selected rows; rows without a usable window leave the
    selection with their reason, and the rule says how rows are integrated."""
    rows = np.flatnonzero(selection.used)
    windows = rocking_windows(dataset, rows, settings)
    selection.reason[rows] = windows.reason
    selection.used[rows] = windows.reason == ""
    keep = windows.reason == ""
    selection.rule += (
        f"; whole rocking curves: |s_g| ≤ {settings.rocking_window:g} Å⁻¹ around"
        f" the Bragg crossing, step {settings.rocking_step:g}°"
    )
    return RockingWindows(windows.start[keep], windows.stop[keep], windows.reason[keep])


def _dependencies(
    orientations: list[Orientation], frame_of_used: np.ndarray, n_frames: int
) -> np.ndarray:
    """(pair, 2) distinct (used row, frame) pairs: the row's own frame, and the frames
    whose orientation or thickness an orientation it reads blends in (frames of a data
    set of ``n_frames``: one integer key row·n_frames + frame per pair)."""
    parts = [np.arange(len(frame_of_used)) * n_frames + frame_of_used]
    for o in orientations:
        parts.append(o.rows * n_frames + o.frame)
        if o.blend > 0:
            parts.append(o.rows * n_frames + o.neighbour)
    keys = np.unique(np.concatenate(parts).astype(np.int64))  # one integer per pair: sorted
    return np.stack([keys // n_frames, keys % n_frames], 1)  # as the (row, frame) pairs are
