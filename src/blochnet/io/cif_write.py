"""Write a (refined) crystal structure as a CIF file.

The file holds one data block with the cell, the space group and its operators, the
asymmetric unit and, optionally, refinement statistics; Olex2, Mercury, PLATON, gemmi
and :func:`blochnet.io.cif.read_structure` read it. Numbers with a standard
uncertainty are written in parenthesis notation, ``0.47126(12)``; parameters fixed by
site symmetry are written as their exact special value without an s.u.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from importlib import metadata
from os import PathLike
from pathlib import Path

import numpy as np
from gemmi import cif

from blochnet.crystal import CELL_NAMES, UIJ_NAMES, Atom, Cell, Crystal, find_space_group
from blochnet.io.atomic import write_text_atomically
from blochnet.io.cif import CHARGE_TAG
from blochnet.sitesym import SiteConstraint, site_constraints

__all__ = ["format_su", "loop_lines", "program_version", "write_structure"]

_EXTRA_DECIMALS = 3  # a plain value gets up to this many more decimals to stay exact
_SITE_COLUMNS = tuple(
    "label type_symbol fract_x fract_y fract_z U_iso_or_equiv adp_type occupancy "
    "site_symmetry_order".split()
)
_REFINEMENT = {  # key of ``refinement`` -> (CIF tag, format)
    "r_obs": ("_refine_ls_R_factor_gt", "{:.4f}"),
    "r_all": ("_refine_ls_R_factor_all", "{:.4f}"),
    "wr2": ("_refine_ls_wR_factor_ref", "{:.4f}"),
    "gof": ("_refine_ls_goodness_of_fit_ref", "{:.3f}"),
    "n_reflections": ("_refine_ls_number_reflns", "{:d}"),
    "n_parameters": ("_refine_ls_number_parameters", "{:d}"),
    "n_obs": ("_reflns_number_gt", "{:d}"),
    "max_shift_su": ("_refine_ls_shift/su_max", "{:.3f}"),
    "wavelength": ("_diffrn_radiation_wavelength", "{:.6f}"),
}
_TEXT = {  # key of ``refinement`` -> CIF tag of a free-text field
    "details": "_refine_special_details",
    "abs_structure_details": "_refine_ls_abs_structure_details",
}


def format_su(value: float, su: float | None, decimals: int = 6) -> str:
    """A number in CIF parenthesis notation, rounded to its standard uncertainty.

    The s.u. keeps one significant digit, or two when its first digit is 1, and the
    value is rounded to the same decimal place: ``format_su(0.471256, 0.000123)`` gives
    ``"0.47126(12)"``, ``format_su(0.00957, 0.00031)`` gives ``"0.0096(3)"``.

    Parameters
    ----------
    value : the number.
    su : its standard uncertainty; None or 0 for a fixed or unrefined value.
    decimals : decimals of a value without s.u. Up to three more are written when they
        reproduce the value exactly (a value that came from a file with more digits).
    """
    if su is None or su == 0 or not math.isfinite(su):
        return _plain(value, decimals)
    if su < 0:
        raise ValueError(f"negative standard uncertainty {su} for value {value}")
    places = 1 - math.floor(math.log10(su))  # two significant digits
    digits = math.floor(su * 10.0**places + 0.5)
    if digits >= 20:  # first digit 2-9: one significant digit
        places -= 1
        digits = math.floor(su * 10.0**places + 0.5)
    if places >= 0:
        return f"{_plain(value, places, extra=0)}({digits})"
    scale = 10.0**-places  # s.u. of 10 or more: round the value to tens, hundreds, ...
    return f"{round(value / scale) * scale:.0f}({digits * scale:.0f})"


def write_structure(
    crystal: Crystal,
    path: str | PathLike[str],
    *,
    block_name: str | None = None,
    refinement: dict | None = None,
    items: dict[str, str] | None = None,
    loops: list[dict[str, list[str]]] | None = None,
    comments: list[str] | None = None,
) -> Path:
    """Write ``crystal`` to a CIF file, atomically.

    Parameters
    ----------
    crystal : the structure; s.u. are taken from ``cell.su`` and each ``atom.su``.
    path : file to write (replaced if it exists). The text goes to a temporary file in
        the same folder first, which then replaces ``path``: an error leaves either the
        old file or none, never a partial one.
    block_name : name of the data block; default the crystal's block or the file stem.
        Characters that CIF does not allow in a block name become ``_``.
    refinement : optional statistics, any subset of ``r_obs``, ``r_all``, ``wr2``
        (fractions, not percent), ``gof``, ``n_reflections``, ``n_parameters``,
        ``n_obs``, ``max_shift_su``, ``wavelength`` [Å], ``details`` (free text for
        ``_refine_special_details``: reflection selection, thickness model, ...) and
        ``abs_structure_details`` (free text for ``_refine_ls_abs_structure_details``).
    items : further CIF items, tag -> value as text (numbers already formatted, e.g. with
        :func:`format_su`); text with spaces is quoted, text over lines becomes a
        semicolon-delimited field. Written after the refinement statistics.
    loops : further loops, each a dict tag -> column of values as text (equal lengths).
    comments : lines written as CIF comments after the opening lines (``#`` added).

    Returns
    -------
    The path written.
    """
    path = Path(path)
    unknown = set(refinement or {}) - set(_REFINEMENT) - set(_TEXT)
    if unknown:
        known = ", ".join([*_REFINEMENT, *_TEXT])
        raise ValueError(f"unknown refinement keys {sorted(unknown)}; expected some of {known}")
    name = block_name or crystal.block or path.stem
    lines = [f"data_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)[:70] or 'blochnet'}", ""]
    lines += [f"_audit_creation_method {cif.quote(f'blochnet {program_version()}')}", ""]
    lines += [f"# {line}".rstrip() for line in comments or []]
    lines += _cell_lines(crystal.cell)
    lines += _symmetry_lines(crystal)
    if refinement is not None:
        lines += _refinement_lines(refinement)
    if items:
        lines += [*(_item_line(tag, value) for tag, value in items.items()), ""]
    lines += _atom_lines(crystal, site_constraints(crystal))
    for loop in loops or []:
        lines += ["", *loop_lines(loop)]
    write_text_atomically(path, "\n".join(lines) + "\n")
    return path


# --- sections ------------------------------------------------------------------------


def _cell_lines(cell: Cell) -> list[str]:
    lines = []
    for name, value in zip(CELL_NAMES, cell.parameters, strict=True):
        kind = "length" if len(name) == 1 else "angle"
        lines.append(f"_cell_{kind}_{name:<6} {format_su(value, cell.su.get(name), 4)}")
    volume, volume_su = _volume(cell)
    return [*lines, f"_cell_volume {format_su(volume, volume_su, 4)}", ""]


def _volume(cell: Cell) -> tuple[float, float | None]:
    """Cell volume [Å^3] and its s.u. from uncorrelated cell s.u. (None without any)."""
    if not cell.su:
        return cell.volume, None
    cosines = np.cos(np.radians(cell.parameters[3:]))
    root = cell.volume / (cell.a * cell.b * cell.c)  # sqrt(1 - Σcos² + 2 Π cos)
    gradient = [cell.volume / length for length in cell.parameters[:3]]
    for i in range(3):  # dV/dα = abc sin α (cos α - cos β cos γ) / root, per degree
        j, k = [m for m in range(3) if m != i]
        sine = np.sin(np.radians(cell.parameters[3 + i]))
        partial = cosines[i] - cosines[j] * cosines[k]
        gradient.append(cell.volume / root**2 * sine * partial * np.pi / 180)
    sigma = [cell.su.get(name, 0.0) for name in CELL_NAMES]
    return cell.volume, float(np.sqrt(np.sum((np.array(gradient) * sigma) ** 2)))


def _symmetry_lines(crystal: Crystal) -> list[str]:
    spacegroup = find_space_group(crystal.operators)
    name = crystal.spacegroup or (spacegroup.xhm() if spacegroup else "?")
    lines = [f"_space_group_name_H-M_alt {cif.quote(name)}"]
    if spacegroup is not None:
        lines.append(f"_space_group_name_Hall {cif.quote(spacegroup.hall)}")
        lines.append(f"_space_group_IT_number {spacegroup.number}")
    lines += ["", "loop_", "_space_group_symop_id", "_space_group_symop_operation_xyz"]
    lines += [f"{i} {cif.quote(op.triplet())}" for i, op in enumerate(crystal.operators, 1)]
    return [*lines, ""]


def _refinement_lines(refinement: dict) -> list[str]:
    lines = ["_diffrn_radiation_type electron"]
    for key, (tag, style) in _REFINEMENT.items():
        if (value := refinement.get(key)) is not None:
            lines.append(f"{tag} {style.format(int(value) if 'd' in style else float(value))}")
    for key, tag in _TEXT.items():
        if details := refinement.get(key):
            text = re.sub(r"^;", " ;", details.rstrip("\n"), flags=re.MULTILINE)  # not a delimiter
            lines += [tag, ";", text, ";"]
    return [*lines, ""]


def _item_line(tag: str, value: str) -> str:
    value = str(value)
    if "\n" in value:
        text = re.sub(r"^;", " ;", value.rstrip("\n"), flags=re.MULTILINE)
        return f"{tag}\n;\n{text}\n;"
    return f"{tag} {_value(value)}"


def _value(text: str) -> str:
    """A CIF value: bare where CIF allows it (``.`` and ``?`` stay the inapplicable and
    unknown markers, ``3_665`` stays a symmetry code), quoted otherwise."""
    reserved = ("data_", "loop_", "save_", "global_", "stop_")
    if text in (".", "?") or (
        re.fullmatch(r"[^\s'\"_#$\[\];][^\s'\"]*", text) and not text.lower().startswith(reserved)
    ):
        return text
    return cif.quote(text)


def loop_lines(loop: dict[str, list[str]]) -> list[str]:
    lengths = {len(column) for column in loop.values()}
    if len(lengths) != 1:
        raise ValueError(f"loop columns of unequal length: {sorted(lengths)} ({list(loop)})")
    rows = zip(*loop.values(), strict=True)
    return ["loop_", *loop, *(" ".join(_value(str(v)) for v in row) for row in rows)]


def _atom_lines(crystal: Crystal, constraints: list[SiteConstraint]) -> list[str]:
    lines = ["loop_", *(f"_atom_site_{column}" for column in _SITE_COLUMNS)]
    pairs = list(zip(crystal.atoms, constraints, strict=True))
    lines += [_site_row(atom, constraint) for atom, constraint in pairs]
    aniso = [_aniso_row(atom, constraint) for atom, constraint in pairs if atom.uij is not None]
    if aniso:
        lines += ["", "loop_", "_atom_site_aniso_label"]
        lines += [f"_atom_site_aniso_U_{name[1:]}" for name in UIJ_NAMES] + aniso
    if any(atom.charge != 0 for atom in crystal.atoms):  # no core CIF item holds a site charge
        lines += ["", "loop_", f"{CHARGE_TAG}_label", f"{CHARGE_TAG}_charge"]
        lines += [
            f"{cif.quote(a.label)} {format_su(a.charge, a.su.get('charge'), 4)}"
            for a in crystal.atoms
        ]
    return lines


def _site_row(atom: Atom, constraint: SiteConstraint) -> str:
    xyz = [  # a coordinate fixed by symmetry is written as its exact special value
        _plain(_snap(special), 6) if _fixed(row) else format_su(value, atom.su.get(axis))
        for axis, value, row, special in zip(
            "xyz", atom.xyz, constraint.xyz_basis, constraint.xyz0, strict=True
        )
    ]
    fields = [cif.quote(atom.label), cif.quote(atom.element), *xyz]
    fields.append(format_su(atom.uiso, atom.su.get("uiso"), 5))
    fields.append("Uani" if atom.is_anisotropic else "Uiso")
    fields += [format_su(atom.occupancy, atom.su.get("occ"), 4), str(constraint.order)]
    return " ".join(fields)


def _aniso_row(atom: Atom, constraint: SiteConstraint) -> str:
    fields = [cif.quote(atom.label)]
    for name, value, row in zip(UIJ_NAMES, atom.uij, constraint.u_basis, strict=True):
        fields.append(_plain(0.0, 5) if _fixed(row) else format_su(value, atom.su.get(name), 5))
    return " ".join(fields)


def _fixed(row: np.ndarray) -> bool:
    """True for a component that site symmetry fixes (its row of the basis is zero)."""
    return not np.any(np.abs(row) > 1e-9)


# --- numbers and files ---------------------------------------------------------------


def _plain(value: float, decimals: int, *, extra: int = _EXTRA_DECIMALS) -> str:
    """``value`` with ``decimals`` decimals, or up to ``extra`` more if that makes it exact."""
    exact = (
        p
        for p in range(decimals, decimals + extra + 1)
        if abs(round(value, p) - value) <= 1e-12 * abs(value)
    )
    places = next(exact, decimals)
    text = f"{value:.{places}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _snap(value: float) -> float:
    """A coordinate fixed by symmetry, as the exact fraction it approximates."""
    fraction = Fraction(float(value)).limit_denominator(48)
    return float(fraction) if abs(float(fraction) - value) < 1e-3 else float(value)


def program_version() -> str:
    """The installed blochnet version ("unknown" when not installed)."""
    try:
        return metadata.version("blochnet")
    except metadata.PackageNotFoundError:
        return "unknown"
