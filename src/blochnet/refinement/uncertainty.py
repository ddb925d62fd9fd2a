"""Standard uncertainties of the refined structure parameters.

Notes
-----
cov(p) = (Jᵀ J)⁻¹ · GoF², J = ∂r/∂p of the weighted residuals r = (Io − k Ic)/σ (the frame
scales k, eliminated in closed form, are differentiated through), GoF² = Σ r² / (N − P).
The s.u. are conditional on the other refined quantities (thickness model, orientations)
held at their refined values.

J is computed in forward mode where the simulation allows (the eigh solver without
absorption, :meth:`~blochnet.refinement.objective.Objective.jacobian`): one
eigendecomposition per orientation serves every column, orientations are taken in chunks
and nothing is kept for a backward pass, so time and memory stay those of a few forward
passes. Otherwise by reverse mode without one backward pass per residual: the
vector–Jacobian product g(u) = Jᵀ u is built once with a differentiable graph, and each
column J e_k = ∂(e_k · g)/∂u costs one backward pass through that graph.

The s.u. are propagated linearly through the site-symmetry maps to x, y, z and Uij, to
Ueq = tr(U_cart)/3, and through the neutrality constraint to every refined charge.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from blochnet.experiment.shards import sum_gradients, sum_over_processes
from blochnet.lattice import uij_to_cartesian
from blochnet.physics.bloch import Kept


def transposed_jacobian(r: Tensor, parameters: list[Tensor]) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The differentiable graph g(u) = Jᵀu: returns u (zeros, requiring grad) and the
    gradients of u·r with respect to each parameter; ∂(v·g)/∂u is then J v."""
    u = torch.zeros_like(r, requires_grad=True)
    return u, torch.autograd.grad(r, parameters, grad_outputs=u, create_graph=True)


def jacobian_columns(g: Tensor, u: Tensor) -> list[Tensor]:
    """J e_k for every element k of the flattened g = Jᵀu (one backward pass each)."""
    flat = g.reshape(-1)
    return [torch.autograd.grad(flat[k], u, retain_graph=True)[0] for k in range(flat.numel())]


