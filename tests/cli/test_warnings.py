"""Library warnings on the command line: one yellow line each, and no process-wide hook
installed by merely importing the command-line module."""

import importlib
import warnings

from typer.testing import CliRunner

from blochnet.cli import main


def test_importing_the_command_line_leaves_the_warning_hook_alone():
    before = warnings.showwarning
    importlib.reload(main)
    assert warnings.showwarning is before


def test_a_command_prints_library_warnings_as_one_line(capsys, monkeypatch):
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # restored afterwards
    result = CliRunner().invoke(main.app, ["info", "--help"])
    assert result.exit_code == 0
    assert warnings.showwarning is main._show_warning
    main._show_warning(UserWarning("cell differs"), UserWarning, "x.py", 1)
    assert capsys.readouterr().err.strip() == "warning: cell differs"
