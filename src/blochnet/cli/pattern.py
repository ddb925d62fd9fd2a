"""``blochnet pattern``: beams and intensities of one orientation, as a table, CSV or JSON.

The command calls :func:`blochnet.experiment.pattern.simulate_pattern`; everything here is
argument parsing and formatting. torch is imported only when the command runs.
"""

from __future__ import annotations

import csv
import math
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand

from blochnet.errors import ConfigurationError
from blochnet.io import strict_json

if TYPE_CHECKING:
    from blochnet.experiment.pattern import Pattern

__all__ = ["register", "pattern"]

_THICKNESS_FLAGS = ("--thickness", "-t")
_TABLE_MIN_INTENSITY = 1e-4
_UNITS = {"voltage": "kV", "wavelength": "A", "k": "1/A", "g": "1/A", "s_g": "1/A"} | {
    "thickness": "A",
    "intensity": "fraction of the incident beam",
}

_HELP = r"""Simulate the diffraction pattern of one crystal orientation (Bloch waves).

Lists every beam within --g-max and --sg-max with its intensity at each thickness.

Conventions: the incident beam travels along +[uvw] (--zone, direct-lattice
direction); a diffracted beam g has wave vector K+g; the excitation error s_g is
positive when the reciprocal-lattice point lies inside the Ewald sphere; intensities are
fractions of the incident beam (their sum is 1 without absorption); the thickness is
measured along the surface normal (--normal, default: the zone axis).

Thicknesses: --thickness 100 300 500, --thickness 100,300,500 and
--thickness 100 --thickness 300 all work. Put the STRUCTURE file before --thickness
(or after a non-numeric option) so that it is not read as a thickness.

Example: blochnet pattern --example silicon --zone 1 1 0 --thickness 100 300
"""


# choices as enums (typer ≥ 0.12 turns them into click choices); values = lower-case names
Scattering = StrEnum("Scattering", ["lobato", "peng"])  # blochnet.physics.scattering.TABLES
Solver = StrEnum("Solver", ["eigh", "eig", "expm"])  # blochnet.physics.bloch.SOLVERS
OutputFormat = StrEnum("OutputFormat", ["table", "csv", "json"])
SortKey = StrEnum("SortKey", ["intensity", "g"])
Device = StrEnum("Device", ["cpu", "cuda"])


class _PatternCommand(TyperCommand):
    """Command that accepts ``--thickness 100 300 500`` (several space-separated values)."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _expand_thickness_args(args))


def _expand_thickness_args(args: list[str]) -> list[str]:
    """Rewrite ``--thickness A B C`` as ``--thickness A --thickness B --thickness C``.

    Only numeric tokens (or comma lists of numbers) directly after the flag's value are
    taken; ``--`` ends option parsing as usual.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        out.append(arg)
        i += 1
        if arg == "--":
            return out + args[i:]
        if arg in _THICKNESS_FLAGS and i < len(args):
            out.append(args[i])  # the flag's own value, whatever it looks like
            i += 1
        elif not arg.startswith("--thickness="):
            continue
        while i < len(args) and _is_number_list(args[i]):
            out += [_THICKNESS_FLAGS[0], args[i]]
            i += 1
    return out


def _is_number_list(text: str) -> bool:
    try:
        [float(part) for part in text.split(",")]
    except ValueError:
        return False
    return True


def _thickness_labels(values: list[str]) -> list[str]:
    """Split comma lists and check every thickness is a finite number ≥ 0 (kept as typed)."""
    labels = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if not labels:
        raise typer.BadParameter("give at least one thickness [Å]")
    for label in labels:
        try:
            number = float(label)
        except ValueError:
            raise typer.BadParameter(f"{label!r} is not a number") from None
        if not math.isfinite(number) or number < 0:
            raise typer.BadParameter(f"thicknesses must be finite and ≥ 0 Å, got {label}")
    return labels


