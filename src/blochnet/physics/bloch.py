"""Many-beam Bloch-wave solver: beam intensities at many thicknesses from one eigendecomposition.

Three solvers, chosen by value:

``"eigh"`` (default)
    Hermitian eigendecomposition of the elastic structure matrix A. Absorption, when given,
    enters by first-order perturbation of the eigenvalues on that eigenbasis:
    z_j = λ_j + i μ_j with μ_j = C_jᴴ A' C_j; the eigenvectors are not corrected, so the
    error is first order in A'_jk / (λ_j − λ_k) for pairs of Bloch waves that A' couples.
    Adequate in general orientations, where Bloch-wave eigenvalues are well separated — the
    usual case for 3D-ED frames: for quartz with κ = 0.05 at 100–500 Å it agrees with the
    exact route to 2e-4–5e-4 absolute. Near zone axes, where eigenvalues are (nearly)
    degenerate, it is off by 1e-3–4e-2 (Si and quartz, κ = 0.05); use ``"eig"`` there.
    Without absorption it is exact. With absorption, its gradient for A' is the exact
    derivative of these first-order intensities (through μ_j), and its gradient for A is
    the derivative of the exact absorbing propagator taken at the first-order eigenvalues,
    carrying the same approximation as the intensities.
``"eig"``
    General (non-Hermitian) eigendecomposition of X = A + i A'. Exact for any absorption,
    about 7× slower than ``"eigh"`` (LAPACK geev against heevd, N = 100–200). Needs X
    diagonalisable (true in practice; a defective X would show as an ill-conditioned
    eigenvector matrix).
``"expm"``
    One matrix exponential per thickness, differentiated by PyTorch. Exact, slow (T times
    the cost); a reference for tests.

All three return intensities I_g(t) = |ψ_g(t)|², the fraction of the incident flux in beam
g leaving the exit surface, for the symmetrised structure matrix of
:func:`blochnet.physics.structure_matrix.structure_matrix`. Shapes follow the glossary
(docs/glossary.md): ``orient`` (orientations in a batch), ``thick``, ``beam``.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Literal

import torch
from jaxtyping import Float, Shaped
from torch import Tensor

from blochnet.errors import ConfigurationError
from blochnet.physics.propagation import (
    SINGLE,
    propagate_intensities,
    propagation_backward,
    squared_moduli,
)

Solver = Literal["eigh", "eig", "expm"]
SOLVERS: tuple[str, ...] = ("eigh", "eig", "expm")
Kept = Literal["full", "single"]


def bloch_intensities(
    matrix: Shaped[Tensor, "orient beam beam"],
    thickness: Float[Tensor, " thick"] | Float[Tensor, "orient thick"],
    c: Float[Tensor, " orient"] | Float[Tensor, ""] | float,
    *,
    absorptive: Shaped[Tensor, "orient beam beam"] | None = None,
    solver: Solver = "eigh",
    incident: int = 0,
    kept: Kept = "full",
) -> Float[Tensor, "orient thick beam"]:
    """Intensities of every beam at every thickness.

    Parameters
    ----------
    matrix : Tensor (orient, beam, beam) Hermitian elastic structure matrix A [Å⁻²]
        (real symmetric for centrosymmetric crystals).
    thickness : Tensor (thick,) or (orient, thick) [Å], measured along the surface normal.
    c : Tensor (orient,) or float, π / K_n [Å] with K_n the normal component of the
        wave vector in the crystal.
    absorptive : Tensor (orient, beam, beam) Hermitian absorptive matrix A' [Å⁻²], or None.
    solver : ``"eigh"``, ``"eig"`` or ``"expm"`` (see module docstring).
    incident : index of the incident beam in the beam list.
    kept : ``"full"`` keeps the eigenvectors for the backward pass as computed;
        ``"single"`` keeps them in single precision (``"eigh"`` route, double-precision
        input): half the memory a batch holds until its backward pass, the gradient then
        to about 1e-7 of the largest amplitude's (about 1e-4 relative for the weakest
        beams); the intensities returned are unchanged.

    Returns
    -------
    Tensor (orient, thick, beam), real, same precision as ``matrix``.

    Notes
    -----
    ψ(t) = exp(i c t (A + i A')) e₀ and I_g(t) = |ψ_g(t)|², c = π/K_n; see
    :mod:`blochnet.physics.propagation` for the eigenbasis evaluation and its gradient.
    """
    if matrix.ndim != 3 or matrix.shape[-1] != matrix.shape[-2]:
        raise ValueError(f"matrix must have shape (orient, beam, beam), got {tuple(matrix.shape)}")
    n_orient = matrix.shape[0]
    real_dtype = matrix.real.dtype if matrix.is_complex() else matrix.dtype
    thickness = torch.as_tensor(thickness, dtype=real_dtype, device=matrix.device)
    thickness = thickness.expand(n_orient, -1) if thickness.ndim == 1 else thickness
    c = torch.as_tensor(c, dtype=real_dtype, device=matrix.device).expand(n_orient)
    if kept not in ("full", "single"):
        raise ConfigurationError(f"unknown kept precision {kept!r}; expected 'full' or 'single'")
    if solver == "eigh":
        return _HermitianPropagation.apply(matrix, absorptive, thickness, c, incident, kept)
    if solver == "eig":
        return _GeneralPropagation.apply(matrix, absorptive, thickness, c, incident)
    if solver == "expm":
        return _expm_intensities(matrix, absorptive, thickness, c, incident)
    raise ConfigurationError(f"unknown solver {solver!r}; expected one of {SOLVERS}")


# LAPACK's batched eigensolvers loop over the matrices; threading inside each small
# matrix gains little and, on a loaded machine, OpenMP barriers can make it 100x slower.
# Small matrices are instead solved one per thread: the batch is split into as many
# chunks as PyTorch has threads, each solved single-threaded (ATen releases the GIL).
_SINGLE_THREAD_BELOW = 256
_POOL: ThreadPoolExecutor | None = None


def batched_eigensolver(solve, matrix: Tensor):
    """``solve(matrix)`` for a batch of small CPU matrices, split over PyTorch's threads."""
    threads = torch.get_num_threads()
    with _eigensolver_threads(matrix):
        if threads == 1 or matrix.device.type != "cpu" or matrix.shape[0] < 2 * threads:
            return solve(matrix)
        global _POOL
        if _POOL is None or _POOL._max_workers < threads:
            _POOL = ThreadPoolExecutor(threads)
        parts = list(_POOL.map(solve, matrix.chunk(threads)))
    return tuple(torch.cat(pieces) for pieces in zip(*parts, strict=True))


@contextmanager
def _eigensolver_threads(matrix: Tensor) -> Iterator[None]:
    """Run a CPU eigendecomposition of small matrices on one thread."""
    if matrix.device.type != "cpu" or matrix.shape[-1] >= _SINGLE_THREAD_BELOW:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _absorption_eigenvalue_shift(vectors: Tensor, absorptive: Tensor) -> Tensor:
    """First-order absorption μ_j = C_jᴴ A' C_j (real for Hermitian A')."""
    av = absorptive.to(_common(vectors, absorptive)) @ vectors.to(_common(vectors, absorptive))
    return torch.real(torch.einsum("obm,obm->om", vectors.conj(), av))


def _common(x: Tensor, y: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, y.dtype)


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype in (torch.float64, torch.complex128) else torch.complex64


class _HermitianPropagation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, matrix, absorptive, thickness, c, incident, kept):
        values, vectors = batched_eigensolver(torch.linalg.eigh, matrix)
        z = values.to(_complex_dtype(matrix.dtype))
        if absorptive is not None:
            z = torch.complex(values, _absorption_eigenvalue_shift(vectors, absorptive))
        # the amplitudes (orient, thick, beam) are recomputed in the backward pass from the
        # eigendecomposition (one matrix product per orientation) instead of being kept;
        # what is kept is made before the propagation's arrays (which then leave one
        # free block behind them for the next batch)
        ctx.vectors_dtype = vectors.dtype
        keep = vectors
        if kept == "single":
            keep = vectors.to(SINGLE[vectors.dtype])
        psi, _ = propagate_intensities(vectors, z, vectors, thickness, c, incident,
                                       keep_phase=False)  # fmt: skip
        ctx.save_for_backward(keep, z, thickness, c)
        _remember_inputs(ctx, matrix, absorptive, incident)
        return squared_moduli(psi)

    @staticmethod
    def backward(ctx, grad_intensity):
        vectors, z, thickness, c = ctx.saved_tensors
        vectors = vectors.to(ctx.vectors_dtype)
        psi, phase = propagate_intensities(vectors, z, vectors, thickness, c, ctx.incident)
        real_matrix = not vectors.is_complex() and not ctx.has_absorption
        grad_x, grad_ct = propagation_backward(
            grad_intensity,
            psi,
            phase,
            vectors,
            z,
            vectors,
            thickness,
            c,
            ctx.incident,
            real_matrix=real_matrix,
        )
        grad_abs = _eigenbasis_diagonal(vectors, grad_x) if ctx.has_absorption else None
        return (*_input_gradients(ctx, grad_x, grad_ct, thickness, c, grad_abs), None)


class _GeneralPropagation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, matrix, absorptive, thickness, c, incident):
        x = matrix.to(_complex_dtype(matrix.dtype))
        if absorptive is not None:
            x = x + 1j * absorptive.to(x.dtype)
        z, vectors = batched_eigensolver(torch.linalg.eig, x)
        left = torch.linalg.inv(vectors).mH
        psi, _ = propagate_intensities(vectors, z, left, thickness, c, incident,
                                       keep_phase=False)  # fmt: skip
        ctx.save_for_backward(vectors, z, left, thickness, c)
        _remember_inputs(ctx, matrix, absorptive, incident)
        return squared_moduli(psi)

    @staticmethod
    def backward(ctx, grad_intensity):
        vectors, z, left, thickness, c = ctx.saved_tensors
        psi, phase = propagate_intensities(vectors, z, left, thickness, c, ctx.incident)
        grad_x, grad_ct = propagation_backward(
            grad_intensity, psi, phase, vectors, z, left, thickness, c, ctx.incident
        )
        return _input_gradients(ctx, grad_x, grad_ct, thickness, c)


