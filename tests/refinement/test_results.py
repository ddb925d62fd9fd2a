"""What a refinement leaves behind: strict JSON, a complete CIF that re-reads to the same
model, bond lengths with s.u., the reflection files and the merged R values."""

import csv
import json
from pathlib import Path

import gemmi
import numpy as np
import pytest
from small_data import SIMULATION, small_quartz_frames
from typer.testing import CliRunner

from blochnet.cli.main import app
from blochnet.crystal import Atom, Cell, Crystal, SymOp
from blochnet.examples import example_path
from blochnet.io.cif import parse_number, read_structure
from blochnet.io.pets import read_pets
from blochnet.io.pets_write import write_pets
from blochnet.refinement.config import LearningRates, RefineConfig
from blochnet.refinement.end_state import load_end_state, rescore
from blochnet.refinement.geometry import bonds_and_angles
from blochnet.refinement.merging import merge
from blochnet.refinement.pipeline import refine
from blochnet.refinement.thickness import ThicknessConfig

TAGS = """_refine_ls_shift/su_max _refine_ls_shift/su_mean _refine_ls_number_restraints
_refine_ls_number_constraints _refine_ls_structure_factor_coef _refine_ls_weighting_scheme
_refine_ls_weighting_details _reflns_threshold_expression _reflns_number_total
_reflns_number_gt _diffrn_reflns_number _diffrn_reflns_av_R_equivalents
_diffrn_reflns_limit_h_min _diffrn_reflns_theta_max _chemical_formula_sum
_chemical_formula_weight _cell_formula_units_Z _space_group_crystal_system
_audit_creation_date _computing_structure_refinement _refine_ls_R_factor_gt
_refine_ls_wR_factor_ref _refine_ls_goodness_of_fit_ref _diffrn_radiation_wavelength""".split()


@pytest.fixture(scope="module")
def refined(tmp_path_factory):
    crystal = read_structure(example_path("quartz"))
    out = tmp_path_factory.mktemp("refined")
    write_pets(small_quartz_frames(crystal, seed=3), out / "small.cif_pets")
    dataset = read_pets(out / "small.cif_pets")  # a file, as a user's data
    config = RefineConfig(
        simulation=SIMULATION,
        epochs=3,
        thickness=ThicknessConfig(kind="frame", t0=480.0),
        learning_rates=LearningRates(xyz=5e-4, adp=3e-4, orientation=3e-4, thickness=3e-3),
        auto_setup=False,
        plot=False,
    )
    return refine(crystal, [dataset], out / "run", config), dataset


def _refuse(token):
    raise ValueError(f"non-standard JSON constant {token}")


def test_every_json_output_parses_as_strict_json(refined):
    result, _ = refined
    for name in ("report.json", "config.json"):
        json.loads((result.out_dir / name).read_text(), parse_constant=_refuse)


def test_refined_cif_carries_the_items_of_a_complete_refinement(refined):
    result, _ = refined
    block = gemmi.cif.read(str(result.out_dir / "refined.cif")).sole_block()
    missing = [tag for tag in TAGS if block.find_value(tag) in (None, "?")]
    assert not missing
    assert block.name == "quartz_refined"
    assert block.find_value("_chemical_formula_sum").strip("'") == "O2 Si"
    assert block.find_value("_cell_formula_units_Z") == "3"
    assert block.find_value("_space_group_crystal_system") == "trigonal"
    assert len(block.find_values("_atom_type_scat_source")) == 2


def test_refined_cif_rereads_to_the_refined_model_within_its_su(refined):
    result, _ = refined
    again = read_structure(result.out_dir / "refined.cif")
    small = gemmi.read_small_structure(str(result.out_dir / "refined.cif"))
    assert [a.label for a in again.atoms] == [s.label for s in small.sites]
    for atom, back, site in zip(result.crystal.atoms, again.atoms, small.sites, strict=True):
        assert np.allclose(back.xyz, [site.fract.x, site.fract.y, site.fract.z])
        for axis, value, read in zip("xyz", atom.xyz, back.xyz, strict=True):
            su = atom.su.get(axis, 0.0)
            # one significant digit (two when it starts with 1): within a quarter
            assert back.su.get(axis, 0.0) == pytest.approx(su, rel=0.26, abs=1e-6)
            assert abs(read - value) <= max(su, 1e-6)  # rounded to the s.u.'s last digit
        assert back.uij == pytest.approx(atom.uij, abs=max(atom.su.values()))


