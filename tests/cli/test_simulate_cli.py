"""The ``blochnet simulate`` command: files written, --like, reproducibility, clean errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from blochnet.cli.main import app
from blochnet.dataset import FrameTable, ReflectionTable
from blochnet.examples import example_path
from blochnet.io.pets import read_pets
from blochnet.io.pets_write import write_pets
from conftest import dataset_path

torch.set_num_threads(1)

QUARTZ = example_path("quartz")
SMALL = ["--n-tilts", "5", "--g-max", "1.5", "--threads", "1"]
SCAN = ["--rotation", "-10", "-3", "1", "--resolution", "1.3", *SMALL]


def run(*args):
    return CliRunner().invoke(app, ["simulate", *map(str, args)])


def test_simulate_writes_the_data_file_and_its_truth(tmp_path):
    out = tmp_path / "synthetic.cif_pets"
    result = run(QUARTZ, "--out", out, *SCAN, "--thickness-wedge", "300", "600", "0.2")
    assert result.exit_code == 0, result.output
    dataset = read_pets(out)
    truth = json.loads((tmp_path / "synthetic.cif_pets.truth.json").read_text())
    assert dataset.n_frames == truth["n_frames"] == 8
    assert len(dataset.reflections) == truth["n_rows"] > 0
    assert truth["frames"]["thickness_mean"][0] == pytest.approx(300.0)
    assert truth["frames"]["thickness_mean"][-1] == pytest.approx(600.0)
    assert truth["thickness_model"]["samples"] == 9 and truth["config"]["n_tilts"] == 5
    assert f"frames       {dataset.n_frames}" in result.stdout
    assert f"rows         {len(dataset.reflections)}" in result.stdout
    assert "mean I/σ" in result.stdout and str(out) in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, f"{out.name}.truth.json"]


def test_the_same_seed_gives_identical_files(tmp_path):
    texts = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        out = tmp_path / name / "data.cif_pets"
        options = ("--scale-jitter", "0.1", "--seed", "11", "--orientation", "random")
        assert run(QUARTZ, "--out", out, *SCAN, *options).exit_code == 0
        texts.append(out.read_text())
    assert texts[0] == texts[1]


def test_like_copies_the_frames_and_rows_of_a_data_file(tmp_path):
    measured = read_pets(dataset_path("quartz"))
    keep = np.isin(measured.reflections.frame_id, measured.frames.id[:3])
    fields = dataclasses.fields
    frames = FrameTable(
        **{f.name: getattr(measured.frames, f.name)[:3] for f in fields(FrameTable)}
    )
    refl = ReflectionTable(
        **{f.name: getattr(measured.reflections, f.name)[keep] for f in fields(ReflectionTable)}
    )
    like = tmp_path / "measured.cif_pets"
    write_pets(dataclasses.replace(measured, frames=frames, reflections=refl), like)
    out = tmp_path / "synthetic.cif_pets"
    result = run(QUARTZ, "--out", out, "--like", like, "--thickness", "400", *SMALL)
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "cell" in result.stderr
    dataset = read_pets(out)
    np.testing.assert_array_equal(dataset.reflections.hkl, refl.hkl)
    np.testing.assert_array_equal(dataset.reflections.frame_id, refl.frame_id)
    np.testing.assert_array_equal(dataset.frames.alpha, frames.alpha)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--dose", "-5"], "--dose"),
        (["--orientation", "1,0,0,0,1,0"], "--orientation"),
        (["--orientation", "1,0,0,0,1,0,0,0,-1"], "--orientation"),
        (["--rotation", "10", "0", "1"], "--rotation"),
        (["--thickness", "100", "--thickness-wedge", "100", "200", "0.1"], "not both"),
        (["--thickness-wedge", "100", "200", "0.9", "--distribution", "gaussian"], "spread"),
        (["--samples", "5"], "--samples needs"),
        (["--like", "missing.cif_pets", "--voltage", "300"], "--voltage"),
        (["--n-tilts", "0"], "--n-tilts"),
    ],
)
def test_a_bad_option_exits_with_2_and_leaves_no_file(tmp_path, options, message):
    out = tmp_path / "synthetic.cif_pets"
    result = run(QUARTZ, "--out", out, *SMALL, *options)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_missing_output_folder_or_structure_exits_with_2(tmp_path):
    result = run(QUARTZ, "--out", tmp_path / "no" / "such.cif_pets", *SCAN)
    assert result.exit_code == 2 and "does not exist" in result.stderr
    result = run(tmp_path / "missing.cif", "--out", tmp_path / "x.cif_pets", *SCAN)
    assert result.exit_code == 2 and "missing.cif" in result.stderr
    assert list(tmp_path.iterdir()) == []
