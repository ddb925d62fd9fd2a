"""Difference potential map and its peak list, for dynamical data.

Notes
-----
Kinematical difference Fourier synthesis needs |Fo| on the scale of |Fc|; dynamical
intensities are not |F|². The approximation used here (as in dynamical refinement
programs' difference maps): for each symmetry-unique reflection the observed intensity
merged over frames, <Io>, is divided by the dynamical calculated intensity merged the same
way, <Ic> (:mod:`blochnet.refinement.merging`), and that ratio corrects the kinematical
amplitude of the refined model:

    |Fo| = |Fc,kin| · sqrt(max(<Io>, 0) / <Ic>),   ΔF = (|Fo| − |Fc,kin|) · exp(iφc,kin),

with Fc,kin the electron structure factor of the refined model (its scattering factors,
ADPs and charges) and φc,kin its phase. Where the model explains a reflection, ΔF = 0;
where the data hold more (or less) than the model, ΔF carries the difference with the
model's phase. The map Δφ(r) = (47.878 V·Å² / Ω) Σ ΔF exp(−2πi h·r) is in volts
(h²/(2π m₀ e) = 47.878 V·Å² turns a scattering amplitude per volume into a potential); F000
is left out, so the map averages to zero. Peaks are the local maxima of the map on a grid
of ≤ 0.15 Å, refined by a parabola through each axis, symmetry-unique, and not within
0.5 Å of a modelled atom; holes the same for minima. Heights are in units of the map's
r.m.s.

This is an approximation: dynamical scattering mixes reflections, so a missing atom shows
weaker than in a kinematical map, and strong reflections with poorly modelled dynamical
intensities add noise. Compare peak heights with the largest holes before believing one.
"""

from __future__ import annotations

from pathlib import Path

import gemmi
import numpy as np
import torch

from blochnet.crystal import Crystal, find_space_group
from blochnet.lattice import direct_matrix
from blochnet.physics.crystal_model import CrystalModel
from blochnet.units import ELECTRON_MASS, ELEMENTARY_CHARGE, PLANCK

VOLT_A2 = PLANCK**2 / (2 * np.pi * ELECTRON_MASS * ELEMENTARY_CHARGE) * 1e20  # [V·Å²]
SPACING = 0.15  # largest grid spacing [Å]
EXCLUSION = 0.5  # peaks nearer a modelled atom are not listed [Å]
MAP = "difference_map.ccp4"


