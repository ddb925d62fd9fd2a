"""Site symmetry: special-position constraints of the atoms of the asymmetric unit (numpy).

For every atom of the asymmetric unit, :func:`site_constraints` finds the operators that
fix it (its site-symmetry group), the affine subspace of coordinates and the linear
subspace of ADPs that this group leaves invariant, and one operator per distinct image in
the unit cell (applied to tensors by :class:`blochnet.physics.symmetry.UnitCellExpansion`).

Notes
-----
A site x is fixed by the operator (R, t) when R x + t = x + n for a lattice vector n. The
invariant coordinates form x = x0 + P p with P spanning the null space of all (R - I);
x0 is the group average of the images of the given x (the projection onto the subspace).
ADPs transform as U* -> R U* R^T in the fractional basis, U* = N U_cif N with
N = diag(|a*|, |b*|, |c*|) (Grosse-Kunstleve & Adams, J. Appl. Cryst. 35 (2002) 477,
doi:10.1107/S0021889802008580), so U_cif -> R' U_cif R'^T with R' = N^-1 R N.
The bases P and Q are in reduced row-echelon form: each free parameter equals one
component (its name), e.g. x, 2x, z -> parameters x and z; U11 = U22 = 2 U12 -> U11.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from blochnet.crystal import UIJ_NAMES, Crystal
from blochnet.errors import StructureError
from blochnet.lattice import direct_matrix, reciprocal_matrix

__all__ = [
    "SiteConstraint",
    "block_diagonal",
    "constraint_matrices",
    "operator_arrays",
    "site_constraints",
]

TOLERANCE = 0.01  # [Å] an image closer than this to its atom counts as the same site
_PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))  # CIF order of Uij


@dataclass(frozen=True, eq=False)
class SiteConstraint:
    """Symmetry constraints of one asymmetric-unit atom.

    Attributes
    ----------
    label : atom label.
    order : number of operators that fix the site (order of the site-symmetry group).
    multiplicity : number of distinct positions in the unit cell (n_operators / order).
    xyz0 : (3,) the given position projected onto the invariant subspace (fractional).
    xyz_basis : (3, n_xyz) P; every x0 + P p keeps the site symmetry.
    u_basis : (6, n_u) Q; every Q q (CIF U11 U22 U33 U12 U13 U23) keeps the site symmetry.
    image_ops : indices into ``crystal.operators``, one per distinct image (identity first).
    site_ops : indices of the operators that fix the site.
    symmetry : point-group symbol of the site symmetry ("1", "2", "-43m", ...).
    """

    label: str
    order: int
    multiplicity: int
    xyz0: np.ndarray
    xyz_basis: np.ndarray
    u_basis: np.ndarray
    image_ops: tuple[int, ...]
    site_ops: tuple[int, ...] = (0,)
    symmetry: str = "1"

    @property
    def xyz_names(self) -> list[str]:
        """Names of the free coordinates ("x", "y", "z"), one per column of xyz_basis."""
        return [("x", "y", "z")[_pivot(column)] for column in self.xyz_basis.T]

    @property
    def u_names(self) -> list[str]:
        """Names of the free ADP components ("U11" ...), one per column of u_basis."""
        return [UIJ_NAMES[_pivot(column)] for column in self.u_basis.T]

    def free_xyz(self, xyz: np.ndarray) -> np.ndarray:
        """Free coordinates p with xyz0 + P p ≈ xyz (least squares), shape (n_xyz,)."""
        shift = np.asarray(xyz, dtype=float) - self.xyz0
        return np.linalg.lstsq(self.xyz_basis, shift, rcond=None)[0]

    def free_u(self, uij: np.ndarray) -> np.ndarray:
        """Free ADP parameters q with Q q ≈ uij (least squares), shape (n_u,)."""
        return np.linalg.lstsq(self.u_basis, np.asarray(uij, dtype=float), rcond=None)[0]


def site_constraints(crystal: Crystal, *, tolerance: float = TOLERANCE) -> list[SiteConstraint]:
    """Site-symmetry constraints of every atom of the asymmetric unit.

    Parameters
    ----------
    crystal : structure with the full list of operators (centring included).
    tolerance : [Å] largest distance between an atom and an image of it for the two to
        count as one site. Real files round special coordinates (0.3333 for 1/3), which
        moves an atom by up to ~1e-3 Å in large cells; 0.01 Å absorbs that while no two
        real atoms are ever that close.
    """
    rotations, translations = operator_arrays(crystal)
    a_matrix = direct_matrix(crystal.cell)
    norms = np.linalg.norm(reciprocal_matrix(crystal.cell), axis=0)
    return [
        _site_constraint(atom.label, atom.xyz, rotations, translations, a_matrix, norms, tolerance)
        for atom in crystal.atoms
    ]


def constraint_matrices(
    constraints: list[SiteConstraint],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Block-diagonal constraint matrices of all atoms.

    Returns
    -------
    x0_all : (3 n_atom,) special-position origins, atom after atom.
    p_all : (3 n_atom, n_xyz_total) coordinate bases: xyz_all = x0_all + p_all p.
    q_all : (6 n_atom, n_u_total) anisotropic ADP bases: uij_all = q_all q (an isotropic
        atom refines Uiso instead, which site symmetry never constrains).
    names : (label, component) of the columns of p_all, then of the columns of q_all.
    """
    x0_all = np.concatenate([c.xyz0 for c in constraints]) if constraints else np.zeros(0)
    p_all = block_diagonal([c.xyz_basis for c in constraints], 3)
    q_all = block_diagonal([c.u_basis for c in constraints], 6)
    names = [(c.label, name) for c in constraints for name in c.xyz_names]
    names += [(c.label, name) for c in constraints for name in c.u_names]
    return x0_all, p_all, q_all, names


