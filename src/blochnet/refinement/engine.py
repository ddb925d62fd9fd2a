"""The optimisation loop: Adam with one learning rate per parameter group, made safe.

* A NaN or inf in the loss or in any gradient stops the step; the offending parameter
  groups (and frames, for per-frame parameters) are named, and the last good state is kept.
* A checkpoint (parameters, optimiser state, history) is written atomically every
  ``checkpoint_every`` epochs, at the end, and after the epoch in which a SIGINT or
  SIGTERM arrived (the run then stops with :class:`~blochnet.refinement.interrupts.Interrupted`);
  ``resume=True`` continues from it to the same result, also after a run that had
  converged (it is not taken further). With the frames shared among processes, the
  gradients are summed over them and a signal to any process stops all after the epoch.
* Convergence is judged on the objective: the run stops when the relative drop of the
  loss over ``patience`` epochs is below ``tolerance``.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from blochnet.errors import RefinementError
from blochnet.experiment.shards import any_process, sum_gradients
from blochnet.refinement.interrupts import Interrupted, deferred_interrupts


@dataclass
class EpochRecord:
    """One epoch: the objective, wR2 and R1(obs) of the parameters it started from."""

    epoch: int
    loss: float
    wr2: float
    seconds: float
    r_obs: float = math.nan
    r_obs_frame_mean: float = math.nan
    r_free: float = math.nan  # pooled R1(obs) of the held-out observations
    forward_s: float = math.nan  # seconds of the objective's evaluation (the simulation)
    backward_s: float = math.nan  # seconds of its gradient


def _group_of(name: str) -> str:
    """Parameter group of a parameter name (see :func:`parameter_groups`)."""
    markers = ("xyz_shift", "xyz"), ("adp_shift", "adp"), ("occ_shift", "occupancy")
    for marker, group in (*markers, ("charge_shift", "charge"), ("kappa_shift", "absorption")):
        if marker in name:
            return group
    if "orientation" in name.split("."):
        return "orientation_network" if "network" in name.split(".") else "orientation"
    if "thickness" in name.split("."):
        return "thickness"
    return name.split(".")[-1]


def parameter_groups(objective: nn.Module, learning_rates: dict[str, float]) -> list[dict]:
    """Adam parameter groups: "xyz", "adp", "occupancy", "charge", "absorption" (structure
    shifts),
    "orientation" (per-frame rotation vectors), "orientation_network" (the weights of a
    learned orientation drift) and "thickness" (every thickness-model
    parameter). A group with learning rate 0 is fixed (its parameters get
    ``requires_grad=False``)."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for name, param in objective.named_parameters():
        groups.setdefault(_group_of(name), []).append((name, param))
    out = []
    for key, named in groups.items():
        lr = learning_rates.get(key, 0.0)
        for _, param in named:
            param.requires_grad_(lr > 0)
        if lr > 0 and any(p.numel() for _, p in named):
            out.append({"params": [p for _, p in named], "lr": lr, "name": key})
    return out


