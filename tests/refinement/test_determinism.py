"""Reproducibility of a refinement on one machine (see docs/reproducibility.md): two runs
with the same inputs and seed write the same refined.cif and observations.csv, and every
number of report.json agrees to 1e-6 relative (|shift|/s.u. to 1e-6 s.u.), as with
another thread count: runs are usually bitwise identical, but a last-bit difference (the
BLAS kernels can take another path for another memory alignment or thread count) grows
through the epochs' and the convergence test's Gauss–Newton steps, whose normal matrices
are made in single precision (~1e-7 relative), to ~2e-7 in the s.u. and shifts, and
difference-map peaks are placed by a parabola through neighbouring map values, which
amplifies such noise (docs/reproducibility.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from small_data import run_refine
from test_kill_and_resume import inputs  # noqa: F401 (a fixture)

TIMES = {"wall_time_s", "timings", "seconds", "forward_s", "backward_s"}


def _numbers(record, path: str = "") -> dict[str, float]:
    """Every float of a JSON record by its path, run times left out."""
    if isinstance(record, dict):
        out = {}
        for key, value in record.items():
            if key not in TIMES:
                out |= _numbers(value, f"{path}.{key}")
        return out
    if isinstance(record, list):
        return {
            k: v for i, item in enumerate(record) for k, v in _numbers(item, f"{path}[{i}]").items()
        }
    return {path: record} if isinstance(record, float) else {}


def _largest_difference(a: Path, b: Path) -> float:
    """The largest relative difference between the numbers of two report.json files; the
    convergence test's |shift|/s.u. values, already in units of s.u., by their absolute
    difference (near convergence they are small differences of large numbers)."""
    x = _numbers(json.loads((a / "report.json").read_text()))
    y = _numbers(json.loads((b / "report.json").read_text()))
    assert x.keys() == y.keys()
    return max(
        (
            abs(x[k] - y[k]) / (1.0 if "shift" in k else max(abs(x[k]), 1e-300))
            for k in x
            if not math.isnan(x[k])
        ),
        default=0.0,
    )


@pytest.fixture(scope="module")
def two_runs(inputs, tmp_path_factory):  # noqa: F811
    runs = [tmp_path_factory.mktemp(name) for name in ("first", "second")]
    for out in runs:
        run_refine(inputs, out)
    return runs


def test_two_runs_write_the_same_files_and_numbers(two_runs):
    first, second = two_runs
    for name in ("refined.cif", "observations.csv", "thickness.csv"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert _largest_difference(first, second) < 1e-6


def test_another_thread_count_changes_the_numbers_by_less_than_1e_6(inputs, two_runs, tmp_path):  # noqa: F811
    structure, data, config = inputs
    out = tmp_path / "two-threads"
    run_refine(inputs, out, "--threads", "2")
    # the single-precision normal matrices differ by ~1e-7 with the threads' blocking, the
    # steps and s.u. by as much; a difference-map peak's sub-grid position (a parabola
    # through neighbouring map values) amplifies the rest
    assert _largest_difference(two_runs[0], out) < 1e-6
