"""Cell geometry: direct and reciprocal basis matrices in a Cartesian crystal frame (numpy;
ADP conversions also take torch tensors).

Convention (the common orthogonalisation of PDB/gemmi): **a** along x, **b** in the x–y
plane, **c** completing a right-handed set. The direct matrix has the basis vectors as
columns, r = A x for fractional x; the reciprocal matrix has a*, b*, c* as columns,
g = B h for Miller indices h, and B = A^-T (no 2π).
"""

from __future__ import annotations

import numpy as np

from blochnet.crystal import Cell


def direct_matrix(cell: Cell) -> np.ndarray:
    """(3, 3) matrix with columns a, b, c [Å] in the Cartesian crystal frame."""
    a, b, c = cell.a, cell.b, cell.c
    ca, cb, cg = np.cos(np.radians([cell.alpha, cell.beta, cell.gamma]))
    sg = np.sin(np.radians(cell.gamma))
    cx = c * cb
    cy = c * (ca - cb * cg) / sg
    cz = np.sqrt(max(c**2 - cx**2 - cy**2, 0.0))
    return np.array([[a, b * cg, cx], [0.0, b * sg, cy], [0.0, 0.0, cz]])


def reciprocal_matrix(cell: Cell) -> np.ndarray:
    """(3, 3) matrix with columns a*, b*, c* [Å^-1] in the Cartesian crystal frame."""
    return np.linalg.inv(direct_matrix(cell)).T


def uij_to_cartesian(cell: Cell, uij):
    """Convert CIF U11 U22 U33 U12 U13 U23 (``(..., 6)``) to Cartesian U (``(..., 3, 3)``).

    ``uij`` is a numpy array or a torch tensor (the result is of the same kind, on the
    tensor's device and in its dtype, differentiably).

    Notes
    -----
    U_cart = A N U_cif N A^T with N = diag(|a*|, |b*|, |c*|) (Grosse-Kunstleve & Adams,
    J. Appl. Cryst. 35 (2002) 477, doi:10.1107/S0021889802008580).
    """
    a_mat = direct_matrix(cell)
    n = np.linalg.norm(reciprocal_matrix(cell), axis=0)
    m = a_mat * n[None, :]
    idx = [[0, 3, 4], [3, 1, 5], [4, 5, 2]]
    if hasattr(uij, "new_tensor"):  # a torch tensor (this module does not import torch)
        m_t = uij.new_tensor(m)
        u = uij[..., idx]
        return m_t @ u @ m_t.T
    u = np.asarray(uij)[..., idx]
    return m @ u @ m.T


def cartesian_to_uij(cell: Cell, u_cart: np.ndarray) -> np.ndarray:
    """Inverse of :func:`uij_to_cartesian`: (..., 3, 3) Cartesian U to (..., 6) CIF Uij."""
    a_mat = direct_matrix(cell)
    n = np.linalg.norm(reciprocal_matrix(cell), axis=0)
    m_inv = np.linalg.inv(a_mat * n[None, :])
    u = m_inv @ np.asarray(u_cart) @ m_inv.T
    return np.stack(
        [u[..., 0, 0], u[..., 1, 1], u[..., 2, 2], u[..., 0, 1], u[..., 0, 2], u[..., 1, 2]],
        axis=-1,
    )
