"""Figures of merit comparing observed and calculated intensities of frame reflections.

Axis names follow the project glossary (docs/glossary.md): ``refl`` (observations, one
per hkl per frame) and ``frame`` (virtual frames). With Io, σ observed, Ic calculated
and scaled, w = 1/σ²:

    wR2 = sqrt(Σ w (Io − Ic)² / Σ w Io²)
    R1  = Σ |Fo − Fc| / Σ Fo,   F = sqrt(max(I, 0))
    GoF = sqrt(Σ w (Io − Ic)² / (N − N_par))

Pooled values sum over every (hkl, frame) observation, so a reflection seen in three frames
counts three times: this is the "R1(obs)"/"wR2(all)" that dynamical-refinement papers quote.
The other convention, the mean of per-frame values, is reported beside it. R values depend
strongly on which reflections are scored, so every R carries its reflection count.

References
----------
Palatinus, L. et al. (2015). Acta Cryst. A71, 235-244. https://doi.org/10.1107/S2053273315001266
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from blochnet.errors import ConfigurationError


def _frame_sum(values: Tensor, frame_index: Tensor, n_frames: int) -> Tensor:
    out = torch.zeros(n_frames, dtype=values.dtype, device=values.device)
    return out.index_add(0, frame_index, values)


def optimal_scales(
    i_obs: Tensor, sigma: Tensor, i_calc: Tensor, frame_index: Tensor, n_frames: int
) -> Tensor:
    """Weighted least-squares scale of each frame, in closed form.

    Parameters
    ----------
    i_obs, sigma, i_calc : Tensor (refl,) observed intensity, its s.u. (> 0), calculated.
    frame_index : Tensor (refl,) long, frame of each observation in ``0 .. n_frames - 1``.
    n_frames : number of frames.

    Returns
    -------
    Tensor (frame,) k_f minimising Σ w (Io − k_f Ic)² over the frame's reflections; 0 where
    a frame has no reflection or Σ w Ic² = 0 (never NaN). Differentiable w.r.t. ``i_calc``.

    Notes
    -----
    k_f = Σ w Io Ic / Σ w Ic², w = 1/σ², sums over the reflections of frame f.
    """
    w = sigma.to(i_calc.dtype) ** -2
    numerator = _frame_sum(w * i_obs.to(i_calc.dtype) * i_calc, frame_index, n_frames)
    denominator = _frame_sum(w * i_calc**2, frame_index, n_frames)
    defined = denominator > 0
    safe = torch.where(defined, denominator, torch.ones_like(denominator))
    return torch.where(defined, numerator / safe, torch.zeros_like(numerator))


@dataclass
class FiguresOfMerit:
    """Agreement of observed and calculated intensities.

    Pooled values sum over every (hkl, frame) observation: the number papers quote as
    "R1(obs)" / "wR2". Frame means average per-frame values: the other convention.

    Attributes
    ----------
    r1_obs, n_obs : pooled R1 over observations with Io > ``obs_threshold`` σ, and their
        number. nan when there is none.
    r1_all, n_all : pooled R1 over all observations (Io < 0 gives Fo = 0), and their number.
    wr2 : pooled wR2 over all observations.
    gof : goodness of fit over all observations with ``n_parameters`` refined parameters;
        ``inf`` when ``n_all <= n_parameters`` (undetermined), never nan.
    r1_obs_frame_mean : mean of per-frame R1(obs) over frames with >= 1 observed reflection.
    wr2_frame_mean : mean of per-frame wR2 over frames where it is defined.
    per_frame : dict of (frame,) arrays ``frame_id``, ``n_obs``, ``n_all``, ``r1_obs``,
        ``r1_all``, ``wr2``, ``scale``. R values and ``scale`` are nan where a frame has no
        reflection (``r1_obs`` also where it has no observed one, ``r1_all``/``wr2`` where
        their denominator is 0).
    obs_threshold : the "observed" limit in units of σ.
    """

    r1_obs: float
    n_obs: int
    r1_all: float
    n_all: int
    wr2: float
    gof: float
    n_parameters: int
    r1_obs_frame_mean: float
    wr2_frame_mean: float
    per_frame: dict[str, np.ndarray]
    obs_threshold: float = 3.0

    def summary(self) -> str:
        """Multi-line text; every R with its reflection count, pooled or frame mean."""
        frames_obs = int(np.isfinite(self.per_frame["r1_obs"]).sum())
        frames_wr2 = int(np.isfinite(self.per_frame["wr2"]).sum())
        n_frames = int((self.per_frame["n_all"] > 0).sum())
        obs = f"{self.n_obs:,} obs (I > {self.obs_threshold:g}σ)"
        every = f"{self.n_all:,} reflections (all)"
        return "\n".join(
            [
                f"{self.n_all:,} reflection observations in {n_frames:,} frames, "
                f"{self.n_obs:,} observed (I > {self.obs_threshold:g}σ)",
                f"R1(obs) {_pc(self.r1_obs)} pooled over {obs} / "
                f"{_pc(self.r1_obs_frame_mean)} mean of {frames_obs:,} frames",
                f"R1(all) {_pc(self.r1_all)} pooled over {every}",
                f"wR2(all) {_pc(self.wr2)} pooled over {every} / "
                f"{_pc(self.wr2_frame_mean)} mean of {frames_wr2:,} frames",
                f"GoF {self.gof:.3f} over {every}, {self.n_parameters:,} parameters",
            ]
        )

    def to_dict(self) -> dict:
        """JSON-ready dict (floats, ints, lists); nan and inf become ``None`` (JSON null)."""
        out = {key: _plain(value) for key, value in asdict(self).items() if key != "per_frame"}
        out["per_frame"] = {key: _plain(value) for key, value in self.per_frame.items()}
        return out


def _pc(value: float) -> str:
    return f"{100 * value:.2f} %"


def _plain(value):
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    return int(value) if isinstance(value, np.integer) else value


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, nan where the denominator is 0 (no warning)."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    out = np.full(np.shape(numerator), np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _mean_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def figures_of_merit(
    i_obs: Tensor,
    sigma: Tensor,
    i_calc_scaled: Tensor,
    frame_index: Tensor,
    frame_ids,
    *,
    n_parameters: int = 0,
    obs_threshold: float = 3.0,
    scales: Tensor | None = None,
) -> FiguresOfMerit:
    """R1, wR2 and GoF, pooled over all observations and per frame.

    Parameters
    ----------
    i_obs, sigma, i_calc_scaled : Tensor (refl,) observed intensity, its s.u. (> 0) and the
        calculated intensity with the frame scale already applied.
    frame_index : Tensor (refl,) long, frame of each observation, index into ``frame_ids``.
    frame_ids : (frame,) the frames' ids in the data file, for the per-frame table.
    n_parameters : number of refined parameters, for GoF.
    obs_threshold : an observation is "observed" when Io > obs_threshold · σ.
    scales : optional Tensor (frame,) the scales that made ``i_calc_scaled``, reported in
        ``per_frame["scale"]``; without it that column holds the weighted least-squares
        scale still mapping ``i_calc_scaled`` onto ``i_obs`` (1 when already optimal).

    Returns
    -------
    FiguresOfMerit. Pooled R1(obs) counts each (hkl, frame) observation once, so a
    reflection seen in 3 frames counts 3 times: the pooled value papers quote. The frame
    means are the other convention. GoF divides by ``n_all - n_parameters`` (all
    observations, as SHELXL does) and is ``inf`` when that is <= 0.
    """
    io, sig, ic = (t.detach().cpu().double().numpy() for t in (i_obs, sigma, i_calc_scaled))
    if not io.shape == sig.shape == ic.shape == tuple(frame_index.shape) or io.ndim != 1:
        raise ValueError("i_obs, sigma, i_calc_scaled and frame_index must be (refl,) alike")
    frame = frame_index.detach().cpu().numpy().astype(np.int64)
    frame_ids = np.asarray(frame_ids)
    n_frames = len(frame_ids)
    if frame.size and (frame.min() < 0 or frame.max() >= n_frames):
        raise ValueError(f"frame_index must lie in 0..{n_frames - 1}")
    if np.any(sig <= 0):
        raise ConfigurationError("every σ(Io) must be positive")

    w = sig**-2
    observed = io > obs_threshold * sig
    f_obs, f_calc = np.sqrt(np.maximum(io, 0)), np.sqrt(np.maximum(ic, 0))
    terms = {
        "dF": np.abs(f_obs - f_calc),
        "F": f_obs,
        "dF_obs": np.where(observed, np.abs(f_obs - f_calc), 0.0),
        "F_obs": np.where(observed, f_obs, 0.0),
        "wd2": w * (io - ic) ** 2,
        "wI2": w * io**2,
        "wIoIc": w * io * ic,
        "wIc2": w * ic**2,
    }
    pooled = {key: value.sum() for key, value in terms.items()}
    per = {key: np.bincount(frame, value, n_frames) for key, value in terms.items()}
    n_all_f = np.bincount(frame, minlength=n_frames)
    n_obs_f = np.bincount(frame[observed], minlength=n_frames)

    own = scales is None
    scale = _ratio(per["wIoIc"], per["wIc2"]) if own else scales.detach().cpu().double().numpy()
    scale = np.where(n_all_f > 0, scale, np.nan)
    r1_obs_f = np.where(n_obs_f > 0, _ratio(per["dF_obs"], per["F_obs"]), np.nan)
    wr2_f = np.sqrt(_ratio(per["wd2"], per["wI2"]))
    n_all, n_obs = int(io.size), int(observed.sum())
    dof = n_all - n_parameters
    return FiguresOfMerit(
        r1_obs=float(_ratio(pooled["dF_obs"], pooled["F_obs"])),
        n_obs=n_obs,
        r1_all=float(_ratio(pooled["dF"], pooled["F"])),
        n_all=n_all,
        wr2=float(np.sqrt(_ratio(pooled["wd2"], pooled["wI2"]))),
        gof=float(np.sqrt(pooled["wd2"] / dof)) if dof > 0 else float("inf"),
        n_parameters=int(n_parameters),
        r1_obs_frame_mean=_mean_finite(r1_obs_f),
        wr2_frame_mean=_mean_finite(wr2_f),
        per_frame={
            "frame_id": frame_ids,
            "n_obs": n_obs_f,
            "n_all": n_all_f,
            "r1_obs": r1_obs_f,
            "r1_all": _ratio(per["dF"], per["F"]),
            "wr2": wr2_f,
            "scale": scale,
        },
        obs_threshold=float(obs_threshold),
    )
