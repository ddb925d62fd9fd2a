"""Levenberg–Marquardt on the physical parameters, with Jacobians from automatic differentiation.

The Jacobian J = ∂r/∂p of the weighted residuals is built from one vector–Jacobian graph
g(u) = Jᵀu (see :func:`~blochnet.refinement.uncertainty.residual_jacobian`): a column costs one
backward pass through that graph. Per-frame parameters (orientation rotation vectors, a
per-frame thickness) affect only the residuals of the rows that use their frame (its own
rows; in integrated rocking mode also rows of neighbouring frames whose rocking curves
reach into it). Frames are coloured so that no row uses two frames of one colour; one pass
along "component c of every frame of colour k" then gives the columns of all those frames
at once (each row's value belongs to its one frame of that colour): the whole Jacobian
costs (structure parameters + colours × per-frame components) passes, independent of the
number of frames.

Step: (JᵀJ + λ diag JᵀJ) δ = −Jᵀr; accepted when the objective drops (λ /= 3), otherwise
rejected and tried again with λ *= 10 on the same Jacobian. Convergence as a
crystallographer judges it: max |δ|/s.u. < 0.01 and no further drop of the objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from blochnet.experiment.shards import sum_over_processes
from blochnet.refinement.uncertainty import (
    forward_mode_applies,
    jacobian_columns,
    transposed_jacobian,
)


@dataclass
class _Block:
    param: Tensor
    per_frame: bool  # shape (frame, k): columns per (frame, component)
    uses: Tensor | None = None  # (row, frame) bool: the row's residual depends on the frame
    colour: np.ndarray | None = None  # (frame,) colour of each frame


def frame_colours(uses: np.ndarray) -> np.ndarray:
    """Greedy colouring of frames such that no row uses two frames of the same colour."""
    conflict = (uses.T.astype(np.int64) @ uses.astype(np.int64)) > 0
    colour = np.full(uses.shape[1], -1)
    for f in range(uses.shape[1]):
        taken = set(colour[conflict[f] & (colour >= 0)].tolist())
        colour[f] = next(c for c in range(uses.shape[1] + 1) if c not in taken)
    return colour


@dataclass
class LMRecord:
    iteration: int
    loss: float
    max_shift_su: float
    damping: float
    accepted: bool


def _uses(objective) -> np.ndarray:
    """(fit row, frame) bool: which frames each fit residual of ``objective`` depends on.

    A row depends on the frames its intensity uses and, through the closed-form scale of
    its frame, on those used by any fit row of the same frame.
    """
    sim = objective.simulator
    fit = objective.fit.cpu().numpy()
    frame = sim.frame_of_used
    rows, frames = sim.dependencies[:, 0], sim.dependencies[:, 1]
    through_scale = np.zeros((objective.n_frames, objective.n_frames), dtype=bool)
    keep = fit[rows]
    through_scale[frame[rows[keep]], frames[keep]] = True
    uses = through_scale[frame]
    uses[rows, frames] = True
    return uses[fit]


def _blocks(model) -> list[_Block]:
    """The physical parameters of a refinement: structure (dense) and per-frame ones."""
    n_rows = [int(o.fit.sum()) for o in model.objectives]
    blocks = [_Block(p, False) for p in model.structure.shifts() if p.requires_grad and p.numel()]
    for i, objective in enumerate(model.objectives):
        params = [] if objective.orientation is None else objective.orientation.frame_parameters()
        params = params + [getattr(objective.thickness, "log_ratio", None)]
        params = [p for p in params if p is not None and p.requires_grad]
        blocks += [_Block(p, False) for p in params if p.ndim == 0]  # one global thickness
        params = [p for p in params if p.ndim >= 1]
        if not params:
            continue
        local = _uses(objective)
        uses = np.zeros((sum(n_rows), objective.n_frames), dtype=bool)
        start = sum(n_rows[:i])
        uses[start : start + n_rows[i]] = local
        colour = frame_colours(local)
        uses = torch.as_tensor(uses, device=objective.i_obs.device)
        blocks += [_Block(param, True, uses, colour) for param in params]
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
        colour = torch.as_tensor(block.colour, device=grad2.device)
        for c in range(grad2.shape[1]):
            column = torch.zeros(len(u), grad2.shape[0], dtype=u.dtype, device=u.device)
            for k in range(int(block.colour.max()) + 1):
                chosen = colour == k
                summed = torch.autograd.grad(grad2[chosen, c].sum(), u, retain_graph=True)[0]
                column[:, chosen] = torch.where(block.uses[:, chosen], summed[:, None], 0.0)
            columns += list(column.unbind(1))
    # with the frames shared among processes, each has the rows of its own frames
    return r.detach(), sum_over_processes(torch.stack(columns, dim=1).detach()), blocks


def forward_jacobian(model, *, single: bool = False) -> tuple[Tensor, Tensor, list[_Block]] | None:
    """:func:`jacobian` in forward mode (:meth:`Objective.jacobian`): one
    eigendecomposition per orientation for every column, the orientation columns of all
    frames from three directions. None where it does not apply (a refined κ or absorption,
    a solver other than eigh, per-frame thickness parameters): :func:`jacobian` serves."""
    blocks = _blocks(model)
    turns = [b for b in blocks if b.per_frame]
    n_structure = sum(b.param.numel() for b in blocks if not b.per_frame)
    owners = [n for n, o in enumerate(model.objectives) if frame_rotations(o)]
    rotations = [frame_rotations(model.objectives[n])[0] for n in owners]
    if len(turns) != len(rotations) or any(
        b.param is not p for b, p in zip(turns, rotations, strict=False)
    ):
        return None  # per-frame parameters other than free rotations
    shifts = [p for p in model.structure.shifts()[:4] if p.requires_grad and p.numel()]
    dense = [b.param for b in blocks if not b.per_frame]
    if len(dense) != len(shifts) or any(p is not q for p, q in zip(dense, shifts, strict=False)):
        return None  # a global thickness among the parameters
    if not forward_mode_applies(model):
        return None
    parts = [
        o.jacobian(orientation=n in owners, single=single) for n, o in enumerate(model.objectives)
    ]
    rows = np.cumsum([0] + [len(r) for r, _ in parts])
    structure = torch.cat([jac[:, :n_structure] for _, jac in parts])
    columns = [structure]
    for n in owners:  # a data set's frame rotations: zero on the other data sets' rows
        jac = parts[n][1][:, n_structure:]
        column = structure.new_zeros(int(rows[-1]), jac.shape[1])
        column[rows[n] : rows[n + 1]] = jac
        columns.append(column)
    return torch.cat([r for r, _ in parts]), torch.cat(columns, dim=1), blocks


def frame_rotations(objective) -> list[Tensor]:
    """[the (frame, 3) rotation vectors] when the orientation model is one free rotation
    per frame that the refinement changes, else []."""
    model = objective.orientation
    if model is None or not hasattr(model, "rotation") or not model.rotation.requires_grad:
        return []
    return model.frame_parameters() if model.frame_parameters() == [model.rotation] else []


def apply_step(blocks: list[_Block], delta: Tensor) -> None:
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


def limit_rotations(blocks: list[_Block], delta: Tensor, max_rotation: float) -> Tensor:
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


def _loss(model) -> float:
    """The objective Σ r² at the current parameters (no graph)."""
    with torch.no_grad():
        return float(sum((o.residuals() ** 2).sum() for o in model.objectives))


def levenberg_marquardt(
    model,
    *,
    iterations: int = 10,
    damping: float = 1e-2,
    max_rotation: float = 2e-3,
    max_tries: int = 6,
    report=None,
) -> list[LMRecord]:
    """Refine the physical parameters of ``model`` (a Refinement) by Levenberg–Marquardt.

    An iteration builds one Jacobian and tries steps of growing damping (×10 after each
    rejected step, at most ``max_tries``) until one lowers the objective; the damping then
    drops by 3. ``max_rotation`` [rad] bounds each orientation component's step (a trust
    region: the beam sets were chosen for the file's orientations, so corrections must stay
    small).
    """
    history: list[LMRecord] = []
    r, jac, blocks = forward_jacobian(model) or jacobian(model)
    loss = float((r**2).sum())
    for iteration in range(1, iterations + 1):
        normal = jac.T @ jac
        scale = torch.diagonal(normal).clamp(min=1e-30)
        gradient = jac.T @ r
        dof = max(len(r) - len(gradient), 1)
        su = torch.sqrt(torch.diagonal(torch.linalg.pinv(normal)) * loss / dof)
        for _ in range(max_tries):
            delta = -torch.linalg.solve(normal + damping * torch.diag(scale), gradient)
            delta = limit_rotations(blocks, delta, max_rotation)
            apply_step(blocks, delta)
            trial = _loss(model)
            shift_su = float((delta.abs() / su.clamp(min=1e-30)).max())
            accepted = trial < loss
            if accepted:
                damping /= 3
            else:
                apply_step(blocks, -delta)
                damping *= 10
            record = LMRecord(iteration, trial if accepted else loss, shift_su, damping, accepted)
            history.append(record)
            if report is not None:
                report(record)
            if accepted:
                break
        if not accepted:
            break  # no step of any damping lowers the objective: a minimum along J
        converged = shift_su < 0.01 or (loss - trial) < 1e-9 * loss
        loss = trial
        if converged or iteration == iterations:
            break
        model.update_robust_scale(fresh=True)  # c follows the fit, fixed within a step
        loss = _loss(model)
        r, jac, blocks = forward_jacobian(model) or jacobian(model)
    return history
