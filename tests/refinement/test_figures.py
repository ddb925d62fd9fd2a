"""thickness.csv and refinement.png: the distribution table agrees with the report, the
figure is drawn (and redrawn by ``blochnet plot``) from the output files alone."""

import base64
import copy
import csv
import json
import struct

import numpy as np
import pytest
from small_data import SIMULATION, small_quartz_frames
from typer.testing import CliRunner

from blochnet.cli.main import EXIT_USER_ERROR, app
from blochnet.examples import example_path
from blochnet.io.cif import read_structure
from blochnet.refinement import figures
from blochnet.refinement.config import LearningRates, RefineConfig
from blochnet.refinement.pipeline import refine
from blochnet.refinement.thickness import ThicknessConfig

N_GRID = 12


@pytest.fixture(scope="module")
def refined(tmp_path_factory):
    """Two epochs of a grid-thickness refinement with a frame held out."""
    out = tmp_path_factory.mktemp("figures")
    crystal = read_structure(example_path("quartz"))
    dataset = small_quartz_frames(crystal, seed=3)
    config = RefineConfig(
        simulation=SIMULATION,
        epochs=2,
        thickness=ThicknessConfig(kind="neural-grid", t0=500.0, n_grid=N_GRID),
        learning_rates=LearningRates(xyz=5e-4, adp=0.0, orientation=0.0, thickness=0.05),
        refine_orientation=False,
        auto_setup=False,
        holdout_fraction=0.2,
    )
    refine(crystal, [dataset], out, config)
    return out, dataset, json.loads((out / "report.json").read_text())


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_thickness_csv_holds_each_frames_distribution_as_the_report_summarises_it(refined):
    out, dataset, report = refined
    rows = _rows(out / "thickness.csv")
    assert list(rows[0]) == list(figures.THICKNESS_COLUMNS)
    assert len(rows) == dataset.n_frames * N_GRID
    for frame in report["frames"]:
        mine = [r for r in rows if int(r["frame"]) == frame["id"]]
        t, w = (np.array([float(r[c]) for r in mine]) for c in ("thickness_A", "weight"))
        assert len(mine) == N_GRID and w.sum() == pytest.approx(1.0, abs=1e-5)
        mean = (w * t).sum()
        width = np.sqrt((w * (t - mean) ** 2).sum())
        assert mean == pytest.approx(frame["thickness_mean"], rel=1e-4)
        assert width == pytest.approx(frame["thickness_width"], rel=1e-3)
        assert float(mine[0]["alpha_deg"]) == pytest.approx(frame["alpha_deg"], abs=1e-4)
    alphas = [f["alpha_deg"] for f in report["frames"]]
    np.testing.assert_allclose(alphas, dataset.frames.alpha)
    held = [f["held_out"] for f in report["frames"]]
    assert 0 < sum(held) < len(held)  # holdout_fraction 0.2 of the frames


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def test_the_figure_is_written_and_redrawn_from_the_files_by_blochnet_plot(refined, tmp_path):
    out, _, report = refined
    assert report["figure"] == figures.FIGURE
    width, height = _png_size(out / figures.FIGURE)
    assert width > 1000 and height > 700
    # report.html embeds the figure file's own PNG (drawn once for both)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert base64.b64encode((out / figures.FIGURE).read_bytes()).decode("ascii") in page
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    for name in ("report.json", "observations.csv", "thickness.csv"):
        (copy_dir / name).write_bytes((out / name).read_bytes())
    result = CliRunner().invoke(app, ["plot", str(copy_dir)])
    assert result.exit_code == 0, result.output
    assert _png_size(copy_dir / figures.FIGURE) == (width, height)
    assert not list(copy_dir.glob(".*.tmp"))  # written atomically, nothing left over


def test_plot_of_a_folder_without_the_outputs_names_what_is_missing(refined, tmp_path):
    out, _, _ = refined
    (tmp_path / "report.json").write_bytes((out / "report.json").read_bytes())
    result = CliRunner().invoke(app, ["plot", str(tmp_path)])
    assert result.exit_code == EXIT_USER_ERROR
    assert "observations.csv" in result.output and "thickness.csv" in result.output
    assert not (tmp_path / figures.FIGURE).exists()


