"""Read and write PETS2 ``.cif_pets`` files (CIF syntax, parsed with gemmi).

The file holds the cell, wavelength, UB matrix, a free-text details field, one loop
``_diffrn_zone_axis_*`` (one row per virtual frame) and one loop ``_refln_*`` (one row per
observation). Every problem with a file is reported as
:class:`~blochnet.errors.InputFileError` naming the file, the tag or line and what was
expected; problems that do not stop reading go to :attr:`Dataset.warnings`.

Settings can come from structured tags (``_diffrn_measurement_rotation_axis_position`` ...,
written by newer versions; underscore or dotted CIF2 form) or from ``key: value`` lines of
``_diffrn_measurement_details`` / ``_diffrn_reflns_reduction_process``; a structured tag
wins. For ``dstarmax`` and ``mosaicity`` the value 0 means "not set" (None); the rotation
axis position is 0 when not set.
"""

from __future__ import annotations

import re
from os import PathLike
from pathlib import Path

import gemmi
import numpy as np

from blochnet.crystal import CELL_NAMES, Cell, cell_range_problem
from blochnet.dataset import GEOMETRIES, Dataset, FrameTable, ReflectionTable
from blochnet.errors import InputFileError
from blochnet.io.cif_syntax import parse_cif, read_text
from blochnet.lattice import reciprocal_matrix
from blochnet.units import wavelength_to_energy

_CELL_TAGS = tuple(("_cell_length_" if n in "abc" else "_cell_angle_") + n for n in CELL_NAMES)
_WAVELENGTH_RANGE = (0.003, 0.09)  # [Å] electrons of 20 kV to 3 MV
_USED_TAGS = ("_cell_length", "_cell_angle", "_diffrn_", "_refln_", "_pets_")
_UB_TAGS = tuple(f"_diffrn_orient_matrix_UB_{i}{j}" for i in (1, 2, 3) for j in (1, 2, 3))
_FRAME = "_diffrn_zone_axis_"
_FRAME_COLS = ("id", "u", "v", "w", "precession_angle", "alpha", "beta", "omega", "scale")
_REFL = "_refln_"
_REFL_COLS = tuple("index_h index_k index_l intensity_meas intensity_sigma zone_axis_id".split())
_DETAILS_TAGS = ("_diffrn_measurement_details", "_diffrn_reflns_reduction_process")
# structured tag _diffrn_measurement_<name>; key "<name with spaces>" in the details text
_SETTINGS = ("data_collection_geometry", "rotation_axis_position", "mosaicity", "dstarmax")
_NUMBER = re.compile(r"^([+-]?(?:\d+\.?(\d*)|\.(\d+)))([eE][+-]?\d+)?(?:\((\d+)\))?$")
_MISSING = ("?", ".")


def _number(raw: str) -> tuple[float, float | None]:
    """Parse a CIF number with optional s.u. ("0.51538(12)"); ValueError if not a number."""
    match = _NUMBER.match(raw.strip())
    if match is None:
        raise ValueError(raw)
    value = float(match.group(1) + (match.group(4) or ""))
    su = None
    if match.group(5):
        decimals = len(match.group(2) or match.group(3) or "")
        exponent = int(match.group(4)[1:]) if match.group(4) else 0
        su = int(match.group(5)) * 10.0 ** (exponent - decimals)
    return value, su


