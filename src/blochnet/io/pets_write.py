"""Writing PETS2 ``.cif_pets`` files (the reader is :mod:`blochnet.io.pets`)."""

from __future__ import annotations

from os import PathLike

import numpy as np

from blochnet.crystal import CELL_NAMES
from blochnet.dataset import Dataset
from blochnet.io.atomic import write_text_atomically
from blochnet.io.pets import (
    _CELL_TAGS,
    _FRAME,
    _FRAME_COLS,
    _REFL,
    _REFL_COLS,
    _UB_TAGS,
    _setting_value,
)


def _with_su(value: float, su: float | None) -> str:
    if not su or su <= 0:
        return f"{value:.10g}"
    decimals = max(0, -int(np.floor(np.log10(su))))
    if round(su * 10**decimals) < 2:
        decimals += 1
    return f"{value:.{decimals}f}({round(su * 10**decimals)})"


def _details_text(ds: Dataset) -> list[str]:
    """Details lines, with the typed settings overriding stale values of their keys."""
    typed = {"data_collection_geometry": ds.geometry} | {
        n: getattr(ds, n) for n in ("rotation_axis_position", "mosaicity", "dstarmax")
    }
    lines = []
    for key, value in ds.details.items():
        name = "_".join(key.lower().split())
        if name in typed:
            wanted = typed[name]
            try:
                same = _setting_value(name, value) == wanted
            except ValueError:
                same = False
            if not same:
                value = wanted if isinstance(wanted, str) else f"{wanted or 0.0:.10g}"
        lines.append(f"{key}: {value}")
    return lines


def _pets_text(ds: Dataset) -> str:
    out = [f"data_{ds.block or 'pets'}"]
    for name, tag in zip(CELL_NAMES, _CELL_TAGS, strict=True):
        out.append(f"{tag} {_with_su(getattr(ds.cell, name), ds.cell.su.get(name))}")
    out.append(f"_cell_volume {ds.cell.volume:.10g}")
    out.append(f"_diffrn_radiation_wavelength {ds.wavelength:.10g}")
    ub = np.asarray(ds.ub, dtype=float).reshape(9)
    out += [f"{tag} {value:.10g}" for tag, value in zip(_UB_TAGS, ub, strict=True)]
    out.append("_diffrn_pets_omega 0.0")
    geometry = ds.geometry.replace(" ", "_")
    out.append(f"_diffrn_measurement_data_collection_geometry {geometry}")
    out.append(f"_diffrn_measurement_rotation_axis_position {ds.rotation_axis_position:.10g}")
    for name in ("mosaicity", "dstarmax"):
        if getattr(ds, name) is not None:
            out.append(f"_diffrn_measurement_{name} {getattr(ds, name):.10g}")
    if ds.details:
        out += ["_diffrn_measurement_details", ";", *_details_text(ds), ";"]
    f = ds.frames
    out += ["", "loop_", *(_FRAME + c for c in _FRAME_COLS)]
    for i in range(len(f)):
        u, v, w = f.zone_axis[i]
        out.append(
            f"{f.id[i]:5d} {u:10.6f} {v:10.6f} {w:10.6f} {f.semi_angle[i]:10.6f} "
            f"{f.alpha[i]:12.6f} {f.beta[i]:11.6f} {f.omega[i]:11.6f} {f.scale[i]:.10g}"
        )
    r = ds.reflections
    out += ["", "loop_", *(_REFL + c for c in _REFL_COLS)]
    for (h, k, l), i_obs, sig, fid in zip(r.hkl, r.intensity, r.sigma, r.frame_id, strict=True):
        out.append(f"{h:4d}{k:4d}{l:4d} {i_obs:15.9g} {sig:15.9g} {fid:5d}")
    return "\n".join(out) + "\n"


def write_pets(dataset: Dataset, path: str | PathLike[str]) -> None:
    """Write ``dataset`` as a ``.cif_pets`` file, atomically (temporary file + rename).

    The settings go to structured tags and to the details text (whose keys are kept);
    ``read_pets`` of the result returns the same data set to print precision
    (10 significant digits, 6 decimals for angles and zone axes).
    """
    write_text_atomically(path, _pets_text(dataset))