def optimise_adam(
    objective: nn.Module,
    *,
    epochs: int,
    learning_rates: dict[str, float],
    sum_w_io2: float,
    checkpoint: Path | None = None,
    checkpoint_every: int = 5,
    resume: bool = False,
    tolerance: float = 1e-5,
    patience: int = 10,
    after_step: Callable[[], None] | None = None,
    report: Callable[[EpochRecord], None] | None = None,
    merit: Callable[[], dict[str, float]] | None = None,
    method: Literal["adam", "lbfgs"] = "adam",
    lr_final: float = 1.0,
    second_order: Callable[[int, float], None] | None = None,
) -> list[EpochRecord]:
    """Minimise ``objective()`` with Adam (or L-BFGS); returns the per-epoch history.

    ``method="lbfgs"``: one L-BFGS step with a strong-Wolfe line search per epoch (several
    evaluations of the objective), over every group with a learning rate > 0 (the rates
    themselves are not used: the step comes from the curvature estimate).

    ``lr_final`` < 1 (Adam): every group's rate follows a cosine from its value at the
    first epoch to ``lr_final`` times it at the last (a function of the epoch number
    alone, so a resumed run takes the same steps).

    ``second_order(epoch, loss)`` (Adam) runs after each gradient, before Adam's step: it may
    step some parameters itself (from the gradient) and clear their gradients, which Adam
    then leaves alone (e.g. :meth:`Refinement.gauss_newton_step`).

    ``sum_w_io2`` (Σ w Io²) turns the loss into wR2 for the history where ``merit`` does
    not give ``wr2`` itself (it must for a loss other than least squares). ``after_step`` runs
    after every step (e.g. projections such as positive-definite ADPs). ``merit``, called
    after each evaluation of the objective, gives further :class:`EpochRecord` fields
    (``r_obs``, ``r_obs_frame_mean``, ``r_free``) for the same parameters.
    """
    groups = parameter_groups(objective, learning_rates)
    if not groups:
        raise RefinementError("nothing to refine: every parameter group is fixed")
    optimiser = _ScaledLBFGS(groups) if method == "lbfgs" else torch.optim.Adam(groups)
    history: list[EpochRecord] = []
    start_epoch = 0
    if resume and checkpoint is not None and checkpoint.exists():
        history = _load_checkpoint(checkpoint, objective, optimiser)
        start_epoch = epochs if _converged(history, tolerance, patience) else len(history)
    good = copy.deepcopy(objective.state_dict())
    base_rates = [group["lr"] for group in groups]
    with deferred_interrupts() as interrupt:
        for epoch in range(start_epoch, epochs):
            tick = time.perf_counter()
            if method == "adam" and lr_final != 1.0:
                _cosine_rates(optimiser, base_rates, epoch, epochs, lr_final)
            optimiser.zero_grad()
            loss = objective()
            _check_finite(objective, loss, good)
            forward = time.perf_counter()
            _backward(objective, loss)
            _check_finite(objective, loss, good, gradients=True)
            backward = time.perf_counter()
            good = copy.deepcopy(objective.state_dict())
            extra = merit() if merit is not None else {}
            if method == "lbfgs":
                optimiser.step(objective, loss, good)
            else:
                if second_order is not None:
                    second_order(epoch, float(loss.detach()))
                optimiser.step()
            if after_step is not None:
                after_step()
            value = float(loss.detach())
            wr2 = extra.pop("wr2", math.sqrt(value / sum_w_io2))
            record = EpochRecord(
                epoch + 1, value, wr2, time.perf_counter() - tick, **extra,
                forward_s=forward - tick, backward_s=backward - forward,
            )  # fmt: skip
            history.append(record)
            if report is not None:
                report(record)
            if checkpoint is not None and (epoch + 1) % checkpoint_every == 0:
                save_checkpoint(checkpoint, objective, optimiser, history)
            if any_process(interrupt.pending()):  # every process stops after this epoch
                name = interrupt.name or "SIGINT"  # (a signal another process received)
                _stop(name, epoch + 1, checkpoint, objective, optimiser, history)
            if _converged(history, tolerance, patience):
                break
    if checkpoint is not None:
        save_checkpoint(checkpoint, objective, optimiser, history)
    return history


def _load_checkpoint(checkpoint: Path, objective: nn.Module, optimiser) -> list[EpochRecord]:
    """Load parameters and optimiser state from ``checkpoint``; return its history."""
    try:
        state = torch.load(checkpoint, weights_only=False)
        why = _mismatch(objective.state_dict(), state["objective"])
        if not why:
            objective.load_state_dict(state["objective"])
            optimiser.load_state_dict(state["optimiser"])
            return [EpochRecord(**h) for h in state["history"]]
    except (RuntimeError, ValueError, KeyError, TypeError, EOFError) as error:
        why = f"unreadable ({type(error).__name__}: {error})"
    raise RefinementError(
        f"{checkpoint}: cannot resume, the checkpoint does not hold this refinement's "
        f"parameters ({why}); it was written with other settings (e.g. other refined "
        "groups) or by another version. Start again without --resume, or resume "
        "with the settings of that run"
    )


def _cosine_rates(optimiser, base_rates: list[float], epoch: int, epochs: int, lr_final: float):
    """Every group's rate on a cosine from its base value (first epoch) to ``lr_final``
    times it (last epoch)."""
    cosine = 0.5 * (1 + math.cos(math.pi * epoch / max(epochs - 1, 1)))
    factor = lr_final + (1 - lr_final) * cosine
    for group, rate in zip(optimiser.param_groups, base_rates, strict=True):
        group["lr"] = rate * factor


