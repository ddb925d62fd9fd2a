"""Synthetic recovery: refine displaced structures against simulated data with a known truth.

For each structure (α-quartz, CsPbBr3, paracetamol from ``tests/data/structures``) a
continuous-rotation data set is simulated with
:func:`blochnet.experiment.synthetic.simulate_experiment` (what ``blochnet simulate``
calls): 1° frames over a 30° rotation, every frame recording its own rows (``frame``
rocking mode, ``n_tilts`` orientations across the frame), a wedge-like thickness
distribution whose mean grows linearly by 40 % over the rotation with a uniform spread of
15 % (relative standard deviation) within each frame, and counting noise with frame-scale
jitter. The true structure is the file's, made isotropic (Uiso = Ueq of the file) and
with special positions symmetrised. The refinement starts from every atom moved by
0.1 Å in a random direction within its site's free coordinates (a random Cartesian
direction projected onto the subspace the site symmetry allows, rescaled to 0.1 Å; atoms
without free coordinates stay) and every Uiso set to 0.02 Å², and from a single
thickness taken from an R1(obs) scan of the starting structure. It refines all free
coordinates, all Uiso, the thickness model and the frame scales (in closed form); frame
orientations are exact in synthetic data and are not refined. The simulation settings of
the refinement are those of the data (beam set, tilts per frame), so the only model
error is the thickness model's. The paracetamol file has no hydrogen atoms; every atom of
every structure is refined and scored. Optimisation: Adam on every parameter (the
thickness network included), Levenberg–Marquardt on the physical parameters (structure;
a global or per-frame thickness), Adam again with halving learning rates, and a last
Levenberg–Marquardt polish.

First table, one row per structure:

atoms
    atoms in the asymmetric unit.
frames, obs
    frames, and observations compared (rows passing the selection rule).
RMS Δxyz [Å]
    root-mean-square Cartesian distance between refined and true positions over the
    atoms with at least one free coordinate, at the start → after refinement.
    Target ≤ 0.005 Å.
max |ΔUiso| [Å²]
    largest |Uiso(refined) − Uiso(true)| over all atoms, start → end. Target ≤ 0.002 Å².
max |Δt|/t
    largest relative error of the per-frame mean thickness of the refined neural
    distribution against the true per-frame mean. Target ≤ 3 %.
wR2 refined / true
    wR2 over all observations of the refined model, and of the true model (true
    structure, true per-frame thickness samples and weights, frame scales optimal)
    evaluated on the same data; their ratio. Target ratio ≤ 1.10.
time [s]
    wall time of the refinement (simulation and scan excluded).

The recovery refines the neural model with the distribution family of ``--shape``:
``flexible`` (default; a per-frame blend of a Gaussian and a uniform distribution) or
``gaussian`` (the paper's). Below the table, for each structure, the wR2 of the true model
with each frame's distribution replaced by a Gaussian of the same mean and width (what
the Gaussian family can at best approach when the true distribution is a uniform wedge),
and by a uniform distribution at the model's ``n_samples`` nodes (the flexible family's
flat end).

Second table, thickness models compared on held-out frames. Every fifth frame (the
first and last frames excluded, so that no held-out frame lies outside the fitted
range) is removed from the fit; each model is refined from the same displaced start with
the same schedule on the other frames. The held-out frames are then predicted with the
refined structure and the model's thickness for them, and scored with one scale per
held-out frame fitted on that frame's own rows (a frame's scale is an unknown of every
frame, so it is the one quantity the held-out data set; nothing else is fitted to it):

global
    one thickness for all frames; held-out frames use it.
frame
    one thickness per frame. The held-out frames' thicknesses are never fitted; they are
    predicted by linear interpolation of log t in the rotation angle between the fitted
    neighbours, the best a per-frame model can do (``frame (t0)`` shows them left at
    the starting thickness instead, what the model itself would predict).
neural
    the per-frame Gaussian distribution predicted by a small network from the rotation
    angle (Malik et al., Nat. Commun. 2026, arXiv:2508.05908); held-out frames are its
    prediction at their angle.
neural flexible
    the same network with a third output, the per-frame blend between a Gaussian and a
    uniform distribution of the same mean and width.
neural-grid
    a distribution on a fixed thickness grid predicted by a network.
true
    reference: true structure and true thickness distribution, scored the same way.

Columns: R1(obs) [%] (pooled, Io > 3σ) and wR2 [%] on the fitted frames (scales fitted
on them) and on the held-out frames, and the wall time of each refinement. The neural
model should beat both single-thickness models on the held-out frames, because each
frame's data sample a 15 % spread of thicknesses that one thickness cannot describe, and
(against ``global``) because the mean varies over the rotation.

Usage::

    python benchmarks/synthetic_recovery.py [--structures quartz cspbbr3 paracetamol]
        [--compare quartz cspbbr3] [--quick] [--threads 1] [--device cpu|cuda] [--seed 0]
        [--shape flexible|gaussian]

``--compare`` names the structures of the second table (default: the selected ones but
paracetamol, the costliest; none skips it). ``--quick`` runs smaller problems (16 frames
of 2°) with fewer iterations, the variant the tests use; its results show the trend, not
the targets. The exit status is 1 when a recovery target is missed.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from blochnet.crystal import Crystal
from blochnet.dataset import Dataset
from blochnet.examples import example_path
from blochnet.experiment.config import SelectionRule, SimulationConfig
from blochnet.experiment.evaluate import score_thicknesses
from blochnet.experiment.merit import figures_of_merit, optimal_scales
from blochnet.experiment.prepared import PreparedData, prepare
from blochnet.experiment.specimen import WedgeThickness
from blochnet.experiment.synthetic import GeneratedGeometry, NoiseModel, simulate_experiment
from blochnet.io.cif import read_structure
from blochnet.lattice import direct_matrix
from blochnet.refinement.absolute import choose_absolute_structure
from blochnet.refinement.config import LearningRates, RefineConfig
from blochnet.refinement.engine import optimise_adam
from blochnet.refinement.gauss_newton import levenberg_marquardt
from blochnet.refinement.model import build_refinement
from blochnet.refinement.report import refined_crystal
from blochnet.refinement.thickness import ThicknessConfig
from blochnet.sitesym import site_constraints

DISPLACEMENT = 0.1  # [Å] starting displacement of every atom with free coordinates
START_UISO = 0.02  # [Å²] starting Uiso of every atom
SCAN = np.arange(200.0, 1001.0, 50.0)  # [Å] starting-thickness scan
TARGETS = {"xyz": 0.005, "uiso": 0.002, "thickness": 0.03, "wr2": 1.10}
# held-out comparison: label → (thickness kind, shape of the neural distribution)
KINDS = {
    "global": ("global", "gaussian"),
    "frame": ("frame", "gaussian"),
    "neural": ("neural", "gaussian"),
    "neural flexible": ("neural", "flexible"),
    "neural-grid": ("neural-grid", "gaussian"),
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One synthetic experiment and the refinement schedule used on it.

    rotation : (start, end, step) of α [deg]. resolution : largest |g| of a row [Å⁻¹].
    g_max, sg_max : beam set of the Bloch matrix [Å⁻¹]. thickness : (first, last) mean
    thickness of the wedge [Å]. dose : counts per incident beam. schedule : (Adam epochs,
    LM iterations, Adam epochs, LM iterations).
    """

    name: str
    rotation: tuple[float, float, float] = (-15.0, 15.0, 1.0)
    resolution: float = 1.2
    g_max: float = 1.5
    sg_max: float = 0.025
    n_tilts: int = 3
    thickness: tuple[float, float] = (400.0, 560.0)
    spread: float = 0.15
    wedge_samples: int = 9
    dose: float = 3e6
    background: float = 2.0
    scale_jitter: float = 0.1
    n_samples: int = 24  # thickness samples per frame of the neural model
    schedule: tuple[int, int, int, int] = (60, 2, 40, 2)

    def simulation(self) -> SimulationConfig:
        return SimulationConfig(
            g_max=self.g_max,
            sg_max=self.sg_max,
            n_tilts=self.n_tilts,
            rocking="frame",
            selection=SelectionRule(g_max=self.resolution, rsg_max=1.0),
        )


