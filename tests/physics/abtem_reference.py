"""Independent reference intensities for crystalline Si (and polar zinc-blende ZnS) from abTEM.

abTEM (https://abtem.readthedocs.io, pinned ``abtem==1.0.11`` in the ``test`` extra) is run
as an *independent referee*: nothing of it is used by blochnet itself. abTEM is imported
lazily inside the functions, so this module imports without it (tests skip with
``pytest.importorskip("abtem")``).

Crystal
    Si, diamond structure (Fd-3m), conventional cubic cell a = 5.431 Å, 8 atoms at the
    positions of ``ase.build.bulk("Si", "diamond", cubic=True)`` (origin on an atom),
    Debye–Waller B = 0, occupancy 1, neutral-atom scattering factors of Lobato & Van Dyck,
    Acta Cryst. A70 (2014) 636 (abTEM's ``"lobato"`` parametrisation), no absorption.
    ``atoms=zinc_blende_atoms`` (with ``lattice_constant=LATTICE_CONSTANT_ZNS``) gives polar
    zinc-blende ZnS (F-43m, Zn at the origin, S at ¼ ¼ ¼) instead; multislice builds its
    potential from the atoms in real space, so it fixes the sign convention of U_g (a code
    with the opposite sign reproduces the inverted crystal, S at ¾ ¾ ¾). The atoms'
    cubic cell must have the lattice constant given (checked).

Frames and beam direction
    Miller indices hkl and directions [uvw] refer to the conventional cubic cell; because
    the cell is cubic, the Cartesian crystal frame coincides with the Miller basis and
    g = hkl / a [Å⁻¹, no 2π]. Each supported zone axis [uvw] has a fixed right-handed frame
    (x̂, ŷ, ẑ) with ẑ ∥ [uvw] (see :data:`ZONE_FRAMES`); for [110]:
    x̂ = [-1 1 0]/√2, ŷ = [0 0 1], ẑ = [1 1 0]/√2.

    ``tilt_mrad = (τx, τy)`` is abTEM's plane-wave tilt: the electrons travel along
    d ∝ tan(τx) x̂ + tan(τy) ŷ + ẑ. A pure τx is the right-handed rotation of ẑ by τx
    about +ŷ (towards +x̂); a pure τy the right-handed rotation by τy about −x̂ (towards
    +ŷ). For [110]: τx = 52.35988 mrad (3°) rotates the beam by 3° about [001] from [110]
    towards [-110]: d = [cos 48°, sin 48°, 0] = [0.66913, 0.74314, 0]
    (:func:`beam_direction`). The (001) mirror of the [110] zone contains this beam, so
    I(h k l) = I(h k -l) holds in the tilted pattern too.

Sign of hkl and units
    The beam listed as hkl is the one with wave vector K + g, g = hkl / a; the excitation
    error is s_g = (K² − |K + g|²) / (2K) with K = 1/λ (abTEM neglects U₀ in |K|), in Å⁻¹
    without 2π — the conventions of ``docs/primer.md`` and :mod:`blochnet.physics.beams`.

Surface and thickness
    The slab normal n is the zone axis ẑ (``surface_normal="zone"``, the default) and the
    thickness t is measured along n. On axis this is abTEM's own Bloch geometry. Off axis
    abTEM's :class:`abtem.bloch.BlochWaves` always takes n ∥ beam (its metric is
    1/sqrt(1 + g_z/K) with z the beam); ``surface_normal="beam"`` returns that pure abTEM
    result (t then along the beam), and ``"zone"`` re-symmetrises abTEM's structure matrix
    for n = ẑ: A_gh → (2K s_g δ_gh + U_{g−h}) / sqrt(b_g b_h), b_g = 1 + g·n/K_n,
    K_n = K·n, eigenvalues 2 K_n γ (see ``_bloch_propagate``). Multislice is always
    "zone": slices ⟂ ẑ, the tilt enters through abTEM's Fresnel propagator.

Intensities
    I_g(t) = |φ_g(t)|², the fraction of the incident beam, with φ_g the Bloch-wave beam
    amplitude (abTEM's convention; the flux through the exit surface is b_g |φ_g|², equal
    to |φ_g|² for every zero-order Laue-zone beam of the "zone" geometry, where g·n = 0).
    Without absorption Σ_g b_g I_g = 1 to rounding; Σ_g I_g differs from 1 through the
    higher-order Laue-zone (HOLZ) beams only (≤ 1.2e-4 here). abTEM drops U₀ from the
    diagonal (a common phase) and from |K|; using |K| = sqrt(1/λ² + U₀) instead
    (U₀ = 0.129 Å⁻² for this model) changes the intensities by ≤ 1.2e-4 up to 500 Å.

    Multislice returns the intensity of each diffraction spot (a Fourier component of the
    exit wave at a whole number of lattice periods), i.e. the coherent sum of all beams
    with the same projection onto the surface (the ZOLZ beam plus weak HOLZ beams). The
    grid is chosen so that every atom lies on a grid point (otherwise aliasing of the
    B = 0 nuclear cusps breaks the pattern symmetry by ~1e-3). Its total falls short of 1
    by what is scattered beyond abTEM's anti-aliasing aperture (≤ 1e-3 at 500 Å). The tilt
    is paraxial (coupling π U/K instead of π U/K_n), which moves I_000 by up to 3e-3 at
    500 Å for a 3° tilt (≤ 5e-4 up to 300 Å).

Accuracy (Si [110], 200 kV, see the benchmark)
    Off axis (3° about [001]) the Bloch defaults (g_max 5, sg_max 0.3, ~1960 beams, ~5 s)
    are within ~7e-4 of g_max 6–8; multislice (0.0125 Å) is converged to 1e-5 in sampling
    and agrees with Bloch to ≤ 6e-4 for the diffracted beams, while its I_000 is lower by
    1–3e-3: scattering beyond |g| = 5 Å⁻¹ (HOLZ, undamped with B = 0), which no Bloch beam
    set of g_max ≤ 8 Å⁻¹ holds, plus the paraxial tilt. On the zone axis the HOLZ rings
    (the first at |g| ≈ 4.56 Å⁻¹) make thick-crystal intensities depend on the beam set at
    the 1e-2 level beyond ~200 Å (2e-3 at 50–100 Å), and Bloch and multislice differ by as
    much; compare another Bloch code with the *identical* beam set (``result.hkl``) there.
See ``benchmarks/abtem_si_convergence.py`` for the convergence study behind the defaults.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

LATTICE_CONSTANT_SI = 5.431  # Å
LATTICE_CONSTANT_ZNS = 5.4093  # Å
ENERGY_200KV = 200e3  # eV

#: Right-handed frames (x̂, ŷ, ẑ ∥ zone) of the supported zone axes, as integer directions of
#: the cubic cell; the orthogonal supercell used by the multislice route, whose rows are
#: lattice vectors in units of a along x̂, ŷ, ẑ (Si atoms in it: 8 × |det|); and the number
#: of equally spaced atomic planes per period along ẑ (the default slices per period, so that
#: every slice boundary lies on an atomic plane).
ZONE_FRAMES: dict[tuple[int, int, int], dict] = {
    (0, 0, 1): {
        "x": np.array([1, 0, 0]),
        "y": np.array([0, 1, 0]),
        "cell": np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
        "layers": 4,
    },
    (1, 1, 0): {
        "x": np.array([-1, 1, 0]),
        "y": np.array([0, 0, 1]),
        "cell": np.array([[-0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]]),
        "layers": 2,
    },
    (1, 1, 1): {
        "x": np.array([1, -1, 0]),
        "y": np.array([1, 1, -2]),
        "cell": np.array([[0.5, -0.5, 0.0], [0.5, 0.5, -1.0], [1.0, 1.0, 1.0]]),
        "layers": 12,
    },
}

#: Defaults, from ``benchmarks/abtem_si_convergence.py``.
BLOCH_DEFAULTS = {"g_max": 5.0, "sg_max": 0.3}
MULTISLICE_DEFAULTS = {"sampling": 0.0125, "projection": "infinite"}


class AbtemIntensities(dict):
    """``{(h, k, l): intensities at the requested thicknesses}`` plus provenance.

    Attributes
    ----------
    thicknesses : ndarray (thick,) [Å], along the surface normal (along the beam for
        ``surface_normal="beam"``).
    beam_direction : ndarray (3,) unit vector of the electron beam in the cubic frame.
    surface_normal : ndarray (3,) unit slab normal in the cubic frame.
    method : ``"bloch"`` or ``"multislice"``.
    settings : dict of the numerical settings actually used.
    hkl : ndarray (beam, 3) int, the beams in abTEM's order (the Bloch beam set).
    excitation_errors : ndarray (beam,) s_g [Å⁻¹] of ``hkl`` (Bloch only, else None).
    total : ndarray (thick,) Σ_g I_g over every beam or spot computed.
    runtime_s : wall-clock seconds of the abTEM calculation.
    exit_plane_thicknesses, exit_plane_intensities : multislice only, the thicknesses of the
        exit planes (whole lattice periods) and ``{hkl: intensities there}``.
    """

    thicknesses: np.ndarray
    beam_direction: np.ndarray
    surface_normal: np.ndarray
    method: str
    settings: dict
    hkl: np.ndarray
    excitation_errors: np.ndarray | None
    total: np.ndarray
    runtime_s: float
    exit_plane_thicknesses: np.ndarray
    exit_plane_intensities: dict


def zone_frame(zone: Sequence[int]) -> np.ndarray:
    """Rows x̂, ŷ, ẑ (unit vectors, cubic frame) of the frame attached to ``zone``."""
    key = tuple(int(v) for v in zone)
    if key not in ZONE_FRAMES:
        raise ValueError(f"zone {key} not supported; choose one of {sorted(ZONE_FRAMES)}")
    frame = ZONE_FRAMES[key]
    rows = np.array([frame["x"], frame["y"], np.array(key)], dtype=float)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def beam_direction(zone: Sequence[int], tilt_mrad: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
    """Unit vector along which the electrons travel, in the cubic frame.

    d ∝ tan(τx) x̂ + tan(τy) ŷ + ẑ with (x̂, ŷ, ẑ) = :func:`zone_frame` (abTEM's tilt
    convention for ``PlaneWave(tilt=(τx, τy))`` in mrad).
    """
    frame = zone_frame(zone)
    tx, ty = (math.tan(float(t) * 1e-3) for t in tilt_mrad)
    d = tx * frame[0] + ty * frame[1] + frame[2]
    return d / np.linalg.norm(d)


def abtem_silicon_intensities(
    zone: Sequence[int] = (1, 1, 0),
    tilt_mrad: Sequence[float] = (0.0, 0.0),
    thicknesses: Sequence[float] = (50.0, 100.0, 200.0, 300.0, 500.0),
    *,
    energy: float = ENERGY_200KV,
    method: Literal["bloch", "multislice"] = "bloch",
    g_max: float | None = None,
    sg_max: float | None = None,
    surface_normal: Literal["zone", "beam"] = "zone",
    sampling: float | None = None,
    slices_per_period: int | None = None,
    projection: Literal["finite", "infinite"] | None = None,
    lattice_constant: float = LATTICE_CONSTANT_SI,
    atoms: Callable | None = None,
) -> AbtemIntensities:
    """Dynamical diffracted-beam intensities of a Si slab computed by abTEM.

    Parameters
    ----------
    zone : zone axis [uvw] (a key of :data:`ZONE_FRAMES`); the slab normal.
    tilt_mrad : beam tilt (τx, τy) [mrad] in the zone's frame (see :func:`beam_direction`).
        3° about [001] from [110] is ``(52.35987755982988, 0.0)``.
    thicknesses : slab thicknesses [Å] along the surface normal.
    energy : electron energy [eV].
    method : ``"bloch"`` (:class:`abtem.bloch.BlochWaves`) or ``"multislice"``.
    g_max : Bloch: largest |g| [Å⁻¹] of a beam (default 5.0). Multislice: largest |g| of a
        returned spot (default 3.0; it does not affect the calculation).
    sg_max : Bloch only: largest |s_g| [Å⁻¹] of a beam (default 0.3).
    surface_normal : Bloch only: ``"zone"`` (slab normal ∥ zone axis, default) or
        ``"beam"`` (abTEM's native geometry, normal ∥ beam, t along the beam).
    sampling : multislice only: largest lateral sampling [Å] (default 0.0125; scattering up
        to |g| = 1/(3 × sampling) = 26.7 Å⁻¹ is kept inside abTEM's anti-aliasing aperture).
        The grid is made slightly finer so that every atom lies on a grid point.
    slices_per_period : multislice only: slices per lattice period along the zone axis
        (default: one per atomic plane, 2 for [110], whose period is a/√2 = 3.840 Å).
    projection : multislice only: abTEM potential projection, ``"infinite"`` (default:
        each atom's projected potential, from the scattering factors, in the slice that
        contains it; exact Fourier coefficients, so slice boundaries on the atomic planes
        make the slicing exact) or ``"finite"`` (real-space quadrature; its U_g are
        0.3–0.9 % larger than the Lobato values here, see the benchmark).
    lattice_constant : cubic cell edge a [Å].
    atoms : callable ``lattice_constant -> ase.Atoms`` giving the 8-atom conventional cubic
        cell (default :func:`silicon_atoms`; :func:`zinc_blende_atoms` for a polar crystal).

    Returns
    -------
    AbtemIntensities
        ``{(h, k, l): ndarray (thick,)}``. Bloch: every beam of abTEM's beam set (the
        fcc-forbidden reflections are not in it; diamond-forbidden ones such as 002 are).
        Multislice: every zero-order Laue-zone spot with |g| ≤ g_max, intensities
        interpolated (cubic spline) between exit planes one lattice period apart (the raw
        values are in ``exit_plane_thicknesses`` and ``exit_plane_intensities``).
    """
    cell_atoms = (atoms or silicon_atoms)(lattice_constant)
    if not np.allclose(cell_atoms.cell.lengths(), lattice_constant, atol=1e-9):
        raise ValueError("the atoms' cubic cell does not have the lattice constant given")
    thicknesses = np.atleast_1d(np.asarray(thicknesses, dtype=float))
    if thicknesses.ndim != 1 or np.any(thicknesses < 0):
        raise ValueError("thicknesses must be a 1-D sequence of non-negative values [Å]")
    frame = zone_frame(zone)
    direction = beam_direction(zone, tilt_mrad)
    start = time.perf_counter()
    if method == "bloch":
        if surface_normal not in ("zone", "beam"):
            raise ValueError(f"surface_normal must be 'zone' or 'beam', got {surface_normal!r}")
        settings = {
            "g_max": BLOCH_DEFAULTS["g_max"] if g_max is None else float(g_max),
            "sg_max": BLOCH_DEFAULTS["sg_max"] if sg_max is None else float(sg_max),
            "surface_normal": surface_normal,
        }
        normal = frame[2] if surface_normal == "zone" else direction
        result = _bloch(frame, direction, normal, thicknesses, energy, cell_atoms, settings)
    elif method == "multislice":
        if surface_normal != "zone":
            raise ValueError("multislice slabs always have their normal along the zone axis")
        settings = {
            "g_max": 3.0 if g_max is None else float(g_max),
            "sampling": MULTISLICE_DEFAULTS["sampling"] if sampling is None else float(sampling),
            "slices_per_period": int(
                ZONE_FRAMES[tuple(int(v) for v in zone)]["layers"]
                if slices_per_period is None
                else slices_per_period
            ),
            "projection": MULTISLICE_DEFAULTS["projection"] if projection is None else projection,
            "tilt_mrad": tuple(float(t) for t in tilt_mrad),
        }
        normal = frame[2]
        result = _multislice(
            zone, frame, thicknesses, energy, lattice_constant, cell_atoms, settings
        )
    else:
        raise ValueError(f"method must be 'bloch' or 'multislice', got {method!r}")
    result.runtime_s = time.perf_counter() - start
    result.thicknesses = thicknesses
    result.beam_direction = direction
    result.surface_normal = normal
    result.method = method
    result.settings = settings | {"energy": energy, "lattice_constant": lattice_constant}
    return result


def silicon_atoms(lattice_constant: float = LATTICE_CONSTANT_SI):
    """The 8-atom conventional cell of diamond-structure Si as :class:`ase.Atoms`."""
    from ase.build import bulk

    return bulk("Si", "diamond", a=lattice_constant, cubic=True)


def zinc_blende_atoms(lattice_constant: float = LATTICE_CONSTANT_ZNS):
    """The 8-atom conventional cell of zinc-blende ZnS (F-43m) as :class:`ase.Atoms`:
    Zn at (0 0 0) and S at (¼ ¼ ¼) plus the face centrings, a polar crystal whose
    (0 0 2) and (0 0 -2) intensities differ under multiple scattering."""
    from ase.build import bulk

    return bulk("ZnS", "zincblende", a=lattice_constant, cubic=True)


def zinc_blende_cif(u_iso: float = 0.0, lattice_constant: float = LATTICE_CONSTANT_ZNS) -> str:
    """The structure of :func:`zinc_blende_atoms` as CIF text for blochnet (F-43m, Uiso [Å²])."""
    a = lattice_constant
    return f"""data_zns
_cell_length_a {a}
_cell_length_b {a}
_cell_length_c {a}
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_space_group_name_H-M_alt 'F -4 3 m'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_U_iso_or_equiv
Zn1 Zn 0 0 0 {u_iso}
S1 S 0.25 0.25 0.25 {u_iso}
"""


def _abtem_config():
    import abtem

    return abtem.config.set(
        {"precision": "float64", "device": "cpu", "diagnostics.progress_bar": False}
    )


# --------------------------------------------------------------------------- Bloch waves


def _bloch(frame, direction, normal, thicknesses, energy, cell_atoms, settings):
    from abtem.bloch import BlochWaves, StructureFactor
    from abtem.core.energy import energy2wavelength

    g_max, sg_max = settings["g_max"], settings["sg_max"]
    # Orientation matrix: rows are the axes of abTEM's frame in the cubic frame; abTEM's
    # beam travels along its +z, so the third row is the beam direction.
    x = frame[0] - (frame[0] @ direction) * direction
    x /= np.linalg.norm(x)
    orientation = np.array([x, np.cross(direction, x), direction])
    with _abtem_config():
        # Couplings U_{g-h} need |g - h| ≤ 2 g_max; a hard cutoff just beyond keeps all of
        # them at full strength (abTEM's default "taper" damps the last 5 %).
        structure_factor = StructureFactor(
            cell_atoms,
            g_max=2 * g_max + 0.01,
            parametrization="lobato",
            cutoff="hard",
        )
        bloch = BlochWaves(
            structure_factor,
            energy=energy,
            sg_max=sg_max,
            g_max=g_max,
            orientation_matrix=orientation,
        )
        hkl = np.asarray(bloch.hkl, dtype=np.int64)
        matrix = np.asarray(bloch.calculate_structure_matrix(lazy=False))
        g_lab = np.asarray(bloch.g_vec)
        excitation = np.asarray(bloch.excitation_errors())
    k = 1.0 / energy2wavelength(energy)
    amplitudes = _bloch_propagate(matrix, g_lab, hkl, orientation @ normal, k, thicknesses)
    intensities = np.abs(amplitudes) ** 2
    result = AbtemIntensities(
        {tuple(int(v) for v in h): intensities[:, i] for i, h in enumerate(hkl)}
    )
    result.hkl = hkl
    result.excitation_errors = excitation
    result.total = intensities.sum(axis=1)
    settings["n_beams"] = len(hkl)
    return result


def _bloch_propagate(matrix, g_lab, hkl, normal_lab, k, thicknesses):
    """Beam amplitudes φ_g(t) from abTEM's structure matrix, for slab normal ``normal_lab``.

    abTEM returns M (2K diag(s_g) + U) M with M = diag(1 + g_z/K)^(-1/2), z ∥ beam. The
    bare matrix is recovered and symmetrised for the normal n: A_n = B^(-1/2) A B^(-1/2),
    B = diag(1 + g·n/K_n), K_n = K n_z. With A_n C' = C' diag(v): γ = v / (2 K_n),
    C = B^(-1/2) C', α = C'^H e₀ and φ(t) = C diag(exp(2πi γ t)) α. For n ∥ beam this is
    exactly abTEM's ``calculate_dynamical_scattering``.
    """
    m_beam = 1.0 / np.sqrt(1.0 + g_lab[:, 2] / k)
    bare = matrix / np.outer(m_beam, m_beam)
    k_n = k * normal_lab[2]
    m = 1.0 / np.sqrt(1.0 + g_lab @ normal_lab / k_n)
    values, vectors = np.linalg.eigh(bare * np.outer(m, m))
    incident = np.all(hkl == 0, axis=1).astype(complex)
    alpha = vectors.conj().T @ incident
    phases = np.exp(1j * np.pi * np.outer(thicknesses, values) / k_n)  # exp(2πi γ t)
    return (phases * alpha) @ (m[:, None] * vectors).T


# ---------------------------------------------------------------------------- multislice


def _orthogonal_cell(zone, frame, lattice_constant, cubic):
    """The zone's orthogonal supercell of the cubic cell ``cubic``, rotated so that x̂, ŷ, ẑ
    are the lab axes."""
    from ase import Atoms

    rows = ZONE_FRAMES[tuple(int(v) for v in zone)]["cell"] * lattice_constant
    n_rep = int(np.ceil(np.abs(rows).sum(axis=0).max() / lattice_constant)) + 1
    big = cubic.repeat((2 * n_rep,) * 3)
    big.translate(-n_rep * lattice_constant * np.ones(3))
    fractional = np.linalg.solve(rows.T, big.positions.T).T
    tol = 1e-6
    keep = np.all((fractional > -tol) & (fractional < 1 - tol), axis=1)
    fractional = np.clip(fractional[keep], 0.0, None)
    symbols = np.array(big.get_chemical_symbols())[keep]
    n_expected = round(8 * abs(np.linalg.det(rows / lattice_constant)))
    if len(fractional) != n_expected:
        raise RuntimeError(f"orthogonal cell has {len(fractional)} atoms, expected {n_expected}")
    if not np.allclose(rows @ frame.T, np.diag(np.linalg.norm(rows, axis=1)), atol=1e-9):
        raise RuntimeError("orthogonal cell is not aligned with the zone frame")
    lengths = np.linalg.norm(rows, axis=1)
    return Atoms(list(symbols), scaled_positions=fractional, cell=np.diag(lengths), pbc=True)


def _grid_period(fractional: np.ndarray) -> int:
    """Smallest n ≤ 48 with n × every fractional coordinate an integer (1 if none)."""
    for n in range(1, 49):
        if np.allclose(fractional * n, np.rint(fractional * n), atol=1e-6):
            return n
    return 1


def _multislice(zone, frame, thicknesses, energy, lattice_constant, cell_atoms, settings):
    import abtem
    from scipy.interpolate import CubicSpline

    atoms = _orthogonal_cell(zone, frame, lattice_constant, cell_atoms)
    lx, ly, period = np.diag(atoms.cell)
    n_slices = settings["slices_per_period"]
    n_periods = int(np.ceil(thicknesses.max() / period)) + 2
    # Grid points: the sampling rounded down so that every atom sits on a grid point (the
    # atoms of the cell then alias identically and the pattern keeps its exact symmetry).
    step = [_grid_period(atoms.get_scaled_positions()[:, i]) for i in (0, 1)]
    gpts = tuple(
        int(math.ceil(length / settings["sampling"] / n)) * n
        for length, n in zip((lx, ly), step, strict=True)
    )
    with _abtem_config():
        unit = abtem.Potential(
            atoms,
            gpts=gpts,
            slice_thickness=period / n_slices,
            parametrization="lobato",
            projection=settings["projection"],
        ).build(lazy=False)
        crystal = abtem.CrystalPotential(unit, repetitions=(1, 1, n_periods), exit_planes=n_slices)
        wave = abtem.PlaneWave(energy=energy, tilt=tuple(settings["tilt_mrad"]), normalize=False)
        exit_waves = wave.multislice(crystal).compute()
    waves = np.asarray(exit_waves.array)  # (n_periods + 1, nx, ny); plane 0 is the entrance
    nx, ny = waves.shape[-2:]
    spectrum = np.abs(np.fft.fft2(waves)) ** 2
    spectrum /= spectrum[0].sum()  # the incident plane wave carries intensity 1
    planes = np.arange(waves.shape[0]) * period
    settings["gpts"] = (nx, ny)
    settings["actual_sampling"] = (lx / nx, ly / ny)
    settings["slice_thickness"] = period / n_slices

    result = AbtemIntensities()
    result.exit_plane_thicknesses = planes
    result.exit_plane_intensities = {}
    hkl_list = []
    g_max = settings["g_max"]
    for i in range(-(nx // 2), (nx + 1) // 2):
        for j in range(-(ny // 2), (ny + 1) // 2):
            g_cubic = (i / lx) * frame[0] + (j / ly) * frame[1]
            if np.linalg.norm(g_cubic) > g_max:
                continue
            hkl_float = g_cubic * lattice_constant
            hkl = np.rint(hkl_float).astype(int)
            if not np.allclose(hkl, hkl_float, atol=1e-6):
                continue  # projection of a higher-order Laue zone only
            key = tuple(int(v) for v in hkl)
            values = spectrum[:, i % nx, j % ny]
            result[key] = CubicSpline(planes, values)(thicknesses)
            result.exit_plane_intensities[key] = values
            hkl_list.append(hkl)
    result.hkl = np.array(hkl_list, dtype=np.int64)
    result.excitation_errors = None
    result.total = CubicSpline(planes, spectrum.sum(axis=(1, 2)))(thicknesses)
    return result
