"""A whole refinement as a list of stages, each handed what the previous ones made.

prepare (every data set once: structure in the data's cell, frame plan, observations) →
choose the hand (:mod:`blochnet.refinement.absolute`) → choose the settings
(:mod:`blochnet.refinement.simulation_settings`) → build the model
(:mod:`blochnet.refinement.model`) → optimise (:mod:`blochnet.refinement.engine`,
:mod:`blochnet.refinement.gauss_newton`) → standard uncertainties
(:mod:`blochnet.refinement.uncertainty`) → score the inverse → write the outputs
(:mod:`blochnet.refinement.report`).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from blochnet.crystal import Crystal
from blochnet.dataset import Dataset
from blochnet.experiment import shards
from blochnet.experiment.config import SimulationConfig
from blochnet.experiment.prepared import PreparedData, prepare
from blochnet.io import strict_json
from blochnet.io.atomic import write_text_atomically
from blochnet.io.output_folder import check_output_folder
from blochnet.refinement.absolute import (
    AbsoluteStructure,
    choose_absolute_structure,
    inverse_r_values,
)
from blochnet.refinement.config import RefineConfig
from blochnet.refinement.engine import EpochRecord, optimise_adam
from blochnet.refinement.gauss_newton import LMRecord, levenberg_marquardt
from blochnet.refinement.model import Refinement, build_refinement
from blochnet.refinement.report import count_parameters, refined_crystal, write_report
from blochnet.refinement.simulation_settings import choose_settings
from blochnet.refinement.timings import Timings
from blochnet.refinement.uncertainty import converge_structure, structure_uncertainties

Say = Callable[[str], None] | None


@dataclass
class RefinementResult:
    crystal: Crystal
    report: dict
    history: list[EpochRecord]
    out_dir: Path


@dataclass
class _Start:
    """What the refined model starts from: the hand, settings and starting thicknesses."""

    crystal: Crystal
    hand: AbsoluteStructure
    config: RefineConfig
    data: list[PreparedData]
    starts: list[float] | None
    scans: list[dict]  # thickness scans made to choose them (ThicknessScan records)
    first: SimulationConfig | None = None  # settings of the first epochs (None: the same)


def refine(
    crystal: Crystal,
    datasets: list[Dataset],
    out_dir: str | Path,
    config: RefineConfig | None = None,
    *,
    device: torch.device | str | None = None,
    resume: bool = False,
    report: Callable[[EpochRecord], None] | None = None,
    lm_report: Callable[[LMRecord], None] | None = None,
    setup_report: Say = None,
    stage_report: Say = None,
    timings: Timings | None = None,
) -> RefinementResult:
    """Refine ``crystal`` against ``datasets``; outputs go to ``out_dir``.

    Writes ``config.json`` (the resolved configuration), ``checkpoint.pt`` (every
    ``checkpoint_every`` epochs; ``resume=True`` continues from it), ``report.json``,
    ``refined.cif``, ``observations.csv``, ``thickness.csv`` and (with matplotlib)
    ``refinement.png``, each atomically. A non-centrosymmetric structure is first checked
    against its inverse (``config.absolute_structure``); with ``config.auto_setup``,
    settings the configuration leaves open are chosen from the data and saved in
    ``config.json``; each choice goes to ``setup_report``. Adam runs first (every group,
    networks included), then ``config.lm_iterations`` Levenberg–Marquardt steps on the
    physical parameters (``config.precision``: float64, float32, or float32 then float64
    for the last epochs); ``report`` and ``lm_report`` get their records, and the stages
    after them (s.u., the inverse) are announced through ``stage_report``. The wall time
    and peak memory of every stage go to ``report.json`` (``timings``: a record that
    already holds earlier stages, such as reading the files, continues it).

    Inside a ``torch.distributed`` process group of several processes, every process runs
    this with its share of the frames (:mod:`blochnet.experiment.shards`) and the same
    results; give each its own ``out_dir`` (rank 0 the real one) and a copy of what
    ``resume`` reads (as :mod:`blochnet.cli.workers` does).
    """
    timings = timings or Timings(device=str(device or "cpu"))
    config = config or RefineConfig()
    out = check_output_folder(out_dir)
    if resume and not (out / "checkpoint.pt").exists():
        warnings.warn(
            f"nothing to resume in {out} (no checkpoint.pt): starting at epoch 1", stacklevel=2
        )
    saved = _saved_start(out) if resume else None
    simulation = saved["simulation"] if saved else config.simulation
    dtype = torch.float64 if config.precision == "float64" else torch.float32
    processes = shards.current()  # several: each solves its share of the frames
    with timings.stage("prepare"):
        data = [
            prepare(crystal, ds, simulation, dtype=dtype, device=device, processes=processes)
            for ds in datasets
        ]
    if saved:
        start = _resumed(data, config, saved)
    else:
        start = _chosen(data, config, setup_report, timings)
    del data  # the plans of settings tried and not taken go with it
    _write_start(out / "config.json", start)
    with timings.stage("build"):
        model = build_refinement(
            start.data, start.config, crystal=start.crystal, starts=start.starts
        )
        shards.same_everywhere(model)
    with timings.stage("epochs"):
        model, history = _optimise(model, start, out, resume, report, lm_report)
    for part in ("forward", "backward"):  # (nan for epochs of a run resumed from an old version)
        timings.add(f"epochs: {part}", float(np.nansum([getattr(h, f"{part}_s") for h in history])))
    with timings.stage("s.u."):
        su = _uncertainties(model, start.config, stage_report)
    refined = refined_crystal(model.structure, su)
    with timings.stage("inverse"):
        absolute = _absolute_record(model, refined, start, stage_report)
    with timings.stage("outputs"):
        written = write_report(
            model, refined, history, start.config, out,
            wall_time=time.perf_counter() - timings.started, su=su, absolute_structure=absolute,
            thickness_scan=start.scans,
        )  # fmt: skip
    written = _record_timings(out / "report.json", written, timings)
    return RefinementResult(refined, written, history, out)


def _chosen(data: list[PreparedData], config: RefineConfig, say: Say, timings: Timings) -> _Start:
    """Stages before the model: the hand, then (``config.auto_setup``) the settings."""
    with timings.stage("hand"):
        crystal, hand = choose_absolute_structure(data[0].crystal, data, config.absolute_structure)
    _say(say, hand.describe())
    starts, scans = None, list(hand.scans or [])
    if config.auto_setup:
        with timings.stage("settings"):
            setup = choose_settings(
                data,
                crystal,
                t0=config.thickness.t0,
                fixed=set(config.simulation.model_fields_set),
                scanned=hand.scan_thickness,
            )
        for line in setup.lines:
            _say(say, line)
        data, starts, scans = setup.data, setup.t0, scans + setup.scans
        first = _first_settings(config.simulation, setup.simulation)
        config = config.model_copy(update={"simulation": setup.simulation})
        return _Start(crystal, hand, config, data, starts, scans, first)
    return _Start(crystal, hand, config, data, starts, scans)


def _first_settings(given: SimulationConfig, chosen: SimulationConfig) -> SimulationConfig | None:
    """The settings of the first epochs when the set-up refined the beam set: the chosen
    ones with the beams it started from (the rows compared stay the same), else None."""
    beams = {"g_max": given.g_max, "sg_max": given.sg_max}
    if beams == {"g_max": chosen.g_max, "sg_max": chosen.sg_max}:
        return None
    return chosen.model_copy(update=beams)


def _saved_start(out: Path) -> dict | None:
    """The settings, starting thicknesses and hand a run in ``out`` started with (None
    when it has not written them yet)."""
    resolved = out / "config.json"
    if not resolved.exists():
        return None
    saved = json.loads(resolved.read_text(encoding="utf-8"))
    return {
        "simulation": SimulationConfig.model_validate(saved["simulation"]),
        "starts": saved.get("starting_thickness"),
        "scans": saved.get("thickness_scan") or [],
        "hand": AbsoluteStructure.from_dict(
            saved.get("absolute_structure", {"mode": "given", "inverted": False})
        ),
        "first": None
        if saved.get("first_epochs_simulation") is None
        else SimulationConfig.model_validate(saved["first_epochs_simulation"]),
    }


def _resumed(data: list[PreparedData], config: RefineConfig, saved: dict) -> _Start:
    """The start of the run being resumed (its settings, hand and starting thicknesses)."""
    hand = saved["hand"]
    crystal = data[0].crystal.inverted() if hand.inverted else data[0].crystal
    config = config.model_copy(update={"simulation": saved["simulation"]})
    return _Start(crystal, hand, config, data, saved["starts"], saved["scans"], saved["first"])


def _write_start(path: Path, start: _Start) -> None:
    record = json.loads(start.config.model_dump_json()) | {
        "starting_thickness": start.starts,
        "absolute_structure": start.hand.to_dict(),
        "thickness_scan": start.scans,
        "first_epochs_simulation": None
        if start.first is None
        else json.loads(start.first.model_dump_json()),
    }
    write_text_atomically(path, strict_json.dumps(record, indent=1) + "\n")


def _optimise(
    model: Refinement, start: _Start, out: Path, resume: bool, report, lm_report
) -> tuple[Refinement, list[EpochRecord]]:
    """Adam (or L-BFGS) over every group, then Levenberg–Marquardt when configured.

    The epochs run in two phases where the configuration asks for a cheaper start: with
    mixed precision the first ones in float32, and when the set-up refined the beam set
    the first ones with the beams it started from (``start.first``); the last
    ``final_float64_epochs`` / ``final_converged_epochs`` (the larger where both apply) and
    every stage after them run on a float64 model at the chosen settings, which is returned
    (``start.data`` then holds that data)."""
    config = start.config
    checkpoint = out / "checkpoint.pt"
    mixed = config.precision == "mixed"
    final = max(
        config.final_float64_epochs if mixed else 0,
        config.final_converged_epochs if start.first is not None else 0,
    )
    first = max(config.epochs - final, 0)
    if not (mixed or start.first is not None) or not first:
        history = _adam(model, config, checkpoint, resume, report, epochs=config.epochs)
    else:
        history = []
        if not (resume and _epochs_done(checkpoint) >= first):
            early = model
            if start.first is not None:
                early = build_refinement(
                    [d.with_settings(start.first) for d in start.data], config,
                    crystal=start.crystal, starts=start.starts,
                )  # fmt: skip
            history = _adam(early, config, checkpoint, resume, report, epochs=first)
            model.load_state_dict(early.state_dict())
            del early
            if start.first is not None:  # the first epochs' plans are not needed again
                for d in start.data:
                    d.drop_plan(start.first)
        if model.structure.model.dtype != torch.float64:
            start.data = [d.with_dtype(torch.float64) for d in start.data]
            final_model = build_refinement(
                start.data, config, crystal=start.crystal, starts=start.starts
            )
            final_model.load_state_dict(model.state_dict())  # float32 values, cast
            model = final_model
        resume = resume or bool(history)
        # every one of the final epochs runs (no stop on the first epochs' convergence)
        history = _adam(
            model, config, checkpoint, resume, report, epochs=first + final, tolerance=0.0
        )
    if config.lm_iterations:
        levenberg_marquardt(model, iterations=config.lm_iterations, report=lm_report)
    return model, history


def _adam(
    model: Refinement, config: RefineConfig, checkpoint: Path, resume, report, *, epochs,
    tolerance: float = 1e-5,
):  # fmt: skip
    sum_w_io2 = sum(float(((o.i_obs / o.weight_sigma) ** 2)[o.fit].sum()) for o in model.objectives)

    def second_order(epoch: int, loss: float) -> None:
        if config.structure_steps == "gauss-newton" and epoch >= config.gauss_newton_after:
            model.gauss_newton_step(loss, damping=config.gauss_newton_damping)

    # the epochs' gradients only steer the optimisers: their eigenvectors may be kept in
    # single precision (reverse-mode Jacobians are taken in full)
    with model.eigenvectors_kept(config.kept_eigenvectors):
        return optimise_adam(
            model, epochs=epochs, learning_rates=config.learning_rates.model_dump(),
            sum_w_io2=sum_w_io2, checkpoint=checkpoint,
            checkpoint_every=config.checkpoint_every, resume=resume, after_step=model.after_step,
            report=report, merit=model.last_r_values, method=config.optimiser,
            lr_final=config.lr_final, tolerance=tolerance, second_order=second_order,
        )  # fmt: skip


def _epochs_done(checkpoint: Path) -> int:
    """Epochs recorded in ``checkpoint`` (0 without one)."""
    if not checkpoint.exists():
        return 0
    return len(torch.load(checkpoint, weights_only=False).get("history", []))


def _uncertainties(model: Refinement, config: RefineConfig, say: Say) -> dict | None:
    """s.u. of the refined structure parameters (None when none is refined), after
    Gauss–Newton steps until the convergence test holds (``config.convergence``)."""
    free = [p for p in model.structure.shifts() if p.requires_grad]
    if not any(p.numel() for p in free):
        return None
    _say(say, f"standard uncertainties: Jacobian of {sum(p.numel() for p in free)} structure "
              "parameters")  # fmt: skip
    tick = time.perf_counter()
    n = count_parameters(model)
    if config.convergence > 0:
        su, record = converge_structure(
            model, n_parameters=n, limit=config.convergence,
            max_steps=config.convergence_steps, say=say, kept=model.kept_matrix,
            eigenvectors=config.kept_eigenvectors,
        )  # fmt: skip
        su["convergence"] = record
    else:
        su = structure_uncertainties(model, n_parameters=n)
    _say(say, f"standard uncertainties done ({time.perf_counter() - tick:.0f} s)")
    return su


def _absolute_record(model: Refinement, refined: Crystal, start: _Start, say: Say) -> dict:
    """The hand's record, with the R values of the refined structure inverted where the
    structure is not centrosymmetric."""
    absolute = start.hand.to_dict()
    if not refined.is_centrosymmetric:
        _say(say, "absolute structure: scoring the refined structure inverted")
        absolute["inverse_of_refined"] = inverse_r_values(model, refined, start.data, start.config)
    return absolute


def _record_timings(path: Path, report: dict, timings: Timings) -> dict:
    """``report`` with the timings of every stage (the outputs' included), written again."""
    recorded = timings.to_dict()
    peaks = shards.gather_objects(recorded["peak_memory_gb"])
    if len(peaks) > 1:
        recorded["processes"] = {"count": len(peaks), "peak_memory_gb": peaks}
    report = report | {"timings": recorded, "wall_time_s": recorded["wall_time_s"]}
    write_text_atomically(path, strict_json.dumps(report, indent=1) + "\n")
    return report


def _say(say: Say, line: str) -> None:
    if say is not None:
        say(line)