CASES = {
    "quartz": Case("quartz", resolution=1.4, g_max=1.8, sg_max=0.03, schedule=(200, 2, 100, 2)),
    "cspbbr3": Case("cspbbr3", resolution=1.0, g_max=1.2, sg_max=0.02, schedule=(200, 2, 200, 2)),
    "paracetamol": Case(
        "paracetamol", resolution=1.0, g_max=1.2, sg_max=0.015, schedule=(40, 2, 20, 1)
    ),
}
QUICK = {
    "rotation": (-15.0, 15.0, 2.0),
    "schedule": (30, 2, 10, 1),
    "n_samples": 12,
}


# --- structures ------------------------------------------------------------------------


def structure_path(name: str) -> Path:
    """``<name>.cif``: the package's quartz example, or ``tests/data/structures`` of this
    repository (sources and licences in its README)."""
    if name == "quartz":
        return example_path("quartz")
    path = Path(__file__).resolve().parents[1] / "tests" / "data" / "structures" / f"{name}.cif"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run from a checkout of the repository")
    return path


def true_structure(path: str | Path) -> Crystal:
    """The file's structure, isotropic (Uiso = Ueq), special positions symmetrised."""
    crystal = read_structure(path)
    for atom, site in zip(crystal.atoms, site_constraints(crystal), strict=True):
        atom.uij = None
        atom.xyz = site.xyz0 + site.xyz_basis @ site.free_xyz(atom.xyz)
    return crystal


