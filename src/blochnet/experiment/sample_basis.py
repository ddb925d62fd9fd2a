"""Intensities at every thickness sample, per (row, frame) pair, from one solve
(:meth:`~blochnet.experiment.frames.FrameSimulator.sample_basis`): a row's intensity for
any thickness weights on the same samples is a weighted sum, so a thickness model is
fitted on it in many cheap steps without solving again."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from blochnet.experiment.shards import Processes, whole_rows


@dataclass
class SampleBasis:
    """Intensities at each thickness sample per (row, frame) pair (``values`` (pair,
    sample)), from :meth:`FrameSimulator.sample_basis`: row r's intensity for per-frame
    weights w (frame, sample) on the same samples is Σ over its pairs Σ_s values·w[frame]."""

    values: Tensor
    row: Tensor
    frame: Tensor
    n_rows: int
    processes: Processes

    def intensities(self, weights: Float[Tensor, "frame sample"]) -> Float[Tensor, " obs"]:
        """(obs,) the rows' intensities for thickness weights ``weights``; differentiable
        in both (with the frames shared among processes, every row, as
        :meth:`FrameSimulator.intensities`)."""
        per_pair = (self.values * weights[self.frame]).sum(1)
        out = per_pair.new_zeros(self.n_rows).index_add(0, self.row, per_pair)
        return whole_rows(out[:, None], self.processes)[:, 0]

    def detach(self) -> SampleBasis:
        return dataclasses.replace(self, values=self.values.detach())


class _Accumulate(torch.autograd.Function):
    """Rows ``values`` (m, sample) summed into ``n`` pairs: row i into pair own[i], or with
    ``blend`` (m,) its share 1 − blend into own[i] and blend into other[i]. Keeps only the
    indices and shares for the backward pass (``index_add`` keeps its whole source)."""

    @staticmethod
    def forward(ctx, values, own, other, blend, n):
        out = values.new_zeros(n, values.shape[1])
        if blend is None:
            ctx.save_for_backward(own)
            return out.index_add_(0, own, values)
        ctx.save_for_backward(own, other, blend)
        out.index_add_(0, own, values * (1 - blend)[:, None])
        return out.index_add_(0, other, values * blend[:, None])

    @staticmethod
    def backward(ctx, grad):
        if len(ctx.saved_tensors) == 1:
            return grad[ctx.saved_tensors[0]], None, None, None, None
        own, other, blend = ctx.saved_tensors
        share = grad[own] * (1 - blend)[:, None] + grad[other] * blend[:, None]
        return share, None, None, None, None


def accumulate_pairs(
    values: Float[Tensor, "m sample"],
    own: Tensor,
    other: Tensor,
    blend: Float[Tensor, " m"] | None,
    n: int,
) -> Float[Tensor, "pair sample"]:
    """(n, sample): each row of ``values`` added to pair ``own`` or, with ``blend``, its
    share 1 − blend to ``own`` and blend to ``other`` (differentiable in ``values``; only
    the indices and shares are kept for the backward pass)."""
    return _Accumulate.apply(values, own, other, blend, n)
