"""The refinement pipeline prepares each data set once: one frame plan per settings, shared
by both hands, the thickness scans, the set-up checks, the model and the final scoring."""

import dataclasses
import inspect
import json
import warnings

import pytest
from small_data import SIMULATION, small_quartz_frames

import blochnet
from blochnet.crystal import Cell
from blochnet.examples import example_path
from blochnet.experiment import frames, plan, prepared
from blochnet.experiment.config import SimulationConfig
from blochnet.io.cif import read_structure
from blochnet.refinement.config import LearningRates, RefineConfig
from blochnet.refinement.pipeline import refine
from blochnet.refinement.thickness import ThicknessConfig
from blochnet.refinement.timings import Stage, Timings


@pytest.fixture(scope="module")
def quartz():
    crystal = read_structure(example_path("quartz"))
    return crystal, small_quartz_frames(crystal, seed=4)


def test_each_settings_is_planned_once_and_the_cell_warning_is_shown_once(
    quartz, tmp_path, monkeypatch
):
    """With the hand check, the thickness scan and the convergence check on: one plan for
    the starting settings (both hands, the scans, the model and the inverse share it) and
    one for each finer setting the check tries (taking it builds nothing more)."""
    crystal, dataset = quartz
    a, b, c, alpha, beta, gamma = dataset.cell.parameters
    off_cell = dataclasses.replace(crystal, cell=Cell(a * 1.001, b * 1.001, c, alpha, beta, gamma))
    builds = []

    def counting(dataset, settings=None, **options):
        builds.append((settings.model_dump_json(), options.get("frames")))
        return plan.build_plan(dataset, settings, **options)

    monkeypatch.setattr(prepared, "build_plan", counting)
    monkeypatch.setattr(frames, "build_plan", counting)
    # n_tilts and the selection fixed; the beam set (g_max, sg_max) left to the check
    simulation = SimulationConfig.model_validate(
        {"n_tilts": SIMULATION.n_tilts, "selection": SIMULATION.selection.model_dump()}
    )
    config = RefineConfig(
        simulation=simulation,
        epochs=1,
        thickness=ThicknessConfig(kind="global"),
        learning_rates=LearningRates(xyz=1e-4, adp=0.0, orientation=0.0, thickness=0.0),
        refine_charge="none",
        plot=False,
    )
    lines = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refine(off_cell, [dataset], tmp_path, config, setup_report=lines.append)
    cell_warnings = [w for w in caught if "cell differs" in str(w.message)]
    assert len(cell_warnings) == 1
    checks = [line for line in lines if "against a finer calculation" in line]
    assert any(line.startswith("absolute structure") for line in lines) and checks
    assert len(builds) == 1 + len(checks)
    assert len(set(builds)) == len(builds)  # no settings planned twice
    report = json.loads((tmp_path / "report.json").read_text())
    scans = report["thickness_scan"]  # both hands, the curve the hand check compared
    assert [scan["hand"] for scan in scans] == ["given", "inverted"]
    for scan in scans:
        assert len(scan["thickness"]) == len(scan["r1_obs"]) == 19
        assert scan["best"] == scan["thickness"][scan["r1_obs"].index(min(scan["r1_obs"]))]
    assert "Thickness scan" in (tmp_path / "report.html").read_text()
    timings = report["timings"]
    names = [stage["name"] for stage in timings["stages"]]
    assert names == [
        "prepare", "hand", "settings", "build", "epochs", "epochs: forward",
        "epochs: backward", "s.u.", "inverse", "outputs",
    ]  # fmt: skip
    assert all(stage["seconds"] >= 0 for stage in timings["stages"])
    assert timings["peak_memory_gb"] > 0.05  # a Python process with torch loaded
    assert sum(s["seconds"] for s in timings["stages"][:5]) <= timings["wall_time_s"]


def test_the_summary_line_sums_repeated_stages_and_nests_parts():
    timings = Timings(stages=[
        Stage("read", 0.25, 0.1), Stage("epochs", 20.0, 2.0), Stage("epochs: forward", 8.0, None),
        Stage("epochs: backward", 12.0, None), Stage("epochs", 10.0, 1.5),
    ])  # fmt: skip
    assert timings.summary() == (
        "time: read 0.2 s, epochs 30 s (forward 8.0 s, backward 12 s); peak memory 2.00 GB"
    )


def test_refine_is_a_plain_function_with_a_real_signature():
    assert inspect.isfunction(blochnet.refine)
    parameters = inspect.signature(blochnet.refine).parameters
    assert list(parameters)[:4] == ["crystal", "datasets", "out_dir", "config"]
    assert "Refine ``crystal`` against ``datasets``" in blochnet.refine.__doc__


def _small_config(**changes):
    return RefineConfig(
        simulation=SIMULATION,
        epochs=4,
        checkpoint_every=1,
        thickness=ThicknessConfig(kind="global", t0=500.0),
        learning_rates=LearningRates(xyz=5e-4, adp=0.0, orientation=0.0, thickness=1e-3),
        refine_orientation=False,
        refine_charge="none",
        auto_setup=False,
        absolute_structure="given",
        plot=False,
    ).model_copy(update=changes)


def test_mixed_precision_ends_in_float64_near_the_float64_result_and_resumes(quartz, tmp_path):
    """float32 for the first epochs, float64 for the last two (and the s.u.): the R values
    agree with a float64 run to 0.01 percentage points; an interruption in the float64 phase
    resumes to the uninterrupted result (to float32's accuracy)."""
    crystal, dataset = quartz
    double = refine(crystal, [dataset], tmp_path / "f64", _small_config())
    mixed = _small_config(precision="mixed", final_float64_epochs=2)
    result = refine(crystal, [dataset], tmp_path / "mixed", mixed)
    assert len(result.history) == 4
    assert abs(result.report["r_obs"] - double.report["r_obs"]) < 1e-4  # of R1 ≈ 0.3 %
    assert result.report["r_obs"] != double.report["r_obs"]  # a different precision ran

    def interrupt(record):
        if record.epoch == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        refine(crystal, [dataset], tmp_path / "again", mixed, report=interrupt)
    resumed = refine(crystal, [dataset], tmp_path / "again", mixed, resume=True)
    assert [h.epoch for h in resumed.history] == [1, 2, 3, 4]
    # float32 epochs agree between runs to float32's rounding (summation orders differ
    # with memory alignment), which a trajectory carries on: not bit for bit
    assert abs(resumed.report["r_obs"] - result.report["r_obs"]) < 1e-5


@pytest.mark.parametrize(
    "recompute, memory, expected",
    [("always", 1e12, True), ("never", 1.0, False), ("auto", 1e12, False), ("auto", 1.0, True)],
)
def test_batches_are_recomputed_in_the_backward_pass_as_configured(
    quartz, monkeypatch, recompute, memory, expected
):
    """'auto' recomputes where the epochs would keep more than the memory set aside."""
    from blochnet.refinement import model as model_module

    crystal, dataset = quartz
    monkeypatch.setattr(model_module, "_memory_for_gradients", lambda: memory)
    config = RefineConfig(simulation=SIMULATION, recompute=recompute)
    built = model_module.refinement_for(crystal, [dataset], config)
    assert built.objectives[0].simulator.recompute is expected
