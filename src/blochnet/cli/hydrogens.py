"""``blochnet hydrogens``: add hydrogen atoms geometrically to a structure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

_HELP = """Add hydrogen atoms to STRUCTURE at geometric positions (SHELXL's HFIX, in short)
and write the result to --out: --group N1=XH3 --group C2=XH2 ... (kinds XH3, XH2, XH,
XH-planar, OH; X–H at neutron internuclear distances, Uiso 1.5 or 1.2 × Ueq of the
carrier). Run it again on refined.cif to let the hydrogens ride on the refined carriers."""


def hydrogens(
    structure: Annotated[Path, typer.Argument(help="structure CIF", show_default=False)],
    group: Annotated[
        list[str], typer.Option(help="CARRIER=KIND, e.g. N1=XH3 (repeat)", show_default=False)
    ],
    out: Annotated[Path, typer.Option(help="CIF to write", show_default=False)],
) -> None:
    from rich.console import Console

    from blochnet.io.cif import read_structure
    from blochnet.io.cif_write import write_structure
    from blochnet.refinement.hydrogens import place_hydrogens

    groups = {}
    for item in group:
        label, _, kind = item.partition("=")
        if not kind:
            raise typer.BadParameter(f"--group {item!r}: expected CARRIER=KIND, e.g. N1=XH3")
        groups[label.strip()] = kind.strip()
    crystal = place_hydrogens(read_structure(structure), groups)
    added = [a.label for a in crystal.atoms if a.element == "H"]
    Console().print(f"wrote {write_structure(crystal, out)} with {', '.join(added)}")


def register(app: typer.Typer) -> None:
    """Add the ``hydrogens`` subcommand to ``app``."""
    app.command("hydrogens", help=_HELP)(hydrogens)
