"""The items and loops of a refinement CIF beyond the structure itself.

What a crystallographer takes from ``refined.cif`` to checkCIF, Olex2 or a paper: the
chemical formula and Z, the crystal system, the atom types and their scattering factors,
the data (``_diffrn_reflns_*``), the refinement (counts, weighting, shift/s.u., method) and
the geometry (bond lengths and angles with s.u. from the full covariance,
:mod:`blochnet.refinement.geometry`). The inputs are plain: a crystal, numbers, dicts.

Items of a kinematical refinement CIF that do not apply are named in the file's comments
(:data:`NOT_APPLICABLE`).
"""

from __future__ import annotations

import datetime
import math
from collections import Counter
from functools import reduce

import gemmi
import numpy as np

from blochnet.crystal import Crystal, find_space_group
from blochnet.io.cif_write import format_su
from blochnet.refinement.geometry import bonds_and_angles
from blochnet.sitesym import site_constraints

SCATTERING_SOURCE = {
    "lobato": "Lobato & Van Dyck (2014), Acta Cryst. A70, 636-649 (electron, neutral atoms)",
    "peng": "Peng et al. (1996), Acta Cryst. A52, 257-276; Int. Tables C 4.3.2.2 (electron)",
}
NOT_APPLICABLE = [
    "Items of a kinematical refinement that do not apply to this dynamical refinement:",
    "_exptl_absorpt_*: no absorption correction of the data; absorption is the",
    "  imaginary potential kappa*U_g inside the Bloch-wave calculation.",
    "_refine_ls_extinction_*: multiple scattering is calculated, not corrected for.",
    "_refine_ls_abs_structure_Flack: no Flack parameter; the absolute structure is",
    "  decided by R of the structure against its inverse (see details below).",
    "_refine_ls_R_Fsqd_factor, _refine_ls_wR_factor_gt: not computed; R1, R(all) and",
    "  wR2 are over frame-wise observations (the same hkl in several frames).",
    "_refine_diff_density_*: of the difference potential map (difference_map.ccp4),",
    "  in volts, not e/A^3 (see report.json, difference_map).",
]


def formula(crystal: Crystal) -> tuple[str, float, int]:
    """``_chemical_formula_sum`` (Hill order), its weight [g/mol] and Z.

    The cell content is counted from the site multiplicities and occupancies; Z is the
    greatest common divisor of the element counts (1 when a count is not whole)."""
    counts: Counter[str] = Counter()
    for atom, site in zip(crystal.atoms, site_constraints(crystal), strict=True):
        counts[atom.element] += atom.occupancy * site.multiplicity
    whole = all(abs(n - round(n)) < 1e-3 for n in counts.values())
    z = reduce(math.gcd, (round(n) for n in counts.values())) if whole else 1
    z = max(z, 1)
    order = sorted(counts, key=lambda e: (e != "C", e != "H" or "C" not in counts, e))
    parts = []
    for element in order:
        n = counts[element] / z
        parts.append(element + ("" if abs(n - 1) < 1e-6 else f"{n:.4g}"))
    weight = sum(counts[e] / z * gemmi.Element(e).weight for e in counts)
    return " ".join(parts), float(weight), int(z)


def structure_items(crystal: Crystal, *, scattering: str) -> tuple[dict, list[dict]]:
    """Formula, Z, crystal system and the ``_atom_type`` loop."""
    text, weight, z = formula(crystal)
    items = {
        "_chemical_formula_sum": text,
        "_chemical_formula_weight": f"{weight:.2f}",
        "_cell_formula_units_Z": str(z),
    }
    group = find_space_group(crystal.operators)
    if group is not None:
        items["_space_group_crystal_system"] = group.crystal_system_str()
    source = SCATTERING_SOURCE[scattering]
    types = crystal.elements
    loop = {
        "_atom_type_symbol": types,
        "_atom_type_scat_source": [source] * len(types),
    }
    return items, [loop]


