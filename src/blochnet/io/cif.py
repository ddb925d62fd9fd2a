"""Read a crystal structure (cell, space group, asymmetric unit) from a CIF file.

The file is parsed with gemmi; numbers keep their standard uncertainties
(``"0.51538(12)"`` gives 0.51538 and s.u. 0.00012), which gemmi's own converters drop.
Every problem with the file is reported as :class:`~blochnet.errors.InputFileError`
naming the file, the tag or atom, and what was expected.
"""

from __future__ import annotations

import re
import warnings
from os import PathLike
from pathlib import Path

import gemmi
import numpy as np
from gemmi import cif

from blochnet.crystal import CELL_NAMES, UIJ_NAMES, Atom, Cell, Crystal, cell_range_problem
from blochnet.errors import InputFileError
from blochnet.io.cif_symmetry import read_symmetry
from blochnet.io.cif_syntax import parse_cif
from blochnet.lattice import uij_to_cartesian

__all__ = ["element_symbol", "parse_number", "read_structure"]

_USED_TAGS = (
    "_cell_length",
    "_cell_angle",
    "_symmetry_",
    "_space_group",
    "_atom_site",
    "_atom_type",
    "_blochnet_",
)
_B_TO_U = 1.0 / (8.0 * np.pi**2)  # U = B / (8 π²)
# partial charges for scattering (no core CIF item holds a charge per site): a loop of
# CHARGE_TAG_label and CHARGE_TAG_charge [e], written by blochnet's refinements
CHARGE_TAG = "_blochnet_atom_site"
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)(?:[eE]([+-]?\d+))?(?:\((\d+)\))?$")
_SITE_COLUMNS = tuple(
    "fract_x label type_symbol fract_y fract_z occupancy U_iso_or_equiv B_iso_or_equiv "
    "adp_type thermal_displace_type calc_flag".split()
)
_SITE_NUMBERS = {
    "x": "fract_x",
    "y": "fract_y",
    "z": "fract_z",
    "occ": "occupancy",
    "uiso": "U_iso_or_equiv",
    "biso": "B_iso_or_equiv",
}
_ANISO_INDICES = ("11", "22", "33", "12", "13", "23")


def parse_number(text: str) -> tuple[float, float | None] | None:
    """Parse a CIF number with optional s.u.: ``"0.51538(12)"`` -> ``(0.51538, 0.00012)``.

    Returns None for the CIF null values ``?`` and ``.``; raises ValueError for text
    that is not a number.
    """
    if cif.is_null(text.strip()):
        return None
    text = cif.as_string(text).strip()
    match = _NUMBER.match(text)
    if match is None:
        raise ValueError(f"not a number: {text!r}")
    mantissa, exponent, su_digits = match.groups()
    value = float(text.split("(")[0])
    if su_digits is None:
        return value, None
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return value, float(f"{su_digits}e{int(exponent or 0) - decimals}")


def read_structure(path: str | PathLike[str]) -> Crystal:
    """Read the cell, space group and asymmetric unit of a CIF file.

    Parameters
    ----------
    path : CIF file. When several data blocks hold ``_atom_site_fract_x`` the first
        is used (with a warning); blocks without atoms (e.g. JANA's global block) are
        skipped, and tags missing from the atom block are looked up in the others.

    Returns
    -------
    Crystal with every space-group operator (centring included, identity first) and
    the atoms of the asymmetric unit; s.u. are kept in the ``su`` dictionaries.
    """
    path = Path(path)
    document = _read_document(path)
    block, others = _atom_block(document, path)
    blocks = [block, *others]
    cell = _read_cell(path, blocks)
    operators, spacegroup = read_symmetry(path, blocks)
    atoms = _read_atoms(path, block, cell)
    return Crystal(cell, spacegroup, operators, atoms, source=str(path), block=block.name)


# --- document and blocks -------------------------------------------------------------


def _read_document(path: Path) -> cif.Document:
    try:
        text = path.read_bytes().decode("utf-8-sig", errors="replace")
        text = text.replace("\r\n", "\n").replace("\r", "\n")  # mixed line endings
    except OSError as error:
        raise InputFileError(path, "", f"cannot read the file ({error.strerror})") from None
    if not text.strip():
        raise InputFileError(path, "", "the file is empty; expected a CIF with a structure")
    document, notes = parse_cif(path, text, used=_USED_TAGS)
    for note in notes:
        warnings.warn(f"{path}: {note}", stacklevel=4)
    return document


