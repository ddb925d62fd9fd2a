"""Propagation of the incident wave through the crystal in an eigenbasis of the structure matrix.

The wave leaving a crystal of thickness t is ψ(t) = exp(i c t X) e₀, with X the (possibly
absorbing) structure matrix, c = π / K_n and e₀ the incident beam. With X = W diag(z) W⁻¹
every thickness costs one matrix–vector product: ψ(t) = W (exp(i c t z) ⊙ W⁻¹ e₀).

The backward pass does **not** differentiate the eigendecomposition (whose derivative
divides by eigenvalue differences and is undefined at the degenerate eigenvalues of a
zone axis). Intensities are entire functions of X, and their derivative is the Fréchet
derivative of the matrix function f_t(X) = exp(i c t X), which in the eigenbasis is the
Daleckii–Krein formula

    Df_t(X)[E] = W (F_t ∘ (W⁻¹ E W)) W⁻¹,   F_t,ij = (f_t(z_i) − f_t(z_j)) / (z_i − z_j),

with F_t,ii = f_t'(z_i). Contracting with the incoming gradient makes the sum over
thicknesses a matrix product, and nearly equal eigenvalues use a Taylor series of the
divided difference instead of the quotient, so the cost is O(N³ + T N²) per orientation
and stays finite for degenerate eigenvalues.

References
----------
Ju. L. Daleckii & S. G. Krein, Amer. Math. Soc. Transl. 47 (1965) 1–30.
N. J. Higham, *Functions of Matrices* (SIAM 2008), ch. 3, doi:10.1137/1.9780898717778.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Divided differences are summed as a Taylor series when |c t_max (z_i - z_j)| < _TAYLOR_RADIUS;
# _TAYLOR_TERMS terms leave a relative truncation error below 0.3**12 / 12! ≈ 1e-15, and the
# quotient outside that radius loses at most eps / 0.3 ≈ 1e-15 to cancellation.
_TAYLOR_RADIUS = 0.3
_TAYLOR_TERMS = 12

# the single-precision dtype of each floating dtype (itself for single precision)
SINGLE = {
    torch.float64: torch.float32,
    torch.complex128: torch.complex64,
    torch.float32: torch.float32,
    torch.complex64: torch.complex64,
}


def propagate_intensities(
    vectors: Tensor,
    values: Tensor,
    left: Tensor,
    thickness: Tensor,
    c: Tensor,
    incident: int = 0,
    *,
    keep_phase: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Beam amplitudes and intensities from an eigendecomposition (no autograd).

    Parameters
    ----------
    vectors : Tensor (orient, beam, mode) right eigenvectors W (real or complex).
    values : Tensor (orient, mode) eigenvalues z [Å⁻²] (complex).
    left : Tensor (orient, beam, mode) W⁻ᴴ (equal to ``vectors`` when W is unitary).
    thickness : Tensor (orient, thick) [Å].
    c : Tensor (orient,) π / K_n [Å].
    incident : index of the incident beam.
    keep_phase : False: the phases are not returned (their array becomes the products'
        coefficients instead of a second array of the same size).

    Returns
    -------
    psi : Tensor (orient, thick, beam) complex amplitudes.
    phase : Tensor (orient, thick, mode) exp(i c t z), or None without ``keep_phase``.
    """
    b = left[:, incident, :].conj()  # W⁻¹ e₀ (orient, mode)
    phase = phases(c[:, None] * thickness, values)
    if keep_phase:
        coeff = phase * b[:, None, :]  # (orient, thick, mode)
    else:
        coeff, phase = phase.mul_(b[:, None, :]), None
    psi = matmul_mixed(vectors, coeff.transpose(1, 2)).transpose(1, 2)
    return psi, phase


def squared_moduli(psi: Tensor) -> Tensor:
    """|ψ|² of complex amplitudes, computed in ``psi``'s own memory (which it overwrites)."""
    return torch.view_as_real(psi).square_().sum(-1)