def displaced(crystal: Crystal, rng: np.random.Generator) -> Crystal:
    """Every atom with free coordinates moved by DISPLACEMENT [Å] within them; Uiso = START_UISO.

    A random Cartesian direction is projected onto the displacements the site symmetry
    allows and the result rescaled to DISPLACEMENT, so every site keeps its symmetry.
    """
    moved = copy.deepcopy(crystal)
    a_matrix = direct_matrix(crystal.cell)
    for atom, site in zip(moved.atoms, site_constraints(crystal), strict=True):
        atom.uiso = START_UISO
        basis = a_matrix @ site.xyz_basis  # (3, n_free) Cartesian directions of the free shifts
        if basis.shape[1] == 0:
            continue
        direction = rng.standard_normal(3)
        shift = np.linalg.lstsq(basis, direction, rcond=None)[0]
        if np.linalg.norm(basis @ shift) < 1e-6 * np.linalg.norm(direction):
            shift = np.ones(basis.shape[1])
        shift *= DISPLACEMENT / np.linalg.norm(basis @ shift)
        atom.xyz = atom.xyz + site.xyz_basis @ shift
    before = [s.order for s in site_constraints(crystal)]
    after = [s.order for s in site_constraints(moved)]
    if before != after:
        raise RuntimeError(f"displacement changed site symmetry orders {before} -> {after}")
    return moved


def movable(crystal: Crystal) -> np.ndarray:
    """(atom,) bool: atoms with at least one free coordinate."""
    return np.array([s.xyz_basis.shape[1] > 0 for s in site_constraints(crystal)])


def structure_errors(crystal: Crystal, truth: Crystal) -> tuple[float, float]:
    """RMS Cartesian position error over movable atoms [Å] and max |ΔUiso| [Å²]."""
    a_matrix = direct_matrix(truth.cell)
    dx = np.array([a.xyz - b.xyz for a, b in zip(crystal.atoms, truth.atoms, strict=True)])
    dx -= np.round(dx)
    distance = np.linalg.norm(dx @ a_matrix.T, axis=1)[movable(truth)]
    du = [a.uiso - b.uiso for a, b in zip(crystal.atoms, truth.atoms, strict=True)]
    return float(np.sqrt(np.mean(distance**2))), float(np.max(np.abs(du)))


# --- data --------------------------------------------------------------------------------


def synthetic_data(case: Case, truth: Crystal, *, seed: int, device=None) -> tuple[Dataset, dict]:
    """The simulated data set of ``case`` and its ground truth."""
    return simulate_experiment(
        truth,
        generated=GeneratedGeometry(
            voltage=200.0, rotation=case.rotation, resolution=case.resolution
        ),
        thickness=WedgeThickness(
            mean_start=case.thickness[0],
            mean_end=case.thickness[1],
            spread=case.spread,
            samples=case.wedge_samples,
        ),
        noise=NoiseModel(
            dose=case.dose, background=case.background, scale_jitter=case.scale_jitter
        ),
        config=case.simulation(),
        seed=seed,
        device=device,
    )