def residual_jacobian(residuals, parameters: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Residual vector r (n,) and its Jacobian (n, P) with respect to ``parameters``.

    ``residuals`` is a callable returning r; every parameter must require grad.
    """
    r = residuals()
    u, grads = transposed_jacobian(r, parameters)
    columns = jacobian_columns(torch.cat([x.reshape(-1) for x in grads]), u)
    # with the frames shared among processes, each has the rows of its own frames
    return r.detach(), sum_over_processes(torch.stack(columns, dim=1).detach())


def forward_mode_applies(model) -> bool:
    """True when forward-mode derivatives (:meth:`Objective.jacobian`) serve ``model``:
    every data set simulated with the eigh solver without absorption, κ not refined."""
    kappa = model.structure.kappa_shift
    return not (kappa.requires_grad and kappa.numel()) and all(
        o.simulator.config.solver == "eigh" and o.simulator.config.absorption == 0
        for o in model.objectives
    )


def structure_jacobian(
    model, active: list[Tensor], *, single: bool = False
) -> tuple[Tensor, Tensor]:
    """Residuals r (n,) of every data set and J = ∂r/∂p (n, P) over the refined structure
    shifts ``active``: in forward mode (one eigendecomposition per orientation for all
    columns, no graph kept; :meth:`Objective.jacobian`) where it applies (eigh, no
    absorption), else by reverse mode (:func:`residual_jacobian`). ``single``: forward-mode
    derivatives to about 1e-6 relative in half the time, enough for JᵀJ."""
    if forward_mode_applies(model):
        parts = [o.jacobian(orientation=False, single=single) for o in model.objectives]
        return torch.cat([r for r, _ in parts]), torch.cat([j for _, j in parts])

    def residuals():
        return torch.cat([objective.residuals() for objective in model.objectives])

    return residual_jacobian(residuals, active)


def structure_uncertainties(
    model,
    *,
    n_parameters: int,
    jacobian: tuple[Tensor, Tensor, Tensor] | None = None,
    single: bool = False,
) -> dict:
    """s.u. of the refined structure parameters of a :class:`~blochnet.refinement.model.Refinement`.

    Returns ``{"free": (P,) s.u. of the refined free parameters (order of
    ``model.structure.names``), "xyz": (atom, 3), "uij": (atom, 6), "ueq": (atom,),
    "occupancy": (atom,), "charge": (atom,), "absorption": s.u. of κ or None}`` (zeros
    where a value is not refined), plus "gof", "xyz_covariance" ((3·atom, 3·atom) covariance
    of the fractional coordinates x1 y1 z1 x2 ..., through the site-symmetry maps; what
    bond lengths and angles need) and "shift_over_su" ((P,) |Δp|/σ(p) of the Gauss–Newton
    step the refined state would still take: the convergence test of least squares).

    ``jacobian``: (r, Jᵀr) at the current parameters and the normal matrix JᵀJ of a
    Jacobian made at nearby ones (:func:`converge_structure`), in place of a new Jacobian;
    ``single``: a new Jacobian's products in single precision (:func:`structure_jacobian`;
    the s.u. and the test's shifts change by about 1e-6 relative).
    """
    structure = model.structure
    params = list(structure.shifts())
    active = [p for p in params if p.requires_grad and p.numel()]
    if jacobian is None:
        r, jac = structure_jacobian(model, active, single=single)
        normal, gradient = jac.T @ jac, jac.T @ r
    else:
        r, gradient, normal = jacobian
    gof2 = float((r**2).sum()) / max(len(r) - n_parameters, 1)
    cov_active = torch.linalg.pinv(normal, hermitian=True) * gof2
    sizes = [p.numel() for p in params]
    full = torch.zeros(sum(sizes), sum(sizes), dtype=cov_active.dtype, device=cov_active.device)
    index = torch.cat(
        [
            torch.arange(s, device=full.device) + off
            if p.requires_grad
            else torch.zeros(0, dtype=torch.long, device=full.device)
            for p, s, off in zip(params, sizes, np.cumsum([0, *sizes[:-1]]), strict=True)
        ]
    )
    full[index[:, None], index[None, :]] = cov_active
    step = (cov_active / gof2 if gof2 > 0 else cov_active) @ gradient
    su_active = torch.diagonal(cov_active).clamp(min=0).sqrt()
    ratio = torch.where(su_active > 0, step.abs() / su_active, torch.zeros_like(step))
    return _propagate(structure, full, sizes) | {
        "gof": gof2**0.5,
        "loss": float((r**2).sum()),
        "shift_over_su": ratio.detach().cpu().numpy(),
        "gauss_newton_step": (-step).detach(),
        "normal": normal.detach(),
    }


CHORD_CONTRACTION = 0.5  # largest ratio of successive |shift|/s.u. with the same matrix


def converge_structure(
    model,
    *,
    n_parameters: int,
    limit: float = 0.01,
    max_steps: int = 3,
    say=None,
    kept: Callable[[float], Tensor | None] | None = None,
    eigenvectors: Kept = "full",
) -> tuple[dict, dict]:
    """Gauss–Newton steps on the structure parameters until the largest |shift|/s.u. of the
    step the refined state would still take is below ``limit`` (the convergence test of
    least squares, SHELXL's "Max. shift/esd"), at most ``max_steps``; returns the s.u. of
    the final state (:func:`structure_uncertainties`) and a record of the test.

    One Jacobian (forward mode, the expensive part) gives the normal matrix JᵀJ; after
    each step the gradient Jᵀr is computed exactly at the new parameters (one backward
    pass) and the next step and the test use it with that normal matrix, as least squares
    programs use the matrix of the last cycle: the steps converge to the exact minimum
    (the gradient is exact), and a shift that is small against the s.u. does not change
    JᵀJ noticeably. Where the test does not fall by at least 1/``CHORD_CONTRACTION`` from
    one step to the next (far from the minimum, where J changes along the steps), a new
    Jacobian is made (unless the last step allowed has been taken: the test is then read
    with the matrix it was made with; a new Jacobian is paired with the exact gradient
    already computed). A step is taken only when it lowers the objective (else halved, up
    to three times), judged by the evaluation that also gives the exact gradient there:
    one forward and backward pass per step; the thickness model, the orientations and the robust
    loss's scale stay as refined (a fixed objective, so that the steps converge as
    Gauss–Newton does).

    ``kept(loss)``: a normal matrix already made near the refined state (the epochs'
    last, :meth:`~blochnet.refinement.model.Refinement.kept_matrix`), or None: with one,
    the first test uses it with the exact gradient, and no Jacobian is made unless the
    steps converge slowly.

    ``eigenvectors``: the precision the backward passes of the exact gradients keep the
    eigenvectors in (:meth:`~blochnet.refinement.model.Refinement.eigenvectors_kept`).
    "single" halves their memory and moves Jᵀr by about 1e-7 of its largest component
    (measured on quartz: 0.004 at components of 370 at the last step), which moves
    |shift|/s.u. by about 1e-5 of the limit.
    """
    active = [p for p in model.structure.shifts() if p.requires_grad and p.numel()]

    def exact_gradient() -> tuple[Tensor, Tensor]:
        with model.eigenvectors_kept(eigenvectors):
            return _exact_gradient(model, active)

    steps, history = 0, []

    def with_new_matrix(r: Tensor, gradient: Tensor) -> dict:
        """The test with the exact Jᵀr and the normal matrix of a new Jacobian."""
        _, jac = structure_jacobian(model, active, single=True)
        return structure_uncertainties(
            model, n_parameters=n_parameters, jacobian=(r, gradient, jac.T @ jac)
        )

    if kept is not None and kept(math.inf) is not None:  # one at these settings
        r, gradient = exact_gradient()
        normal = kept(float((r**2).sum()))
        if normal is None:  # the fit has moved on since it was made
            su = with_new_matrix(r, gradient)
        else:
            su = structure_uncertainties(
                model, n_parameters=n_parameters, jacobian=(r, gradient, normal.to(r.dtype))
            )
    else:
        su = structure_uncertainties(model, n_parameters=n_parameters, single=True)
    while True:
        largest = float(np.max(su["shift_over_su"], initial=0.0))
        history.append(largest)
        if say is not None:
            say(f"convergence: max |shift|/s.u. {largest:.3f} after {steps} Gauss–Newton steps")
        if largest < limit or steps == max_steps:
            break
        taken = _step(model, active, su, exact_gradient)
        if taken is None:
            break
        steps += 1
        r, gradient = taken
        su = structure_uncertainties(
            model, n_parameters=n_parameters, jacobian=(r, gradient, su["normal"])
        )
        slow = float(np.max(su["shift_over_su"], initial=0.0)) > CHORD_CONTRACTION * largest
        if slow and steps < max_steps:
            # the steps do not converge at the rate of a good matrix: a new Jacobian for
            # the next (after the last step allowed, the test is read with this one)
            su = with_new_matrix(r, gradient)
    record = {"limit": limit, "steps": steps, "max_shift_su": history,
              "converged": bool(history[-1] < limit)}  # fmt: skip
    return su, record


def _exact_gradient(model, active: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Residuals r and Jᵀr = ½ ∇(Σ r²) over ``active`` at the current parameters (one
    backward pass; summed over the processes the frames are shared among)."""
    every = list(model.parameters())
    for p in every:
        p.grad = None
    with torch.enable_grad():
        r = torch.cat([o.residuals() for o in model.objectives])
        loss = (r**2).sum()
        if loss.requires_grad:
            loss.backward()
    sum_gradients(active)
    gradient = torch.cat(
        [(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in active]
    )
    for p in every:
        p.grad = None
    return r.detach(), gradient.detach() / 2


def _step(
    model, active: list[Tensor], su: dict, exact_gradient: Callable[[], tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor] | None:
    """Apply the Gauss–Newton step of ``su`` to ``active`` when it lowers the objective
    (halving it up to three times) and return r and Jᵀr there (:func:`_exact_gradient`:
    the evaluation that judges the step also gives the next one's gradient); None, with
    the parameters as they were, when no fraction of it does."""
    delta = su["gauss_newton_step"]
    before = su["loss"]  # Σ r² where the step was computed
    fraction, applied = 1.0, 0.0
    for _ in range(4):
        add_to_parameters(active, (fraction - applied) * delta)
        applied = fraction
        r, gradient = exact_gradient()
        if float((r**2).sum()) < before:
            if model.structure.keep_adps_positive_definite():  # (then r and Jᵀr anew)
                r, gradient = exact_gradient()
            return r, gradient
        fraction /= 2
    add_to_parameters(active, -applied * delta)
    return None


def add_to_parameters(active: list[Tensor], delta: Tensor) -> None:
    """Add ``delta`` (the parameters' values in turn, flattened) to ``active``."""
    with torch.no_grad():
        for p, part in zip(active, delta.split([p.numel() for p in active]), strict=True):
            p.add_(part.reshape(p.shape).to(p.dtype))


def _propagate(structure, cov: Tensor, sizes: list[int]) -> dict:
    """Through x = x0 + P p, uij = Q q, q = q0 + C c to coordinates, Uij, Ueq and charges."""
    model = structure.model
    n_atom = len(model.crystal.atoms)
    nx, na, no, nc, nk = sizes
    n_xyz_all, n_adp_all = model.xyz_map.shape[1], model.adp_map.shape[1]
    # refined shifts → all free parameters (selection matrices)
    sel_x = torch.zeros(n_xyz_all, nx, dtype=cov.dtype, device=cov.device)
    sel_x[structure.xyz_index, torch.arange(nx)] = 1
    sel_a = torch.zeros(n_adp_all, na, dtype=cov.dtype, device=cov.device)
    sel_a[structure.adp_index, torch.arange(na)] = 1
    jx = model.xyz_map @ sel_x  # (3 atom, nx)
    ja = model.adp_map @ sel_a  # (6 atom, na)
    cxx, caa = cov[:nx, :nx], cov[nx : nx + na, nx : nx + na]
    xyz_cov = jx @ cxx @ jx.T
    xyz_var = torch.diagonal(xyz_cov).clamp(min=0)
    uij_var = torch.einsum("ik,kl,il->i", ja, caa, ja).clamp(min=0)
    # Ueq = tr(U_cart)/3 is linear in uij
    eye6 = torch.eye(6, dtype=cov.dtype, device=cov.device)
    trace_row = torch.diagonal(uij_to_cartesian(model.crystal.cell, eye6), dim1=-2, dim2=-1)
    ueq_row = trace_row.sum(-1) / 3  # (6,)
    jeq = torch.block_diag(*[ueq_row[None]] * n_atom) @ ja  # (atom, na)
    ueq_var = torch.einsum("ik,kl,il->i", jeq, caa, jeq).clamp(min=0)
    occ_var = torch.zeros(n_atom, dtype=cov.dtype, device=cov.device)
    occ = slice(nx + na, nx + na + no)
    occ_var[structure.occ_index] = torch.diagonal(cov[occ, occ]).clamp(min=0)
    charge = slice(nx + na + no, nx + na + no + nc)
    jc = structure.charge_map  # (atom, nc)
    charge_var = torch.einsum("ik,kl,il->i", jc, cov[charge, charge], jc).clamp(min=0)
    free_var = torch.diagonal(cov).clamp(min=0)
    to_np = lambda v: v.sqrt().detach().cpu().numpy()  # noqa: E731
    return {
        "free": to_np(free_var),
        "xyz_covariance": xyz_cov.detach().cpu().numpy(),
        "xyz": to_np(xyz_var).reshape(n_atom, 3),
        "uij": to_np(uij_var).reshape(n_atom, 6),
        "ueq": to_np(ueq_var),
        "occupancy": to_np(occ_var),
        "charge": to_np(charge_var),
        "absorption": float(to_np(free_var[charge.stop :]).sum()) if nk else None,
    }