class _ScaledLBFGS:
    """L-BFGS in scaled variables q, p = p₀ + r·q, with r each group's learning rate.

    The rates put the parameters on a common scale (a first step of about r, as Adam's),
    which L-BFGS's first, curvature-free step and line search need. Curvature pairs are
    differences, so re-basing p₀ on the current values (at every step) keeps them valid.
    """

    def __init__(self, groups: list[dict]) -> None:
        self.params = [p for group in groups for p in group["params"]]
        self.rates = [group["lr"] for group in groups for _ in group["params"]]
        self.q = [torch.zeros_like(p, requires_grad=True) for p in self.params]
        self.inner = torch.optim.LBFGS(
            self.q, lr=1.0, max_iter=1, history_size=20, line_search_fn="strong_wolfe"
        )

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self, objective: nn.Module, first: torch.Tensor, good: dict) -> None:
        start = [p.detach().clone() for p in self.params]
        calls = [first]

        def closure():
            with torch.no_grad():
                for p, p0, q, r in zip(self.params, start, self.q, self.rates, strict=True):
                    p.copy_(p0 + r * q)
            if calls:  # the evaluation already made at q = 0 this epoch
                loss = calls.pop()
            else:
                self.zero_grad()
                loss = objective()
                _check_finite(objective, loss, good)
                _backward(objective, loss)
                _check_finite(objective, loss, good, gradients=True)
            for p, q, r in zip(self.params, self.q, self.rates, strict=True):
                q.grad = r * p.grad if p.grad is not None else torch.zeros_like(q)
            return loss.detach()

        with torch.no_grad():
            for q in self.q:
                q.zero_()
        self.inner.step(closure)
        with torch.no_grad():
            for p, p0, q, r in zip(self.params, start, self.q, self.rates, strict=True):
                p.copy_(p0 + r * q)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


def _mismatch(current: dict, saved: dict) -> str:
    """What differs between the refinement's state and a checkpoint's ('' if nothing)."""
    missing = [k for k in current if k not in saved]
    extra = [k for k in saved if k not in current]
    shapes = [
        f"{k} {tuple(saved[k].shape)} saved, {tuple(v.shape)} here"
        for k, v in current.items()
        if k in saved and hasattr(v, "shape") and tuple(saved[k].shape) != tuple(v.shape)
    ]
    parts = [
        f"{label}: {', '.join(items[:4])}{' …' if len(items) > 4 else ''}"
        for label, items in (("missing", missing), ("not here", extra), ("shape", shapes))
        if items
    ]
    return "; ".join(parts)


def save_checkpoint(path: Path, objective: nn.Module, optimiser, history) -> None:
    """Write parameters, optimiser state and history atomically."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "objective": objective.state_dict(),
            "optimiser": optimiser.state_dict(),
            "history": [asdict(h) for h in history],
        },
        tmp,
    )
    os.replace(tmp, path)


def _stop(signal_name: str, epoch: int, checkpoint, objective, optimiser, history) -> None:
    """Save the state after ``epoch`` and raise :class:`Interrupted` saying so."""
    if checkpoint is None:
        raise Interrupted(f"{signal_name}: stopped after epoch {epoch}")
    save_checkpoint(checkpoint, objective, optimiser, history)
    raise Interrupted(
        f"{signal_name}: stopped after epoch {epoch}; saved in {checkpoint}, continue with --resume"
    )


def _converged(history: list[EpochRecord], tolerance: float, patience: int) -> bool:
    """The best loss of the last ``patience`` epochs is within ``tolerance`` (relative) of
    the loss before them: no longer dropping, and not a transient rise either (a step
    that overshot, after which the loss is still coming down)."""
    if len(history) <= patience:
        return False
    before, now = history[-patience - 1].loss, min(h.loss for h in history[-patience:])
    return abs(before - now) <= tolerance * before


def _backward(objective: nn.Module, loss: torch.Tensor) -> None:
    """The gradients of ``loss``, summed over the processes the frames are shared among
    (a process without frames of its own has no graph, only the others' sum)."""
    if loss.requires_grad:
        loss.backward()
    sum_gradients(objective.parameters())


def _check_finite(objective: nn.Module, loss, good: dict, *, gradients: bool = False) -> None:
    bad = []
    if not gradients and not torch.isfinite(loss):
        bad.append("the objective")
    if gradients:
        for name, param in objective.named_parameters():
            if param.grad is not None and not torch.all(torch.isfinite(param.grad)):
                rows = ""
                if name.endswith("orientation.rotation"):
                    frames = torch.nonzero(~torch.isfinite(param.grad).all(1))[:, 0].tolist()
                    rows = f" (frame rows {frames})"
                bad.append(f"gradient of {name}{rows}")
    if bad:
        objective.load_state_dict(good)
        raise RefinementError(
            f"non-finite values in {', '.join(bad)}; stopped and kept the last good parameters"
        )
