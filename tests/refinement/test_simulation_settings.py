"""The set-up's convergence check on the bundled continuous-rotation quartz data."""

import numpy as np
import pytest

import blochnet.refinement.simulation_settings as setup
from blochnet.examples import example_dataset_path, example_path
from blochnet.experiment.config import SelectionRule, SimulationConfig
from blochnet.experiment.prepared import prepare
from blochnet.io.cif import read_structure
from blochnet.io.pets import read_pets

COARSE = SimulationConfig(
    g_max=1.6, sg_max=0.02, rocking_step=0.05, selection=SelectionRule(g_max=1.6)
)


@pytest.fixture(scope="module")
def quartz():
    dataset = read_pets(example_dataset_path("quartz"))
    with pytest.warns(UserWarning, match="cell differs"):
        data = prepare(read_structure(example_path("quartz")), dataset, COARSE)
    return data.crystal.inverted(), data


def test_the_check_sees_the_rocking_step_alias_the_thick_part_of_a_distribution(
    quartz, monkeypatch
):
    """A rocking curve is about 1/t wide in |s_g|: 0.05° steps sample it well enough at the
    starting thickness but not at twice that, which a thickness distribution reaches."""
    crystal, data = quartz
    finer = COARSE.model_copy(update={"rocking_step": 0.025})
    frames = setup._frame_subset(data.dataset.n_frames, setup.CHECK_FRAMES)
    spread = setup._change(data, crystal, COARSE, finer, 900.0, frames, {})
    monkeypatch.setattr(setup, "SPREAD", np.array([1.0]))
    single = setup._change(data, crystal, COARSE, finer, 900.0, frames, {})
    assert single < setup.TOLERANCE < spread
    assert spread > 5 * single


def test_the_check_halves_the_step_until_converged(quartz):
    crystal, data = quartz
    coarse = data.with_settings(COARSE.model_copy(update={"rocking_step": 0.1}))
    chosen = setup.choose_settings([coarse], crystal, t0=900.0, fixed={"g_max", "sg_max"})
    lines = [line for line in chosen.lines if line.startswith("rocking step")]
    assert lines[0].startswith("rocking step 0.1°") and lines[0].endswith("refined")
    assert lines[1].startswith("rocking step 0.05°") and lines[1].endswith("refined")
    assert lines[2].startswith("rocking step 0.025°: converged")
    assert chosen.simulation.rocking_step == 0.025
    assert chosen.simulation.g_max == COARSE.g_max and chosen.simulation.sg_max == COARSE.sg_max
