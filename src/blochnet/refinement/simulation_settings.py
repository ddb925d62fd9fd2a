"""Simulation settings chosen from the data before a refinement: the starting thickness,
and a beam set and rocking sampling checked for convergence.

What the user set in the configuration is kept; the rest is chosen here and reported:

* the starting thickness of each data set, from a scan of R1(obs) over 200–2000 Å with
  the structure as given (one eigendecomposition per orientation serves every thickness);
* a convergence check of the beam set (g_max, sg_max) and of the rocking sampling
  (rotation step or tilts per frame) on a subset of frames: the intensities at the chosen
  settings are compared with those of a finer calculation, and the finer settings are
  taken when the two differ by more than ``TOLERANCE`` (weighted rms, frame scales
  refitted). The intensities compared are means over thicknesses ``SPREAD`` × the
  starting thickness: the range a thickness distribution started there reaches in a
  refinement (the Gaussian model's default width bound is half the start, and its
  samples reach ±2.2 widths; the grid model's grid reaches 2.5× the start, but weight
  beyond twice the start is simulated with a sampling checked only up to twice the
  start). Thick samples set the sampling a rocking curve needs (its width in |s_g| is
  about 1/t), so a check at the starting thickness alone can pass a rotation step that
  aliases the rocking curves of the thicker parts. Each failed check takes the finer
  settings; a refined sampling is checked in turn (up to ``SAMPLING_CHECKS`` checks; its
  cost grows linearly), a refined beam set is not (the check's time grows with the cube
  of the beam count): the set-up says so, and finer ones can be set in the configuration.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from blochnet.crystal import Crystal
from blochnet.experiment.config import SimulationConfig
from blochnet.experiment.evaluate import score_thicknesses
from blochnet.experiment.frames import FrameSimulator
from blochnet.experiment.merit import FiguresOfMerit, optimal_scales
from blochnet.experiment.observations import Observations
from blochnet.experiment.prepared import PreparedData
from blochnet.experiment.rocking import resolve_rocking

SCAN = np.arange(200.0, 2001.0, 100.0)  # [Å]
TOLERANCE = 0.02  # largest accepted weighted rms change of the intensities
CHECK_FRAMES = 12  # frames used by the convergence check
SPREAD = np.linspace(0.5, 2.0, 7)  # thicknesses of the check, × the starting thickness
SAMPLING_CHECKS = 3  # successive checks of the rocking sampling (one of the beam set)


@dataclasses.dataclass
class ThicknessScan:
    """A scan of one thickness for every frame: the best thickness [Å], its figures of
    merit, and the curve (R1(obs) and wR2 at every scanned thickness) for the outputs."""

    best: float
    merit: FiguresOfMerit
    thickness: list[float]
    r1_obs: list[float]
    wr2: list[float]

    def record(self, dataset: str, hand: str) -> dict:
        return {"dataset": dataset, "hand": hand, "best": self.best,
                "thickness": self.thickness, "r1_obs": self.r1_obs, "wr2": self.wr2}  # fmt: skip


@dataclasses.dataclass
class Setup:
    data: list[PreparedData]  # the data sets at the chosen settings
    t0: list[float]  # starting thickness per data set [Å]
    lines: list[str]  # what was chosen and why, for the user
    scans: list[dict] = dataclasses.field(default_factory=list)  # ThicknessScan records

    @property
    def simulation(self) -> SimulationConfig:
        return self.data[0].settings


def choose_settings(
    data: list[PreparedData],
    crystal: Crystal,
    *,
    t0: float | None,
    fixed: set[str],
    scanned: list[float] | None = None,
) -> Setup:
    """Starting thicknesses and converged simulation settings (fields in ``fixed`` kept)
    for refining ``crystal`` (in the data sets' cell) against ``data``.

    ``t0``: the user's starting thickness (no scan); ``scanned``: each data set's best
    thickness of a scan already made (the absolute-structure check), reused. The
    convergence check runs on the first data set; plans of the settings it tries are built
    once and kept with the data.
    """
    lines: list[str] = []
    scans: list[dict] = []

    def start(n: int, prepared: PreparedData) -> float:
        if t0 is not None:
            return t0
        if scanned is not None:
            return scanned[n]
        scan = scan_thickness(prepared.simulator(crystal), prepared.observations)
        name = prepared.dataset.source or "data set"
        scans.append(scan.record(name, "refined"))
        lines.append(
            f"starting thickness {scan.best:.0f} Å: lowest R1(obs) "
            f"({100 * scan.merit.r1_obs:.2f} % over {scan.merit.n_obs} obs) of a scan "
            f"{SCAN[0]:.0f}–{SCAN[-1]:.0f} Å ({name})"
        )
        return scan.best

    first = data[0]
    simulation = first.settings
    thickness = start(0, first)
    frames = _frame_subset(first.dataset.n_frames, CHECK_FRAMES)
    cache: dict = {}  # the check's intensities per settings, reused by the next check
    for refine, checks in _refinements(simulation, first, fixed):
        for n in range(checks):
            name, finer = refine(simulation)
            change = _change(first, crystal, simulation, finer, thickness, frames, cache)
            if change <= TOLERANCE:
                lines.append(f"{name}: converged ({change:.1%} change against a finer calculation)")
                break
            last = "" if n + 1 < checks else " (not checked further; finer ones can be set)"
            lines.append(f"{name}: {change:.1%} change against a finer calculation; refined{last}")
            simulation = finer
    data = [prepared.with_settings(simulation) for prepared in data]
    starts = [thickness] + [start(n, d) for n, d in enumerate(data[1:], 1)]
    if scanned is not None and t0 is None:
        lines.insert(0, "starting thickness " + ", ".join(f"{t:.0f} Å" for t in starts)
                     + f": lowest R1(obs) of a scan {SCAN[0]:.0f}–{SCAN[-1]:.0f} Å")  # fmt: skip
    return Setup(data, starts, lines, scans)


def scan_thickness(simulator: FrameSimulator, observations: Observations) -> ThicknessScan:
    """A scan of one thickness for every frame over ``SCAN``, with the simulator's
    structure and the orientations as given."""
    result = score_thicknesses(simulator, observations, SCAN)
    return ThicknessScan(
        float(result.best_thickness),
        result.best_merit,
        [float(t) for t in result.thickness],
        [m.r1_obs for m in result.merit],
        [m.wr2 for m in result.merit],
    )


def _refinements(simulation: SimulationConfig, prepared: PreparedData, fixed: set[str]):
    """(function, number of checks) per setting the user did not fix; the function maps
    settings to (description, finer settings)."""
    if not {"g_max", "sg_max"} & fixed:

        def beams(sim: SimulationConfig):
            return (
                f"beams |g| ≤ {sim.g_max:g} Å⁻¹, |s_g| ≤ {sim.sg_max:g} Å⁻¹",
                sim.model_copy(update={"g_max": sim.g_max + 0.4, "sg_max": sim.sg_max * 1.5}),
            )

        yield beams, 1
    integrated = resolve_rocking(simulation, prepared.dataset) == "integrated"
    if integrated and "rocking_step" not in fixed:
        yield (
            lambda sim: (
                f"rocking step {sim.rocking_step:g}°",
                sim.model_copy(update={"rocking_step": sim.rocking_step / 2}),
            ),
            SAMPLING_CHECKS,
        )
    elif not integrated and "n_tilts" not in fixed:
        yield (
            lambda sim: (
                f"{sim.n_tilts} tilts per frame",
                sim.model_copy(update={"n_tilts": 2 * sim.n_tilts}),
            ),
            SAMPLING_CHECKS,
        )


def _change(prepared, crystal, coarse, fine, thickness, frames, cache) -> float:
    """Weighted rms relative change of the scaled intensities of the frames ``frames``
    (None: all), each the mean over thicknesses ``SPREAD`` × ``thickness``. ``cache``
    (settings → intensities) keeps each calculation for the next check: one check's finer
    settings are the next one's coarse settings."""
    dtype = prepared.dtype
    values = []
    for config in (coarse, fine):
        key = config.model_dump_json()
        if key not in cache:
            sim = prepared.simulator(crystal, prepared.plan_for(config, frames))
            t = torch.as_tensor(thickness * SPREAD, dtype=dtype, device=sim.model.device)
            t = t.expand(sim.dataset.n_frames, -1)
            with torch.no_grad():
                ic = sim.intensities(
                    sim.model.atom_tensors(), t, weights=torch.full_like(t, 1 / len(SPREAD))
                )
            cache[key] = (sim.used_rows, ic)
        values.append(cache[key])
    rows = np.intersect1d(values[0][0], values[1][0])
    if len(rows) == 0:
        return 0.0
    dataset = prepared.dataset
    refl = dataset.reflections
    frame = torch.as_tensor(dataset.frame_index()[rows], device=values[0][1].device)
    as_t = lambda x: torch.as_tensor(x, dtype=dtype, device=frame.device)  # noqa: E731
    i_obs, sigma = as_t(refl.intensity[rows]), as_t(refl.sigma[rows])
    scaled = []
    for used, ic in values:
        ic = ic[np.searchsorted(used, rows)]
        scales = optimal_scales(i_obs, sigma, ic, frame, dataset.n_frames)
        scaled.append(scales[frame] * ic)
    w = 1 / sigma**2
    return float(torch.sqrt((w * (scaled[0] - scaled[1]) ** 2).sum() / (w * scaled[1] ** 2).sum()))


def _frame_subset(n_frames: int, n: int) -> np.ndarray | None:
    """``n`` frame rows spread over the rotation (None: every frame, when there are no more
    than ``n``). Every frame stays in the plan's frame table (frames without rows cost
    nothing), so that whole rocking curves use the same grid points as with every frame."""
    if n_frames <= n:
        return None
    return np.unique(np.linspace(0, n_frames - 1, n).round().astype(int))
