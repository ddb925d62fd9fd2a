"""Convergence study of the abTEM reference intensities for Si (tests/physics/abtem_reference.py).

Prints, for Si [110] at 200 kV (B = 0, Lobato scattering factors, no absorption), on the
zone axis and with the beam tilted 3° about [001]:

1. convention checks (beam direction, U_g = γ F / (π Ω), s_g, normalisation, Friedel and
   mirror symmetry, the re-symmetrised "zone" geometry against abTEM's own solver);
2. Bloch-wave convergence in (g_max, sg_max): number of beams, runtime and the largest
   |ΔI| over the strong beams (max_t I > 1 %) against a reference setting, per thickness;
3. multislice convergence in the lateral sampling (and the finite-projection offset);
4. Bloch against multislice;
5. sample intensities at 100 and 500 Å.

Usage::

    python benchmarks/abtem_si_convergence.py          # a few minutes on 2 cores
    python benchmarks/abtem_si_convergence.py --full   # larger references, ~30 min

Needs abTEM (``pip install abtem==1.0.11``). Timings are wall-clock seconds on the 2-core
development machine; when another process holds a core, set ``OPENBLAS_NUM_THREADS=1``
(two OpenBLAS threads competing for one core made ``eigh`` 20-100x slower).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "physics"))

from abtem_reference import (  # noqa: E402
    LATTICE_CONSTANT_SI,
    abtem_silicon_intensities,
    beam_direction,
    silicon_atoms,
)

ZONE = (1, 1, 0)
TILT_3DEG = (math.radians(3.0) * 1e3, 0.0)  # mrad: 3° about [001], towards [-110]
THICKNESSES = (50.0, 100.0, 200.0, 300.0, 500.0)
STRONG = 0.01
SAMPLE_BEAMS = [
    (0, 0, 0),
    (1, -1, 1),
    (-1, 1, 1),
    (1, -1, -1),
    (-1, 1, -1),
    (0, 0, 2),
    (0, 0, -2),
    (2, -2, 0),
    (-2, 2, 0),
    (1, -1, 3),
    (-1, 1, 3),
    (2, -2, 2),
    (0, 0, 4),
    (1, -1, 5),
    (3, -3, 1),
]


def max_difference(a: dict, b: dict, *, skip=()) -> tuple[np.ndarray, tuple]:
    """Largest |I_a − I_b| per thickness over beams strong (> 1 %) in a or b."""
    keys = [k for k in a if k in b and k not in skip and max(a[k].max(), b[k].max()) > STRONG]
    diff = np.array([np.abs(a[k] - b[k]) for k in keys])
    return diff.max(axis=0), keys[int(np.argmax(diff.max(axis=1)))]


def fmt(values) -> str:
    return " ".join(f"{v:9.2e}" for v in np.atleast_1d(values))


def header(title: str) -> None:
    print(f"\n{'=' * 100}\n{title}\n{'=' * 100}")


def conventions() -> None:
    import abtem
    from abtem.bloch import BlochWaves, StructureFactor
    from abtem.core.constants import kappa
    from abtem.core.energy import energy2sigma, energy2wavelength

    header("1. Conventions")
    lam = energy2wavelength(200e3)
    print(f"wavelength λ = {lam:.6f} Å; K = 1/λ = {1 / lam:.4f} Å⁻¹ (no U₀)")
    print(
        f"σ/(κ λ) = {energy2sigma(200e3) / (kappa * lam):.6f} = γ (1 + eE/m₀c² = "
        f"{1 + 200e3 / 510998.95:.6f}), so abTEM's U_g = γ F(g) / (π Ω) as in the primer"
    )
    d = beam_direction(ZONE, TILT_3DEG)
    print(f"beam on axis: {beam_direction(ZONE)}   tilted 3° about [001]: {np.round(d, 6)}")
    # abTEM's s_g against (K² − |K + g|²) / 2K with K along its beam (+z).
    with abtem.config.set({"precision": "float64"}):
        sf = StructureFactor(silicon_atoms(), g_max=4.01, parametrization="lobato", cutoff="hard")
        bw = BlochWaves(sf, energy=200e3, sg_max=0.2, g_max=2.0)  # cubic frame, beam ∥ [001]
        t = np.array(THICKNESSES)
        theirs = np.asarray(bw.calculate_diffraction_patterns(t, lazy=False).array)
    g = bw.g_vec
    k_vec = np.array([0.0, 0.0, 1 / lam])
    s_ref = ((1 / lam) ** 2 - ((k_vec + g) ** 2).sum(1)) * lam / 2
    print(
        f"max |s_g(abTEM) − (K² − |K+g|²)/2K| = {np.abs(bw.excitation_errors() - s_ref).max():.1e}"
    )

    mine = abtem_silicon_intensities((0, 0, 1), (0, 0), t, g_max=2.0, sg_max=0.2)
    worst = max(np.abs(mine[tuple(h)] - theirs[:, i]).max() for i, h in enumerate(bw.hkl))
    print(f"[001] on axis: 'zone' route vs abTEM calculate_diffraction_patterns: {worst:.1e}")

    for label, tilt in (("on axis", (0.0, 0.0)), ("tilted 3°", TILT_3DEG)):
        r = abtem_silicon_intensities(ZONE, tilt, t, g_max=5.0, sg_max=0.3)
        hkl = r.hkl
        # flux weights b_g = 1 + g·n/K_n (n ∥ [110], so g·n = (h + k)/(a√2))
        k_n = (1 / lam) * float(r.beam_direction @ r.surface_normal)
        b = 1 + (hkl[:, 0] + hkl[:, 1]) / (LATTICE_CONSTANT_SI * math.sqrt(2)) / k_n
        flux = sum(b[i] * r[tuple(h)] for i, h in enumerate(hkl))
        print(
            f"{label:10s} Bloch g_max 5, sg_max 0.3 ({len(hkl)} beams): Σ I − 1 = "
            f"{fmt(r.total - 1)}; Σ b_g I_g − 1 = {np.abs(flux - 1).max():.1e}"
        )
        m = abtem_silicon_intensities(ZONE, tilt, t, method="multislice")
        print(f"{label:10s} multislice (default): Σ I − 1 = {fmt(m.total - 1)}")
        for name, res in (("Bloch", r), ("multislice", m)):
            # (001) mirror: the tilted beam lies in it. Friedel (ZOLZ, h = −k): on axis only
            # (HOLZ beams have no partner in the set: the Ewald sphere curves one way).
            mirror = max(np.abs(res[k] - res[(k[0], k[1], -k[2])]).max() for k in res)
            text = f"{'':10s} {name:10s} max |I(hkl) − I(hk−l)| = {mirror:.1e}"
            if tilt == (0.0, 0.0):
                zolz = [k for k in res if k[0] == -k[1]]
                friedel = max(np.abs(res[k] - res[(-k[0], -k[1], -k[2])]).max() for k in zolz)
                text += f"; max |I(g) − I(−g)| = {friedel:.1e}"
            print(text)
    beam = abtem_silicon_intensities(ZONE, TILT_3DEG, t, g_max=4.0, sg_max=0.2)
    native_t = abtem_silicon_intensities(
        ZONE, TILT_3DEG, t, g_max=4.0, sg_max=0.2, surface_normal="beam"
    )
    native_tc = abtem_silicon_intensities(
        ZONE, TILT_3DEG, t / math.cos(math.radians(3)), g_max=4.0, sg_max=0.2,
        surface_normal="beam",
    )  # fmt: skip
    print("tilted 3°, max |ΔI| strong beams, normal [110] (t) vs abTEM native normal ∥ beam:")
    print(f"   native at t:          {fmt(max_difference(beam, native_t)[0])}")
    print(f"   native at t / cos 3°: {fmt(max_difference(beam, native_tc)[0])}")


def bloch_study(full: bool) -> dict:
    header("2. Bloch waves: max |ΔI| over strong beams vs the reference, t = " + str(THICKNESSES))
    settings = [(1.5, 0.03), (2.0, 0.03), (2.0, 0.05), (2.5, 0.05), (3.0, 0.1), (4.0, 0.2)]
    settings += [(5.0, 0.3)]
    reference = (7.0, 0.3) if full else (6.0, 0.3)
    if full:
        settings += [(6.0, 0.3), (6.0, 0.5), (8.0, 0.2)]
    out = {}
    for label, tilt in (("on axis [110]", (0.0, 0.0)), ("3° about [001]", TILT_3DEG)):
        ref = abtem_silicon_intensities(
            ZONE, tilt, THICKNESSES, g_max=reference[0], sg_max=reference[1]
        )
        print(f"\n{label}: reference g_max {reference[0]}, sg_max {reference[1]}: "
              f"{ref.settings['n_beams']} beams, {ref.runtime_s:.1f} s")  # fmt: skip
        print(f"{'g_max':>6} {'sg_max':>6} {'beams':>6} {'time/s':>7}   max |ΔI| per thickness")
        for g_max, sg_max in settings:
            r = abtem_silicon_intensities(ZONE, tilt, THICKNESSES, g_max=g_max, sg_max=sg_max)
            diff, worst = max_difference(r, ref)
            print(f"{g_max:6.1f} {sg_max:6.2f} {r.settings['n_beams']:6d} {r.runtime_s:7.2f}   "
                  f"{fmt(diff)}   worst {worst}")  # fmt: skip
            out[(label, g_max, sg_max)] = r
        out[(label, *reference)] = ref
    return out


def multislice_study(full: bool) -> dict:
    header("3. Multislice (infinite projection, one slice per atomic plane): sampling")
    samplings = [0.05, 0.025, 0.0167, 0.0125]
    reference = 0.00625 if full else 0.00833
    out = {}
    for label, tilt in (("on axis [110]", (0.0, 0.0)), ("3° about [001]", TILT_3DEG)):
        ref = abtem_silicon_intensities(ZONE, tilt, THICKNESSES, method="multislice",
                                        sampling=reference, g_max=30.0)  # fmt: skip
        print(f"\n{label}: reference sampling {reference} Å, gpts {ref.settings['gpts']}, "
              f"{ref.runtime_s:.1f} s; total − 1 = {fmt(ref.total - 1)}")  # fmt: skip
        print(f"{'sampling':>9} {'slices':>6} {'proj':>8} {'time/s':>7}   max |ΔI| per thickness")
        runs = [(s, None, "infinite") for s in samplings] + [(0.0125, 8, "infinite")]
        if full:
            runs += [(0.0125, 16, "finite"), (0.0125, 32, "finite")]
        for sampling, slices, projection in runs:
            r = abtem_silicon_intensities(ZONE, tilt, THICKNESSES, method="multislice",
                                          sampling=sampling, slices_per_period=slices,
                                          projection=projection, g_max=30.0)  # fmt: skip
            diff, worst = max_difference(r, ref)
            print(f"{sampling:9.4f} {r.settings['slices_per_period']:6d} {projection:>8} "
                  f"{r.runtime_s:7.2f}   {fmt(diff)}   worst {worst}")  # fmt: skip
            out[(label, sampling, r.settings["slices_per_period"], projection)] = r
        out[(label, reference, 2, "infinite")] = ref
        asym = max(np.abs(ref[k] - ref[(k[0], k[1], -k[2])]).max() for k in ref)
        print(f"reference: max |I(hkl) − I(hk−l)| = {asym:.1e} (exact symmetry; grid error)")
        # Interpolation between exit planes: spline through every other period, checked
        # at the periods left out (the real spacing is half this, error ~16x smaller).
        from scipy.interpolate import CubicSpline

        z = ref.exit_plane_thicknesses
        worst = 0.0
        for values in ref.exit_plane_intensities.values():
            if values.max() > STRONG:
                spline = CubicSpline(z[::2], values[::2])
                worst = max(worst, np.abs(spline(z[1:-1:2]) - values[1:-1:2]).max())
        print(f"spline through every 2nd period, error at the others: {worst:.1e}")
    return out


def cross_check(bloch: dict, ms: dict, full: bool) -> None:
    header("4. Bloch (g_max 5, sg_max 0.3, normal [110]) vs multislice (default), max |ΔI|")
    for label in ("on axis [110]", "3° about [001]"):
        b = bloch[(label, 5.0, 0.3)]
        m = ms[(label, 0.0125, 2, "infinite")]
        print(f"{label:15s} all strong beams:  {fmt(max_difference(b, m)[0])}")
        print(f"{'':15s} without 000:       {fmt(max_difference(b, m, skip=[(0, 0, 0)])[0])}")
        print(f"{'':15s} I000 Bloch − ms:   {fmt(b[(0, 0, 0)] - m[(0, 0, 0)])}")
        for cut in (5.0, 8.0):
            beyond = sum(v for k, v in m.items() if np.linalg.norm(k) / LATTICE_CONSTANT_SI > cut)
            print(f"{'':15s} ms Σ I, |g| > {cut:3.1f}:  {fmt(beyond)}")


def samples(bloch: dict, ms: dict) -> None:
    header("5. Sample intensities (Bloch g_max 5, sg_max 0.3 | multislice 0.0125 Å)")
    i100, i500 = THICKNESSES.index(100.0), THICKNESSES.index(500.0)
    for label in ("on axis [110]", "3° about [001]"):
        b = bloch[(label, 5.0, 0.3)]
        m = ms[(label, 0.0125, 2, "infinite")]
        print(f"\n{label}: beam direction {np.round(b.beam_direction, 5)}")
        print(f"{'hkl':>12} {'Bloch 100':>10} {'ms 100':>10} {'Bloch 500':>10} {'ms 500':>10}")
        strongest = sorted(b, key=lambda k: -max(b[k][i100], b[k][i500]))[:12]
        for k in SAMPLE_BEAMS + [k for k in strongest if k not in SAMPLE_BEAMS]:
            if k in b and k in m:
                print(f"{str(k):>12} {b[k][i100]:10.5f} {m[k][i100]:10.5f} "
                      f"{b[k][i500]:10.5f} {m[k][i500]:10.5f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="larger references (~30 min)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    conventions()
    bloch = bloch_study(args.full)
    ms = multislice_study(args.full)
    cross_check(bloch, ms, args.full)
    samples(bloch, ms)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
