"""Hydrogen atoms placed geometrically on their carrier atoms (SHELXL's HFIX, in short).

A group is named by its carrier and kind: ``XH3`` (methyl or ammonium: tetrahedral about
the one heavy neighbour A, staggered against a neighbour of A), ``XH2`` (two heavy
neighbours A, B: the H–X–H plane bisects A–X–B at right angles), ``XH`` (three heavy
neighbours: along minus the sum of the bond directions), ``XH-planar`` (two neighbours,
aromatic or amide: in their plane, away from both) and ``OH`` (one neighbour: tetrahedral
angle, staggered like XH3). X–H distances are the internuclear ones of neutron
diffraction (Allen & Bruno 2010, Acta Cryst. B66, 380): C–H 1.09 Å, N–H 1.03 Å (1.01 Å in
NH2/NH), O–H 0.97 Å; electrons scatter from the potential, whose H maxima lie close to
the nuclei. Uiso is 1.5 × Ueq of the carrier for XH3 and OH, 1.2 × for the others.

The positions follow the carrier's neighbours as they are when placed; place them again
after a refinement (``blochnet hydrogens refined.cif``) to let them ride.
"""

from __future__ import annotations

import copy

import numpy as np

from blochnet.crystal import Atom, Crystal
from blochnet.errors import ConfigurationError
from blochnet.lattice import direct_matrix
from blochnet.refinement.geometry import neighbours

TETRAHEDRAL = np.degrees(np.arccos(-1 / 3))  # 109.47°
_LENGTH = {"C": 1.09, "N": 1.03, "O": 0.97}
_GROUPS = {"XH3": 3, "XH2": 2, "XH": 1, "XH-planar": 1, "OH": 1}


def place_hydrogens(crystal: Crystal, groups: dict[str, str]) -> Crystal:
    """The crystal with hydrogen atoms added on the carriers of ``groups`` (label ->
    kind, module notes), labelled H<carrier label><letter> (H1A, H1B, ...)."""
    out = copy.deepcopy(crystal)
    m = direct_matrix(crystal.cell)
    neighbours = _heavy_neighbours(crystal)
    for label, kind in groups.items():
        if kind not in _GROUPS:
            known = ", ".join(sorted(_GROUPS))
            raise ConfigurationError(f"{label}: unknown hydrogen group {kind!r} (known: {known})")
        carrier = crystal.atom(label)
        around = neighbours.get(label, [])
        needed = {"XH3": 1, "OH": 1, "XH2": 2, "XH": 3, "XH-planar": 2}[kind]
        if len(around) < needed:
            raise ConfigurationError(
                f"{label}: a {kind} group needs {needed} non-H neighbours, found {len(around)}"
            )
        x = m @ carrier.xyz
        directions = _directions(kind, x, [m @ p for p in around[:needed]], crystal, m)
        length = _LENGTH.get(carrier.element, 1.0)
        if carrier.element == "N" and kind != "XH3":
            length = 1.01
        factor = 1.5 if kind in ("XH3", "OH") else 1.2
        stem = "H" + label.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
        for n, direction in enumerate(directions):
            xyz = np.linalg.solve(m, x + length * direction)
            name = stem + ("ABC"[n] if len(directions) > 1 else "")
            out.atoms.append(Atom(name, "H", xyz, 1.0, factor * carrier.uiso))
    return out


def _heavy_neighbours(crystal: Crystal) -> dict[str, list[np.ndarray]]:
    """Fractional positions of the bonded non-H neighbours of every atom (nearest first)."""
    heavy = [a.element not in ("H", "D") for a in crystal.atoms]
    return {
        atom.label: [position for j, position in found if heavy[j]]
        for atom, found in zip(crystal.atoms, neighbours(crystal), strict=True)
    }


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _directions(kind, x, around, crystal, m) -> list[np.ndarray]:
    bonds = [_unit(a - x) for a in around]
    if kind == "XH":
        return [_unit(-sum(bonds))]
    if kind == "XH-planar":
        return [_unit(-(bonds[0] + bonds[1]))]
    if kind == "XH2":
        bisector = _unit(-(bonds[0] + bonds[1]))
        normal = _unit(np.cross(bonds[0], bonds[1]))
        half = np.radians(TETRAHEDRAL / 2)
        return [_unit(np.cos(half) * bisector + s * np.sin(half) * normal) for s in (1, -1)]
    # XH3 / OH: tetrahedral about the bond to A, staggered against a neighbour of A
    axis = -bonds[0]
    reference = _staggering_reference(x, around[0], crystal, m, axis)
    ortho = _unit(reference - np.dot(reference, axis) * axis)
    side = np.cross(axis, ortho)
    tilt = np.radians(180 - TETRAHEDRAL)
    count = 3 if kind == "XH3" else 1
    out = []
    for n in range(count):
        phi = np.pi + 2 * np.pi * n / 3  # anti to the reference neighbour
        radial = np.cos(phi) * ortho + np.sin(phi) * side
        out.append(_unit(np.cos(tilt) * axis + np.sin(tilt) * radial))
    return out


def _staggering_reference(x, a, crystal, m, axis) -> np.ndarray:
    """A direction perpendicular to the X–A bond: towards a heavy neighbour of A other
    than X where there is one, else any."""
    a_frac = np.linalg.solve(m, a)
    for atom, found in zip(crystal.atoms, neighbours(crystal), strict=True):
        for op in crystal.operators:
            image = op.rotation @ atom.xyz + op.translation
            shift = a_frac - image
            if np.allclose(shift, np.round(shift), atol=1e-6):  # this atom's image is A
                for j, position in found:
                    other = m @ (op.rotation @ position + op.translation + np.round(shift))
                    if crystal.atoms[j].element != "H" and np.linalg.norm(other - x) > 0.1:
                        return other - a
    return np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