class TrueThickness(nn.Module):
    """The true per-frame thickness samples [Å] and weights, fixed (a thickness model)."""

    def __init__(self, truth: dict, dtype=torch.float64, device=None) -> None:
        super().__init__()
        frames = truth["frames"]
        as_t = lambda x: torch.as_tensor(np.array(x), dtype=dtype, device=device)  # noqa: E731
        self.register_buffer("samples", as_t(frames["thickness_samples"]))
        self.register_buffer("weights", as_t(frames["thickness_weights"]))

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.samples, self.weights

    def as_family(self, shape: str, n: int) -> None:
        """Replace each frame's distribution by a Gaussian (``n``-point quadrature over ±4σ)
        or a uniform distribution (``n`` midpoints) of the same mean and standard deviation:
        the two ends of the neural model's families."""
        mean = (self.weights * self.samples).sum(1, keepdim=True)
        std = ((self.weights * (self.samples - mean) ** 2).sum(1, keepdim=True)).sqrt()
        if shape == "gaussian":
            x = torch.linspace(-4, 4, n, dtype=mean.dtype, device=mean.device)
            w = torch.exp(-0.5 * x**2)
        else:
            x = (torch.arange(n, dtype=mean.dtype, device=mean.device) + 0.5) / n - 0.5
            w = torch.ones_like(x)
        w = w / w.sum()
        x = x / torch.sqrt((w * x**2).sum())
        self.samples = mean + std * x
        self.weights = w.expand_as(self.samples).clone()


# --- refinement --------------------------------------------------------------------------


def refine_config(
    case: Case, kind: str, t0: float, *, seed: int, shape: str = "gaussian"
) -> RefineConfig:
    """Structure + thickness model ``kind``; orientations fixed; the data's simulation.

    The objective is plain weighted least squares (``robust=0``): simulated data carry
    Poisson noise and no outliers, so least squares is the efficient estimator, and it is
    the objective wR2 measures. (The robust loss of the defaults, meant for real data, ends
    at 1.16× / 1.11× the true wR2 on quartz / CsPbBr3 here.) Partial charges, refined by
    default, stay fixed at zero: the task is the one of the acceptance (coordinates, Uiso,
    thickness), and the simulated atoms are neutral.
    """
    network = kind in ("neural", "neural-grid")
    return RefineConfig(
        simulation=case.simulation(),
        thickness=ThicknessConfig(
            kind=kind,
            t0=t0,
            seed=seed,
            **({"n_samples": case.n_samples, "shape": shape} if kind == "neural" else {}),
        ),
        learning_rates=LearningRates(
            xyz=5e-4, adp=3e-4, orientation=0.0, thickness=3e-3 if network else 1e-2
        ),
        epochs=case.schedule[0],
        refine_orientation=False,
        refine_charge="none",
        robust=0.0,
        auto_setup=False,
        seed=seed,
    )


def build(data: PreparedData, config, *, crystal=None, fit_frames=None):
    """The library's refinement model of ``crystal`` (default: the prepared one) on the
    prepared data; ``fit_frames`` (frame,) bool keeps other frames out."""
    model = build_refinement([data], config, crystal=crystal)
    if fit_frames is not None:
        objective = model.objectives[0]
        fit = np.asarray(fit_frames)[objective.simulator.frame_of_used]
        objective.fit.copy_(torch.as_tensor(fit, device=objective.fit.device))
    return model


def optimise(model, config: RefineConfig, schedule, *, chunks: int = 4) -> None:
    """Adam, LM, Adam, LM with the numbers of steps of ``schedule``.

    The first Adam phase runs at the configured rates; the second in ``chunks`` pieces
    whose rates halve from one to the next (a fresh Adam each), which settles the
    thickness network instead of leaving it oscillating at a constant rate.
    """
    rates = config.learning_rates.model_dump()
    sum_w_io2 = sum(float(((o.i_obs / o.sigma) ** 2)[o.fit].sum()) for o in model.objectives)

    def adam(epochs: int, factor: float) -> None:
        optimise_adam(
            model,
            epochs=epochs,
            learning_rates={k: v * factor for k, v in rates.items()},
            sum_w_io2=sum_w_io2,
            tolerance=0.0,
            after_step=model.after_step,
        )

    adam_1, lm_1, adam_2, lm_2 = schedule
    if adam_1:
        adam(adam_1, 1.0)
    if lm_1:
        levenberg_marquardt(model, iterations=lm_1)
    pieces = [len(c) for c in np.array_split(np.arange(adam_2), chunks) if len(c)]
    for n, epochs in enumerate(pieces):
        adam(epochs, 0.5**n)
    if lm_2:
        levenberg_marquardt(model, iterations=lm_2)
    model.structure.keep_adps_positive_definite()


