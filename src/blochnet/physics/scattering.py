"""Electron scattering factors of neutral atoms from published parameterisations, and the
change a partial atomic charge makes to them.

Two tables are shipped as JSON files in ``blochnet/physics/data`` (each with its citation
and the exact formula) and loaded once:

``"lobato"``
    Lobato & Van Dyck (2014), Z = 1..103, accurate from g = 0 to high angle and with the
    correct Mott–Bethe limit f_e → Z / (2π² a0 g²).
``"peng"``
    International Tables Vol. C Table 4.3.2.2 (Peng et al. 1996), Z = 1..98, five
    Gaussians fitted for s = g/2 ≤ 2 Å⁻¹ only.

A partial charge q (in e; positive for a cation) moves q electrons out of (q < 0: into)
the atom's valence shell; :func:`charge_scattering_factors` gives the resulting change of
f_e per unit charge (Mott–Bethe), with the valence shell a Slater-type orbital
(:func:`valence_shell`).

Units follow :mod:`blochnet.units`: g = |g| = 1/d in Å⁻¹ (no 2π), f_e in Å.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from importlib import resources

import gemmi
import numpy as np
import torch

from blochnet.errors import ConfigurationError
from blochnet.units import BOHR_RADIUS

TABLES = ("lobato", "peng")

_TABLE_FILES = {"lobato": "lobato_2014.json", "peng": "peng_itc_4322.json"}
_ALIASES = {"D": "H"}  # deuterium scatters as hydrogen


@functools.cache
def _load_table(table: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Element symbol -> (a, b) float64 arrays of one table, read once per process."""
    text = (
        resources.files("blochnet.physics")
        .joinpath("data", _TABLE_FILES[table])
        .read_text(encoding="utf-8")
    )
    elements = json.loads(text)["elements"]
    return {
        symbol: (np.asarray(p["a"], dtype=np.float64), np.asarray(p["b"], dtype=np.float64))
        for symbol, p in elements.items()
    }


def _check_table(table: str) -> None:
    if table not in TABLES:
        raise ConfigurationError(
            f"unknown scattering-factor table {table!r}; valid tables: {', '.join(TABLES)}"
        )


def _canonical_symbol(symbol: str, table: str) -> str:
    """``"SI"``/``"si"`` -> ``"Si"``, ``"D"`` -> ``"H"``; unknown symbols raise."""
    name = str(symbol).strip().capitalize()
    name = _ALIASES.get(name, name)
    known = _load_table(table)
    if name not in known:
        raise ConfigurationError(
            f"no {table!r} electron scattering factors for element {symbol!r}; valid "
            f"elements: {' '.join(known)} (and D for H)"
        )
    return name


