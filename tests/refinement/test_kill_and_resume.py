"""Interrupted runs: SIGINT and SIGTERM save a checkpoint after the epoch; SIGKILL at any
moment (set-up, epochs, s.u.) loses at most the work since the last checkpoint, and
``--resume`` then ends at the same result as a run never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from small_data import refine_command, run_refine, small_refinement_inputs

from blochnet.io.cif import read_structure
from blochnet.refinement.config import RefineConfig
from blochnet.refinement.interrupts import Interrupted
from blochnet.refinement.pipeline import refine

CONFIG = """
epochs = 6
checkpoint_every = 2
lr_final = 0.2
refine_orientation = false
refine_charge = "none"
auto_setup = false
absolute_structure = "check"
plot = false
[simulation]
n_tilts = 3
g_max = 1.5
sg_max = 0.03
[simulation.selection]
g_max = 1.1
rsg_max = 1.0
[thickness]
kind = "global"
t0 = 500.0
[learning_rates]
xyz = 5e-4
adp = 0.0
orientation = 0.0
thickness = 0.0
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    """A displaced quartz structure, small synthetic data and the configuration, as files."""
    return small_refinement_inputs(tmp_path_factory.mktemp("inputs"), CONFIG)


def _signal_when(inputs, out: Path, marker: str, signum: int) -> tuple[int, str]:
    """Start a run, send ``signum`` when ``marker`` appears on its stderr; (status, stderr)."""
    process = subprocess.Popen(
        refine_command(inputs, out), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    seen = []
    for line in process.stderr:
        seen.append(line)
        if marker in line:
            process.send_signal(signum)
            break
    seen += process.stderr.readlines()
    process.wait(timeout=300)
    assert any(marker in line for line in seen), "".join(seen)
    return process.returncode, "".join(seen)


@pytest.fixture(scope="module")
def straight(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    run_refine(inputs, out)
    return out


def assert_same_result(out: Path, reference: Path) -> None:
    """The same refined parameters, s.u. and R values (report.json, full precision). A
    resumed run repeats the remaining epochs' arithmetic, not always in the same memory
    layout, so values agree to ~1e-14 relative, not bit for bit."""
    a = json.loads((out / "report.json").read_text())
    b = json.loads((reference / "report.json").read_text())
    assert len(a["history"]) == len(b["history"])
    for key in ("r_obs", "r_all", "wr2", "gof"):
        assert a[key] == pytest.approx(b[key], rel=1e-9), key
    for x, y in zip(a["atoms"], b["atoms"], strict=True):
        for key in ("xyz", "uij", "xyz_su", "uiso"):
            np.testing.assert_allclose(x[key], y[key], rtol=1e-9, atol=1e-15, err_msg=key)
    assert (out / "refined.cif").exists()


@pytest.mark.parametrize(
    "stage, marker",
    [
        ("set-up", "setup: "),
        ("epochs", "epoch    3 "),
        ("s.u.", "standard uncertainties: Jacobian"),
    ],
)
def test_a_sigkill_in_any_stage_resumes_to_the_same_refined_structure(
    inputs, straight, tmp_path, stage, marker
):
    status, _ = _signal_when(inputs, tmp_path, marker, signal.SIGKILL)
    assert status == -signal.SIGKILL
    assert not (tmp_path / "refined.cif").exists()
    if stage == "set-up":
        assert not (tmp_path / "checkpoint.pt").exists()
    resumed = run_refine(inputs, tmp_path, "--resume")
    if stage == "set-up":
        assert "nothing to resume" in resumed.stderr
    else:
        assert "nothing to resume" not in resumed.stderr
    assert_same_result(tmp_path, straight)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_in_the_first_epoch_saves_a_checkpoint_and_says_how_to_go_on(
    inputs, straight, tmp_path, signum
):
    status, stderr = _signal_when(inputs, tmp_path, "epoch    1 ", signum)
    assert status == 130
    name = signal.Signals(signum).name
    assert f"interrupted ({name}: stopped after epoch" in stderr
    assert "continue with --resume" in stderr and "Traceback" not in stderr
    assert (tmp_path / "checkpoint.pt").exists()
    resumed = run_refine(inputs, tmp_path, "--resume")
    assert "epoch    1 " not in resumed.stderr  # it went on from the checkpoint
    assert_same_result(tmp_path, straight)


def test_resume_with_nothing_to_resume_says_so(inputs, tmp_path):
    config = RefineConfig.model_validate(
        __import__("tomllib").loads(CONFIG) | {"epochs": 1, "absolute_structure": "given"}
    )
    crystal = read_structure(inputs[0])
    dataset = __import__("blochnet").read_pets(inputs[1])
    with pytest.warns(UserWarning, match=f"nothing to resume in {tmp_path}"):
        refine(crystal, [dataset], tmp_path, config, resume=True)


def test_a_signal_during_an_epoch_stops_after_it_with_the_checkpoint_of_that_epoch(
    inputs, tmp_path
):
    import tomllib

    config = RefineConfig.model_validate(
        tomllib.loads(CONFIG) | {"absolute_structure": "given", "checkpoint_every": 5}
    )
    crystal = read_structure(inputs[0])
    dataset = __import__("blochnet").read_pets(inputs[1])

    def interrupt(record):
        if record.epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)  # (ignored where the tests run in the background)
    with pytest.raises(Interrupted, match="SIGINT: stopped after epoch 1; saved in"):
        refine(crystal, [dataset], tmp_path, config, report=interrupt)
    assert signal.getsignal(signal.SIGINT) is before  # restored
    import torch

    assert len(torch.load(tmp_path / "checkpoint.pt", weights_only=False)["history"]) == 1
