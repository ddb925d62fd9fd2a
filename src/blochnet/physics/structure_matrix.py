"""The Bloch-wave structure matrix for a batch of orientations with different beam sets.

Notes
-----
For beams g, h of one orientation (Zuo & Spence, *Advanced TEM*, ch. 5)

    A_gg = 2K s_g,    A_gh = U_{g−h} (g ≠ h),

symmetrised for an inclined surface with normal n as A_gh / sqrt((1 + g·n/K_n)(1 + h·n/K_n)).
The absorptive matrix A' has A'_gh = U'_{g−h} including the diagonal U'_0, with the same
factors. Eigenvalues λ of A relate to the Bloch-wave excitation γ by λ = 2 K_n γ.

Orientations of one batch have different numbers of beams. Two layouts are offered:
*padded* (one tensor, unused rows/columns decoupled by distinct diagonal values far from
the spectrum, so that they carry no intensity and change nothing) and *grouped* (one padded
batch per similar size, see :func:`group_by_size`). ``benchmarks/forward.py`` measures both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Shaped
from torch import Tensor


@dataclass
class BeamBatch:
    """Beam sets of several orientations in one padded layout.

    Attributes
    ----------
    hkl : Tensor (orient, beam, 3) int64, zero where padded.
    mask : Tensor (orient, beam) bool, True for real beams.
    differences : Tensor (ref, 3) int64, the distinct g − h over all orientations.
    difference_index : Tensor (orient, beam, beam) into ``differences``: int32 while the
        differences fit (half the memory of int64), else int64.
    """

    hkl: Tensor
    mask: Tensor
    differences: Tensor
    difference_index: Tensor

    @classmethod
    def from_lists(cls, beam_lists: list[np.ndarray], *, device=None) -> BeamBatch:
        """Pad ``beam_lists`` (each (beam_i, 3) int, incident beam first) into one batch."""
        if not beam_lists:
            raise ValueError("no beam sets given")
        n_max = max(len(b) for b in beam_lists)
        hkl = np.zeros((len(beam_lists), n_max, 3), dtype=np.int64)
        mask = np.zeros((len(beam_lists), n_max), dtype=bool)
        for i, beams in enumerate(beam_lists):
            hkl[i, : len(beams)] = beams
            mask[i, : len(beams)] = True
        hkl_t = torch.as_tensor(hkl, device=device)
        mask_t = torch.as_tensor(mask, device=device)
        differences, index = _difference_table(hkl_t)
        if len(differences) < 2**31:
            index = index.to(torch.int32)
        return cls(hkl=hkl_t, mask=mask_t, differences=differences, difference_index=index)

    @property
    def n_beams(self) -> Tensor:
        return self.mask.sum(-1)


_DENSE_KEYS = 2**24  # largest key range numbered with a dense table (else by sorting)


def _difference_table(hkl: Tensor) -> tuple[Tensor, Tensor]:
    """Distinct g − h over a padded batch (orient, beam, 3) and the index of every pair."""
    span = int(hkl.abs().max()) * 2 + 1
    base = 2 * span + 1
    # key of (g − h + span), non-negative components below base; the key is linear in
    # the indices, so it is the difference of the beams' own keys (no (…, 3) pair array)
    own = (hkl[..., 0] * base + hkl[..., 1]) * base + hkl[..., 2]
    keys = own[:, :, None] - own[:, None, :] + (span * base + span) * base + span
    if base**3 <= _DENSE_KEYS:
        # keys are bounded: mark the present ones in a dense table and number them in
        # order (the result of a sort-based unique, in linear time)
        present = torch.zeros(base**3, dtype=torch.bool, device=keys.device)
        present[keys.reshape(-1)] = True
        unique = torch.nonzero(present)[:, 0]
        number = torch.cumsum(present, 0) - 1
        index = number[keys]
    else:
        unique, index = torch.unique(keys, return_inverse=True)
    h, rest = unique // (base * base), unique % (base * base)
    differences = torch.stack([h, rest // base, rest % base], dim=-1) - span
    return differences, index


def structure_matrix(
    batch: BeamBatch,
    potential: Tensor,
    excitation: Tensor,
    k: Tensor,
    factor: Tensor | None = None,
    *,
    diagonal: Tensor | None = None,
) -> Tensor:
    """Symmetrised structure matrix of every orientation in ``batch``.

    Parameters
    ----------
    batch : the beam sets.
    potential : Tensor (ref,) U_g [Å⁻²] at ``batch.differences`` (real or complex).
    excitation : Tensor (orient, beam) s_g [Å⁻¹] (ignored where padded).
    k : Tensor (orient,) or scalar |K| [Å⁻¹].
    factor : Tensor (orient, beam) 1 + g·n/K_n, or None for a surface normal along K.
    diagonal : Tensor (orient, beam) to use as the diagonal instead of 2K s_g (used for the
        absorptive matrix, whose diagonal is U'_0).

    Returns
    -------
    Tensor (orient, beam, beam); padded rows and columns are zero off the diagonal and carry
    distinct diagonal values above the spectrum (zero for an absorptive ``diagonal``).
    """
    a = potential[batch.difference_index]
    diag = elastic_diagonal(excitation, k) if diagonal is None else diagonal
    mask = batch.mask
    pair = mask[:, :, None] & mask[:, None, :]
    eye = torch.eye(a.shape[-1], dtype=torch.bool, device=a.device)
    # without gradients the matrix is built in place: one (orient, beam, beam) array
    # instead of four (large single patterns), the same numbers
    inputs = (potential, excitation, k, factor, diagonal)
    in_place = not torch.is_grad_enabled() or not any(
        isinstance(x, Tensor) and x.requires_grad for x in inputs
    )
    if in_place:
        a.masked_fill_(~pair | eye, 0)
    else:
        a = torch.where(pair & ~eye, a, torch.zeros((), dtype=a.dtype, device=a.device))
    if factor is not None:
        scale = torch.where(mask, factor, torch.ones_like(factor)).rsqrt()
        outer = (scale[:, :, None] * scale[:, None, :]).to(a.dtype)
        a = a.mul_(outer) if in_place else a * outer
        diag = diag * scale**2
    padding = _padding_values(diag, mask) if diagonal is None else torch.zeros_like(diag)
    diag = torch.where(mask, diag, padding)
    if in_place:
        a.diagonal(dim1=-2, dim2=-1).copy_(diag)
        return a
    return a + torch.diag_embed(diag.to(a.dtype))


def elastic_diagonal(
    excitation: Float[Tensor, "orient beam"], k: Float[Tensor, ""] | Float[Tensor, " orient"]
) -> Float[Tensor, "orient beam"]:
    """The diagonal 2|K| s_g [Å⁻²] of the elastic structure matrix (real beams; padded ones
    take other values: :func:`structure_matrix`), for |K| ``k`` a scalar or one per
    orientation."""
    k = torch.as_tensor(k, dtype=excitation.dtype, device=excitation.device)
    return 2 * k.reshape(-1, 1) * excitation


def structure_matrices(
    batch: BeamBatch,
    potential: Shaped[Tensor, " ref"],
    excitation: Float[Tensor, "orient beam"],
    k: Float[Tensor, ""],
    u0: Float[Tensor, ""],
    absorption: float | Float[Tensor, ""],
    factor: Float[Tensor, "orient beam"] | None = None,
) -> tuple[Shaped[Tensor, "orient beam beam"], Shaped[Tensor, "orient beam beam"] | None]:
    """Elastic matrix A and, for κ = ``absorption`` > 0 or a tensor (differentiable, even
    at 0), the absorptive matrix A' with U'_g = κ U_g (diagonal κ U₀); None without
    absorption.

    ``potential`` (ref,): U_g [Å⁻²] of ``batch.differences``; ``excitation`` (orient,
    beam): s_g [Å⁻¹]; ``k``: |K| [Å⁻¹]; ``u0``: U₀ [Å⁻²]; ``factor`` (orient, beam): the
    inclined-surface factors (module notes), None for a surface normal to the beam."""
    a = structure_matrix(batch, potential, excitation, k, factor)
    if not isinstance(absorption, Tensor) and absorption <= 0:
        return a, None
    diagonal = (absorption * u0) * torch.ones_like(excitation)
    return a, structure_matrix(
        batch, absorption * potential, excitation, k, factor, diagonal=diagonal
    )


def _padding_values(diag: Tensor, mask: Tensor) -> Tensor:
    """Distinct values well above every real diagonal element for padded beams."""
    top = torch.where(mask, diag.abs(), torch.zeros_like(diag)).amax().detach() + 1.0
    steps = torch.arange(1, diag.shape[-1] + 1, dtype=diag.dtype, device=diag.device)
    return (10 * top + steps * top).expand_as(diag)


def group_by_size(
    sizes: list[int], *, tolerance: float = 0.15, max_elements: int | None = None
) -> list[list[int]]:
    """Group orientation indices whose beam counts differ by at most ``tolerance`` (relative).

    ``max_elements``: a group also ends before its padded matrices (orient × beam²) would
    hold more elements, which bounds the memory of one batch (at least one orientation).
    Returns lists of indices, each to be solved as one padded batch.
    """
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    groups: list[list[int]] = []
    for i in order:
        fits = groups and sizes[i] <= sizes[groups[-1][0]] * (1 + tolerance)
        if fits and max_elements is not None:
            fits = (len(groups[-1]) + 1) * sizes[i] ** 2 <= max_elements
        if fits:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups
