"""Diffraction pattern of one crystal orientation at several thicknesses.

This is the forward model on its own: a crystal, a beam direction, a list of thicknesses,
and the intensity of every beam of the Bloch-wave calculation. Sign conventions are those
of :mod:`blochnet.physics.beams`: the beam travels along the zone axis [uvw], a diffracted
beam g has wave vector K + g, and s_g > 0 inside the Ewald sphere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from blochnet.crystal import Crystal
from blochnet.errors import ConfigurationError
from blochnet.physics.beams import (
    excitation_errors,
    normal_factors,
    reciprocal_lattice_points,
    select_beams,
    zone_axis_direction,
)
from blochnet.physics.bloch import SOLVERS, bloch_intensities
from blochnet.physics.crystal_model import AtomTensors, CrystalModel
from blochnet.physics.scattering import TABLES
from blochnet.physics.structure_matrix import BeamBatch, structure_matrices
from blochnet.units import energy_to_wavelength


@dataclass
class Pattern:
    """Beams of one orientation and their intensities.

    Attributes
    ----------
    hkl : ndarray (beam, 3) int, the incident beam (0 0 0) first.
    g : ndarray (beam,) |g| [Å⁻¹].
    excitation_error : ndarray (beam,) s_g [Å⁻¹].
    thickness : ndarray (thick,) [Å].
    intensities : Tensor (thick, beam), fractions of the incident beam (differentiable).
    beam_direction : ndarray (3,) unit vector, Cartesian crystal frame.
    normal : ndarray (3,) unit surface normal, Cartesian crystal frame.
    wavelength : float [Å]; k : float |K| in the crystal [Å⁻¹].
    """

    hkl: np.ndarray
    g: np.ndarray
    excitation_error: np.ndarray
    thickness: np.ndarray
    intensities: Tensor
    beam_direction: np.ndarray
    normal: np.ndarray
    wavelength: float
    k: float


def simulate_pattern(
    crystal: Crystal,
    zone,
    thickness,
    *,
    normal=None,
    voltage: float = 200e3,
    g_max: float = 2.0,
    sg_max: float = 0.05,
    absorption: float = 0.0,
    scattering: str = "lobato",
    solver: str = "eigh",
    atoms: AtomTensors | None = None,
    dtype: torch.dtype = torch.float64,
    device=None,
) -> Pattern:
    """Bloch-wave intensities of every beam for one beam direction.

    Parameters
    ----------
    crystal : the structure.
    zone : direct-lattice direction [uvw] along which the beam travels (non-integer allowed).
    thickness : one thickness or a sequence [Å], measured along the surface normal (a tensor
        keeps its gradient).
    normal : direct-lattice direction of the surface normal; default: the beam direction.
    voltage : accelerating voltage [V].
    g_max : largest |g| of a beam [Å⁻¹].
    sg_max : largest |s_g| of a beam [Å⁻¹].
    absorption : κ in U'_g = κ U_g (0: no absorption).
    scattering : ``"lobato"`` (Lobato & Van Dyck 2014) or ``"peng"`` (ITC C 4.3.2.2).
    solver : ``"eigh"``, ``"eig"`` or ``"expm"``; see :mod:`blochnet.physics.bloch`.
    atoms : refinable atom tensors (default: the crystal's own values); gradients of the
        intensities flow back to them.
    dtype, device : precision (float64 default, float32 allowed) and device.
    """
    if scattering not in TABLES:
        raise ConfigurationError(f"unknown scattering table {scattering!r}; use one of {TABLES}")
    if solver not in SOLVERS:
        raise ConfigurationError(f"unknown solver {solver!r}; use one of {SOLVERS}")
    if absorption < 0:
        raise ConfigurationError(f"absorption κ must be ≥ 0, got {absorption}")
    if not isinstance(thickness, Tensor):
        thickness = np.asarray(thickness, dtype=float)
    thickness_t = torch.atleast_1d(torch.as_tensor(thickness, dtype=dtype, device=device))
    if thickness_t.ndim != 1 or torch.any(thickness_t < 0) or not torch.all(thickness_t.isfinite()):
        raise ConfigurationError(f"thicknesses must be finite and ≥ 0 Å, got {thickness}")

    model = CrystalModel(crystal, voltage=voltage, table=scattering, dtype=dtype, device=device)
    atoms = model.atom_tensors() if atoms is None else atoms
    wavelength = energy_to_wavelength(voltage)
    k, u0 = model.wavevector(atoms, wavelength)

    direction = _direction(crystal, zone, "zone")
    n_dir = direction if normal is None else _direction(crystal, normal, "normal")
    if float(direction @ n_dir) <= 0.05:
        raise ConfigurationError("the surface normal must make an angle < 87° with the beam")
    as_t = lambda x: torch.as_tensor(x, dtype=dtype, device=model.device)  # noqa: E731
    k_vec, n_vec = k * as_t(direction), as_t(n_dir)

    hkl_all = torch.as_tensor(reciprocal_lattice_points(crystal.cell, g_max), device=model.device)
    g_all = model.g_vectors(hkl_all)
    s_all = excitation_errors(g_all, k_vec.detach())
    keep = select_beams(torch.linalg.vector_norm(g_all, dim=-1), s_all, g_max, sg_max)
    hkl = hkl_all[keep]
    batch = BeamBatch.from_lists([hkl.cpu().numpy()], device=model.device)
    g = model.g_vectors(hkl)
    s_g = excitation_errors(g, k_vec)[None]
    factor, kn = normal_factors(g[None], k_vec[None], n_vec[None])
    factor = None if normal is None else factor

    u = model.potential(batch.differences, atoms)
    a, a_abs = structure_matrices(batch, u, s_g, k, u0, absorption, factor)
    del batch, u  # the pair index (beam², int64) is not needed by the eigensolver
    c = math.pi / kn
    intensities = bloch_intensities(a, thickness_t, c, absorptive=a_abs, solver=solver)[0]
    return Pattern(
        hkl=hkl.cpu().numpy(),
        g=torch.linalg.vector_norm(g, dim=-1).detach().cpu().numpy(),
        excitation_error=s_g[0].detach().cpu().numpy(),
        thickness=thickness_t.detach().cpu().numpy(),
        intensities=intensities,
        beam_direction=direction,
        normal=n_dir,
        wavelength=wavelength,
        k=float(k.detach()),
    )


def _direction(crystal: Crystal, uvw, what: str) -> np.ndarray:
    try:
        return zone_axis_direction(crystal.cell, uvw)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{what}: {exc}") from None
