"""Forward-mode derivatives of the frame intensities: the Jacobian of every compared row
with respect to the structure and to each frame's orientation, from one
eigendecomposition per orientation (:mod:`blochnet.physics.tangents`).

The structure directions come from forward-mode differentiation of the potential (U̇ at
the plan's differences, K̇) and one gather of U̇ per block of directions; the rotations'
from forward-mode differentiation of the excitation errors
(:meth:`FrameSimulator.batch_excitation_errors`: a rotation moves only the diagonal
2|K| s_g, so its Ȧ is a diagonal and M = VᴴȦV one product); the orientation of every
frame takes three directions (component x, y, z of every frame's rotation at once), each
orientation's derivative then shared between the frames it blends. Orientations are
taken in chunks and directions in blocks, so that memory stays bounded.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwad
from jaxtyping import Float
from torch import Tensor

from blochnet.errors import ConfigurationError
from blochnet.experiment.frames import FrameSimulator, per_orientation, potential_in_chunks
from blochnet.experiment.shards import sum_over_processes
from blochnet.physics.crystal_model import AtomTensors
from blochnet.physics.structure_matrix import elastic_diagonal
from blochnet.physics.tangents import weighted_intensity_tangents


def frame_jacobian(
    simulator: FrameSimulator,
    atoms: AtomTensors,
    atom_tangents: list[AtomTensors],
    thickness: Float[Tensor, "frame sample"],
    weights: Float[Tensor, "frame sample"],
    *,
    rotations: Float[Tensor, "frame 3"] | None = None,
    orientation: bool = False,
    single: bool = False,
) -> IntensityJacobian:
    """The thickness-weighted intensities of :meth:`FrameSimulator.intensities` and their
    derivatives with respect to the structure (one column per entry of ``atom_tangents``: the
    change of ``atoms`` along each parameter) and, with ``orientation``, to each
    frame's rotation vector, all from one eigendecomposition per orientation
    (:mod:`blochnet.physics.tangents`).

    ``single``: the products of each direction in single precision (derivatives to about
    1e-6 relative, in half the time: :func:`weighted_intensity_tangents`).

    Needs the ``eigh`` solver without absorption (κ = 0); otherwise a
    :class:`~blochnet.errors.ConfigurationError` says so (reverse mode then serves).
    """
    if simulator.config.solver != "eigh" or simulator.config.absorption > 0:
        raise ConfigurationError("forward-mode derivatives need the eigh solver without absorption")
    model = simulator.model
    n_frames = thickness.shape[0]
    dtype, device = model.dtype, model.device
    ic = torch.zeros(simulator.n_used, dtype=dtype, device=device)
    structure = torch.zeros(simulator.n_used, len(atom_tangents), dtype=dtype, device=device)
    turns = torch.zeros(simulator.n_used * n_frames, 3 if orientation else 0, dtype=dtype,
                        device=device)  # fmt: skip
    with torch.no_grad():
        every = _potential_tangents(simulator, atoms, atom_tangents)  # all batches at once
        for group in simulator.groups:
            potentials = [(u[group.difference_rows], k, u0) for u, k, u0 in every]
            for part in _chunks(group, thickness.shape[1]):
                a, blocks, t, w, c = _tangent_inputs(
                    simulator, part, potentials, thickness, weights, rotations, orientation
                )
                rows, slot = _compared_beams(part)
                intensity, tangent = weighted_intensity_tangents(
                    a, t, c, w, blocks, rows=rows, single=single
                )
                pick = (part.obs_orient, part.obs_beam)
                ic.index_add_(0, part.obs_row, intensity[pick] * part.obs_weight)
                d = tangent[:, pick[0], slot] * part.obs_weight  # (direction, m)
                structure.index_add_(0, part.obs_row, d[: len(atom_tangents)].T)
                if orientation:
                    own = part.frame[part.obs_orient]
                    other = part.neighbour[part.obs_orient]
                    blend = part.blend[part.obs_orient].to(dtype)[:, None]
                    turn = d[len(atom_tangents) :].T  # (m, 3)
                    turns.index_add_(0, part.obs_row * n_frames + own, (1 - blend) * turn)
                    turns.index_add_(0, part.obs_row * n_frames + other, blend * turn)
    for part in (ic, structure, turns):  # the rows of other processes' frames
        sum_over_processes(part, simulator.plan.processes)
    return IntensityJacobian(
        ic, structure, turns.reshape(simulator.n_used, n_frames, 3 if orientation else 0)
    )


def _potential_tangents(simulator: FrameSimulator, atoms, atom_tangents) -> list[tuple]:
    """(U_g of the plan's differences, |K|, U₀) at ``atoms`` (first) and their changes
    along each of ``atom_tangents``."""
    model, wavelength = simulator.model, simulator.dataset.wavelength

    def potential(values):
        k, u0 = model.wavevector(values, wavelength)
        return potential_in_chunks(model, simulator.plan.differences, values), k, u0

    out = [potential(atoms)]
    for tangent in atom_tangents:
        with fwad.dual_level():
            dual = AtomTensors(*(_dual(x, dx) for x, dx in zip(
                _fields(atoms), _fields(tangent), strict=True)))  # fmt: skip
            out.append(tuple(_tangent_or_zero(x, x0) for x, x0 in zip(
                potential(dual), out[0], strict=True)))  # fmt: skip
    return out


def _compared_beams(group) -> tuple[Tensor | None, Tensor]:
    """The beams whose tangents a batch needs: (orient, row) the compared beam of each of
    an orientation's (orientation, row) pairs (padded with the incident beam), and each
    pair's slot there; (None, the beams) when that is not fewer than all of them."""
    orient, n_orient = group.obs_orient, group.batch.mask.shape[0]
    counts = torch.bincount(orient, minlength=n_orient)
    width = int(counts.max()) if len(orient) else 0
    if width == 0 or width >= group.batch.mask.shape[1]:
        return None, group.obs_beam
    order = torch.argsort(orient, stable=True)
    first = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(orient)
    slot[order] = torch.arange(len(orient), device=orient.device) - first[orient[order]]
    rows = torch.zeros(n_orient, width, dtype=torch.long, device=orient.device)
    rows[orient, slot] = group.obs_beam
    return rows, slot


def _tangent_inputs(
    simulator: FrameSimulator, group, potentials, thickness, weights, rotations, turn
):
    """Structure matrix, a callable giving its tangents and those of c in blocks of
    directions (:func:`weighted_intensity_tangents`), and the per-orientation
    thicknesses, weights and c of one batch; ``potentials`` from
    :func:`_potential_tangents`."""

    def matrix(u, k, u0, rotation_values):
        a, _ = simulator.batch_matrices(group, u, k, u0, rotations=rotation_values)
        return a, math.pi / k

    (u, k, u0), changes = potentials[0], potentials[1:]
    a, c = matrix(u, k, u0, rotations)
    n = a.shape[0]

    def one(dk, rotation_direction):
        """(diagonal of Ȧ (orient, beam), ċ) along a change ``dk`` of |K| or
        ``rotation_direction`` of the rotations: neither changes the potential, so only the
        diagonal 2|K| s_g of the real beams moves (padded beams' values are constants)."""
        with fwad.dual_level():
            k_dual = k if dk is None else fwad.make_dual(k, dk)
            turned = rotations
            if rotation_direction is not None:
                base = thickness.new_zeros(thickness.shape[0], 3)
                turned = fwad.make_dual(base if rotations is None else rotations,
                                        rotation_direction)  # fmt: skip
            s = simulator.batch_excitation_errors(group, k_dual, rotations=turned)
            diagonal = _tangent_or_zero(elastic_diagonal(s, k_dual), s)
            c_dot = _tangent_or_zero(math.pi / k_dual, c)
        return torch.where(group.batch.mask, diagonal, torch.zeros_like(diagonal)), c_dot

    turns = []  # every frame's rotation component x, y, z
    for component in range(3 if turn else 0):
        turns.append(thickness.new_zeros(thickness.shape[0], 3))
        turns[-1][:, component] = 1
    size = max(1, _TANGENT_ELEMENTS // (4 * a.shape[0] * a.shape[-1] ** 2))
    # a structure direction changes the off-diagonal elements by U̇ at the differences and
    # the diagonal through |K| alone (U₀ enters only an absorptive matrix, absent where
    # forward mode applies): Ȧ = U̇[index] off the diagonal + K̇ ∂diag/∂K, for a whole
    # block of directions from one gather; a rotation's Ȧ is diagonal (2|K| ṡ_g)
    off = ~torch.eye(a.shape[-1], dtype=torch.bool, device=a.device)
    off = off & group.batch.mask[:, :, None] & group.batch.mask[:, None, :]
    dks = [torch.as_tensor(dk, dtype=k.dtype) for _, dk, _ in changes]
    moves_k = any(bool((dk != 0).any()) for dk in dks)  # (charges, occupancies: U₀)
    d_diagonal, d_c = one(torch.ones_like(k), None) if moves_k else (None, 0.0)

    def structure(start: int):
        block = changes[start : start + size]
        du = torch.stack([x for x, _, _ in block])[:, group.batch.difference_index]
        a_dot = du.masked_fill_(~off, 0).to(a.dtype)
        dk = torch.stack(dks[start : start + size])
        if moves_k:
            a_dot.diagonal(dim1=-2, dim2=-1).add_((dk[:, None, None] * d_diagonal).to(a.dtype))
        return a_dot, (dk[:, None] * torch.as_tensor(d_c)).expand(-1, n)

    def blocks():
        for start in range(0, len(changes), size):
            yield structure(start)
        for start in range(0, len(turns), size):
            # c = π/|K| does not move with the beam direction: ċ = 0
            yield torch.stack([one(None, d)[0] for d in turns[start : start + size]]), None

    t = per_orientation(thickness, group)
    w = per_orientation(weights, group)
    return a, blocks, t, w, torch.as_tensor(c).expand(n)


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
# for the thickness sums. Quartz's converged-beam Jacobian (18 directions, the process's
# peak): 2^23 11.0–12.0 s and 1.09–1.29 GB, 2^22 12.3–12.6 s and 1.00 GB, 2^21 12.3 s and
# 0.77–0.79 GB
_TANGENT_ELEMENTS = 2**21


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
