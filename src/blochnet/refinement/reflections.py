"""The reflection file of a refinement: every observation, compared or not.

``reflections.csv`` has one row per row of each data file: data set, frame, h k l, Io, σ,
the scaled Ic (empty where not compared), d [Å], the excitation error s_g [Å⁻¹] at the
frame's centre as the data file orients it (before the refined corrections; positive
inside the Ewald sphere), the weight of the observation in the final objective (1/σ² for
least squares; for the robust loss 1/(σ²(1 + (r/c)²)) at the refined residual r; 0 where
not fitted), whether Io > 3σ, whether it was used, and why not ("held out" for a
validation row). ``reflections.fcf`` is the same list as a CIF loop in the spirit of
SHELXL's .fcf (``_refln_F_squared_meas``/``_sigma``/``_calc``, ``_refln_observed_status``
o, <, or x for a row left out), followed by a block with the symmetry-merged list
(:mod:`blochnet.refinement.merging`), which ``merged.csv`` also holds.
"""

from __future__ import annotations

import csv
import io
import re

import numpy as np
import torch

from blochnet.experiment.geometry import beam_directions
from blochnet.io.cif_write import loop_lines
from blochnet.lattice import reciprocal_matrix

COLUMNS = (
    "dataset", "frame", "h", "k", "l", "i_obs", "sigma", "i_calc", "d", "s_g", "weight",
    "observed", "used", "reason",
)  # fmt: skip
MERGED_COLUMNS = ("dataset", "h", "k", "l", "n", "i_obs", "sigma", "i_calc")


def reflection_table(objective, name: str) -> dict[str, np.ndarray]:
    """Every row of the objective's data set (module notes), at the last ``forward()``."""
    sim = objective.simulator
    ds = sim.dataset
    n = len(ds.reflections)
    hkl = np.asarray(ds.reflections.hkl)
    g = hkl @ reciprocal_matrix(ds.cell).T
    g_norm = np.linalg.norm(g, axis=1)
    k_vec = beam_directions(ds)[ds.frame_index()] / ds.wavelength
    k_norm = np.linalg.norm(k_vec, axis=1)
    s_g = -(2 * np.einsum("ri,ri->r", k_vec, g) + g_norm**2) / (2 * k_norm)
    scored = objective.scored("all", last=True)
    i_calc = np.full(n, np.nan)
    i_calc[sim.used_rows] = scored["i_calc"].detach().cpu().numpy()
    fit = objective.fit.cpu().numpy()
    weight = np.zeros(n)
    with torch.no_grad():
        r = ((objective.i_obs - scored["i_calc"]) / objective.weight_sigma).cpu().numpy()
        w = 1 / objective.weight_sigma.cpu().numpy() ** 2
        c = float(objective.robust_c) if objective.robust > 0 else 0.0
    if c > 0:
        w = w / (1 + (r / c) ** 2)
    weight[sim.used_rows[fit]] = w[fit]
    reason = np.array(sim.selection.reason, dtype=object)
    reason[sim.used_rows[~fit]] = "held out"
    used = np.zeros(n, bool)
    used[sim.used_rows] = True
    intensity, sigma = np.asarray(ds.reflections.intensity), np.asarray(ds.reflections.sigma)
    with np.errstate(divide="ignore"):
        d = 1 / g_norm
    return {
        "dataset": np.full(n, name, dtype=object),
        "frame": np.asarray(ds.reflections.frame_id),
        "h": hkl[:, 0], "k": hkl[:, 1], "l": hkl[:, 2],
        "i_obs": intensity, "sigma": sigma, "i_calc": i_calc, "d": d, "s_g": s_g,
        "weight": weight, "observed": intensity > 3 * sigma, "used": used, "reason": reason,
    }  # fmt: skip


def concatenate(tables: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([t[key] for t in tables]) for key in tables[0]}


def write_csv(table: dict[str, np.ndarray], columns=COLUMNS) -> str:
    """The table as CSV text (numbers to 6 significant digits, nan as empty)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    cells = [[_cell(v) for v in table[c]] for c in columns]
    writer.writerows(zip(*cells, strict=True))
    return buffer.getvalue()


def fcf_text(table: dict[str, np.ndarray], merged: dict[str, np.ndarray], name: str) -> str:
    """The observation loop and the merged loop as a two-block CIF (module notes)."""
    status = np.where(~table["used"], "x", np.where(table["observed"], "o", "<"))
    block = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:60] or "blochnet"
    per_row = {
        "_refln_index_h": table["h"], "_refln_index_k": table["k"], "_refln_index_l": table["l"],
        "_refln_F_squared_meas": table["i_obs"], "_refln_F_squared_sigma": table["sigma"],
        "_refln_F_squared_calc": table["i_calc"], "_refln_observed_status": status,
        "_refln_d_spacing": table["d"], "_blochnet_refln_dataset": table["dataset"],
        "_blochnet_refln_frame": table["frame"], "_blochnet_refln_excitation_error": table["s_g"],
        "_blochnet_refln_weight": table["weight"], "_blochnet_refln_reason": table["reason"],
    }  # fmt: skip
    merged_loop = {
        "_refln_index_h": merged["h"], "_refln_index_k": merged["k"],
        "_refln_index_l": merged["l"], "_refln_F_squared_meas": merged["i_obs"],
        "_refln_F_squared_sigma": merged["sigma"], "_refln_F_squared_calc": merged["i_calc"],
        "_blochnet_refln_dataset": merged["dataset"], "_blochnet_refln_multiplicity": merged["n"],
    }  # fmt: skip
    lines = [
        "# Observations of a dynamical refinement (blochnet): one row per frame and hkl;",
        "# F_squared_* are intensities, _calc scaled to the frame; status x: not compared.",
        f"data_{block}_observations",
        *loop_lines({k: [_cell(v, missing="?") for v in col] for k, col in per_row.items()}),
        "",
        "# Merged by Laue-class equivalents on the scale of the calculation (see report.json).",
        f"data_{block}_merged",
        *loop_lines({k: [_cell(v, missing="?") for v in col] for k, col in merged_loop.items()}),
    ]
    return "\n".join(lines) + "\n"


def _cell(value, missing: str = "") -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{value:.6g}" if np.isfinite(value) else missing
    text = str(value)
    return text if text or not missing else "."
