"""Orientation models: free angles per frame and the learned orientation drift."""

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from blochnet.errors import ConfigurationError
from blochnet.examples import example_path
from blochnet.experiment.config import SelectionRule, SimulationConfig
from blochnet.experiment.geometry import beam_directions
from blochnet.experiment.specimen import ConstantThickness
from blochnet.experiment.synthetic import GeneratedGeometry, simulate_experiment
from blochnet.io.cif import read_structure
from blochnet.refinement.config import LearningRates, RefineConfig
from blochnet.refinement.engine import optimise_adam
from blochnet.refinement.model import refinement_for
from blochnet.refinement.orientation import (
    FrameOrientation,
    NeuralOrientationDrift,
    OrientationConfig,
    make_orientation_model,
)
from blochnet.refinement.report import count_parameters
from blochnet.refinement.thickness import ThicknessConfig

ANGLES = np.linspace(-30.0, 30.0, 31)


def _drift(angles_deg: np.ndarray) -> np.ndarray:
    """A smooth wobble of the goniometer: (frame, 3) rotation vectors [rad], up to 0.15°."""
    x = angles_deg / 30.0
    return np.radians(0.15) * np.stack([np.sin(np.pi * x), 0.6 * np.cos(np.pi * x), x], axis=1)


def test_neural_drift_starts_at_the_file_orientation_and_stays_within_its_bound():
    model = NeuralOrientationDrift(ANGLES, max_rotation_deg=0.5)
    assert torch.equal(model(), torch.zeros(len(ANGLES), 3, dtype=torch.float64))
    with torch.no_grad():
        model.network[-1].bias.fill_(100.0)  # a far larger raw output
    rotation = model().detach()
    assert rotation.max() <= math.radians(0.5)
    assert rotation.min() > 0.999 * math.radians(0.5)


def test_neural_drift_learns_a_smooth_wobble_and_every_layer_gets_gradient():
    model = NeuralOrientationDrift(ANGLES)
    target = torch.as_tensor(_drift(ANGLES))
    loss = ((model() - target) ** 2).sum()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(400):
        optimizer.zero_grad()
        loss = ((model() - target) ** 2).sum()
        loss.backward()
        optimizer.step()
    rms = float(torch.sqrt(((model().detach() - target) ** 2).mean()))
    assert rms < 0.05 * float(target.abs().max())


def test_orientation_models_are_chosen_by_value_and_bad_choices_refused():
    assert isinstance(make_orientation_model("frame", angles_deg=ANGLES), FrameOrientation)
    with_directions = OrientationConfig(kind="neural", use_directions=True).build(
        ANGLES, directions=np.tile([0.0, 0.0, 1.0], (len(ANGLES), 1))
    )
    assert with_directions.n_features == 4
    with pytest.raises(ConfigurationError, match="directions"):
        OrientationConfig(kind="neural", use_directions=True).build(ANGLES)
    with pytest.raises(ConfigurationError, match="unknown orientation model"):
        make_orientation_model("spline", angles_deg=ANGLES)
    with pytest.raises(ValidationError):
        OrientationConfig(kind="spline")
    with pytest.raises(ValidationError):
        RefineConfig.model_validate({"orientation": {"kind": "neural", "width": 3}})


@pytest.fixture(scope="module")
def drifted():
    """Noise-free frames of quartz whose orientations drift smoothly away from the file's,
    and the refinement model with the learned drift, started at the file's orientations."""
    torch.set_num_threads(1)
    crystal = read_structure(example_path("quartz"))
    simulation = SimulationConfig(
        n_tilts=3, g_max=1.5, sg_max=0.03, selection=SelectionRule(g_max=1.1, rsg_max=1.0)
    )
    dataset, _ = simulate_experiment(
        crystal,
        generated=GeneratedGeometry(rotation=(-30.0, 30.0, 2.0), resolution=1.1),
        thickness=ConstantThickness(value=500.0),
        config=simulation,
        seed=5,
    )
    config = RefineConfig(
        simulation=simulation,
        thickness=ThicknessConfig(kind="global", t0=500.0),
        orientation=OrientationConfig(kind="neural"),
        learning_rates=LearningRates(xyz=0.0, adp=0.0, thickness=0.0),
        robust=0.0,
        auto_setup=False,
    )
    model = refinement_for(crystal, [dataset], config)
    objective = model.objectives[0]
    truth = torch.as_tensor(_drift(dataset.frames.alpha))
    with torch.no_grad():
        thickness = torch.full((dataset.n_frames, 1), 500.0, dtype=torch.float64)
        i_true = objective.simulator.intensities(
            objective.structure.atoms(), thickness, rotations=truth
        )[:, 0]
        objective.i_obs.copy_(1e6 * i_true)
        objective.sigma.copy_(1e-3 * objective.i_obs + 1.0)
        objective.weight_sigma.copy_(objective.sigma)
    return model, dataset, truth


def test_refined_neural_drift_recovers_a_goniometer_wobble_from_the_intensities(drifted):
    model, dataset, truth = drifted
    sum_w_io2 = float(((model.objectives[0].i_obs / model.objectives[0].sigma) ** 2).sum())
    history = optimise_adam(
        model, epochs=600, learning_rates={"orientation_network": 1e-3}, sum_w_io2=sum_w_io2,
        tolerance=0.0,
    )  # fmt: skip
    assert history[-1].loss < 0.01 * history[0].loss
    # compare the components that move reflections through the Ewald sphere: a turn about
    # the beam leaves the excitation errors unchanged to first order
    beam = torch.as_tensor(beam_directions(dataset))
    refined = model.objectives[0].rotations().detach()

    def across(v):
        return v - (v * beam).sum(1, keepdim=True) * beam

    error = torch.sqrt(((across(refined) - across(truth)) ** 2).sum(1).mean())
    size = torch.sqrt((across(truth) ** 2).sum(1).mean())
    assert error < 0.1 * size  # 0.009 measured


def test_learned_drift_counts_three_angles_per_frame_and_stays_out_of_levenberg_marquardt(
    drifted,
):
    model, dataset, _ = drifted
    objective = model.objectives[0]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in objective.orientation.parameters():
        p.requires_grad_(True)
    assert count_parameters(model) == 3 * dataset.n_frames + dataset.n_frames  # + scales
    assert objective.orientation.frame_parameters() == []
    free = make_orientation_model("frame", angles_deg=dataset.frames.alpha)
    assert free.frame_parameters() == [free.rotation]


def test_beam_directions_reach_both_learned_components_from_the_configuration(drifted):
    _, dataset, _ = drifted
    crystal = read_structure(example_path("quartz"))
    model = _drift_config_model(crystal, dataset)
    objective = model.objectives[0]
    assert objective.thickness.n_features == 4
    assert objective.orientation.n_features == 4
    expected = beam_directions(dataset)
    np.testing.assert_allclose(objective.orientation.features[:, 1:].numpy(), expected)


def _drift_config_model(crystal, dataset):
    config = RefineConfig(
        simulation=SimulationConfig(
            n_tilts=3, g_max=1.5, sg_max=0.03, selection=SelectionRule(g_max=1.1, rsg_max=1.0)
        ),
        thickness=ThicknessConfig(kind="neural", t0=500.0, use_directions=True),
        orientation=OrientationConfig(kind="neural", use_directions=True),
        auto_setup=False,
    )
    return refinement_for(crystal, [dataset], config)
