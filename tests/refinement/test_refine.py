"""Refinement on small synthetic data: recovery, resume, NaN safety, outputs, configuration."""

import copy
import csv
import json

import numpy as np
import pytest
import torch
from small_data import SIMULATION, small_quartz_frames
from typer.testing import CliRunner

import blochnet
from blochnet.cli.main import app
from blochnet.errors import ConfigurationError, RefinementError
from blochnet.examples import example_path
from blochnet.experiment.merit import optimal_scales
from blochnet.experiment.specimen import ConstantThickness
from blochnet.experiment.synthetic import GeneratedGeometry, NoiseModel, simulate_experiment
from blochnet.io.cif import read_structure
from blochnet.io.cif_write import write_structure
from blochnet.lattice import direct_matrix
from blochnet.physics.crystal_model import CrystalModel
from blochnet.refinement.config import LearningRates, RefineConfig
from blochnet.refinement.engine import EpochRecord, _converged, optimise_adam
from blochnet.refinement.gauss_newton import jacobian, levenberg_marquardt
from blochnet.refinement.model import refinement_for
from blochnet.refinement.parameters import StructureParameters
from blochnet.refinement.pipeline import refine
from blochnet.refinement.report import count_parameters, refined_crystal
from blochnet.refinement.thickness import ThicknessConfig
from blochnet.refinement.uncertainty import residual_jacobian, structure_uncertainties


@pytest.fixture(scope="module")
def synthetic():
    crystal = read_structure(example_path("quartz"))
    return crystal, small_quartz_frames(crystal, seed=3)


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


def _moved(crystal, shift_angstrom):
    """The crystal with O1 moved by ``shift_angstrom`` [Å] in a fixed general direction."""
    moved = copy.deepcopy(crystal)
    cartesian = np.array([0.6, -0.5, 0.62])
    cartesian *= shift_angstrom / np.linalg.norm(cartesian)
    moved.atom("O1").xyz = moved.atom("O1").xyz + np.linalg.solve(
        direct_matrix(moved.cell), cartesian
    )
    return moved


def _distance(crystal, a, b):
    return float(
        np.linalg.norm(direct_matrix(crystal.cell) @ (a.atom("O1").xyz - b.atom("O1").xyz))
    )


def test_refinement_moves_a_displaced_atom_back(synthetic, tmp_path):
    crystal, dataset = synthetic
    start = _moved(crystal, 0.05)
    assert _distance(crystal, start, crystal) == pytest.approx(0.05, rel=1e-6)
    result = refine(start, [dataset], tmp_path, _config())
    assert result.history[-1].loss < 0.2 * result.history[0].loss
    assert _distance(crystal, result.crystal, crystal) < 0.015


def test_lbfgs_moves_a_displaced_atom_back_in_fewer_epochs(synthetic, tmp_path):
    crystal, dataset = synthetic
    start = _moved(crystal, 0.05)
    result = refine(start, [dataset], tmp_path, _config(epochs=8, optimiser="lbfgs"))
    assert result.history[-1].loss < 0.05 * result.history[0].loss
    assert _distance(crystal, result.crystal, crystal) < 0.005


def test_interrupted_refinement_resumes_to_the_same_result(synthetic, tmp_path):
    """With the robust loss (its scale is saved) and decaying learning rates (a function
    of the epoch number) the resumed run takes the same steps."""
    crystal, dataset = synthetic
    start = _moved(crystal, 0.05)
    config = _config(epochs=6, checkpoint_every=2, lr_final=0.2)
    straight = refine(start, [dataset], tmp_path / "a", config)

    def interrupt(record):  # Ctrl-C during epoch 5, after the checkpoint of epoch 4
        if record.epoch == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        refine(start, [dataset], tmp_path / "b", config, report=interrupt)
    resumed = refine(start, [dataset], tmp_path / "b", config, resume=True)
    assert len(resumed.history) == 6
    np.testing.assert_allclose(
        resumed.crystal.atom("O1").xyz, straight.crystal.atom("O1").xyz, atol=1e-12
    )
    assert resumed.history[-1].loss == pytest.approx(straight.history[-1].loss, rel=1e-10)
    constant = refine(start, [dataset], tmp_path / "c", config.model_copy(update={"lr_final": 1}))
    assert constant.history[1].loss == pytest.approx(straight.history[1].loss, rel=1e-12)
    assert constant.history[-1].loss != pytest.approx(straight.history[-1].loss, rel=1e-6)


def test_resuming_with_other_refined_groups_names_the_checkpoint(synthetic, tmp_path):
    crystal, dataset = synthetic
    refine(crystal, [dataset], tmp_path, _config(epochs=2, checkpoint_every=1))
    other = _config(epochs=4, checkpoint_every=1, refine_charge="none")
    with pytest.raises(RefinementError, match="checkpoint.pt: cannot resume") as caught:
        refine(crystal, [dataset], tmp_path, other, resume=True)
    assert "charge" in str(caught.value)  # what does not match: the charge parameters


def test_a_nan_stops_the_step_names_the_parameter_and_keeps_the_last_good_state(synthetic):
    crystal, dataset = synthetic
    model = refinement_for(
        crystal,
        [dataset],
        _config(learning_rates=LearningRates(xyz=5e-4, adp=0.0, orientation=0.0, thickness=1e-3)),
    )
    state = model.state_dict().items()  # (and the thickness fit's optimiser: not a tensor)
    before = {k: v.clone() for k, v in state if isinstance(v, torch.Tensor)}
    thickness = model.objectives[0].thickness
    param = next(thickness.parameters())
    with torch.no_grad():
        param.fill_(float("nan"))
    with pytest.raises(RefinementError, match="non-finite"):
        optimise_adam(
            model, epochs=2, learning_rates={"xyz": 5e-4, "thickness": 1e-3}, sum_w_io2=1.0
        )
    after = model.state_dict()
    for key, value in before.items():
        if "thickness" not in key:  # (the robust scale is nan until a first good evaluation)
            torch.testing.assert_close(after[key], value, rtol=0, atol=0, equal_nan=True, msg=key)


