"""Outputs of a refinement: ``report.json``, ``refined.cif``, ``observations.csv``, and
``thickness.csv`` and ``refinement.png`` (:mod:`blochnet.refinement.figures`)."""

from __future__ import annotations

import copy
import csv
import io
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from blochnet.crystal import UIJ_NAMES, Crystal
from blochnet.experiment.shards import any_process
from blochnet.io import strict_json
from blochnet.io.atomic import write_bytes_atomically, write_text_atomically
from blochnet.io.cif_write import program_version
from blochnet.lattice import uij_to_cartesian
from blochnet.refinement.end_state import save_end_state
from blochnet.refinement.figures import (
    FIGURE,
    dataset_name,
    draw_refinement,
    matplotlib_available,
    thickness_table,
    write_thickness_csv,
)
from blochnet.refinement.html_report import write_html_report
from blochnet.refinement.objective import joint_figures_of_merit
from blochnet.refinement.results import write_results


def refined_crystal(structure, su: dict | None = None) -> Crystal:
    """The crystal with the refined coordinates, ADPs, occupancies and charges, and their s.u.
    (from :func:`~blochnet.refinement.uncertainty.structure_uncertainties`) where refined."""
    crystal = copy.deepcopy(structure.model.crystal)
    with torch.no_grad():
        atoms = structure.atoms()
        u_cart = uij_to_cartesian(crystal.cell, atoms.uij)
    xyz, uij, occ = (t.detach().cpu().numpy() for t in (atoms.xyz, atoms.uij, atoms.occupancy))
    ueq = np.trace(u_cart.detach().cpu().numpy(), axis1=-2, axis2=-1) / 3
    charge = None if atoms.charge is None else atoms.charge.detach().cpu().numpy()
    for i, atom in enumerate(crystal.atoms):
        atom.xyz, atom.occupancy, atom.uiso, atom.su = xyz[i], float(occ[i]), float(ueq[i]), {}
        atom.charge = 0.0 if charge is None else float(charge[i])
        if atom.uij is not None:
            atom.uij = uij[i]
        if su is not None:
            values = {
                **dict(zip("xyz", su["xyz"][i], strict=True)),
                "uiso": su["ueq"][i],
                "occ": su["occupancy"][i],
                "charge": su["charge"][i],
            }
            if atom.uij is not None:
                values |= dict(zip(UIJ_NAMES, su["uij"][i], strict=True))
            atom.su = {k: float(v) for k, v in values.items() if v > 0}
    return crystal


