"""Exceptions raised by blochnet.

Every error caused by user input derives from :class:`BlochnetError`; the command line
prints its message (one readable paragraph) and exits with a non-zero status instead of
showing a traceback.
"""

from __future__ import annotations

from os import PathLike


class BlochnetError(Exception):
    """Base class of all errors that blochnet reports to the user."""


class InputFileError(BlochnetError):
    """A file that cannot be used as given.

    Parameters
    ----------
    path : path of the offending file.
    where : the tag, field, column or line that is wrong (``"line 12"``,
        ``"_cell_length_a"``, ``"atom O1: _atom_site_fract_x"``); empty when the whole
        file is at fault.
    problem : what is wrong and what was expected, as one sentence.
    """

    def __init__(self, path: str | PathLike[str], where: str, problem: str) -> None:
        self.path = str(path)
        self.where = where
        self.problem = problem
        location = f"{self.path}: {where}" if where else self.path
        super().__init__(f"{location}: {problem}")


class ConfigurationError(BlochnetError):
    """An option or parameter value that cannot be used."""


class StructureError(BlochnetError):
    """A structure that cannot be used as given: its symmetry, or an atom's site (e.g. an
    atom ambiguously close to a special position)."""


class RefinementError(BlochnetError):
    """The refinement cannot go on (non-finite values, nothing to refine, a checkpoint of
    another refinement); the last good state was kept."""
