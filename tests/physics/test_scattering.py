"""Electron scattering factors: published tables, independent programs and physics limits."""

from __future__ import annotations

import json
import math
from importlib import resources

import gemmi
import numpy as np
import pytest
import torch

from blochnet.errors import ConfigurationError
from blochnet.physics.scattering import (
    TABLES,
    charge_scattering_factors,
    electron_scattering_factors,
    scattering_parameters,
    valence_shell,
)

BOHR = 0.529177210903  # a0 [Å]
MOTT_BETHE = 1.0 / (2.0 * math.pi**2 * BOHR)  # f_e = MOTT_BETHE (Z - f_x) / g² [Å]
SAMPLE = ["H", "C", "O", "Si", "Br", "Pb"]


def _f(elements, g, table="lobato"):
    g = torch.as_tensor(np.asarray(g, dtype=np.float64))
    return electron_scattering_factors(elements, g, table=table).numpy()


@pytest.fixture(scope="module")
def abtem_lobato():
    abtem = pytest.importorskip("abtem")
    from abtem.parametrizations import LobatoParametrization

    return abtem, LobatoParametrization()


# --- the data files ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "doi", "n_elements"),
    [
        ("lobato_2014.json", "10.1107/S205327331401643X", 103),
        ("peng_itc_4322.json", "10.1107/S0108767395014371", 98),
    ],
)
def test_data_files_carry_citation_formula_units_and_all_neutral_atoms(name, doi, n_elements):
    text = resources.files("blochnet.physics").joinpath("data", name).read_text("utf-8")
    table = json.loads(text)
    assert table["doi"] == doi
    assert table["citation"] and table["formula"] and table["units"]
    symbols = [gemmi.Element(z).name for z in range(1, n_elements + 1)]
    assert list(table["elements"]) == symbols
    assert all(len(p["a"]) == len(p["b"]) == 5 for p in table["elements"].values())


def test_scattering_parameters_are_float64_rows_per_element():
    a, b = scattering_parameters(["Si", "O", "O"], "peng")
    assert a.shape == b.shape == (3, 5)
    assert a.dtype == b.dtype == torch.float64
    assert a[0].tolist() == [0.2519, 0.6372, 1.3795, 2.5082, 1.05]  # ITC Table 4.3.2.2, Si
    assert b[0].tolist() == [0.3075, 2.0174, 9.6746, 29.3744, 80.4732]
    assert torch.equal(a[1], a[2])


# --- comparison with independent programs --------------------------------------------


@pytest.mark.parametrize("element", SAMPLE)
def test_lobato_matches_abtem_scattering_factor_to_1e_10(abtem_lobato, element):
    # abTEM's f_e(k²) takes k = 1/d [Å⁻¹] (no 2π) and returns the non-relativistic f_e in Å.
    abtem, lobato = abtem_lobato
    g = np.linspace(0.0, 20.0, 401)
    with abtem.config.set({"precision": "float64"}):
        expected = lobato.scattering_factor(element)(g**2)
    np.testing.assert_allclose(_f([element], g)[0], expected, rtol=1e-10, atol=0)


def test_peng_coefficients_equal_the_abtem_transcription_of_the_same_table():
    # gemmi (our source) and abTEM's peng_low.json are separate transcriptions of Peng
    # et al. (1996) for 0 <= s <= 2; they agree to the four published decimals.
    pytest.importorskip("abtem")
    from abtem.parametrizations import PengParametrization

    other = PengParametrization("peng_low.json").parameters
    symbols = [gemmi.Element(z).name for z in range(1, 99)]
    a, b = scattering_parameters(symbols, "peng")
    theirs = np.array([np.asarray(other[s], dtype=np.float64) for s in symbols])
    np.testing.assert_allclose(a.numpy(), theirs[:, 0], rtol=0, atol=5e-9)
    np.testing.assert_allclose(b.numpy(), theirs[:, 1], rtol=0, atol=5e-9)


@pytest.mark.parametrize("element", SAMPLE + ["Cf"])
def test_peng_matches_gemmi_electron_scattering_factor(element):
    g = np.linspace(0.0, 4.0, 81)
    coefs = gemmi.Element(element).c4322
    expected = [coefs.calculate_sf(stol2=(x / 2) ** 2) for x in g]  # gemmi works in float32
    np.testing.assert_allclose(_f([element], g, "peng")[0], expected, rtol=2e-6, atol=0)


# --- published values and physical limits --------------------------------------------


