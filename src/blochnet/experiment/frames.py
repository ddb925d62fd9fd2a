"""Simulation of the virtual frames of a 3D-ED data set.

Each frame integrates its rocking curve: it is sampled by ``n_tilts`` orientations
(continuous rotation: tilts about the goniometer axis at the midpoints of n equal steps
across ± the integration semi-angle; precession: n azimuths of the beam on the cone of the
precession angle). Each orientation gets its own beam set (|g| ≤ g_max, |s_g| ≤ sg_max,
plus every reflection of the frame that is compared with the data). Orientations of
similar beam count are solved together (one eigendecomposition each, grouped layout of
:mod:`blochnet.physics.structure_matrix`), and the frame's intensity of a reflection is the
mean over its orientations.

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
from blochnet.experiment.geometry import beam_directions, goniometer_axis_crystal
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


def select_reflections(dataset: Dataset, rule: SelectionRule) -> ReflectionSelection:
    """Apply the documented selection rule (see :class:`SelectionRule`) to every row."""
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
    reason[rsg > rule.rsg_max] = f"RSg > {rule.rsg_max:g}"
    reason[g_norm > rule.g_max] = f"|g| > {rule.g_max:g} Å⁻¹"
    reason[g_norm == 0] = "000 reflection"
    return ReflectionSelection(reason == "", reason, rsg, rule.describe())


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
    # continuous rotation: the crystal turns by δ about the goniometer axis a, so the beam
    # turns by −δ about a in the crystal frame (Rodrigues' formula).
    delta = -semi * ((np.arange(n_tilts) + 0.5) * 2 / n_tilts - 1)[None, :]
    a = goniometer_axis_crystal(dataset)[:, None, :]
    dd = np.broadcast_to(d[:, None, :], a.shape[:2] + (3,))
    cos, sin = np.cos(delta)[..., None], np.sin(delta)[..., None]
    return dd * cos + np.cross(a, dd) * sin + a * np.sum(a * dd, -1, keepdims=True) * (1 - cos)


@dataclass
class _Group:
    batch: BeamBatch
    directions: Tensor  # (orient, 3)
    frame: Tensor  # (orient,) frame row of each orientation
    obs_orient: Tensor  # (m,) orientation row of each (orientation, observation) pair
    obs_beam: Tensor  # (m,) beam column
    obs_row: Tensor  # (m,) index into the used observations


class FrameSimulator:
    """Integrated intensities of the compared observations of every frame.

    Parameters
    ----------
    crystal : the structure (its cell should be the data set's; see ``check_cell``).
    dataset : frames, orientations and observations.
    config : physics settings; ``config.selection`` decides which rows are compared.
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
        self.selection = select_reflections(dataset, self.config.selection)
        self.used_rows = np.flatnonzero(self.selection.used)
        self.frame_of_used = dataset.frame_index()[self.used_rows]
        self.directions = rocking_directions(dataset, self.config.n_tilts)
        self.groups = self._build_groups()

    @property
    def n_used(self) -> int:
        return len(self.used_rows)

    def _build_groups(self) -> list[_Group]:
        cfg, ds, dev = self.config, self.dataset, self.model.device
        k0 = 1.0 / ds.wavelength
        b = reciprocal_matrix(self.model.crystal.cell)
        hkl_obs = ds.reflections.hkl[self.used_rows]
        g_obs_max = float(np.linalg.norm(hkl_obs @ b.T, axis=1).max(initial=0.0))
        hkl_all = reciprocal_lattice_points(self.model.crystal.cell, max(cfg.g_max, g_obs_max))
        g_all = hkl_all @ b.T
        g2 = np.sum(g_all**2, 1)
        candidate = np.sqrt(g2) <= cfg.g_max
        obs_index = _row_index(hkl_all, hkl_obs)
        n_frames, n_tilts = self.directions.shape[:2]
        beam_sets, obs_lists, frames, dirs = [], [], [], []
        for f in range(n_frames):
            rows = np.flatnonzero(self.frame_of_used == f)
            s = -(2 * k0 * g_all @ self.directions[f].T + g2[:, None]) / (2 * k0)  # (hkl, tilt)
            keep = candidate[:, None] & (np.abs(s) <= cfg.sg_max)
            keep[0] = True  # the incident beam
            keep[obs_index[rows]] = True
            position = np.cumsum(keep, axis=0) - 1
            for j in range(n_tilts):
                beam_sets.append(hkl_all[keep[:, j]])
                obs_lists.append((position[obs_index[rows], j], rows))
                frames.append(f)
                dirs.append(self.directions[f, j])
        groups = []
        for members in group_by_size([len(b) for b in beam_sets], tolerance=0.1):
            batch = BeamBatch.from_lists([beam_sets[i] for i in members], device=dev)
            orient = np.concatenate(
                [np.full(len(obs_lists[i][1]), n) for n, i in enumerate(members)]
            )
            cols = np.concatenate([obs_lists[i][0] for i in members])
            rows = np.concatenate([obs_lists[i][1] for i in members])
            groups.append(
                _Group(
                    batch=batch,
                    directions=torch.as_tensor(
                        np.array([dirs[i] for i in members]), dtype=self.model.dtype, device=dev
                    ),
                    frame=torch.as_tensor([frames[i] for i in members], device=dev),
                    obs_orient=torch.as_tensor(orient, dtype=torch.long, device=dev),
                    obs_beam=torch.as_tensor(cols, dtype=torch.long, device=dev),
                    obs_row=torch.as_tensor(rows, dtype=torch.long, device=dev),
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
        progress=None,
    ) -> Tensor:
        """Frame-integrated intensities of the compared observations at each thickness sample.

        Parameters
        ----------
        atoms : refinable structure tensors (``self.model.atom_tensors()`` for the file's).
        thickness : Tensor (frame, sample) [Å].
        rotations : Tensor (frame, 3) small orientation corrections [rad], rotation vectors in
            the Cartesian crystal frame applied to every beam direction of the frame (the beam
            sets stay those of the file's orientation, so keep corrections well below the
            frame's semi-angle).
        progress : optional callable(n_orientations_done) for progress display.

        Returns
        -------
        Tensor (used, sample): the mean over each frame's orientations, in units of the
        incident beam; rows follow ``self.used_rows``.
        """
        model = self.model
        k, u0 = model.wavevector(atoms, self.dataset.wavelength)
        out = torch.zeros(self.n_used, thickness.shape[1], dtype=model.dtype, device=model.device)
        for group in self.groups:
            batch = group.batch
            u = model.potential(batch.differences, atoms)
            g = model.g_vectors(batch.hkl)
            directions = group.directions
            if rotations is not None:
                turn = rotation_matrices(rotations)[group.frame]  # (orient, 3, 3)
                directions = (turn @ directions[:, :, None])[..., 0]
            s = excitation_errors(g, k * directions)
            a, a_abs = structure_matrices(batch, u, s, k, u0, self.config.absorption)
            t = thickness[group.frame]
            intensity = bloch_intensities(
                a, t, math.pi / k, absorptive=a_abs, solver=self.config.solver
            )
            values = intensity[group.obs_orient, :, group.obs_beam]  # (m, sample)
            out = out.index_add(0, group.obs_row, values)
            if progress is not None:
                progress(int(batch.mask.shape[0]))
        return out / self.config.n_tilts


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
