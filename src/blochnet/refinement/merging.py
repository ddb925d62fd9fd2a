"""Symmetry-merged intensities and the R values a kinematical refinement would report.

Notes
-----
Dynamical refinement compares every observation of every frame with its own simulation;
kinematical programs (SHELXL, Olex2) first merge the equivalent reflections of the Laue
class and report R1 and wR2 over the merged list, with R_int. To put the two side by
side, the observations are merged here as follows:

* each observation is put on the scale of the calculation, Io/k and σ/k with k its
  frame's refined scale, and its calculated intensity taken unscaled (Ic);
* rows that repeat one measurement (whole rocking curves, the same Io and σ for one hkl
  in several frames) count once;
* equivalents under the Laue class of the space group (Friedel mates included; gemmi's
  reciprocal asymmetric unit) are averaged with weights 1/σ²: <Io> = Σ w Io / Σ w,
  σ(<Io>) = (Σ w)^-1/2, and <Ic> the mean of the calculated intensities the same way;
* R_int = Σ |Io − <Io>| / Σ Io over reflections measured more than once; R_σ =
  Σ σ(<Io>) / Σ <Io>; merged R1(obs) = Σ |Fo − Fc| / Σ Fo over <Io> > 3σ(<Io>),
  F = sqrt(I), and wR2 = sqrt(Σ w (<Io> − <Ic>)² / Σ w <Io>²), w = 1/σ²(<Io>).

These numbers are comparable with a kinematical refinement's in how they are counted, not
in what they mean: <Ic> is still the dynamical calculation, averaged over frames.
:func:`kinematical_r` gives the other comparison: <Io> against the kinematical |Fc|² of
the refined model under one scale, the R a kinematical program would report for this
model (without refining it kinematically).

For rows that each record a slice of a rocking curve (frame mode, partial intensities),
equivalents measured at different excitation errors differ by construction and R_int
says little; it is meaningful for whole rocking-curve intensities.
"""

from __future__ import annotations

import numpy as np

from blochnet.crystal import Crystal, find_space_group

RULE = (
    "Laue-class equivalents and Friedel mates merged with weights 1/s^2 after dividing "
    "each observation by its frame scale; repeated measurements (same hkl, Io, s) counted once"
)


def unique_indices(crystal: Crystal, hkl: np.ndarray) -> np.ndarray:
    """(refl, 3) the representative of each hkl in the reciprocal asymmetric unit of the
    crystal's Laue class (hkl itself for an unlisted setting)."""
    import gemmi

    group = find_space_group(crystal.operators)
    if group is None:
        return np.asarray(hkl, dtype=int)
    asu, ops = gemmi.ReciprocalAsu(group), group.operations()
    cache: dict[tuple, tuple] = {}
    out = np.empty((len(hkl), 3), dtype=int)
    for n, row in enumerate(np.asarray(hkl, dtype=int)):
        key = tuple(int(v) for v in row)
        if key not in cache:
            cache[key] = tuple(asu.to_asu(list(key), ops)[0])
        out[n] = cache[key]
    return out


def merge(
    crystal: Crystal,
    hkl: np.ndarray,
    i_obs: np.ndarray,
    sigma: np.ndarray,
    i_calc: np.ndarray,
    scale: np.ndarray,
) -> dict:
    """Merge the observations of one data set (module notes).

    hkl : (refl, 3); i_obs, sigma : (refl,) as measured; i_calc : (refl,) scaled
    calculated intensities (k·Ic); scale : (refl,) the frame scale k of each row.

    Returns ``{"table": {"h", "k", "l", "n", "i_obs", "sigma", "i_calc"}`` (one row per
    unique reflection) and the statistics ``r_int``, ``r_sigma``, ``r1_obs``, ``r1_all``,
    ``wr2``, ``n_unique``, ``n_obs`` (<Io> > 3σ), ``n_measurements``, ``rule``}``.
    """
    k = np.asarray(scale, dtype=float)
    io, so, ic = np.asarray(i_obs) / k, np.asarray(sigma) / k, np.asarray(i_calc) / k
    hkl = np.asarray(hkl, dtype=int)
    # one measurement repeated over frames counts once
    _, first = np.unique(
        np.column_stack([hkl, np.asarray(i_obs), np.asarray(sigma)]), axis=0, return_index=True
    )
    first = np.sort(first)
    io, so, ic, hkl = io[first], so[first], ic[first], hkl[first]
    unique, group = np.unique(unique_indices(crystal, hkl), axis=0, return_inverse=True)
    group = group.ravel()
    n_unique = len(unique)
    w = 1 / so**2
    sum_w = np.bincount(group, w, n_unique)
    mean_o = np.bincount(group, w * io, n_unique) / sum_w
    mean_c = np.bincount(group, w * ic, n_unique) / sum_w
    sigma_m = 1 / np.sqrt(sum_w)
    count = np.bincount(group, minlength=n_unique)
    several = count[group] > 1
    r_int = _ratio(np.abs(io - mean_o[group])[several].sum(), io[several].sum())
    observed = mean_o > 3 * sigma_m
    fo, fc = (np.sqrt(np.clip(x, 0, None)) for x in (mean_o, mean_c))
    wm = 1 / sigma_m**2
    stats = {
        "rule": RULE,
        "n_measurements": int(len(io)),
        "n_unique": int(n_unique),
        "n_obs": int(observed.sum()),
        "r_int": r_int,
        "r_sigma": _ratio(sigma_m.sum(), mean_o.sum()),
        "r1_obs": _ratio(np.abs(fo - fc)[observed].sum(), fo[observed].sum()),
        "r1_all": _ratio(np.abs(fo - fc).sum(), fo.sum()),
        "wr2": float(np.sqrt(_ratio((wm * (mean_o - mean_c) ** 2).sum(), (wm * mean_o**2).sum()))),
    }
    table = {
        "h": unique[:, 0], "k": unique[:, 1], "l": unique[:, 2], "n": count,
        "i_obs": mean_o, "sigma": sigma_m, "i_calc": mean_c,
    }  # fmt: skip
    return {"table": table, **stats}


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else float("nan")


def kinematical_r(i_obs: np.ndarray, sigma: np.ndarray, i_kin: np.ndarray) -> dict:
    """R values of merged intensities against kinematical ones, |Fc,kin|² of the refined
    model under one least-squares scale k (w = 1/σ²): what a kinematical program would
    report for this model without refining it. ``{"r1_obs", "wr2", "scale"}``."""
    w = 1 / np.asarray(sigma) ** 2
    scale = float(np.sum(w * i_obs * i_kin) / np.sum(w * i_kin**2))
    calc = scale * i_kin
    observed = i_obs > 3 * sigma
    fo, fc = np.sqrt(np.clip(i_obs, 0, None)), np.sqrt(calc)
    return {
        "r1_obs": _ratio(np.abs(fo - fc)[observed].sum(), fo[observed].sum()),
        "wr2": float(np.sqrt(_ratio((w * (i_obs - calc) ** 2).sum(), (w * i_obs**2).sum()))),
        "scale": scale,
    }
