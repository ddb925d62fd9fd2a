"""The end state of a refinement, saved so that its R values can be reproduced.

``state.json`` in the output folder holds everything the final simulation used that the
other files round (``refined.cif`` rounds to the s.u.) or do not hold:

* ``structure``: the cell, the operators and every atom at full precision (label,
  element, x y z, Uij or Uiso [Å²], occupancy, charge [e]);
* ``absorption``: κ of U'_g = κ U_g;
* ``simulation``: the physics settings (as in ``config.json``);
* ``datasets``: per data set its file (absolute path), the number of refined parameters
  and, per frame, ``id``, ``thickness_A`` and ``weight`` (the thickness samples and their
  weights, the frame's learned distribution), ``rotation_rad`` (the orientation
  correction, a rotation vector in the Cartesian crystal frame [rad]), ``scale`` (the
  refined frame scale) and ``held_out``;
* ``r_values``: what the refinement reported, to compare with.

:func:`rescore` simulates every frame again from this file alone (and the data files)
and returns the R values; ``blochnet evaluate DIR`` prints them beside the recorded ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from blochnet.crystal import Atom, Cell, Crystal, SymOp
from blochnet.errors import InputFileError
from blochnet.experiment.config import SimulationConfig
from blochnet.experiment.frames import FrameSimulator
from blochnet.experiment.merit import figures_of_merit
from blochnet.io import strict_json
from blochnet.io.atomic import write_text_atomically

STATE = "state.json"
FORMAT = "blochnet refinement end state, version 1"


def save_end_state(model, crystal: Crystal, out: Path, *, r_values: dict, n_parameters: int):
    """Write ``state.json`` (module notes) for a refinement model at its final parameters."""
    datasets = []
    for objective in model.objectives:
        ds = objective.simulator.dataset
        with torch.no_grad():
            samples, weights = (x.detach().cpu().double().numpy() for x in objective.thickness())
            rotations = objective.rotations()
        rotation = (
            np.zeros((ds.n_frames, 3)) if rotations is None else rotations.detach().cpu().numpy()
        )
        scales = objective.scored("all", last=True)["scales"].detach().cpu().numpy()
        fit = objective.fit.cpu().numpy()
        fitted = np.bincount(objective.simulator.frame_of_used[fit], minlength=ds.n_frames)
        frames = [
            {
                "id": int(ds.frames.id[f]),
                "thickness_A": samples[f].tolist(),
                "weight": weights[f].tolist(),
                "rotation_rad": rotation[f].tolist(),
                "scale": float(scales[f]),
                "held_out": bool(fitted[f] == 0),
            }
            for f in range(ds.n_frames)
        ]
        source = str(Path(ds.source).resolve()) if ds.source else ""
        datasets.append({"source": source, "frames": frames})
    state = {
        "format": FORMAT,
        "structure": _structure(crystal),
        "absorption": float(torch.as_tensor(model.structure.absorption()).detach()),
        "simulation": model.objectives[0].simulator.config.model_dump(mode="json"),
        "n_parameters": n_parameters,
        "datasets": datasets,
        "r_values": r_values,
    }
    return write_text_atomically(out / STATE, strict_json.dumps(state) + "\n")


def _structure(crystal: Crystal) -> dict:
    return {
        "cell": list(crystal.cell.parameters),
        "spacegroup": crystal.spacegroup,
        "operators": [op.triplet() for op in crystal.operators],
        "atoms": [
            {
                "label": a.label, "element": a.element, "xyz": [float(x) for x in a.xyz],
                "uiso": a.uiso, "uij": None if a.uij is None else [float(u) for u in a.uij],
                "occupancy": a.occupancy, "charge": a.charge,
            }
            for a in crystal.atoms
        ],
    }  # fmt: skip


def load_end_state(directory: str | Path) -> dict:
    """The saved end state of the refinement in ``directory``."""
    import json

    path = Path(directory) / STATE
    if not path.is_file():
        raise InputFileError(path, "", "no saved end state (written by blochnet refine)")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputFileError(path, f"line {err.lineno}", f"not JSON: {err.msg}") from err
    if state.get("format") != FORMAT:
        raise InputFileError(path, "format", f"expected {FORMAT!r}, got {state.get('format')!r}")
    return state


def crystal_of(state: dict) -> Crystal:
    """The refined structure at full precision."""
    import gemmi

    s = state["structure"]
    operators = []
    for triplet in s["operators"]:
        op = gemmi.Op(triplet)
        rotation = np.rint(np.array(op.rot) / gemmi.Op.DEN).astype(int)
        operators.append(SymOp(rotation, np.array(op.tran) / gemmi.Op.DEN % 1.0, triplet))
    atoms = [
        Atom(
            a["label"], a["element"], np.array(a["xyz"]), a["occupancy"], a["uiso"],
            None if a["uij"] is None else np.array(a["uij"]), {}, a["charge"],
        )
        for a in s["atoms"]
    ]  # fmt: skip
    return Crystal(Cell(*s["cell"]), s["spacegroup"], operators, atoms)


def rescore(state: dict, datasets, *, dtype=torch.float64, device=None) -> dict:
    """R values of the saved end state against ``datasets`` (the refined data sets, in
    order): ``{"pooled": {...}, "datasets": [{...}, ...]}``, each with ``r_obs``,
    ``r_all``, ``wr2``, ``gof``, ``r_obs_frame_mean``, ``n_obs``, ``n_reflections``."""
    if len(datasets) != len(state["datasets"]):
        raise InputFileError(
            STATE, "datasets", f"{len(state['datasets'])} data sets refined, {len(datasets)} given"
        )
    crystal = crystal_of(state)
    config = SimulationConfig.model_validate(state["simulation"])
    parts = []
    for ds, saved in zip(datasets, state["datasets"], strict=True):
        parts.append(_score(crystal, ds, saved, config, state["absorption"], dtype, device))
    n_par = state["n_parameters"]
    out = {"pooled": _merit(parts, n_par), "datasets": [_merit([p], n_par) for p in parts]}
    return strict_json.strict(out)


def _score(crystal, dataset, saved, config, absorption, dtype, device) -> dict:
    ids = [f["id"] for f in saved["frames"]]
    if list(dataset.frames.id) != ids:
        raise InputFileError(dataset.source, "frames", "not the frames the refinement used")
    crystal = Crystal(dataset.cell, crystal.spacegroup, crystal.operators, crystal.atoms)
    sim = FrameSimulator.build(crystal, dataset, config, dtype=dtype, device=device)
    as_t = lambda key: torch.tensor(  # noqa: E731
        [f[key] for f in saved["frames"]], dtype=dtype, device=sim.model.device
    )
    with torch.no_grad():
        ic = sim.intensities(
            sim.model.atom_tensors(), as_t("thickness_A"), rotations=as_t("rotation_rad"),
            weights=as_t("weight"), absorption=absorption,
        )  # fmt: skip
    frame = torch.as_tensor(sim.frame_of_used, device=ic.device)
    held_out = np.array([f["held_out"] for f in saved["frames"]])
    fit = torch.as_tensor(~held_out[sim.frame_of_used], device=ic.device)
    rows = sim.used_rows
    return {
        "i_obs": torch.as_tensor(dataset.reflections.intensity[rows], dtype=dtype)[fit],
        "sigma": torch.as_tensor(dataset.reflections.sigma[rows], dtype=dtype)[fit],
        "i_calc": (as_t("scale")[frame] * ic)[fit],
        "frame": frame[fit],
        "ids": np.asarray(ids),
        "scales": as_t("scale"),
    }


def _merit(parts: list[dict], n_parameters: int) -> dict:
    offsets = np.cumsum([0] + [len(p["ids"]) for p in parts])
    fm = figures_of_merit(
        torch.cat([p["i_obs"] for p in parts]), torch.cat([p["sigma"] for p in parts]),
        torch.cat([p["i_calc"].cpu() for p in parts]),
        torch.cat([p["frame"].cpu() + int(o) for p, o in zip(parts, offsets, strict=False)]),
        np.concatenate([p["ids"] for p in parts]), n_parameters=n_parameters,
        scales=torch.cat([p["scales"].cpu() for p in parts]),
    )  # fmt: skip
    return {
        "r_obs": fm.r1_obs, "r_all": fm.r1_all, "wr2": fm.wr2, "gof": fm.gof,
        "r_obs_frame_mean": fm.r1_obs_frame_mean, "n_obs": fm.n_obs, "n_reflections": fm.n_all,
    }  # fmt: skip
