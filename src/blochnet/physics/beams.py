"""Reciprocal-lattice enumeration, excitation errors and beam selection.

Sign conventions
----------------
* The beam direction d is the direction in which the electrons travel, a unit vector in
  the Cartesian crystal frame of :mod:`blochnet.lattice`. A zone axis [uvw] means
  d ∥ u a + v b + w c.
* The wave vector in the crystal is K = |K| d with |K| = sqrt(1/λ² + U₀) [Å⁻¹, no 2π].
* A diffracted beam g has wave vector K + g (Laue condition k' = k + g).
* The excitation error is s_g = (K² − |K + g|²) / (2|K|): positive when the reciprocal
  lattice point lies inside the Ewald sphere. At an exact zone axis every zero-order
  Laue-zone reflection has s_g = −g²/(2K) < 0.
* The surface normal n points into the crystal along the beam (n·d > 0); thickness is
  measured along n.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from blochnet.crystal import Cell
from blochnet.errors import ConfigurationError
from blochnet.lattice import direct_matrix, reciprocal_matrix


def reciprocal_lattice_points(cell: Cell, g_max: float) -> np.ndarray:
    """Every hkl with 0 < |g| ≤ g_max, preceded by (0, 0, 0), sorted by |g| [Å⁻¹].

    Returns
    -------
    ndarray (refl, 3) int64.
    """
    if g_max <= 0:
        raise ConfigurationError(f"g_max must be positive, got {g_max} Å⁻¹")
    b = reciprocal_matrix(cell)
    bounds = [int(math.floor(g_max * length)) for length in (cell.a, cell.b, cell.c)]
    axes = [np.arange(-n, n + 1) for n in bounds]
    hkl = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    g = np.linalg.norm(hkl @ b.T, axis=1)
    keep = g <= g_max * (1 + 1e-12)
    hkl, g = hkl[keep], g[keep]
    order = np.lexsort((hkl[:, 2], hkl[:, 1], hkl[:, 0], np.round(g, 10)))
    return hkl[order].astype(np.int64)


def zone_axis_direction(cell: Cell, uvw) -> np.ndarray:
    """Unit Cartesian vector along the direct-lattice direction [uvw] (non-integer allowed)."""
    uvw = np.asarray(uvw, dtype=float)
    if uvw.shape != (3,) or not np.all(np.isfinite(uvw)) or not np.any(uvw):
        raise ConfigurationError(
            f"a zone axis needs three finite components, not all zero; got {uvw}"
        )
    d = direct_matrix(cell) @ uvw
    return d / np.linalg.norm(d)


def excitation_errors(g_cart: Tensor, k_vec: Tensor) -> Tensor:
    """s_g = (K² − |K + g|²) / (2|K|) [Å⁻¹].

    Parameters
    ----------
    g_cart : Tensor (..., beam, 3) Cartesian reciprocal vectors [Å⁻¹].
    k_vec : Tensor (..., 3) wave vector in the crystal [Å⁻¹].
    """
    k = torch.linalg.vector_norm(k_vec, dim=-1, keepdim=True)
    return -(2 * (g_cart @ k_vec[..., :, None])[..., 0] + (g_cart**2).sum(-1)) / (2 * k)


def normal_factors(g_cart: Tensor, k_vec: Tensor, normal: Tensor) -> tuple[Tensor, Tensor]:
    """Inclined-surface factors 1 + g·n/K_n and K_n = K·n.

    Returns
    -------
    factor : Tensor (..., beam); kn : Tensor (...,) [Å⁻¹].
    """
    kn = (k_vec * normal).sum(-1)
    if torch.any(kn <= 0):
        raise ConfigurationError("the surface normal must point along the beam (K·n > 0)")
    factor = 1 + (g_cart @ normal[..., :, None])[..., 0] / kn[..., None]
    return factor, kn


def select_beams(g_norm: Tensor, s_g: Tensor, g_max: float, sg_max: float) -> Tensor:
    """Mask of the beams kept in the Bloch matrix: |g| ≤ g_max and |s_g| ≤ sg_max.

    The direct beam (|g| = 0) is always kept. Shapes: (..., refl) → (..., refl) bool.
    """
    return ((g_norm <= g_max) & (s_g.abs() <= sg_max)) | (g_norm == 0)