class _Source:
    """A parsed file: the block and its text lines, for lookups and error messages."""

    def __init__(self, path: Path, block: gemmi.cif.Block, lines: list[str]) -> None:
        self.path, self.block, self.lines = path, block, lines
        self.warnings: list[str] = []

    def fail(self, where: str, problem: str) -> InputFileError:
        return InputFileError(self.path, where, problem)

    def at(self, tag: str) -> str:
        item = self.item(tag)
        return f"line {item.line_number}, {tag}" if item is not None else tag

    def raw(self, *tags: str) -> tuple[str, str] | None:
        """(tag, raw value) of the first of ``tags`` present, or None."""
        for tag in tags:
            value = self.block.find_value(tag)
            if value is not None:
                return tag, value
        return None

    def scalar(self, *tags: str, required: bool = True) -> tuple[float, float | None] | None:
        found = self.raw(*tags)
        if found is None or found[1] in _MISSING:
            if required:
                where, shown = (
                    (self.at(found[0]), repr(found[1])) if found else (tags[0], "nothing")
                )
                raise self.fail(where, f"required value is missing (found {shown})")
            return None
        tag, raw = found
        try:
            value, su = _number(raw)
        except ValueError:
            raise self.fail(self.at(tag), f"expected a number, got {raw!r}") from None
        if not np.isfinite(value):
            raise self.fail(self.at(tag), f"expected a finite number, got {raw!r}")
        return value, su

    def item(self, tag: str) -> gemmi.cif.Item | None:
        item = self.block.find_pair_item(tag)
        return item if item is not None else self.block.find_loop_item(tag)

    def table(self, prefix: str, columns: tuple[str, ...], required: int) -> tuple:
        """Columns (raw strings, None when absent) and per-row line numbers of a loop."""
        items = [self.item(prefix + c) for c in columns]
        present = [item is not None for item in items]
        if not any(present):
            expected = ", ".join(prefix + c for c in columns[:required])
            raise self.fail("", f"no {prefix} loop; expected columns {expected}")
        first = present.index(True)
        item = items[first]
        where = f"line {item.line_number}, loop {prefix}"
        for name, ok in zip(columns[:required], present[:required], strict=True):
            if not ok:
                have = ", ".join(item.loop.tags if item.loop else [prefix + columns[first]])
                raise self.fail(where, f"required column {prefix + name} is missing; found {have}")
        order = [first] + [j for j in range(len(columns)) if j != first]
        table = self.block.find(prefix, [("?" if j != first else "") + columns[j] for j in order])
        for j in range(len(columns)):
            if present[j] and not table.has_column(order.index(j)):
                raise self.fail(
                    self.at(prefix + columns[j]),
                    f"{prefix + columns[j]} is outside the loop of {prefix + columns[first]} "
                    f"(line {item.line_number}); expected one loop with all {prefix} columns",
                )
        cols = [
            list(table.column(order.index(j))) if present[j] else None for j in range(len(columns))
        ]
        if len(table) == 0:
            raise self.fail(where, "the loop has no rows")
        lines = np.zeros(len(table), dtype=np.int64)
        if item.loop is not None:
            lines = _row_lines(self.lines, item.line_number, item.loop.width(), len(table))
        return cols, lines

    def column(self, raw, tag: str, lines: np.ndarray, kind: type = float, default=None):
        """Convert one loop column to a finite numpy array, naming the first bad row."""
        dtype = np.int64 if kind is int else np.float64
        try:
            values = np.array(raw, dtype=dtype)
        except (ValueError, OverflowError):
            values = np.array(
                [self._value(text, tag, lines, i, kind, default) for i, text in enumerate(raw)],
                dtype=dtype,
            )
        if kind is float and not np.all(np.isfinite(values)):
            i = int(np.flatnonzero(~np.isfinite(values))[0])
            raise self.fail(_row(tag, lines, i), f"expected a finite number, got {raw[i]!r}")
        return values

    def _value(self, text: str, tag: str, lines: np.ndarray, i: int, kind: type, default):
        if default is not None and text in _MISSING:
            return default
        try:
            value = int(text) if kind is int else _number(text)[0]
            if kind is int and abs(value) >= 2**53:
                raise ValueError
            return value
        except ValueError:
            what = "an integer (below 2⁵³)" if kind is int else "a number"
            raise self.fail(_row(tag, lines, i), f"expected {what}, got {text!r}") from None


def _row(tag: str, lines: np.ndarray, i: int) -> str:
    return f"line {lines[i]}, {tag}" if lines[i] > 0 else f"{tag}, row {i + 1}"


