"""What is in a file: summaries of a 3D-ED data set or a crystal structure, as plain dicts.

:func:`summarize_file` decides what a file is (a PETS2 ``.cif_pets`` data set or a
structure CIF), reads it with the project's readers and returns a JSON-ready dict (str,
int, float, bool, None, lists and dicts; no NaN). :func:`dataset_summary` and
:func:`structure_summary` do the same for records already in memory. Nothing here prints.

Every summary has ``"kind"`` (``"dataset"`` or ``"structure"``), ``"file"``, ``"block"``,
``"cell"`` and ``"oddities"``: a list of ``{"code": ..., "message": ...}`` for what
deserves a second look (reader warnings included). Units: Å, Å⁻¹ (no 2π), degrees, kV.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from os import PathLike
from pathlib import Path

import gemmi
import numpy as np

from blochnet.crystal import CELL_NAMES, Cell, Crystal
from blochnet.dataset import Dataset
from blochnet.experiment.sanity import close_contacts
from blochnet.lattice import direct_matrix, reciprocal_matrix

__all__ = ["dataset_summary", "is_pets_file", "structure_summary", "summarize_file"]

SPARSE_FRAME = 5  # frames with fewer reflections than this (but some) are flagged
CLOSE_CONTACT = 0.7  # [Å] atoms closer than this are flagged
UISO_RANGE = (0.0, 0.2)  # [Å²] Uiso/Ueq outside (low, high] is flagged
ZONE_AXIS_TOLERANCE = 0.5  # [deg] file zone axis vs. UB + angles
_PETS_TAGS = re.compile(rb"_(diffrn_zone_axis|refln_zone_axis)_id", re.IGNORECASE)


def is_pets_file(path: str | PathLike[str]) -> bool:
    """True for a ``.cif_pets`` file or a CIF with ``_diffrn_zone_axis_id``/``_refln_zone_axis_id``.

    An unreadable file counts as a structure CIF; its reader then reports the problem.
    """
    path = Path(path)
    if path.suffix.lower() == ".cif_pets":
        return True
    try:
        return _PETS_TAGS.search(path.read_bytes()) is not None
    except OSError:
        return False


def summarize_file(path: str | PathLike[str]) -> dict:
    """Read ``path`` as a data set or a structure (see :func:`is_pets_file`) and summarise it."""
    if is_pets_file(path):
        from blochnet.io.pets import read_pets

        return dataset_summary(read_pets(path))
    from blochnet.io.cif import read_structure

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        crystal = read_structure(path)
    summary = structure_summary(crystal)
    notes = [_odd("reader_warning", str(w.message)) for w in caught if w.category is UserWarning]
    summary["oddities"] = notes + summary["oddities"]
    return summary


# --- data set ------------------------------------------------------------------------


def dataset_summary(dataset: Dataset) -> dict:
    """Summary of a 3D-ED data set: experiment, orientation, frames, reflections, oddities."""
    from blochnet.experiment.geometry import zone_axis_deviation

    frames, refl = dataset.frames, dataset.reflections
    ub = np.asarray(dataset.ub, dtype=float)
    u = ub @ np.linalg.inv(reciprocal_matrix(dataset.cell))
    counts = np.array([np.count_nonzero(refl.frame_id == i) for i in frames.id])
    g = np.linalg.norm(refl.hkl @ reciprocal_matrix(dataset.cell).T, axis=1)
    steps = np.diff(frames.alpha)
    ratio = refl.intensity / refl.sigma
    summary = {
        "kind": "dataset",
        "file": dataset.source,
        "block": dataset.block,
        "cell": _cell(dataset.cell),
        "wavelength": dataset.wavelength,
        "voltage_kv": dataset.voltage / 1e3,
        "geometry": dataset.geometry,
        "semi_angle": dataset.semi_angle,
        "semi_angle_range": _range(frames.semi_angle),
        "rotation_axis_position": dataset.rotation_axis_position,
        "mosaicity": dataset.mosaicity,
        "dstarmax": dataset.dstarmax,
        "ub": {
            "matrix": ub.tolist(),
            "determinant": float(np.linalg.det(ub)),
            "inverse_cell_volume": 1.0 / dataset.cell.volume,
            "u_determinant": float(np.linalg.det(u)),
            "u_orthogonality": float(np.abs(u.T @ u - np.eye(3)).max()),
        },
        "frames": {
            "count": len(frames),
            "alpha_range": _range(frames.alpha),
            "alpha_step": _stat(np.median, steps),
            "alpha_step_range": _range(steps),
            "without_reflections": [int(i) for i in frames.id[counts == 0]],
            "reflections_per_frame": _spread(counts),
        },
        "reflections": {
            "rows": len(refl),
            "unique_hkl": len(np.unique(refl.hkl, axis=0)),
            "d_range": _range(1.0 / g),
            "g_range": _range(g),
            "i_over_sigma_median": _stat(np.median, ratio),
            "fraction_above_3_sigma": _stat(np.mean, ratio > 3),
            "negative_intensities": int(np.count_nonzero(refl.intensity < 0)),
        },
    }
    deviation = zone_axis_deviation(dataset) if len(frames) else np.zeros(0)
    summary["oddities"] = _dataset_oddities(dataset, counts, g, deviation)
    return summary


def _dataset_oddities(dataset: Dataset, counts, g, deviation) -> list[dict]:
    frames, refl = dataset.frames, dataset.reflections
    odd = [_odd("reader_warning", text) for text in dataset.warnings]
    sparse = frames.id[(counts > 0) & (counts < SPARSE_FRAME)]
    if sparse.size:
        text = f"{sparse.size} frame(s) with fewer than {SPARSE_FRAME} reflections"
        odd.append(_odd("sparse_frames", f"{text}: ids {sparse.tolist()}"))
    keys = np.column_stack([refl.hkl, refl.frame_id])
    _, first, repeats = np.unique(keys, axis=0, return_index=True, return_counts=True)
    if np.any(repeats > 1):
        row = int(first[np.argmax(repeats > 1)])
        where = f" at line {refl.line[row]}" if refl.line[row] else ""
        example = f"{' '.join(map(str, refl.hkl[row]))} in frame {refl.frame_id[row]}{where}"
        text = f"{int(np.sum(repeats - 1))} duplicated (hkl, frame) row(s), e.g. {example}"
        odd.append(_odd("duplicate_rows", text))
    if dataset.repeats_intensities():
        text = "every reflection listed in several frames has one intensity and s.u. in all "
        text += "of them: rows are whole rocking curves (simulated as integrals along the "
        text += "rotation)"
        odd.append(_odd("whole_rocking_curves", text))
    if dataset.rotation_axis_position != 0:
        text = f"rotation axis position {dataset.rotation_axis_position:g}° is not 0 "
        text += "(the goniometer axis is turned about the beam)"
        odd.append(_odd("rotation_axis_position", text))
    if len(frames) and np.all(frames.scale == 1):
        odd.append(_odd("unit_scales", "every frame scale is 1 (no starting scales in the file)"))
    beyond = g > dataset.dstarmax * 1.001 if dataset.dstarmax else np.zeros(0, dtype=bool)
    if np.any(beyond):
        text = f"{np.count_nonzero(beyond)} reflection(s) beyond dstarmax {dataset.dstarmax:g}"
        odd.append(_odd("beyond_dstarmax", f"{text} Å⁻¹ (largest |g| {g.max():.3f} Å⁻¹)"))
    off = frames.id[deviation > ZONE_AXIS_TOLERANCE]
    if off.size:
        text = f"{off.size} frame(s) whose zone axis differs from UB and the angles by more "
        text += f"than {ZONE_AXIS_TOLERANCE}° (largest {deviation.max():.2f}°)"
        odd.append(_odd("zone_axis_mismatch", f"{text}: ids {off.tolist()[:10]}"))
    return odd


# --- structure -----------------------------------------------------------------------


def structure_summary(crystal: Crystal) -> dict:
    """Summary of a crystal structure: cell, space group, atoms with site symmetry, oddities."""
    from blochnet.sitesym import site_constraints

    constraints = site_constraints(crystal)
    atoms = []
    for atom, site in zip(crystal.atoms, constraints, strict=True):
        su = atom.su
        atoms.append(
            {
                "label": atom.label,
                "element": atom.element,
                "xyz": [float(x) for x in atom.xyz],
                "xyz_su": [su.get(name) for name in "xyz"],
                "occupancy": atom.occupancy,
                "occupancy_su": su.get("occ"),
                "uiso": atom.uiso,
                "uiso_su": None if atom.is_anisotropic else su.get("uiso"),
                "anisotropic": atom.is_anisotropic,
                "site_symmetry": site.symmetry,
                "multiplicity": site.multiplicity,
                "free_xyz": site.xyz_names,
                "free_adp": site.u_names if atom.is_anisotropic else ["Uiso"],
            }
        )
    counts = Counter()
    for atom in atoms:
        counts[atom["element"]] += atom["multiplicity"] * atom["occupancy"]
    rotations = [np.asarray(op.rotation) for op in crystal.operators]
    summary = {
        "kind": "structure",
        "file": crystal.source,
        "block": crystal.block,
        "cell": _cell(crystal.cell),
        "spacegroup": {
            "symbol": crystal.spacegroup,
            "number": _spacegroup_number(crystal.spacegroup),
            "operators": len(crystal.operators),
            "centrosymmetric": any(np.array_equal(r, -np.eye(3)) for r in rotations),
        },
        "atoms": atoms,
        "composition": _composition(counts),
    }
    summary["oddities"] = _structure_oddities(crystal, constraints, atoms)
    return summary


def _structure_oddities(crystal: Crystal, constraints, atoms: list[dict]) -> list[dict]:
    odd = []
    hydrogens = [a["label"] for a in atoms if a["element"] in ("H", "D")]
    if hydrogens:
        odd.append(_odd("hydrogen", f"{len(hydrogens)} hydrogen atom(s): {_names(hydrogens)}"))
    low, high = UISO_RANGE
    for kind, bad in (
        (f"Uiso/Ueq <= {low:g} Å²", [a for a in atoms if a["uiso"] <= low]),
        (f"Uiso/Ueq > {high:g} Å²", [a for a in atoms if a["uiso"] > high]),
        ("occupancy > 1", [a for a in atoms if a["occupancy"] > 1 + 1e-6]),
        ("occupancy <= 0", [a for a in atoms if a["occupancy"] <= 0]),
    ):
        if bad:
            odd.append(_odd("atom_values", f"{kind}: {_names([a['label'] for a in bad])}"))
    for i, j, distance in close_contacts(crystal, CLOSE_CONTACT):
        pair = f"{crystal.atoms[i].label} – {crystal.atoms[j].label}"
        odd.append(_odd("close_contact", f"{pair} {distance:.3f} Å (< {CLOSE_CONTACT} Å)"))
    missing = [a["label"] for a in atoms if _lacks_su(a)]
    if missing and len(missing) == len(atoms):
        odd.append(_odd("su_missing", "no standard uncertainties on the atom coordinates"))
    elif missing:
        odd.append(_odd("su_missing", f"coordinates without s.u.: {_names(missing)}"))
    if not crystal.cell.su:
        odd.append(_odd("su_missing", "no standard uncertainties on the cell"))
    if mismatch := _cell_against_symmetry(crystal):
        odd.append(_odd("cell_symmetry", mismatch))
    return odd


def _cell_against_symmetry(crystal: Crystal, angle_tol: float = 0.01) -> str:
    """What in the cell breaks its space group's symmetry ('' if nothing): the metric
    G = AᵀA must satisfy Rᵀ G R = G for every operator; the parameters of the averaged G
    are what the space group allows."""
    a_matrix = direct_matrix(crystal.cell)
    metric = a_matrix.T @ a_matrix
    rotations = [np.asarray(op.rotation, dtype=float) for op in crystal.operators]
    allowed = sum(r.T @ metric @ r for r in rotations) / max(len(rotations), 1)
    lengths = np.sqrt(np.diag(allowed))
    cosines = [allowed[j, k] / (lengths[j] * lengths[k]) for j, k in ((1, 2), (0, 2), (0, 1))]
    wanted = [*lengths, *np.degrees(np.arccos(np.clip(cosines, -1, 1)))]
    given = crystal.cell.parameters
    wrong = [
        f"{name} {have:.4g}{unit} (symmetry needs {need:.4g}{unit})"
        for name, have, need, unit, tol in zip(
            ("a", "b", "c", "α", "β", "γ"), given, wanted, ["Å"] * 3 + ["°"] * 3,
            [1e-4 * max(given[:3])] * 3 + [angle_tol] * 3, strict=True,
        )
        if abs(have - need) > tol
    ]  # fmt: skip
    if not wrong:
        return ""
    system = _crystal_system(crystal.spacegroup)
    return f"the cell breaks the symmetry of {system}{crystal.spacegroup}: {', '.join(wrong)}"


def _crystal_system(symbol: str) -> str:
    try:
        return f"the {gemmi.SpaceGroup(symbol).crystal_system_str()} space group "
    except (ValueError, RuntimeError):
        return ""


def _lacks_su(atom: dict) -> bool:
    free = ["xyz".index(name) for name in atom["free_xyz"]]
    return any(atom["xyz_su"][k] is None for k in free)


def _composition(counts: Counter) -> dict:
    """Atoms per cell by element; Z = greatest common divisor of integral counts.

    Elements in Hill order (C, H, then alphabetical) when carbon is present, else in the
    order of the atom list (SiO2 rather than O2Si).
    """
    order = _hill_order(counts) if "C" in counts else list(counts)
    per_cell = {element: float(counts[element]) for element in order}
    integral = all(abs(n - round(n)) < 1e-3 and round(n) > 0 for n in per_cell.values())
    z = math.gcd(*(round(n) for n in per_cell.values())) if integral and per_cell else None
    unit = {e: n / z for e, n in per_cell.items()} if z else None
    return dict(per_cell=per_cell, z=z, formula_unit=unit, formula=_formula(unit or per_cell))


def _hill_order(elements) -> list[str]:
    first = [e for e in ("C", "H") if e in elements]
    return first + sorted(e for e in elements if e not in first)


def _formula(counts: dict) -> str:
    return " ".join(f"{e}{'' if abs(n - 1) < 1e-9 else f'{n:g}'}" for e, n in counts.items())


def _spacegroup_number(symbol: str) -> int | None:
    import gemmi

    found = gemmi.find_spacegroup_by_name(symbol)
    return found.number if found is not None else None


# --- helpers -------------------------------------------------------------------------


def _cell(cell: Cell) -> dict:
    values = dict(zip(CELL_NAMES, cell.parameters, strict=True))
    return values | dict(su=dict(cell.su), volume=cell.volume, volume_su=_volume_su(cell))


def _volume_su(cell: Cell) -> float | None:
    """s.u. of the volume from those of the cell parameters (uncorrelated, first order)."""
    if not cell.su:
        return None
    values = dict(zip(CELL_NAMES, cell.parameters, strict=True))
    variance = 0.0
    for name, su in cell.su.items():
        step = 1e-6 * max(abs(values[name]), 1.0)
        plus = Cell(**{**values, name: values[name] + step}).volume
        minus = Cell(**{**values, name: values[name] - step}).volume
        variance += ((plus - minus) / (2 * step) * su) ** 2
    return math.sqrt(variance)


def _odd(code: str, message: str) -> dict:
    return {"code": code, "message": message}


def _names(labels: list[str], limit: int = 12) -> str:
    more = f" and {len(labels) - limit} more" if len(labels) > limit else ""
    return ", ".join(labels[:limit]) + more


def _range(values: np.ndarray) -> list[float] | None:
    values = np.asarray(values, dtype=float)
    return [float(values.min()), float(values.max())] if values.size else None


def _stat(function, values: np.ndarray) -> float | None:
    return float(function(values)) if np.size(values) else None


def _spread(values: np.ndarray) -> dict | None:
    if not np.size(values):
        return None
    return {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())}
