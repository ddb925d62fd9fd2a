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
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from blochnet.crystal import Crystal
from blochnet.dataset import Dataset
from blochnet.experiment.config import SimulationConfig
from blochnet.experiment.plan import FramePlan, build_plan
from blochnet.experiment.sample_basis import SampleBasis, accumulate_pairs
from blochnet.experiment.selection import ReflectionSelection
from blochnet.experiment.shards import whole_rows
from blochnet.physics.beams import excitation_errors
from blochnet.physics.bloch import Kept, bloch_intensities
from blochnet.physics.crystal_model import AtomTensors, CrystalModel
from blochnet.physics.structure_matrix import structure_matrices


class FrameSimulator:
    """Intensities of the compared observations of every frame, for one plan and crystal.

    Parameters
    ----------
    plan : what to solve (:func:`~blochnet.experiment.plan.build_plan`); its settings give
        the solver and the absorption κ.
    model : the crystal as tensors (cell: the data set's; scattering table and voltage as
        the plan's settings and data set say, see :meth:`build`).
    recompute : keep nothing of an orientation batch for the backward pass, solve it again
        there instead (``torch.utils.checkpoint``): the memory of one batch at a time
        instead of every batch's (:meth:`kept_bytes`), for one more eigendecomposition per
        orientation; the results are the same.
    kept : the precision of the eigenvectors a batch keeps for its backward pass
        (:func:`~blochnet.physics.bloch.bloch_intensities`): ``"full"`` or ``"single"``
        (half the memory, gradients to about 1e-7 of the largest amplitude's, the same
        intensities).

    The simulator only computes: everything that does not depend on the structure is in
    the plan, built once per data set and settings.
    """

    def __init__(
        self, plan: FramePlan, model: CrystalModel, *, recompute: bool = False,
        kept: Kept = "full",
    ) -> None:  # fmt: skip
        self.plan = plan
        self.model = model
        self.recompute = recompute
        self.kept = kept
        self._pair_index: _Pairs | None = None  # (row, frame) pairs of sample_basis

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
        weighted sum over samples. Rows follow ``self.used_rows``. With a plan shared
        among processes, every row on every process (the other processes' rows are
        constants here: :mod:`blochnet.experiment.shards`).
        """
        model = self.model
        width = 1 if weights is not None else thickness.shape[1]
        out = torch.zeros(self.n_used, width, dtype=model.dtype, device=model.device)
        batches = self._solved_batches(atoms, thickness, rotations, weights, absorption)
        for group, values in batches:
            out = out.index_add(0, group.obs_row, values)
            if progress is not None:
                progress(int(group.batch.mask.shape[0]))
        out = whole_rows(out, self.plan.processes)  # other processes' frames' rows
        return out[:, 0] if weights is not None else out

    def _solved_batches(self, atoms, thickness, rotations, weights, absorption):
        """(group, values) of every orientation batch in turn: ``values`` (m, sample), or
        (m, 1) with ``weights``, the batch's (orientation, row) intensities times their
        integration weights (:meth:`_batch_intensities`)."""
        model = self.model
        k, u0 = model.wavevector(atoms, self.dataset.wavelength)
        kappa = self.config.absorption if absorption is None else absorption
        recompute = self.recompute and torch.is_grad_enabled()
        u_all = potential_in_chunks(model, self.plan.differences, atoms)  # every batch's, once
        for group in self.groups:
            u = u_all[group.difference_rows]
            inputs = (group, u, k, u0, thickness, rotations, weights, kappa)
            if recompute:  # nothing of the batch kept for the backward pass: solved again
                yield group, checkpoint(self._batch_intensities, *inputs, use_reentrant=False)
            else:
                yield group, self._batch_intensities(*inputs)

    def sample_basis(
        self,
        atoms: AtomTensors,
        thickness: Float[Tensor, "frame sample"],
        *,
        rotations: Float[Tensor, "frame 3"] | None = None,
        absorption: Float[Tensor, ""] | float | None = None,
    ) -> SampleBasis:
        """The intensities of :meth:`intensities` before the thickness weights: for every
        (row, frame) pair the row's rocking-curve integral at each thickness sample, over
        the orientations that take that frame's thickness distribution (in integrated mode
        a row's window blends neighbouring frames). :meth:`SampleBasis.intensities` then
        gives the rows for any weights on the same samples, without solving again: the
        thickness model is fitted on it in many cheap steps. Differentiable like
        :meth:`intensities`."""
        model = self.model
        pairs = self._pairs()
        width = thickness.shape[1]
        basis = torch.zeros(len(pairs.row), width, dtype=model.dtype, device=model.device)
        batches = self._solved_batches(atoms, thickness, rotations, None, absorption)
        for (group, values), (own, other) in zip(batches, pairs.of_group, strict=True):
            blend = group.blend[group.obs_orient].to(values.dtype) if group.blended else None
            basis = basis + accumulate_pairs(values, own, other, blend, len(pairs.row))
        return SampleBasis(basis, pairs.row, pairs.frame, self.n_used, self.plan.processes)

    def _pairs(self) -> _Pairs:
        """The (row, frame) pairs of :meth:`sample_basis` (made once per simulator)."""
        if self._pair_index is None:
            n_frames = max(self.dataset.n_frames, 1)
            keys = []
            for group in self.groups:
                row = group.obs_row.cpu().numpy()
                keys.append(row * n_frames + group.frame[group.obs_orient].cpu().numpy())
                keys.append(row * n_frames + group.neighbour[group.obs_orient].cpu().numpy())
            every = np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)
            unique, inverse = np.unique(every, return_inverse=True)
            device = self.model.device
            as_index = lambda x: torch.as_tensor(x, dtype=torch.long, device=device)  # noqa: E731
            bounds = np.cumsum([0] + [len(x) for x in keys])
            of_group = [
                (as_index(inverse[bounds[2 * n] : bounds[2 * n + 1]]),
                 as_index(inverse[bounds[2 * n + 1] : bounds[2 * n + 2]]))
                for n in range(len(self.groups))
            ]  # fmt: skip
            self._pair_index = _Pairs(
                as_index(unique // n_frames), as_index(unique % n_frames), of_group
            )
        return self._pair_index

    def _batch_intensities(self, group, u, k, u0, thickness, rotations, weights, kappa):
        """(m, sample) or, with ``weights``, (m, 1) weighted intensities of the
        (orientation, row) pairs of one orientation batch (``u``: U of its differences)."""
        a, a_abs = self.batch_matrices(group, u, k, u0, rotations=rotations, absorption=kappa)
        t = per_orientation(thickness, group)
        intensity = bloch_intensities(
            a, t, math.pi / k, absorptive=a_abs, solver=self.config.solver, kept=self.kept
        )
        values = intensity[group.obs_orient, :, group.obs_beam]  # (m, sample)
        if weights is not None:
            w = per_orientation(weights, group)[group.obs_orient]
            values = (values * w).sum(1, keepdim=True)
        return values * group.obs_weight[:, None]

    def kept_bytes(self) -> int:
        """Estimate of the memory an evaluation of :meth:`intensities` keeps for its
        backward pass without ``recompute``: about 24 bytes per structure-matrix element in
        float64 (measured on quartz: eigenvectors, indices, the matrices' graph), 16 with
        eigenvectors kept in single precision, 12 in float32."""
        double = self.model.dtype == torch.float64
        per_element = (16 if self.kept == "single" else 24) if double else 12
        return per_element * sum(
            int(g.batch.mask.shape[0]) * int(g.batch.mask.shape[1]) ** 2 for g in self.groups
        )

    def batch_matrices(
        self,
        group,
        u: Tensor,
        k: Tensor,
        u0: Tensor,
        *,
        rotations: Float[Tensor, "frame 3"] | None = None,
        absorption: Float[Tensor, ""] | float = 0.0,
    ) -> tuple[Tensor, Tensor | None]:
        """Structure matrices A and A' (None without absorption) of one orientation batch
        of the plan for potential coefficients ``u`` of its differences, |K| ``k``, U₀
        ``u0`` and orientation corrections ``rotations`` (frame, 3) [rad]; differentiable
        (also in forward mode) in all of them."""
        s = self.batch_excitation_errors(group, k, rotations=rotations)
        return structure_matrices(group.batch, u, s, k, u0, absorption)

    def batch_excitation_errors(
        self, group, k: Tensor, *, rotations: Float[Tensor, "frame 3"] | None = None
    ) -> Float[Tensor, "orient beam"]:
        """Excitation errors s_g (orient, beam) [Å⁻¹] of one orientation batch for |K|
        ``k`` and orientation corrections ``rotations`` (frame, 3) [rad] (the only part of
        the structure matrices that a rotation changes: their diagonal 2|K| s_g);
        differentiable (also in forward mode)."""
        directions = group.directions
        if rotations is not None:
            turn = rotation_matrices(per_orientation(rotations, group))  # (orient, 3, 3)
            directions = (turn @ directions[:, :, None])[..., 0]
        return excitation_errors(self.model.g_vectors(group.batch.hkl), k * directions)


@dataclass
class _Pairs:
    row: Tensor  # (pair,) used row
    frame: Tensor  # (pair,) frame whose thickness weights it takes
    of_group: list[tuple[Tensor, Tensor]]  # per group: pair of each (orientation, row)
    # entry for its own frame and for its neighbour


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


# differences × cell sites per piece of the potential: a piece's temporaries (phases,
# Debye–Waller factors, amplitudes: (site, difference) each) stay near 32 MiB in float64
_POTENTIAL_ELEMENTS = 2**22


def potential_in_chunks(model: CrystalModel, differences: Tensor, atoms: AtomTensors) -> Tensor:
    """U of ``differences`` (difference, 3) at ``atoms``, in pieces of at most
    ``_POTENTIAL_ELEMENTS`` differences × sites; with gradients on, each piece is
    computed again in the backward pass instead of keeping its (site, difference)
    temporaries (a zeolite-size cell: 387,000 differences × 120 sites)."""
    size = max(1, _POTENTIAL_ELEMENTS // max(len(model.expansion.atom_index), 1))
    if len(differences) <= size:
        return model.potential(differences, atoms)
    pieces = []
    for part in differences.split(size):
        if torch.is_grad_enabled():
            pieces.append(checkpoint(model.potential, part, atoms, use_reentrant=False))
        else:
            pieces.append(model.potential(part, atoms))
    return torch.cat(pieces)


def per_orientation(values: Tensor, group) -> Tensor:
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
