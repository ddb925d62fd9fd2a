"""A whole refinement: configuration, model assembly, optimisation, outputs.

The refined model is the structure (shared by every data set) plus, per data set, a
thickness model and per-frame orientation corrections; the loss is the sum of the data
sets' weighted least-squares objectives (:mod:`blochnet.refine.objective`).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from blochnet.crystal import Crystal
from blochnet.experiment.config import SimulationConfig
from blochnet.experiment.dataset import Dataset
from blochnet.experiment.evaluate import structure_in_data_cell
from blochnet.experiment.frames import FrameSimulator
from blochnet.experiment.geometry import beam_directions
from blochnet.io.atomic import write_text_atomically
from blochnet.io.output_folder import check_output_folder
from blochnet.refine.absolute import (
    AbsoluteStructure,
    AbsoluteStructureMode,
    choose_absolute_structure,
    inverse_r_values,
)
from blochnet.refine.engine import EpochRecord, optimise_adam
from blochnet.refine.gauss_newton import LMRecord, levenberg_marquardt
from blochnet.refine.objective import Objective, joint_figures_of_merit
from blochnet.refine.orientation import OrientationConfig
from blochnet.refine.parameters import StructureParameters, atom_selection
from blochnet.refine.report import count_parameters, refined_crystal, write_report
from blochnet.refine.setup import choose_settings
from blochnet.refine.thickness import ThicknessConfig
from blochnet.refine.uncertainty import structure_uncertainties
from blochnet.runtime import keep_freed_memory


class LearningRates(BaseModel):
    """Adam learning rates per parameter group (0 fixes the group)."""

    model_config = ConfigDict(extra="forbid")

    xyz: float = Field(5e-4, ge=0, description="free coordinates [fractional]")
    adp: float = Field(3e-4, ge=0, description="Uiso / free Uij [Å²]")
    occupancy: float = Field(0.0, ge=0)
    charge: float = Field(3e-2, ge=0, description="partial charges [e]")
    absorption: float = Field(1e-3, ge=0, description="κ (when refine_absorption)")
    orientation: float = Field(3e-4, ge=0, description="frame rotation vectors [rad]")
    orientation_network: float = Field(
        3e-3, ge=0, description="weights of a learned orientation drift ([orientation] neural)"
    )
    thickness: float = Field(3e-3, ge=0, description="thickness-model parameters")


class RefineConfig(BaseModel):
    """Everything that changes the result of a refinement (saved with it)."""

    model_config = ConfigDict(extra="forbid")

    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    thickness: ThicknessConfig = Field(default_factory=ThicknessConfig)
    orientation: OrientationConfig = Field(default_factory=OrientationConfig)
    learning_rates: LearningRates = Field(default_factory=LearningRates)
    epochs: int = Field(80, ge=1)
    optimiser: Literal["adam", "lbfgs"] = Field(
        "adam",
        description="first stage: Adam with per-group learning rates, or L-BFGS (one "
        "line-searched step per epoch over the groups with a learning rate > 0)",
    )
    lr_final: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Adam: the learning rates decay along a cosine to this fraction of "
        "themselves at the last epoch (1: constant)",
    )
    lm_iterations: int = Field(
        0,
        ge=0,
        description=(
            "Levenberg–Marquardt iterations on the physical parameters after Adam (each "
            "builds a Jacobian: one backward pass per structure parameter and per colour "
            "and component of the per-frame ones)"
        ),
    )
    refine_xyz: str = "all"
    refine_adp: str = "all"
    refine_occupancy: str = "none"
    refine_charge: str = Field(
        "all",
        description=(
            "atoms whose partial charge is refined (the last one selected keeps the cell "
            "neutral; 'all' on a structure of one atom refines none); 'none': neutral "
            "atoms, or the charges the structure file gives"
        ),
    )
    refine_orientation: bool = True
    refine_absorption: bool = Field(
        False, description="refine κ, starting from simulation.absorption (0.05 when that is 0)"
    )
    holdout_fraction: float = Field(0.0, ge=0, lt=0.9, description="frames held out")
    instability: float = Field(
        0.0, ge=0, le=1, description="u of the weights w = 1/(σ² + (u·Io)²) of the objective"
    )
    robust: float = Field(
        2.385,
        ge=0,
        description=(
            "b of the robust (Cauchy) loss, c = b × the robust scale of the weighted "
            "residuals (see blochnet.refine.objective); 0: plain weighted least squares"
        ),
    )
    absolute_structure: AbsoluteStructureMode = Field(
        "check",
        description=(
            "non-centrosymmetric structures: 'check' scans the thickness with the structure "
            "as given and inverted and refines the hand with the lower R1(obs); 'given' or "
            "'inverted' refine that hand"
        ),
    )
    auto_setup: bool = Field(
        True,
        description=(
            "choose the starting thickness (scan) and check the beam set and rocking "
            "sampling for convergence, for what the configuration does not set"
        ),
    )
    checkpoint_every: int = Field(5, ge=1)
    seed: int = 0
    plot: bool = Field(
        True,
        description="draw refinement.png (thickness distributions, per-frame R and scale, "
        "Io against Ic, convergence) when matplotlib is installed (the plot extra)",
    )


class Refinement(nn.Module):
    """The structure and one objective per data set."""

    def __init__(self, structure: StructureParameters, objectives: list[Objective]) -> None:
        super().__init__()
        self.structure = structure
        self.objectives = nn.ModuleList(objectives)

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


@dataclass
class RefinementResult:
    crystal: Crystal
    report: dict
    history: list[EpochRecord]
    out_dir: Path


def build_refinement(
    crystal: Crystal,
    datasets: list[Dataset],
    config: RefineConfig,
    *,
    dtype=torch.float64,
    device=None,
    starts: list[float] | None = None,
) -> Refinement:
    """Simulators, structure parameters, thickness models and objectives.

    ``starts``: starting thickness of each data set [Å] where ``config.thickness.t0`` is
    not set (default 600 Å).
    """
    crystal = structure_in_data_cell(crystal, datasets[0])
    simulators = [
        FrameSimulator(
            structure_in_data_cell(crystal, ds), ds, config.simulation, dtype=dtype, device=device
        )
        for ds in datasets
    ]
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
    for n, sim in enumerate(simulators):
        ds = sim.dataset
        t0 = config.thickness.t0 or (starts[n] if starts else 600.0)
        directions = beam_directions(ds)  # network inputs when the configuration asks
        thickness = config.thickness.build(ds.frames.alpha, t0=t0, directions=directions)
        thickness = thickness.to(dtype=dtype, device=device)
        holdout = None
        if config.holdout_fraction > 0:
            n_out = max(1, round(config.holdout_fraction * ds.n_frames))
            out_frames = rng.choice(ds.n_frames, n_out, replace=False)
            holdout = np.isin(sim.frame_of_used, out_frames)
        objectives.append(
            Objective(
                sim,
                structure,
                thickness,
                holdout=holdout,
                refine_orientation=config.refine_orientation,
                orientation=config.orientation.build(
                    ds.frames.alpha, directions=directions, dtype=dtype
                ),
                instability=config.instability,
                robust=config.robust,
            )
        )
    return Refinement(structure, objectives)


def refine(
    crystal: Crystal,
    datasets: list[Dataset],
    out_dir: str | Path,
    config: RefineConfig | None = None,
    *,
    dtype=torch.float64,
    device=None,
    resume: bool = False,
    report: Callable[[EpochRecord], None] | None = None,
    lm_report: Callable[[LMRecord], None] | None = None,
    setup_report: Callable[[str], None] | None = None,
    stage_report: Callable[[str], None] | None = None,
) -> RefinementResult:
    """Refine ``crystal`` against ``datasets``; outputs go to ``out_dir``.

    Writes ``config.json`` (the resolved configuration), ``checkpoint.pt`` (every
    ``checkpoint_every`` epochs; ``resume=True`` continues from it), ``report.json``,
    ``refined.cif``, ``observations.csv``, ``thickness.csv`` and (with matplotlib)
    ``refinement.png``, each atomically. With ``config.auto_setup``,
    settings the configuration leaves open are first chosen from the data
    (:mod:`blochnet.refine.setup`; each choice is passed to ``setup_report``) and saved in
    ``config.json``; the stages after the epochs (the s.u.) are announced through
    ``stage_report``. A non-centrosymmetric structure is first checked against its inverse
    (``config.absolute_structure``, :mod:`blochnet.refine.absolute`; the choice also goes
    to ``setup_report``), and the refined model is scored inverted at the end. Adam runs
    first (every group, networks included), then ``config.lm_iterations``
    Levenberg–Marquardt steps on the physical parameters (structure, orientations,
    per-frame thickness).
    """
    start = time.perf_counter()
    keep_freed_memory()
    config = config or RefineConfig()
    out = check_output_folder(out_dir)
    starts = None
    resolved = out / "config.json"
    if resume and not (out / "checkpoint.pt").exists():
        warnings.warn(
            f"nothing to resume in {out} (no checkpoint.pt): starting at epoch 1", stacklevel=2
        )
    if resume and resolved.exists():  # the settings chosen when the run started
        saved = json.loads(resolved.read_text(encoding="utf-8"))
        config = config.model_copy(
            update={"simulation": SimulationConfig.model_validate(saved["simulation"])}
        )
        starts = saved.get("starting_thickness")
        hand = AbsoluteStructure.from_dict(
            saved.get("absolute_structure", {"mode": "given", "inverted": False})
        )
        crystal = crystal.inverted() if hand.inverted else crystal
    else:
        crystal, hand = choose_absolute_structure(
            crystal, datasets, config.simulation, config.absolute_structure,
            dtype=dtype, device=device,
        )  # fmt: skip
        if setup_report is not None:
            setup_report(hand.describe())
        if config.auto_setup:
            setup = choose_settings(
                crystal,
                datasets,
                config.simulation,
                t0=config.thickness.t0,
                fixed=set(config.simulation.model_fields_set),
                scanned=hand.scan_thickness,
                dtype=dtype,
                device=device,
            )
            config = config.model_copy(update={"simulation": setup.simulation})
            starts = setup.t0
            for line in setup.lines:
                if setup_report is not None:
                    setup_report(line)
    record = json.loads(config.model_dump_json()) | {
        "starting_thickness": starts,
        "absolute_structure": hand.to_dict(),
    }
    write_text_atomically(resolved, json.dumps(record, indent=1) + "\n")
    model = build_refinement(crystal, datasets, config, dtype=dtype, device=device, starts=starts)
    sum_w_io2 = sum(float(((o.i_obs / o.weight_sigma) ** 2)[o.fit].sum()) for o in model.objectives)
    rates = config.learning_rates.model_dump()
    history = optimise_adam(
        model, epochs=config.epochs, learning_rates=rates, sum_w_io2=sum_w_io2,
        checkpoint=out / "checkpoint.pt", checkpoint_every=config.checkpoint_every,
        resume=resume, after_step=model.after_step, report=report,
        merit=model.last_r_values, method=config.optimiser, lr_final=config.lr_final,
    )  # fmt: skip
    if config.lm_iterations:
        levenberg_marquardt(model, iterations=config.lm_iterations, report=lm_report)
    su = None
    if any(p.requires_grad and p.numel() for p in model.structure.parameters()):
        if stage_report is not None:
            n_su = sum(p.numel() for p in model.structure.shifts() if p.requires_grad)
            stage_report(f"standard uncertainties: Jacobian of {n_su} structure parameters")
        tick = time.perf_counter()
        su = structure_uncertainties(model, n_parameters=count_parameters(model))
        if stage_report is not None:
            stage_report(f"standard uncertainties done ({time.perf_counter() - tick:.0f} s)")
    refined = refined_crystal(model.structure, su)
    absolute = hand.to_dict()
    if not crystal.is_centrosymmetric:
        if stage_report is not None:
            stage_report("absolute structure: scoring the refined structure inverted")
        inverse = inverse_r_values(model, refined, datasets, config, dtype=dtype, device=device)
        absolute["inverse_of_refined"] = inverse
    result = write_report(
        model, refined, history, config, out, wall_time=time.perf_counter() - start, su=su,
        absolute_structure=absolute,
    )  # fmt: skip
    return RefinementResult(refined, result, history, out)
