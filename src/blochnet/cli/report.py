"""``blochnet report``: (re)build ``report.html`` of a refinement folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

_HELP = """Write DIR/report.html from the files blochnet refine wrote in DIR: one
self-contained page (figures embedded, nothing fetched) with the R values per data set and
merged, the atoms with s.u., bond lengths and angles, the difference-map peaks, the figures
and the most disagreeable observations. Figures need matplotlib (the plot extra)."""


def report(
    folder: Annotated[Path, typer.Argument(help="refinement output folder (--out of refine)")],
) -> None:
    from rich.console import Console

    from blochnet.refinement.html_report import write_html_report

    Console().print(f"wrote {write_html_report(folder)}")


def register(app: typer.Typer) -> None:
    """Add the ``report`` subcommand to ``app``."""
    app.command("report", help=_HELP)(report)