def _atom_block(document: cif.Document, path: Path) -> tuple[cif.Block, list[cif.Block]]:
    blocks = list(document)
    with_atoms = [b for b in blocks if len(b.find_values("_atom_site_fract_x")) > 0]
    if not with_atoms and any(len(b.find_values("_refln_index_h")) for b in blocks):
        raise InputFileError(
            path, "", "this is a 3D-ED data file (it lists reflections and no atom sites), "
            "not a structure; are the structure and the data file swapped?"
        )  # fmt: skip
    if not with_atoms:
        names = ", ".join(f"data_{b.name}" for b in blocks) or "none"
        raise InputFileError(
            path, "_atom_site_fract_x", f"no data block lists atom sites (blocks: {names})"
        )
    block = with_atoms[0]
    if len(with_atoms) > 1:
        ignored = ", ".join(f"data_{b.name}" for b in with_atoms[1:])
        message = f"several data blocks list atoms; using data_{block.name}, ignoring {ignored}"
        warnings.warn(f"{path}: {message}", stacklevel=3)
    return block, [b for b in blocks if b.name != block.name]


def _columns(block: cif.Block, prefix: str, anchor: str, names: tuple[str, ...]):
    """Raw values of the columns ``prefix + name`` in the loop (or pairs) of ``anchor``.

    Returns the number of rows and a dict of the present columns (the anchor included).
    """
    if len(block.find_values(prefix + anchor)) == 0:
        return 0, {}
    others = [name for name in names if name != anchor]
    table = block.find(prefix, [anchor] + ["?" + name for name in others])
    columns = {anchor: [row[0] for row in table]}
    for i, name in enumerate(others, start=1):
        if table.has_column(i):
            columns[name] = [row[i] for row in table]
    return len(table), columns


def _number(path: Path, where: str, raw: str | None, *, required: bool = True):
    """A (value, su) pair, None for a missing optional value; InputFileError otherwise."""
    if raw is None:
        if required:
            raise InputFileError(path, where, "missing; expected a number")
        return None
    try:
        parsed = parse_number(raw)
    except ValueError:
        raise InputFileError(path, where, f"expected a number, got {raw!r}") from None
    if parsed is None and required:
        raise InputFileError(path, where, f"missing value {raw!r}; expected a number")
    if parsed is not None and not all(np.isfinite(v) for v in parsed if v is not None):
        raise InputFileError(path, where, f"expected a finite number, got {raw!r}")
    return parsed


# --- cell ----------------------------------------------------------------------------


def _read_cell(path: Path, blocks: list[cif.Block]) -> Cell:
    values, su = [], {}
    for name in CELL_NAMES:
        kind = "length" if len(name) == 1 else "angle"
        tag = f"_cell_{kind}_{name}"
        raw = next((b.find_value(tag) for b in blocks if b.find_value(tag) is not None), None)
        value, sigma = _number(path, tag, raw)
        values.append(value)
        if sigma is not None:
            su[name] = sigma
        if problem := cell_range_problem(name, value):
            raise InputFileError(path, tag, problem)
    ca, cb, cg = np.cos(np.radians(values[3:]))
    if 1 - ca**2 - cb**2 - cg**2 + 2 * ca * cb * cg <= 1e-12:
        problem = f"the angles {values[3:]} do not form a cell (zero or imaginary volume)"
        raise InputFileError(path, "_cell_angle_alpha/beta/gamma", problem)
    return Cell(*values, su=su)


# --- atoms ---------------------------------------------------------------------------


def _read_atoms(path: Path, block: cif.Block, cell: Cell) -> list[Atom]:
    n_rows, columns = _columns(block, "_atom_site_", "fract_x", _SITE_COLUMNS)
    for name in ("fract_y", "fract_z"):
        if name not in columns:
            raise InputFileError(path, f"_atom_site_{name}", "missing column in the atom loop")
    aniso = _read_aniso(path, block)
    atoms, seen = [], set()
    for row in range(n_rows):
        value = {name: column[row] for name, column in columns.items()}
        label = cif.as_string(value.get("label", "?"))
        if cif.is_null(value.get("label", "?")):
            label = f"atom{row + 1}"
        if cif.as_string(value.get("calc_flag", "")).lower() == "dum":
            warnings.warn(f"{path}: skipping dummy atom {label}", stacklevel=3)
            continue
        atoms.append(_read_atom(path, label, value, aniso.get(label), cell))
        seen.add(label)
    for label in aniso.keys() - seen:
        warnings.warn(f"{path}: aniso row {label!r} matches no atom; ignored", stacklevel=3)
    _read_charges(path, block, atoms)
    return atoms


