"""The observations a simulation is compared with: one record per data set and plan.

:class:`Observations` holds the measured intensities of the rows a
:class:`~blochnet.experiment.plan.FramePlan` simulates, with their s.u., frames and the
fit / held-out split. The evaluation, the set-up checks and the refinement objective all
read them from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from blochnet.experiment.plan import FramePlan


class ObservationTensors(NamedTuple):
    """:class:`Observations` as tensors: i_obs, sigma (obs,), frame (obs,) long, fit (obs,)
    bool."""

    i_obs: Tensor
    sigma: Tensor
    frame: Tensor
    fit: Tensor


@dataclass(frozen=True, eq=False)
class Observations:
    """The compared observations (``obs``: the plan's used rows, in order).

    Attributes
    ----------
    i_obs, sigma : (obs,) measured intensity and its s.u.
    frame : (obs,) frame row of each observation.
    fit : (obs,) True for observations in the fit set, False for held-out ones.
    frame_ids : (frame,) ids of all frames of the data set.
    """

    i_obs: np.ndarray
    sigma: np.ndarray
    frame: np.ndarray
    fit: np.ndarray
    frame_ids: np.ndarray

    @classmethod
    def of(cls, plan: FramePlan) -> Observations:
        """The observations ``plan`` simulates, all in the fit set."""
        rows, refl = plan.used_rows, plan.dataset.reflections
        return cls(
            i_obs=refl.intensity[rows],
            sigma=refl.sigma[rows],
            frame=plan.frame_of_used,
            fit=np.ones(len(rows), dtype=bool),
            frame_ids=plan.dataset.frames.id,
        )

    @property
    def n_frames(self) -> int:
        return len(self.frame_ids)

    def __len__(self) -> int:
        return len(self.i_obs)

    def holding_out(self, frames: np.ndarray) -> Observations:
        """The same observations with those of frame rows ``frames`` held out of the fit."""
        return dataclasses.replace(self, fit=~np.isin(self.frame, frames))

    def tensors(self, *, dtype: torch.dtype = torch.float64, device=None) -> ObservationTensors:
        """The record as tensors on ``device``."""
        return ObservationTensors(
            torch.as_tensor(self.i_obs, dtype=dtype, device=device),
            torch.as_tensor(self.sigma, dtype=dtype, device=device),
            torch.as_tensor(self.frame, device=device),
            torch.as_tensor(self.fit, device=device),
        )
