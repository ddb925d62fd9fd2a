"""Levenberg–Marquardt on the physical parameters, with Jacobians from automatic differentiation.

The Jacobian J = ∂r/∂p of the weighted residuals is built from one vector–Jacobian graph
g(u) = Jᵀu (see :func:`~blochnet.refine.uncertainty.residual_jacobian`): a column costs one
backward pass through that graph. Per-frame parameters (orientation rotation vectors, a
per-frame thickness) affect only their own frame's residuals, so one pass along "component
c of every frame" gives that component's column for every frame at once (rows split by
frame): the whole Jacobian costs (structure parameters + per-frame components) passes,
independent of the number of frames.

Step: (JᵀJ + λ diag JᵀJ) δ = −Jᵀr; accepted when the objective drops (λ /= 3), otherwise
rejected (λ *= 4). Convergence as a crystallographer judges it: max |δ|/s.u. < 0.01 and no
further drop of the objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from blochnet.refine.uncertainty import jacobian_columns, transposed_jacobian


@dataclass
class _Block:
    param: Tensor
    per_frame: bool  # shape (frame, k): columns per (frame, component)
    frame_of_row: Tensor | None = None


@dataclass
class LMRecord:
    iteration: int
    loss: float
    max_shift_su: float
    damping: float
    accepted: bool


def _blocks(model) -> list[_Block]:
    """The physical parameters of a refinement: structure (dense) and per-frame ones."""
    rows = torch.cat(
        [
            o.frame[o.fit] + sum(p.n_frames for p in model.objectives[:i])
            for i, o in enumerate(model.objectives)
        ]
    )
    blocks = [
        _Block(p, False)
        for p in (model.structure.xyz_shift, model.structure.adp_shift, model.structure.occ_shift)
        if p.requires_grad and p.numel()
    ]
    for i, objective in enumerate(model.objectives):
        offset = sum(o.n_frames for o in model.objectives[:i])
        local = rows - offset
        for param in (objective.orientation, getattr(objective.thickness, "log_ratio", None)):
            if param is not None and param.requires_grad:
                blocks.append(
                    _Block(
                        param,
                        True,
                        torch.where((local >= 0) & (local < objective.n_frames), local, -1),
                    )
                )
    return blocks


def jacobian(model) -> tuple[Tensor, Tensor, list[_Block]]:
    """Residuals (n,) and Jacobian (n, P) over the physical parameters of ``model``."""
    blocks = _blocks(model)
    r = torch.cat([o.residuals() for o in model.objectives])
    u, grads = transposed_jacobian(r, [b.param for b in blocks])
    columns = []
    for block, grad in zip(blocks, grads, strict=True):
        if not block.per_frame:
            columns += jacobian_columns(grad, u)
            continue
        grad2 = grad.reshape(grad.shape[0], -1)  # (frame, k)
        n_frames = grad2.shape[0]
        frame = block.frame_of_row
        for c in range(grad2.shape[1]):
            summed = torch.autograd.grad(grad2[:, c].sum(), u, retain_graph=True)[0]
            for f in range(n_frames):
                columns.append(torch.where(frame == f, summed, torch.zeros_like(summed)))
    return r.detach(), torch.stack(columns, dim=1).detach(), blocks


def _apply(blocks: list[_Block], delta: Tensor) -> None:
    """Add ``delta`` to the parameters, in the column order of :func:`jacobian`."""
    offset = 0
    with torch.no_grad():
        for block in blocks:
            n = block.param.numel()
            step = delta[offset : offset + n]
            if block.per_frame:  # columns run component-major: (k, frame)
                k = n // block.param.shape[0]
                step = step.reshape(k, block.param.shape[0]).T
            block.param.add_(step.reshape(block.param.shape))
            offset += n


def _limit_rotations(blocks: list[_Block], delta: Tensor, max_rotation: float) -> Tensor:
    """Clip the orientation components of a step to ±``max_rotation`` [rad]."""
    delta = delta.clone()
    offset = 0
    for block in blocks:
        n = block.param.numel()
        if block.per_frame and block.param.ndim == 2 and block.param.shape[1] == 3:
            delta[offset : offset + n] = delta[offset : offset + n].clamp(
                -max_rotation, max_rotation
            )
        offset += n
    return delta


def levenberg_marquardt(
    model, *, iterations: int = 10, damping: float = 1e-3, max_rotation: float = 2e-3, report=None
) -> list[LMRecord]:
    """Refine the physical parameters of ``model`` (a Refinement) by Levenberg–Marquardt.

    ``max_rotation`` [rad] bounds each orientation component's step (a trust region: the
    beam sets were chosen for the file's orientations, so corrections must stay small).
    """
    history: list[LMRecord] = []
    r, jac, blocks = jacobian(model)
    loss = float((r**2).sum())
    for iteration in range(1, iterations + 1):
        normal = jac.T @ jac
        scale = torch.diagonal(normal).clamp(min=1e-30)
        gradient = jac.T @ r
        delta = -torch.linalg.solve(normal + damping * torch.diag(scale), gradient)
        delta = _limit_rotations(blocks, delta, max_rotation)
        _apply(blocks, delta)
        with torch.no_grad():
            trial = float(sum((o.residuals() ** 2).sum() for o in model.objectives))
        dof = max(len(r) - len(delta), 1)
        su = torch.sqrt(torch.diagonal(torch.linalg.pinv(normal)) * loss / dof)
        shift_su = float((delta.abs() / su.clamp(min=1e-30)).max())
        accepted = trial < loss
        if accepted:
            damping /= 3
        else:
            _apply(blocks, -delta)
            damping *= 4
        record = LMRecord(iteration, trial if accepted else loss, shift_su, damping, accepted)
        history.append(record)
        if report is not None:
            report(record)
        if accepted and (shift_su < 0.01 or (loss - trial) < 1e-9 * loss):
            break
        if accepted:
            loss = trial
            r, jac, blocks = jacobian(model)
    return history
