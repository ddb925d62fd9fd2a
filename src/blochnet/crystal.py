"""Plain records describing a crystal structure as read from a file.

These are numpy/str records without any torch state: the physics layer turns them into
tensors (:mod:`blochnet.physics.symmetry`, :mod:`blochnet.physics.structure_factors`).

Conventions
-----------
* Fractional coordinates refer to the cell in :attr:`Crystal.cell`.
* ``uij`` holds U11 U22 U33 U12 U13 U23 [Å^2] in the crystallographic (CIF) convention,
  i.e. referred to the reciprocal-cell-normalised basis as ``_atom_site_aniso_U_*``.
* ``uiso`` is always set: for anisotropic atoms it is Ueq (one third of the trace of the
  Cartesian U tensor) so that code which only needs an isotropic value can use it.
* Symmetry operators act on fractional coordinates: x' = R x + t, with t reduced to [0, 1).
* Standard uncertainties, where the file gave them, are kept in ``su`` keyed by the
  quantity name (``"x"``, ``"y"``, ``"z"``, ``"occ"``, ``"uiso"``, ``"U11"`` ... ``"U23"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import gemmi
import numpy as np

CELL_NAMES = ("a", "b", "c", "alpha", "beta", "gamma")
UIJ_NAMES = ("U11", "U22", "U33", "U12", "U13", "U23")
CELL_LENGTH_RANGE = (1.0, 2000.0)  # [Å] physical cells, a metal's to a large protein's
CELL_ANGLE_RANGE = (5.0, 175.0)  # [deg]


def cell_range_problem(name: str, value: float) -> str:
    """'' for a cell parameter in its physical range, else what was expected."""
    length = name in ("a", "b", "c")
    (low, high), unit = (CELL_LENGTH_RANGE, " Å") if length else (CELL_ANGLE_RANGE, "°")
    if low <= value <= high:
        return ""
    return (
        f"expected {'a length' if length else 'an angle'} of {low:g}–{high:g}{unit}, got {value:g}"
    )


@dataclass(frozen=True)
class Cell:
    """Unit cell: lengths [Å] and angles [degrees], with optional s.u."""

    a: float
    b: float
    c: float
    alpha: float
    beta: float
    gamma: float
    su: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def parameters(self) -> tuple[float, float, float, float, float, float]:
        return (self.a, self.b, self.c, self.alpha, self.beta, self.gamma)

    @property
    def volume(self) -> float:
        """Cell volume [Å^3]."""
        ca, cb, cg = np.cos(np.radians([self.alpha, self.beta, self.gamma]))
        return float(
            self.a * self.b * self.c * np.sqrt(1 - ca**2 - cb**2 - cg**2 + 2 * ca * cb * cg)
        )


@dataclass(frozen=True)
class SymOp:
    """A space-group operator acting on fractional coordinates: x' = R x + t."""

    rotation: np.ndarray  # (3, 3) int
    translation: np.ndarray  # (3,) float in [0, 1)
    xyz: str = ""  # the operator as a triplet, e.g. "-y,x-y,z+2/3"

    def triplet(self) -> str:
        """The operator as a triplet: ``xyz`` where set, else written from R and t."""
        if self.xyz:
            return self.xyz.replace(" ", "")
        matrix, den = gemmi.Op(), gemmi.Op.DEN
        matrix.rot = (np.rint(self.rotation) * den).astype(int).tolist()
        matrix.tran = (np.rint(np.asarray(self.translation) * den).astype(int) % den).tolist()
        return matrix.triplet()


def find_space_group(operators: list[SymOp]) -> gemmi.SpaceGroup | None:
    """gemmi's space group with exactly these operators (None for an unlisted setting)."""
    return gemmi.find_spacegroup_by_ops(gemmi.GroupOps([gemmi.Op(o.triplet()) for o in operators]))


@dataclass
class Atom:
    """One atom of the asymmetric unit."""

    label: str
    element: str  # element symbol, capitalised ("Si", "O", "H")
    xyz: np.ndarray  # (3,) fractional
    occupancy: float = 1.0  # chemical occupancy of the site (1 = fully occupied)
    uiso: float = 0.0  # Uiso, or Ueq for anisotropic atoms [Å^2]
    uij: np.ndarray | None = None  # (6,) U11 U22 U33 U12 U13 U23 [Å^2], or None
    su: dict[str, float] = field(default_factory=dict)
    charge: float = 0.0  # partial charge for scattering [e], positive for a cation

    @property
    def is_anisotropic(self) -> bool:
        return self.uij is not None


@dataclass
class Crystal:
    """A crystal structure: cell, space group, asymmetric unit.

    Attributes
    ----------
    cell : the unit cell.
    spacegroup : Hermann–Mauguin symbol as gemmi writes it (e.g. ``"P 32 2 1"``).
    operators : every operator of the space group (including centring), identity first.
    atoms : the asymmetric unit.
    source : file it was read from ('' when built in code).
    block : name of the CIF data block it was read from.
    """

    cell: Cell
    spacegroup: str
    operators: list[SymOp]
    atoms: list[Atom]
    source: str = ""
    block: str = ""

    @property
    def elements(self) -> list[str]:
        """Distinct element symbols in order of first appearance."""
        return list(dict.fromkeys(atom.element for atom in self.atoms))

    def atom(self, label: str) -> Atom:
        for atom in self.atoms:
            if atom.label == label:
                return atom
        raise KeyError(f"no atom labelled {label!r}; labels are {[a.label for a in self.atoms]}")

    @property
    def is_centrosymmetric(self) -> bool:
        """Whether the space group holds an inversion (then the structure and its inverse
        are the same crystal, up to an origin shift)."""
        minus = -np.eye(3, dtype=int)
        return any(np.array_equal(op.rotation, minus) for op in self.operators)

    def inverted(self) -> Crystal:
        """The structure inverted through the origin: the other absolute structure.

        Coordinates become −x (reduced to [0, 1)), every operator x' = R x + t becomes
        x' = R x − t, and the space group is named anew (P3₂21 becomes P3₁21; a polar group
        such as Pna2₁ keeps its name). ADPs, occupancies and s.u. are unchanged: a
        displacement tensor is even under inversion.
        """
        operators = [
            SymOp(op.rotation.copy(), -np.asarray(op.translation, dtype=float) % 1.0)
            for op in self.operators
        ]
        found = find_space_group(operators)
        atoms = []
        for atom in self.atoms:
            xyz = -np.asarray(atom.xyz, dtype=float)
            xyz = xyz - np.floor(xyz + 1e-9) + 0.0  # in [0, 1); 0, not 1 or −0, at the edge
            uij = None if atom.uij is None else atom.uij.copy()
            atoms.append(replace(atom, xyz=xyz, uij=uij, su=dict(atom.su)))
        return replace(
            self, operators=operators, atoms=atoms, spacegroup=found.xhm() if found else ""
        )