def test_bond_lengths_in_the_cif_are_the_distances_gemmi_computes_between_those_sites(refined):
    result, _ = refined
    path = str(result.out_dir / "refined.cif")
    block = gemmi.cif.read(path).sole_block()
    small = gemmi.read_small_structure(path)
    sites = {s.label: s for s in small.sites}
    ops = [gemmi.Op(t.strip("'")) for t in block.find_values("_space_group_symop_operation_xyz")]
    table = block.find(
        "_geom_bond_", ["atom_site_label_1", "atom_site_label_2", "distance", "site_symmetry_2"]
    )
    assert len(table) == 4  # Si–O, four per SiO4 tetrahedron
    for row in table:
        one, two = sites[row[0]].fract, sites[row[1]].fract
        code = row[3]
        op, shift = (ops[0], "555") if code == "." else (ops[int(code[0]) - 1], code[2:])
        moved = np.array(op.apply_to_xyz([two.x, two.y, two.z])) + [int(c) - 5 for c in shift]
        distance = small.cell.orthogonalize(gemmi.Fractional(*moved)).dist(
            small.cell.orthogonalize(one)
        )
        value, su = parse_number(row[2])
        assert su > 0
        assert abs(distance - value) <= 1.5 * su  # the CIF's rounded sites against its bond
        assert 1.55 < value < 1.67


def test_bond_su_is_the_coordinate_and_cell_su_propagated_along_the_bond():
    cell = Cell(10.0, 10.0, 10.0, 90, 90, 90, su={"a": 0.01})
    atoms = [
        Atom("C1", "C", np.array([0.1, 0.2, 0.3])),
        Atom("C2", "C", np.array([0.25, 0.2, 0.3])),
    ]
    crystal = Crystal(cell, "P 1", [SymOp(np.eye(3, dtype=int), np.zeros(3), "x,y,z")], atoms)
    cov = np.diag([1e-6, 4e-6, 4e-6, 9e-6, 4e-6, 4e-6])  # σ(x1) 0.001, σ(x2) 0.003
    bonds, _ = bonds_and_angles(crystal, cov)
    (bond,) = bonds
    assert bond.distance == pytest.approx(1.5)
    # d = a (x2 − x1): σ² = a² (σx1² + σx2²) + (x2 − x1)² σa²
    expected = np.sqrt(100 * (1e-6 + 9e-6) + 0.15**2 * 0.01**2)
    assert bond.su == pytest.approx(expected, rel=1e-4)


def test_reflection_file_lists_every_row_of_the_data_with_its_fate(refined):
    result, dataset = refined
    with open(result.out_dir / "reflections.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(dataset.reflections)
    used = [r for r in rows if r["used"] == "1"]
    assert len(used) == result.report["n_reflections"]
    assert all(r["reason"] for r in rows if r["used"] == "0")
    for row in rows[:20]:
        hkl = np.array([int(row[c]) for c in "hkl"])
        g = np.linalg.norm(np.linalg.inv(_direct(dataset.cell)).T @ hkl)
        assert float(row["d"]) == pytest.approx(1 / g, rel=1e-5)
    block = gemmi.cif.read(str(result.out_dir / "reflections.fcf"))[0]
    assert len(block.find_values("_refln_index_h")) == len(rows)


def _direct(cell):
    from blochnet.lattice import direct_matrix

    return direct_matrix(cell)


def test_merging_averages_equivalents_and_gives_r_int_by_its_definition():
    crystal = read_structure(example_path("quartz"))  # P3221: 1 0 0 ≡ 0 1 0 ≡ -1 -1 0 (Laue)
    hkl = np.array([[1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, 0, 3]])
    i_obs = np.array([10.0, 14.0, 12.0, 5.0])
    sigma = np.ones(4)
    scale = np.array([1.0, 2.0, 1.0, 1.0])  # frame scales: Io/k = 10, 7, 12, 5
    merged = merge(crystal, hkl, i_obs, sigma * scale, i_obs, scale)
    assert merged["n_unique"] == 2
    order = np.argsort(merged["table"]["n"])
    assert merged["table"]["n"][order].tolist() == [1, 3]
    assert merged["table"]["i_obs"][order][1] == pytest.approx(29 / 3)
    r_int = (abs(10 - 29 / 3) + abs(7 - 29 / 3) + abs(12 - 29 / 3)) / 29
    assert merged["r_int"] == pytest.approx(r_int)
    assert merged["r1_obs"] == pytest.approx(0.0, abs=1e-12)  # Ic = Io: no misfit


def test_report_names_each_data_set_with_its_frame_wise_and_merged_r(refined):
    result, _ = refined
    (entry,) = result.report["datasets"]
    assert entry["r_obs"] == pytest.approx(result.report["r_obs"])
    assert entry["merged"]["n_unique"] > 0
    assert 0 <= result.report["merged"]["r_int"] < 2


R_KEYS = ("r_obs", "r_all", "wr2", "gof", "r_obs_frame_mean")


def test_saved_end_state_reproduces_the_final_r_values_to_1e_6(refined):
    result, dataset = refined
    again = rescore(load_end_state(result.out_dir), [dataset])["pooled"]
    for key in R_KEYS:
        assert again[key] == pytest.approx(result.report[key], abs=1e-6), key
    # the rounded CIF alone would not: the end state is what carries the final numbers


def test_evaluate_given_the_output_folder_prints_the_reproduced_r_values(refined):
    result, _ = refined
    run = CliRunner().invoke(app, ["evaluate", str(result.out_dir), "--json"])
    assert run.exit_code == 0, run.output
    printed = json.loads(run.output, parse_constant=_refuse)
    for key in R_KEYS:
        assert printed["pooled"][key] == pytest.approx(result.report[key], abs=1e-6)
        assert printed["recorded"][key] == pytest.approx(result.report[key], abs=1e-12)


def test_report_lists_unique_difference_peaks_away_from_atoms_and_the_map_opens(refined):
    result, _ = refined
    diff = result.report["difference_map"]
    grid = gemmi.read_ccp4_map(str(result.out_dir / diff["file"])).grid
    values = np.array(grid.array)
    assert diff["rms"] == pytest.approx(np.sqrt(np.mean(values**2)), rel=1e-5)
    heights = [p["height"] for p in diff["peaks"]]
    assert heights == sorted(heights, reverse=True)
    assert all(p["distance"] >= 0.5 for p in diff["peaks"])
    assert {"xyz", "height", "nearest_atom", "distance"} <= set(diff["peaks"][0])


CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: any fetch would fail
)  # fmt: skip


