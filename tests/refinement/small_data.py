"""Small synthetic quartz frames shared by the refinement tests (not a test module)."""

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from blochnet.examples import example_path
from blochnet.experiment.config import SelectionRule, SimulationConfig
from blochnet.experiment.specimen import ConstantThickness
from blochnet.experiment.synthetic import GeneratedGeometry, NoiseModel, simulate_experiment
from blochnet.io.cif import read_structure
from blochnet.io.cif_write import write_structure
from blochnet.io.pets_write import write_pets
from blochnet.lattice import direct_matrix

SIMULATION = SimulationConfig(
    n_tilts=3, g_max=1.5, sg_max=0.03, selection=SelectionRule(g_max=1.1, rsg_max=1.0)
)


def small_quartz_frames(crystal, *, seed: int):
    """9 frames over ±20° of ``crystal`` at 500 Å with Poisson noise (``SIMULATION``)."""
    torch.set_num_threads(1)
    dataset, _ = simulate_experiment(
        crystal,
        generated=GeneratedGeometry(rotation=(-20.0, 20.0, 5.0), resolution=1.1),
        thickness=ConstantThickness(value=500.0),
        noise=NoiseModel(dose=1e8, background=1.0),
        config=SIMULATION,
        seed=seed,
    )
    return dataset


def small_refinement_inputs(folder: Path, config: str) -> list[Path]:
    """Files of a small refinement in ``folder``: quartz with O1 displaced by 0.05 Å, the
    frames of :func:`small_quartz_frames` (seed 3) and the TOML ``config``."""
    truth = read_structure(example_path("quartz"))
    data = folder / "small.cif_pets"
    write_pets(small_quartz_frames(truth, seed=3), data)
    start = copy.deepcopy(truth)
    shift = np.linalg.solve(direct_matrix(start.cell), np.array([0.03, -0.025, 0.031]))
    start.atom("O1").xyz = start.atom("O1").xyz + shift
    (folder / "refine.toml").write_text(config)
    return [write_structure(start, folder / "start.cif"), data, folder / "refine.toml"]


def refine_command(inputs, out: Path, *extra: str) -> list[str]:
    """``blochnet refine`` of ``inputs`` (:func:`small_refinement_inputs`) into ``out``, one
    thread, with ``extra`` options."""
    structure, data, config = inputs
    return [
        sys.executable, "-m", "blochnet", "refine", str(structure), str(data),
        "--config", str(config), "--out", str(out), "--threads", "1", *extra,
    ]  # fmt: skip


def run_refine(inputs, out: Path, *extra: str, env=None) -> subprocess.CompletedProcess:
    """:func:`refine_command` run to the end; it must succeed."""
    done = subprocess.run(
        refine_command(inputs, out, *extra), capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    return done
