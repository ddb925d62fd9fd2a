"""Dynamical intensities of Si against abTEM's independent Bloch-wave implementation.

Si (a = 5.431 Å, Fd-3m, 200 kV, B = 0, Lobato factors), surface normal [110], beam along
[110] and 3° off it (rotated about [001]), 50–500 Å, with the same g_max = 3 Å⁻¹ and
sg_max = 0.15 Å⁻¹ in both programs. Measured: strong beams (> 1 %) agree to 1.2e-4 on the
zone axis and 8e-5 off it; with g_max 3.5 / sg_max 0.2 they still agree to 1.2e-4 / 4e-5,
although both programs then move by up to 1.2e-2 (zone axis) and 8e-3 (3° off) alike: the
higher-order Laue-zone beams of the primer's convergence trap. The comparison is therefore
made at matched settings, as the primer advises.
"""

import numpy as np
import pytest
import torch

from blochnet.examples import example_path
from blochnet.experiment.pattern import simulate_pattern
from blochnet.io.cif import read_structure

pytest.importorskip("abtem")
from abtem_reference import abtem_silicon_intensities, beam_direction  # noqa: E402

THICKNESS = [50.0, 100.0, 200.0, 300.0, 500.0]
BEAMS = dict(g_max=3.0, sg_max=0.15)


@pytest.mark.parametrize(
    "tilt_mrad", [(0.0, 0.0), (np.radians(3.0) * 1e3, 0.0)], ids=["zone axis", "3 degrees off"]
)
def test_silicon_110_intensities_agree_with_abtem_bloch_waves(tilt_mrad):
    torch.set_num_threads(1)
    reference = abtem_silicon_intensities((1, 1, 0), tilt_mrad, THICKNESS, method="bloch", **BEAMS)
    direction = beam_direction((1, 1, 0), tilt_mrad)
    crystal = read_structure(example_path("silicon"))
    ours = simulate_pattern(crystal, direction, THICKNESS, normal=(1, 1, 0), **BEAMS)
    index = {tuple(h): i for i, h in enumerate(ours.hkl)}
    values = ours.intensities.detach().numpy()
    strong = [h for h, v in reference.items() if np.max(v) > 0.01]
    assert len(strong) >= 3 and all(h in index for h in strong)
    for h in strong:
        np.testing.assert_allclose(
            values[:, index[h]], reference[h], atol=3e-3, rtol=0, err_msg=f"beam {h}"
        )
    worst = max(np.abs(values[:, index[h]] - reference[h]).max() for h in strong)
    assert worst < 1e-3  # measured: 1.2e-4 on the zone axis, 8e-5 off it
