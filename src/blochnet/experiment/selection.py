"""Which observations are compared with the simulation, and why the others are not.

:func:`select_reflections` applies the resolution, RSg and hand-omitted parts of the
selection rule (:class:`~blochnet.experiment.config.SelectionRule`); the Bragg-crossing
part of whole-rocking-curve rows needs the integration windows and is applied when the
frame plan is built (:func:`blochnet.experiment.plan.build_plan`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from blochnet.dataset import Dataset
from blochnet.experiment.config import SelectionRule, format_hkl_list
from blochnet.experiment.geometry import beam_directions
from blochnet.lattice import reciprocal_matrix
from blochnet.physics.beams import excitation_errors


@dataclass
class ReflectionSelection:
    """Which observations (rows of the reflection table) are compared, and why not the rest.

    used : (refl,) bool; reason : (refl,) str, '' for used rows; rsg : (refl,) RSg values.
    """

    used: np.ndarray
    reason: np.ndarray
    rsg: np.ndarray
    rule: str

    def counts(self) -> dict[str, int]:
        """Number of used rows and of rows excluded for each reason."""
        out = {"used": int(self.used.sum())}
        for reason in np.unique(self.reason[~self.used]):
            out[str(reason)] = int(np.sum(self.reason == reason))
        return out


def select_reflections(
    dataset: Dataset, rule: SelectionRule, rocking: str = "frame"
) -> ReflectionSelection:
    """Apply the resolution and RSg parts of the selection rule (:class:`SelectionRule`).

    The Bragg-crossing part of whole-rocking-curve rows needs the integration windows; it
    is applied by :class:`FrameSimulator`.
    """
    g = dataset.reflections.hkl @ reciprocal_matrix(dataset.cell).T
    g_norm = np.linalg.norm(g, axis=1)
    s = excitation_errors(
        torch.as_tensor(g)[:, None, :],
        torch.as_tensor(beam_directions(dataset)[dataset.frame_index()] / dataset.wavelength),
    )[:, 0].numpy()
    delta = np.radians(dataset.frames.semi_angle[dataset.frame_index()])
    with np.errstate(divide="ignore", invalid="ignore"):
        rsg = np.abs(s) / (g_norm * delta)
    reason = np.full(len(g_norm), "", dtype=object)
    if (limit := rule.rsg_limit(rocking)) is not None:
        reason[rsg > limit] = f"RSg > {limit:g}"
    reason[g_norm > rule.g_max] = f"|g| > {rule.g_max:g} Å⁻¹"
    if rule.omit:
        omit = np.array(rule.omit, dtype=np.int64)
        hkl = np.rint(dataset.reflections.hkl).astype(np.int64)
        match = (hkl[:, None, :] == omit[None]).all(-1)  # (row, omitted hkl)
        reason[match.any(1)] = "omitted by hand (selection.omit)"
        if not match.any(0).all():
            warnings.warn(
                f"{dataset.source or 'data set'}: selection.omit lists "
                f"{format_hkl_list(omit[~match.any(0)])}, which no row "
                "of the data set has (indices as in the data file, symmetry equivalents not "
                "included)",
                stacklevel=2,
            )
    reason[g_norm == 0] = "000 reflection"
    return ReflectionSelection(reason == "", reason, rsg, rule.describe(rocking))