def write_report(
    model,
    crystal: Crystal,
    history,
    config,
    out: Path,
    *,
    wall_time: float,
    su: dict | None = None,
    absolute_structure: dict | None = None,
    thickness_scan: list[dict] | None = None,
) -> dict:
    """Write ``report.json``, ``refined.cif``, ``observations.csv`` (every compared
    observation with its calculated intensity, as SHELXL's .fcf), ``thickness.csv`` (every
    frame's thickness distribution) and, with ``config.plot`` and matplotlib,
    ``refinement.png`` to ``out``; return the report, which lists the most disagreeable
    observations.

    ``absolute_structure``: the record of the hand refined (see
    :mod:`blochnet.refinement.absolute`), with ``inverse_of_refined`` (the R values of the
    refined structure inverted) where it was scored.
    """
    first = model.objectives[0]
    n_parameters = count_parameters(model)
    if any_process(not all(o.is_current() for o in model.objectives)):
        with torch.no_grad():
            model()  # one simulation per data set at the final parameters; reused below
    merit = joint_figures_of_merit(model.objectives, n_parameters=n_parameters, last=True)
    free = not all(bool(o.fit.all()) for o in model.objectives)
    frames = [entry for objective in model.objectives for entry in _frame_entries(objective)]
    table = _observation_table(model.objectives)
    report = {
        "r_obs": merit.r1_obs,
        "r_all": merit.r1_all,
        "wr2": merit.wr2,
        "gof": merit.gof,
        "n_obs": merit.n_obs,
        "r_obs_frame_mean": merit.r1_obs_frame_mean,
        "n_reflections": merit.n_all,
        "n_parameters": n_parameters,
        "selection_rule": first.simulator.selection.rule,
        "selection_counts": first.simulator.selection.counts(),
        "r_free": joint_figures_of_merit(model.objectives, subset="free", last=True).r1_obs
        if free
        else None,
        "atoms": [_atom_entry(atom) for atom in crystal.atoms],
        "absorption": {
            "kappa": float(torch.as_tensor(model.structure.absorption()).detach()),
            "su": (su or {}).get("absorption"),
            "refined": bool(model.structure.kappa_shift.numel()),
        },
        "absolute_structure": absolute_structure,
        "frames": frames,
        "most_disagreeable": _most_disagreeable(table, MOST_DISAGREEABLE),
        "epochs": len(history),
        "history": [asdict(h) for h in history],
        "standard_uncertainties": "from (JᵀJ)⁻¹·GoF² of the structure parameters, "
        "conditional on the refined thickness model and orientations",
        "convergence": (su or {}).get("convergence"),
        "wall_time_s": wall_time,
        "thickness_scan": thickness_scan or [],
        "figure": FIGURE if config.plot and matplotlib_available() else None,
        "config": json.loads(config.model_dump_json()),
    }
    refinement = {
        "r_obs": merit.r1_obs, "r_all": merit.r1_all, "wr2": merit.wr2, "gof": merit.gof,
        "n_reflections": merit.n_all, "n_parameters": n_parameters, "n_obs": merit.n_obs,
        "wavelength": first.simulator.dataset.wavelength,
        "details": f"blochnet dynamical refinement; {first.simulator.selection.rule}; "
                   f"thickness model {config.thickness.kind}",
        "abs_structure_details": _absolute_text(absolute_structure, merit),
    }  # fmt: skip
    names = [dataset_name(o) for o in model.objectives]
    report |= write_results(
        model, crystal, out, names=names, config=config, su=su, refinement=refinement,
        version=program_version(),
    )  # fmt: skip
    report = strict_json.strict(report)
    r_values = {k: report[k] for k in ("r_obs", "r_all", "wr2", "gof", "r_obs_frame_mean")}
    save_end_state(model, crystal, out, r_values=r_values, n_parameters=n_parameters)
    thickness = thickness_table(model.objectives)
    write_thickness_csv(thickness, out / "thickness.csv")
    write_text_atomically(out / "observations.csv", _csv(table))
    figure = draw_refinement(report, table, thickness) if report["figure"] else None
    if figure is not None:
        write_bytes_atomically(out / FIGURE, figure)
    write_text_atomically(out / "report.json", strict_json.dumps(report, indent=1) + "\n")
    write_html_report(out, figure=figure)  # the figure drawn once for both
    return report


def _frame_entries(objective) -> list[dict]:
    """One ``report.json`` entry per frame of a data set: angle, held out or not, thickness
    distribution summary, scale, orientation correction and R1(obs)."""
    thickness = objective.thickness.summary()
    scales = objective.scored("all", last=True)["scales"]
    fm = joint_figures_of_merit([objective], subset="all", last=True)
    fitted = np.bincount(objective.frame[objective.fit].cpu().numpy(), minlength=objective.n_frames)
    rotations = objective.rotations()
    rotation = (
        rotations.detach().cpu().numpy()
        if rotations is not None
        else np.zeros((objective.n_frames, 3))
    )
    frames = objective.simulator.dataset.frames
    return [
        {
            "dataset": dataset_name(objective),
            "id": int(frame_id),
            "alpha_deg": float(frames.alpha[f]),
            "held_out": bool(fitted[f] == 0),
            # mean, width and whatever else the model reports (e.g. flatness)
            **{f"thickness_{key}": float(v[f]) for key, v in thickness.items()},
            "scale": float(scales[f]),
            "orientation_correction_deg": np.degrees(rotation[f]).tolist(),
            "r1_obs": _finite(fm.per_frame["r1_obs"][f]),
            "n_obs": int(fm.per_frame["n_obs"][f]),
        }
        for f, frame_id in enumerate(frames.id)
    ]


MOST_DISAGREEABLE = 20  # observations listed in the report
_COLUMNS = ("dataset", "frame", "h", "k", "l", "i_obs", "sigma", "i_calc", "observed", "fit")


