"""The same forward model and gradients on CUDA as on the CPU (runs where a GPU exists)."""

import numpy as np
import pytest
import torch

from blochnet.examples import example_path
from blochnet.experiment.pattern import simulate_pattern
from blochnet.io.cif import read_structure
from blochnet.physics.crystal_model import CrystalModel

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _run(device, dtype, solver="eigh", absorption=0.0):
    crystal = read_structure(example_path("quartz"))
    model = CrystalModel(crystal, voltage=200e3, dtype=dtype, device=device)
    free = model.free_parameters()
    free.charge = torch.tensor([0.6, -0.3], dtype=dtype, device=device)  # partial charges
    for tensor in (free.xyz, free.adp, free.occupancy, free.charge):
        tensor.requires_grad_()
    thickness = torch.tensor([150.0, 600.0], dtype=dtype, device=device, requires_grad=True)
    pattern = simulate_pattern(
        crystal,
        (0.3, -0.2, 1.0),
        thickness,
        g_max=1.8,
        sg_max=0.03,
        atoms=model.atoms_from_free(free),
        dtype=dtype,
        device=device,
        solver=solver,
        absorption=absorption,
    )
    weights = torch.linspace(0.5, 1.5, pattern.intensities.numel(), dtype=dtype, device=device)
    (pattern.intensities.reshape(-1) * weights).sum().backward()
    grads = [t.grad.cpu().double().numpy() for t in (free.xyz, free.adp, free.charge, thickness)]
    return pattern.intensities.detach().cpu().double().numpy(), grads


@pytest.mark.parametrize(("solver", "absorption"), [("eigh", 0.0), ("eigh", 0.05), ("eig", 0.05)])
def test_cuda_float64_matches_cpu(solver, absorption):
    cpu, cpu_grads = _run("cpu", torch.float64, solver, absorption)
    gpu, gpu_grads = _run("cuda", torch.float64, solver, absorption)
    np.testing.assert_allclose(gpu, cpu, atol=1e-10)
    for g, c in zip(gpu_grads, cpu_grads, strict=True):
        np.testing.assert_allclose(g, c, rtol=1e-7, atol=1e-9 * np.abs(c).max())


def test_cuda_float32_follows_float64():
    cpu, cpu_grads = _run("cpu", torch.float64)
    gpu, gpu_grads = _run("cuda", torch.float32)
    assert np.abs(gpu - cpu).max() < 2e-4
    for g, c in zip(gpu_grads, cpu_grads, strict=True):
        assert np.abs(g - c).max() < 2e-2 * np.abs(c).max()


def test_cuda_frame_simulation_and_refinement_step_match_cpu():
    from blochnet.examples import example_dataset_path
    from blochnet.experiment.config import SimulationConfig
    from blochnet.io.pets import read_pets
    from blochnet.refinement.config import RefineConfig
    from blochnet.refinement.model import refinement_for

    dataset = read_pets(example_dataset_path("quartz"))
    crystal = read_structure(example_path("quartz"))
    config = RefineConfig(simulation=SimulationConfig(n_tilts=3), auto_setup=False)
    losses, grads = [], []
    for device in ("cpu", "cuda"):
        model = refinement_for(crystal, [dataset], config, device=device)
        loss = model()
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append(model.structure.xyz_shift.grad.cpu().numpy())
    assert losses[1] == pytest.approx(losses[0], rel=1e-9)
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-6, atol=1e-9 * np.abs(grads[0]).max())
