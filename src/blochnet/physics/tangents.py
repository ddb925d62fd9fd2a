"""Directional derivatives of Bloch-wave intensities from one eigendecomposition (forward mode).

For a Hermitian structure matrix A = V diag(λ) Vᴴ (no absorption) the exit wave is
ψ(t) = exp(i c t A) e₀ = V (E(t) ∘ b), E_j(t) = exp(i c t λ_j), b = Vᴴ e₀. Its derivative
along a change Ȧ of the matrix and ċ of c is the Daleckii–Krein formula

    ψ̇(t) = V y(t),   y_i(t) = Σ_j F_ij(t) M_ij b_j + i ċ t λ_i E_i(t) b_i,   M = Vᴴ Ȧ V,

with the divided differences F_ij(t) = (E_i(t) − E_j(t))/(λ_i − λ_j), F_ii = i c t E_i(t).
For well-separated eigenvalues the sum over j is two matrix products,
y = E ∘ (K b) − K (E ∘ b) with K_ij = M_ij / (λ_i − λ_j); pairs with
|c t_max (λ_i − λ_j)| below ``NEAR`` (every diagonal pair, and the nearly degenerate pairs
of a zone axis) use F_ij = i c t E_i φ(i c t (λ_j − λ_i)), φ(x) = (eˣ − 1)/x summed as its
Taylor series, so the result stays finite and exact at degeneracies. İ_g(t) =
2 Re(conj ψ_g(t) ψ̇_g(t)).

One eigendecomposition serves every direction: a direction costs two products with V
(M) and O(T N²) for the thicknesses, against an eigendecomposition for a new forward
pass, so a whole Jacobian of a few tens of parameters costs a few forward passes
(Higham, *Functions of Matrices*, SIAM 2008, §3.1; Daleckii & Krein 1965).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from jaxtyping import Float, Int, Shaped
from torch import Tensor

from blochnet.physics.bloch import batched_eigensolver
from blochnet.physics.propagation import SINGLE, matmul_mixed, propagate_intensities

NEAR = 0.3  # |c t_max Δλ| below which a pair's divided difference is a Taylor series
_TERMS = 14  # φ(x) = Σ_{n<_TERMS} xⁿ/(n+1)!: relative error below 0.3¹⁴/15! ≈ 4e-20


def weighted_intensity_tangents(
    matrix: Shaped[Tensor, "orient beam beam"],
    thickness: Float[Tensor, "orient thick"],
    c: Float[Tensor, " orient"],
    weights: Float[Tensor, "orient thick"],
    matrix_tangents: Shaped[Tensor, "direction orient beam beam"] | Callable,
    c_tangents: Float[Tensor, "direction orient"] | None = None,
    *,
    incident: int = 0,
    rows: Int[Tensor, "orient row"] | None = None,
    single: bool = False,
) -> tuple[Float[Tensor, "orient beam"], Float[Tensor, "direction orient row"]]:
    """Thickness-weighted intensities Σ_t w_t I_g(t) and their derivatives along directions.

    Parameters
    ----------
    matrix : the Hermitian structure matrix A (decomposed here, once).
    thickness : (orient, thick) [Å]; ``c`` : (orient,) π/K_n [Å].
    weights : (orient, thick) weights of the thickness samples.
    matrix_tangents : (direction, orient, beam, beam) Ȧ, one per direction; or a callable
        returning an iterable of (Ȧ, ċ) blocks of directions (ċ may be None), so that
        the tangents of many directions never exist at once. A block's Ȧ of shape
        (direction, orient, beam) is a diagonal one (a change of the excitation errors
        alone, as a rotation of the beam makes): M = Vᴴ Ȧ V then costs one product.
    c_tangents : (direction, orient) ċ, or None where c does not change (with a tensor
        ``matrix_tangents``).
    incident : index of the incident beam.
    rows : (orient, row) the beams whose tangents are wanted, per orientation (None: all):
        the last product with V then costs rows·N² instead of N³ per direction.
    single : the direction-dependent products in single precision (complex64 / float32;
        the eigendecomposition and intensities stay in the input's): half the time, the
        tangents to about 1e-6 relative, enough for a normal matrix JᵀJ (step directions,
        s.u.) but not for a gradient.

    Returns
    -------
    intensities (orient, beam) and tangents (direction, orient, beam), or (direction,
    orient, row) with ``rows``.
    """
    values, vectors = batched_eigensolver(torch.linalg.eigh, matrix)
    cdt = torch.complex128 if values.dtype == torch.float64 else torch.complex64
    v = vectors.to(cdt)
    b = v[:, incident, :].conj()  # Vᴴ e₀ (orient, mode)
    tau = c[:, None] * thickness  # (orient, thick)
    psi, phase = propagate_intensities(vectors, values.to(cdt), vectors, thickness, c, incident)
    intensity = ((psi.real**2 + psi.imag**2) * weights[:, :, None]).sum(1)
    # the thickness sum taken once for every direction: Q_gi = Σ_t w conj(ψ_g) E_i and
    # Q'_gi = Σ_t w conj(ψ_g) i c t E_i (orient, beam, mode)
    weighted = psi.conj().transpose(1, 2) * weights[:, None, :].to(cdt)  # (o, beam, t)
    q = weighted @ phase
    q_tau = weighted @ (1j * tau[:, :, None].to(cdt) * phase)
    if rows is not None:  # only the wanted beams g from here on
        q, q_tau, weighted = (_rows(x, rows) for x in (q, q_tau, weighted))
    v_rows = v if rows is None else _rows(v, rows)
    vq, vq_tau = v_rows * q, v_rows * q_tau
    dz = values[:, :, None] - values[:, None, :]  # λ_i − λ_j
    near = dz.abs() * tau.abs().amax(1)[:, None, None] < NEAR
    off_diagonal = ~torch.eye(dz.shape[-1], dtype=torch.bool, device=dz.device)
    o, i, j = (near & off_diagonal).nonzero(as_tuple=True)
    r_near = None
    if len(o):  # nearly degenerate pairs i ≠ j: F_ij = i c t E_i φ(i c t (λ_j − λ_i))
        x = 1j * (tau[o] * (values[o, j] - values[o, i])[:, None]).to(cdt)  # (pair, t)
        f = 1j * tau[o].to(cdt) * phase[o, :, i] * _phi(x)  # (pair, t)
        r_near = (weighted[o] @ f[:, :, None])[..., 0] * v_rows[o, :, i]  # (pair, beam)
    blocks = matrix_tangents() if callable(matrix_tangents) else [(matrix_tangents, c_tangents)]
    if single and values.dtype == torch.float64:
        low = lambda x: x.to(SINGLE[x.dtype])  # noqa: E731
        vectors, v, b, q, vq, vq_tau = map(low, (vectors, v, b, q, vq, vq_tau))
        dz, values = low(dz), low(values)
        r_near, cdt = None if r_near is None else low(r_near), torch.complex64
    out = []
    for a_dot, c_dot in blocks:
        # the direction-dependent products (the O(N³) work) in real arithmetic for a real
        # symmetric A (centrosymmetric structures): real V, Ȧ, M and K
        if single:
            a_dot = a_dot.to(SINGLE[a_dot.dtype])
        work = vectors if not vectors.is_complex() and not a_dot.is_complex() else v
        bw = work[:, incident, :].conj()
        work_rows = work if rows is None else _rows(work, rows)
        if a_dot.ndim == 3:  # diagonal Ȧ (d, o, beam): M = (Vᴴ diag(Ȧ)) V
            m = (work.mH[None] * a_dot[:, :, None, :].to(work.dtype)) @ work[None]
        else:
            m = work.mH[None] @ a_dot.to(work.dtype) @ work[None]  # M = Vᴴ Ȧ V (d, o, m, m)
        k = torch.where(near, torch.zeros((), dtype=m.dtype, device=m.device), m / dz.to(m.dtype))
        # Σ_t w conj(ψ_g) ψ̇_g: E∘(K b) and −K(E∘b) of the separated pairs, the diagonal
        # (i c t E_i M_ii b_i) and ċ (i ċ t λ_i E_i b_i)
        total = matmul_mixed(vq[None], (k @ bw[None, :, :, None]))[..., 0]
        vk, bq = work_rows[None] @ k, b[:, None, :] * q
        total = total - (torch.complex((vk * bq.real).sum(-1), (vk * bq.imag).sum(-1))
                         if not vk.is_complex() else (vk * bq[None]).sum(-1))  # fmt: skip
        diagonal = torch.diagonal(m, dim1=-2, dim2=-1) * bw[None]
        if c_dot is not None:
            diagonal = diagonal + (c_dot / c)[..., None].to(m.dtype) * (values * bw)[None]
        total = total + matmul_mixed(vq_tau[None], diagonal[..., None])[..., 0]
        if r_near is not None:
            coefficient = (m[:, o, i, j] * bw[o, j][None]).to(cdt)  # (d, pair)
            total = total.index_add(1, o, coefficient[:, :, None] * r_near[None])
        out.append(2 * total.real.to(intensity.dtype))
    return intensity, torch.cat(out)


def _rows(x: Tensor, rows: Tensor) -> Tensor:
    """Rows ``rows`` (orient, row) of every orientation's matrix ``x`` (orient, beam, ...)."""
    index = rows.reshape(*rows.shape, *([1] * (x.ndim - 2))).expand(*rows.shape, *x.shape[2:])
    return torch.gather(x, 1, index)


def _phi(x: Tensor) -> Tensor:
    """φ(x) = (eˣ − 1)/x for |x| ≤ NEAR, by its Taylor series (Horner)."""
    result = torch.full_like(x, 1 / math.factorial(_TERMS))
    for n in range(_TERMS - 1, 0, -1):
        result = result * x + 1 / math.factorial(n)
    return result