def test_lobato_hydrogen_equals_the_exact_hydrogen_atom_scattering_factor():
    # Mott–Bethe with the 1s form factor f_x = 1/(1 + x)², x = (π a0 g)², gives exactly
    # f_e = (a0/2)(2 + x)/(1 + x)²; f_e(0) = a0 = 0.529 Å (International Tables C 4.3.1.1).
    g = np.linspace(0.0, 20.0, 2001)
    x = (math.pi * BOHR * g) ** 2
    exact = 0.5 * BOHR * (2 + x) / (1 + x) ** 2
    np.testing.assert_allclose(_f(["H"], g)[0], exact, rtol=1e-8)
    assert _f(["H"], [0.0])[0, 0] == pytest.approx(0.5292, abs=1e-4)


@pytest.mark.parametrize("element", ["H", "C", "N", "O", "Si"])
def test_lobato_and_peng_agree_at_zero_angle_for_light_elements(element):
    lobato, peng = _f([element], [0.0])[0, 0], _f([element], [0.0], "peng")[0, 0]
    assert peng == pytest.approx(lobato, rel=0.03)


def test_lobato_tends_to_the_mott_bethe_limit_z_over_2pi2_a0_g2_for_all_elements():
    # Checks the units too: a_i [Å], b_i [Å²] and g without 2π (else off by 4π²).
    symbols = [gemmi.Element(z).name for z in range(1, 104)]
    z = np.arange(1, 104)
    g = 1e3
    np.testing.assert_allclose(_f(symbols, [g])[:, 0] * g**2, MOTT_BETHE * z, rtol=1e-6)


def test_silicon_at_g_10_is_within_3_percent_of_the_bare_nucleus_mott_bethe_value():
    # At s = 5 Å⁻¹ the 1s shell still scatters X-rays, f_x ≈ 0.35 (2.5 % of Z = 14), so the
    # ratio sits just below 1.
    ratio = _f(["Si"], [10.0])[0, 0] * 10.0**2 / (MOTT_BETHE * 14)
    assert 0.97 < ratio < 1.0


@pytest.mark.parametrize("element", ["C", "N", "O", "Si", "Br", "Pb"])
@pytest.mark.parametrize(("table", "g_max"), [("lobato", 4.0), ("peng", 3.0)])
def test_both_tables_follow_mott_bethe_with_international_tables_xray_factors(
    element, table, g_max
):
    # Independent physics: f_e = (Z - f_x(s)) / (2π² a0 g²) with the IT92 X-ray factors
    # (gemmi Element.it92, valid for s <= 2). Small g is left out: Z - f_x cancels there.
    g = np.linspace(0.5, g_max, 36)
    el = gemmi.Element(element)
    f_x = np.array([el.it92.calculate_sf(stol2=(x / 2) ** 2) for x in g])
    mott_bethe = MOTT_BETHE * (el.atomic_number - f_x) / g**2
    np.testing.assert_allclose(_f([element], g, table)[0], mott_bethe, rtol=0.015)


@pytest.mark.parametrize(
    ("table", "n_elements", "g_max"), [("lobato", 103, 20.0), ("peng", 98, 4.0)]
)
def test_scattering_factors_are_positive_and_decrease_monotonically_with_g(
    table, n_elements, g_max
):
    symbols = [gemmi.Element(z).name for z in range(1, n_elements + 1)]
    f = _f(symbols, np.linspace(0.0, g_max, 801), table)
    assert np.all(f > 0)
    assert np.all(np.diff(f, axis=1) < 0)


# --- tensor behaviour ---------------------------------------------------------------


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_result_has_shape_elem_by_g_shape_and_follows_g_dtype(table, dtype):
    g = torch.rand(4, 3, dtype=dtype) * 2
    f = electron_scattering_factors(["C", "He"], g, table=table)
    assert f.shape == (2, 4, 3)
    assert f.dtype == dtype and f.device == g.device
    expected = electron_scattering_factors(["He"], g.to(torch.float64).flatten(), table=table)
    torch.testing.assert_close(f[1].flatten(), expected[0].to(dtype))


def test_empty_element_list_gives_an_empty_leading_axis():
    assert electron_scattering_factors([], torch.ones(5)).shape == (0, 5)


