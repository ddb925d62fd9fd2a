"""The shapes annotated on the kernels (project glossary: docs/glossary.md) hold at run time.

The annotations are jaxtyping shapes; here every annotated function is wrapped with a
run-time checker (beartype) and called as a simulation calls it, so a signature that no
longer tells the truth fails.
"""

import numpy as np
import pytest
import torch
from beartype import beartype
from jaxtyping import jaxtyped
from small_data import SIMULATION, small_quartz_frames

from blochnet.examples import example_path
from blochnet.experiment import frames
from blochnet.experiment.frames import FrameSimulator
from blochnet.io.cif import read_structure
from blochnet.physics import bloch, structure_matrix
from blochnet.refinement.thickness import ThicknessConfig


def checked(function):
    return jaxtyped(typechecker=beartype)(function)


@pytest.fixture(scope="module")
def quartz():
    crystal = read_structure(example_path("quartz"))
    return crystal, small_quartz_frames(crystal, seed=3)


def test_the_simulation_passes_its_kernels_the_shapes_they_declare(quartz, monkeypatch):
    monkeypatch.setattr(frames, "bloch_intensities", checked(bloch.bloch_intensities))
    monkeypatch.setattr(frames, "structure_matrices", checked(structure_matrix.structure_matrices))
    crystal, dataset = quartz
    simulator = FrameSimulator.build(crystal, dataset, SIMULATION)
    intensities = checked(FrameSimulator.intensities)
    atoms = simulator.model.atom_tensors()
    thickness = torch.tensor([[400.0, 600.0]] * dataset.n_frames, dtype=torch.float64)
    both = intensities(simulator, atoms, thickness)
    assert both.shape == (simulator.n_used, 2)
    rotations = torch.zeros(dataset.n_frames, 3, dtype=torch.float64)
    weighted = intensities(
        simulator, atoms, thickness, weights=torch.full_like(thickness, 0.5), rotations=rotations
    )
    torch.testing.assert_close(weighted, both.mean(1))


@pytest.mark.parametrize("kind", ["global", "frame", "profile", "neural", "neural-grid"])
def test_every_thickness_model_returns_samples_and_weights_per_frame(kind):
    alpha = np.linspace(-30, 30, 7)
    model = ThicknessConfig(kind=kind).build(alpha, t0=500.0).to(torch.float64)
    samples, weights = checked(type(model).forward)(model)
    assert samples.shape[0] == 7 and samples.shape == weights.shape


def test_a_call_that_breaks_the_declared_shapes_is_refused():
    """Three orientations with thicknesses for two: the checker names the mismatch."""
    matrix = torch.eye(4, dtype=torch.float64).expand(3, 4, 4)
    thickness = torch.ones(2, 5, dtype=torch.float64)
    with pytest.raises(TypeError, match="orient"):
        checked(bloch.bloch_intensities)(matrix, thickness, 0.1)
