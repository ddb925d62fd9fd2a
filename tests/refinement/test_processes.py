"""A refinement in several processes (``--workers``, or a launcher's RANK / WORLD_SIZE):
the same result as one process to 1e-8 in float64 (each evaluation to 1e-12), Ctrl-C
stops every process after the same epoch and ``--resume`` goes on to that result, and
input errors are reported once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from small_data import refine_command, run_refine, small_refinement_inputs

# the defaults but for size: the set-up (hand, thickness scan, beam checks), the
# thickness network, orientations, the robust loss and the convergence steps all run
CONFIG = """
epochs = 6
checkpoint_every = 2
refine_charge = "none"
plot = false
[simulation]
n_tilts = 3
g_max = 1.5
sg_max = 0.03
[simulation.selection]
g_max = 1.1
rsg_max = 1.0
[thickness]
t0 = 500.0
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    """A displaced quartz structure, small synthetic data and the configuration, as files."""
    return small_refinement_inputs(tmp_path_factory.mktemp("inputs"), CONFIG)


@pytest.fixture(scope="module")
def one(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    run_refine(inputs, out)
    return out


# One evaluation agrees to 1e-12 with the frames shared (test_shards). This refinement of
# a small data set far from its minimum (its loss doubles and halves between epochs), with
# 50 thickness-fit steps per epoch, amplifies the rounding of sums taken in another order
# (1e-16) to about 1e-9 after its 6 epochs and Gauss–Newton steps; the normal matrices of
# those steps are made in single precision (derivatives to ~1e-7 relative, rounded
# differently where each process batches other orientations), which moves the steps by
# ~2e-7 relative: far below any s.u., but above the rounding of float64 sums.
AGREE = 1e-6


def assert_same_result(out: Path, reference: Path) -> None:
    """Every refined parameter (atoms, frame scales, thicknesses, orientations), its s.u.
    and every R value within ``AGREE`` (relative; of the largest of a kind for values near
    0)."""
    a = json.loads((out / "report.json").read_text())
    b = json.loads((reference / "report.json").read_text())
    assert len(a["history"]) == len(b["history"])
    assert a["n_obs"] == b["n_obs"]
    for key in ("r_obs", "r_all", "wr2", "gof", "r_obs_frame_mean"):
        assert a[key] == pytest.approx(b[key], rel=AGREE), key
    for x, y in zip(a["history"], b["history"], strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=AGREE)
    for x, y in zip(a["atoms"], b["atoms"], strict=True):
        for key in ("xyz", "uij", "xyz_su", "uij_su", "uiso"):
            _close(x[key], y[key], key)
    for key in ("scale", "thickness_mean", "thickness_width", "orientation_correction_deg"):
        _close([f[key] for f in a["frames"]], [f[key] for f in b["frames"]], key)
    # already in units of s.u.: compared absolutely (near convergence they are small
    # differences of large numbers, 1e-6 relative of 0.13 s.u. measured)
    assert a["convergence"]["max_shift_su"] == pytest.approx(
        b["convergence"]["max_shift_su"], rel=0, abs=1e-5
    )
    assert (out / "refined.cif").exists()


def _close(x, y, what: str) -> None:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    np.testing.assert_allclose(x, y, rtol=AGREE, atol=AGREE * np.abs(y).max(), err_msg=what)


def test_two_workers_give_the_result_of_one_process(inputs, one, tmp_path):
    done = run_refine(inputs, tmp_path, "--workers", "2")
    assert_same_result(tmp_path, one)
    assert done.stderr.count("epoch    6 ") == 1  # printed by one process
    report = json.loads((tmp_path / "report.json").read_text())
    processes = report["timings"]["processes"]
    assert processes["count"] == 2 and all(p > 0 for p in processes["peak_memory_gb"])
    assert not list(tmp_path.glob("blochnet-process-*"))


def test_processes_started_by_a_launcher_join_its_group(inputs, one, tmp_path):
    """As torchrun starts them: RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    base = os.environ | {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    started = [
        subprocess.Popen(
            refine_command(inputs, tmp_path),
            env=base | {"RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for r in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in started]
    assert [p.returncode for p in started] == [0, 0], outputs[0][1] + outputs[1][1]
    assert "epoch" not in outputs[1][1]  # rank 1 quiet
    assert_same_result(tmp_path, one)


def test_ctrl_c_stops_every_worker_after_one_epoch_and_resume_ends_at_the_same_result(
    inputs, one, tmp_path
):
    process = subprocess.Popen(
        refine_command(inputs, tmp_path, "--workers", "2"),
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    seen = []
    for line in process.stderr:
        seen.append(line)
        if "epoch    1 " in line:
            process.send_signal(signal.SIGINT)  # to the parent, as the terminal's Ctrl-C
            break
    seen += process.stderr.readlines()
    process.wait(timeout=300)
    stderr = "".join(seen)
    assert process.returncode == 130, stderr
    assert "interrupted (SIGINT: stopped after epoch" in stderr and "Traceback" not in stderr
    assert stderr.count("interrupted") == 1
    resumed = run_refine(inputs, tmp_path, "--workers", "2", "--resume")
    assert "epoch    1 " not in resumed.stderr
    assert_same_result(tmp_path, one)


def test_an_input_error_is_reported_once_by_the_workers(inputs, tmp_path):
    broken = tmp_path / "broken.cif_pets"
    broken.write_text(inputs[1].read_text().replace("_cell_length_a", "_cell_length_q", 1))
    done = subprocess.run(
        [sys.executable, "-m", "blochnet", "refine", str(inputs[0]), str(broken),
         "--out", str(tmp_path / "out"), "--workers", "2"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("error:") == 1 and "broken.cif_pets" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "extra, env, message",
    [
        (["--workers", "0"], {}, "--workers 0: expected 1 or more"),
        (["--workers", "2"], {"WORLD_SIZE": "2"}, "give one or the other"),
        ([], {"WORLD_SIZE": "two"}, "WORLD_SIZE='two'"),
        pytest.param(
            ["--workers", "2", "--device", "cuda"],
            {},
            "--device cuda",
            marks=pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="two GPUs here"),
        ),  # fmt: skip
    ],
)
def test_worker_counts_are_checked(inputs, tmp_path, extra, env, message):
    done = subprocess.run(
        refine_command(inputs, tmp_path, *extra), capture_output=True, text=True,
        env=os.environ | env,
    )  # fmt: skip
    assert done.returncode == 2 and message in done.stderr, done.stderr
