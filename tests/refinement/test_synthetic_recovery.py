"""Synthetic recovery, small: quartz simulated with a wedge, refined from a displaced start.

The fast variant of ``benchmarks/synthetic_recovery.py`` (``--quick`` sizes: 16 frames of
2° over 30°, fewer optimisation steps). Its assertions are looser than the benchmark's
targets but fail when recovery breaks: positions must come back from 0.1 Å by at least
a factor 5, and the neural thickness distribution must predict held-out frames better than
one thickness or one thickness per frame.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from blochnet.lattice import direct_matrix
from blochnet.sitesym import site_constraints

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "synthetic_recovery.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("synthetic_recovery", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quartz(bench):
    torch.set_num_threads(1)
    return bench.case_for("quartz", quick=True)


def test_displaced_start_moves_every_free_atom_by_0_1_angstrom_and_keeps_site_symmetry(bench):
    truth = bench.true_structure(bench.structure_path("cspbbr3"))
    start = bench.displaced(truth, np.random.default_rng(1))
    a_matrix = direct_matrix(truth.cell)
    moved = np.array([np.linalg.norm(a_matrix @ (s.xyz - t.xyz)) for s, t in
                      zip(start.atoms, truth.atoms, strict=True)])  # fmt: skip
    free = bench.movable(truth)
    assert not free.all() and free.any()  # Pb sits on an inversion centre
    np.testing.assert_allclose(moved[free], bench.DISPLACEMENT, rtol=1e-9)
    np.testing.assert_allclose(moved[~free], 0.0, atol=1e-12)
    assert [s.order for s in site_constraints(start)] == [s.order for s in site_constraints(truth)]
    assert all(atom.uiso == bench.START_UISO and atom.uij is None for atom in start.atoms)


def test_refinement_recovers_positions_adps_and_thickness_of_quartz(bench, quartz):
    row = bench.recovery(quartz, seed=0)
    (xyz_start, uiso_start), (xyz_end, uiso_end) = row["start"], row["end"]
    assert xyz_start == pytest.approx(bench.DISPLACEMENT)
    assert xyz_end < min(xyz_start / 5, 0.02)
    assert uiso_end < min(uiso_start / 3, 0.004)
    assert row["thickness"] < 0.06  # per-frame mean thickness within 6 %
    assert row["wr2"] < 5 * row["wr2_true"]
    scan = row["hand"].scan_r_obs  # the displaced start is still told from its inverse
    assert not row["hand"].inverted and scan["given"] < scan["inverted"]
    assert "quartz" in bench.recovery_table([row])


def test_neural_thickness_predicts_held_out_frames_better_than_single_thicknesses(bench, quartz):
    kinds = {label: bench.KINDS[label] for label in ("global", "frame", "neural")}
    rows = bench.comparison(quartz, kinds=kinds, seed=0)
    held_out_wr2 = {r["model"]: r["free"][1] for r in rows}
    assert set(held_out_wr2) == {"global", "frame (t0)", "frame", "neural", "true"}
    assert held_out_wr2["neural"] < held_out_wr2["global"]
    assert held_out_wr2["neural"] < held_out_wr2["frame"]
    assert held_out_wr2["true"] < held_out_wr2["neural"]
    assert "beats" in bench.comparison_table(rows)