def test_a_broken_report_is_named_with_its_line(refined, tmp_path):
    out, _, _ = refined
    for name in ("observations.csv", "thickness.csv"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    (tmp_path / "report.json").write_text('{"r_obs": 0.05,\n  oops}\n')
    result = CliRunner().invoke(app, ["plot", str(tmp_path)])
    assert result.exit_code == EXIT_USER_ERROR
    assert "report.json" in result.output and "line 2" in result.output


def test_several_data_sets_are_laid_out_in_turn_with_their_boundaries(refined):
    out, _, report = refined
    frames = report["frames"]
    second = [dict(f, dataset="second.cif_pets") for f in frames]
    x, label, boundaries = figures._frame_axis(frames + second)
    assert label.startswith("frame") and boundaries == [len(frames) - 0.5]
    np.testing.assert_array_equal(x, np.arange(2 * len(frames)))
    x, label, boundaries = figures._frame_axis(frames)
    assert "angle" in label and boundaries == []
    # and the whole figure draws for two data sets
    both = copy.deepcopy(report) | {"frames": frames + second}
    thickness = {k: np.asarray(v) for k, v in figures._read_csv(
        out / "thickness.csv", set(figures.THICKNESS_COLUMNS)).items()}  # fmt: skip
    doubled = {k: np.concatenate([v, v]) for k, v in thickness.items()}
    doubled["dataset"][len(thickness["dataset"]) :] = "second.cif_pets"
    observations = figures._read_csv(out / "observations.csv", {"i_obs"})
    png = figures.draw_refinement(both, observations, doubled)
    assert png[:4] == b"\x89PNG"


def test_no_figure_without_matplotlib_or_with_plot_off(monkeypatch, tmp_path):
    crystal = read_structure(example_path("quartz"))
    dataset = small_quartz_frames(crystal, seed=3)
    config = RefineConfig(
        simulation=SIMULATION,
        epochs=1,
        thickness=ThicknessConfig(kind="global", t0=500.0),
        refine_orientation=False,
        auto_setup=False,
        plot=False,
    )
    refine(crystal, [dataset], tmp_path / "off", config)
    assert json.loads((tmp_path / "off" / "report.json").read_text())["figure"] is None
    assert not (tmp_path / "off" / figures.FIGURE).exists()
    assert len(_rows(tmp_path / "off" / "thickness.csv")) == dataset.n_frames  # one each
    monkeypatch.setattr(figures, "matplotlib_available", lambda: False)
    monkeypatch.setattr("blochnet.refinement.report.matplotlib_available", lambda: False)
    refine(crystal, [dataset], tmp_path / "none", config.model_copy(update={"plot": True}))
    assert not (tmp_path / "none" / figures.FIGURE).exists()
    result = CliRunner().invoke(app, ["plot", str(tmp_path / "none")])
    assert result.exit_code == EXIT_USER_ERROR and "matplotlib" in result.output


def test_a_damaged_table_is_named_with_its_line_and_column(refined, tmp_path):
    out, _, _ = refined
    for name in ("report.json", "thickness.csv"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    lines = (out / "observations.csv").read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[3].split(",")
    cells[header.index("i_calc")] = "n/a"
    lines[3] = ",".join(cells)
    (tmp_path / "observations.csv").write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(app, ["plot", str(tmp_path)])
    assert result.exit_code == EXIT_USER_ERROR
    assert "observations.csv" in result.output and "line 4, column i_calc" in result.output


def test_a_near_zero_intensity_does_not_stretch_the_intensity_axes():
    """Ten thousand intensities between 10 and 1e5 and one of 1e-6: the axes start near
    10, not at 1e-6, and the outlier is counted as drawn on the edge."""
    from matplotlib.figure import Figure

    rng = np.random.default_rng(0)
    i_calc = 10 ** rng.uniform(1, 5, 10_000)
    i_obs = i_calc * rng.normal(1, 0.05, i_calc.size)
    i_obs[17] = 1e-6
    table = {"i_obs": i_obs, "i_calc": i_calc, "observed": np.ones_like(i_obs)}
    ax = Figure().subplots()
    figures._observation_panel(ax, table)
    low, high = ax.get_ylim()
    assert 2 < low < 10 and high > 1e5
    assert "1 below the range" in ax.get_title()
