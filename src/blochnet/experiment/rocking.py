"""Sampling of rocking curves: orientations across a frame and along the whole rotation.

A frame's own range is sampled by tilts about the goniometer axis (continuous rotation) or
azimuths on the precession cone; whole-rocking-curve rows (see :mod:`blochnet.experiment.frames`)
use one rotation grid for the whole data set, each grid point between two frames taking
their per-frame quantities blended linearly by angle, and an integration window per row
around its Bragg crossing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blochnet.dataset import Dataset
from blochnet.experiment.config import SimulationConfig
from blochnet.experiment.geometry import beam_directions, goniometer_axis_crystal
from blochnet.lattice import reciprocal_matrix


def rocking_directions(dataset: Dataset, n_tilts: int) -> np.ndarray:
    """(frame, tilt, 3) beam directions (crystal frame) sampling each frame's range."""
    d = beam_directions(dataset)
    semi = np.radians(dataset.frames.semi_angle)[:, None]
    if dataset.geometry == "precession":
        e1 = np.cross(d, [0.0, 0.0, 1.0] if abs(d[0, 2]) < 0.9 else [1.0, 0.0, 0.0])
        e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
        e2 = np.cross(d, e1)
        phi = 2 * np.pi * np.arange(n_tilts) / n_tilts
        ring = np.cos(phi)[None, :, None] * e1[:, None] + np.sin(phi)[None, :, None] * e2[:, None]
        return np.cos(semi)[..., None] * d[:, None] + np.sin(semi)[..., None] * ring
    offsets = semi * ((np.arange(n_tilts) + 0.5) * 2 / n_tilts - 1)[None, :]
    a = goniometer_axis_crystal(dataset)[:, None, :]
    return turned_beam(d[:, None, :], a, offsets)


