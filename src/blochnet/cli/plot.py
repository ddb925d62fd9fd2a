"""``blochnet plot``: draw (or redraw) ``refinement.png`` of a refinement folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

_HELP = """Draw DIR/refinement.png from the report.json, observations.csv and thickness.csv
that blochnet refine wrote in DIR: the thickness distribution of every frame against the
rotation angle, R1(obs) and scale per frame, Io against the scaled Ic, and R values per
epoch. Needs matplotlib (pip install "blochnet[plot]")."""


def plot(
    folder: Annotated[
        Path, typer.Argument(metavar="DIR", help="refinement output folder (--out of refine)")
    ],
) -> None:
    from rich.console import Console

    from blochnet.errors import ConfigurationError
    from blochnet.refinement.figures import matplotlib_available, plot_directory

    if not matplotlib_available():
        raise ConfigurationError('blochnet plot needs matplotlib: pip install "blochnet[plot]"')
    Console().print(f"wrote {plot_directory(folder)}")


def register(app: typer.Typer) -> None:
    """Add the ``plot`` subcommand to ``app``."""
    app.command("plot", help=_HELP)(plot)