def test_report_holds_the_documented_fields(synthetic, tmp_path):
    crystal, dataset = synthetic
    thickness = ThicknessConfig(kind="neural", t0=500.0, shape="flexible", n_samples=4)
    refine(crystal, [dataset], tmp_path, _config(epochs=2, thickness=thickness))
    report = json.loads((tmp_path / "report.json").read_text())
    for key in (
        "r_obs",
        "r_all",
        "wr2",
        "gof",
        "n_obs",
        "r_obs_frame_mean",
        "n_reflections",
        "n_parameters",
        "selection_rule",
        "atoms",
        "frames",
        "wall_time_s",
    ):
        assert key in report
    assert {"label", "xyz", "uiso", "occupancy", "charge", "charge_su"} <= set(report["atoms"][0])
    assert all(x > 0 for x in report["atoms"][1]["xyz_su"])  # O1: refined coordinates
    assert "(" in (tmp_path / "refined.cif").read_text()  # s.u. in parenthesis notation
    assert len(report["frames"]) == dataset.n_frames
    frame = report["frames"][0]
    assert {"thickness_mean", "thickness_width", "thickness_flatness", "scale"} <= set(frame)
    assert (tmp_path / "refined.cif").read_text().startswith("data_")
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 2
    # every compared observation in observations.csv; the report lists the worst ones
    with open(tmp_path / "observations.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == report["n_reflections"]
    assert sum(int(r["observed"]) for r in rows) == report["n_obs"]
    i_obs, i_calc, sigma = (
        np.array([float(r[c]) for r in rows]) for c in ("i_obs", "i_calc", "sigma")
    )
    worst = report["most_disagreeable"]
    assert len(worst) == min(20, len(rows))
    ratios = [abs(w["delta_over_sigma"]) for w in worst]
    assert ratios == sorted(ratios, reverse=True)
    assert ratios[0] == pytest.approx(np.max(np.abs(i_obs - i_calc) / sigma), rel=1e-5)
    top = worst[0]
    match = [r for r in rows if int(r["frame"]) == top["frame"]
             and [int(r[c]) for c in "hkl"] == top["hkl"]]  # fmt: skip
    assert len(match) == 1 and float(match[0]["i_obs"]) == pytest.approx(top["i_obs"], rel=1e-5)


def test_the_package_is_callable_as_the_refinement_function(synthetic, tmp_path):
    """``blochnet.refine(...)``, as the documentation promises, returns the result object."""
    crystal, dataset = synthetic
    result = blochnet.refine(crystal, [dataset], tmp_path, blochnet.RefineConfig(
        **_config(epochs=1).model_dump()))  # fmt: skip
    assert isinstance(result, blochnet.RefinementResult)
    assert result.report["n_obs"] > 0 and (tmp_path / "refined.cif").exists()
    assert [atom.label for atom in result.crystal.atoms] == [a.label for a in crystal.atoms]


def test_unknown_configuration_keys_are_refused(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[simulation]\nn_tilt = 3\n")
    result = CliRunner().invoke(
        app,
        ["refine", "--example", "quartz", "--config", str(config), "--out", str(tmp_path / "out")],
    )
    assert result.exit_code == 2
    assert "n_tilt" in result.output and not (tmp_path / "out").exists()


def _central_difference(objective, param, index, step=1e-6):
    """∂r/∂param[index] of the objective's residuals by central differences."""
    with torch.no_grad():
        param[index] += step
        plus = objective.residuals()
        param[index] -= 2 * step
        minus = objective.residuals()
        param[index] += step
    return (plus - minus) / (2 * step)


@pytest.mark.parametrize("robust, step", [(0.0, 1e-6), (2.385, 1e-8)])
def test_residual_jacobian_matches_finite_differences(synthetic, robust, step):
    """Least squares and the robust loss (whose residuals, a few c, curve more sharply:
    a smaller step keeps the central difference's truncation error below the tolerance)."""
    crystal, dataset = synthetic
    config = _config(
        learning_rates=LearningRates(xyz=1e-3, adp=1e-3, orientation=0.0, thickness=0.0),
        robust=robust,
    )
    model = refinement_for(crystal, [dataset], config)
    structure = model.structure
    params = [structure.xyz_shift, structure.adp_shift]
    r, jac = residual_jacobian(lambda: model.objectives[0].residuals(), params)
    assert jac.shape == (len(r), sum(p.numel() for p in params))
    n_xyz = structure.xyz_shift.numel()
    for param, index, column in [(structure.xyz_shift, 0, 0), (structure.adp_shift, 2, n_xyz + 2)]:
        numeric = _central_difference(model.objectives[0], param, index, step=step)
        np.testing.assert_allclose(
            jac[:, column].numpy(),
            numeric.numpy(),
            rtol=1e-5,
            atol=1e-6 * numeric.abs().max().item(),
        )


def test_standard_uncertainties_are_finite_and_scale_with_the_noise(synthetic):
    crystal, dataset = synthetic
    config = _config(
        learning_rates=LearningRates(xyz=1e-3, adp=1e-3, orientation=0.0, thickness=0.0)
    )
    model = refinement_for(crystal, [dataset], config)
    su = structure_uncertainties(model, n_parameters=count_parameters(model))
    assert np.all(np.isfinite(su["free"])) and np.all(su["free"] > 0)
    assert np.all(su["xyz"][1] > 0)  # O1 on a general position: three free coordinates
    assert su["xyz"][0][0] == 0 or su["xyz"][0][2] == 0  # Si1: some coordinates fixed
    assert np.all(su["ueq"] > 0) and 0.5 < su["gof"] < 2.0


def _lm_model(crystal, dataset, *, thickness_kind="frame"):
    config = _config(
        thickness=ThicknessConfig(kind=thickness_kind, t0=520.0),
        learning_rates=LearningRates(xyz=1e-3, adp=1e-3, orientation=1e-3, thickness=1e-3),
        refine_orientation=True,
    )
    model = refinement_for(crystal, [dataset], config)
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def test_jacobian_columns_of_per_frame_parameters_match_finite_differences(synthetic):
    crystal, dataset = synthetic
    model = _lm_model(crystal, dataset)
    r, jac, blocks = jacobian(model)
    orientation = model.objectives[0].orientation.rotation
    n_struct = sum(b.param.numel() for b in blocks if not b.per_frame)
    n_frames = orientation.shape[0]
    for frame, component in [(0, 0), (3, 2)]:
        column = n_struct + component * n_frames + frame
        numeric = _central_difference(model.objectives[0], orientation, (frame, component))
        np.testing.assert_allclose(
            jac[:, column].numpy(),
            numeric.numpy(),
            rtol=1e-4,
            atol=1e-6 * numeric.abs().max().item(),
        )


def test_jacobian_columns_are_exact_when_rows_integrate_over_neighbouring_frames(synthetic):
    crystal, dataset = synthetic
    integrated = SIMULATION.model_copy(
        update=dict(rocking="integrated", rocking_step=0.25, rocking_window=0.05)
    )
    config = _config(
        simulation=integrated,
        thickness=ThicknessConfig(kind="frame", t0=520.0),
        learning_rates=LearningRates(xyz=1e-3, adp=0.0, orientation=1e-3, thickness=1e-3),
        refine_orientation=True,
    )
    model = refinement_for(crystal, [dataset], config)
    objective = model.objectives[0]
    pairs = objective.simulator.dependencies
    assert np.any(np.bincount(pairs[:, 0]) > 1)  # some rows use two or more frames
    r, jac, blocks = jacobian(model)
    assert max(int(b.colour.max()) for b in blocks if b.per_frame) >= 1
    n_struct = sum(b.param.numel() for b in blocks if not b.per_frame)
    n_frames = objective.n_frames
    thickness = objective.thickness.log_ratio
    for param, index, column in [
        (objective.orientation.rotation, (3, 0), n_struct + 3),
        (objective.orientation.rotation, (4, 2), n_struct + 2 * n_frames + 4),
        (thickness, (5,), n_struct + 3 * n_frames + 5),
    ]:
        numeric = _central_difference(objective, param, index)
        np.testing.assert_allclose(
            jac[:, column].numpy(),
            numeric.numpy(),
            rtol=1e-4,
            atol=1e-6 * numeric.abs().max().item(),
        )


def test_levenberg_marquardt_recovers_position_and_thickness_in_a_few_steps(synthetic):
    crystal, dataset = synthetic
    model = _lm_model(_moved(crystal, 0.05), dataset)
    history = levenberg_marquardt(model, iterations=8, max_rotation=1e-3)
    assert model.objectives[0].orientation.rotation.abs().max() <= 8 * 1e-3 + 1e-12  # trust region
    with torch.no_grad():
        start = _lm_model(_moved(crystal, 0.05), dataset).objectives
        start_loss = float(sum((o.residuals() ** 2).sum() for o in start))
    assert history[-1].loss < 0.05 * start_loss
    refined = refined_crystal(model.structure)
    assert _distance(crystal, refined, crystal) < 0.005
    thickness = model.objectives[0].thickness.summary()["mean"]
    np.testing.assert_allclose(thickness, 500.0, rtol=0.02)


def test_setup_finds_the_thickness_and_checks_convergence_of_what_is_not_fixed(synthetic):
    from blochnet.experiment.prepared import prepare
    from blochnet.refinement.simulation_settings import choose_settings

    crystal, dataset = synthetic
    data = [prepare(crystal, dataset, SIMULATION)]
    setup = choose_settings(data, crystal, t0=None, fixed={"n_tilts"})
    assert setup.t0 == [500.0]  # the simulated thickness, on the scan's 100 Å grid
    assert setup.simulation.n_tilts == SIMULATION.n_tilts  # fixed by the user: kept
    text = "\n".join(setup.lines)
    assert "starting thickness 500 Å" in text and "beams" in text and "tilts" not in text
    kept = choose_settings(data, crystal, t0=650.0, fixed={"g_max", "n_tilts"})
    assert kept.t0 == [650.0] and kept.lines == [] and kept.simulation == SIMULATION


def test_absorption_column_matches_finite_differences_and_kappa_stays_non_negative(synthetic):
    crystal, dataset = synthetic
    absorbing = SIMULATION.model_copy(update=dict(absorption=0.04))
    config = _config(
        simulation=absorbing,
        refine_absorption=True,
        learning_rates=LearningRates(xyz=1e-3, adp=0.0, orientation=0.0, thickness=0.0),
    )
    model = refinement_for(crystal, [dataset], config)
    structure = model.structure
    assert structure.names[-1] == ("", "kappa")
    r, jac = residual_jacobian(lambda: model.objectives[0].residuals(), [structure.kappa_shift])
    numeric = _central_difference(model.objectives[0], structure.kappa_shift, 0)
    assert numeric.abs().max() > 0  # κ changes the intensities
    np.testing.assert_allclose(
        jac[:, 0].numpy(), numeric.numpy(), rtol=1e-5, atol=1e-6 * numeric.abs().max().item()
    )
    with torch.no_grad():
        structure.kappa_shift.fill_(-1.0)
    structure.keep_adps_positive_definite()
    assert float(structure.absorption().detach()) == 0.0


def test_levenberg_marquardt_recovers_the_absorption_of_synthetic_data():
    torch.set_num_threads(1)
    crystal = read_structure(example_path("quartz"))
    truth = SIMULATION.model_copy(update=dict(absorption=0.08))
    dataset, _ = simulate_experiment(
        crystal,
        generated=GeneratedGeometry(rotation=(-20.0, 20.0, 5.0), resolution=1.1),
        thickness=ConstantThickness(value=800.0),
        noise=NoiseModel(dose=1e9, background=0.5),
        config=truth,
        seed=5,
    )
    start = truth.model_copy(update=dict(absorption=0.03))
    config = _config(
        simulation=start,
        thickness=ThicknessConfig(kind="global", t0=800.0),
        refine_absorption=True,
        learning_rates=LearningRates(xyz=0.0, adp=0.0, absorption=1e-3, thickness=0.0),
    )
    model = refinement_for(crystal, [dataset], config)
    model.structure.kappa_shift.requires_grad_(True)
    levenberg_marquardt(model, iterations=6)
    su = structure_uncertainties(model, n_parameters=1)
    kappa = float(model.structure.absorption().detach())
    assert abs(kappa - 0.08) < max(3 * su["absorption"], 0.004)
    assert 0 < su["absorption"] < 0.01


def _charged(crystal, silicon):
    charged = copy.deepcopy(crystal)
    charged.atom("Si1").charge, charged.atom("O1").charge = silicon, -silicon / 2
    return charged


def test_charge_column_matches_finite_differences_and_the_cell_stays_neutral(synthetic):
    crystal, dataset = synthetic
    config = _config(refine_charge="all", learning_rates=LearningRates(xyz=0.0, charge=1e-2))
    model = refinement_for(_charged(crystal, 0.4), [dataset], config)
    structure = model.structure
    assert structure.names[-1] == ("Si1", "charge")  # O1 balances the cell
    assert ("O1", "charge") not in structure.names
    r, jac = residual_jacobian(lambda: model.objectives[0].residuals(), [structure.charge_shift])
    numeric = _central_difference(model.objectives[0], structure.charge_shift, 0, step=1e-4)
    assert numeric.abs().max() > 0
    np.testing.assert_allclose(
        jac[:, 0].numpy(), numeric.numpy(), rtol=1e-5, atol=1e-6 * numeric.abs().max().item()
    )
    with torch.no_grad():
        structure.charge_shift.fill_(0.25)
    charge = structure.atoms().charge.detach()
    assert charge.tolist() == pytest.approx([0.65, -0.325])  # SiO2: q_O = −q_Si/2
    occupancy = structure.atoms().occupancy.detach()
    assert float(structure.model.cell_charge(charge, occupancy)) == pytest.approx(0, abs=1e-12)


def test_charges_that_do_not_cancel_or_a_single_refined_charge_are_refused(synthetic):
    crystal, dataset = synthetic
    unbalanced = _charged(crystal, 0.4)
    unbalanced.atom("O1").charge = -0.1
    with pytest.raises(ConfigurationError, match="charged"):
        refinement_for(unbalanced, [dataset], _config())
    with pytest.raises(ConfigurationError, match="at least two atoms"):
        refinement_for(crystal, [dataset], _config(refine_charge="O1"))


def test_all_charges_on_a_structure_of_one_atom_refine_none_and_one_named_atom_is_refused():
    model = CrystalModel(read_structure(example_path("silicon")), voltage=200e3)
    everything = StructureParameters(model, charge=None)  # the default selection "all"
    assert everything.charge_shift.numel() == 0 and not everything.charged
    assert everything.atoms().charge is None  # neutral: the code path without charges
    assert all(name != "charge" for _, name in everything.names)
    with pytest.raises(ConfigurationError, match="Si1 alone"):
        StructureParameters(model, charge={"Si1"})


def test_levenberg_marquardt_recovers_partial_charges_of_synthetic_data(tmp_path):
    crystal = read_structure(example_path("quartz"))
    dataset = small_quartz_frames(_charged(crystal, 0.8), seed=6)
    config = _config(  # least squares: the data have Poisson noise and no outliers
        refine_charge="all", robust=0.0, learning_rates=LearningRates(xyz=0, adp=0, charge=1e-2)
    )
    model = refinement_for(crystal, [dataset], config)
    model.structure.charge_shift.requires_grad_(True)
    levenberg_marquardt(model, iterations=6)
    su = structure_uncertainties(model, n_parameters=1)
    charge = model.structure.atoms().charge.detach().numpy()
    assert 0 < su["charge"][0] < 0.05 and su["charge"][1] == pytest.approx(su["charge"][0] / 2)
    assert abs(charge[0] - 0.8) < max(3 * su["charge"][0], 0.02)
    refined = refined_crystal(model.structure, su)
    path = tmp_path / "charged.cif"
    write_structure(refined, path)
    back = read_structure(path)  # the charges and their s.u. travel through refined.cif
    assert back.atom("Si1").charge == pytest.approx(charge[0], abs=1e-4)
    assert back.atom("O1").su["charge"] == pytest.approx(su["charge"][1], rel=0.5)  # 1 digit


def test_instability_factor_lowers_the_weight_of_strong_observations(synthetic):
    crystal, dataset = synthetic
    plain = refinement_for(crystal, [dataset], _config(robust=0.0)).objectives[0]
    config = _config(instability=0.05, robust=0.0)
    damped = refinement_for(crystal, [dataset], config).objectives[0]
    expected = torch.sqrt(plain.sigma**2 + (0.05 * plain.i_obs.clamp_min(0)) ** 2)
    torch.testing.assert_close(damped.weight_sigma, expected)
    # the objective is Σ((Io − k Ic)/σ_w)² with k the least-squares scale under those weights
    with torch.no_grad():
        ic, scales = damped.calculated()
    frame = damped.frame

    def loss(factor):
        return float((((damped.i_obs - factor * scales[frame] * ic) / expected) ** 2).sum())

    assert float(damped().detach()) == pytest.approx(loss(1.0), rel=1e-12)
    assert loss(1.0) < min(loss(0.99), loss(1.01))
    assert not torch.allclose(scales, plain.calculated()[1])  # the weights changed the scales
    assert plain.figures_of_merit().n_obs == damped.figures_of_merit().n_obs  # R uses σ


def test_history_records_r_values_of_the_parameters_each_epoch_started_from(synthetic, tmp_path):
    crystal, dataset = synthetic
    result = refine(_moved(crystal, 0.05), [dataset], tmp_path, _config(epochs=3))
    first = result.history[0]
    model = refinement_for(_moved(crystal, 0.05), [dataset], _config())
    merit = model.objectives[0].figures_of_merit()
    assert first.r_obs == pytest.approx(merit.r1_obs, rel=1e-9)
    assert first.r_obs_frame_mean == pytest.approx(merit.r1_obs_frame_mean, rel=1e-9)
    assert np.isnan(first.r_free)  # nothing held out


def test_held_out_frames_are_scored_with_their_own_scale(synthetic):
    crystal, dataset = synthetic
    model = refinement_for(crystal, [dataset], _config(holdout_fraction=0.3))
    objective = model.objectives[0]
    held = ~objective.fit
    assert bool(held.any()) and bool(objective.fit.any())
    fit, free = objective.figures_of_merit(), objective.figures_of_merit(subset="free")
    assert free.n_all == int(held.sum())
    # the true structure: the held-out frames agree as well as the fitted ones
    assert free.r1_obs < max(2 * fit.r1_obs, 0.05)
    model()
    assert model.last_r_values()["r_free"] == pytest.approx(free.r1_obs, rel=1e-9)


def test_convergence_needs_a_flat_loss_not_a_rise_after_an_overshooting_step():
    def history(losses):
        return [EpochRecord(i + 1, loss, 0.0, 0.0) for i, loss in enumerate(losses)]

    assert not _converged(history([1.0, 5.0, 4.0, 3.0, 2.5]), 1e-5, 3)  # overshoot, recovering
    assert not _converged(history([3.0, 2.0, 1.5, 1.2, 1.0]), 1e-5, 3)  # still dropping
    assert _converged(history([3.0, 1.0, 1.0, 1.0, 1.0]), 1e-5, 3)  # flat


# The robust (Cauchy) loss: its residual form, its scale, and what it is for (outliers).


def _plain_residuals(objective):
    ic, scales = objective.calculated()
    return ((objective.i_obs - scales[objective.frame] * ic) / objective.weight_sigma)[
        objective.fit
    ]


def test_robust_residuals_square_to_the_cauchy_loss_and_are_smooth_at_zero(synthetic):
    crystal, dataset = synthetic
    objective = refinement_for(crystal, [dataset], _config()).objectives[0]
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
    model = refinement_for(crystal, [dataset], _config(robust=2.0))
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
    least_squares = refinement_for(crystal, [dataset], _config(robust=0.0)).objectives[0]
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


@pytest.mark.parametrize("rocking", ["frame", "integrated"])
def test_forward_mode_jacobian_equals_the_reverse_mode_one(synthetic, rocking):
    """Structure and per-frame orientation columns, through the frame scales and the robust
    loss: the forward-mode Jacobian (one eigendecomposition per orientation) is the
    reverse-mode one; κ or per-frame thickness parameters leave it to reverse mode."""
    from blochnet.refinement.gauss_newton import forward_jacobian

    crystal, dataset = synthetic
    simulation = SIMULATION
    if rocking == "integrated":
        simulation = SIMULATION.model_copy(
            update=dict(rocking="integrated", rocking_step=0.25, rocking_window=0.05)
        )
    config = _config(
        simulation=simulation,
        thickness=ThicknessConfig(kind="neural-grid", t0=520.0, n_grid=8),
        learning_rates=LearningRates(xyz=1e-3, adp=1e-3, orientation=1e-3, thickness=1e-3),
        refine_orientation=True,
        robust=2.385,
    )
    model = refinement_for(_moved(crystal, 0.03), [dataset], config)
    from blochnet.refinement.engine import parameter_groups

    parameter_groups(model, config.learning_rates.model_dump())
    with torch.no_grad():
        model.objectives[0].orientation.rotation.normal_(0, 5e-4)
    model.update_robust_scale(fresh=True)
    r_forward, j_forward, _ = forward_jacobian(model)
    r_reverse, j_reverse, _ = jacobian(model)
    torch.testing.assert_close(r_forward, r_reverse, rtol=1e-12, atol=1e-12)
    scale = float(j_reverse.abs().max())
    torch.testing.assert_close(j_forward, j_reverse, rtol=1e-8, atol=1e-10 * scale)
    assert forward_jacobian(_lm_model(crystal, dataset)) is None  # per-frame thickness


@pytest.mark.parametrize("holdout", [0.0, 0.3])
def test_residual_tangents_in_chunks_equal_one_forward_pass_per_column(
    synthetic, holdout, monkeypatch
):
    """The residuals' derivatives along changes of Ic (through the frame scales and the
    robust weights) are taken for every column at once, in chunks of columns: the same as
    one forward-mode pass per column, whatever the chunk, with frames held out too."""
    import torch.autograd.forward_ad as fwad

    from blochnet.refinement import objective as objective_module

    crystal, dataset = synthetic
    model = refinement_for(crystal, [dataset], _config(robust=2.385, holdout_fraction=holdout))
    objective = model.objectives[0]
    model.update_robust_scale(fresh=True)
    with torch.no_grad():
        ic, _ = objective.calculated()
    d_ic = torch.randn(len(ic), 7, generator=torch.Generator().manual_seed(3), dtype=ic.dtype)
    d_ic = d_ic * ic[:, None]
    expected = []
    with torch.no_grad(), fwad.dual_level():
        for n in range(d_ic.shape[1]):
            dual = objective.residuals_of(fwad.make_dual(ic, d_ic[:, n]))
            expected.append(fwad.unpack_dual(dual).tangent)
    expected = torch.stack(expected, 1)
    assert bool(expected.abs().amax(0).gt(0).all())
    whole = objective._residual_tangents(ic, d_ic)
    monkeypatch.setattr(objective_module, "_RESIDUAL_ELEMENTS", 2 * len(ic))  # 2 per chunk
    chunked = objective._residual_tangents(ic, d_ic)
    torch.testing.assert_close(whole, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(chunked, expected, rtol=1e-12, atol=1e-14)
    assert objective._residual_tangents(ic, d_ic[:, :0]).shape == (len(expected), 0)


def test_gauss_newton_steps_end_on_the_shift_over_su_test(synthetic):
    """From a structure near the minimum (O1 displaced by 0.005 Å: where Adam leaves a
    refinement), Gauss–Newton steps on the structure reach max |shift|/s.u. < 0.01 (each
    recorded), lower the objective and bring O1 back."""
    from blochnet.refinement.uncertainty import converge_structure

    crystal, dataset = synthetic
    config = _config(learning_rates=LearningRates(xyz=1e-3, adp=1e-3, orientation=0.0,
                                                  thickness=0.0))  # fmt: skip
    model = refinement_for(_moved(crystal, 0.005), [dataset], config)
    from blochnet.refinement.engine import parameter_groups

    parameter_groups(model, config.learning_rates.model_dump())
    model.update_robust_scale(fresh=True)
    with torch.no_grad():
        before = float(sum((o.residuals() ** 2).sum() for o in model.objectives))
    lines = []
    su, record = converge_structure(
        model, n_parameters=count_parameters(model), max_steps=8, say=lines.append
    )
    assert record["converged"] and record["max_shift_su"][-1] < 0.01
    assert record["max_shift_su"][0] > 1  # the displaced start was far from converged
    assert 1 <= record["steps"] == len(record["max_shift_su"]) - 1 == len(lines) - 1
    with torch.no_grad():
        after = float(sum((o.residuals() ** 2).sum() for o in model.objectives))
    assert after < before
    assert _distance(crystal, refined_crystal(model.structure, su), crystal) < 0.002
    assert np.max(su["shift_over_su"]) == record["max_shift_su"][-1]


def test_each_convergence_step_costs_one_evaluation_that_judges_it_and_gives_the_next_gradient(
    synthetic, monkeypatch
):
    """A Gauss–Newton step of the convergence test is judged by the evaluation (with its
    gradient) at the new parameters, which the next step and the test then use: one
    simulation per step taken (one more for the start), none more; the last one is the
    refined state's (``is_current``), so the report needs no simulation of its own."""
    from blochnet.refinement.engine import parameter_groups
    from blochnet.refinement.uncertainty import converge_structure

    crystal, dataset = synthetic
    rates = LearningRates(xyz=1e-3, adp=1e-3, orientation=0.0, thickness=0.0)
    model = refinement_for(_moved(crystal, 0.005), [dataset], _config(learning_rates=rates))
    parameter_groups(model, rates.model_dump())
    model.update_robust_scale(fresh=True)
    model.zero_grad()
    loss = model()
    loss.backward()
    model.gauss_newton_step(float(loss), damping=0.1)  # the epochs' matrix
    simulator = model.objectives[0].simulator
    calls = []
    original = type(simulator).intensities

    def counted(*args, **kwargs):
        calls.append(1)
        return original(simulator, *args, **kwargs)

    monkeypatch.setattr(simulator, "intensities", counted)
    su, record = converge_structure(
        model, n_parameters=count_parameters(model), max_steps=3, kept=model.kept_matrix
    )
    assert record["steps"] == 3  # (far from the minimum: every step allowed is taken)
    assert len(calls) == record["steps"] + 1
    assert model.objectives[0].is_current()
    with torch.no_grad():
        ic = model.objectives[0].simulator.intensities(
            model.structure.atoms(), *model.objectives[0].thickness()[:1],
            weights=model.objectives[0].thickness()[1],
        )  # fmt: skip
    torch.testing.assert_close(model.objectives[0]._last[0], ic, rtol=1e-12, atol=0)
    with torch.no_grad():
        model.structure.shifts()[0].add_(1e-4)
    assert not model.objectives[0].is_current()


def test_the_convergence_test_returns_each_jacobians_freed_blocks_before_the_next_pass(
    synthetic, monkeypatch
):
    """Every Jacobian of the convergence test (the first one without a kept matrix, and a
    new one where the steps converge slowly: forced here at every step) is followed by
    the allocator's free blocks going back to the system before the next backward pass,
    so that those passes' arrays do not land between the Jacobian's free blocks (the
    forward-mode Jacobian returns them itself, for every caller)."""
    from blochnet.refinement import objective, uncertainty
    from blochnet.refinement.engine import parameter_groups

    crystal, dataset = synthetic
    rates = LearningRates(xyz=1e-3, adp=1e-3, orientation=0.0, thickness=0.0)
    model = refinement_for(_moved(crystal, 0.005), [dataset], _config(learning_rates=rates))
    parameter_groups(model, rates.model_dump())
    model.update_robust_scale(fresh=True)
    events = []

    def recorded(module, name):
        function = getattr(module, name)

        def call(*args, **kwargs):
            result = function(*args, **kwargs)
            events.append(name)  # on return: a Jacobian's arrays are made by then
            return result

        monkeypatch.setattr(module, name, call)

    recorded(objective, "frame_jacobian")
    recorded(uncertainty, "_exact_gradient")
    recorded(objective, "release_free_memory")
    monkeypatch.setattr(uncertainty, "CHORD_CONTRACTION", 0.0)  # every step "slow"
    _, record = uncertainty.converge_structure(
        model, n_parameters=count_parameters(model), max_steps=3
    )
    assert record["steps"] == 3
    jacobians = [n for n, e in enumerate(events) if e == "frame_jacobian"]
    assert len(jacobians) == 3  # the first, and a new one after each step but the last
    for n in jacobians:
        following = events[n + 1 :]
        if "_exact_gradient" in following:
            assert "release_free_memory" in following[: following.index("_exact_gradient")]


def test_the_profiled_thickness_fit_lowers_the_loss_and_leaves_the_partial_gradient(synthetic):
    """With ``thickness_steps`` an evaluation fits the grid thickness model on one solve's
    intensities, then its loss is that of the fitted model and its structure gradient is
    the partial one at the fitted weights (the envelope theorem): the same as the gradient
    of the unprofiled objective evaluated with the fitted thickness held."""
    crystal, dataset = synthetic
    rates = LearningRates(xyz=5e-4, adp=3e-4, orientation=0.0, thickness=1e-3)
    grid = ThicknessConfig(kind="neural-grid", t0=520.0, n_grid=8)
    profiled = refinement_for(
        _moved(crystal, 0.02), [dataset], _config(thickness=grid, learning_rates=rates,
                                                  thickness_steps=30),
    )  # fmt: skip
    plain = refinement_for(
        _moved(crystal, 0.02), [dataset], _config(thickness=grid, learning_rates=rates,
                                                  thickness_steps=0),
    )  # fmt: skip
    from blochnet.refinement.engine import parameter_groups

    parameter_groups(profiled, rates.model_dump())
    parameter_groups(plain, rates.model_dump())
    with torch.no_grad():
        before = float(profiled())  # without gradients: no fit
    loss = profiled()
    loss.backward()
    assert float(loss) < 0.9 * before
    assert all(p.grad is None for p in profiled.objectives[0].thickness.parameters())
    # the unprofiled objective at the fitted thickness (and robust scale)
    plain.load_state_dict(profiled.state_dict())
    for p in plain.objectives[0].thickness.parameters():
        p.requires_grad_(False)
    again = plain()
    again.backward()
    assert float(again) == pytest.approx(float(loss), rel=1e-12)
    for a, b in zip(profiled.structure.shifts(), plain.structure.shifts(), strict=True):
        if a.requires_grad and a.numel():
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


def test_a_gauss_newton_step_in_the_epochs_takes_the_structure_back_with_one_matrix(synthetic):
    """Refinement.gauss_newton_step: from an epoch's gradient and the normal matrix of one
    forward-mode Jacobian (made at the first call, then kept), a step lowers the loss and
    moves the displaced O1 back; a step the next loss shows too long is
    followed by a more damped one; the gradients it used are cleared."""
    crystal, dataset = synthetic
    rates = LearningRates(xyz=5e-4, adp=0.0, orientation=0.0, thickness=0.0)
    model = refinement_for(_moved(crystal, 0.01), [dataset], _config(learning_rates=rates))
    from blochnet.refinement.engine import parameter_groups

    parameter_groups(model, rates.model_dump())
    model.update_robust_scale(fresh=True)
    truth = torch.as_tensor(crystal.atom("O1").xyz)

    def error() -> float:
        return float(torch.linalg.norm(model.structure.atoms().xyz[1] - truth))

    losses, errors = [], [error()]
    for _ in range(4):
        model.zero_grad()
        loss = model()
        loss.backward()
        losses.append(float(loss))
        assert model.gauss_newton_step(float(loss), damping=0.1)
        matrix = model.normal
        assert all(p.grad is None for p in model.structure.shifts() if p.requires_grad)
        errors.append(error())
    assert model.normal is matrix  # one Jacobian for every step
    with torch.no_grad():
        assert float(model()) < losses[0]
    assert errors[-1] < 0.75 * errors[0]  # (this small data set is far from linear at 0.01 Å)


def test_the_gauss_newton_step_that_makes_its_matrix_also_turns_the_frames(synthetic):
    """The step that makes a normal matrix moves every frame's free rotation with the
    structure (three more Jacobian directions): the rotations given to the frames come
    back towards the true (zero) ones; the next step, with the kept matrix, moves only
    the structure and leaves the rotations' gradients to Adam; new simulation settings
    make a new matrix, whose step turns the frames again. (A turn about the beam changes
    the excitation errors only to second order: the tilts across it are what the data
    determine.)"""
    from blochnet.experiment.geometry import beam_directions

    crystal, dataset = synthetic
    rates = LearningRates(xyz=5e-4, adp=0.0, orientation=1e-4, thickness=0.0)
    config = _config(learning_rates=rates, refine_orientation=True)
    model = refinement_for(_moved(crystal, 0.005), [dataset], config)
    from blochnet.refinement.engine import parameter_groups

    parameter_groups(model, rates.model_dump())
    rotation = model.objectives[0].orientation.rotation
    with torch.no_grad():
        rotation.copy_(torch.randn(rotation.shape, generator=torch.Generator().manual_seed(4),
                                   dtype=rotation.dtype) * 5e-4)  # fmt: skip
    model.update_robust_scale(fresh=True)

    beam = torch.as_tensor(beam_directions(dataset), dtype=rotation.dtype)

    def tilt() -> float:
        r = rotation.detach()
        return float((r - (r * beam).sum(1, keepdim=True) * beam).norm())

    def step() -> float:
        model.zero_grad()
        loss = model()
        loss.backward()
        assert model.gauss_newton_step(float(loss), damping=0.1)
        return float(loss)

    before, loss = tilt(), step()
    first = model.normal
    assert tilt() < 0.8 * before
    with torch.no_grad():
        assert float(model()) < 0.6 * loss
    assert rotation.grad is None  # used by the step
    kept = rotation.detach().clone()
    step()
    assert model.normal is first  # kept
    assert torch.equal(rotation.detach(), kept) and rotation.grad is not None  # Adam's
    model.settings_key = lambda: "other settings"  # e.g. the last epochs' converged beams
    step()
    assert model.normal is not first
    assert not torch.equal(rotation.detach(), kept)


def test_the_convergence_test_starts_from_the_epochs_matrix(synthetic, monkeypatch):
    """converge_structure with the epochs' kept matrix (made at the refined state by an
    epoch's Gauss–Newton step): the test reads the exact gradient with that matrix, makes
    no Jacobian, and gives the s.u. of a fresh Jacobian; a matrix made at a loss more
    than twice the current one, or at other settings, is not taken."""
    from blochnet.refinement import uncertainty
    from blochnet.refinement.engine import parameter_groups
    from blochnet.refinement.uncertainty import converge_structure

    crystal, dataset = synthetic
    rates = LearningRates(xyz=1e-3, adp=1e-3, orientation=0.0, thickness=0.0)
    model = refinement_for(_moved(crystal, 0.002), [dataset], _config(learning_rates=rates))
    parameter_groups(model, rates.model_dump())
    model.update_robust_scale(fresh=True)
    n = count_parameters(model)
    fresh, record = converge_structure(model, n_parameters=n, max_steps=10)
    assert record["converged"]
    model.zero_grad()
    loss = model()
    loss.backward()
    model.gauss_newton_step(float(loss), damping=0.1)  # makes the matrix here
    made = []
    original = uncertainty.structure_jacobian
    monkeypatch.setattr(uncertainty, "structure_jacobian",
                        lambda *a, **k: made.append(1) or original(*a, **k))  # fmt: skip
    su, record = converge_structure(model, n_parameters=n, kept=model.kept_matrix)
    assert record["converged"] and not made
    np.testing.assert_allclose(su["xyz"], fresh["xyz"], rtol=0, atol=1e-6)
    exact = structure_uncertainties(model, n_parameters=n)  # a Jacobian made here
    np.testing.assert_allclose(su["free"], exact["free"], rtol=1e-3)
    assert model.kept_matrix(model.matrix_loss / 3) is None  # the loss has fallen since
    model.settings_key = lambda: "other settings"
    assert model.kept_matrix(model.matrix_loss) is None


def test_only_the_adam_epochs_keep_eigenvectors_in_single_precision(synthetic, tmp_path):
    """The epochs' backward passes keep single-precision eigenvectors (a gradient that only
    steers Adam); afterwards every simulator keeps them in full again, so the reverse-mode
    Jacobians rest on exact gradients."""
    from blochnet.refinement import pipeline

    crystal, dataset = synthetic
    config = _config(epochs=1)
    model = refinement_for(crystal, [dataset], config)
    seen = []
    original = model.objectives[0].simulator.intensities

    def recording(*args, **kwargs):
        seen.append(model.objectives[0].simulator.kept)
        return original(*args, **kwargs)

    model.objectives[0].simulator.intensities = recording
    pipeline._adam(model, config, tmp_path / "checkpoint.pt", False, None, epochs=1)
    assert seen and set(seen) == {"single"}
    assert model.objectives[0].simulator.kept == "full"
    full = config.model_copy(update=dict(kept_eigenvectors="full"))
    seen.clear()
    pipeline._adam(model, full, tmp_path / "checkpoint.pt", False, None, epochs=1)
    assert set(seen) == {"full"}


def test_the_convergence_test_with_single_precision_gradients_reaches_the_same_state(synthetic):
    """The convergence test's exact gradients Jᵀr may keep the eigenvectors in single
    precision (the default of a refinement): only those backward passes do, the simulators
    keep them in full again afterwards, and the steps, the test and the s.u. are those of
    full-precision gradients to far below the test's limit."""
    from blochnet.refinement.engine import parameter_groups
    from blochnet.refinement.uncertainty import converge_structure

    crystal, dataset = synthetic
    rates = LearningRates(xyz=1e-3, adp=1e-3, orientation=0.0, thickness=0.0)
    results, seen = {}, []
    for precision in ("full", "single"):
        model = refinement_for(_moved(crystal, 0.002), [dataset], _config(learning_rates=rates))
        parameter_groups(model, rates.model_dump())
        model.update_robust_scale(fresh=True)
        simulator = model.objectives[0].simulator
        original = simulator.intensities

        def recording(*args, simulator=simulator, original=original, asked=precision, **kwargs):
            if torch.is_grad_enabled():
                seen.append((asked, simulator.kept))
            return original(*args, **kwargs)

        simulator.intensities = recording
        results[precision] = converge_structure(
            model, n_parameters=count_parameters(model), max_steps=10, eigenvectors=precision
        )
        assert simulator.kept == "full"
    assert seen and all(kept == precision for precision, kept in seen)
    (full, full_record), (single, single_record) = results["full"], results["single"]
    assert full_record["converged"] and full_record["steps"] >= 1
    assert single_record["steps"] == full_record["steps"]
    np.testing.assert_allclose(
        single_record["max_shift_su"], full_record["max_shift_su"], rtol=0, atol=1e-5
    )
    np.testing.assert_allclose(single["xyz"], full["xyz"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(single["free"], full["free"], rtol=1e-8)