def data_items(hkl: np.ndarray, d: np.ndarray, wavelength: float, *, r_int=None) -> dict:
    """``_diffrn_reflns_*`` of every row of the data (all frames, before selection).

    hkl : (refl, 3); d : (refl,) d-spacings [Å]; r_int : merging statistics
    (:func:`blochnet.refinement.merging.merge`'s ``r_int`` and ``r_sigma``) or None.
    """
    items = {"_diffrn_reflns_number": str(len(hkl))}
    for axis, column in zip("hkl", np.asarray(hkl).T, strict=True):
        items[f"_diffrn_reflns_limit_{axis}_min"] = str(int(column.min()))
        items[f"_diffrn_reflns_limit_{axis}_max"] = str(int(column.max()))
    finite = d[np.isfinite(d) & (d > 0)]
    theta = np.degrees(np.arcsin(np.clip(wavelength / (2 * finite), 0, 1)))
    items["_diffrn_reflns_theta_min"] = f"{theta.min():.3f}"
    items["_diffrn_reflns_theta_max"] = f"{theta.max():.3f}"
    items["_reflns_d_resolution_high"] = f"{finite.min():.3f}"
    if r_int is not None:
        items["_diffrn_reflns_av_R_equivalents"] = f"{r_int['r_int']:.4f}"
        items["_diffrn_reflns_av_unetI/netI"] = f"{r_int['r_sigma']:.4f}"
    return items


def refinement_items(
    crystal: Crystal,
    *,
    n_total: int,
    shift_over_su: np.ndarray | None,
    robust: float,
    instability: float,
    method: str,
) -> dict:
    """Counts, weighting, convergence and the method of the refinement."""
    n_constraints = 0
    for atom, site in zip(crystal.atoms, site_constraints(crystal), strict=True):
        n_constraints += 3 - site.xyz_basis.shape[1]
        if atom.uij is not None:
            n_constraints += 6 - site.u_basis.shape[1]
    if any(atom.charge != 0 for atom in crystal.atoms):
        n_constraints += 1  # the cell stays neutral
    weights = "w = 1/[s^2^(Io)" + (f" + ({instability:g}Io)^2^" if instability else "") + "]"
    if robust > 0:
        details = (
            f"{weights} for R and wR2; the objective is the Cauchy loss of the weighted "
            f"residuals with c = {robust:g} x their robust scale (1.4826 median|r|)"
        )
    else:
        details = f"{weights}; plain weighted least squares"
    items = {
        "_reflns_number_total": str(n_total),
        "_reflns_threshold_expression": "I>3\\s(I)",
        "_refine_ls_structure_factor_coef": "Inet",
        "_refine_ls_matrix_type": "full",
        "_refine_ls_weighting_scheme": "calc" if robust > 0 or instability else "sigma",
        "_refine_ls_weighting_details": details,
        "_refine_ls_number_restraints": "0",
        "_refine_ls_number_constraints": str(n_constraints),
        "_refine_ls_hydrogen_treatment": "refall"
        if any(a.element == "H" for a in crystal.atoms)
        else "undef",
    }
    if shift_over_su is not None and len(shift_over_su):
        items["_refine_ls_shift/su_max"] = f"{float(np.max(shift_over_su)):.3f}"
        items["_refine_ls_shift/su_mean"] = f"{float(np.mean(shift_over_su)):.3f}"
    items["_computing_structure_refinement"] = method
    items["_audit_creation_date"] = datetime.date.today().isoformat()
    return items


def geometry_loops(crystal: Crystal, xyz_covariance: np.ndarray | None) -> list[dict]:
    """``_geom_bond_*`` and ``_geom_angle_*`` with s.u. (:mod:`blochnet.refinement.geometry`)."""
    bonds, angles = bonds_and_angles(crystal, xyz_covariance)
    loops = []
    if bonds:
        loops.append({
            "_geom_bond_atom_site_label_1": [b.label_1 for b in bonds],
            "_geom_bond_atom_site_label_2": [b.label_2 for b in bonds],
            "_geom_bond_distance": [format_su(b.distance, b.su, 4) for b in bonds],
            "_geom_bond_site_symmetry_2": [_code(b.code_2) for b in bonds],
            "_geom_bond_publ_flag": ["?"] * len(bonds),
        })  # fmt: skip
    if angles:
        loops.append({
            "_geom_angle_atom_site_label_1": [a.label_1 for a in angles],
            "_geom_angle_atom_site_label_2": [a.label_2 for a in angles],
            "_geom_angle_atom_site_label_3": [a.label_3 for a in angles],
            "_geom_angle": [format_su(a.angle, a.su, 2) for a in angles],
            "_geom_angle_site_symmetry_1": [_code(a.code_1) for a in angles],
            "_geom_angle_site_symmetry_3": [_code(a.code_3) for a in angles],
            "_geom_angle_publ_flag": ["?"] * len(angles),
        })  # fmt: skip
    return loops


def _code(code: str) -> str:
    return "." if code == "1_555" else code