def difference_coefficients(
    crystal: Crystal, hkl: np.ndarray, i_obs: np.ndarray, i_calc: np.ndarray, *,
    voltage: float, table: str = "lobato",
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(refl,) complex ΔF [Å] and Fc,kin [Å] of the unique reflections (module notes)."""
    model = CrystalModel(crystal, voltage=voltage, table=table)
    with torch.no_grad():
        f_calc = model.structure_factors(torch.as_tensor(hkl), model.atom_tensors()).numpy()
    ratio = np.sqrt(np.clip(i_obs, 0, None) / np.where(i_calc > 0, i_calc, np.inf))
    amplitude = np.abs(f_calc)
    phase = np.exp(1j * np.angle(f_calc))
    return (amplitude * ratio - amplitude) * phase, f_calc


def difference_map(crystal: Crystal, hkl: np.ndarray, delta_f: np.ndarray) -> gemmi.FloatGrid:
    """The difference potential [V] on a grid of ≤ ``SPACING`` Å (module notes)."""
    group = find_space_group(crystal.operators)
    if group is None:
        raise ValueError(f"no space group with the operators of {crystal.spacegroup!r}")
    cell = gemmi.UnitCell(*crystal.cell.parameters)
    data = gemmi.ComplexAsuData(
        cell, group, np.asarray(hkl, dtype=np.int32), np.asarray(delta_f, dtype=np.complex64)
    )
    size = [int(np.ceil(length / SPACING)) for length in crystal.cell.parameters[:3]]
    grid = data.transform_f_phi_to_map(min_size=size)
    values = grid.array
    values *= VOLT_A2  # gemmi divides by the cell volume
    return grid


def write_map(grid: gemmi.FloatGrid, path: Path) -> Path:
    """The map as a CCP4/MRC file (gemmi)."""
    ccp4 = gemmi.Ccp4Map()
    ccp4.grid = grid
    ccp4.update_ccp4_header()
    ccp4.write_ccp4_map(str(path))
    return path


def peaks(crystal: Crystal, grid: gemmi.FloatGrid, *, n_peaks: int = 20, n_holes: int = 5) -> dict:
    """``{"rms", "max", "min", "peaks": [...], "holes": [...]}``: each peak
    ``{"xyz", "height" (r.m.s. units), "value" (V), "nearest_atom", "distance" (Å)}``,
    strongest first, symmetry-unique, none within ``EXCLUSION`` of a modelled atom."""
    values = np.array(grid.array, dtype=float)
    rms = float(np.sqrt(np.mean(values**2)))
    images = _atom_images(crystal)
    found = {}
    for sign, key, n in ((1, "peaks", n_peaks), (-1, "holes", n_holes)):
        listed = []
        for xyz, value in _extrema(sign * values):
            label, distance = _nearest(crystal, images, xyz)
            if distance < EXCLUSION or _equivalent(crystal, xyz, [p["xyz"] for p in listed]):
                continue
            listed.append({
                "xyz": [round(float(v), 5) for v in xyz], "height": sign * value / rms,
                "value": sign * value, "nearest_atom": label, "distance": distance,
            })  # fmt: skip
            if len(listed) == n:
                break
        found[key] = listed
    return {"rms": rms, "max": float(values.max()), "min": float(values.min()), **found}


def _extrema(values: np.ndarray):
    """Local maxima of a periodic grid, largest first: (fractional xyz, value)."""
    is_max = np.ones(values.shape, bool)
    for shift in np.ndindex(3, 3, 3):
        if shift != (1, 1, 1):
            is_max &= values >= np.roll(values, np.array(shift) - 1, axis=(0, 1, 2))
    index = np.argwhere(is_max & (values > 0))
    order = np.argsort(-values[tuple(index.T)])
    shape = np.array(values.shape)
    for i in index[order]:
        offset = np.zeros(3)
        for axis in range(3):  # parabola through the point and its two neighbours
            up, down = i.copy(), i.copy()
            up[axis], down[axis] = (i[axis] + 1) % shape[axis], (i[axis] - 1) % shape[axis]
            a, b, c = values[tuple(down)], values[tuple(i)], values[tuple(up)]
            curvature = a - 2 * b + c
            offset[axis] = 0.5 * (a - c) / curvature if curvature < 0 else 0.0
        yield (i + offset) / shape % 1.0, float(values[tuple(i)])


def _atom_images(crystal: Crystal) -> list[tuple[str, np.ndarray]]:
    out = []
    for atom in crystal.atoms:
        positions = np.array([op.rotation @ atom.xyz + op.translation for op in crystal.operators])
        out.append((atom.label, positions % 1.0))
    return out


def _min_distance(crystal: Crystal, delta: np.ndarray) -> np.ndarray:
    """Shortest lattice-periodic length [Å] of each fractional difference (…, 3)."""
    delta = delta - np.round(delta)
    shifts = np.array(np.meshgrid(*[[-1, 0, 1]] * 3, indexing="ij")).reshape(3, -1).T
    cart = (delta[..., None, :] + shifts) @ direct_matrix(crystal.cell).T
    return np.linalg.norm(cart, axis=-1).min(-1)


def _nearest(crystal: Crystal, images, xyz: np.ndarray) -> tuple[str, float]:
    best = min((float(_min_distance(crystal, pos - xyz).min()), label) for label, pos in images)
    return best[1], best[0]


def _equivalent(crystal: Crystal, xyz: np.ndarray, listed: list) -> bool:
    if not listed:
        return False
    mates = np.array([op.rotation @ xyz + op.translation for op in crystal.operators])
    delta = mates[None, :, :] - np.array(listed)[:, None, :]
    return bool((_min_distance(crystal, delta) < EXCLUSION).any())


def map_outputs(crystal: Crystal, merged: dict[str, np.ndarray], out: Path, *, voltage: float,
                table: str) -> dict:  # fmt: skip
    """Write ``difference_map.ccp4`` from the merged reflections (h, k, l, i_obs, i_calc;
    a reflection in several data sets gets the mean of its ΔF) and return its statistics
    and peaks for ``report.json``."""
    hkl = np.column_stack([merged[c] for c in "hkl"]).astype(int)
    delta_f, _ = difference_coefficients(
        crystal, hkl, merged["i_obs"], merged["i_calc"], voltage=voltage, table=table
    )
    unique, group = np.unique(hkl, axis=0, return_inverse=True)
    group = group.ravel()
    count = np.bincount(group, minlength=len(unique))
    mean = (np.bincount(group, delta_f.real) + 1j * np.bincount(group, delta_f.imag)) / count
    grid = difference_map(crystal, unique, mean)
    write_map(grid, out / MAP)
    return {"file": MAP, "units": "V", "approximation": APPROXIMATION, **peaks(crystal, grid)}


APPROXIMATION = (
    "|Fo| = |Fc,kin| sqrt(<Io>/<Ic>) with <Io>, <Ic> merged over frames and equivalents; "
    "phases of the refined model's kinematical Fc; see blochnet.refinement.difference_map"
)
