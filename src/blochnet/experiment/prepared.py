"""A data set prepared once for a run: structure in the data's cell, plan, observations.

:func:`prepare` checks the structure's cell against the data file's (warning once) and
builds the :class:`~blochnet.experiment.plan.FramePlan` of the settings; every stage of a
run (thickness scans, the absolute-structure check, convergence checks, the refinement
model, the final scoring) takes the :class:`PreparedData` and reuses its plan. Plans of
other settings (a convergence check's finer ones) are built on request and kept, so no
settings are planned twice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from blochnet.crystal import Crystal
from blochnet.dataset import Dataset, structure_in_data_cell
from blochnet.experiment.config import SimulationConfig
from blochnet.experiment.frames import FrameSimulator, crystal_model
from blochnet.experiment.observations import Observations
from blochnet.experiment.plan import FramePlan, build_plan
from blochnet.experiment.shards import Processes


@dataclass(frozen=True, eq=False)
class PreparedData:
    """One data set of a run at one set of simulation settings.

    Attributes
    ----------
    dataset : the data set.
    crystal : the structure in the data set's cell (the hand as given to :func:`prepare`).
    plan : the frame plan of ``settings``.
    observations : the rows ``plan`` simulates (all in the fit set).
    dtype, device : of every tensor built from it.
    processes : the processes the frames are shared among (one by default); every plan
        of the record solves this process's share (:mod:`blochnet.experiment.shards`).
    """

    dataset: Dataset
    crystal: Crystal
    plan: FramePlan
    observations: Observations
    dtype: torch.dtype = torch.float64
    device: torch.device | str | None = None
    processes: Processes = Processes()
    _plans: dict = field(default_factory=dict, repr=False)  # shared by every copy

    @property
    def settings(self) -> SimulationConfig:
        return self.plan.settings

    def simulator(
        self, crystal: Crystal | None = None, plan: FramePlan | None = None
    ) -> FrameSimulator:
        """A simulator of ``plan`` (default: the record's; another of :meth:`plan_for`)
        for ``crystal`` (default: the prepared structure), e.g. the other hand or a
        refined structure, put in this data set's cell (the cells were compared when the
        data were prepared)."""
        crystal = self.crystal if crystal is None else replace(crystal, cell=self.crystal.cell)
        plan = self.plan if plan is None else plan
        return FrameSimulator(
            plan, crystal_model(crystal, plan, dtype=self.dtype, device=self.device)
        )

    def with_settings(self, settings: SimulationConfig) -> PreparedData:
        """The same data set at ``settings`` (its plan taken from those already built, or
        built). The new record keeps only that plan: the plans of settings tried and not
        taken (a convergence check's) are freed with the record they were built for."""
        plan = self.plan_for(settings)
        return dataclasses.replace(
            self,
            plan=plan,
            observations=Observations.of(plan),
            _plans={_key(settings): plan},
        )

    def with_dtype(self, dtype: torch.dtype) -> PreparedData:
        """The same data set and settings with tensors of ``dtype`` (its plan built again:
        the plan's tensors carry the precision)."""
        if dtype == self.dtype:
            return self
        plan = build_plan(
            self.dataset, self.settings, processes=self.processes, dtype=dtype, device=self.device
        )
        return dataclasses.replace(self, plan=plan, dtype=dtype, _plans={_key(self.settings): plan})

    def drop_plan(self, settings: SimulationConfig) -> None:
        """Forget the kept plan of ``settings`` (not this record's own), so that its memory
        goes once nothing else holds it (the first epochs' beams after the switch to the
        converged ones)."""
        key = _key(settings)
        if key != _key(self.settings):
            self._plans.pop(key, None)

    def plan_for(self, settings: SimulationConfig, frames: np.ndarray | None = None) -> FramePlan:
        """The plan of ``settings`` (restricted to the rows of frame rows ``frames``),
        built on first request and kept."""
        key = _key(settings, frames)
        if key not in self._plans:
            self._plans[key] = build_plan(
                self.dataset, settings, frames=frames, processes=self.processes,
                dtype=self.dtype, device=self.device,
            )  # fmt: skip
        return self._plans[key]


def prepare(
    crystal: Crystal,
    dataset: Dataset,
    settings: SimulationConfig | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    device=None,
    processes: Processes | None = None,
) -> PreparedData:
    """``dataset`` prepared for simulations of ``crystal`` at ``settings``: the structure
    in the data file's cell (checked once), the plan and the observations; ``processes``:
    the frames shared among these (:mod:`blochnet.experiment.shards`; one by default)."""
    settings = settings or SimulationConfig()
    processes = processes or Processes()
    in_cell = structure_in_data_cell(crystal, dataset)
    plan = build_plan(dataset, settings, processes=processes, dtype=dtype, device=device)
    plans = {_key(settings): plan}
    return PreparedData(
        dataset, in_cell, plan, Observations.of(plan), dtype, device, processes, plans
    )


def _key(settings: SimulationConfig, frames: np.ndarray | None = None) -> tuple:
    """The key of a plan among those a record keeps: every setting (the simulator reads
    the solver and absorption from the plan's settings) and the frames it simulates."""
    return settings.model_dump_json(), None if frames is None else tuple(np.asarray(frames))