# --- one site ------------------------------------------------------------------------


def operator_arrays(crystal: Crystal) -> tuple[np.ndarray, np.ndarray]:
    """(op, 3, 3) rotations and (op, 3) translations of the crystal's operators (fractional)."""
    rotations = np.array([op.rotation for op in crystal.operators], dtype=float)
    translations = np.array([op.translation for op in crystal.operators], dtype=float)
    return rotations.reshape(-1, 3, 3), translations.reshape(-1, 3)


def _site_constraint(label, xyz, rotations, translations, a_matrix, norms, tolerance):
    xyz = np.asarray(xyz, dtype=float)
    images = rotations @ xyz + translations
    shifts = np.round(xyz - images)
    distances = np.linalg.norm((images + shifts - xyz) @ a_matrix.T, axis=1)
    fixed = np.flatnonzero(distances < tolerance)
    if len(fixed) == 0:
        raise StructureError(f"atom {label}: the operators contain no identity")
    rot, tran = rotations[fixed], translations[fixed] + shifts[fixed]
    _check_group(label, rot, tran)
    xyz0 = np.mean(rot @ xyz + tran, axis=0)
    n_ops, order = len(rotations), len(fixed)
    if n_ops % order:
        raise StructureError(f"atom {label}: site group of order {order} does not divide {n_ops}")
    image_ops = _distinct_images(xyz0, rotations, translations, a_matrix, tolerance)
    if len(image_ops) != n_ops // order:
        raise StructureError(
            f"atom {label}: {len(image_ops)} distinct images but multiplicity {n_ops // order}; "
            "the atom lies ambiguously close to a special position"
        )
    identity = np.eye(3)
    xyz_basis = _echelon(_null_space(np.concatenate(rot - identity)))
    scaled = rot / norms[None, :, None] * norms[None, None, :]  # N^-1 R N
    actions = np.stack([_adp_action(r) for r in scaled])
    u_basis = _echelon(_null_space(np.concatenate(actions - np.eye(6))))
    return SiteConstraint(
        label=label,
        order=order,
        multiplicity=n_ops // order,
        xyz0=xyz0,
        xyz_basis=xyz_basis,
        u_basis=u_basis,
        image_ops=tuple(int(g) for g in image_ops),
        site_ops=tuple(int(g) for g in fixed),
        symmetry=_point_group(rot),
    )


def _check_group(label: str, rot: np.ndarray, tran: np.ndarray) -> None:
    """The affine maps (R, t + n) that fix a site must form a group."""
    products_rot = np.einsum("aij,bjk->abik", rot, rot).reshape(-1, 9)
    products_tran = (np.einsum("aij,bj->abi", rot, tran) + tran[:, None, :]).reshape(-1, 3)
    members = np.concatenate([rot.reshape(-1, 9), tran], axis=1)
    products = np.concatenate([products_rot, products_tran], axis=1)
    found = np.abs(products[:, None, :] - members[None, :, :]).max(axis=2).min(axis=1)
    if found.max() > 1e-6:
        raise StructureError(
            f"atom {label}: the operators that nearly fix it do not form a group; "
            "it lies close to two different special positions"
        )