# relative spread of the steps below which a row of thicknesses counts as evenly spaced
_EVEN = 1e-12


def phases(ct: Tensor, values: Tensor) -> Tensor:
    """E = exp(i c t z) (orient, thick, mode) for c·t (orient, thick) and eigenvalues z
    (orient, mode).

    Where every row of c·t is evenly spaced (a grid of thickness samples), E is built as
    the running product of one step's phase from the first sample: one complex
    multiplication per element instead of an exponential (three times faster), with a
    rounding error that grows by about one unit in the last place per sample
    (1e-14 after 48 samples; in double precision only)."""
    n = ct.shape[1]
    if n >= 3 and ct.dtype == torch.float64:
        step = ct[:, 1:2] - ct[:, :1]
        spread = (ct[:, 1:] - ct[:, :-1] - step).abs().amax()
        if bool(spread <= _EVEN * ct.abs().amax().clamp(min=1e-300)):
            first = torch.exp(1j * ct[:, :1, None] * values[:, None, :])  # (o, 1, mode)
            factor = torch.exp(1j * step[:, :, None] * values[:, None, :])
            return torch.cumprod(torch.cat([first, factor.expand(-1, n - 1, -1)], 1), 1)
    return torch.exp(1j * ct[:, :, None] * values[:, None, :])


def propagation_backward(
    grad_intensity: Tensor,
    psi: Tensor,
    phase: Tensor,
    vectors: Tensor,
    values: Tensor,
    left: Tensor,
    thickness: Tensor,
    c: Tensor,
    incident: int = 0,
    real_matrix: bool = False,
) -> tuple[Tensor, Tensor]:
    """Gradient of Σ Ī·I with respect to the structure matrix X and to c·t.

    ``real_matrix`` states that X is real symmetric (real eigenvectors, real eigenvalues):
    the gradient is then real and needs only real matrix products. ``psi`` and ``phase``
    (from :func:`propagate_intensities`) are overwritten: their arrays serve as the
    intermediate products' (one batch's backward pass then holds fewer arrays at once).

    Returns
    -------
    grad_matrix : Tensor (orient, beam, beam), PyTorch's convention for a complex input
        (dL = Re Σ conj(grad) dX); real when ``real_matrix``.
    grad_ct : Tensor (orient, thick) real, ∂L/∂(c t).
    """
    # a plain backward pass works in the arrays it is given; one that is itself recorded
    # (create_graph) must leave them as the graph saw them
    own = not torch.is_grad_enabled()
    b = left[:, incident, :].conj()  # (orient, mode)
    w = psi.mul_(grad_intensity) if own else grad_intensity * psi  # (orient, thick, beam)
    # conj(Wᴴ w) = Wᵀ conj(w) (o, m, t), made once without a conjugate view (each product
    # with such a view would copy it again)
    w = torch.conj_physical_(w) if own else torch.conj_physical(w)
    a_conj = matmul_mixed(vectors.mT, w.transpose(1, 2))
    del psi, w
    ct = c[:, None] * thickness  # (orient, thick)

    # Σ_t conj(a_ti) F_t,ij: the quotient for distinct eigenvalues, a Taylor series for
    # nearly equal ones (always including i = j).
    q = a_conj @ phase  # (o, i, j): Σ_t conj(a_ti) E_tj
    conj_a = a_conj.transpose(1, 2)
    weighted = phase.mul_(conj_a) if own else conj_a * phase  # conj(a_ti) E_ti (o, t, i)
    del a_conj, conj_a, phase

    # ∂L/∂(ct): 2 Re Σ_i conj(a_ti) E_ti i z_i b_i
    grad_ct = 2 * torch.real(weighted @ (1j * values * b)[:, :, None])[..., 0]

    p = torch.diagonal(q, dim1=-2, dim2=-1).clone()  # Σ_t conj(a_ti) E_ti
    dz = values[:, :, None] - values[:, None, :]  # z_i - z_j
    if not torch.any(values.imag != 0):
        dz = dz.real
    ct_max = ct.abs().amax(dim=1)[:, None, None]
    near = (dz.abs() * ct_max) < _TAYLOR_RADIUS
    if own:
        inverse = dz.reciprocal_().masked_fill_(near, 0)
        s = q.sub_(p[:, :, None]).neg_().mul_(inverse)  # (p_i − q_ij) / (z_i − z_j)
    else:
        inverse = torch.where(near, torch.zeros((), dtype=dz.dtype, device=dz.device), 1 / dz)
        s = (p[:, :, None] - q) * inverse
    del q, dz, inverse
    o, i, j = near.nonzero(as_tuple=True)
    del near
    scale = torch.where(ct_max[:, 0, 0] > 0, ct_max[:, 0, 0], torch.ones_like(ct_max[:, 0, 0]))
    coeff = _taylor_coefficients(weighted, ct, scale)  # (o, i, n)
    del weighted
    s[o, i, j] = scale[o] * _horner(coeff[o, i], scale[o] * (values[o, j] - values[o, i]))
    s = s.mul_(b[:, None, :]) if own else s * b[:, None, :]

    g = s.conj()
    if real_matrix:
        grad_matrix = left @ g.real.to(left.dtype) @ vectors.mT
    else:
        grad_matrix = matmul_mixed(matmul_mixed(left, g), vectors.mT.conj())
    return grad_matrix.mul_(2) if own else 2 * grad_matrix, grad_ct


