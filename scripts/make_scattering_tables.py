"""Write the electron scattering-factor tables shipped in ``blochnet/physics/data``.

Not part of the package: run it once, by hand, to regenerate the JSON files::

    python scripts/make_scattering_tables.py

Provenance
----------
Only published parameter values are carried over (no code from either program):

``lobato_2014.json``
    I. Lobato & D. Van Dyck, Acta Cryst. A70 (2014) 636-649,
    doi:10.1107/S205327331401643X, Table of fitted parameters for the neutral atoms
    Z = 1..103. The numbers are read from the data file that abTEM ships
    (``abtem/parametrizations/data/lobato.json``, abTEM 1.0.11), which holds the published
    values to full precision. abTEM feeds them unchanged into
    f_e(k) = Σ a_i (2 + b_i k²)/(1 + b_i k²)² with k = 1/d [Å⁻¹], so a_i is in Å and b_i
    in Å². This script checks that reading independently: the fit is constrained to the
    Mott–Bethe limit g² f_e(g) → Z / (2π² a0) as g → ∞, i.e. Σ a_i / b_i = Z / (2π² a0),
    which holds to ~1e-9 with a0 in Å only for those units (a factor 2π in g would put it
    off by 4π²).

``peng_itc_4322.json``
    International Tables for Crystallography Vol. C (2006), Table 4.3.2.2; Peng, Ren,
    Dudarev & Whelan, Acta Cryst. A52 (1996) 257-276, doi:10.1107/S0108767395014371: the
    five-Gaussian fit for 0 ≤ s ≤ 2 Å⁻¹, neutral atoms Z = 1..98. Read from gemmi
    (``gemmi.Element(sym).c4322``), which stores them as float32; the table prints four
    decimals, so the values are rounded back to four decimals (the rounding changes them by
    < 1e-7 relative, i.e. only removes the float32 representation error).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
from pathlib import Path

import gemmi
import numpy as np

BOHR = 0.529177210903  # a0 [Å] (CODATA 2018)
OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "blochnet" / "physics" / "data"


def _symbols(z_max: int) -> list[str]:
    return [gemmi.Element(z).name for z in range(1, z_max + 1)]


def _abtem_lobato_file() -> Path:
    spec = importlib.util.find_spec("abtem")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("abtem is not installed; it is needed only to read the Lobato table")
    return Path(spec.submodule_search_locations[0]) / "parametrizations" / "data" / "lobato.json"


def lobato_elements() -> dict[str, dict[str, list[float]]]:
    source = json.loads(_abtem_lobato_file().read_text())
    elements = {}
    for z, symbol in enumerate(_symbols(103), start=1):
        a, b = (np.asarray(row, dtype=np.float64) for row in source[symbol])
        if a.shape != (5,) or b.shape != (5,) or np.any(b <= 0):
            raise SystemExit(f"unexpected Lobato parameters for {symbol}")
        z_fit = 2 * math.pi**2 * BOHR * float(np.sum(a / b))
        if abs(z_fit - z) > 1e-6 * z:
            raise SystemExit(f"{symbol}: Σ a/b gives Z = {z_fit}, expected {z}; units differ")
        elements[symbol] = {"a": a.tolist(), "b": b.tolist()}
    return elements


def peng_elements() -> dict[str, dict[str, list[float]]]:
    elements = {}
    for symbol in _symbols(98):
        coefs = gemmi.Element(symbol).c4322
        raw = np.asarray(coefs.get_coefs(), dtype=np.float64)  # a1..a5, b1..b5 as float32
        rounded = np.round(raw, 4)
        if raw.shape != (10,) or np.max(np.abs(rounded - raw) / np.abs(raw)) > 1e-6:
            raise SystemExit(f"unexpected Peng parameters for {symbol}")
        elements[symbol] = {"a": rounded[:5].tolist(), "b": rounded[5:].tolist()}
    return elements


def write_table(path: Path, header: dict, elements: dict[str, dict[str, list[float]]]) -> None:
    """JSON with the header fields first and one line per element."""
    lines = ["{"]
    lines += [
        f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},"
        for key, value in header.items()
    ]
    lines.append('  "elements": {')
    rows = [f"    {json.dumps(symbol)}: {json.dumps(p)}" for symbol, p in elements.items()]
    lines.append(",\n".join(rows))
    lines += ["  }", "}", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    json.loads(path.read_text(encoding="utf-8"))  # must round-trip


LOBATO_HEADER = {
    "citation": (
        "I. Lobato and D. Van Dyck, An accurate parameterization for scattering factors, "
        "electron densities and electrostatic potentials for neutral atoms that obey all "
        "physical constraints, Acta Cryst. A70 (2014) 636-649"
    ),
    "doi": "10.1107/S205327331401643X",
    "formula": (
        "f_e(g) = sum_{i=1..5} a_i (2 + b_i g^2) / (1 + b_i g^2)^2, with g = |g| = 1/d = "
        "2 sin(theta)/lambda in Å^-1 (no factor 2π). a_i in Å and b_i in Å^2 exactly as "
        "published; no conversion is applied. Check: sum_i a_i/b_i = Z/(2 π^2 a0) with "
        "a0 = 0.529177 Å (Mott-Bethe limit at large g)."
    ),
    "units": {"g": "Å^-1", "a": "Å", "b": "Å^2", "f_e": "Å"},
    "range": "neutral atoms Z = 1..103; accurate from g = 0 to high angle",
    "source": (
        f"published values, read from abTEM {importlib.metadata.version('abtem')} package "
        "data (abtem/parametrizations/data/lobato.json) by scripts/make_scattering_tables.py"
    ),
}

PENG_HEADER = {
    "citation": (
        "International Tables for Crystallography Vol. C (2006), Table 4.3.2.2; "
        "L.-M. Peng, G. Ren, S. L. Dudarev and M. J. Whelan, Robust parameterization of "
        "elastic and absorptive electron atomic scattering factors, "
        "Acta Cryst. A52 (1996) 257-276"
    ),
    "doi": "10.1107/S0108767395014371",
    "formula": (
        "f_e(s) = sum_{i=1..5} a_i exp(-b_i s^2), with s = sin(theta)/lambda = g/2 in Å^-1; "
        "a_i in Å, b_i in Å^2. Fitted for 0 <= s <= 2 Å^-1 (g <= 4 Å^-1)."
    ),
    "units": {"s": "Å^-1", "a": "Å", "b": "Å^2", "f_e": "Å"},
    "range": "neutral atoms Z = 1..98; valid for s <= 2 Å^-1",
    "source": (
        f"published values (4 decimals), read from gemmi {gemmi.__version__} "
        "gemmi.Element(symbol).c4322 and rounded back from float32 by "
        "scripts/make_scattering_tables.py"
    ),
}


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    write_table(OUT_DIR / "lobato_2014.json", LOBATO_HEADER, lobato_elements())
    write_table(OUT_DIR / "peng_itc_4322.json", PENG_HEADER, peng_elements())
    print(f"wrote {OUT_DIR / 'lobato_2014.json'} and {OUT_DIR / 'peng_itc_4322.json'}")


if __name__ == "__main__":
    main()