@pytest.mark.parametrize("table", TABLES)
def test_gradient_with_respect_to_g_passes_gradcheck(table):
    g = torch.tensor([0.0, 0.3, 1.1, 2.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda g: electron_scattering_factors(["H", "Si", "Pb"], g, table=table), (g,)
    )


# --- element symbols and errors ------------------------------------------------------


def test_element_symbols_are_case_insensitive_and_deuterium_is_hydrogen():
    g = torch.linspace(0, 3, 7, dtype=torch.float64)
    f = electron_scattering_factors(["Si", "SI", "si", " si ", "H", "D", "d"], g)
    for row in f[1:4]:
        torch.testing.assert_close(row, f[0], rtol=0, atol=0)
    for row in f[5:]:
        torch.testing.assert_close(row, f[4], rtol=0, atol=0)


def test_unknown_element_raises_configuration_error_naming_it_and_listing_valid_ones():
    with pytest.raises(ConfigurationError, match=r"'Xx'.*valid elements: H He Li"):
        electron_scattering_factors(["C", "Xx"], torch.ones(2))


def test_element_beyond_peng_coverage_raises_configuration_error():
    with pytest.raises(ConfigurationError, match=r"'peng'.*'Lr'.*Bk Cf \(and D for H\)"):
        electron_scattering_factors(["Lr"], torch.ones(2), table="peng")
    assert electron_scattering_factors(["Lr"], torch.ones(2)).shape == (1, 2)


def test_unknown_table_raises_configuration_error_listing_the_tables():
    with pytest.raises(ConfigurationError, match=r"'kirkland'.*valid tables: lobato, peng"):
        electron_scattering_factors(["C"], torch.ones(2), table="kirkland")
    with pytest.raises(ConfigurationError, match="valid tables"):
        scattering_parameters(["C"], "Lobato")


# --- partial charges ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("element", "z_eff", "n_eff"),
    # Slater's rules by hand: Z − S for the outermost s/p electron, and n*
    [("H", 1.0, 1.0), ("C", 3.25, 2.0), ("O", 4.55, 2.0), ("Si", 4.15, 3.0),
     ("Fe", 3.75, 3.7), ("Br", 7.6, 3.7), ("Pb", 5.65, 4.2)],
)  # fmt: skip
def test_valence_shell_follows_slaters_rules(element, z_eff, n_eff):
    n, zeta = valence_shell(element)
    assert n == n_eff
    assert zeta == pytest.approx(z_eff / (n_eff * BOHR), rel=1e-12)


def test_a_hydrogen_atom_of_charge_plus_one_scatters_as_a_bare_proton():
    # H⁺ has no electron: f_e = 1/(2π² a0 g²) exactly (Mott–Bethe with f_x = 0); its 1s
    # shell is exactly Slater's (ζ = 1/a0), so f_e(H) + Δf_e(H) must give the bare
    # Coulomb factor to the accuracy of the tabulated neutral atom.
    g = np.linspace(0.2, 4.0, 40)
    proton = _f(["H"], g)[0] + charge_scattering_factors(["H"], torch.as_tensor(g)).numpy()[0]
    np.testing.assert_allclose(proton * g**2, MOTT_BETHE, rtol=1e-7)


@pytest.mark.parametrize("element", ["O", "Si", "Br", "Pb"])
def test_charge_factor_is_the_mott_bethe_transform_of_the_slater_shell(element):
    # independent route: the shell's X-ray form factor by quadrature of its density
    from scipy.integrate import quad

    n, zeta = valence_shell(element)
    g = np.array([0.1, 0.4, 0.9, 1.6, 3.0])
    got = charge_scattering_factors([element], torch.as_tensor(g)).numpy()[0]
    radial = lambda r, q: r ** (2 * n) * np.exp(-2 * zeta * r) * np.sinc(q * r / np.pi)  # noqa: E731
    norm = quad(radial, 0, np.inf, args=(0.0,))[0]
    for gi, value in zip(g, got, strict=True):
        q = 2 * np.pi * gi
        phi = quad(radial, 0, 60 / zeta, args=(q,), limit=400)[0] / norm
        assert value == pytest.approx(MOTT_BETHE * phi / gi**2, rel=1e-7, abs=1e-10)


def test_charge_factor_at_g_zero_is_the_finite_rest_of_the_coulomb_term():
    g = torch.tensor([0.0, 1e-3, 2e-3], dtype=torch.float64)
    d = charge_scattering_factors(["O", "Si"], g).numpy()
    rest = d[:, 1:] - MOTT_BETHE / g[1:].numpy() ** 2  # → the g = 0 value, quadratically
    extrapolated = (4 * rest[:, 0] - rest[:, 1]) / 3
    np.testing.assert_allclose(d[:, 0], extrapolated, rtol=1e-5)
    assert np.all(d[:, 0] < 0)  # a cation has less screening charge: lower f_e(0) rest


def test_charge_factor_gradient_passes_gradcheck():
    g = torch.tensor([0.0, 0.3, 1.1, 2.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: charge_scattering_factors(["O", "Pb"], x), (g,))
