"""The take-away files of a refinement: complete ``refined.cif``, the reflection files
(:mod:`blochnet.refinement.reflections`), the merged R values
(:mod:`blochnet.refinement.merging`) per data set and pooled, and the difference map."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from blochnet.crystal import Crystal, find_space_group
from blochnet.io.atomic import write_text_atomically
from blochnet.io.cif_write import write_structure
from blochnet.refinement import refinement_cif as items
from blochnet.refinement.difference_map import difference_coefficients, map_outputs
from blochnet.refinement.merging import kinematical_r, merge
from blochnet.refinement.objective import joint_figures_of_merit
from blochnet.refinement.reflections import (
    MERGED_COLUMNS,
    concatenate,
    fcf_text,
    reflection_table,
    write_csv,
)

REFLECTIONS = "reflections.csv"
FCF = "reflections.fcf"
MERGED = "merged.csv"


def write_results(
    model, crystal: Crystal, out: Path, *, names: list[str], config, su: dict | None,
    refinement: dict, version: str,
) -> dict:  # fmt: skip
    """Write ``reflections.csv``, ``reflections.fcf``, ``merged.csv`` and ``refined.cif``;
    return ``{"datasets": [...], "merged": {...}}`` for ``report.json``: the frame-wise R
    values of each data set and the merged R values of each and of all together.

    ``refinement``: the statistics of :func:`~blochnet.io.cif_write.write_structure`.
    """
    tables, merged_tables, per_dataset = [], [], []
    for objective, name in zip(model.objectives, names, strict=True):
        table = reflection_table(objective, name)
        tables.append(table)
        used = table["used"]
        scale_of_row = objective.scored("all", last=True)["scales"].detach().cpu().numpy()
        scale = scale_of_row[objective.simulator.dataset.frame_index()]
        hkl = np.column_stack([table[c] for c in "hkl"])[used]
        merged = merge(crystal, hkl, table["i_obs"][used], table["sigma"][used],
                       table["i_calc"][used], scale[used])  # fmt: skip
        unique = merged.pop("table")
        merged_tables.append({"dataset": np.full(merged["n_unique"], name, dtype=object),
                              **unique})  # fmt: skip
        merged["kinematical"] = _kinematical(crystal, unique, objective, config)
        fm = joint_figures_of_merit([objective], last=True)
        per_dataset.append({
            "name": name, "r_obs": fm.r1_obs, "r_all": fm.r1_all, "wr2": fm.wr2,
            "r_obs_frame_mean": fm.r1_obs_frame_mean, "n_obs": fm.n_obs,
            "n_reflections": fm.n_all, "merged": merged,
        })  # fmt: skip
    table, merged_table = concatenate(tables), concatenate(merged_tables)
    write_text_atomically(out / REFLECTIONS, write_csv(table))
    write_text_atomically(out / MERGED, write_csv(merged_table, MERGED_COLUMNS))
    write_text_atomically(out / FCF, fcf_text(table, merged_table, _stem(crystal)))
    pooled = _pooled(per_dataset)
    diff = None
    if find_space_group(crystal.operators) is not None:
        diff = map_outputs(
            crystal, merged_table, out, voltage=model.objectives[0].simulator.dataset.voltage,
            table=config.simulation.scattering,
        )  # fmt: skip
    _write_cif(model, crystal, out, table, config, su, refinement, version, pooled, diff)
    return {"datasets": per_dataset, "merged": pooled, "difference_map": diff}


def _kinematical(crystal, unique: dict, objective, config) -> dict:
    """Merged <Io> against the refined model's kinematical intensities (one scale)."""
    hkl = np.column_stack([unique[c] for c in "hkl"])
    _, f_calc = difference_coefficients(
        crystal, hkl, unique["i_obs"], unique["i_calc"],
        voltage=objective.simulator.dataset.voltage, table=config.simulation.scattering,
    )  # fmt: skip
    return kinematical_r(unique["i_obs"], unique["sigma"], np.abs(f_calc) ** 2)


def _pooled(per_dataset: list[dict]) -> dict:
    """The merged statistics of one data set, or for several their list (merging across
    data sets would need a scale between them, which is not refined)."""
    if len(per_dataset) == 1:
        return per_dataset[0]["merged"]
    return {"per_dataset": [d["merged"] | {"name": d["name"]} for d in per_dataset]}


def _write_cif(model, crystal, out, table, config, su, refinement, version, merged, diff):
    structure, type_loops = items.structure_items(crystal, scattering=config.simulation.scattering)
    d = np.asarray(table["d"], dtype=float)
    hkl = np.column_stack([table[c] for c in "hkl"])
    wavelength = model.objectives[0].simulator.dataset.wavelength
    r_int = merged if "r_int" in merged else None
    sim = config.simulation
    beams = [
        float(g.batch.mask.sum(-1).float().mean()) for o in model.objectives
        for g in o.simulator.groups
    ]  # fmt: skip
    rocking = model.objectives[0].simulator.rocking
    method = (
        f"blochnet {version}: dynamical refinement against frame-wise intensities; Bloch-wave "
        f"(many-beam) calculation with beams |g| <= {sim.g_max:g} A^-1 and |s_g| <= "
        f"{sim.sg_max:g} A^-1 (mean {np.mean(beams):.0f} beams per orientation), rocking "
        f"mode {rocking}; thickness model {config.thickness.kind}; frame scales and "
        f"orientation corrections refined per frame"
    )
    rows = items.refinement_items(
        crystal, n_total=int(np.sum(table["used"])),
        shift_over_su=None if su is None else su.get("shift_over_su"),
        robust=config.robust, instability=config.instability, method=method,
    )  # fmt: skip
    merged_text = (
        f"Merged (Laue class) on the scale of the calculation: R_int {merged['r_int']:.4f}, "
        f"R1(obs) {merged['r1_obs']:.4f}, wR2 {merged['wr2']:.4f} over "
        f"{merged['n_unique']} unique reflections."
        if r_int
        else ""
    )
    if diff is not None:
        rows |= {
            "_refine_diff_density_max": f"{diff['max']:.3f}",
            "_refine_diff_density_min": f"{diff['min']:.3f}",
            "_refine_diff_density_rms": f"{diff['rms']:.3f}",
        }
    refinement = refinement | {"details": f"{refinement.get('details', '')}\n{merged_text}".strip()}
    write_structure(
        crystal, out / "refined.cif",
        block_name=f"{_stem(crystal)}_refined",
        refinement=refinement,
        items=structure | items.data_items(hkl, d, wavelength, r_int=r_int) | rows,
        loops=type_loops + items.geometry_loops(
            crystal, None if su is None else su.get("xyz_covariance")
        ),
        comments=items.NOT_APPLICABLE,
    )  # fmt: skip


def _stem(crystal: Crystal) -> str:
    """The structure's name for the refined block: its block name without ``data_`` or
    ``_refined``, or else its file name."""
    name = (crystal.block or "").removeprefix("data_").removesuffix("_refined")
    if name in ("", "data", "refined"):
        name = Path(crystal.source).stem if crystal.source else "structure"
    return name
