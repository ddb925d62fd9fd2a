"""Small synthetic quartz frames shared by the refinement tests (not a test module)."""

import torch

from blochnet.experiment.config import SelectionRule, SimulationConfig
from blochnet.experiment.specimen import ConstantThickness
from blochnet.experiment.synthetic import GeneratedGeometry, NoiseModel, simulate_experiment

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
