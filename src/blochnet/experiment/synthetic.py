"""Synthetic 3D-ED experiments: frames simulated from a known structure, thickness and noise.

The geometry is copied from a measured data set (same frames, same hkl rows) or generated
(a rotation scan with a seeded random or a given orientation). Every row is simulated with
:class:`~blochnet.experiment.frames.FrameSimulator`, averaged over the frame's thickness
samples with their weights, and turned into counts; the truth is returned beside the data.

Notes
-----
Noise model, for observation r of frame f, I_r in units of the incident beam:

    expected counts  λ_r = dose · k_f · I_r,   k_f = exp(σ_ln z_f − σ_ln²/2),  z_f ~ N(0, 1)
    counts           c_r = Poisson(λ_r) + background · N(0, 1)
    reported sigma   σ_r = max(sqrt(max(c_r, 0) + background²), 1)

σ_ln = sqrt(ln(1 + jitter²)) gives the frame scales k_f mean 1 and relative spread
``scale_jitter``. The floor of one count keeps σ > 0 where nothing was counted. Negative
counts and rows of zero intensity (systematic absences) are kept, as in real files. Without
Poisson noise c_r = λ_r + background noise. The random streams (orientation, scales,
Poisson, background) are independent children of ``numpy.random.SeedSequence(seed)``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from blochnet.crystal import Atom, Cell, Crystal, SymOp
from blochnet.dataset import Dataset, FrameTable, ReflectionTable, check_cell
from blochnet.errors import ConfigurationError
from blochnet.experiment.config import SelectionRule, SimulationConfig
from blochnet.experiment.frames import FrameSimulator
from blochnet.experiment.geometry import beam_directions, beam_zone_axes
from blochnet.experiment.specimen import ConstantThickness, ThicknessModel
from blochnet.io.atomic import write_text_atomically
from blochnet.io.pets_write import write_pets
from blochnet.lattice import reciprocal_matrix
from blochnet.physics.beams import reciprocal_lattice_points
from blochnet.units import energy_to_wavelength

_FORBID = ConfigDict(extra="forbid")
_Vector = tuple[float, float, float]


class GeneratedGeometry(BaseModel):
    """A simulated scan: frames at α = start, start + step, … ≤ end, β = ω = 0.

    The rows of a frame are the hkl with 0 < |g| ≤ ``resolution`` [Å⁻¹] and
    RSg = |s_g| / (|g| Δ) ≤ ``rsg_max`` at the frame centre (K = d/λ, Δ the semi-angle in
    rad). ``orientation``: "random" (seeded) or U (3 × 3 rotation, UB = U B).
    """

    model_config = _FORBID
    voltage: float = Field(200.0, gt=0, description="accelerating voltage [kV]")
    rotation: _Vector = Field((-30.0, 30.0, 1.0), description="α start, end, step [deg]")
    semi_angle: float | None = Field(None, gt=0, le=10, description="[deg]; default step/2")
    resolution: float = Field(1.0, gt=0, le=5, description="largest |g| of a row [Å⁻¹]")
    orientation: Literal["random"] | tuple[_Vector, _Vector, _Vector] = "random"
    geometry: Literal["continuous rotation", "precession"] = "continuous rotation"
    rsg_max: float = Field(1.0, gt=0, description="largest RSg of a written row")

    @field_validator("rotation")
    @classmethod
    def _scan(cls, value: _Vector) -> _Vector:
        start, end, step = value
        if not (step > 0 and start <= end and (end - start) / step <= 3600):
            raise ValueError(f"need START ≤ END, STEP > 0 and ≤ 3601 frames; got {value}")
        return value

    @field_validator("orientation")
    @classmethod
    def _proper(cls, value):
        u = np.eye(3) if isinstance(value, str) else np.asarray(value, dtype=float)
        if np.abs(u.T @ u - np.eye(3)).max() > 1e-3 or np.linalg.det(u) < 0:
            raise ValueError(f"U must be a rotation matrix (UᵀU = I, det +1), got {value}")
        return value

    def alphas(self) -> np.ndarray:
        """(frame,) α of every frame [deg]."""
        start, end, step = self.rotation
        return start + step * np.arange(int(np.floor((end - start) / step + 1e-9)) + 1)


class NoiseModel(BaseModel):
    """Counting statistics of the synthetic intensities (module Notes)."""

    model_config = _FORBID
    dose: float = Field(1e7, gt=0, description="counts per incident beam: λ = dose · I")
    background: float = Field(2.0, ge=0, description="σ of Gaussian background noise [counts]")
    scale_jitter: float = Field(0.0, ge=0, le=1, description="relative spread of frame scales")
    poisson: bool = True


def simulate_experiment(
    crystal: Crystal,
    *,
    geometry_from: Dataset | None = None,
    generated: GeneratedGeometry | None = None,
    thickness: ThicknessModel | None = None,
    noise: NoiseModel | None = None,
    config: SimulationConfig | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device=None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Dataset, dict]:
    """Simulate a 3D-ED data set; return it and its ground truth (a JSON-ready dict).

    Parameters
    ----------
    crystal : the true structure. With ``geometry_from`` it is put in that file's cell
        (refused if the cells differ by more than a few %, see ``check_cell``).
    geometry_from, generated : copy the frames and rows of a data set, or generate a scan;
        exactly one of the two.
    thickness : a thickness model (default: 500 Å for every frame).
    noise : counting statistics (module Notes); default ``NoiseModel()``.
    config : Bloch-wave settings; its selection is replaced by one that accepts every row.
    seed : seeds every random choice. dtype, device : of the simulation.
    progress : optional callable(orientations done now, orientations in all).

    Returns
    -------
    (Dataset, dict): the data set with counts and σ in the reflection rows, and the truth:
    structure, per-frame thickness samples/weights/mean/std and scales, noise, seed,
    voltage [kV], the config used and any warnings.
    """
    if (geometry_from is None) == (generated is None):
        raise ConfigurationError("give either a data set to copy or generated geometry")
    thickness = thickness or ConstantThickness(value=500.0)
    noise = noise or NoiseModel()
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]
    warnings = []
    if geometry_from is not None:
        warnings = [m for m in [check_cell(geometry_from.cell, crystal.cell)] if m]
        crystal = dataclasses.replace(crystal, cell=geometry_from.cell)
        dataset = dataclasses.replace(copy.deepcopy(geometry_from), source="", warnings=[])
        dataset.frames = dataclasses.replace(dataset.frames, line=None)
    else:
        dataset = _generated_dataset(crystal, generated, streams[0])
    samples, weights = thickness.sample(dataset.frames.alpha)
    config, intensity = _simulate_rows(
        crystal, dataset, samples, weights, config, progress, dtype, device
    )
    width = np.sqrt(np.log1p(noise.scale_jitter**2))
    scales = np.exp(width * streams[1].standard_normal(dataset.n_frames) - width**2 / 2)
    expected = noise.dose * scales[dataset.frame_index()] * intensity
    counts = streams[2].poisson(expected).astype(float) if noise.poisson else expected
    counts = counts + noise.background * streams[3].standard_normal(len(counts))
    sigma = np.maximum(np.sqrt(np.maximum(counts, 0) + noise.background**2), 1.0)
    dataset.reflections = dataclasses.replace(
        dataset.reflections, intensity=counts, sigma=sigma, line=None
    )
    mean = np.sum(samples * weights, axis=1)
    std = np.sqrt(np.sum(weights * (samples - mean[:, None]) ** 2, axis=1))
    geometry = {"copied_from": geometry_from.source} if generated is None else generated
    frames = {"id": dataset.frames.id, "alpha": dataset.frames.alpha, "scale": scales}
    frames |= {"thickness_mean": mean, "thickness_std": std}
    frames |= {"thickness_samples": samples, "thickness_weights": weights}
    truth = {"format": "blochnet synthetic experiment 1", "structure": dataclasses.asdict(crystal)}
    truth |= {"geometry": geometry, "voltage": dataset.voltage / 1e3, "ub": dataset.ub}
    truth |= {"wavelength": dataset.wavelength, "n_frames": dataset.n_frames}
    truth |= {"n_rows": len(dataset.reflections), "thickness_model": thickness, "frames": frames}
    truth |= {"dose": noise.dose, "background": noise.background, "noise": noise, "seed": seed}
    truth |= {"config": config, "warnings": warnings}
    return dataset, _plain(truth)


def truth_path(path: str | os.PathLike[str]) -> Path:
    """The ground truth written beside a synthetic data file: ``<path>.truth.json``."""
    return Path(f"{os.fspath(path)}.truth.json")


def write_synthetic(dataset: Dataset, truth: dict, path: str | os.PathLike[str]) -> list[Path]:
    """Write the data set (``.cif_pets``) and its truth JSON (:func:`truth_path`) atomically.

    Returns both paths. When a write fails, no new or partial file is left behind.
    """
    path, target = Path(path), truth_path(path)
    text = json.dumps({**truth, "data_file": path.name}, indent=1, allow_nan=False)
    existed = path.exists()
    write_pets(dataset, path)
    try:
        write_text_atomically(target, text + "\n")
    except BaseException:
        if not existed:
            path.unlink(missing_ok=True)
        raise
    return [path, target]


def truth_crystal(truth: dict) -> Crystal:
    """The true structure of a truth dict (from :func:`simulate_experiment` or its JSON)."""
    s = truth["structure"]
    array = {"xyz", "uij", "rotation", "translation"}

    def fields(record: dict) -> dict:
        return {k: np.array(v) if k in array and v is not None else v for k, v in record.items()}

    operators = [SymOp(**fields(op)) for op in s["operators"]]
    atoms = [Atom(**fields(atom)) for atom in s["atoms"]]
    return Crystal(**s | {"cell": Cell(**s["cell"]), "operators": operators, "atoms": atoms})


def _simulate_rows(crystal, dataset, samples, weights, config, progress, dtype, device):
    """(config used, (refl,) intensity of every row averaged over the thickness samples)."""
    if len(dataset.reflections) == 0:
        raise ConfigurationError("no reflection rows to simulate (raise the resolution?)")
    g = np.linalg.norm(dataset.reflections.hkl @ reciprocal_matrix(dataset.cell).T, axis=1)
    every_row = SelectionRule(g_max=float(g.max()) * (1 + 1e-9), rsg_max=1e12)
    config = config or SimulationConfig()
    # generated rows are what each frame records, unless whole rocking curves are asked for
    rocking = "frame" if config.rocking == "auto" else config.rocking
    config = config.model_copy(update={"selection": every_row, "rocking": rocking})
    simulator = FrameSimulator.build(crystal, dataset, config, dtype=dtype, device=device)
    if simulator.n_used != len(dataset.reflections):
        raise ConfigurationError(f"rows that cannot be simulated: {simulator.selection.counts()}")
    total = simulator.n_orientations
    with torch.no_grad():
        as_t = lambda x: torch.as_tensor(x, dtype=dtype, device=simulator.model.device)  # noqa: E731
        mean = simulator.intensities(
            simulator.model.atom_tensors(),
            as_t(samples),
            weights=as_t(weights),
            progress=None if progress is None else (lambda n: progress(n, total)),
        )
    intensity = np.zeros(len(dataset.reflections))
    intensity[simulator.used_rows] = mean.cpu().double().numpy()
    return config, intensity


def _plain(value):
    """JSON-ready copy: arrays and numpy scalars to lists/floats, pydantic models to dicts."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation drawn uniformly (Haar measure) from SO(3): QR of a Gaussian matrix."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _generated_dataset(crystal: Crystal, geo: GeneratedGeometry, rng) -> Dataset:
    cell, b = crystal.cell, reciprocal_matrix(crystal.cell)
    if isinstance(geo.orientation, str):
        u = _random_rotation(rng)
    else:
        left, _, right = np.linalg.svd(np.asarray(geo.orientation, dtype=float))
        u = left @ right  # nearest rotation
    alpha = geo.alphas()
    n, semi, zero = len(alpha), geo.semi_angle or geo.rotation[2] / 2, np.zeros(len(alpha))
    frames = FrameTable(
        np.arange(1, n + 1), np.zeros((n, 3)), semi + zero, alpha, zero, zero, 1 + zero
    )
    details = {"data collection geometry": geo.geometry, "dstarmax": f"{geo.resolution:g}"}
    details["simulated by"] = "blochnet (synthetic data; the truth is in the .truth.json file)"
    wavelength = energy_to_wavelength(geo.voltage * 1e3)
    dataset = Dataset(
        cell, wavelength, geo.voltage * 1e3, u @ b, geo.geometry, semi, 0.0, None,
        geo.resolution, details, frames, ReflectionTable(*_rows(np.zeros((0, 3)), [])),
    )  # fmt: skip
    frames.zone_axis = -beam_zone_axes(dataset)  # PETS's zone axis points to the source
    hkl = reciprocal_lattice_points(cell, geo.resolution)[1:]
    g = hkl @ b.T
    g_norm, k = np.linalg.norm(g, axis=1), 1 / wavelength
    s = -(2 * k * beam_directions(dataset) @ g.T + g_norm**2) / (2 * k)  # (frame, hkl)
    frame, row = np.nonzero(np.abs(s) <= geo.rsg_max * g_norm * np.radians(semi))
    dataset.reflections = ReflectionTable(*_rows(hkl[row], frames.id[frame]))
    return dataset


def _rows(hkl: np.ndarray, frame_id) -> tuple:
    """Columns of a reflection table with placeholder intensities (0) and sigmas (1)."""
    n = len(hkl)
    return hkl.astype(np.int64), np.zeros(n), np.ones(n), np.asarray(frame_id, dtype=np.int64)