def _observation_table(objectives) -> dict[str, np.ndarray]:
    """Every compared observation of every data set: source, frame id, hkl, Io, σ(Io),
    scaled Ic, observed (Io > 3σ) and whether it is in the fit set (else held out)."""
    parts = []
    for objective in objectives:
        scored = objective.scored("all", last=True)
        sim = objective.simulator
        ds = sim.dataset
        i_obs, sigma = (scored[k].detach().cpu().numpy() for k in ("i_obs", "sigma"))
        n = len(i_obs)
        hkl = ds.reflections.hkl[sim.used_rows]
        parts.append({
            "dataset": np.full(n, dataset_name(objective), dtype=object),
            "frame": ds.frames.id[scored["frame"].cpu().numpy()],
            "h": hkl[:, 0], "k": hkl[:, 1], "l": hkl[:, 2],
            "i_obs": i_obs, "sigma": sigma,
            "i_calc": scored["i_calc"].detach().cpu().numpy(),
            "observed": i_obs > 3 * sigma,
            "fit": objective.fit.cpu().numpy(),
        })  # fmt: skip
    return {key: np.concatenate([p[key] for p in parts]) for key in _COLUMNS}


def _most_disagreeable(table: dict[str, np.ndarray], n: int) -> list[dict]:
    """The ``n`` observations of largest |Io − Ic|/σ(Io), largest first."""
    ratio = (table["i_obs"] - table["i_calc"]) / table["sigma"]
    order = np.argsort(-np.abs(np.nan_to_num(ratio, nan=np.inf)), kind="stable")[:n]
    return [
        {
            "dataset": str(table["dataset"][i]),
            "frame": int(table["frame"][i]),
            "hkl": [int(table[c][i]) for c in "hkl"],
            "i_obs": float(table["i_obs"][i]),
            "i_calc": float(table["i_calc"][i]),
            "sigma": float(table["sigma"][i]),
            "delta_over_sigma": _finite(ratio[i]),
        }
        for i in order
    ]


def _csv(table: dict[str, np.ndarray]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_COLUMNS)
    for i in range(len(table["i_obs"])):
        writer.writerow([
            table["dataset"][i], int(table["frame"][i]),
            *(int(table[c][i]) for c in "hkl"),
            *(f"{table[c][i]:.6g}" for c in ("i_obs", "sigma", "i_calc")),
            int(table["observed"][i]), int(table["fit"][i]),
        ])  # fmt: skip
    return buffer.getvalue()


def _absolute_text(record: dict | None, merit) -> str | None:
    """The absolute-structure evidence as a sentence for ``refined.cif``."""
    if not record or "inverse_of_refined" not in record:
        return None
    inverse = record["inverse_of_refined"]
    text = (
        f"Absolute structure from dynamical diffraction: R1(obs) {100 * merit.r1_obs:.2f} % "
        f"(frame mean {100 * merit.r1_obs_frame_mean:.2f} %); the same model inverted "
        f"{100 * inverse['r_obs']:.2f} % ({100 * inverse['r_obs_frame_mean']:.2f} %)."
    )
    if record.get("scan_r_obs"):
        scan = record["scan_r_obs"]
        text += (
            f" Thickness scan before refinement: {100 * scan['given']:.2f} % for the "
            f"starting structure as given, {100 * scan['inverted']:.2f} % inverted."
        )
    return text


def count_parameters(model) -> int:
    """Refined parameters as a crystallographer counts them: structure parameters, frame
    scales, the orientation corrections (three angles per frame at most) and the thickness
    model's own count, at most a mean and width per frame (a network's weights are not
    independent parameters)."""
    n = _trainable(model.structure)
    for objective in model.objectives:
        n += objective.n_frames  # scales
        if objective.orientation is not None:  # at most three angles per frame
            n += min(_trainable(objective.orientation), 3 * objective.n_frames)
        n += min(_trainable(objective.thickness), 2 * objective.n_frames)
    return n


def _trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _atom_entry(atom) -> dict:
    su = atom.su
    return {
        "label": atom.label,
        "xyz": [float(x) for x in atom.xyz],
        "xyz_su": [su.get(k, 0.0) for k in "xyz"],
        "uiso": atom.uiso,
        "uiso_su": su.get("uiso", 0.0),
        "uij": None if atom.uij is None else [float(u) for u in atom.uij],
        "uij_su": None if atom.uij is None else [su.get(k, 0.0) for k in UIJ_NAMES],
        "occupancy": atom.occupancy,
        "occupancy_su": su.get("occ", 0.0),
        "charge": atom.charge,
        "charge_su": su.get("charge", 0.0),
    }


def _finite(value):
    value = float(value)
    return value if np.isfinite(value) else None
