"""The ``blochnet`` command: a typer app whose subcommands live in sibling modules.

Each subcommand module has a ``register(app)`` function; adding a command means adding a
module and one entry to :data:`_COMMAND_MODULES`. The heavy library (torch) is imported
inside the command bodies so that ``blochnet --help`` stays fast.

Errors caused by user input (:class:`~blochnet.errors.BlochnetError`, and a missing file)
are printed as one red line on stderr and the command exits with status 2; anything else
is a bug and shows its traceback. Ctrl-C exits with status 130. ``--debug`` shows the
traceback of user errors too. Library warnings are shown as one yellow line each while a
command runs (the hook is installed by the command, not by importing this module).
"""

from __future__ import annotations

import importlib
import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from blochnet.errors import BlochnetError

__all__ = ["app", "EXIT_USER_ERROR", "EXIT_INTERRUPTED"]

EXIT_USER_ERROR = 2  # the status click uses for usage errors too
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

# a setting that fails its configuration model's validation is the user's, too
_USER_ERRORS = (BlochnetError, FileNotFoundError, ValidationError)
# modules of blochnet.cli, each with register(app)
_COMMAND_MODULES = (
    "pattern", "info", "evaluate", "simulate", "refine", "plot", "report", "hydrogens",
)  # fmt: skip


class _BlochnetGroup(TyperGroup):
    """Top-level group that turns user errors into a message and an exit status."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _USER_ERRORS as error:
            if ctx.meta.get("blochnet.debug"):
                raise
            _print_error(_message(error))
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt as error:
            _print_error(f"interrupted ({error})" if str(error) else "interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None


def _message(error: BaseException) -> str:
    if isinstance(error, FileNotFoundError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or 'file not found'}"
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, item['loc']))}: {item['msg'].removeprefix('Value error, ')}"
            for item in error.errors()
        )
    return str(error) or type(error).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings from the library, as one yellow line on stderr (no source location)."""
    console = Console(stderr=True, highlight=False)
    console.print(Text(f"warning: {message}", style="yellow"), soft_wrap=True)


def _print_error(message: str) -> None:
    console = Console(stderr=True, highlight=False)
    console.print(Text(f"error: {message}", style="bold red"), soft_wrap=True)


def _version_callback(value: bool) -> None:
    if value:
        try:
            number = version("blochnet")
        except PackageNotFoundError:  # running from a source tree that is not installed
            number = "unknown"
        typer.echo(f"blochnet {number}")
        raise typer.Exit()


app = typer.Typer(
    name="blochnet",
    cls=_BlochnetGroup,
    help="Dynamical (Bloch-wave) simulation and refinement of 3D electron diffraction data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,  # help texts are plain text: "blochnet[plot]" is not markup
)


@app.callback()
def _main(
    ctx: typer.Context,
    version_: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_callback,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback of errors.")
    ] = False,
) -> None:
    ctx.meta["blochnet.debug"] = debug
    warnings.showwarning = _show_warning


for _name in _COMMAND_MODULES:
    importlib.import_module(f"blochnet.cli.{_name}").register(app)
