"""The refinement objective: weighted least squares on intensities, frame scales eliminated.

Notes
-----
With the weighted residuals r_i = (Io_i − k_f(i) Ic_i)/σ_w,i, σ_w² = σ² + (u·Io)² (u = 0
by default), over the compared observations of the fit set, Ic the frame-integrated
intensity averaged over the thickness model's samples and k_f the closed-form
least-squares scale of frame f (:func:`optimal_scales`, differentiated through):

* plain weighted least squares (``robust = 0``): L = Σ r², so wR2 = sqrt(L / Σ w Io²);
* robust (``robust = b > 0``, the default of a refinement): L = Σ c² ln(1 + (r/c)²), the
  Cauchy (Lorentzian) loss, with c = b·s and s = max(1.4826·median|r|, 1) the robust scale
  of the residuals (the median absolute deviation of a normal distribution; never below
  the σ's own scale). Residuals of a few s count as in least squares; a gross outlier (an
  overlapped or badly integrated spot) counts logarithmically instead of quadratically, so
  a few of them cannot pull the model away from the rest; the frame scales are then
  weighted least squares with the weights reduced by 1/(1 + (r/c)²), r the residuals of
  the plain scales (one reweighting step, differentiated through). b = 2.385 keeps 95 %
  of the efficiency of least squares for normal errors. s is set from the residuals of
  the first evaluation (with least-squares scales) and updated after every optimiser
  step (:meth:`Objective.update_robust_scale`), so it follows the fit as it improves; it
  is saved with the checkpoint. The per-observation form ``residuals()`` is
  r̃ = sign(r)·c·sqrt(ln(1 + (r/c)²)), with Σ r̃² = L, so the Gauss–Newton steps and the
  s.u. use the same loss (iteratively reweighted least squares).

The reported R values and wR2 always use w = 1/σ².
Observations held out for validation (an R-free analogue) are simulated with the same
parameters and scored with the fit set's scales; a frame held out whole gets a scale
fitted on its own rows.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from blochnet.errors import ConfigurationError
from blochnet.experiment.frame_tangents import frame_jacobian
from blochnet.experiment.frames import FrameSimulator
from blochnet.experiment.merit import FiguresOfMerit, figures_of_merit, optimal_scales
from blochnet.experiment.observations import Observations
from blochnet.experiment.sample_basis import SampleBasis
from blochnet.experiment.shards import sum_gradients
from blochnet.memory import release_free_memory
from blochnet.refinement.orientation import FrameOrientation
from blochnet.refinement.parameters import StructureParameters

# elements of one intermediate array (observation × column) of the residuals' forward-mode
# pass in :meth:`Objective._residual_tangents` (32 MiB in float64)
_RESIDUAL_ELEMENTS = 2**22


class Objective(nn.Module):
    """Structure, thickness model and frame orientations of one data set, and its loss.

    Parameters
    ----------
    simulator : frame simulator of the data set.
    observations : the observations its plan simulates, with the fit / held-out split.
    structure : refinable structure parameters (shared between data sets).
    thickness : a thickness model returning (samples, weights), each (frame, sample).
    refine_orientation : refine the frame orientations (with ``orientation``'s model, by
        default :class:`~blochnet.refinement.orientation.FrameOrientation`, three free angles
        per frame); False: the file's orientations.
    orientation : an orientation model (module whose ``forward()`` gives (frame, 3) rotation
        vectors [rad]), used when ``refine_orientation``; None: one per frame.
    instability : u of the weights w = 1/(σ² + (u·Io)²) (0: w = 1/σ²). The R values and
        the "observed" test (Io > 3σ) use σ itself.
    robust : b of the Cauchy loss (module notes); 0: plain weighted least squares.
    thickness_steps : for a thickness model whose samples are fixed (a grid, only the
        weights learned), every evaluation with gradients first fits the model in this many
        Adam steps (rate ``thickness_rate``) on the intensities at its samples, which one
        solve gives (:meth:`FrameSimulator.sample_basis`); the loss is then that of the
        fitted model, and its gradient is that of the loss with the thickness profiled out
        (the thickness model gets none: it is fitted here). 0: the thickness model is one
        more parameter group of the optimiser.
    """

    def __init__(
        self,
        simulator: FrameSimulator,
        observations: Observations,
        structure: StructureParameters,
        thickness: nn.Module,
        *,
        refine_orientation: bool = True,
        instability: float = 0.0,
        robust: float = 0.0,
        orientation: nn.Module | None = None,
        thickness_steps: int = 0,
        thickness_rate: float = 1e-2,
    ) -> None:
        super().__init__()
        self.thickness_steps = int(thickness_steps) if thickness.fixed_samples else 0
        self.thickness_rate = float(thickness_rate)
        self._thickness_fit: torch.optim.Adam | None = None
        self.simulator = simulator
        self.observations = observations
        self.structure = structure
        self.thickness = thickness
        model = simulator.model
        tensors = observations.tensors(dtype=model.dtype, device=model.device)
        self.register_buffer("i_obs", tensors.i_obs)
        self.register_buffer("sigma", tensors.sigma)
        weight_sigma = torch.sqrt(self.sigma**2 + (instability * self.i_obs.clamp_min(0)) ** 2)
        self.register_buffer("weight_sigma", weight_sigma)
        self.register_buffer("frame", tensors.frame)
        self.register_buffer("fit", tensors.fit)
        self.robust = float(robust)
        start_c = math.nan if robust > 0 else 0.0  # nan: set by the first evaluation
        self.register_buffer(
            "robust_c", torch.tensor(start_c, dtype=model.dtype, device=model.device)
        )
        if refine_orientation and orientation is None:
            orientation = FrameOrientation(observations.n_frames, dtype=model.dtype)
        self.orientation = orientation.to(device=model.device) if refine_orientation else None

    @property
    def n_frames(self) -> int:
        return self.observations.n_frames

    def rotations(self) -> Tensor | None:
        """(frame, 3) orientation corrections [rad] of the orientation model (None: none)."""
        return None if self.orientation is None else self.orientation()

    def calculated(self) -> tuple[Tensor, Tensor]:
        """Unscaled Ic (obs,) and the scales (frame,): fitted on the fit set, and for a
        frame with no fit rows (a held-out frame) on its own rows, the one quantity a
        held-out frame sets itself."""
        samples, weights = self.thickness()
        ic = self.simulator.intensities(
            self.structure.atoms(),
            samples,
            rotations=self.rotations(),
            weights=weights,
            absorption=self.structure.absorption(),
        )
        return ic, self.scales(ic)

    def scales(self, ic: Tensor) -> Tensor:
        """(frame,) scales of the calculated intensities ``ic`` (see :meth:`calculated`),
        differentiable in ``ic``."""
        fit = self.fit
        scales = optimal_scales(
            self.i_obs[fit], self.weight_sigma[fit], ic[fit], self.frame[fit], self.n_frames
        )
        if self.robust > 0:
            # one reweighting step: the frame scales of the robust loss, with the weights
            # 1/(1 + (r/c)²) of the least-squares scales' residuals
            r = self._weighted(ic, scales)
            if bool(torch.isnan(self.robust_c)):
                self._set_robust_scale(r.detach())
            down = torch.sqrt(1 + (r / self.robust_c) ** 2)
            scales = optimal_scales(
                self.i_obs[fit], self.weight_sigma[fit] * down, ic[fit], self.frame[fit],
                self.n_frames,
            )  # fmt: skip
        if not bool(fit.all()):
            has_fit = torch.bincount(self.frame[fit], minlength=self.n_frames) > 0
            own = optimal_scales(
                self.i_obs, self.weight_sigma, ic.detach(), self.frame, self.n_frames
            )
            scales = torch.where(has_fit, scales, own)
        return scales

    def residuals_of(self, ic: Tensor) -> Tensor:
        """(fit,) residuals of the loss (see :meth:`residuals`) for calculated intensities
        ``ic`` (obs,), differentiable in ``ic``."""
        return self._robust_form(self._weighted(ic, self.scales(ic)))

    def forward(self) -> Tensor:
        """The loss over the fit set: Σ w (Io − k Ic)², or its robust form (module notes);
        with ``thickness_steps`` and gradients on, after fitting the thickness model."""
        ic, scales = self._profiled() if self._profiles() else self.calculated()
        self._remember(ic, scales)
        return (self._robust_form(self._weighted(ic, scales)) ** 2).sum()

    def _remember(self, ic: Tensor, scales: Tensor) -> None:
        """Keep Ic and the scales of this simulation for ``last`` (:meth:`scored`), with
        the versions of the parameters and buffers it was made with."""
        self._last = (ic.detach(), scales.detach())
        self._last_state = self._state_versions()

    def _state_versions(self) -> tuple:
        # every in-place change of a tensor (an optimiser's step, a shift, a loaded state)
        # raises its version counter
        return tuple((id(t), t._version) for t in (*self.parameters(), *self.buffers()))

    def is_current(self) -> bool:
        """Whether the last simulation (``last`` of :meth:`scored`) was made with the
        parameters as they are now."""
        return getattr(self, "_last_state", None) == self._state_versions()

    def loss_of(self, ic: Tensor) -> Tensor:
        """The loss for calculated intensities ``ic`` (obs,), differentiable in ``ic``."""
        return (self.residuals_of(ic) ** 2).sum()

    def _profiles(self) -> bool:
        return (
            self.thickness_steps > 0
            and torch.is_grad_enabled()
            and any(p.requires_grad for p in self.thickness.parameters())
        )

    def _profiled(self) -> tuple[Tensor, Tensor]:
        """Ic and scales as :meth:`calculated`, the thickness model fitted first."""
        samples, _ = self.thickness()
        basis = self.simulator.sample_basis(
            self.structure.atoms(), samples.detach(), rotations=self.rotations(),
            absorption=self.structure.absorption(),
        )  # fmt: skip
        self.fit_thickness(basis.detach(), self.thickness_steps)
        with torch.no_grad():
            _, weights = self.thickness()
        ic = basis.intensities(weights)
        return ic, self.scales(ic)

    def fit_thickness(self, basis: SampleBasis, steps: int) -> None:
        """``steps`` Adam steps of the thickness model on the loss of ``basis``'s
        intensities (the structure and orientations held), the rate falling along a cosine
        from ``thickness_rate`` to 0 within the call; the optimiser's moments carry over
        from one call to the next (and are saved with the model).

        The falling rate ends every fit with small steps: with a constant one, Adam keeps
        stepping by about the rate around the minimum, and where those steps go depends
        on rounding (a refinement shared among processes would then drift from the same
        refinement in one)."""
        params = [p for p in self.thickness.parameters() if p.requires_grad]
        if self._thickness_fit is None:
            self._thickness_fit = self._fit_optimiser()
        optimiser = self._thickness_fit
        with torch.enable_grad():
            for n in range(steps):
                for group in optimiser.param_groups:
                    group["lr"] = self.thickness_rate * 0.5 * (1 + math.cos(math.pi * n / steps))
                optimiser.zero_grad()
                _, weights = self.thickness()
                loss = self.loss_of(basis.intensities(weights))
                if loss.requires_grad:
                    loss.backward()
                sum_gradients(params)  # (the frames shared among processes)
                optimiser.step()
        for p in params:  # the optimiser of the other parameters takes none of this
            p.grad = None

    def get_extra_state(self) -> dict:
        """The thickness fit's optimiser state (see ``thickness_steps``), saved with the
        parameters so that a resumed run takes the same steps."""
        fit = self._thickness_fit
        return {} if fit is None else {"thickness_fit": fit.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self._thickness_fit = None
        if state and "thickness_fit" in state:
            self._thickness_fit = self._fit_optimiser()
            self._thickness_fit.load_state_dict(state["thickness_fit"])

    def _fit_optimiser(self) -> torch.optim.Adam:
        """A new optimiser of the thickness fit (over the model's refined parameters)."""
        params = [p for p in self.thickness.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.thickness_rate)

    def _weighted(self, ic: Tensor, scales: Tensor) -> Tensor:
        """(fit,) weighted residuals (Io − k Ic)/σ_w of the fit set."""
        return ((self.i_obs - scales[self.frame] * ic) / self.weight_sigma)[self.fit]

    def _robust_form(self, r: Tensor) -> Tensor:
        """r̃ = sign(r)·c·sqrt(ln(1 + (r/c)²)) (r itself for least squares)."""
        if self.robust <= 0:
            return r
        x = (r / self.robust_c) ** 2
        small = x < 1e-8
        safe = torch.where(small, torch.ones_like(x), x)
        return r * torch.where(small, 1 - x / 2, torch.sqrt(torch.log1p(safe) / safe))

    def _set_robust_scale(self, r: Tensor) -> None:
        r = r[torch.isfinite(r)]  # (a non-finite loss stops the step elsewhere)
        scale = max(1.4826 * float(r.abs().median()), 1.0) if r.numel() else 1.0
        self.robust_c.fill_(self.robust * scale)

    def update_robust_scale(self, *, fresh: bool = False) -> None:
        """Set c of the robust loss from the residuals of the last ``forward()`` (``fresh``
        or before any: a new simulation at the current parameters); nothing for least
        squares."""
        if self.robust <= 0:
            return
        if fresh or getattr(self, "_last", None) is None:
            with torch.no_grad():
                ic, scales = self.calculated()
        else:
            ic, scales = self._last
        self._set_robust_scale(self._weighted(ic, scales))

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
        """(fit,) residuals of the loss: (Io − k Ic)/σ_w of the fit set, or their robust
        form r̃ (module notes); the loss is their sum of squares."""
        ic, scales = self.calculated()
        self._remember(ic, scales)
        return self._robust_form(self._weighted(ic, scales))

    def jacobian(self, *, orientation: bool, single: bool = False) -> tuple[Tensor, Tensor]:
        """Residuals (fit,) and their derivatives with respect to the structure's refined
        shifts (fit, parameter) and, with ``orientation``, to every frame's rotation
        vector (fit, 3·frame; component-major), in forward mode
        (:func:`~blochnet.experiment.frame_tangents.frame_jacobian`): the thickness model
        held at its values; ``single``: the derivatives to about 1e-6 relative in half the
        time (for a normal matrix JᵀJ, not for a gradient Jᵀr).
        Needs a structure without refined absorption (κ), else a ConfigurationError.

        The C allocator's free blocks go back to the system before the Jacobian (those a
        backward pass freed, else the heap grows by the Jacobian's arrays) and after it
        (else the next passes' arrays land between the Jacobian's free blocks: shared
        glycine's backward passes after a Jacobian peaked at 1.05–1.17 GB, its s.u. stage
        in two other runs at 1.34 and 1.55 GB; 0.93–0.96 GB with them returned)."""
        if self.structure.kappa_shift.numel():
            raise ConfigurationError("forward-mode derivatives do not cover a refined κ")
        release_free_memory()
        with torch.no_grad():
            samples, weights = self.thickness()
            rotations = self.rotations()
            jac = frame_jacobian(
                self.simulator,
                self.structure.atoms(), self.structure.atom_tangents(), samples, weights,
                rotations=None if rotations is None else rotations.detach(),
                orientation=orientation, single=single,
            )  # fmt: skip
        release_free_memory()
        columns = [jac.structure]
        if orientation:
            columns.append(jac.orientation.permute(0, 2, 1).reshape(self.simulator.n_used, -1))
        d_ic = torch.cat(columns, dim=1)
        residuals = self.residuals_of(jac.intensities).detach()
        return residuals, self._residual_tangents(jac.intensities, d_ic)

    def _residual_tangents(self, ic: Tensor, d_ic: Tensor) -> Tensor:
        """(fit, column) derivatives of the residuals along the changes ``d_ic`` (obs,
        column) of Ic: through the frame scales and the robust weights, every column in
        one vectorised forward-mode pass (columns in chunks of about
        ``_RESIDUAL_ELEMENTS`` elements per intermediate array)."""
        if d_ic.shape[1] == 0:
            return d_ic.new_zeros(int(self.fit.sum()), 0)

        def along(change: Tensor) -> Tensor:
            return torch.func.jvp(self.residuals_of, (ic,), (change,))[1]

        chunk = max(1, _RESIDUAL_ELEMENTS // max(len(ic), 1))
        with torch.no_grad():
            return torch.func.vmap(along, in_dims=1, out_dims=1, chunk_size=chunk)(d_ic)

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
    ids = np.concatenate([o.observations.frame_ids for o in objectives])
    return figures_of_merit(
        cat("i_obs"), cat("sigma"), cat("i_calc"), frames, ids,
        n_parameters=n_parameters, scales=cat("scales"),
    )  # fmt: skip