def scattering_parameters(
    elements: Sequence[str],
    table: str = "lobato",
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit parameters ``a`` [Å] and ``b`` [Å²] of a table, one row per element.

    Parameters
    ----------
    elements : sequence of str
        Element symbols, case-insensitive; ``"D"`` is hydrogen.
    table : {"lobato", "peng"}
        Which parameterisation (see :func:`electron_scattering_factors`).
    dtype, device
        Of the returned tensors (float64 on the CPU by default).

    Returns
    -------
    a, b : Tensor, shape (elem, 5)
        The published coefficients; their meaning depends on ``table``.

    Raises
    ------
    ConfigurationError
        For an unknown table or an element the table does not cover.
    """
    _check_table(table)
    symbols = [_canonical_symbol(symbol, table) for symbol in elements]
    known = _load_table(table)
    n_terms = len(next(iter(known.values()))[0])
    a = np.array([known[s][0] for s in symbols], dtype=np.float64).reshape(-1, n_terms)
    b = np.array([known[s][1] for s in symbols], dtype=np.float64).reshape(-1, n_terms)
    return (
        torch.as_tensor(a, dtype=dtype, device=device),
        torch.as_tensor(b, dtype=dtype, device=device),
    )


def electron_scattering_factors(
    elements: Sequence[str], g: torch.Tensor, *, table: str = "lobato"
) -> torch.Tensor:
    r"""Electron scattering factors f_e [Å] of neutral atoms at scattering vector length g.

    Parameters
    ----------
    elements : sequence of str
        Element symbols, case-insensitive (``"SI"``, ``"si"`` -> Si); ``"D"`` is hydrogen.
    g : Tensor [Å⁻¹]
        |g| = 1/d = 2 sinθ/λ, any shape, without a factor 2π. The result takes its
        dtype and device (integer input is promoted to the default float dtype) and is
        differentiable with respect to it; the sum itself is evaluated in float64.
    table : {"lobato", "peng"}
        ``"lobato"`` (default) is accurate from g = 0 to high angle. ``"peng"`` is only
        valid for s = g/2 ≤ 2 Å⁻¹ (g ≤ 4 Å⁻¹): beyond, its Gaussians fall off far too
        fast instead of following the Mott–Bethe g⁻² tail.

    Returns
    -------
    Tensor, shape ``(len(elements), *g.shape)``
        f_e [Å] for each element (non-relativistic; multiply by the Lorentz factor γ
        for the potential, see :func:`blochnet.units.potential_prefactor`).

    Raises
    ------
    ConfigurationError
        For an unknown table or an element the table does not cover (the message lists
        the valid ones).

    Notes
    -----
    Lobato & Van Dyck (2014), Z = 1..103:

    .. math:: f_e(g) = \sum_{i=1}^{5} a_i \frac{2 + b_i g^2}{(1 + b_i g^2)^2},

    a_i in Å, b_i in Å² as published. The fit obeys
    :math:`\sum_i a_i / b_i = Z / (2\pi^2 a_0)`, so g² f_e → Z / (2π² a0) at large g.

    Peng et al. (1996), International Tables Vol. C Table 4.3.2.2, Z = 1..98:

    .. math:: f_e(s) = \sum_{i=1}^{5} a_i \exp(-b_i s^2), \quad s = g / 2,

    a_i in Å, b_i in Å², fitted for 0 ≤ s ≤ 2 Å⁻¹.

    References
    ----------
    I. Lobato and D. Van Dyck, Acta Cryst. A70 (2014) 636-649,
    doi:10.1107/S205327331401643X.

    L.-M. Peng, G. Ren, S. L. Dudarev and M. J. Whelan, Acta Cryst. A52 (1996) 257-276,
    doi:10.1107/S0108767395014371.
    """
    g = torch.as_tensor(g)
    if not g.is_floating_point():
        g = g.to(torch.get_default_dtype())
    # Some Lobato fits (He, C, N, O) add terms ~30x larger than f_e that cancel, which costs
    # ~1e-4 relative accuracy in float32; the sum is cheap, so it is done in float64 where
    # the device has it.
    work = g.dtype if g.device.type == "mps" else torch.promote_types(g.dtype, torch.float64)
    a, b = scattering_parameters(elements, table, dtype=work, device=g.device)
    shape = (a.shape[0],) + (1,) * g.ndim
    g2 = g.to(work).square().unsqueeze(0)
    f = torch.zeros((a.shape[0], *g.shape), dtype=work, device=g.device)
    for ai, bi in zip(a.T, b.T, strict=True):  # five terms; keeps memory at (elem, *g.shape)
        ai, bi = ai.reshape(shape), bi.reshape(shape)
        if table == "lobato":
            bg2 = bi * g2
            f = f + ai * (2 + bg2) / (1 + bg2).square()
        else:
            f = f + ai * torch.exp(-0.25 * bi * g2)
    return f.to(g.dtype)


# Slater (1930): orbital groups in order, and the effective principal quantum number n*.
_SUBSHELL_ORDER = (
    "1s 2s 2p 3s 3p 4s 3d 4p 5s 4d 5p 6s 4f 5d 6p 7s 5f 6d 7p"
).split()  # aufbau (Madelung) filling order
_CAPACITY = {"s": 2, "p": 6, "d": 10, "f": 14}
_N_EFFECTIVE = {1: 1.0, 2: 2.0, 3: 3.0, 4: 3.7, 5: 4.0, 6: 4.2, 7: 4.2}


@functools.cache
def valence_shell(element: str) -> tuple[float, float]:
    r"""Slater-type orbital of the outermost s/p shell of a neutral atom.

    Returns
    -------
    n_eff, zeta : effective principal quantum number n* and exponent ζ [Å⁻¹] of the radial
        function r^(n*−1) e^(−ζr), from Slater's rules applied to the ground-state
        configuration filled in aufbau order.

    Notes
    -----
    Slater's rules for an electron of the (ns, np) group: each other electron of the group
    screens 0.35 (0.30 in 1s), each electron of shell n − 1 screens 0.85 and each of shells
    n − 2 and below 1.00; ζ = (Z − S)/(n* a0). J. C. Slater, Phys. Rev. 36 (1930) 57-64,
    doi:10.1103/PhysRev.36.57. Configurations that break the aufbau order (Cr, Cu, …)
    change S by at most 0.15, a few per cent of ζ.
    """
    name = _canonical_symbol(element, "lobato")
    z = gemmi.Element(name).atomic_number
    occupied, left = {}, z
    for shell in _SUBSHELL_ORDER:
        if left == 0:
            break
        occupied[shell] = min(left, _CAPACITY[shell[1]])
        left -= occupied[shell]
    n = max(int(shell[0]) for shell in occupied if shell[1] in "sp")
    group = occupied.get(f"{n}s", 0) + occupied.get(f"{n}p", 0)
    screening = (group - 1) * (0.30 if n == 1 else 0.35)
    for shell, count in occupied.items():
        inner = int(shell[0])
        if inner == n - 1:
            screening += 0.85 * count
        elif inner < n - 1:
            screening += 1.00 * count
    n_eff = _N_EFFECTIVE[n]
    return n_eff, (z - screening) / (n_eff * BOHR_RADIUS)


def charge_scattering_factors(elements: Sequence[str], g: torch.Tensor) -> torch.Tensor:
    r"""Change of the electron scattering factor per unit of atomic charge [Å/e].

    Parameters
    ----------
    elements : element symbols (as for :func:`electron_scattering_factors`).
    g : Tensor [Å⁻¹], |g| = 1/d, any shape; dtype and device of the result.

    Returns
    -------
    Tensor (len(elements), *g.shape): Δf_e such that an atom of charge q scatters
    f_e + q·Δf_e.

    Notes
    -----
    A charge q removes q electrons with the density ρ_v of the valence shell
    (:func:`valence_shell`), so the X-ray factor changes by −q·φ(g), φ the Fourier
    transform of ρ_v normalised to φ(0) = 1, and by the Mott–Bethe formula
    f_e = (Z − f_x)/(2π² a0 g²):

    .. math:: \Delta f_e(g) = \frac{\varphi(g)}{2\pi^2 a_0 g^2}, \quad
              \varphi = \frac{\sin(N\theta)}{N x}(1 + x^2)^{-N/2},

    with N = 2n*, x = 2πg/(2ζ), θ = arctan x (ρ_v ∝ r^(2n*−2) e^(−2ζr)). The Coulomb term
    1/(2π² a0 g²) diverges at g = 0; in a neutral cell the charges' divergent terms cancel,
    so at g = 0 only the finite rest is returned: lim (φ − 1)/(2π² a0 g²) = −⟨r²⟩/(3 a0),
    ⟨r²⟩ = (N + 1)(N + 2)/(2ζ)² (the treatment of ions at s = 0 of International Tables
    Vol. C, 4.3.1). A refinement keeps the cell neutral.
    """
    g = torch.as_tensor(g)
    if not g.is_floating_point():
        g = g.to(torch.get_default_dtype())
    shells = np.array([valence_shell(e) for e in elements], dtype=np.float64).reshape(-1, 2)
    shape = (len(shells),) + (1,) * g.ndim
    n = torch.as_tensor(2 * shells[:, 0], dtype=g.dtype, device=g.device).reshape(shape)
    alpha = torch.as_tensor(2 * shells[:, 1], dtype=g.dtype, device=g.device).reshape(shape)
    mean_r2 = (n + 1) * (n + 2) / alpha.square()
    zero = g == 0
    safe = torch.where(zero, torch.ones_like(g), g)
    x = 2 * math.pi * safe / alpha
    phi = torch.sin(n * torch.atan(x)) / (n * x) * (1 + x.square()) ** (-n / 2)
    coulomb = 2 * math.pi**2 * BOHR_RADIUS
    return torch.where(zero, -mean_r2 / (3 * BOHR_RADIUS), phi / (coulomb * safe.square()))