def _taylor_coefficients(weighted: Tensor, ct: Tensor, scale: Tensor) -> Tensor:
    """r_n,i / n! with r_n,i = Σ_t conj(a_ti) (i c t / u)^n E_ti, n = 1 … _TAYLOR_TERMS:
    (o, i, n), from ``weighted`` = conj(a_ti) E_ti (o, t, i), with u = ``scale`` (o,), the
    largest c t of the orientation.

    Σ_t conj(a_ti) F_t,ij = u Σ_n r_n,i (u Δ)^(n-1) / n! with Δ = z_j − z_i, the Taylor
    series of the divided difference of exp(i c t z) about z_i. Scaling by u keeps every
    power at most 1 (|c t / u| ≤ 1, |u Δ| < _TAYLOR_RADIUS): (c t)^12 alone overflows
    float32 from c t ≈ 1600 (t ≈ 2 µm at 200 kV). The powers are running products.
    """
    ict = 1j * (ct / scale[:, None]).to(weighted.dtype)  # (o, t)
    powers = torch.cumprod(ict[:, :, None].expand(-1, -1, _TAYLOR_TERMS), dim=2)  # (o, t, n)
    factorials = torch.tensor(
        [math.factorial(k) for k in range(1, _TAYLOR_TERMS + 1)], dtype=ct.dtype,
        device=ct.device,
    )  # fmt: skip
    return torch.einsum("otn,oti->oin", powers, weighted) / factorials


def _horner(coeff: Tensor, delta: Tensor) -> Tensor:
    """Σ_n coeff[..., n-1] Δ^(n-1) for coefficient rows (pair, n) and Δ (pair,)."""
    result = coeff[:, -1]
    for k in range(coeff.shape[1] - 2, -1, -1):
        result = result * delta + coeff[:, k]
    return result


def matmul_mixed(x: Tensor, y: Tensor) -> Tensor:
    """x @ y where one factor may be real: a real product with the complex factor's real
    and imaginary parts side by side (one real GEMM of twice the width, no complex
    arithmetic on the real factor; the complex factor is copied only where its layout
    does not allow that view)."""
    if not x.is_complex() and y.is_complex():
        parts = torch.view_as_real(y.resolve_conj())  # (..., k, m, 2)
        out = x @ parts.reshape(*parts.shape[:-2], -1)  # (..., n, 2m)
        return torch.view_as_complex(out.reshape(*out.shape[:-1], -1, 2))
    if x.is_complex() and not y.is_complex():
        return matmul_mixed(y.mT, x.mT).mT  # (yᵀ xᵀ)ᵀ
    return x @ y