def _chromium():
    import shutil

    return next(
        (p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))),
        None,
    )


def test_report_html_is_one_file_that_fetches_nothing(refined):
    import re

    result, _ = refined
    page = (result.out_dir / "report.html").read_text(encoding="utf-8")
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page
    for number in ("R1(obs)", "R_int", "Si1–O1", "peak 1"):
        assert number in page


def test_report_html_renders_in_headless_chromium_with_its_figures(refined, tmp_path):
    import subprocess

    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    result, _ = refined
    url = (result.out_dir / "report.html").as_uri()
    profile = f"--user-data-dir={tmp_path / 'profile'}"
    dom = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, profile, "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert dom.count("<img") >= 2 and dom.count("<table") >= 4
    shot = tmp_path / "page.png"
    subprocess.run(
        [chromium, *CHROMIUM_FLAGS, profile, f"--screenshot={shot}", "--window-size=1200,2400",
         url],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[0] == 2400 and pixels[..., :3].std() > 0.05  # drawn, not blank


def test_two_data_sets_get_their_own_r_values_and_name_every_listed_observation(tmp_path):
    crystal = read_structure(example_path("quartz"))
    datasets = []
    for seed in (5, 6):
        path = tmp_path / f"crystal{seed}.cif_pets"
        write_pets(small_quartz_frames(crystal, seed=seed), path)
        datasets.append(read_pets(path))
    config = RefineConfig(
        simulation=SIMULATION, epochs=1, thickness=ThicknessConfig(kind="global", t0=500.0),
        refine_orientation=False, auto_setup=False, plot=False,
    )  # fmt: skip
    report = refine(crystal, datasets, tmp_path / "run", config).report
    names = [d["name"] for d in report["datasets"]]
    assert [Path(n).name for n in names] == ["crystal5.cif_pets", "crystal6.cif_pets"]
    assert sum(d["n_reflections"] for d in report["datasets"]) == report["n_reflections"]
    assert {o["dataset"] for o in report["most_disagreeable"]} <= set(names)
    assert [m["name"] for m in report["merged"]["per_dataset"]] == names
    with open(tmp_path / "run" / "reflections.csv", newline="") as handle:
        assert {row["dataset"] for row in csv.DictReader(handle)} == set(names)


def test_kinematical_r_finds_the_scale_and_is_zero_for_intensities_it_explains():
    from blochnet.refinement.merging import kinematical_r

    i_kin = np.array([1.0, 4.0, 9.0, 0.25])
    exact = kinematical_r(2 * i_kin, np.full(4, 0.01), i_kin)
    assert exact["scale"] == pytest.approx(2.0)
    assert exact["r1_obs"] == pytest.approx(0.0, abs=1e-12)
    off = kinematical_r(2 * i_kin * np.array([1.21, 1, 1, 1]), np.full(4, 0.01), i_kin)
    assert off["r1_obs"] > 0.01
