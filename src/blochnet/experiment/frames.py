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

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.autograd.forward_ad as fwad
from jaxtyping import Float
from torch import Tensor

from blochnet.crystal import Crystal
from blochnet.dataset import Dataset
from blochnet.errors import ConfigurationError
from blochnet.experiment.config import SimulationConfig
from blochnet.experiment.plan import FramePlan, build_plan
from blochnet.experiment.selection import ReflectionSelection
from blochnet.physics.beams import excitation_errors
from blochnet.physics.bloch import bloch_intensities
from blochnet.physics.crystal_model import AtomTensors, CrystalModel
from blochnet.physics.structure_matrix import structure_matrices
from blochnet.physics.tangents import weighted_intensity_tangents


class FrameSimulator:
    """Intensities of the compared observations of every frame, for one plan and crystal.

    Parameters
    ----------
    plan : what to solve (:func:`~blochnet.experiment.plan.build_plan`); its settings give
        the solver and the absorption κ.
    model : the crystal as tensors (cell: the data set's; scattering table and voltage as
        the plan's settings and data set say, see :meth:`build`).

    The simulator only computes: everything that does not depend on the structure is in
    the plan, built once per data set and settings.
    """

    def __init__(self, plan: FramePlan, model: CrystalModel) -> None:
        self.plan = plan
        self.model = model

    @classmethod
    def build(
        cls,
        crystal: Crystal,
        dataset: Dataset,
        config: SimulationConfig | None = None,
        *,
        dtype: torch.dtype = torch.float64,
        device=None,
    ) -> FrameSimulator:
        """Plan and model in one step, for a single simulation (``crystal`` in the data
        set's cell, see :func:`blochnet.dataset.structure_in_data_cell`)."""
        plan = build_plan(dataset, config, dtype=dtype, device=device)
        return cls(plan, crystal_model(crystal, plan, dtype=dtype, device=device))

    @property
    def config(self) -> SimulationConfig:
        return self.plan.settings

    @property
    def dataset(self) -> Dataset:
        return self.plan.dataset

    @property
    def selection(self) -> ReflectionSelection:
        return self.plan.selection

    @property
    def rocking(self) -> str:
        return self.plan.rocking

    @property
    def windows(self):
        return self.plan.windows

    @property
    def used_rows(self) -> np.ndarray:
        return self.plan.used_rows

    @property
    def frame_of_used(self) -> np.ndarray:
        return self.plan.frame_of_used

    @property
    def dependencies(self) -> np.ndarray:
        return self.plan.dependencies

    @property
    def groups(self):
        return self.plan.groups

    @property
    def n_used(self) -> int:
        return self.plan.n_used

    @property
    def n_orientations(self) -> int:
        return self.plan.n_orientations

    def intensities(
        self,
        atoms: AtomTensors,
        thickness: Float[Tensor, "frame sample"],
        *,
        rotations: Float[Tensor, "frame 3"] | None = None,
        weights: Float[Tensor, "frame sample"] | None = None,
        absorption: Float[Tensor, ""] | float | None = None,
        progress=None,
    ) -> Float[Tensor, "obs sample"] | Float[Tensor, " obs"]:
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
        Tensor (obs, sample), each row's rocking-curve integral (see the module doc) at each
        thickness sample, in units of the incident beam; with ``weights``, (obs,): the
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

    def jacobian(
        self,
        atoms: AtomTensors,
        atom_tangents: list[AtomTensors],
        thickness: Float[Tensor, "frame sample"],
        weights: Float[Tensor, "frame sample"],
        *,
        rotations: Float[Tensor, "frame 3"] | None = None,
        orientation: bool = False,
    ) -> IntensityJacobian:
        """The thickness-weighted intensities of :meth:`intensities` and their derivatives
        with respect to the structure (one column per entry of ``atom_tangents``: the
        change of ``atoms`` along each parameter) and, with ``orientation``, to each
        frame's rotation vector, all from one eigendecomposition per orientation
        (:mod:`blochnet.physics.tangents`).

        Needs the ``eigh`` solver without absorption (κ = 0); otherwise a
        :class:`~blochnet.errors.ConfigurationError` says so (reverse mode then serves).
        """
        if self.config.solver != "eigh" or self.config.absorption > 0:
            raise ConfigurationError(
                "forward-mode derivatives need the eigh solver without absorption"
            )
        model = self.model
        n_frames = thickness.shape[0]
        dtype, device = model.dtype, model.device
        ic = torch.zeros(self.n_used, dtype=dtype, device=device)
        structure = torch.zeros(self.n_used, len(atom_tangents), dtype=dtype, device=device)
        turns = torch.zeros(self.n_used * n_frames, 3 if orientation else 0, dtype=dtype,
                            device=device)  # fmt: skip
        with torch.no_grad():
            for group in self.groups:
                potentials = self._potential_tangents(group, atoms, atom_tangents)
                for part in _chunks(group, thickness.shape[1]):
                    a, blocks, t, w, c = self._tangent_inputs(
                        part, potentials, thickness, weights, rotations, orientation
                    )
                    intensity, tangent = weighted_intensity_tangents(a, t, c, w, blocks)
                    pick = (part.obs_orient, part.obs_beam)
                    ic.index_add_(0, part.obs_row, intensity[pick] * part.obs_weight)
                    d = tangent[:, pick[0], pick[1]] * part.obs_weight  # (direction, m)
                    structure.index_add_(0, part.obs_row, d[: len(atom_tangents)].T)
                    if orientation:
                        own = part.frame[part.obs_orient]
                        other = part.neighbour[part.obs_orient]
                        blend = part.blend[part.obs_orient].to(dtype)[:, None]
                        turn = d[len(atom_tangents) :].T  # (m, 3)
                        turns.index_add_(0, part.obs_row * n_frames + own, (1 - blend) * turn)
                        turns.index_add_(0, part.obs_row * n_frames + other, blend * turn)
        return IntensityJacobian(
            ic, structure, turns.reshape(self.n_used, n_frames, 3 if orientation else 0)
        )

    def _potential_tangents(self, group, atoms, atom_tangents) -> list[tuple]:
        """(U_g of the batch's differences, |K|, U₀) at ``atoms`` (first) and their changes
        along each of ``atom_tangents``."""
        model, wavelength = self.model, self.dataset.wavelength

        def potential(values):
            k, u0 = model.wavevector(values, wavelength)
            return model.potential(group.batch.differences, values), k, u0

        out = [potential(atoms)]
        for tangent in atom_tangents:
            with fwad.dual_level():
                dual = AtomTensors(*(_dual(x, dx) for x, dx in zip(
                    _fields(atoms), _fields(tangent), strict=True)))  # fmt: skip
                out.append(tuple(_tangent_or_zero(x, x0) for x, x0 in zip(
                    potential(dual), out[0], strict=True)))  # fmt: skip
        return out

    def _tangent_inputs(self, group, potentials, thickness, weights, rotations, turn):
        """Structure matrix, a callable giving its tangents and those of c in blocks of
        directions (:func:`weighted_intensity_tangents`), and the per-orientation
        thicknesses, weights and c of one batch; ``potentials`` from
        :meth:`_potential_tangents`."""
        model, batch = self.model, group.batch
        g = model.g_vectors(batch.hkl)

        def matrix(u, k, u0, rotation_values):
            directions = group.directions
            if rotation_values is not None:
                turn_matrix = rotation_matrices(_per_orientation(rotation_values, group))
                directions = (turn_matrix @ directions[:, :, None])[..., 0]
            s = excitation_errors(g, k * directions)
            return structure_matrices(batch, u, s, k, u0, 0.0)[0], math.pi / k

        (u, k, u0), changes = potentials[0], potentials[1:]
        a, c = matrix(u, k, u0, rotations)
        n = a.shape[0]

        def one(du, dk, du0, rotation_direction):
            """(Ȧ, ċ) along one direction (a change of U, |K|, U₀, or of a rotation)."""
            with fwad.dual_level():
                dual = [x if dx is None else fwad.make_dual(x, dx)
                        for x, dx in ((u, du), (k, dk), (u0, du0))]  # fmt: skip
                turned = rotations
                if rotation_direction is not None:
                    base = thickness.new_zeros(thickness.shape[0], 3)
                    turned = fwad.make_dual(base if rotations is None else rotations,
                                            rotation_direction)  # fmt: skip
                a_dual, c_dual = matrix(*dual, turned)
                return fwad.unpack_dual(a_dual).tangent, _tangent_or_zero(c_dual, c)

        directions = [(du, dk, du0, None) for du, dk, du0 in changes]
        if turn:
            for component in range(3):
                direction = thickness.new_zeros(thickness.shape[0], 3)
                direction[:, component] = 1
                directions.append((None, None, None, direction))
        size = max(1, _TANGENT_ELEMENTS // (4 * a.shape[0] * a.shape[-1] ** 2))

        def blocks():
            for start in range(0, len(directions), size):
                parts = [one(*d) for d in directions[start : start + size]]
                yield (torch.stack([x for x, _ in parts]),
                       torch.stack([torch.as_tensor(y).expand(n) for _, y in parts]))  # fmt: skip

        t = _per_orientation(thickness, group)
        w = _per_orientation(weights, group)
        return a, blocks, t, w, torch.as_tensor(c).expand(n)


def crystal_model(
    crystal: Crystal, plan: FramePlan, *, dtype: torch.dtype = torch.float64, device=None
) -> CrystalModel:
    """The tensors of ``crystal`` for simulations with ``plan`` (its data set's voltage and
    its settings' scattering table)."""
    return CrystalModel(
        crystal,
        voltage=plan.dataset.voltage,
        table=plan.settings.scattering,
        dtype=dtype,
        device=device,
    )


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


@dataclass
class IntensityJacobian:
    """Thickness-weighted intensities of the compared rows and their derivatives.

    ``intensities`` (obs,); ``structure`` (obs, parameter): along each structure direction;
    ``orientation`` (obs, frame, 3): with respect to each frame's rotation vector [rad⁻¹]
    (zero where a row does not use the frame; (obs, frame, 0) when not asked for)."""

    intensities: Tensor
    structure: Tensor
    orientation: Tensor


# elements of the arrays of one chunk: orientations × beams² × 4 for each block of
# directions (Ȧ, VᴴȦV, its divided differences and V·K), orientations × samples × beams
# for the thickness sums
_TANGENT_ELEMENTS = 2**23


def _chunks(group, n_samples: int):
    """``group`` as pieces of at most 512 orientations whose arrays stay below
    ``_TANGENT_ELEMENTS`` elements for one direction (the group itself when it is small
    enough); directions are then taken in blocks that fit."""
    n_orient, n_beam = group.batch.mask.shape
    per_orientation = 4 * n_beam**2 + 4 * n_samples * n_beam
    size = max(1, min(512, _TANGENT_ELEMENTS // per_orientation))
    if size >= n_orient:
        yield group
        return
    for start in range(0, n_orient, size):
        yield _orientation_slice(group, start, min(start + size, n_orient))


def _orientation_slice(group, start: int, stop: int):
    """The orientations ``start:stop`` of ``group`` with the observations they hold."""
    keep = (group.obs_orient >= start) & (group.obs_orient < stop)
    batch = group.batch
    return dataclasses.replace(
        group,
        batch=dataclasses.replace(
            batch,
            hkl=batch.hkl[start:stop],
            mask=batch.mask[start:stop],
            difference_index=batch.difference_index[start:stop],
        ),
        directions=group.directions[start:stop],
        frame=group.frame[start:stop],
        neighbour=group.neighbour[start:stop],
        blend=group.blend[start:stop],
        obs_orient=group.obs_orient[keep] - start,
        obs_beam=group.obs_beam[keep],
        obs_row=group.obs_row[keep],
        obs_weight=group.obs_weight[keep],
    )


def _fields(atoms: AtomTensors) -> tuple:
    return (atoms.xyz, atoms.uij, atoms.occupancy, atoms.charge)


def _dual(value, tangent):
    if value is None:
        return None
    return fwad.make_dual(value, torch.zeros_like(value) if tangent is None else tangent)


def _tangent_or_zero(dual, primal):
    tangent = fwad.unpack_dual(dual).tangent if isinstance(dual, Tensor) else None
    return torch.zeros_like(torch.as_tensor(primal)) if tangent is None else tangent
