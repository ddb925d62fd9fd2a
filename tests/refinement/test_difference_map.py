"""The difference potential map finds what the model lacks."""

import copy

import gemmi
import numpy as np
import pytest

from blochnet.examples import example_path
from blochnet.io.cif import read_structure
from blochnet.lattice import direct_matrix, reciprocal_matrix
from blochnet.refinement.difference_map import difference_coefficients, map_outputs
from blochnet.refinement.merging import unique_indices

VOLTAGE = 200e3


def _unique_hkl(crystal, d_min):
    r = np.arange(-12, 13)
    hkl = np.array(np.meshgrid(r, r, r, indexing="ij")).reshape(3, -1).T
    g = np.linalg.norm(hkl @ reciprocal_matrix(crystal.cell).T, axis=1)
    hkl = hkl[(g > 0) & (g <= 1 / d_min)]
    return np.unique(unique_indices(crystal, hkl), axis=0)


def _intensities(crystal, hkl):
    _, f = difference_coefficients(
        crystal, hkl, np.ones(len(hkl)), np.ones(len(hkl)), voltage=VOLTAGE
    )
    return np.abs(f) ** 2


def test_strongest_difference_peak_sits_on_the_atom_left_out_of_the_model(tmp_path):
    full = read_structure(example_path("quartz"))
    partial = copy.deepcopy(full)
    partial.atoms = [a for a in partial.atoms if a.label != "O1"]
    hkl = _unique_hkl(full, 0.6)
    merged = {
        "h": hkl[:, 0], "k": hkl[:, 1], "l": hkl[:, 2],
        "i_obs": _intensities(full, hkl), "i_calc": _intensities(partial, hkl),
    }  # fmt: skip
    found = map_outputs(partial, merged, tmp_path, voltage=VOLTAGE, table="lobato")
    top = found["peaks"][0]
    mates = [op.rotation @ full.atom("O1").xyz + op.translation for op in full.operators]
    delta = np.array(mates) - np.array(top["xyz"])
    delta -= np.round(delta)
    distance = np.linalg.norm(delta @ direct_matrix(full.cell).T, axis=1).min()
    assert distance < 0.15
    assert top["height"] > 1.5 * abs(found["holes"][0]["height"])
    assert top["nearest_atom"] == "Si1"
    assert top["distance"] == pytest.approx(1.61, abs=0.1)  # an Si–O bond away
    ccp4 = gemmi.read_ccp4_map(str(tmp_path / found["file"]))
    assert ccp4.grid.unit_cell.a == pytest.approx(full.cell.a)
    assert np.max(ccp4.grid.array) == pytest.approx(found["max"], rel=1e-5)


def test_a_model_that_explains_the_data_leaves_a_flat_map(tmp_path):
    crystal = read_structure(example_path("quartz"))
    hkl = _unique_hkl(crystal, 0.8)
    i = _intensities(crystal, hkl)
    merged = {"h": hkl[:, 0], "k": hkl[:, 1], "l": hkl[:, 2], "i_obs": i, "i_calc": i}
    found = map_outputs(crystal, merged, tmp_path, voltage=VOLTAGE, table="lobato")
    assert found["rms"] < 1e-6