def turned_beam(direction: np.ndarray, axis: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Beam directions (crystal frame) after the crystal turns by ``delta`` [rad] about ``axis``.

    The crystal turning by δ about the goniometer axis a turns the beam by −δ about a in the
    crystal frame (Rodrigues' formula); arrays broadcast, vectors on the last axis.
    """
    cos, sin = np.cos(-delta)[..., None], np.sin(-delta)[..., None]
    d = np.broadcast_to(direction, np.broadcast_shapes(direction.shape, axis.shape))
    return (
        d * cos + np.cross(axis, d) * sin + axis * np.sum(axis * d, -1, keepdims=True) * (1 - cos)
    )


def resolve_rocking(config: SimulationConfig, dataset: Dataset) -> str:
    """``frame`` or ``integrated`` for ``config.rocking`` on this data set (see module doc)."""
    if config.rocking != "auto":
        return config.rocking
    if dataset.geometry == "continuous rotation" and dataset.repeats_intensities():
        return "integrated"
    return "frame"


@dataclass
class RockingWindows:
    """Integration windows of the compared rows on the data set's rotation grid.

    ``start`` and ``stop`` (obs,) are grid indices (φ = index·step) of each row's window
    [start, stop); ``reason`` (obs,) is '' where the window is usable, else why not.
    """

    start: np.ndarray
    stop: np.ndarray
    reason: np.ndarray


def rocking_windows(dataset: Dataset, rows: np.ndarray, config: SimulationConfig) -> RockingWindows:
    """Window of every row in ``rows`` around the Bragg crossing closest to its frame.

    Candidates are the grid points within ± ``max_rocking_width`` of the frame's angle; the
    window is the run of consecutive points with |s_g| ≤ ``rocking_window`` around the point
    of smallest |s_g| (the Bragg crossing). A row is not usable when its reflection does not
    come that close to the Ewald sphere, when the run reaches the end of the candidates (a
    rocking curve wider than the limit: reflections near the rotation axis), or when the
    crossing lies beyond ``selection.crossing_max`` semi-angles of the frame's angle (the
    reflection was excited in another frame).
    """
    step = np.radians(config.rocking_step)
    reach = np.radians(config.max_rocking_width)
    n_c = int(np.ceil(2 * reach / step)) + 1
    frame = dataset.frame_index()[rows]
    alpha = np.radians(dataset.frames.alpha)
    first = np.round((alpha[frame] - reach) / step).astype(np.int64)
    grid = first[:, None] + np.arange(n_c)[None, :]  # (obs, cand)
    # rows share grid points: the directions of each distinct point once, then gathered
    lowest = int(grid.min(initial=0))
    points = np.arange(lowest, int(grid.max(initial=0)) + 1)
    directions = grid_directions(dataset, points, config.rocking_step)[0][grid - lowest]
    g = dataset.reflections.hkl[rows] @ reciprocal_matrix(dataset.cell).T
    k0 = 1.0 / dataset.wavelength
    s = -(2 * k0 * np.einsum("rci,ri->rc", directions, g) + np.sum(g**2, 1)[:, None]) / (2 * k0)
    inside = np.abs(s) <= config.rocking_window
    centre = np.argmin(np.abs(s), axis=1)
    idx = np.arange(n_c)[None, :]
    outside = ~inside
    left = np.where(outside & (idx < centre[:, None]), idx, -1).max(axis=1)
    right = np.where(outside & (idx > centre[:, None]), idx, n_c).min(axis=1)
    reason = np.full(len(rows), "", dtype=object)
    reason[(left < 0) | (right >= n_c)] = (
        f"rocking curve wider than ±{config.max_rocking_width:g}° (near the rotation axis)"
    )
    offset = np.abs((first + centre) * config.rocking_step - dataset.frames.alpha[frame])
    limit = config.selection.crossing_max * dataset.frames.semi_angle[frame]
    reason[(reason == "") & (offset > limit)] = (
        f"Bragg crossing beyond {config.selection.crossing_max:g}·Δ of the frame angle"
    )
    reason[~inside[np.arange(len(rows)), centre]] = (
        f"no Bragg crossing within ±{config.max_rocking_width:g}° of the frame"
    )
    return RockingWindows(first + left + 1, first + right, reason)


@dataclass
class GridFrames:
    """The frames on either side of rotation-grid points (...): a point at φ between the
    angles α of frames ``lower`` and ``upper`` takes (1 − ``blend``) of ``lower``'s per-frame
    quantities and ``blend`` of ``upper``'s, with blend = (φ − α_lower)/(α_upper − α_lower);
    at or beyond the first or last frame both are that frame (blend 0)."""

    lower: np.ndarray
    upper: np.ndarray
    blend: np.ndarray


def grid_frames(dataset: Dataset, grid: np.ndarray, step: float) -> GridFrames:
    """:class:`GridFrames` of rotation-grid indices ``grid`` (...), φ = index·``step`` [deg]."""
    alpha = np.asarray(dataset.frames.alpha, dtype=float)
    phi = np.asarray(grid) * step
    if len(alpha) == 1:
        zero = np.zeros(np.shape(grid), dtype=np.int64)
        return GridFrames(zero, zero, np.zeros(np.shape(grid)))
    order = np.argsort(alpha, kind="stable")
    pos = np.clip(np.searchsorted(alpha[order], phi, side="right"), 1, len(order) - 1)
    lower, upper = order[pos - 1], order[pos]
    span = alpha[upper] - alpha[lower]
    blend = np.clip((phi - alpha[lower]) / np.where(span > 0, span, 1.0), 0.0, 1.0)
    blend = np.where(span > 0, blend, 0.0)
    before, after = phi < alpha[order[0]], phi >= alpha[order[-1]]
    lower = np.where(after, upper, lower)
    upper = np.where(before, lower, upper)
    blend = np.where(before | after, 0.0, blend)
    return GridFrames(lower, upper, blend)


def grid_directions(
    dataset: Dataset, grid: np.ndarray, step: float
) -> tuple[np.ndarray, GridFrames]:
    """Beam directions (..., 3) at rotation-grid indices ``grid`` (...) and the frames on
    either side of each (:func:`grid_frames`).

    A grid point φ = index·``step`` [deg] between the angles of two frames takes each
    frame's orientation turned by φ − α about its goniometer axis and blends the two
    linearly (:func:`grid_frames`), so the orientation is continuous along the scan even
    where the frames' own orientations were refined separately.
    """
    where = grid_frames(dataset, grid, step)
    phi = np.radians(np.asarray(grid) * step)
    alpha = np.radians(np.asarray(dataset.frames.alpha, dtype=float))
    d, a = beam_directions(dataset), goniometer_axis_crystal(dataset)
    low = turned_beam(d[where.lower], a[where.lower], phi - alpha[where.lower])
    high = turned_beam(d[where.upper], a[where.upper], phi - alpha[where.upper])
    mixed = (1 - where.blend)[..., None] * low + where.blend[..., None] * high
    return mixed / np.linalg.norm(mixed, axis=-1, keepdims=True), where
