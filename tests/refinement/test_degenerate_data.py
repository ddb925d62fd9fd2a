"""Data sets with frames that hold (almost) nothing to fit: a frame without rows, a frame
with a single row. The refinement still gives finite losses, gradients, R values and s.u.,
in float64 and float32 (the per-frame thickness and orientation of the empty frame get no
gradient, not a NaN)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from small_data import SIMULATION, small_quartz_frames

from blochnet.examples import example_path
from blochnet.io.cif import read_structure
from blochnet.refinement.config import LearningRates, RefineConfig
from blochnet.refinement.pipeline import refine
from blochnet.refinement.thickness import ThicknessConfig


@pytest.fixture(scope="module")
def degenerate():
    """Small synthetic quartz data whose first frame lost every row and whose second frame
    keeps one."""
    crystal = read_structure(example_path("quartz"))
    dataset = small_quartz_frames(crystal, seed=5)
    refl = dataset.reflections
    first, second = dataset.frames.id[:2]
    keep = refl.frame_id != first
    keep[np.flatnonzero(refl.frame_id == second)[1:]] = False
    columns = ("hkl", "intensity", "sigma", "frame_id", "line")
    dataset.reflections = dataclasses.replace(refl, **{c: getattr(refl, c)[keep] for c in columns})
    assert not np.isin(first, dataset.reflections.frame_id)
    return crystal, dataset


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_frames_without_usable_reflections_leave_everything_finite(degenerate, tmp_path, precision):
    crystal, dataset = degenerate
    config = RefineConfig(
        simulation=SIMULATION,
        epochs=3,
        thickness=ThicknessConfig(kind="frame", t0=500.0),
        learning_rates=LearningRates(xyz=5e-4, adp=1e-4, orientation=1e-4, thickness=1e-2),
        refine_charge="none",
        auto_setup=False,
        absolute_structure="given",
        plot=False,
        precision=precision,
    )
    result = refine(crystal, [dataset], tmp_path, config)
    assert all(math.isfinite(h.loss) and math.isfinite(h.wr2) for h in result.history)
    report = result.report
    assert all(math.isfinite(report[key]) for key in ("r_obs", "wr2", "gof"))
    for atom in result.crystal.atoms:
        assert np.all(np.isfinite(atom.xyz))
        assert all(math.isfinite(v) for v in atom.su.values())