def _remember_inputs(ctx, matrix: Tensor, absorptive: Tensor | None, incident: int) -> None:
    ctx.incident = incident
    ctx.real_input = (not matrix.is_complex(), absorptive is None or not absorptive.is_complex())
    ctx.has_absorption = absorptive is not None


def _eigenbasis_diagonal(vectors: Tensor, grad: Tensor) -> Tensor:
    """C diag(Cᴴ G C) Cᴴ: the part of a gradient G that acts on the eigenvalues only.

    The ``"eigh"`` route takes absorption to first order, μ_j = C_jᴴ A' C_j, so its
    intensities depend on A' only through these diagonal elements; the gradient for A' is
    the exact-propagator gradient for X = A + i A' restricted to them (the off-diagonal
    part would describe eigenvector changes that the forward pass leaves out).
    """
    c = vectors.to(_common(vectors, grad))
    d = torch.einsum("obm,obn,onm->om", c.conj(), grad.to(c.dtype), c)
    return (c * d[:, None, :]) @ c.mH


def _input_gradients(
    ctx,
    grad_x: Tensor,
    grad_ct: Tensor,
    thickness: Tensor,
    c: Tensor,
    grad_x_abs: Tensor | None = None,
):
    """Gradients for (matrix, absorptive, thickness, c, incident) from those for X and c·t
    (``grad_x_abs``: the gradient for X to use for A', when it differs from ``grad_x``)."""
    grads = _split_gradient(ctx, grad_x, grad_x if grad_x_abs is None else grad_x_abs)
    return (*grads, grad_ct * c[:, None], (grad_ct * thickness).sum(1), None)


def _split_gradient(ctx, grad_x: Tensor, grad_x_abs: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """Gradients for A and A' from the gradient for X = A + i A'."""
    real_a, real_abs = ctx.real_input
    grad_a = grad_x.real if (real_a and grad_x.is_complex()) else grad_x
    grad_abs = None
    if ctx.has_absorption:
        g = -1j * grad_x_abs
        grad_abs = g.real if real_abs else g
    return grad_a, grad_abs


def _expm_intensities(matrix, absorptive, thickness, c, incident):
    x = matrix.to(_complex_dtype(matrix.dtype))
    if absorptive is not None:
        x = x + 1j * absorptive.to(x.dtype)
    ct = (c[:, None] * thickness).to(x.dtype)  # (orient, thick)
    exponent = 1j * ct[:, :, None, None] * x[:, None, :, :]
    psi = torch.linalg.matrix_exp(exponent)[..., incident]  # (orient, thick, beam)
    return psi.real**2 + psi.imag**2
