"""The refined model: the structure (shared by every data set) and one objective per data
set (its thickness model, frame orientations and observations), and its assembly from
prepared data.

The loss is the sum of the data sets' objectives (:mod:`blochnet.refinement.objective`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from blochnet.crystal import Crystal
from blochnet.dataset import Dataset
from blochnet.experiment import shards
from blochnet.experiment.geometry import beam_directions
from blochnet.experiment.prepared import PreparedData, prepare
from blochnet.physics.bloch import Kept
from blochnet.refinement.config import RefineConfig
from blochnet.refinement.gauss_newton import (
    apply_step,
    forward_jacobian,
    frame_rotations,
    limit_rotations,
)
from blochnet.refinement.objective import Objective, joint_figures_of_merit
from blochnet.refinement.parameters import StructureParameters, atom_selection
from blochnet.refinement.uncertainty import (
    add_to_parameters,
    forward_mode_applies,
    structure_jacobian,
)

# a new normal matrix for the epochs' Gauss–Newton steps once the loss has fallen by this
# factor since the last one was made (glycine: from 119,000 at the first to 33,000 by the
# fourth step, and the steps with the first matrix stall near 26,000)
NEW_MATRIX_DROP = 3.0
MAX_TURN = 2e-3  # largest step of a frame's rotation component in one epoch [rad]
DEFAULT_START = 600.0  # starting thickness [Å] where neither the configuration nor a scan sets one


class Refinement(nn.Module):
    """The structure and one objective per data set."""

    def __init__(self, structure: StructureParameters, objectives: list[Objective]) -> None:
        super().__init__()
        self.structure = structure
        self.objectives = nn.ModuleList(objectives)
        self.normal: torch.Tensor | None = None  # JᵀJ of the structure (gauss_newton_step)
        self.matrix_loss = math.inf  # the loss when it was made
        self.matrix_settings: str | None = None  # and the simulation settings (settings_key)
        self.last_loss, self.damping_factor = math.inf, 1.0  # (and the steps' damping)

    def gauss_newton_step(self, loss: float, *, damping: float = 0.1) -> bool:
        """Step the refined structure parameters by (JᵀJ + λ diag JᵀJ) δ = −Jᵀr, with Jᵀr
        = ½ the gradient of the loss they hold (an epoch's, exact) and JᵀJ of a
        forward-mode Jacobian (:func:`~blochnet.refinement.uncertainty.structure_jacobian`),
        as least-squares programs use the matrix of an earlier cycle; their gradients are
        then cleared.

        The matrix is made at the first call, again once ``loss`` (this epoch's objective)
        has fallen below 1/``NEW_MATRIX_DROP`` of its value when the last one was made (the
        fit, and with it J, has changed), and when the simulation settings have changed
        (the converged beams of the last epochs). The step that makes it also moves every
        frame's free rotation (where the orientation model is one per frame): their
        columns cost three directions of the Jacobian, and one joint step corrects the
        orientations as far as many Adam epochs would (each component bounded by
        ``MAX_TURN``); the orientations then go on with Adam, whose steps follow the
        thickness fit, while the kept matrix serves only the structure. The matrix is
        saved with the parameters, so a resumed run takes the same steps. As in
        Levenberg–Marquardt, λ = ``damping`` doubles after a step that the next ``loss``
        shows did not lower it and halves back after one that did. False (nothing done)
        where forward mode does not apply or a gradient is missing."""
        active = [p for p in self.structure.shifts() if p.requires_grad and p.numel()]
        if not active or any(p.grad is None for p in active) or not forward_mode_applies(self):
            return False
        turns, normal, blocks = [], self.normal, None
        n_active = sum(p.numel() for p in active)
        if (
            normal is None
            or loss < self.matrix_loss / NEW_MATRIX_DROP
            or self.matrix_settings != self.settings_key()
        ):
            turns = _turns(self)
            with torch.no_grad():
                made = forward_jacobian(self, single=True) if turns else None
                if made is None:
                    turns, (_, jac) = [], structure_jacobian(self, active, single=True)
                else:
                    _, jac, blocks = made
            normal = jac.T @ jac
            del made, jac
            self.normal = normal[:n_active, :n_active]  # kept: the structure's block
            self.matrix_loss, self.matrix_settings = float(loss), self.settings_key()
        worse = loss > self.last_loss
        self.damping_factor = self.damping_factor * 2 if worse else max(self.damping_factor / 2, 1)
        self.last_loss = float(loss)
        normal = normal.to(active[0].dtype)
        lam = damping * self.damping_factor
        gradient = torch.cat(
            [p.grad.reshape(-1) for p in active] + [t.grad.T.reshape(-1) for t in turns]
        )  # the rotations' columns run component-major
        delta = -torch.linalg.solve(normal + lam * torch.diag(torch.diagonal(normal)), gradient / 2)
        if blocks is None:
            add_to_parameters(active, delta)
        else:  # in the Jacobian's columns: the structure, then the rotations
            apply_step(blocks, limit_rotations(blocks, delta, MAX_TURN))
        for p in active + turns:
            p.grad = None
        return True

    @contextmanager
    def eigenvectors_kept(self, precision: Kept) -> Iterator[None]:
        """Inside: every simulator keeps its batches' eigenvectors for a backward pass in
        ``precision`` ("single" or "full"); afterwards the precision they had before. For
        gradients that only steer a step (the epochs', the convergence test's Jᵀr);
        reverse-mode Jacobians are taken outside, in full."""
        simulators = [o.simulator for o in self.objectives]
        before = [sim.kept for sim in simulators]
        for sim in simulators:
            sim.kept = precision
        try:
            yield
        finally:
            for sim, kept in zip(simulators, before, strict=True):
                sim.kept = kept

    def settings_key(self) -> str:
        """The simulation settings of every data set (a Jacobian is made for these)."""
        return "|".join(o.simulator.config.model_dump_json() for o in self.objectives)

    def kept_matrix(self, loss: float, *, within: float = 1.0) -> torch.Tensor | None:
        """The epochs' normal matrix of the structure where it may still describe the fit:
        made at the current settings, at a loss no more than ``within`` (relative) above
        ``loss`` (the loss has not halved since); else None. (Whether it does is told by
        the rate at which steps with it converge: :func:`converge_structure`.)"""
        if self.normal is None or self.matrix_settings != self.settings_key():
            return None
        return self.normal if self.matrix_loss <= (1 + within) * loss else None

    def get_extra_state(self) -> dict:
        if self.normal is None:
            return {}
        return {"normal": self.normal, "matrix_loss": self.matrix_loss,
                "settings": self.matrix_settings, "loss": self.last_loss,
                "factor": self.damping_factor}  # fmt: skip

    def set_extra_state(self, state: dict) -> None:
        state = state or {}
        self.normal = state.get("normal")
        self.matrix_loss = state.get("matrix_loss", math.inf)
        self.matrix_settings = state.get("settings")
        self.last_loss = state.get("loss", math.inf)
        self.damping_factor = state.get("factor", 1.0)

    def forward(self) -> torch.Tensor:
        return sum(objective() for objective in self.objectives)

    def update_robust_scale(self, *, fresh: bool = False) -> None:
        """Update c of every data set's robust loss (see :class:`Objective`)."""
        for objective in self.objectives:
            objective.update_robust_scale(fresh=fresh)

    def after_step(self) -> None:
        """After every optimiser step: positive-definite ADPs, κ ≥ 0, robust scale."""
        self.structure.keep_adps_positive_definite()
        self.update_robust_scale()

    def last_r_values(self) -> dict[str, float]:
        """wR2 and R1(obs) (pooled and as a frame mean) of the fit set, and R1(obs) pooled
        over the held-out observations (nan without), for the parameters of the last
        ``forward()``."""
        fit = joint_figures_of_merit(self.objectives, last=True)
        out = {"wr2": fit.wr2, "r_obs": fit.r1_obs, "r_obs_frame_mean": fit.r1_obs_frame_mean}
        if not all(bool(o.fit.all()) for o in self.objectives):
            out["r_free"] = joint_figures_of_merit(self.objectives, subset="free", last=True).r1_obs
        return out


def build_refinement(
    data: list[PreparedData],
    config: RefineConfig,
    *,
    crystal: Crystal | None = None,
    starts: list[float] | None = None,
) -> Refinement:
    """The refinement of ``crystal`` (default: the first data set's prepared structure; it
    must be in the data sets' cell) against the prepared data sets, with their plans.

    ``starts``: starting thickness of each data set [Å] where ``config.thickness.t0`` is
    not set (default 600 Å). Frames held out (``config.holdout_fraction``) are drawn with
    ``config.seed``.
    """
    crystal = data[0].crystal if crystal is None else crystal
    simulators = [d.simulator(crystal) for d in data]
    for sim in simulators:
        sim.recompute = config.recompute == "always" or (
            config.recompute == "auto" and sim.kept_bytes() > _memory_for_gradients()
        )
    labels = [a.label for a in crystal.atoms]
    structure = StructureParameters(
        simulators[0].model,
        xyz=atom_selection(config.refine_xyz, labels),
        adp=atom_selection(config.refine_adp, labels),
        occupancy=atom_selection(config.refine_occupancy, labels),
        charge=atom_selection(config.refine_charge, labels),
        absorption=(config.simulation.absorption or 0.05)
        if config.refine_absorption
        else config.simulation.absorption,
        refine_absorption=config.refine_absorption,
    )
    rng = np.random.default_rng(config.seed)
    objectives = []
    for n, (prepared, sim) in enumerate(zip(data, simulators, strict=True)):
        ds = prepared.dataset
        t0 = config.thickness.t0 or (starts[n] if starts else DEFAULT_START)
        directions = beam_directions(ds)  # network inputs when the configuration asks
        thickness = config.thickness.build(ds.frames.alpha, t0=t0, directions=directions)
        thickness = thickness.to(dtype=prepared.dtype, device=prepared.device)
        observations = prepared.observations
        if config.holdout_fraction > 0:
            n_out = max(1, round(config.holdout_fraction * ds.n_frames))
            observations = observations.holding_out(rng.choice(ds.n_frames, n_out, replace=False))
        orientation = config.orientation.build(
            ds.frames.alpha, directions=directions, dtype=prepared.dtype
        )
        objectives.append(
            Objective(
                sim,
                observations,
                structure,
                thickness,
                refine_orientation=config.refine_orientation,
                orientation=orientation,
                instability=config.instability,
                robust=config.robust,
                thickness_steps=config.thickness_steps,
                thickness_rate=config.thickness_rate,
            )
        )
    return Refinement(structure, objectives)


def _memory_for_gradients() -> float:
    """A quarter of this machine's memory, shared among the run's processes on it [bytes]
    (infinite where it cannot be read)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return math.inf
    local = int(os.environ.get("LOCAL_WORLD_SIZE", shards.current().size))
    return total / 4 / max(local, 1)


def refinement_for(
    crystal: Crystal,
    datasets: list[Dataset],
    config: RefineConfig,
    *,
    dtype: torch.dtype = torch.float64,
    device=None,
    starts: list[float] | None = None,
) -> Refinement:
    """:func:`build_refinement` of ``crystal`` against ``datasets`` prepared at
    ``config.simulation`` (one call that prepares too; a run prepares once and builds
    from its prepared data)."""
    data = [prepare(crystal, ds, config.simulation, dtype=dtype, device=device) for ds in datasets]
    return build_refinement(data, config, starts=starts)


def _turns(model) -> list[torch.Tensor]:
    """The free per-frame rotation vectors of every data set, when each has its gradient."""
    turns = [t for o in model.objectives for t in frame_rotations(o)]
    return turns if turns and all(t.grad is not None for t in turns) else []