def _read_charges(path: Path, block: cif.Block, atoms: list[Atom]) -> None:
    """Partial charges from the ``CHARGE_TAG`` loop, where the file has one."""
    n_rows, columns = _columns(block, f"{CHARGE_TAG}_", "label", ("label", "charge"))
    if n_rows and "charge" not in columns:
        raise InputFileError(path, f"{CHARGE_TAG}_charge", "missing column")
    by_label = {atom.label: atom for atom in atoms}
    for row in range(n_rows):
        label = cif.as_string(columns["label"][row])
        if label not in by_label:
            raise InputFileError(
                path, f"{CHARGE_TAG}_label", f"{label!r} matches no atom of _atom_site_label"
            )
        where = f"atom {label}: {CHARGE_TAG}_charge"
        charge, su = _number(path, where, columns["charge"][row])
        by_label[label].charge = charge
        if su is not None:
            by_label[label].su["charge"] = su


def _read_atom(path: Path, label: str, value: dict, aniso, cell: Cell) -> Atom:
    where = f"atom {label}: _atom_site_"
    parsed = {
        name: _number(path, f"{where}{tag}", value.get(tag), required=tag.startswith("fract"))
        for name, tag in _SITE_NUMBERS.items()
    }
    uiso, biso = parsed.pop("uiso"), parsed.pop("biso")
    if uiso is None and biso is not None:  # B = 8 π² U
        uiso = (biso[0] * _B_TO_U, None if biso[1] is None else biso[1] * _B_TO_U)
    parsed["uiso"] = uiso
    su = {name: p[1] for name, p in parsed.items() if p is not None and p[1] is not None}
    uij = None
    if aniso is not None:
        uij, aniso_su = aniso
        su.update(aniso_su)
        uiso = (float(np.trace(uij_to_cartesian(cell, uij))) / 3.0, None)
    elif uiso is None:
        raise InputFileError(
            path,
            f"{where}U_iso_or_equiv",
            "missing; expected Uiso [Å²] (or B_iso_or_equiv), or an _atom_site_aniso_ row",
        )
    adp_type = cif.as_string(value.get("adp_type", value.get("thermal_displace_type", "?")))
    if aniso is None and adp_type.lower() in ("uani", "bani"):
        message = f"atom {label} is {adp_type} but has no aniso row; using Uiso"
        warnings.warn(f"{path}: {message}", stacklevel=4)
    return Atom(
        label=label,
        element=_read_element(path, label, value),
        xyz=np.array([parsed[axis][0] for axis in "xyz"]),
        occupancy=1.0 if parsed["occ"] is None else parsed["occ"][0],
        uiso=uiso[0],
        uij=uij,
        su=su,
    )


def _read_element(path: Path, label: str, value: dict) -> str:
    raw = value.get("type_symbol")
    if raw is not None and not cif.is_null(raw):
        tag, text = "_atom_site_type_symbol", cif.as_string(raw)
    else:
        tag, text = "_atom_site_label", label
    element = element_symbol(text)
    if element is None:
        raise InputFileError(
            path,
            f"atom {label}: {tag}",
            f"unknown element {text!r}; expected a chemical symbol such as 'Si' or 'O2-'",
        )
    return element


def element_symbol(text: str) -> str | None:
    """Element of a type symbol or label: 'O2-' -> 'O', 'CL1' -> 'Cl', 'D1' -> 'H'."""
    match = re.match(r"[A-Za-z]+", text.strip())
    if match is None:
        return None
    letters = match.group(0)
    for candidate in (letters[:2], letters[:1]) if len(letters) > 1 else (letters,):
        element = gemmi.Element(candidate)
        if element.atomic_number > 0:
            return "H" if element.atomic_number == 1 else element.name
    return None


def _read_aniso(path: Path, block: cif.Block) -> dict[str, tuple[np.ndarray, dict]]:
    names = ("label",) + tuple(f"{k}_{ij}" for k in "UB" for ij in _ANISO_INDICES)
    n_rows, columns = _columns(block, "_atom_site_aniso_", "label", names)
    if n_rows == 0:
        if any(len(block.find_values(f"_atom_site_aniso_{k}_11")) for k in "UB"):
            raise InputFileError(path, "_atom_site_aniso_label", "missing column")
        return {}
    kind = "U" if any(f"U_{ij}" in columns for ij in _ANISO_INDICES) else "B"
    scale = 1.0 if kind == "U" else _B_TO_U
    for ij in _ANISO_INDICES:
        if f"{kind}_{ij}" not in columns:
            raise InputFileError(path, f"_atom_site_aniso_{kind}_{ij}", "missing column")
    rows = {}
    for row in range(n_rows):
        label = cif.as_string(columns["label"][row])
        uij, su = np.zeros(6), {}
        for k, (ij, name) in enumerate(zip(_ANISO_INDICES, UIJ_NAMES, strict=True)):
            tag = f"atom {label}: _atom_site_aniso_{kind}_{ij}"
            value, sigma = _number(path, tag, columns[f"{kind}_{ij}"][row])
            uij[k] = value * scale
            if sigma is not None:
                su[name] = sigma * scale
        rows[label] = (uij, su)
    return rows
