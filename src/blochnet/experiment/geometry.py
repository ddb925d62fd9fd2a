"""Frame orientations of a 3D-ED data set (PETS2 convention).

Convention (the one place it is written down)
---------------------------------------------
Frames
    *Crystal frame*: the Cartesian frame of :mod:`blochnet.lattice` (a along x,
    b in the x–y plane); g = B h with B = ``reciprocal_matrix(cell)``, r = A x.
    *Lab frame*: electrons travel along −z (z points to the source); the goniometer axis
    is along +x; y = z × x. PETS's detector frame is this frame turned by
    ``rotation_axis_position`` about z.
Orientation at zero goniometer angles
    PETS writes ``UB`` (rows/columns as in the file) such that g_lab = UB h [Å^-1], so
    U = UB B^-1 is a rotation (checked on both shared files: |UᵀU − I| ≤ 1e-4, det +1,
    as expected of a 5-decimal UB). U is replaced by the nearest rotation (polar
    decomposition) to remove the rounding of the file.
Frame i
    M_i = R_z(ω_i − p) R_x(α_i) R_y(β_i) U, with p = ``rotation_axis_position`` and right-
    handed rotations R_x, R_y, R_z [deg in the file]. M_i maps crystal-frame vectors to
    the lab: g_lab = M_i B h. The outermost R_z only turns the pattern about the beam, so
    beam directions and excitation errors do not depend on ω or p. Evidence for the order:
    PETS's ω column equals the rotation axis position (glycine: ω ≈ 230.37°,
    p = 230.391°; quartz: ω ≈ 0.03°, p = 0), and with ω innermost the observed glycine
    reflections are far off the Ewald sphere.
Beam direction
    The direction of electron travel in the crystal frame is d_i = M_iᵀ (0, 0, −1).
    PETS's zone axis ``_diffrn_zone_axis_u/v/w`` points the other way, *towards the
    source*: A [uvw] is parallel to −d_i. On the shared files the angle between d_i and
    −A [uvw] is at most 0.0012° (quartz) and 0.0010° (glycine) over all frames. The sign is
    pinned by the Ewald sphere: with K = k d_i (k = 1/λ), the excitation errors
    s_g = (K² − |K + g|²) / (2K) of the reflections observed in frame i scatter about 0
    (median |s_g| 0.020 / 0.018 Å^-1 for quartz / glycine, about g times the frame's
    rocking range; mean of s_g/g² ≈ 2e-4 Å); with the opposite beam they are biased by
    −g²/k (median |s_g| 0.040 / 0.034 Å^-1, mean of s_g/g² ≈ −λ = −0.025 Å).
    DIALS's PETS exporter likewise writes the zone axis as −(beam direction).
Goniometer axis
    A tilt by δ about the goniometer axis (α → α + δ) gives M_i → M_i R(a_i, δ), with
    a_i = M_iᵀ R_z(ω_i − p) x̂ the axis in the crystal frame (:func:`goniometer_axis_crystal`).
"""

from __future__ import annotations

import numpy as np

from blochnet.dataset import Dataset
from blochnet.lattice import direct_matrix, reciprocal_matrix

BEAM_LAB = np.array([0.0, 0.0, -1.0])  # direction of electron travel in the lab frame
AXIS_LAB = np.array([1.0, 0.0, 0.0])  # goniometer axis in the lab frame (when ω = p)


def rotation(axis: int, angle: np.ndarray) -> np.ndarray:
    """Right-handed rotations about lab axis 0 (x), 1 (y) or 2 (z): (...,) [deg] -> (..., 3, 3)."""
    t = np.radians(np.asarray(angle, dtype=np.float64))
    c, s = np.cos(t), np.sin(t)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    out = np.zeros(t.shape + (3, 3))
    out[..., axis, axis] = 1.0
    out[..., i, i] = out[..., j, j] = c
    out[..., j, i] = s
    out[..., i, j] = -s
    return out


def u_matrix(dataset: Dataset) -> np.ndarray:
    """(3, 3) rotation U, the nearest rotation to UB B^-1 (crystal frame -> lab at zero angles)."""
    u = np.asarray(dataset.ub, dtype=np.float64) @ np.linalg.inv(reciprocal_matrix(dataset.cell))
    left, _, right = np.linalg.svd(u)
    return left @ right


def goniometer_matrices(dataset: Dataset) -> np.ndarray:
    """(frame, 3, 3) R_z(ω − p) R_x(α) R_y(β) of every frame."""
    f = dataset.frames
    spin = rotation(2, f.omega - dataset.rotation_axis_position)
    return spin @ rotation(0, f.alpha) @ rotation(1, f.beta)


def orientation_matrices(dataset: Dataset) -> np.ndarray:
    """(frame, 3, 3) M_i mapping Cartesian crystal-frame vectors to lab vectors."""
    return goniometer_matrices(dataset) @ u_matrix(dataset)


def beam_directions(dataset: Dataset) -> np.ndarray:
    """(frame, 3) unit direction of electron travel in the Cartesian crystal frame."""
    return np.einsum("fji,j->fi", orientation_matrices(dataset), BEAM_LAB)


def beam_zone_axes(dataset: Dataset) -> np.ndarray:
    """(frame, 3) direction of electron travel as direct-lattice [uvw] (real-valued).

    Scaled so that the largest |component| is 1, as PETS does; this is *minus* the PETS
    zone axis column (which points to the source).
    """
    uvw = np.linalg.solve(direct_matrix(dataset.cell), beam_directions(dataset).T).T
    return uvw / np.abs(uvw).max(axis=1, keepdims=True)


def goniometer_axis_crystal(dataset: Dataset) -> np.ndarray:
    """(frame, 3) unit goniometer axis in the crystal frame: tilting by δ gives M R(a, δ)."""
    m = orientation_matrices(dataset)
    axis_lab = rotation(2, dataset.frames.omega - dataset.rotation_axis_position) @ AXIS_LAB
    return np.einsum("fji,fj->fi", m, axis_lab)


def zone_axis_deviation(dataset: Dataset) -> np.ndarray:
    """(frame,) angle [deg] between the beam direction and minus the file's zone axis."""
    toward_source = -(direct_matrix(dataset.cell) @ dataset.frames.zone_axis.T).T
    toward_source /= np.linalg.norm(toward_source, axis=1, keepdims=True)
    cosine = np.einsum("fi,fi->f", beam_directions(dataset), toward_source)
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


def excitation_errors(dataset: Dataset, *, beam_sign: float = 1.0) -> np.ndarray:
    """(refl,) excitation error s_g [Å^-1] of each observed reflection in its frame.

    Notes
    -----
    s_g = (K² − |K + g|²) / (2K) with K = k d (k = 1/λ, the mean inner potential
    ignored), d the beam direction of the reflection's frame (times ``beam_sign``; −1
    gives the wrong-sign check) and g = B h in the crystal frame.
    """
    k = 1.0 / dataset.wavelength
    frame = dataset.frame_index()
    wave = beam_sign * k * beam_directions(dataset)[frame]
    g = dataset.reflections.hkl @ reciprocal_matrix(dataset.cell).T
    return -(2.0 * np.einsum("ri,ri->r", wave, g) + np.einsum("ri,ri->r", g, g)) / (2.0 * k)