def pattern(
    structure: Annotated[
        Path | None,
        typer.Argument(
            metavar="STRUCTURE",
            help="CIF file of the structure (or use --example).",
            show_default=False,
        ),
    ] = None,
    example: Annotated[
        str | None, typer.Option(help="Bundled example structure: silicon or quartz.")
    ] = None,
    zone: Annotated[
        tuple[float, float, float],
        typer.Option(help="Beam direction [uvw] (direct lattice), e.g. --zone 1 1 0."),
    ] = ...,
    normal: Annotated[
        tuple[float, float, float] | None,
        typer.Option(help="Surface normal [uvw] (direct lattice); default: the zone axis."),
    ] = None,
    thickness: Annotated[
        list[str],
        typer.Option(
            *_THICKNESS_FLAGS,
            metavar="T",
            help="Thickness(es) [Å] along the surface normal: '100 300', '100,300' or repeated.",
            callback=_thickness_labels,
        ),
    ] = ...,
    voltage: Annotated[float, typer.Option(help="Accelerating voltage [kV].")] = 200.0,
    g_max: Annotated[float, typer.Option(help="Largest |g| of a beam [Å⁻¹].", min=0.0)] = 2.0,
    sg_max: Annotated[float, typer.Option(help="Largest |s_g| of a beam [Å⁻¹].", min=0.0)] = 0.05,
    absorption: Annotated[
        float, typer.Option(help="Absorption κ in U'_g = κ U_g (0: none).", min=0.0)
    ] = 0.0,
    scattering: Annotated[
        Scattering, typer.Option(help="Electron scattering-factor table.")
    ] = Scattering.lobato,
    solver: Annotated[Solver, typer.Option(help="Bloch-wave propagation method.")] = Solver.eigh,
    output_format: Annotated[
        OutputFormat,
        typer.Option(
            "--format", help="Output format; csv and json write nothing but the data to stdout."
        ),
    ] = OutputFormat.table,
    min_intensity: Annotated[
        float | None,
        typer.Option(
            help="List only beams whose largest intensity over the thicknesses is ≥ this "
            "[default: 1e-4 for table, 0 for csv/json].",
            show_default=False,
        ),
    ] = None,
    sort: Annotated[
        SortKey, typer.Option(help="Order: strongest first, or by increasing |g|.")
    ] = SortKey.intensity,
    device: Annotated[Device, typer.Option(help="Where to compute.")] = Device.cpu,
    float32: Annotated[bool, typer.Option("--float32", help="Single precision.")] = False,
) -> None:
    import torch

    from blochnet.cli.runtime import prepare_compute
    from blochnet.experiment.pattern import simulate_pattern
    from blochnet.experiment.sanity import check_structure, check_thickness, check_voltage

    check_voltage(voltage)
    crystal, name = _load_structure(structure, example)
    check_structure(crystal)
    prepare_compute(device.value)
    options = dict(g_max=g_max, sg_max=sg_max, absorption=absorption)
    options |= dict(scattering=scattering.value, solver=solver.value)
    thicknesses = [float(label) for label in thickness]
    check_thickness(thicknesses, "--thickness")
    dtype = torch.float32 if float32 else torch.float64
    result = simulate_pattern(
        crystal,
        zone,
        thicknesses,
        normal=normal,
        voltage=voltage * 1e3,
        **options,
        dtype=dtype,
        device=device.value,
    )
    if min_intensity is None:
        min_intensity = _TABLE_MIN_INTENSITY if output_format is OutputFormat.table else 0.0
    intensity = result.intensities.detach().to("cpu", torch.float64).numpy()
    metadata = {
        "structure": name,
        "spacegroup": crystal.spacegroup,
        "zone": list(zone),
        "normal": None if normal is None else list(normal),
        "voltage": voltage,
        "wavelength": result.wavelength,
        "k": result.k,
        "thickness": thicknesses,
        **options,
        "n_beams": len(result.g),
        "units": _UNITS,
    }
    listing = _Listing(result, intensity, thickness, metadata, min_intensity, sort)
    {"csv": _write_csv, "json": _write_json, "table": _print_table}[output_format](listing)


def register(app: typer.Typer) -> None:
    """Add the ``pattern`` subcommand to ``app``."""
    app.command("pattern", cls=_PatternCommand, help=_HELP)(pattern)


def _load_structure(structure: Path | None, example: str | None):
    from blochnet.examples import example_path
    from blochnet.io.cif import read_structure

    if structure is None and example is None:
        raise ConfigurationError("give a STRUCTURE file (CIF) or --example NAME")
    if structure is not None and example is not None:
        raise ConfigurationError("give a STRUCTURE file or --example NAME, not both")
    if example is not None:
        return read_structure(example_path(example)), f"{example} (bundled example)"
    return read_structure(structure), str(structure)


