"""Simulation of the virtual frames of a 3D-ED data set.

Two ways of integrating the rocking curve (``SimulationConfig.rocking``):

* ``frame``: a row is what its frame recorded. The frame's range is sampled by ``n_tilts``
  orientations (continuous rotation: tilts about the goniometer axis at the midpoints of n
  equal steps across ± the integration semi-angle; precession: n azimuths of the beam on
  the cone of the precession angle) and a row's intensity is the mean over them.
* ``integrated``: a row is the reflection's whole rocking curve, as written by PETS2 with
  "sum all intensities" and by DIALS' PETS export (the same intensity in every frame that
  lists the reflection). The rotation is sampled on one grid of ``rocking_step`` for the
  whole data set; a sample between the angles of two frames blends their orientations,
  orientation corrections and thicknesses linearly by angle (so the crystal turns and
  drifts continuously along the scan, and no Bragg crossing at a frame boundary is
  counted twice or skipped by a step of the corrections), and a row is the sum of its
  reflection's intensity over the samples where |s_g| ≤ ``rocking_window`` around the
  Bragg crossing closest to its frame, times the step, divided by the frame's range 2Δ
  (so both modes give comparable numbers). Samples are shared by every row that needs them.

Each orientation gets its own beam set (|g| ≤ g_max, |s_g| ≤ sg_max, plus every reflection
compared there). Orientations of similar beam count are solved together (one
eigendecomposition each, grouped layout of :mod:`blochnet.physics.structure_matrix`).

Thickness enters as samples per frame, ``thickness`` (frame, sample): every sample costs
one matrix–vector product on the same eigendecomposition, so a thickness distribution (or
a whole thickness scan) per frame is one tensor operation.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from blochnet.crystal import Crystal
from blochnet.experiment.beam_plan import (
    beam_table,
    build_groups,
    frame_orientations,
    integrated_orientations,
)
from blochnet.experiment.config import SelectionRule, SimulationConfig, format_hkl_list
from blochnet.experiment.dataset import Dataset
from blochnet.experiment.geometry import beam_directions
from blochnet.experiment.rocking import (
    RockingWindows,
    resolve_rocking,
    rocking_directions,
    rocking_windows,
)
from blochnet.physics.beams import excitation_errors
from blochnet.physics.bloch import bloch_intensities
from blochnet.physics.crystal_model import AtomTensors, CrystalModel
from blochnet.physics.lattice import reciprocal_matrix
from blochnet.physics.structure_matrix import structure_matrices


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
    if rule.omit:
        omit = np.array(rule.omit, dtype=np.int64)
        hkl = np.rint(dataset.reflections.hkl).astype(np.int64)
        match = (hkl[:, None, :] == omit[None]).all(-1)  # (row, omitted hkl)
        reason[match.any(1)] = "omitted by hand (selection.omit)"
        if not match.any(0).all():
            warnings.warn(
                f"{dataset.source or 'data set'}: selection.omit lists "
                f"{format_hkl_list(omit[~match.any(0)])}, which no row "
                "of the data set has (indices as in the data file, symmetry equivalents not "
                "included)",
                stacklevel=2,
            )
    reason[g_norm == 0] = "000 reflection"
    return ReflectionSelection(reason == "", reason, rsg, rule.describe(rocking))


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
        table = beam_table(
            self.model.crystal.cell, dataset.reflections.hkl[self.used_rows], self.config.g_max
        )
        if windows is None:
            self.directions = rocking_directions(dataset, self.config.n_tilts)
            orientations = frame_orientations(
                table, self.directions, self.frame_of_used, 1 / dataset.wavelength,
                self.config.sg_max,
            )  # fmt: skip
        else:
            orientations = integrated_orientations(
                table, dataset, windows, self.frame_of_used, self.config
            )
        self.groups = build_groups(orientations, dtype=dtype, device=self.model.device)
        pairs = np.unique(
            np.concatenate(
                [np.stack([o.rows, np.full(len(o.rows), o.frame)], 1) for o in orientations]
                + [
                    np.stack([o.rows, np.full(len(o.rows), o.neighbour)], 1)
                    for o in orientations
                    if o.blend > 0
                ]
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
                turn = rotation_matrices(_per_orientation(rotations, group))  # (orient, 3, 3)
                directions = (turn @ directions[:, :, None])[..., 0]
            s = excitation_errors(g, k * directions)
            a, a_abs = structure_matrices(batch, u, s, k, u0, kappa)
            t = _per_orientation(thickness, group)
            intensity = bloch_intensities(
                a, t, math.pi / k, absorptive=a_abs, solver=self.config.solver
            )
            values = intensity[group.obs_orient, :, group.obs_beam]  # (m, sample)
            if weights is not None:
                w = _per_orientation(weights, group)[group.obs_orient]
                values = (values * w).sum(1, keepdim=True)
            out = out.index_add(0, group.obs_row, values * group.obs_weight[:, None])
            if progress is not None:
                progress(int(batch.mask.shape[0]))
        return out[:, 0] if weights is not None else out


def _per_orientation(values: Tensor, group) -> Tensor:
    """Per-frame ``values`` (frame, ...) at each orientation of ``group``: its frame's, or
    between two frames (integrated mode) the linear blend of theirs."""
    own = values[group.frame]
    if not group.blended:
        return own
    blend = group.blend.to(values.dtype).reshape(-1, *([1] * (values.ndim - 1)))
    return own + blend * (values[group.neighbour] - own)


def rotation_matrices(vectors: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) of rotation vectors (..., 3) [rad], differentiably."""
    zero = torch.zeros_like(vectors[..., 0])
    x, y, z = vectors.unbind(-1)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1)
    return torch.linalg.matrix_exp(skew.reshape(*vectors.shape[:-1], 3, 3))
