"""The refinement objective: weighted least squares on intensities, frame scales eliminated.

Notes
-----
L = Σ_i w_i (Io_i − k_f(i) Ic_i)², w = 1/(σ² + (u·Io)²) (u = 0 by default), over the
compared observations of the fit set, with Ic the frame-integrated intensity averaged over
the thickness model's samples and k_f the closed-form least-squares scale of frame f
(:func:`optimal_scales`), which is differentiated through. wR2 = sqrt(L / Σ w Io²).
Observations held out for validation (an R-free analogue) are simulated with the same
parameters and scored with the fit set's scales; a frame held out whole gets a scale
fitted on its own rows.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from blochnet.experiment.frames import FrameSimulator
from blochnet.experiment.merit import FiguresOfMerit, figures_of_merit, optimal_scales
from blochnet.refine.parameters import StructureParameters


class Objective(nn.Module):
    """Structure, thickness model and frame orientations of one data set, and its loss.

    Parameters
    ----------
    simulator : frame simulator of the data set (its selection rule fixes the observations).
    structure : refinable structure parameters (shared between data sets).
    thickness : a thickness model returning (samples, weights), each (frame, sample).
    refine_orientation : add a refinable rotation vector per frame [rad].
    holdout : (used,) bool, observations kept out of the fit (validation), or None.
    instability : u of the weights w = 1/(σ² + (u·Io)²) (0: w = 1/σ²). The R values and
        the "observed" test (Io > 3σ) use σ itself.
    """

    def __init__(
        self,
        simulator: FrameSimulator,
        structure: StructureParameters,
        thickness: nn.Module,
        *,
        refine_orientation: bool = True,
        holdout: np.ndarray | None = None,
        instability: float = 0.0,
    ) -> None:
        super().__init__()
        self.simulator = simulator
        self.structure = structure
        self.thickness = thickness
        model, ds, rows = simulator.model, simulator.dataset, simulator.used_rows
        as_t = lambda x: torch.as_tensor(x, dtype=model.dtype, device=model.device)  # noqa: E731
        self.register_buffer("i_obs", as_t(ds.reflections.intensity[rows]))
        self.register_buffer("sigma", as_t(ds.reflections.sigma[rows]))
        weight_sigma = torch.sqrt(self.sigma**2 + (instability * self.i_obs.clamp_min(0)) ** 2)
        self.register_buffer("weight_sigma", weight_sigma)
        self.register_buffer("frame", torch.as_tensor(simulator.frame_of_used, device=model.device))
        fit = np.ones(len(rows), bool) if holdout is None else ~np.asarray(holdout, bool)
        self.register_buffer("fit", torch.as_tensor(fit, device=model.device))
        n_frames = ds.n_frames
        self.orientation = (
            nn.Parameter(torch.zeros(n_frames, 3, dtype=model.dtype, device=model.device))
            if refine_orientation
            else None
        )

    @property
    def n_frames(self) -> int:
        return self.simulator.dataset.n_frames

    def calculated(self) -> tuple[Tensor, Tensor]:
        """Unscaled Ic (used,) and the scales (frame,): fitted on the fit set, and for a
        frame with no fit rows (a held-out frame) on its own rows, the one quantity a
        held-out frame sets itself."""
        samples, weights = self.thickness()
        ic = self.simulator.intensities(
            self.structure.atoms(),
            samples,
            rotations=self.orientation,
            weights=weights,
            absorption=self.structure.absorption(),
        )
        fit = self.fit
        scales = optimal_scales(
            self.i_obs[fit], self.weight_sigma[fit], ic[fit], self.frame[fit], self.n_frames
        )
        if not bool(fit.all()):
            has_fit = torch.bincount(self.frame[fit], minlength=self.n_frames) > 0
            own = optimal_scales(
                self.i_obs, self.weight_sigma, ic.detach(), self.frame, self.n_frames
            )
            scales = torch.where(has_fit, scales, own)
        return ic, scales

    def forward(self) -> Tensor:
        """Σ w (Io − k Ic)² over the fit set."""
        ic, scales = self.calculated()
        self._last = (ic.detach(), scales.detach())
        r = (self.i_obs - scales[self.frame] * ic) / self.weight_sigma
        return (r[self.fit] ** 2).sum()

    def scored(self, subset: str = "fit", *, last: bool = False) -> dict[str, Tensor]:
        """``i_obs``, ``sigma``, scaled ``i_calc`` and ``frame`` of one subset ("fit", the
        held-out "free" or "all"); ``last``: from the last ``forward()`` (no new
        simulation; a fresh one before the first)."""
        if last and getattr(self, "_last", None) is not None:
            ic, scales = self._last
        else:
            with torch.no_grad():
                ic, scales = self.calculated()
        keep = {"fit": self.fit, "free": ~self.fit, "all": torch.ones_like(self.fit)}[subset]
        frame = self.frame[keep]
        return {
            "i_obs": self.i_obs[keep],
            "sigma": self.sigma[keep],
            "i_calc": scales[frame] * ic[keep],
            "frame": frame,
            "scales": scales,
        }

    def residuals(self) -> Tensor:
        """(fit,) weighted residuals (Io − k Ic)/σ of the fit set."""
        ic, scales = self.calculated()
        return ((self.i_obs - scales[self.frame] * ic) / self.weight_sigma)[self.fit]

    def figures_of_merit(self, *, n_parameters: int = 0, subset: str = "fit") -> FiguresOfMerit:
        """R values of the fit set (``"fit"``), the held-out set (``"free"``) or ``"all"``."""
        return joint_figures_of_merit([self], subset=subset, n_parameters=n_parameters)


def joint_figures_of_merit(
    objectives, *, subset: str = "fit", n_parameters: int = 0, last: bool = False
) -> FiguresOfMerit:
    """Figures of merit pooled over the data sets of ``objectives`` (their frames in turn
    in the per-frame table); ``subset`` and ``last`` as in :meth:`Objective.scored`."""
    parts = [o.scored(subset, last=last) for o in objectives]
    offsets = np.cumsum([0] + [o.n_frames for o in objectives])
    cat = lambda key: torch.cat([p[key] for p in parts])  # noqa: E731
    frames = torch.cat([p["frame"] + int(off) for p, off in zip(parts, offsets, strict=False)])
    ids = np.concatenate([o.simulator.dataset.frames.id for o in objectives])
    return figures_of_merit(
        cat("i_obs"), cat("sigma"), cat("i_calc"), frames, ids,
        n_parameters=n_parameters, scales=cat("scales"),
    )  # fmt: skip
