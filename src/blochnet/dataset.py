"""Plain records describing a measured 3D-ED data set (one ``.cif_pets`` file).

These are numpy/str records without torch state, filled by :func:`blochnet.io.pets.read_pets`
or built in code (simulations). Geometry derived from them lives in
:mod:`blochnet.experiment.geometry`.

Axis names follow the project glossary (docs/glossary.md): ``frame`` (virtual frames),
``refl`` (observations, one per hkl per frame).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields, replace

import numpy as np

from blochnet.crystal import Cell, Crystal
from blochnet.errors import ConfigurationError

GEOMETRIES = ("continuous rotation", "precession")


def _select(table, index):
    """A copy of a row table (every field an array over rows) keeping rows ``index``."""
    return replace(table, **{f.name: getattr(table, f.name)[index] for f in fields(table)})


def _line_numbers(line: np.ndarray | None, n: int) -> np.ndarray:
    if line is None:
        return np.zeros(n, dtype=np.int64)
    return np.asarray(line, dtype=np.int64)


@dataclass(eq=False)
class FrameTable:
    """One row per virtual frame.

    Attributes
    ----------
    id : (frame,) int, the ``_diffrn_zone_axis_id`` of each frame (unique).
    zone_axis : (frame, 3) float, PETS zone axis u v w as written. PETS points it *towards
        the electron source*, i.e. against the direction of electron travel (see
        :mod:`blochnet.experiment.geometry`).
    semi_angle : (frame,) [deg] integration semi-angle (continuous rotation) or precession
        angle (``_diffrn_zone_axis_precession_angle``).
    alpha, beta, omega : (frame,) [deg] goniometer angles of the frame.
    scale : (frame,) starting scale factor of the frame (1 when the file has none).
    line : (frame,) int, line of the row in the source file (0 when unknown); for messages.
    """

    id: np.ndarray
    zone_axis: np.ndarray
    semi_angle: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    omega: np.ndarray
    scale: np.ndarray
    line: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.line = _line_numbers(self.line, len(self.id))

    def __len__(self) -> int:
        return len(self.id)

    def select(self, index) -> FrameTable:
        """The frames ``index`` (mask, indices or slice) selects."""
        return _select(self, index)


@dataclass(eq=False)
class ReflectionTable:
    """One row per observation (an hkl integrated in one virtual frame).

    Attributes
    ----------
    hkl : (refl, 3) int Miller indices.
    intensity, sigma : (refl,) float, measured intensity (may be negative) and its s.u. (> 0).
    frame_id : (refl,) int, id of the frame (:attr:`FrameTable.id`) the row belongs to.
    line : (refl,) int, line of the row in the source file (0 when unknown); for messages.
    """

    hkl: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray
    frame_id: np.ndarray
    line: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.line = _line_numbers(self.line, len(self.frame_id))

    def __len__(self) -> int:
        return len(self.frame_id)

    def select(self, index) -> ReflectionTable:
        """The rows ``index`` (mask, indices or slice) selects."""
        return _select(self, index)


@dataclass(eq=False)
class Dataset:
    """A 3D-ED data set: cell, orientation, frames and observed intensities.

    Attributes
    ----------
    cell : the cell the orientation was fitted with (the data file's cell).
    wavelength : electron wavelength [Å].
    voltage : accelerating voltage [eV], derived from the wavelength.
    ub : (3, 3) orientation matrix as written, ``UB_ij -> ub[i-1, j-1]``; g_lab = ub @ hkl
        [Å^-1] at zero goniometer angles.
    geometry : ``"continuous rotation"`` or ``"precession"``.
    semi_angle : default integration/precession semi-angle [deg] (median over the frames).
    rotation_axis_position : in-plane angle of the goniometer axis [deg]; 0 when not set.
    mosaicity : [deg], None when absent or 0 (= not set).
    dstarmax : resolution limit of the data reduction [Å^-1], None when absent or 0.
    details : every ``key: value`` line of the free-text details field, keys as written
        (nested lines become ``"group: key"``).
    frames, reflections : the two loops of the file.
    source : file the data set was read from ('' when built in code).
    block : CIF data block name.
    warnings : problems found while reading that did not stop it (caller reports them).
    """

    cell: Cell
    wavelength: float
    voltage: float
    ub: np.ndarray
    geometry: str
    semi_angle: float
    rotation_axis_position: float
    mosaicity: float | None
    dstarmax: float | None
    details: dict[str, str]
    frames: FrameTable
    reflections: ReflectionTable
    source: str = ""
    block: str = "pets"
    warnings: list[str] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    def frame_index(self) -> np.ndarray:
        """(refl,) row index into :attr:`frames` of every reflection's frame."""
        order = np.argsort(self.frames.id)
        pos = np.searchsorted(self.frames.id, self.reflections.frame_id, sorter=order)
        return order[np.clip(pos, 0, len(order) - 1)]

    def repeats_intensities(self) -> bool:
        """Whether rows carry whole-reflection intensities repeated in every frame listing them.

        True when at least one hkl is listed in more than one frame and every such hkl has
        the same intensity and s.u. in all its frames: each row is then the integral over
        the reflection's whole rocking curve, not the part recorded within the frame (PETS2
        with "sum all intensities", DIALS' PETS export).
        """
        refl = self.reflections
        if len(refl) == 0:
            return False
        _, group, counts = np.unique(refl.hkl, axis=0, return_inverse=True, return_counts=True)
        group = group.reshape(-1)
        if counts.max() < 2:
            return False
        for values in (refl.intensity, refl.sigma):
            lo = np.full(len(counts), np.inf)
            hi = np.full(len(counts), -np.inf)
            np.minimum.at(lo, group, values)
            np.maximum.at(hi, group, values)
            if np.any(hi - lo > 1e-9 * np.maximum(np.abs(hi), 1.0)):
                return False
        return True


def check_cell(dataset_cell: Cell, structure_cell: Cell, *, tolerance: float = 0.03) -> str | None:
    """Compare the data file's cell with the structure's cell.

    Returns None when they agree (lengths to 1e-4 relative, angles to 0.01°), a warning
    string for small differences (the data file's cell wins), and raises
    :class:`~blochnet.errors.ConfigurationError` when a length differs by more than
    ``tolerance`` (relative) or an angle by more than 2°.
    """
    d, s = np.array(dataset_cell.parameters), np.array(structure_cell.parameters)
    length = np.abs(d[:3] / s[:3] - 1)
    angle = np.abs(d[3:] - s[3:])
    shown = (
        f"data file cell {' '.join(f'{x:g}' for x in d)}, "
        f"structure cell {' '.join(f'{x:g}' for x in s)}"
    )
    if np.any(length > tolerance) or np.any(angle > 2.0):
        raise ConfigurationError(
            f"the cells differ too much (lengths by up to {length.max():.1%}, angles by up to "
            f"{angle.max():.2f}°; allowed {tolerance:.1%} and 2°): {shown}"
        )
    if np.all(length <= 1e-4) and np.all(angle <= 0.01):
        return None
    return (
        f"the structure's cell differs from the data file's (lengths by up to "
        f"{length.max():.2%}, angles by up to {angle.max():.2f}°); using the data file's cell: "
        f"{shown}"
    )


def structure_in_data_cell(crystal: Crystal, dataset: Dataset) -> Crystal:
    """The structure with the data file's cell (refused if the two differ by more than a few %).

    The orientation matrix was fitted with the data file's cell, so that cell wins; a small
    difference is reported as a warning (once: a run prepares each data set once).
    """
    message = check_cell(dataset.cell, crystal.cell)
    if message:
        warnings.warn(message, stacklevel=2)
    return replace(crystal, cell=dataset.cell)