def merit(objective, rows: np.ndarray) -> tuple[float, float]:
    """Pooled R1(obs) and wR2 of ``rows`` (used-row mask) with frame scales fitted on them."""
    with torch.no_grad():
        ic = objective.calculated()[0]
    keep = torch.as_tensor(rows, device=ic.device)
    i_obs, sigma, frame = objective.i_obs[keep], objective.sigma[keep], objective.frame[keep]
    scales = optimal_scales(i_obs, sigma, ic[keep], frame, objective.n_frames)
    fm = figures_of_merit(
        i_obs, sigma, scales[frame] * ic[keep], frame, objective.simulator.dataset.frames.id
    )
    return fm.r1_obs, fm.wr2


def starting_thickness(data: PreparedData) -> float:
    """The single thickness [Å] of lowest R1(obs) for the prepared (starting) structure."""
    return score_thicknesses(data.simulator(), data.observations, SCAN).best_thickness


def true_model(truth_crystal, data: PreparedData, truth, case: Case, *, seed: int, device=None):
    """The true structure and thickness distribution as a (non-refined) model."""
    config = refine_config(case, "global", 500.0, seed=seed)
    model = build(data, config, crystal=truth_crystal)
    model.objectives[0].thickness = TrueThickness(truth, device=device)
    return model


def recovery(case: Case, *, seed: int = 0, shape: str = "flexible", device=None) -> dict:
    """Simulate, displace, refine with the neural thickness model; errors against the truth."""
    truth_crystal = true_structure(structure_path(case.name))
    dataset, truth = synthetic_data(case, truth_crystal, seed=seed, device=device)
    start = displaced(truth_crystal, np.random.default_rng(seed))
    # the displaced start must still be told from its inverse (non-centrosymmetric only)
    data = prepare(start, dataset, case.simulation(), device=device)
    _, hand = choose_absolute_structure(data.crystal, [data], "check")
    t0 = starting_thickness(data)
    config = refine_config(case, "neural", t0, seed=seed, shape=shape)
    model = build(data, config)
    objective = model.objectives[0]
    everything = np.ones(objective.simulator.n_used, bool)
    tick = time.perf_counter()
    optimise(model, config, case.schedule)
    seconds = time.perf_counter() - tick
    refined = refined_crystal(model.structure)
    reference = true_model(truth_crystal, data, truth, case, seed=seed, device=device)
    t_true = np.asarray(truth["frames"]["thickness_mean"])
    t_refined = objective.thickness.summary()["mean"]
    return {
        "name": case.name,
        "atoms": len(truth_crystal.atoms),
        "frames": dataset.n_frames,
        "obs": objective.simulator.n_used,
        "start": structure_errors(start, truth_crystal),
        "end": structure_errors(refined, truth_crystal),
        "thickness": float(np.max(np.abs(t_refined / t_true - 1))),
        "wr2": merit(objective, everything)[1],
        "wr2_true": merit(reference.objectives[0], everything)[1],
        "wr2_gaussian": _family_wr2(reference.objectives[0], everything, "gaussian", 64),
        "wr2_uniform": _family_wr2(reference.objectives[0], everything, "uniform", case.n_samples),
        "t0": t0,
        "hand": hand,
        "seconds": seconds,
    }


def _family_wr2(objective, rows: np.ndarray, shape: str, n: int) -> float:
    """wR2 of the true model with per-frame distributions of the true moments in a family."""
    saved = objective.thickness.samples, objective.thickness.weights
    objective.thickness.as_family(shape, n)
    wr2 = merit(objective, rows)[1]
    objective.thickness.samples, objective.thickness.weights = saved
    return wr2


def held_out_frames(n_frames: int, every: int = 5) -> np.ndarray:
    """(frame,) bool: every ``every``-th frame, never the first or the last."""
    out = np.zeros(n_frames, bool)
    out[2 : n_frames - 1 : every] = True
    return out


