"""Library warnings on the command line: one line each, not repeated within a command."""

from blochnet.cli import main


def test_a_repeated_warning_is_printed_once_per_command(capsys):
    main._shown.clear()
    for _ in range(3):
        main._show_warning(UserWarning("cell differs"), UserWarning, "x.py", 1)
    main._show_warning(UserWarning("another"), UserWarning, "x.py", 2)
    err = capsys.readouterr().err
    assert err.count("warning: cell differs") == 1 and err.count("warning: another") == 1
    main._shown.clear()  # what the command callback does at the start of each command
    main._show_warning(UserWarning("cell differs"), UserWarning, "x.py", 1)
    assert capsys.readouterr().err.count("warning: cell differs") == 1