def _distinct_images(xyz0, rotations, translations, a_matrix, tolerance) -> list[int]:
    positions = (rotations @ xyz0 + translations) % 1.0
    kept: list[int] = []
    for g, position in enumerate(positions):
        if kept:
            delta = positions[kept] - position
            delta -= np.round(delta)
            if np.linalg.norm(delta @ a_matrix.T, axis=1).min() < tolerance:
                continue
        kept.append(g)
    return kept


def _adp_action(r: np.ndarray) -> np.ndarray:
    """6x6 matrix of U -> r U r^T on (U11, U22, U33, U12, U13, U23)."""
    action = np.empty((6, 6))
    for k, (i, j) in enumerate(_PAIRS):
        unit = np.zeros((3, 3))
        unit[i, j] = unit[j, i] = 1.0
        image = r @ unit @ r.T
        action[:, k] = [image[p, q] for p, q in _PAIRS]
    return action


def _null_space(matrix: np.ndarray) -> np.ndarray:
    """Orthonormal basis (columns) of the null space of ``matrix``."""
    _, singular, vt = np.linalg.svd(matrix)
    rank = int(np.sum(singular > 1e-8 * max(1.0, singular[0] if len(singular) else 0.0)))
    return vt[rank:].T


def _echelon(basis: np.ndarray) -> np.ndarray:
    """Same column space, columns in reduced row-echelon form (one unit pivot each)."""
    rows = basis.T.copy()
    n_rows, n_cols = rows.shape
    row = 0
    for col in range(n_cols):
        if row == n_rows:
            break
        pivot = row + int(np.argmax(np.abs(rows[row:, col])))
        if abs(rows[pivot, col]) < 1e-8:
            continue
        rows[[row, pivot]] = rows[[pivot, row]]
        rows[row] /= rows[row, col]
        for other in range(n_rows):
            if other != row:
                rows[other] -= rows[other, col] * rows[row]
        row += 1
    return np.vectorize(_snap, otypes=[float])(rows.T).reshape(basis.shape)


def _snap(value: float) -> float:
    """Round to a simple fraction (denominator <= 24) when within 1e-9."""
    fraction = Fraction(value).limit_denominator(24)
    return float(fraction) if abs(float(fraction) - value) < 1e-9 else float(value)


def _pivot(column: np.ndarray) -> int:
    return int(np.flatnonzero(np.abs(column) > 1e-12)[0])


def block_diagonal(blocks: list[np.ndarray], rows: int) -> np.ndarray:
    """Stack (rows, n_i) blocks on the diagonal of a (rows·len, Σ n_i) matrix."""
    result = np.zeros((rows * len(blocks), sum(b.shape[1] for b in blocks)))
    col = 0
    for i, block in enumerate(blocks):
        result[rows * i : rows * (i + 1), col : col + block.shape[1]] = block
        col += block.shape[1]
    return result


# --- point-group symbols -------------------------------------------------------------


def _rotation_types(rot: np.ndarray) -> tuple:
    """Multiset of (det, trace) of the rotations: it identifies a crystallographic class."""
    kinds = Counter(
        (round(float(np.linalg.det(r))), round(float(np.trace(r)))) for r in rot.reshape(-1, 3, 3)
    )
    return tuple(sorted(kinds.items()))


@functools.cache
def _point_group_table() -> dict[tuple, str]:
    import gemmi  # only to name the site symmetry

    table: dict[tuple, str] = {}
    for spacegroup in gemmi.spacegroup_table():
        symbol = spacegroup.point_group_hm()
        if symbol not in table.values():
            rot = np.array([op.rot for op in spacegroup.operations().sym_ops]) / gemmi.Op.DEN
            table[_rotation_types(rot)] = symbol
    return table


def _point_group(rot: np.ndarray) -> str:
    """Hermann–Mauguin symbol of the point group of ``rot`` (order as fallback)."""
    return _point_group_table().get(_rotation_types(rot), f"order {len(rot)}")
