"""Physical plausibility of the inputs of a calculation, checked before any work.

A file can be well formed and still describe something no experiment has: an occupancy
above one, an ADP that is not positive definite, two full atoms 0.1 Å apart, a wavelength
no electron microscope has, a beam set that holds none of the observed reflections.
Each check raises the project's error with the file or option, the atom or field, and
the range that was expected. ``blochnet info`` shows the milder cases as oddities instead.
"""

from __future__ import annotations

import numpy as np

from blochnet.crystal import Crystal
from blochnet.errors import ConfigurationError, InputFileError
from blochnet.lattice import direct_matrix, reciprocal_matrix, uij_to_cartesian

MIN_DISTANCE = 0.5  # [Å] full atoms closer than this are one atom typed twice
VOLTAGE_RANGE_KV = (20.0, 3000.0)
THICKNESS_RANGE = (1.0, 50_000.0)  # [Å] a 3D-ED crystal, from a monolayer to 5 µm
G_MAX_LIMIT = 8.0  # [Å⁻¹] beyond any measured 3D-ED reflection (d = 0.125 Å)


def check_structure(crystal: Crystal) -> None:
    """Occupancies in (0, 1], positive semi-definite ADPs, no two full atoms closer than
    :data:`MIN_DISTANCE` (split sites whose occupancies add up to one or less may be)."""
    path = crystal.source or "structure"
    for atom in crystal.atoms:
        if not 0 < atom.occupancy <= 1 + 1e-3:
            raise InputFileError(
                path, f"atom {atom.label}: _atom_site_occupancy",
                f"expected an occupancy in (0, 1], got {atom.occupancy:g}",
            )  # fmt: skip
        _check_adp(path, crystal, atom)
    for i, j, distance in close_contacts(crystal, MIN_DISTANCE):
        a, b = crystal.atoms[i], crystal.atoms[j]
        if a.occupancy + b.occupancy > 1 + 1e-3:
            raise InputFileError(
                path, f"atoms {a.label} and {b.label}",
                f"{distance:.3f} Å apart (an image of one on the other), closer than "
                f"{MIN_DISTANCE} Å with occupancies {a.occupancy:g} + {b.occupancy:g} > 1; "
                "one atom listed twice, or a wrong coordinate?",
            )  # fmt: skip


def _check_adp(path: str, crystal: Crystal, atom) -> None:
    if atom.uij is None:
        if atom.uiso < 0:
            raise InputFileError(
                path, f"atom {atom.label}: _atom_site_U_iso_or_equiv",
                f"expected Uiso ≥ 0 Å², got {atom.uiso:g}",
            )  # fmt: skip
        return
    u_cart = uij_to_cartesian(crystal.cell, np.asarray(atom.uij, dtype=float)[None])[0]
    eigenvalues = np.linalg.eigvalsh(np.asarray(u_cart, dtype=float))
    if eigenvalues.min() < -1e-6:
        shown = ", ".join(f"{v:.4g}" for v in eigenvalues)
        raise InputFileError(
            path, f"atom {atom.label}: _atom_site_aniso_U_*",
            f"the ADP is not positive definite (principal values {shown} Å²); expected all ≥ 0",
        )  # fmt: skip


def check_voltage(kilovolts: float, option: str = "--voltage") -> None:
    low, high = VOLTAGE_RANGE_KV
    if not low <= kilovolts <= high:
        raise ConfigurationError(
            f"{option} {kilovolts:g}: expected an accelerating voltage of {low:g}–{high:g} kV"
        )


def check_thickness(thickness, option: str) -> None:
    """Every thickness [Å] within :data:`THICKNESS_RANGE`."""
    values = np.atleast_1d(np.asarray(thickness, dtype=float))
    low, high = THICKNESS_RANGE
    bad = values[~((values >= low) & (values <= high))]
    if bad.size:
        raise ConfigurationError(
            f"{option} {bad[0]:g}: expected a crystal thickness of {low:g}–{high:g} Å"
        )


def check_beam_set(g_max: float, datasets, option: str = "simulation.g_max") -> None:
    """A beam set that reaches the observed reflections and stays physical."""
    if g_max > G_MAX_LIMIT:
        raise ConfigurationError(
            f"{option} {g_max:g}: expected at most {G_MAX_LIMIT:g} Å⁻¹ (d = "
            f"{1 / G_MAX_LIMIT:.3f} Å); beyond, the beam set only grows"
        )
    for dataset in datasets:
        hkl = np.asarray(dataset.reflections.hkl, dtype=float)
        if not len(hkl):
            continue
        g = np.linalg.norm(hkl @ reciprocal_matrix(dataset.cell).T, axis=1)
        if g_max < g.min():
            raise ConfigurationError(
                f"{option} {g_max:g}: below every observed reflection of {dataset.source} "
                f"(|g| from {g.min():.3f} Å⁻¹); no reflection would be simulated"
            )


def close_contacts(crystal: Crystal, limit: float) -> list[tuple[int, int, float]]:
    """Pairs (i, j, distance) of asymmetric-unit atoms with images closer than ``limit``."""
    from blochnet.sitesym import site_constraints

    if not crystal.atoms:
        return []
    rot = np.array([op.rotation for op in crystal.operators], dtype=float)
    tran = np.array([op.translation for op in crystal.operators], dtype=float)
    sites, owner = [], []
    for j, (atom, site) in enumerate(zip(crystal.atoms, site_constraints(crystal), strict=True)):
        for g in site.image_ops:
            sites.append(rot[g] @ atom.xyz + tran[g])
            owner.append(j)
    sites, owner = np.array(sites) % 1.0, np.array(owner)
    shifts = np.array(np.meshgrid(*[[-1, 0, 1]] * 3, indexing="ij")).reshape(3, -1).T
    a_matrix = direct_matrix(crystal.cell)
    found: dict[tuple[int, int], float] = {}
    for i, atom in enumerate(crystal.atoms):
        delta = sites - np.asarray(atom.xyz) % 1.0
        delta -= np.round(delta)
        cart = (delta[:, None, :] + shifts[None, :, :]) @ a_matrix.T
        distance = np.linalg.norm(cart, axis=2).min(axis=1)
        itself = (owner == i) & (distance < 0.01)  # the atom's own site
        for s in np.flatnonzero((distance < limit) & ~itself):
            key = (min(i, owner[s]), max(i, owner[s]))
            found[key] = min(found.get(key, np.inf), float(distance[s]))
    return [(i, j, d) for (i, j), d in sorted(found.items())]