def _row_lines(lines: list[str], start: int, width: int, nrows: int) -> np.ndarray:
    """1-based line on which each loop row starts (numeric loops; 0 where unsure)."""
    out = np.zeros(nrows, dtype=np.int64)
    count = 0
    for number in range(start, len(lines) + 1):
        for token in lines[number - 1].split("#", 1)[0].split():
            if count == 0 and (token.lower() == "loop_" or token.startswith("_")):
                continue
            if count >= width * nrows:
                return out
            if count % width == 0:
                out[count // width] = number
            count += 1
    return out


def _pick_block(path: Path, doc: gemmi.cif.Document) -> tuple[gemmi.cif.Block, list[str]]:
    if len(doc) == 0:
        raise InputFileError(path, "", "no data block (data_...) in the file")
    hits = [b for b in doc if b.find_value(_UB_TAGS[0]) is not None]
    structure = any(len(b.find_values("_atom_site_fract_x")) for b in doc)
    if not hits and structure and not any(len(b.find_values("_refln_index_h")) for b in doc):
        raise InputFileError(
            path, "", "this is a structure (it lists atom sites and no reflections), not a "
            "3D-ED data file; are the structure and the data file swapped?"
        )  # fmt: skip
    if not hits:
        if len(doc) == 1:
            return doc[0], []
        raise InputFileError(path, "", f"no data block holds {_UB_TAGS[0]}")
    notes = [f"several data blocks; using data_{hits[0].name}"] if len(hits) > 1 else []
    return hits[0], notes


def _read_cell(src: _Source) -> Cell:
    values, su = [], {}
    for name, tag in zip(CELL_NAMES, _CELL_TAGS, strict=True):
        value, sigma = src.scalar(tag)
        if problem := cell_range_problem(name, value):
            raise src.fail(src.at(tag), problem)
        values.append(value)
        if sigma is not None:
            su[name] = sigma
    cell = Cell(*values, su=su)
    if not np.isfinite(cell.volume) or cell.volume <= 0:
        raise src.fail(src.at(_CELL_TAGS[3]), f"the cell angles {values[3:]} do not form a cell")
    volume = src.scalar("_cell_volume", required=False)
    if volume is not None and abs(volume[0] / cell.volume - 1) > 0.01:
        src.warnings.append(f"_cell_volume {volume[0]} differs from the cell's {cell.volume:.3f}")
    return cell


def _read_ub(src: _Source, cell: Cell) -> np.ndarray:
    ub = np.array([src.scalar(tag)[0] for tag in _UB_TAGS]).reshape(3, 3)
    where = src.at(_UB_TAGS[0])
    if np.linalg.cond(ub) > 1e8:
        raise src.fail(where, f"the UB matrix {ub.tolist()} is not invertible")
    u = ub @ np.linalg.inv(reciprocal_matrix(cell))
    deviation = float(np.abs(u.T @ u - np.eye(3)).max())
    if np.linalg.det(u) < 0 or deviation > 0.05:
        raise src.fail(
            where,
            f"UB·B^-1 is not a proper rotation (det {np.linalg.det(u):.4f}, max|U^T U - I| "
            f"{deviation:.3g}): the UB matrix does not fit the cell {cell.parameters}",
        )
    if deviation > 2e-3:
        src.warnings.append(f"UB·B^-1 deviates from a rotation by {deviation:.2g}")
    return ub


def _read_frames(src: _Source) -> FrameTable:
    cols, lines = src.table(_FRAME, _FRAME_COLS, required=8)
    tag = dict(zip(_FRAME_COLS, (_FRAME + c for c in _FRAME_COLS), strict=True))
    ids = src.column(cols[0], tag["id"], lines, int)
    values = {c: src.column(cols[i], tag[c], lines) for i, c in enumerate(_FRAME_COLS[1:8], 1)}
    scale = np.ones(len(ids))
    if cols[8] is not None:
        scale = src.column(cols[8], tag["scale"], lines, default=1.0)
    unique, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        dup = int(unique[counts > 1][0])
        rows = np.flatnonzero(ids == dup)
        raise src.fail(
            _row(tag["id"], lines, rows[1]),
            f"frame id {dup} appears more than once (rows {', '.join(str(r + 1) for r in rows)} "
            "of the loop); frame ids must be unique",
        )
    if np.any(values["precession_angle"] < 0):
        i = int(np.flatnonzero(values["precession_angle"] < 0)[0])
        raise src.fail(_row(tag["precession_angle"], lines, i), "expected a semi-angle >= 0")
    if np.any(scale <= 0):
        src.warnings.append(f"frames with scale <= 0: ids {ids[scale <= 0].tolist()[:10]}")
    zone = np.stack([values["u"], values["v"], values["w"]], axis=1)
    angles = (values[c] for c in ("precession_angle", "alpha", "beta", "omega"))
    return FrameTable(ids, zone, *angles, scale, lines)


def _read_reflections(src: _Source, frames: FrameTable) -> ReflectionTable:
    cols, lines = src.table(_REFL, _REFL_COLS, required=6)
    tags = [_REFL + c for c in _REFL_COLS]
    hkl = np.stack([src.column(cols[i], tags[i], lines, int) for i in range(3)], axis=1)
    intensity, sigma = (src.column(cols[i], tags[i], lines) for i in (3, 4))
    frame_id = src.column(cols[5], tags[5], lines, int)
    known = f"no such frame in the {_FRAME} loop (ids {frames.id.min()}..{frames.id.max()})"
    for bad, tag, problem in (
        (~np.isin(frame_id, frames.id), tags[5], known),
        (sigma <= 0, tags[4], "expected a sigma > 0"),
        (np.all(hkl == 0, axis=1), tags[0], "hkl = 0 0 0 is not a reflection"),
    ):
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            shown = f" (hkl {' '.join(map(str, hkl[i]))}, frame {frame_id[i]}, sigma {sigma[i]})"
            raise src.fail(_row(tag, lines, i), problem + shown)
    empty = np.setdiff1d(frames.id, frame_id)
    if empty.size:
        src.warnings.append(f"{empty.size} frame(s) without reflections: ids {empty.tolist()}")
    return ReflectionTable(hkl, intensity, sigma, frame_id, lines)


def _parse_details(text: str) -> dict[str, str]:
    """``key: value`` lines; ``group: key: value`` and indented continuations nest keys."""
    details: dict[str, str] = {}
    group = ""
    for line in text.replace("\r", "").split("\n"):
        if ":" not in line or line.strip().startswith(";"):
            continue
        key, value = (part.strip() for part in line.split(":", 1))
        if line[:1].isspace() and group:
            key = f"{group}: {key}"
        else:
            group = ""
            nested = re.match(r"^([A-Za-z][^:]*?)\s*:\s*(.*)$", value)
            if nested:
                group, key, value = key, f"{key}: {nested.group(1)}", nested.group(2)
        details[" ".join(key.split())] = value.strip()
    return details


def _setting_value(name: str, raw: str) -> str | float | None:
    """Typed value of a setting from its text; 0 means "not set" for mosaicity/dstarmax."""
    if name == "data_collection_geometry":
        value = " ".join(raw.replace("_", " ").lower().split())
        if value not in GEOMETRIES and raw.strip() not in ("", *_MISSING):
            raise ValueError(f"expected one of {GEOMETRIES}, got {raw!r}")
        return value if value in GEOMETRIES else None
    if raw.strip() in ("", *_MISSING):  # gemmi's as_string gives "" for ? and .
        return None
    try:
        number = _number(raw)[0]
    except ValueError:
        number = np.nan
    if not np.isfinite(number):
        raise ValueError(f"expected a finite number, got {raw!r}")
    return None if number == 0 and name != "rotation_axis_position" else number


def _structured(src: _Source, name: str) -> tuple[str, str | None]:
    found = src.raw(f"_diffrn_measurement_{name}", f"_diffrn_measurement.{name}")
    return (src.at(found[0]), found[1]) if found else ("", None)


def _read_settings(src: _Source) -> tuple[dict[str, str], dict]:
    found = src.raw(*_DETAILS_TAGS)
    details = _parse_details(gemmi.cif.as_string(found[1])) if found else {}
    lookup = {" ".join(k.lower().split()): v for k, v in details.items()}
    settings: dict = {}
    for name in _SETTINGS:
        key = name.replace("_", " ")
        values = []
        for where, raw in (
            _structured(src, name),
            (f"{src.at(found[0]) if found else ''} ({key!r})", lookup.get(key)),
        ):
            if raw is None:
                continue
            try:
                values.append((where, _setting_value(name, gemmi.cif.as_string(raw))))
            except ValueError as exc:
                raise src.fail(where, str(exc)) from None
        if len(values) == 2 and values[0][1] != values[1][1]:
            src.warnings.append(f"{values[0][0]} = {values[0][1]} overrides {values[1][0]}")
        settings[name] = values[0][1] if values else None
    if settings["data_collection_geometry"] is None:
        src.warnings.append("data collection geometry not given; assuming continuous rotation")
        settings["data_collection_geometry"] = "continuous rotation"
    return details, settings


def read_pets(path: str | PathLike[str]) -> Dataset:
    """Read a PETS2 ``.cif_pets`` file into a :class:`Dataset` (see the module docstring)."""
    path = Path(path)
    text = read_text(path, "a PETS2 .cif_pets file")
    doc, lenient = parse_cif(path, text, used=_USED_TAGS)
    block, notes = _pick_block(path, doc)
    src = _Source(path, block, text.split("\n"))
    src.warnings.extend(lenient + notes)
    cell = _read_cell(src)
    wavelength = src.scalar("_diffrn_radiation_wavelength")[0]
    low, high = _WAVELENGTH_RANGE
    if not low <= wavelength <= high:
        raise src.fail(
            src.at("_diffrn_radiation_wavelength"),
            f"{wavelength:g} Å is not the wavelength of electrons in a TEM ({low}–{high} Å, "
            "20 kV to 3 MV); X-ray data, or another unit?",
        )
    ub = _read_ub(src, cell)
    frames = _read_frames(src)
    reflections = _read_reflections(src, frames)
    details, settings = _read_settings(src)
    omega = src.scalar("_diffrn_pets_omega", required=False)
    if omega is not None and omega[0] != 0:
        src.warnings.append(f"_diffrn_pets_omega = {omega[0]} is not used")
    if not np.any(frames.semi_angle > 0):
        src.warnings.append("the integration semi-angle is 0 for every frame (not set?)")
    return Dataset(
        cell=cell,
        wavelength=wavelength,
        voltage=wavelength_to_energy(wavelength),
        ub=ub,
        geometry=settings["data_collection_geometry"],
        semi_angle=float(np.median(frames.semi_angle)),
        rotation_axis_position=settings["rotation_axis_position"] or 0.0,
        mosaicity=settings["mosaicity"],
        dstarmax=settings["dstarmax"],
        details=details,
        frames=frames,
        reflections=reflections,
        source=str(path),
        block=block.name,
        warnings=src.warnings,
    )
