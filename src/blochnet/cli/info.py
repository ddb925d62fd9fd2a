"""``blochnet info``: what is in a data file (``.cif_pets``) or a structure CIF.

The command calls :func:`blochnet.experiment.summary.summarize_file`; everything here is
formatting: rich tables by default, one JSON object with ``--json``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["register", "info"]

_WIDTH = 100  # columns used when stdout is not a terminal (and $COLUMNS is unset)

_HELP = """Summarise a 3D-ED data file (PETS2 .cif_pets) or a structure CIF.

A file is read as a data set when its name ends in .cif_pets or it holds
_diffrn_zone_axis_id / _refln_zone_axis_id; otherwise as a structure.

Data set: cell, wavelength, geometry, orientation matrix, frames,
reflections, resolution, I/σ. Structure: cell, space group, atoms with
site symmetry and free parameters, composition. Both end with a list of
what looks odd. Units: Å, Å⁻¹ (|g| = 1/d), degrees, kV.

Example: blochnet info experiment.cif_pets --json
"""


def info(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", help="A .cif_pets data file or a structure CIF.", show_default=False
        ),
    ],
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print one JSON object and nothing else on stdout."),
    ] = False,
) -> None:
    from blochnet.experiment.summary import summarize_file

    summary = summarize_file(file)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, ensure_ascii=False, allow_nan=False))
        return
    console = Console(highlight=False, markup=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = _WIDTH
    if summary["kind"] == "dataset":
        _print_dataset(console, summary)
    else:
        _print_structure(console, summary)
    _print_oddities(console, summary["oddities"])


def register(app: typer.Typer) -> None:
    """Add the ``info`` subcommand to ``app``."""
    app.command("info", help=_HELP)(info)


# --- numbers -------------------------------------------------------------------------


def with_su(value: float, su: float | None, decimals: int | None = 6) -> str:
    """``0.51538, 0.00012 -> "0.51538(12)"``; without an s.u., ``decimals`` decimals
    (None: the shortest form, up to 10 significant digits)."""
    if not su or su <= 0 or not math.isfinite(su):
        return f"{value:.10g}" if decimals is None else f"{value:.{decimals}f}"
    places = max(0, -math.floor(math.log10(su)))
    if round(su * 10**places) < 2:  # a leading 1 keeps a second digit (0.00012 -> 12)
        places += 1
    return f"{value:.{places}f}({round(su * 10**places)})"


def _or_not_set(value: float | None, unit: str) -> str:
    return "not set" if value is None else f"{value:g}{unit}"


def _cell_rows(cell: dict) -> list[tuple[str, str]]:
    su = cell["su"]
    lengths = "  ".join(f"{n} {with_su(cell[n], su.get(n), None)}" for n in "abc")
    angles = "  ".join(
        f"{greek} {with_su(cell[n], su.get(n), None)}"
        for greek, n in zip("αβγ", ("alpha", "beta", "gamma"), strict=True)
    )
    volume = with_su(cell["volume"], cell["volume_su"], 3)
    return [("cell", f"{lengths} Å"), ("", f"{angles}°"), ("volume", f"{volume} Å³")]


# --- sections ------------------------------------------------------------------------


def _title(console: Console, text: str) -> None:
    console.print()
    console.print(Text(text, style="bold"))


def _grid(console: Console, rows: list[tuple[str, str]]) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key, value)
    console.print(grid)


def _print_dataset(console: Console, s: dict) -> None:
    ub, frames, refl = s["ub"], s["frames"], s["reflections"]
    console.print(Text(f"{s['file']}: 3D-ED data set (PETS2), block data_{s['block']}"))
    semi = f"{s['semi_angle']:g}°"
    kind = "precession angle" if s["geometry"] == "precession" else "integration semi-angle"
    if s["semi_angle_range"] and s["semi_angle_range"][0] != s["semi_angle_range"][1]:
        semi += " (median; {:g}–{:g}°)".format(*s["semi_angle_range"])
    orientation = f"det(UB) {ub['determinant']:.6g} Å⁻³ (1/V {ub['inverse_cell_volume']:.6g})"
    rotation = f"U = UB·B⁻¹: det {ub['u_determinant']:.5f}, max|UᵀU − I| "
    rotation += f"{ub['u_orthogonality']:.1e}"
    _title(console, "Experiment")
    _grid(
        console,
        _cell_rows(s["cell"])
        + [
            ("wavelength", f"{s['wavelength']:.5f} Å ({s['voltage_kv']:.1f} kV)"),
            ("geometry", s["geometry"]),
            ("semi-angle", f"{semi} ({kind})"),
            ("rotation axis", f"{s['rotation_axis_position']:g}° (position in the detector)"),
            ("mosaicity", _or_not_set(s["mosaicity"], "°")),
            ("dstarmax", _or_not_set(s["dstarmax"], " Å⁻¹")),
            ("orientation", orientation),
            ("", rotation),
        ],
    )
    rows = [("frames", str(frames["count"]))]
    if frames["alpha_range"]:
        alpha = "α {:+.2f}° … {:+.2f}°".format(*frames["alpha_range"])
        if frames["alpha_step"] is not None:
            low, high = frames["alpha_step_range"]
            alpha += f", step {frames['alpha_step']:.3f}°"
            alpha += f" ({low:.3f} to {high:.3f})" if f"{low:.3f}" != f"{high:.3f}" else ""
        rows.append(("tilt", alpha))
    empty = frames["without_reflections"]
    rows.append(("empty frames", f"{len(empty)}: ids {_ids(empty)}" if empty else "none"))
    if spread := frames["reflections_per_frame"]:
        text = f"min {spread['min']}, median {spread['median']:g}, max {spread['max']}"
        rows.append(("refl. per frame", text))
    _title(console, "Frames")
    _grid(console, rows)
    rows = [
        ("rows", f"{refl['rows']} (one per hkl per frame)"),
        ("unique hkl", f"{refl['unique_hkl']} (no symmetry merging)"),
    ]
    if refl["rows"]:
        (d_min, d_max), (g_min, g_max) = refl["d_range"], refl["g_range"]
        resolution = f"d {d_max:.3f} to {d_min:.3f} Å (|g| {g_min:.3f} to {g_max:.3f} Å⁻¹)"
        strong = f"{refl['fraction_above_3_sigma']:.1%} with I > 3σ"
        signal = f"median I/σ {refl['i_over_sigma_median']:.2f}; {strong}; "
        signal += f"{refl['negative_intensities']} negative intensities"
        rows += [("resolution", resolution), ("I/σ", signal)]
    _title(console, "Reflections")
    _grid(console, rows)


def _print_structure(console: Console, s: dict) -> None:
    group, comp = s["spacegroup"], s["composition"]
    console.print(Text(f"{s['file']}: crystal structure, block data_{s['block']}"))
    number = f" (No. {group['number']})" if group["number"] else ""
    centric = "centrosymmetric" if group["centrosymmetric"] else "non-centrosymmetric"
    counts = " ".join(f"{e}{n:g}" for e, n in comp["per_cell"].items())
    formula = f"{counts} per cell"
    if comp["z"]:
        formula += f"; Z = {comp['z']} × {comp['formula']}"
    _grid(
        console,
        _cell_rows(s["cell"])
        + [
            (
                "space group",
                f"{group['symbol']}{number}, {group['operators']} operators, {centric}",
            ),
            ("composition", formula),
        ],
    )
    table = Table(box=None, padding=(0, 1, 0, 0), pad_edge=False, header_style="bold")
    for name in ("label", "el", "x", "y", "z", "occ", "Uiso/Ueq", "aniso", "site", "mult"):
        table.add_column(name, justify="left" if name in ("label", "el", "site") else "right")
    table.add_column("free xyz")
    table.add_column("free ADP")
    for a in s["atoms"]:
        xyz = [with_su(x, su) for x, su in zip(a["xyz"], a["xyz_su"], strict=True)]
        table.add_row(
            a["label"],
            a["element"],
            *xyz,
            with_su(a["occupancy"], a["occupancy_su"], 3),
            with_su(a["uiso"], a["uiso_su"], 4),
            "yes" if a["anisotropic"] else "no",
            a["site_symmetry"],
            str(a["multiplicity"]),
            " ".join(a["free_xyz"]) or "–",
            "all 6 Uij" if len(a["free_adp"]) == 6 else " ".join(a["free_adp"]),
        )
    _title(console, f"Atoms ({len(s['atoms'])} in the asymmetric unit)")
    console.print(table)


def _print_oddities(console: Console, oddities: list[dict]) -> None:
    _title(console, "What is odd")
    if not oddities:
        console.print("nothing found")
    for odd in oddities:
        console.print(Text(f"• {odd['message']}"))


def _ids(ids: list[int], limit: int = 30) -> str:
    more = f" … ({len(ids) - limit} more)" if len(ids) > limit else ""
    return ", ".join(map(str, ids[:limit])) + more
