"""Bond lengths and angles of a refined structure, with s.u. from the full covariance.

Notes
-----
A bond joins an atom of the asymmetric unit to a symmetry image of another,
x' = R x + t + n (operator k of the crystal's list, lattice translation n), written with
SHELXL's symmetry code ``k_abc`` (a = 5 + n₁, ...; ``1_555`` the identity). Two atoms are
bonded when their distance is below the sum of their covalent radii (gemmi's table) plus
``tolerance``; hydrogen–hydrogen contacts are not bonds.

The s.u. of a distance or angle q is propagated linearly, as SHELXL does, from the
covariance of the fractional coordinates (every correlation kept, so that atoms on special
positions and correlated parameters are handled) and from the cell's s.u. (independent):
σ²(q) = gᵀ C g + Σ_c (∂q/∂c)² σ²(c), with the gradients g taken by central differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import gemmi
import numpy as np

from blochnet.crystal import CELL_NAMES, Cell, Crystal
from blochnet.lattice import direct_matrix

_STEP_XYZ = 1e-6  # fractional
_STEP_CELL = 1e-5  # Å or degrees


@dataclass(frozen=True)
class Image:
    """A symmetry image of an atom of the asymmetric unit: operator index (0-based) and
    lattice translation."""

    atom: int
    operator: int
    shift: tuple[int, int, int]

    @property
    def code(self) -> str:
        """SHELXL/CIF site symmetry code, ``1_555`` for the atom itself."""
        return f"{self.operator + 1}_" + "".join(str(5 + n) for n in self.shift)


@dataclass(frozen=True)
class Bond:
    label_1: str
    label_2: str
    distance: float  # [Å]
    su: float  # [Å]
    code_2: str


@dataclass(frozen=True)
class Angle:
    label_1: str
    label_2: str  # the vertex
    label_3: str
    angle: float  # [deg]
    su: float  # [deg]
    code_1: str
    code_3: str


def bonds_and_angles(
    crystal: Crystal, xyz_covariance: np.ndarray | None = None, *, tolerance: float = 0.4
) -> tuple[list[Bond], list[Angle]]:
    """The bonds of every atom of the asymmetric unit and the angles at it.

    ``xyz_covariance``: (3·atom, 3·atom) covariance of the fractional coordinates
    (x1 y1 z1 x2 ...); None for s.u. from the cell's alone.
    """
    xyz = np.array([atom.xyz for atom in crystal.atoms], dtype=float)
    cov = np.zeros((xyz.size, xyz.size)) if xyz_covariance is None else xyz_covariance
    neighbours = _neighbours(crystal, xyz, tolerance)
    bonds, angles = [], []
    for i, images in enumerate(neighbours):
        for image in images:
            if _listed_once(i, image, crystal):
                value, su = _with_su(crystal, xyz, cov, lambda x, c, im=image, i=i: _distance(
                    crystal, x, c, Image(i, 0, (0, 0, 0)), im
                ))  # fmt: skip
                bonds.append(_bond(crystal, i, image, value, su))
        for a in range(len(images)):
            for b in range(a + 1, len(images)):
                one, three = images[a], images[b]
                value, su = _with_su(crystal, xyz, cov, lambda x, c, i=i, p=one, q=three: _angle(
                    crystal, x, c, p, Image(i, 0, (0, 0, 0)), q
                ))  # fmt: skip
                labels = [crystal.atoms[k].label for k in (one.atom, i, three.atom)]
                angles.append(Angle(*labels, value, su, one.code, three.code))
    return bonds, angles


def neighbours(crystal: Crystal, *, tolerance: float = 0.4) -> list[list[tuple[int, np.ndarray]]]:
    """For every atom of the asymmetric unit its bonded neighbours (module notes), nearest
    first: (atom index, fractional position of the image)."""
    xyz = np.array([atom.xyz for atom in crystal.atoms], dtype=float)
    m = direct_matrix(crystal.cell)
    out = []
    for i, images in enumerate(_neighbours(crystal, xyz, tolerance)):
        found = [(image.atom, _position(crystal, xyz, image)) for image in images]
        out.append(sorted(found, key=lambda item: np.linalg.norm(m @ (item[1] - xyz[i]))))
    return out


def _bond(crystal: Crystal, i: int, image: Image, value: float, su: float) -> Bond:
    atoms = crystal.atoms
    return Bond(atoms[i].label, atoms[image.atom].label, value, su, image.code)


def _listed_once(i: int, image: Image, crystal: Crystal) -> bool:
    """Each bond once: from the atom that comes first; between images of one atom, from
    one end only (the operator with the lower index, or the lower translation)."""
    if image.atom != i:
        return image.atom > i
    return (image.operator, image.shift) > (0, (0, 0, 0))


def _neighbours(crystal: Crystal, xyz: np.ndarray, tolerance: float) -> list[list[Image]]:
    m = direct_matrix(crystal.cell)
    radius = np.array([gemmi.Element(a.element).covalent_r for a in crystal.atoms])
    hydrogen = np.array([a.element in ("H", "D") for a in crystal.atoms])
    shifts = np.array(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij")).reshape(3, -1).T
    out = []
    for i, x in enumerate(xyz):
        found = []
        for j, y in enumerate(xyz):
            if hydrogen[i] and hydrogen[j]:
                continue
            limit = radius[i] + radius[j] + tolerance
            for k, op in enumerate(crystal.operators):
                image = op.rotation @ y + op.translation
                base = np.floor(image + 0.5 - x)  # the copy nearest x, then its neighbours
                d = np.linalg.norm((image - base - x + shifts) @ m.T, axis=1)
                for n in np.flatnonzero((d > 0.1) & (d < limit)):
                    found.append(Image(j, k, tuple(int(v) for v in shifts[n] - base)))
        out.append(_unique(found, crystal, xyz))
    return out


def _unique(images: list[Image], crystal: Crystal, xyz: np.ndarray) -> list[Image]:
    """One image per position (operators that map an atom on a special position alike)."""
    seen, out = set(), []
    for image in images:
        key = tuple(np.round(_position(crystal, xyz, image), 4))
        if key not in seen:
            seen.add(key)
            out.append(image)
    return out


def _position(crystal: Crystal, xyz: np.ndarray, image: Image) -> np.ndarray:
    op = crystal.operators[image.operator]
    return op.rotation @ xyz[image.atom] + op.translation + np.asarray(image.shift)


def _cartesian(crystal, xyz, cell, image) -> np.ndarray:
    return direct_matrix(cell) @ _position(crystal, xyz, image)


def _distance(crystal, xyz, cell, one: Image, two: Image) -> float:
    start = _cartesian(crystal, xyz, cell, one)
    return float(np.linalg.norm(_cartesian(crystal, xyz, cell, two) - start))


def _angle(crystal, xyz, cell, one: Image, vertex: Image, three: Image) -> float:
    centre = _cartesian(crystal, xyz, cell, vertex)
    u = _cartesian(crystal, xyz, cell, one) - centre
    v = _cartesian(crystal, xyz, cell, three) - centre
    cosine = np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))
    return float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))


def _with_su(crystal: Crystal, xyz: np.ndarray, cov: np.ndarray, quantity) -> tuple[float, float]:
    """A geometric quantity and its s.u. (module notes)."""
    cell = crystal.cell
    value = quantity(xyz, cell)
    gradient = np.zeros(xyz.size)
    for k in np.flatnonzero(np.diag(cov) > 0):
        up, down = xyz.copy().ravel(), xyz.copy().ravel()
        up[k] += _STEP_XYZ
        down[k] -= _STEP_XYZ
        gradient[k] = (
            quantity(up.reshape(xyz.shape), cell) - quantity(down.reshape(xyz.shape), cell)
        ) / (2 * _STEP_XYZ)
    variance = float(gradient @ cov @ gradient)
    parameters = np.array(cell.parameters, dtype=float)
    for c, name in enumerate(CELL_NAMES):
        if cell.su.get(name):
            up, down = parameters.copy(), parameters.copy()
            up[c] += _STEP_CELL
            down[c] -= _STEP_CELL
            slope = (quantity(xyz, Cell(*up)) - quantity(xyz, Cell(*down))) / (2 * _STEP_CELL)
            variance += (slope * cell.su[name]) ** 2
    return value, float(np.sqrt(max(variance, 0.0)))
