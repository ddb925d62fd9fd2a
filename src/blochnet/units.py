"""Physical constants and unit conversions (CODATA 2018, exact SI values where defined).

Units used throughout blochnet: lengths in Å, reciprocal lengths in Å^-1 *without* a
factor 2π (|g| = 1/d), energies in eV, angles in degrees at interfaces and radians inside.
"""

from __future__ import annotations

import math

from blochnet.errors import ConfigurationError

PLANCK = 6.62607015e-34  # h [J s] (exact)
SPEED_OF_LIGHT = 299_792_458.0  # c [m/s] (exact)
ELEMENTARY_CHARGE = 1.602176634e-19  # e [C] (exact)
ELECTRON_MASS = 9.1093837015e-31  # m0 [kg] (CODATA 2018)

ELECTRON_REST_ENERGY = ELECTRON_MASS * SPEED_OF_LIGHT**2 / ELEMENTARY_CHARGE  # m0 c^2 [eV]
HC = PLANCK * SPEED_OF_LIGHT / ELEMENTARY_CHARGE * 1e10  # h c [eV Å]
BOHR_RADIUS = 0.529177210903  # a0 [Å] (CODATA 2018)


def energy_to_wavelength(energy: float) -> float:
    """Relativistic electron wavelength [Å] for an accelerating voltage ``energy`` [eV].

    Notes
    -----
    λ = hc / sqrt(eE (2 m0 c^2 + eE)); 200 kV gives 0.0250793 Å.
    """
    if energy <= 0:
        raise ConfigurationError(f"accelerating voltage must be positive, got {energy} eV")
    return HC / math.sqrt(energy * (2 * ELECTRON_REST_ENERGY + energy))


def wavelength_to_energy(wavelength: float) -> float:
    """Accelerating voltage [eV] that gives the electron wavelength ``wavelength`` [Å]."""
    if wavelength <= 0:
        raise ConfigurationError(f"wavelength must be positive, got {wavelength} Å")
    p = HC / wavelength  # p c [eV]
    return math.sqrt(p**2 + ELECTRON_REST_ENERGY**2) - ELECTRON_REST_ENERGY


def lorentz_factor(energy: float) -> float:
    """Relativistic factor γ = 1 + eE / (m0 c^2) for an accelerating voltage [eV]."""
    return 1.0 + energy / ELECTRON_REST_ENERGY


def potential_prefactor(energy: float, cell_volume: float) -> float:
    """Factor turning an electron structure factor F(g) [Å] into U_g [Å^-2].

    Notes
    -----
    U_g = γ F(−g) / (π Ω) for the crystallographic F(h) = Σ f exp(+2πi h·x), with Ω the
    cell volume [Å^3] and γ the Lorentz factor; the scattering factors are the
    non-relativistic ones of the tables.
    """
    return lorentz_factor(energy) / (math.pi * cell_volume)