@dataclass
class _Listing:
    """A simulated pattern and what the output formats need to print it."""

    pattern: Pattern
    intensity: np.ndarray  # (thick, beam) float64
    labels: list[str]  # thicknesses as the user typed them
    metadata: dict
    min_intensity: float
    sort: SortKey

    @property
    def order(self) -> np.ndarray:
        """Indices of the beams to list, in output order."""
        strongest = self.intensity.max(axis=0)
        if self.sort is SortKey.g:
            order = np.lexsort((-strongest, self.pattern.g))
        else:
            order = np.argsort(-strongest, kind="stable")
        return order[strongest[order] >= self.min_intensity]


def _num(x: float) -> str:
    return f"{x + 0.0:.10g}"  # + 0.0 turns -0.0 into 0.0


def _write_csv(listing: _Listing) -> None:
    p = listing.pattern
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["h", "k", "l", "g", "s_g", *(f"I_{label}" for label in listing.labels)])
    for i in listing.order:
        values = (p.g[i], p.excitation_error[i], *listing.intensity[:, i])
        writer.writerow([*(int(x) for x in p.hkl[i]), *(_num(v) for v in values)])


def _write_json(listing: _Listing) -> None:
    p = listing.pattern
    beams = [
        {
            **dict(zip("hkl", (int(x) for x in p.hkl[i]), strict=True)),
            "g": float(p.g[i]),
            "s_g": float(p.excitation_error[i]) + 0.0,
            "intensity": [float(x) for x in listing.intensity[:, i]],
        }
        for i in listing.order
    ]
    # one metadata field and one beam per line: valid JSON that is also readable
    fields = [f'  "{key}": {strict_json.dumps(value)},' for key, value in listing.metadata.items()]
    rows = ",\n    ".join(strict_json.dumps(beam) for beam in beams)
    sys.stdout.write("{\n" + "\n".join(fields) + f'\n  "beams": [\n    {rows}\n  ]\n}}\n')


def _uvw(values) -> str:
    return "[" + " ".join(f"{v:g}" for v in values) + "]"


def _print_table(listing: _Listing) -> None:
    p, m, order = listing.pattern, listing.metadata, listing.order
    console = Console(markup=False, highlight=False)
    header = Table.grid(padding=(0, 2))
    for style in ("bold", "", "bold", ""):
        header.add_column(style=style)
    normal = "= zone" if m["normal"] is None else _uvw(m["normal"])
    header.add_row("structure", m["structure"], "space group", m["spacegroup"])
    header.add_row("voltage", f"{m['voltage']:g} kV", "wavelength", f"{p.wavelength:.6f} Å")
    header.add_row("zone", _uvw(m["zone"]), "normal", normal)
    header.add_row("beams", str(len(p.g)), "g_max", f"{m['g_max']:g} Å⁻¹")
    header.add_row("sg_max", f"{m['sg_max']:g} Å⁻¹", "absorption", f"κ = {m['absorption']:g}")
    header.add_row("scattering", m["scattering"], "thickness", ", ".join(listing.labels) + " Å")
    console.print(header)

    names = ["h", "k", "l", "|g| (Å⁻¹)", "s_g (Å⁻¹)", *(f"I({t} Å)" for t in listing.labels)]
    footer = ["", "", "", "", "Σ all", *(f"{x:.5f}" for x in listing.intensity.sum(axis=1))]
    rows = [
        [*(str(int(x)) for x in p.hkl[i]), f"{p.g[i]:.4f}", f"{p.excitation_error[i] + 0.0:+.5f}"]
        + [f"{x:.5f}" for x in listing.intensity[:, i]]
        for i in order
    ]
    # fixed widths that fit every number (never cut) and the headers on one line if the
    # terminal is wide enough, else every header word; a narrow terminal wraps the lines
    cells = [[*(r[j] for r in rows), footer[j]] for j in range(len(names))]
    widths = [max(len(name), *map(len, c)) for name, c in zip(names, cells, strict=True)]
    if sum(widths) + len(widths) > console.width:
        words = [[*c, *name.split()] for name, c in zip(names, cells, strict=True)]
        widths = [max(map(len, w)) for w in words]
    table = Table(show_footer=True, box=None, padding=(0, 1, 0, 0), pad_edge=False)
    for name, width, total in zip(names, widths, footer, strict=True):
        table.add_column(name, justify="right", footer=total, width=width)
    for row in rows:
        table.add_row(*row)
    console.print()
    console.width = max(console.width, sum(widths) + len(widths))
    console.print(table)
    console.print(f"Σ all: sum over all {len(p.g)} beams.", style="dim")
    if hidden := len(p.g) - len(order):
        threshold = f"I < {listing.min_intensity:g} at every thickness"
        console.print(f"{hidden} beams with {threshold} not listed (--min-intensity).", style="dim")