def _interpolate_frame_thickness(thickness, alpha: np.ndarray, fit_frames: np.ndarray) -> None:
    """Held-out frames of a per-frame model: log t interpolated linearly in α."""
    with torch.no_grad():
        log_t = torch.log(thickness()[0][:, 0]).cpu().numpy()
        log_t[~fit_frames] = np.interp(alpha[~fit_frames], alpha[fit_frames], log_t[fit_frames])
        t0 = thickness.t0.expand(len(alpha)).cpu().numpy()
        ratio = torch.as_tensor(log_t - np.log(t0), dtype=thickness.log_ratio.dtype)
        thickness.log_ratio.copy_(ratio.to(thickness.log_ratio.device))


def comparison(case: Case, kinds=KINDS, *, seed: int = 0, device=None) -> list[dict]:
    """Each thickness model refined on the fit frames, scored on fit and held-out frames."""
    truth_crystal = true_structure(structure_path(case.name))
    dataset, truth = synthetic_data(case, truth_crystal, seed=seed, device=device)
    start = displaced(truth_crystal, np.random.default_rng(seed))
    data = prepare(start, dataset, case.simulation(), device=device)
    t0 = starting_thickness(data)
    out_frames = held_out_frames(dataset.n_frames)
    fit_frames = ~out_frames
    alpha = np.asarray(dataset.frames.alpha, dtype=float)
    rows = []

    def scores(label, objective, seconds, xyz=math.nan):
        frame = objective.simulator.frame_of_used
        fit, free = merit(objective, fit_frames[frame]), merit(objective, out_frames[frame])
        rows.append({"name": case.name, "model": label, "fit": fit, "free": free,
                     "seconds": seconds, "xyz": xyz})  # fmt: skip

    for label, (kind, shape) in kinds.items():
        config = refine_config(case, kind, t0, seed=seed, shape=shape)
        model = build(data, config, fit_frames=fit_frames)
        tick = time.perf_counter()
        optimise(model, config, case.schedule)
        seconds = time.perf_counter() - tick
        objective = model.objectives[0]
        xyz = structure_errors(refined_crystal(model.structure), truth_crystal)[0]
        if kind == "frame":
            scores("frame (t0)", objective, seconds, xyz)
            _interpolate_frame_thickness(objective.thickness, alpha, fit_frames)
        scores(label, objective, seconds, xyz)
    reference = true_model(truth_crystal, data, truth, case, seed=seed, device=device)
    scores("true", reference.objectives[0], 0.0, 0.0)
    return rows


# --- tables ------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def passes(row: dict) -> dict[str, bool]:
    """Each target of a recovery row: met or not."""
    return {
        "xyz": row["end"][0] <= TARGETS["xyz"],
        "uiso": row["end"][1] <= TARGETS["uiso"],
        "thickness": row["thickness"] <= TARGETS["thickness"],
        "wr2": row["wr2"] <= TARGETS["wr2"] * row["wr2_true"],
        "hand": not row["hand"].inverted,  # the data were simulated from the given hand
    }


