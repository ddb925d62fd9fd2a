"""The robust (Cauchy) loss: its residual form, its scale, and what it is for (outliers)."""

import copy

import numpy as np
import pytest
import torch

from blochnet.examples import example_path
from blochnet.experiment.config import SelectionRule, SimulationConfig
from blochnet.experiment.merit import optimal_scales
from blochnet.experiment.synthetic import (
    ConstantThickness,
    GeneratedGeometry,
    NoiseModel,
    simulate_experiment,
)
from blochnet.io.cif import read_structure
from blochnet.physics.lattice import direct_matrix
from blochnet.refine.run import LearningRates, RefineConfig, build_refinement, refine
from blochnet.refine.thickness import ThicknessConfig

SIMULATION = SimulationConfig(
    n_tilts=3, g_max=1.5, sg_max=0.03, selection=SelectionRule(g_max=1.1, rsg_max=1.0)
)


@pytest.fixture(scope="module")
def synthetic():
    torch.set_num_threads(1)
    crystal = read_structure(example_path("quartz"))
    dataset, _ = simulate_experiment(
        crystal,
        generated=GeneratedGeometry(rotation=(-20.0, 20.0, 5.0), resolution=1.1),
        thickness=ConstantThickness(value=500.0),
        noise=NoiseModel(dose=1e7, background=1.0),
        config=SIMULATION,
        seed=5,
    )
    return crystal, dataset


def _config(**changes):
    base = RefineConfig(
        simulation=SIMULATION,
        epochs=40,
        thickness=ThicknessConfig(kind="global", t0=500.0),
        learning_rates=LearningRates(xyz=5e-4, adp=0.0, orientation=0.0, thickness=0.0),
        refine_orientation=False,
        auto_setup=False,
    )
    return base.model_copy(update=changes)


def _plain_residuals(objective):
    ic, scales = objective.calculated()
    return ((objective.i_obs - scales[objective.frame] * ic) / objective.weight_sigma)[
        objective.fit
    ]


def test_robust_residuals_square_to_the_cauchy_loss_and_are_smooth_at_zero(synthetic):
    crystal, dataset = synthetic
    objective = build_refinement(crystal, [dataset], _config()).objectives[0]
    with torch.no_grad():
        objective()  # the first evaluation sets c
        loss = objective()
        c = float(objective.robust_c)
        r = _plain_residuals(objective)
        assert torch.isfinite(loss) and c > 0
        assert float(loss) == pytest.approx(float((c**2 * torch.log1p((r / c) ** 2)).sum()))
        assert float((objective.residuals() ** 2).sum()) == pytest.approx(float(loss))
        # small residuals count as in least squares, large ones far less
        assert float(objective._robust_form(torch.tensor([1e-3 * c]))) == pytest.approx(1e-3 * c)
        assert float(objective._robust_form(torch.tensor([30 * c]))) < 3 * c
    x = torch.tensor([0.0, 1e-6, -0.5, 2.0, -40.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(objective._robust_form, (x,))
    (gradient,) = torch.autograd.grad(objective._robust_form(x).sum(), x)
    assert torch.all(torch.isfinite(gradient)) and float(gradient[0]) == pytest.approx(1.0)


def test_robust_scale_follows_the_residuals_and_never_falls_below_sigma(synthetic):
    crystal, dataset = synthetic
    model = build_refinement(crystal, [dataset], _config(robust=2.0))
    objective = model.objectives[0]
    assert torch.isnan(objective.robust_c)  # set by the first evaluation
    with torch.no_grad():
        model()
        ic, _ = objective.calculated()
        fit, frame, n = objective.fit, objective.frame, objective.n_frames
        scales = optimal_scales(  # those of the first evaluation: least squares
            objective.i_obs[fit], objective.weight_sigma[fit], ic[fit], frame[fit], n
        )
        r = ((objective.i_obs - scales[frame] * ic) / objective.weight_sigma)[fit]
    expected = 2.0 * max(1.4826 * float(r.abs().median()), 1.0)
    assert float(objective.robust_c) == pytest.approx(expected)
    objective.i_obs.copy_(objective.i_obs * 1.5)  # a worse fit: the scale grows with it
    model.update_robust_scale(fresh=True)
    assert float(objective.robust_c) > expected
    least_squares = build_refinement(crystal, [dataset], _config(robust=0.0)).objectives[0]
    with torch.no_grad():
        plain = float((_plain_residuals(least_squares) ** 2).sum())
        assert float(least_squares()) == pytest.approx(plain)


def test_robust_loss_keeps_an_atom_in_place_despite_gross_outliers(synthetic, tmp_path):
    """Eight observations (about 3 %) made 5-20× too strong, as overlapped or badly
    integrated spots are: least squares moves O1 away from the truth to fit them, the
    robust loss hardly notices them."""
    crystal, dataset = synthetic
    corrupted = copy.deepcopy(dataset)
    rng = np.random.default_rng(0)
    intensity = corrupted.reflections.intensity
    strong = np.flatnonzero(intensity > 10 * corrupted.reflections.sigma)
    bad = rng.choice(strong, 8, replace=False)
    intensity[bad] *= rng.uniform(5, 20, len(bad))
    cell = direct_matrix(crystal.cell)

    def error(robust):
        result = refine(crystal, [corrupted], tmp_path / f"r{robust}", _config(robust=robust))
        moved = result.crystal.atom("O1").xyz - crystal.atom("O1").xyz
        return float(np.linalg.norm(cell @ moved))

    least_squares, robust = error(0.0), error(2.385)
    assert least_squares > 0.01  # the outliers do bias least squares
    assert robust < 0.3 * least_squares and robust < 0.005
