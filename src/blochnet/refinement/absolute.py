"""The absolute structure of a non-centrosymmetric crystal.

Multiple scattering breaks Friedel's law, so dynamical intensities tell a structure from
its inverse (Brázda et al. 2019, Science 364, 667): a refinement started in the wrong hand
cannot reach the right one by small shifts, and ends at a worse fit. Before refining,
``absolute_structure = "check"`` scans the thickness with the structure as given and with
its inverse (:meth:`blochnet.crystal.Crystal.inverted`) and keeps the hand with the lower
R1(obs); after refining, :func:`inverse_r_values` scores the refined structure inverted,
with every other refined parameter kept, as a measure of how clearly the data decide.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from blochnet.crystal import Crystal
from blochnet.experiment.prepared import PreparedData
from blochnet.refinement.config import RefineConfig
from blochnet.refinement.model import Refinement, build_refinement
from blochnet.refinement.simulation_settings import scan_thickness


@dataclass
class AbsoluteStructure:
    """Which hand is refined and why.

    mode : the configuration's choice (check, given or inverted).
    inverted : the refined structure is the inverse of the file's.
    space_group : the space group of the refined hand.
    scan_r_obs : best R1(obs) of the thickness scan (n_obs-weighted over data sets) for
        the structure ``"given"`` and ``"inverted"`` (None without a check).
    scan_thickness : best thickness of each data set's scan in the chosen hand [Å].
    """

    mode: str
    inverted: bool
    space_group: str = ""
    scan_r_obs: dict[str, float] | None = None
    scan_thickness: list[float] | None = None
    scans: list[dict] | None = None  # the scans' curves (ThicknessScan records), both hands
    note: str = ""

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("scan_thickness")
        out.pop("scans")
        return out

    @classmethod
    def from_dict(cls, record: dict) -> AbsoluteStructure:
        return cls(**{k: v for k, v in record.items() if k in cls.__dataclass_fields__})

    def describe(self) -> str:
        hand = "inverse of the file's structure" if self.inverted else "as given"
        text = f"absolute structure: {hand} ({self.space_group or 'space group unnamed'})"
        if self.scan_r_obs is not None:
            given, inverse = self.scan_r_obs["given"], self.scan_r_obs["inverted"]
            text += (
                f"; best R1(obs) of a thickness scan {100 * given:.2f} % as given, "
                f"{100 * inverse:.2f} % inverted"
            )
        return f"{text}{'; ' + self.note if self.note else ''}"


def choose_absolute_structure(
    crystal: Crystal, data: list[PreparedData], mode: str
) -> tuple[Crystal, AbsoluteStructure]:
    """The structure to refine (``crystal`` or its inverse) and the record of the choice;
    both hands are scanned with the same plans."""
    if crystal.is_centrosymmetric:
        note = "centrosymmetric: both hands are the same structure"
        return crystal, AbsoluteStructure(mode, False, crystal.spacegroup, note=note)
    if mode != "check":
        chosen = crystal.inverted() if mode == "inverted" else crystal
        record = AbsoluteStructure(mode, mode == "inverted", chosen.spacegroup, note="configured")
        return chosen, record
    inverse = crystal.inverted()
    scores, thicknesses, curves = {}, {}, []
    for hand, structure in (("given", crystal), ("inverted", inverse)):
        scans = [scan_thickness(d.simulator(structure), d.observations) for d in data]
        n_obs = sum(scan.merit.n_obs for scan in scans)
        scores[hand] = sum(scan.merit.r1_obs * scan.merit.n_obs for scan in scans) / max(n_obs, 1)
        thicknesses[hand] = [scan.best for scan in scans]
        curves += [
            scan.record(d.dataset.source or "data set", hand)
            for d, scan in zip(data, scans, strict=True)
        ]
    hand = "inverted" if scores["inverted"] < scores["given"] else "given"
    chosen = inverse if hand == "inverted" else crystal
    record = AbsoluteStructure(
        mode, hand == "inverted", chosen.spacegroup, scores, thicknesses[hand], scans=curves
    )
    return chosen, record


def inverse_r_values(
    model: Refinement, refined: Crystal, data: list[PreparedData], config: RefineConfig
) -> dict:
    """R values of the refined structure inverted, every other refined parameter (thickness
    model, orientations, κ; scales refitted in closed form) as refined, with the same
    plans."""
    inverse = build_refinement(data, config, crystal=refined.inverted())
    state = {
        key: value
        for key, value in model.state_dict().items()
        if ".structure." not in f".{key}" or "kappa" in key
    }
    inverse.load_state_dict(state, strict=False)
    with torch.no_grad():
        inverse()
    return inverse.last_r_values()
