"""Simulation of the virtual frames of a 3D-ED data set.

Two ways of integrating the rocking curve (``SimulationConfig.rocking``):

* ``frame``: a row is what its frame recorded. The frame's range is sampled by ``n_tilts``
  orientations (continuous rotation: tilts about the goniometer axis at the midpoints of n
  equal steps across ± the integration semi-angle; precession: n azimuths of the beam on
  the cone of the precession angle) and a row's intensity is the mean over them.
* ``integrated``: a row is the reflection's whole rocking curve, as written by PETS2 with
  "sum all intensities" and by DIALS' PETS export (the same intensity in every frame that
  lists the reflection). The rotation is sampled on one grid of ``rocking_step`` for the
  whole data set; a sample belongs to the frame with the nearest rotation angle (whose
  orientation, correction and thickness it uses), and a row is the sum of its reflection's
  intensity over the samples where |s_g| ≤ ``rocking_window`` around the Bragg crossing
  closest to its frame, times the step, divided by the frame's range 2Δ (so both modes
  give comparable numbers). Samples are shared by every row that needs them.

Each orientation gets its own beam set (|g| ≤ g_max, |s_g| ≤ sg_max, plus every reflection
compared there). Orientations of similar beam count are solved together (one
eigendecomposition each, grouped layout of :mod:`blochnet.physics.structure_matrix`).

Thickness enters as samples per frame, ``thickness`` (frame, sample): every sample costs
one matrix–vector product on the same eigendecomposition, so a thickness distribution (or
a whole thickness scan) per frame is one tensor operation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from blochnet.crystal import Crystal
from blochnet.experiment.config import SelectionRule, SimulationConfig
from blochnet.experiment.dataset import Dataset
from blochnet.experiment.geometry import beam_directions
from blochnet.experiment.rocking import (
    RockingWindows,
    grid_directions,
    resolve_rocking,
    rocking_directions,
    rocking_windows,
)
from blochnet.physics.beams import excitation_errors, reciprocal_lattice_points
from blochnet.physics.bloch import bloch_intensities
from blochnet.physics.crystal_model import AtomTensors, CrystalModel
from blochnet.physics.lattice import reciprocal_matrix
from blochnet.physics.structure_matrix import BeamBatch, group_by_size, structure_matrices


@dataclass
class ReflectionSelection:
    """Which observations (rows of the reflection table) are compared, and why not the rest.

    used : (refl,) bool; reason : (refl,) str, '' for used rows; rsg : (refl,) RSg values.
    """

    used: np.ndarray
    reason: np.ndarray
    rsg: np.ndarray
    rule: str

    def counts(self) -> dict[str, int]:
        """Number of used rows and of rows excluded for each reason."""
        out = {"used": int(self.used.sum())}
        for reason in np.unique(self.reason[~self.used]):
            out[str(reason)] = int(np.sum(self.reason == reason))
        return out


def select_reflections(
    dataset: Dataset, rule: SelectionRule, rocking: str = "frame"
) -> ReflectionSelection:
    """Apply the resolution and RSg parts of the selection rule (:class:`SelectionRule`).

    The Bragg-crossing part of whole-rocking-curve rows needs the integration windows; it
    is applied by :class:`FrameSimulator`.
    """
    g = dataset.reflections.hkl @ reciprocal_matrix(dataset.cell).T
    g_norm = np.linalg.norm(g, axis=1)
    s = excitation_errors(
        torch.as_tensor(g)[:, None, :],
        torch.as_tensor(beam_directions(dataset)[dataset.frame_index()] / dataset.wavelength),
    )[:, 0].numpy()
    delta = np.radians(dataset.frames.semi_angle[dataset.frame_index()])
    with np.errstate(divide="ignore", invalid="ignore"):
        rsg = np.abs(s) / (g_norm * delta)
    reason = np.full(len(g_norm), "", dtype=object)
    if (limit := rule.rsg_limit(rocking)) is not None:
        reason[rsg > limit] = f"RSg > {limit:g}"
    reason[g_norm > rule.g_max] = f"|g| > {rule.g_max:g} Å⁻¹"
    reason[g_norm == 0] = "000 reflection"
    return ReflectionSelection(reason == "", reason, rsg, rule.describe(rocking))


@dataclass
class _Group:
    batch: BeamBatch
    directions: Tensor  # (orient, 3)
    frame: Tensor  # (orient,) frame row of each orientation
    obs_orient: Tensor  # (m,) orientation row of each (orientation, observation) pair
    obs_beam: Tensor  # (m,) beam column
    obs_row: Tensor  # (m,) index into the used observations
    obs_weight: Tensor  # (m,) weight of the pair in the row's intensity


@dataclass
class _Orientation:
    direction: np.ndarray  # (3,) beam direction, crystal frame
    frame: int  # frame whose thickness and orientation correction it uses
    beams: np.ndarray  # (beam, 3) hkl
    columns: np.ndarray  # (pair,) beam column of each compared row
    rows: np.ndarray  # (pair,) used-row index
    weights: np.ndarray  # (pair,)


class FrameSimulator:
    """Intensities of the compared observations of every frame.

    Parameters
    ----------
    crystal : the structure (its cell should be the data set's; see ``check_cell``).
    dataset : frames, orientations and observations.
    config : physics settings; ``config.selection`` decides which rows are compared and
        ``config.rocking`` how a row integrates the rocking curve (see the module doc).
    dtype, device : precision and device of the tensors.
    """

    def __init__(
        self,
        crystal: Crystal,
        dataset: Dataset,
        config: SimulationConfig | None = None,
        *,
        dtype: torch.dtype = torch.float64,
        device=None,
    ) -> None:
        self.config = config or SimulationConfig()
        self.dataset = dataset
        self.model = CrystalModel(
            crystal,
            voltage=dataset.voltage,
            table=self.config.scattering,
            dtype=dtype,
            device=device,
        )
        self.rocking = resolve_rocking(self.config, dataset)
        self.selection = select_reflections(dataset, self.config.selection, self.rocking)
        windows = None
        if self.rocking == "integrated":
            rows = np.flatnonzero(self.selection.used)
            windows = rocking_windows(dataset, rows, self.config)
            self.selection.reason[rows] = windows.reason
            self.selection.used[rows] = windows.reason == ""
            keep = windows.reason == ""
            windows = RockingWindows(windows.start[keep], windows.stop[keep], windows.reason[keep])
            self.selection.rule += (
                f"; whole rocking curves: |s_g| ≤ {self.config.rocking_window:g} Å⁻¹ around"
                f" the Bragg crossing, step {self.config.rocking_step:g}°"
            )
        self.windows = windows  # integration window of every used row (integrated mode)
        self.used_rows = np.flatnonzero(self.selection.used)
        self.frame_of_used = dataset.frame_index()[self.used_rows]
        if windows is None:
            self.directions = rocking_directions(dataset, self.config.n_tilts)
            orientations = self._frame_orientations()
        else:
            orientations = self._integrated_orientations(windows)
        self.groups = self._build_groups(orientations)
        pairs = np.unique(
            np.concatenate(
                [np.stack([o.rows, np.full(len(o.rows), o.frame)], 1) for o in orientations]
                + [np.stack([np.arange(self.n_used), self.frame_of_used], 1)]
            ),
            axis=0,
        )
        # (pair, 2): (used row, frame) whenever the row's intensity uses that frame's
        # orientation or thickness (its own frame; in integrated mode also neighbours)
        self.dependencies = pairs

    @property
    def n_used(self) -> int:
        return len(self.used_rows)

    def _beam_table(self):
        """Candidate beams: hkl (n, 3), g (n, 3), |g|² (n,), |g| ≤ g_max (n,), row index (used,)."""
        b = reciprocal_matrix(self.model.crystal.cell)
        hkl_obs = self.dataset.reflections.hkl[self.used_rows]
        g_obs_max = float(np.linalg.norm(hkl_obs @ b.T, axis=1).max(initial=0.0))
        hkl_all = reciprocal_lattice_points(
            self.model.crystal.cell, max(self.config.g_max, g_obs_max)
        )
        g_all = hkl_all @ b.T
        g2 = np.sum(g_all**2, 1)
        return hkl_all, g_all, g2, np.sqrt(g2) <= self.config.g_max, _row_index(hkl_all, hkl_obs)

    def _frame_orientations(self) -> list[_Orientation]:
        cfg, k0 = self.config, 1.0 / self.dataset.wavelength
        table = self._beam_table()
        hkl_all, obs_index = table[0], table[-1]
        out = []
        for f in range(self.directions.shape[0]):
            rows = np.flatnonzero(self.frame_of_used == f)
            if len(rows) == 0:
                continue
            keep, position = _beam_sets(table, self.directions[f], obs_index[rows], k0, cfg.sg_max)
            weights = np.full(len(rows), 1.0 / cfg.n_tilts)
            for j in range(self.directions.shape[1]):
                out.append(
                    _Orientation(
                        self.directions[f, j],
                        f,
                        hkl_all[keep[:, j]],
                        position[obs_index[rows], j],
                        rows,
                        weights,
                    )
                )
        return out

    def _integrated_orientations(self, windows: RockingWindows) -> list[_Orientation]:
        cfg, ds, k0 = self.config, self.dataset, 1.0 / self.dataset.wavelength
        table = self._beam_table()
        hkl_all, obs_index = table[0], table[-1]
        length = windows.stop - windows.start
        pair_row = np.repeat(np.arange(self.n_used), length)
        pair_grid = np.repeat(windows.start - np.cumsum(length) + length, length) + np.arange(
            int(length.sum())
        )
        semi = ds.frames.semi_angle[self.frame_of_used]
        pair_weight = (cfg.rocking_step / (2 * semi))[pair_row]
        grid, inverse = np.unique(pair_grid, return_inverse=True)
        directions, owner = grid_directions(ds, grid, cfg.rocking_step)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(grid) + 1))
        out = []
        for j in range(len(grid)):
            pairs = order[bounds[j] : bounds[j + 1]]
            rows = pair_row[pairs]
            keep, position = _beam_sets(
                table, directions[j : j + 1], obs_index[rows], k0, cfg.sg_max
            )
            out.append(
                _Orientation(
                    directions[j],
                    int(owner[j]),
                    hkl_all[keep[:, 0]],
                    position[obs_index[rows], 0],
                    rows,
                    pair_weight[pairs],
                )
            )
        return out

    def _build_groups(self, orientations: list[_Orientation]) -> list[_Group]:
        dev, dtype = self.model.device, self.model.dtype
        groups = []
        for members in group_by_size([len(o.beams) for o in orientations], tolerance=0.1):
            chosen = [orientations[i] for i in members]
            batch = BeamBatch.from_lists([o.beams for o in chosen], device=dev)
            orient = np.concatenate([np.full(len(o.rows), n) for n, o in enumerate(chosen)])

            def cat(name, chosen=chosen):
                return np.concatenate([getattr(o, name) for o in chosen])

            groups.append(
                _Group(
                    batch=batch,
                    directions=torch.as_tensor(
                        np.array([o.direction for o in chosen]), dtype=dtype, device=dev
                    ),
                    frame=torch.as_tensor([o.frame for o in chosen], device=dev),
                    obs_orient=torch.as_tensor(orient, dtype=torch.long, device=dev),
                    obs_beam=torch.as_tensor(cat("columns"), dtype=torch.long, device=dev),
                    obs_row=torch.as_tensor(cat("rows"), dtype=torch.long, device=dev),
                    obs_weight=torch.as_tensor(cat("weights"), dtype=dtype, device=dev),
                )
            )
        return groups

    @property
    def n_orientations(self) -> int:
        return sum(int(g.batch.mask.shape[0]) for g in self.groups)

    def intensities(
        self,
        atoms: AtomTensors,
        thickness: Tensor,
        *,
        rotations: Tensor | None = None,
        weights: Tensor | None = None,
        absorption: Tensor | float | None = None,
        progress=None,
    ) -> Tensor:
        """Intensities of the compared observations at each thickness sample.

        Parameters
        ----------
        atoms : refinable structure tensors (``self.model.atom_tensors()`` for the file's).
        thickness : Tensor (frame, sample) [Å].
        rotations : Tensor (frame, 3) small orientation corrections [rad], rotation vectors in
            the Cartesian crystal frame applied to every beam direction of the frame (the beam
            sets stay those of the file's orientation, so keep corrections well below the
            frame's semi-angle).
        weights : Tensor (frame, sample) or None: weights of the thickness samples (a
            distribution per frame); each orientation uses those of its own frame.
        absorption : κ of U'_g = κ U_g; a tensor to differentiate with respect to it; None:
            the configuration's.
        progress : optional callable(n_orientations_done) for progress display.

        Returns
        -------
        Tensor (used, sample), each row's rocking-curve integral (see the module doc) at each
        thickness sample, in units of the incident beam; with ``weights``, (used,): the
        weighted sum over samples. Rows follow ``self.used_rows``.
        """
        model = self.model
        k, u0 = model.wavevector(atoms, self.dataset.wavelength)
        width = 1 if weights is not None else thickness.shape[1]
        kappa = self.config.absorption if absorption is None else absorption
        out = torch.zeros(self.n_used, width, dtype=model.dtype, device=model.device)
        for group in self.groups:
            batch = group.batch
            u = model.potential(batch.differences, atoms)
            g = model.g_vectors(batch.hkl)
            directions = group.directions
            if rotations is not None:
                turn = rotation_matrices(rotations)[group.frame]  # (orient, 3, 3)
                directions = (turn @ directions[:, :, None])[..., 0]
            s = excitation_errors(g, k * directions)
            a, a_abs = structure_matrices(batch, u, s, k, u0, kappa)
            t = thickness[group.frame]
            intensity = bloch_intensities(
                a, t, math.pi / k, absorptive=a_abs, solver=self.config.solver
            )
            values = intensity[group.obs_orient, :, group.obs_beam]  # (m, sample)
            if weights is not None:
                values = (values * weights[group.frame][group.obs_orient]).sum(1, keepdim=True)
            out = out.index_add(0, group.obs_row, values * group.obs_weight[:, None])
            if progress is not None:
                progress(int(batch.mask.shape[0]))
        return out[:, 0] if weights is not None else out


def _beam_sets(table, directions: np.ndarray, compared: np.ndarray, k0: float, sg_max: float):
    """Beam sets of orientations ``directions`` (m, 3) from ``FrameSimulator._beam_table()``.

    Returns keep (hkl, m) bool: candidates with |s_g| ≤ ``sg_max``, the incident beam and
    the compared reflections (rows ``compared`` of the table); and position (hkl, m): each
    kept beam's column in its orientation's beam set.
    """
    _, g_all, g2, candidate, _ = table
    s = -(2 * k0 * g_all @ directions.T + g2[:, None]) / (2 * k0)  # (hkl, m)
    keep = candidate[:, None] & (np.abs(s) <= sg_max)
    keep[0] = True  # the incident beam
    keep[compared] = True
    return keep, np.cumsum(keep, axis=0) - 1


def rotation_matrices(vectors: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) of rotation vectors (..., 3) [rad], differentiably."""
    zero = torch.zeros_like(vectors[..., 0])
    x, y, z = vectors.unbind(-1)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1)
    return torch.linalg.matrix_exp(skew.reshape(*vectors.shape[:-1], 3, 3))


def _row_index(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Index in ``table`` (n, 3) int of every row of ``rows`` (m, 3); all must be present."""
    span = int(max(np.abs(table).max(initial=0), np.abs(rows).max(initial=0))) + 1
    base = 2 * span + 1

    def key(x):
        return ((x[:, 0] + span) * base + x[:, 1] + span) * base + x[:, 2] + span

    order = np.argsort(key(table))
    return order[np.searchsorted(key(table), key(rows), sorter=order)]