def recovery_table(rows: list[dict]) -> str:
    head = (
        f"{'structure':<12}{'atoms':>6}{'frames':>7}{'obs':>7}  {'RMS Δxyz [Å]':<17}"
        f"{'max |ΔUiso| [Å²]':<18}{'max |Δt|/t':>11}  {'wR2 refined/true':<23}{'time [s]':>9}"
        f"  {'xyz':<5}{'Uiso':<5}{'t':<5}{'wR2':<5}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ok = passes(r)
        lines.append(
            f"{r['name']:<12}{r['atoms']:>6}{r['frames']:>7}{r['obs']:>7}  "
            f"{r['start'][0]:.4f} → {r['end'][0]:.4f}  "
            f"{r['start'][1]:.4f} → {r['end'][1]:.4f}   "
            f"{100 * r['thickness']:>9.2f} %  "
            f"{100 * r['wr2']:.2f}/{100 * r['wr2_true']:.2f} % ({r['wr2'] / r['wr2_true']:.3f})"
            f"{r['seconds']:>9.0f}  "
            + "".join(f"{_verdict(ok[k]):<5}" for k in ("xyz", "uiso", "thickness", "wr2"))
        )
    for r in rows:
        lines.append(
            f"{r['name']}: the true model with each frame's distribution replaced by a Gaussian "
            f"of the same mean and width has wR2 {100 * r['wr2_gaussian']:.2f} % "
            f"({r['wr2_gaussian'] / r['wr2_true']:.3f} × true); by a uniform distribution at "
            f"the model's nodes {100 * r['wr2_uniform']:.2f} % "
            f"({r['wr2_uniform'] / r['wr2_true']:.3f} × true)"
        )
    for r in rows:
        scan = r["hand"].scan_r_obs
        lines.append(
            f"{r['name']}: absolute structure from the displaced start: "
            + (r["hand"].note if scan is None else
               f"R1(obs) of the thickness scan {100 * scan['given']:.2f} % as simulated, "
               f"{100 * scan['inverted']:.2f} % inverted: {_verdict(passes(r)['hand'])}")
        )  # fmt: skip
    lines.append(
        f"targets: RMS Δxyz ≤ {TARGETS['xyz']} Å (atoms with free coordinates), "
        f"|ΔUiso| ≤ {TARGETS['uiso']} Å², per-frame mean thickness within "
        f"{100 * TARGETS['thickness']:.0f} %, wR2 ≤ {TARGETS['wr2']:.2f} × wR2(true model)"
    )
    return "\n".join(lines)


def comparison_table(rows: list[dict]) -> str:
    head = (
        f"{'structure':<12}{'thickness model':<16}{'R1(obs) fit':>12}{'wR2 fit':>9}"
        f"{'R1(obs) held-out':>18}{'wR2 held-out':>14}{'RMS Δxyz [Å]':>14}{'time [s]':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        (r1_fit, wr2_fit), (r1_free, wr2_free) = r["fit"], r["free"]
        seconds = "-" if r["model"] == "true" else f"{r['seconds']:.0f}"
        lines.append(
            f"{r['name']:<12}{r['model']:<16}{100 * r1_fit:>10.2f} %{100 * wr2_fit:>7.2f} %"
            f"{100 * r1_free:>16.2f} %{100 * wr2_free:>12.2f} %{r['xyz']:>14.4f}{seconds:>10}"
        )
    for name in dict.fromkeys(r["name"] for r in rows):
        free = {r["model"]: r["free"][1] for r in rows if r["name"] == name}
        if not {"global", "frame"} <= set(free):
            continue
        for model in (m for m in free if m.startswith("neural")):
            beaten = free[model] < min(free["global"], free["frame"])
            lines.append(
                f"{name}: {model} {'beats' if beaten else 'does NOT beat'} global and frame "
                f"on held-out wR2 ({100 * free[model]:.2f} % vs {100 * free['global']:.2f} % "
                f"and {100 * free['frame']:.2f} %)"
            )
    return "\n".join(lines)


# --- command line ------------------------------------------------------------------------


def case_for(name: str, quick: bool) -> Case:
    case = CASES[name]
    return dataclasses.replace(case, **QUICK) if quick else case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument(
        "--compare", nargs="*", choices=list(CASES), default=None,
        help="structures of the thickness-model comparison (default: the selected ones "
        "but paracetamol; none: skip it)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smaller problems, fewer steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--shape", default="flexible", choices=["gaussian", "flexible"],
        help="distribution family of the neural model in the recovery table",
    )  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        from blochnet.memory import keep_freed_memory

        keep_freed_memory()
    except ImportError:
        pass
    tick = time.perf_counter()
    rows = []
    for name in args.structures:
        case = case_for(name, args.quick)
        rows.append(recovery(case, seed=args.seed, shape=args.shape, device=args.device))
        print(f"[{name}: {rows[-1]['seconds']:.0f} s]", file=sys.stderr, flush=True)
    print(f"Synthetic recovery (neural thickness model, {args.shape} distribution)")
    print(recovery_table(rows))
    compared = []
    if args.compare is None:
        args.compare = [name for name in args.structures if name != "paracetamol"]
    for name in args.compare:
        compared += comparison(case_for(name, args.quick), seed=args.seed, device=args.device)
    if compared:
        print()
        print("Thickness models on held-out frames (every 5th frame, scales fitted per frame)")
        print(comparison_table(compared))
    print(f"\ntotal wall time {time.perf_counter() - tick:.0f} s, {args.threads} thread(s)")
    return 0 if all(all(passes(r).values()) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
