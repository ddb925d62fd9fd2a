"""A crystal as differentiable tensors: asymmetric unit → unit cell → U_g.

:class:`CrystalModel` holds what does not change during a refinement (cell, symmetry,
elements, scattering table, voltage); the refinable quantities are passed in as tensors
(:class:`AtomTensors`) so that every derivative flows through plain PyTorch operations.

Isotropic atoms are carried as six CIF Uij components Uiso·(1, 1, 1, cos γ*, cos β*, cos α*),
which is Uiso·I in Cartesian coordinates; so every atom has a (6,) U and one code path
serves isotropic and anisotropic atoms alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from blochnet.crystal import Crystal
from blochnet.lattice import reciprocal_matrix
from blochnet.physics.scattering import charge_scattering_factors, electron_scattering_factors
from blochnet.physics.structure_factors import structure_factors
from blochnet.physics.symmetry import UnitCellExpansion
from blochnet.sitesym import block_diagonal, site_constraints
from blochnet.units import potential_prefactor


@dataclass
class FreeParameters:
    """Free (symmetry-independent) parameters of the asymmetric unit.

    xyz : Tensor (n_xyz,) free coordinates (fractional), atom after atom.
    adp : Tensor (n_adp,) Uiso of each isotropic atom, the free Uij of each anisotropic one [Å²].
    occupancy : Tensor (atom,).
    charge : Tensor (atom,) partial charges [e], or None (neutral atoms).
    """

    xyz: Tensor
    adp: Tensor
    occupancy: Tensor
    charge: Tensor | None = None


@dataclass
class AtomTensors:
    """Asymmetric-unit parameters as tensors (atom order of the crystal).

    xyz : Tensor (atom, 3) fractional coordinates.
    uij : Tensor (atom, 6) CIF U11 U22 U33 U12 U13 U23 [Å²] (isotropic atoms included).
    occupancy : Tensor (atom,).
    charge : Tensor (atom,) partial charges [e] (positive for a cation), or None for neutral
        atoms. The cell must be neutral (see
        :func:`~blochnet.physics.scattering.charge_scattering_factors`).
    """

    xyz: Tensor
    uij: Tensor
    occupancy: Tensor
    charge: Tensor | None = None


def isotropic_uij(cell) -> np.ndarray:
    """CIF Uij of an isotropic atom with Uiso = 1 Å² (Cartesian U = I)."""
    b = reciprocal_matrix(cell)
    n = b / np.linalg.norm(b, axis=0)
    cos = n.T @ n
    return np.array([1.0, 1.0, 1.0, cos[0, 1], cos[0, 2], cos[1, 2]])


class CrystalModel:
    """Fixed description of a crystal for computing potential coefficients.

    Parameters
    ----------
    crystal : the structure (cell, operators, atoms).
    voltage : accelerating voltage [V] (sets the Lorentz factor in U_g).
    table : scattering-factor table, ``"lobato"`` or ``"peng"``.
    dtype, device : tensor precision and device.
    """

    def __init__(
        self,
        crystal: Crystal,
        *,
        voltage: float,
        table: str = "lobato",
        dtype: torch.dtype = torch.float64,
        device=None,
    ) -> None:
        self.crystal = crystal
        self.table = table
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.expansion = UnitCellExpansion.from_crystal(crystal, dtype=dtype, device=self.device)
        self.elements = crystal.elements
        element_of_atom = [self.elements.index(atom.element) for atom in crystal.atoms]
        self._site_element = torch.as_tensor(element_of_atom, device=self.device)[
            self.expansion.atom_index
        ]
        self.reciprocal = torch.as_tensor(
            reciprocal_matrix(crystal.cell), dtype=dtype, device=self.device
        )
        self.prefactor = potential_prefactor(voltage, crystal.cell.volume)
        self.iso_uij = torch.as_tensor(isotropic_uij(crystal.cell), dtype=dtype, device=self.device)
        self.constraints = site_constraints(crystal)
        self._build_maps()

    def _build_maps(self) -> None:
        """Linear maps free parameters → asymmetric unit: xyz = x0 + P p, uij = Q q."""
        iso = isotropic_uij(self.crystal.cell)[:, None]
        x_blocks, u_blocks, self.parameter_names = [], [], []
        for atom, con in zip(self.crystal.atoms, self.constraints, strict=True):
            x_blocks.append(con.xyz_basis)
            self.parameter_names += [(atom.label, n) for n in con.xyz_names]
        for atom, con in zip(self.crystal.atoms, self.constraints, strict=True):
            u_blocks.append(con.u_basis if atom.is_anisotropic else iso)
            self.parameter_names += (
                [(atom.label, n) for n in con.u_names]
                if atom.is_anisotropic
                else [(atom.label, "Uiso")]
            )
        self.xyz_origin = self._tensor(np.concatenate([c.xyz0 for c in self.constraints]))
        self.xyz_map = self._tensor(block_diagonal(x_blocks, 3))
        self.adp_map = self._tensor(block_diagonal(u_blocks, 6))

    def free_parameters(self) -> FreeParameters:
        """The crystal's own values as free parameters (least squares onto the constraints)."""
        atoms = self.atom_tensors()
        x = torch.linalg.lstsq(self.xyz_map, (atoms.xyz.reshape(-1) - self.xyz_origin)[:, None])
        u = torch.linalg.lstsq(self.adp_map, atoms.uij.reshape(-1)[:, None])
        return FreeParameters(x.solution[:, 0], u.solution[:, 0], atoms.occupancy, atoms.charge)

    def atoms_from_free(self, free: FreeParameters) -> AtomTensors:
        """Asymmetric-unit tensors that respect every site symmetry, differentiably."""
        n = len(self.crystal.atoms)
        xyz = (self.xyz_origin + self.xyz_map @ free.xyz).reshape(n, 3)
        uij = (self.adp_map @ free.adp).reshape(n, 6)
        return AtomTensors(xyz=xyz, uij=uij, occupancy=free.occupancy, charge=free.charge)

    def atom_tensors(self) -> AtomTensors:
        """The crystal's own parameters as tensors (starting values of a refinement)."""
        atoms = self.crystal.atoms
        uij = [a.uij if a.uij is not None else a.uiso * self.iso_uij.cpu().numpy() for a in atoms]
        charged = any(a.charge != 0 for a in atoms)
        return AtomTensors(
            xyz=self._tensor([a.xyz for a in atoms]),
            uij=self._tensor(uij),
            occupancy=self._tensor([a.occupancy for a in atoms]),
            charge=self._tensor([a.charge for a in atoms]) if charged else None,
        )

    def cell_weights(self, occupancy: Tensor) -> Tensor:
        """(atom,) sites in the unit cell × ``occupancy``: what one unit of a per-atom
        quantity (a charge) adds to the cell's total."""
        sites = torch.bincount(self.expansion.atom_index, minlength=len(self.crystal.atoms))
        return sites.to(occupancy) * occupancy

    def cell_charge(self, charge: Tensor, occupancy: Tensor) -> Tensor:
        """Total charge of the unit cell [e] for per-atom ``charge`` and ``occupancy``."""
        return (charge * self.cell_weights(occupancy)).sum()

    def _tensor(self, values) -> Tensor:
        return torch.as_tensor(
            np.asarray(values, dtype=float), dtype=self.dtype, device=self.device
        )

    def g_vectors(self, hkl: Tensor) -> Tensor:
        """Cartesian g [Å⁻¹] of Miller indices (refl, 3)."""
        return hkl.to(self.dtype) @ self.reciprocal.T

    def structure_factors(self, hkl: Tensor, atoms: AtomTensors) -> Tensor:
        """F(g) [Å] (refl,) complex, differentiable with respect to ``atoms``."""
        g = self.g_vectors(hkl)
        g_norm = torch.linalg.vector_norm(g, dim=-1)
        f = electron_scattering_factors(self.elements, g_norm, table=self.table)
        f_site = f[self._site_element]
        if atoms.charge is not None:
            delta = charge_scattering_factors(self.elements, g_norm)[self._site_element]
            f_site = f_site + atoms.charge[self.expansion.atom_index, None] * delta
        positions = self.expansion.positions(atoms.xyz)
        u_cart = self.expansion.u_cartesian(atoms.uij)
        occupancy = atoms.occupancy[self.expansion.atom_index]
        return structure_factors(hkl, g, positions, u_cart, occupancy, f_site)

    def potential(self, hkl: Tensor, atoms: AtomTensors, *, real: bool | None = None) -> Tensor:
        """U_g = γ F(−g)/(π Ω) [Å⁻²], the Fourier coefficient of the potential
        U(r) = Σ_g U_g exp(+2πi g·r); real-valued when the crystal is centrosymmetric about
        the origin (``real=None`` decides from the operators).

        F is the crystallographic structure factor Σ f exp(+2πi h·x), so the coefficient
        of the potential is F at −g: beams are the plane waves exp(+2πi (K + g)·r) that
        move towards +g, and an atom at x contributes f exp(−2πi g·x) to U_g. Using F(g)
        instead would simulate the inverted structure (wrong polarity and hand)."""
        u = self.prefactor * self.structure_factors(-hkl, atoms)
        if real is None:
            real = self.centrosymmetric_at_origin
        return u.real if real else u

    def wavevector(self, atoms: AtomTensors, wavelength: float) -> tuple[Tensor, Tensor]:
        """|K| = sqrt(1/λ² + U₀) in the crystal [Å⁻¹] and U₀ [Å⁻²], differentiable in U₀."""
        zero = torch.zeros((1, 3), dtype=torch.long, device=self.device)
        u0 = self.potential(zero, atoms, real=False).real[0]
        return torch.sqrt(1 / wavelength**2 + u0), u0

    @property
    def centrosymmetric_at_origin(self) -> bool:
        """True when −x is a symmetry operator (then every U_g is real)."""
        return any(
            np.array_equal(op.rotation, -np.eye(3, dtype=int)) and not np.any(op.translation)
            for op in self.crystal.operators
        )
