"""Electron structure factors F(g) and potential coefficients U_g as differentiable tensors.

Notes
-----
F(g) = Σ_j occ_j f_j(|g|) T_j(g) exp(2πi h·x_j), summed over every atom j of the unit cell,
with T_j(g) = exp(−2π² gᵀ U_j g) (U_j Cartesian [Å²]; Uiso I for isotropic atoms, which
gives exp(−8π² Uiso s²)) and f_j the electron scattering factor [Å]: the crystallographic
sign convention of the International Tables. The Fourier coefficient of the potential in
U(r) = Σ_g U_g exp(+2πi g·r), which couples the beams K + g of the Bloch-wave solution, is
U_g = γ F(−g) / (π Ω) [Å⁻²] (Ω cell volume, γ Lorentz factor; see
:meth:`blochnet.physics.crystal_model.CrystalModel.potential`).
See e.g. J. M. Zuo & J. C. H. Spence, *Advanced Transmission Electron Microscopy*
(Springer 2017), ch. 3, doi:10.1007/978-1-4939-6607-3.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def structure_factors(
    hkl: Tensor,
    g_cart: Tensor,
    positions: Tensor,
    u_cartesian: Tensor,
    occupancy: Tensor,
    form_factors: Tensor,
) -> Tensor:
    """Structure factors F(g) [Å] of a unit cell.

    Parameters
    ----------
    hkl : Tensor (refl, 3) Miller indices (integer or float).
    g_cart : Tensor (refl, 3) Cartesian reciprocal vectors [Å⁻¹] of ``hkl`` (no 2π).
    positions : Tensor (site, 3) fractional coordinates of every atom in the cell.
    u_cartesian : Tensor (site, 3, 3) Cartesian displacement tensors [Å²].
    occupancy : Tensor (site,) occupancies.
    form_factors : Tensor (site, refl) scattering factor of each site's element at |g| [Å].

    Returns
    -------
    Tensor (refl,) complex.
    """
    hkl = hkl.to(positions.dtype)
    phase = 2 * math.pi * (positions @ hkl.T)  # (site, refl)
    gug = torch.einsum("ri,sij,rj->sr", g_cart, u_cartesian, g_cart)
    amplitude = occupancy[:, None] * form_factors * torch.exp(-2 * math.pi**2 * gug)
    return torch.complex(
        (amplitude * torch.cos(phase)).sum(0), (amplitude * torch.sin(phase)).sum(0)
    )
