"""A run's frames shared out among processes (``torch.distributed``), and the reductions
that make every process see the whole data set.

Data parallelism over frames: every process holds the whole model (structure, thickness
model, every frame's orientation), but each solves the orientations of its own share of
the frames only (:func:`frame_shares`, contiguous runs of frames balanced by their cost,
Σ N³ over the orientations of a frame with N beams). A plan built for a process
(:func:`~blochnet.experiment.plan.build_plan` with ``processes``) keeps every row's
bookkeeping but only the orientations that its frames' rows read, each with its whole
beam set, so every intensity a process computes is the one a single process computes.

The reductions are sums: a process's intensities are exact zeros on the rows of other
processes' frames, so the sum over processes (:func:`whole_rows`) is the whole vector on
every process, with the derivative of the process's own rows attached; the loss, the
frame scales, the robust scale and every figure of merit are then computed from the same
numbers on every process. Gradients (and reverse-mode Jacobians) are partial on each
process (only the own rows' paths) and summed (:func:`sum_over_processes`), so every
process takes the same step. Outside a process group (the default: one process) every
function here is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes of a run: ``rank`` of ``size``."""

    rank: int = 0
    size: int = 1

    @property
    def shared(self) -> bool:
        """True when the frames are shared among several processes."""
        return self.size > 1


def current() -> Processes:
    """The processes of the default ``torch.distributed`` group (one when none is set up)."""
    if dist.is_available() and dist.is_initialized():
        return Processes(dist.get_rank(), dist.get_world_size())
    return Processes()


def frame_shares(costs: np.ndarray, size: int) -> np.ndarray:
    """(frame,) rank of each frame: ``size`` contiguous runs of frames (in frame order, so
    that the rotation samples two neighbouring frames share mostly stay in one process)
    of about equal total cost, each run holding at least one frame of non-zero cost
    where there are that many (a frame of zero cost goes with the frame before it)."""
    costs = np.asarray(costs, dtype=float)
    share = np.zeros(len(costs), dtype=int)
    busy = np.flatnonzero(costs > 0)
    runs = min(size, len(busy))
    if runs <= 1:
        return share
    # run r starts at the busy frame whose cumulative cost (to its middle) reaches r/runs
    middle = (np.cumsum(costs) - costs / 2)[busy] / costs.sum()
    starts = np.searchsorted(middle, np.arange(1, runs) / runs)
    for r in range(runs - 1):  # every run at least one busy frame: forwards ...
        starts[r] = max(starts[r], r + 1, starts[r - 1] + 1 if r else 0)
    for r in range(runs - 2, -1, -1):  # ... and backwards
        last = len(busy) - (runs - 1 - r)
        starts[r] = min(starts[r], last, starts[r + 1] - 1 if r < runs - 2 else last)
    first = np.zeros(len(costs), dtype=int)
    first[busy[starts]] = 1
    return np.cumsum(first)


def whole_rows(own: Tensor, processes: Processes) -> Tensor:
    """The per-row values ``own`` (rows of other processes' frames exactly zero) summed over
    ``processes``: the whole vector, differentiable along the own rows."""
    if not processes.shared:
        return own
    mine = own.detach()
    whole = mine.clone()
    dist.all_reduce(whole)
    return own + (whole - mine)


def sum_over_processes(tensor: Tensor, processes: Processes | None = None) -> Tensor:
    """``tensor`` summed over ``processes`` (default: all), in place (returned)."""
    if (processes or current()).shared:
        dist.all_reduce(tensor)
    return tensor


def sum_gradients(parameters) -> None:
    """Every gradient of ``parameters`` that requires one summed over the processes (a
    parameter whose gradient this process did not reach counts as zero)."""
    if not current().shared:
        return
    for p in parameters:
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)


def any_process(flag: bool) -> bool:
    """True when ``flag`` is true in any process (every process gets the same answer)."""
    if not current().shared:
        return flag
    value = torch.tensor([int(flag)], device=_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def same_everywhere(module: torch.nn.Module) -> None:
    """Every parameter and buffer of ``module`` set to rank 0's values."""
    if not current().shared:
        return
    with torch.no_grad():
        for value in module.state_dict().values():
            if isinstance(value, Tensor) and value.numel():
                dist.broadcast(value, src=0)


def gather_objects(value) -> list:
    """``value`` of every process, in rank order (a one-element list in one process)."""
    processes = current()
    if not processes.shared:
        return [value]
    out = [None] * processes.size
    dist.all_gather_object(out, value)
    return out


def _device() -> torch.device:
    """Where the backend's small tensors live: this process's GPU for NCCL (the one the
    process group was joined with), else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
