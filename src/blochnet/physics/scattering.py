"""Electron scattering factors of neutral atoms from published parameterisations.

Two tables are shipped as JSON files in ``blochnet/physics/data`` (each with its citation
and the exact formula) and loaded once:

``"lobato"``
    Lobato & Van Dyck (2014), Z = 1..103, accurate from g = 0 to high angle and with the
    correct Mott–Bethe limit f_e → Z / (2π² a0 g²).
``"peng"``
    International Tables Vol. C Table 4.3.2.2 (Peng et al. 1996), Z = 1..98, five
    Gaussians fitted for s = g/2 ≤ 2 Å⁻¹ only.

Units follow :mod:`blochnet.physics.units`: g = |g| = 1/d in Å⁻¹ (no 2π), f_e in Å.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from importlib import resources

import numpy as np
import torch

from blochnet.errors import ConfigurationError

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
        for the potential, see :func:`blochnet.physics.units.potential_prefactor`).

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
