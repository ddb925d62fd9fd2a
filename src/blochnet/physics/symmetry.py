"""Expansion of the asymmetric unit to the unit cell, on torch tensors.

:class:`UnitCellExpansion` applies the distinct images of every atom (found by
:func:`blochnet.sitesym.site_constraints`) to differentiable tensors, so that structure
factors can be differentiated with respect to the asymmetric unit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from blochnet.crystal import Cell, Crystal
from blochnet.lattice import direct_matrix, uij_to_cartesian
from blochnet.sitesym import SiteConstraint, operator_arrays, site_constraints

__all__ = ["UnitCellExpansion"]


@dataclass
class UnitCellExpansion:
    """Maps asymmetric-unit tensors to every atom (site) of the unit cell.

    A site s, image of atom ``atom_index[s]`` by operator ``operator_index[s]``, is at
    x_s = R_s x + t_s (t_s includes a fixed lattice shift that puts the starting
    position in [0, 1)), with ADP U_s = Rc_s U Rc_s^T, Rc = A R A^-1 in Cartesian
    coordinates. Only distinct images are listed, so each site carries the chemical
    occupancy of its atom. Tensors follow the dtype and device of the inputs.
    """

    cell: Cell
    rotations: Tensor  # (site, 3, 3) fractional R
    translations: Tensor  # (site, 3) fractional t + lattice shift
    cartesian_rotations: Tensor  # (site, 3, 3) A R A^-1
    atom_index: Tensor  # (site,) long
    operator_index: Tensor  # (site,) long
    occupancy: Tensor  # (site,) chemical occupancy of the parent atom

    @classmethod
    def from_crystal(
        cls,
        crystal: Crystal,
        constraints: list[SiteConstraint] | None = None,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> UnitCellExpansion:
        """Precompute the image operators of every atom of ``crystal``."""
        if constraints is None:
            constraints = site_constraints(crystal)
        rotations, translations = operator_arrays(crystal)
        a_matrix = direct_matrix(crystal.cell)
        a_inverse = np.linalg.inv(a_matrix)
        rot, tran, atom_index, op_index, occupancy = [], [], [], [], []
        for i, (atom, constraint) in enumerate(zip(crystal.atoms, constraints, strict=True)):
            for g in constraint.image_ops:
                position = rotations[g] @ atom.xyz + translations[g]
                rot.append(rotations[g])
                tran.append(translations[g] - np.floor(position + 1e-9))
                atom_index.append(i)
                op_index.append(g)
                occupancy.append(atom.occupancy)
        rot = np.array(rot).reshape(-1, 3, 3)
        as_float = functools.partial(torch.as_tensor, dtype=dtype, device=device)
        as_long = functools.partial(torch.as_tensor, dtype=torch.long, device=device)
        return cls(
            cell=crystal.cell,
            rotations=as_float(rot),
            translations=as_float(np.array(tran).reshape(-1, 3)),
            cartesian_rotations=as_float(a_matrix @ rot @ a_inverse),
            atom_index=as_long(atom_index),
            operator_index=as_long(op_index),
            occupancy=as_float(occupancy),
        )

    @property
    def n_sites(self) -> int:
        return int(self.atom_index.shape[0])

    def sites(self) -> Tensor:
        """(site,) long tensor: index of the asymmetric-unit atom of each site."""
        return self.atom_index

    def positions(self, xyz_asym: Tensor) -> Tensor:
        """Fractional positions (..., atom, 3) -> (..., site, 3)."""
        rot = self.rotations.to(dtype=xyz_asym.dtype, device=xyz_asym.device)
        tran = self.translations.to(dtype=xyz_asym.dtype, device=xyz_asym.device)
        x = xyz_asym.index_select(-2, self.atom_index.to(xyz_asym.device))
        return torch.einsum("sij,...sj->...si", rot, x) + tran

    def u_cartesian(self, uij_asym: Tensor) -> Tensor:
        """CIF Uij (..., atom, 6) [Å²] -> Cartesian U of every site (..., site, 3, 3)."""
        rc = self.cartesian_rotations.to(dtype=uij_asym.dtype, device=uij_asym.device)
        u = uij_to_cartesian(self.cell, uij_asym)
        u = u.index_select(-3, self.atom_index.to(uij_asym.device))
        return rc @ u @ rc.transpose(-1, -2)
