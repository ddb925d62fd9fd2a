"""Figures of merit of a structure against a 3D-ED data set, at one thickness or over a scan.

A thickness scan costs one eigendecomposition per orientation: every scanned thickness is a
sample of :meth:`FrameSimulator.intensities`. The best thickness is the one with the lowest
pooled R1(obs), the figure crystallographers compare; wR2 is reported beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from blochnet.crystal import Crystal
from blochnet.dataset import Dataset
from blochnet.errors import ConfigurationError
from blochnet.experiment.config import SimulationConfig
from blochnet.experiment.frames import FrameSimulator
from blochnet.experiment.merit import FiguresOfMerit, figures_of_merit, optimal_scales
from blochnet.experiment.observations import Observations
from blochnet.experiment.prepared import prepare
from blochnet.experiment.selection import ReflectionSelection


@dataclass
class Evaluation:
    """Result of :func:`evaluate`.

    thickness : (thick,) scanned thicknesses [Å] (one value without a scan).
    merit : figures of merit at each thickness (frame scales optimal for each).
    best : index of the thickness with the lowest pooled R1(obs).
    frame_r1_obs : (frame, thick) per-frame R1(obs) (nan where a frame has no observation).
    selection : which observations were compared and why the others were not.
    n_orientations : orientations solved (frames × rocking samples).
    wall_time : seconds.
    """

    thickness: np.ndarray
    merit: list[FiguresOfMerit]
    best: int
    frame_r1_obs: np.ndarray
    selection: ReflectionSelection
    n_orientations: int
    wall_time: float

    @property
    def best_thickness(self) -> float:
        return float(self.thickness[self.best])

    @property
    def best_merit(self) -> FiguresOfMerit:
        return self.merit[self.best]

    def frame_best_thickness(self) -> np.ndarray:
        """(frame,) thickness of the lowest per-frame R1(obs) (nan for frames without data)."""
        out = np.full(self.frame_r1_obs.shape[0], np.nan)
        valid = np.isfinite(self.frame_r1_obs).any(axis=1)
        out[valid] = self.thickness[np.nanargmin(self.frame_r1_obs[valid], axis=1)]
        return out

    def to_dict(self) -> dict:
        return {
            "thickness": self.thickness.tolist(),
            "best_thickness": self.best_thickness,
            "best": self.best_merit.to_dict(),
            "scan": [
                {
                    "thickness": float(t),
                    "r1_obs": m.r1_obs,
                    "n_obs": m.n_obs,
                    "wr2": m.wr2,
                    "r1_obs_frame_mean": m.r1_obs_frame_mean,
                }
                for t, m in zip(self.thickness, self.merit, strict=True)
            ],
            "frame_best_thickness": [
                None if np.isnan(x) else float(x) for x in self.frame_best_thickness()
            ],
            "selection": {"rule": self.selection.rule, "counts": self.selection.counts()},
            "n_orientations": self.n_orientations,
            "wall_time_s": self.wall_time,
        }


def evaluate(
    crystal: Crystal,
    dataset: Dataset,
    thickness,
    *,
    config: SimulationConfig | None = None,
    dtype: torch.dtype = torch.float64,
    device=None,
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """Simulate every frame of ``dataset`` at each thickness in ``thickness`` [Å] and
    compare with the data (``crystal`` is put in the data file's cell).

    ``progress(n)`` is called as orientations are solved. To reuse a plan (or to know the
    number of orientations first), prepare the data (:func:`blochnet.experiment.prepared.prepare`)
    and call :func:`score_thicknesses`.
    """
    data = prepare(crystal, dataset, config, dtype=dtype, device=device)
    return score_thicknesses(data.simulator(), data.observations, thickness, progress=progress)


def score_thicknesses(
    simulator: FrameSimulator,
    observations: Observations,
    thickness,
    *,
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """Figures of merit of ``simulator``'s structure against ``observations`` (its plan's)
    at one thickness for every frame, for each thickness in ``thickness`` [Å]: one
    eigendecomposition per orientation serves them all. ``progress(n)`` is called as
    orientations are solved (total ``simulator.n_orientations``)."""
    start = time.perf_counter()
    thickness = np.atleast_1d(np.asarray(thickness, dtype=float))
    if thickness.ndim != 1 or np.any(thickness <= 0) or not np.all(np.isfinite(thickness)):
        raise ConfigurationError(f"thicknesses must be positive and finite, got {thickness}")
    if simulator.n_used == 0:
        raise ConfigurationError(
            f"no observation passes the selection rule ({simulator.selection.rule}); "
            f"excluded: {simulator.selection.counts()}"
        )
    model = simulator.model
    samples = torch.as_tensor(thickness, dtype=model.dtype, device=model.device)
    with torch.no_grad():
        calc = simulator.intensities(
            model.atom_tensors(), samples.expand(observations.n_frames, -1), progress=progress
        )
    i_obs, sigma, frame, _ = observations.tensors(dtype=model.dtype, device=model.device)
    merits = []
    for j in range(len(thickness)):
        scales = optimal_scales(i_obs, sigma, calc[:, j], frame, observations.n_frames)
        merits.append(
            figures_of_merit(
                i_obs,
                sigma,
                scales[frame] * calc[:, j],
                frame,
                observations.frame_ids,
                scales=scales,
            )  # fmt: skip
        )
    best = int(np.nanargmin([m.r1_obs for m in merits]))
    frame_r1 = np.stack([m.per_frame["r1_obs"] for m in merits], axis=1)
    return Evaluation(
        thickness,
        merits,
        best,
        frame_r1,
        simulator.selection,
        simulator.n_orientations,
        time.perf_counter() - start,
    )
