"""Learned per-frame thickness distributions: the hybrid model of Malik et al. and a grid one.

References
----------
Malik et al., Nat. Commun. (2026), arXiv:2508.05908.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch import Tensor

from blochnet.errors import ConfigurationError
from blochnet.refinement.networks import (
    LearnedFrameComponent,
    bounded,
    bounded_inverse,
    check_interval,
    mlp,
    per_frame,
    start_and_range,
)
from blochnet.refinement.thickness.models import (
    DEFAULT_T_RANGE,
    OUTPUT_INIT,
    Samples,
    ThicknessModel,
)


class NeuralGaussianThickness(LearnedFrameComponent, ThicknessModel):
    """Gaussian thickness distribution per frame predicted by an MLP (Malik et al.).

    Parameters
    ----------
    angles_deg : (frame,) rotation angle of each frame [deg].
    t0 : starting mean thickness [Å], scalar or (frame,); default the middle of t_range.
    t_range : (lo, hi) range of the mean [Å]; default (t0/2, 2·t0), or (300, 1100) Å when
        t0 is not given either.
    width_range : (lo, hi) range of the width σ [Å]; default (1 Å, half the largest t0).
    width0 : starting width [Å]; default 5 % of t0.
    hidden, activation : hidden layer widths and activation of the network.
    n_samples : number S of thickness samples per frame.
    seed : seed of the network initialisation (and of ε with ``nodes="random"``).
    directions : optional (frame, 3) beam directions (crystal frame), extra network inputs.
    shape : ``"gaussian"`` (the paper's family) or ``"flexible"``: each frame's
        distribution is a blend, predicted per frame, between a Gaussian and a uniform
        (flat-topped) distribution of the same mean and width. A wedge-shaped crystal
        edge seen by a beam wider than the edge gives the uniform end.
    nodes : ``"quantile"``: ε_s = Φ⁻¹((s + ½)/S), the midpoints of S equal-probability
        bins (stratified, the better quadrature of the distribution); ``"random"``: ε
        drawn once from N(0, 1) with ``seed``.

    Notes
    -----
    (z_μ, z_σ) = z⁰_f + MLP(x_f), x_f = α_f scaled to [−1, 1] (with the direction appended);
    μ = lo + (hi − lo)·sigmoid(z_μ), σ = lo_σ + (hi_σ − lo_σ)·sigmoid(z_σ), and the samples
    t_fs = softplus(μ_f + σ_f ε_s) (reparameterisation trick) with equal weights 1/S.
    ε (S,) is fixed and shared by all frames, so the objective is deterministic; it is
    shifted and scaled to sample mean 0 and standard deviation 1.

    With ``shape="flexible"`` a third output gives the blend λ_f = sigmoid(z_λ) and the
    nodes are e_fs = standardised((1 − λ_f) ε_s + λ_f v_s), with v_s = √3 (2 u_s − 1),
    u_s = Φ(ε_s), the uniform distribution's value at the same rank as ε_s (a blend of two
    quantile functions is a quantile function, so e is always a distribution): λ = 0 is the
    Gaussian, λ = 1 the uniform on μ ± √3 σ. It starts at λ = ½.

    The fixed offsets z⁰ (frame, 2 or 3) encode t0, width0 (and λ = ½), and the output
    layer starts small (weights × 0.01, zero bias), so every frame starts at (t0, width0)
    to ~0.1 %.
    """

    def __init__(
        self,
        angles_deg: ArrayLike,
        *,
        t0: ArrayLike | None = None,
        t_range: tuple[float, float] | None = None,
        width_range: tuple[float, float] | None = None,
        width0: float | None = None,
        hidden: Sequence[int] = (64, 64),
        activation: str = "tanh",
        n_samples: int = 40,
        seed: int = 0,
        directions: ArrayLike | None = None,
        shape: Literal["gaussian", "flexible"] = "gaussian",
        nodes: Literal["quantile", "random"] = "quantile",
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__(angles_deg, directions, dtype=dtype)
        if shape not in ("gaussian", "flexible") or nodes not in ("quantile", "random"):
            raise ConfigurationError(
                f"shape must be 'gaussian' or 'flexible' and nodes 'quantile' or 'random', "
                f"got {shape!r}, {nodes!r}"
            )
        self.flexible = shape == "flexible"
        t0, (self.t_lo, self.t_hi) = start_and_range(
            t0, t_range, self.n_frames, default=DEFAULT_T_RANGE
        )
        width_range = width_range or (1.0, max(0.5 * float(np.max(t0)), 2.0))
        self.w_lo, self.w_hi = check_interval(width_range, "width_range")
        w0 = 0.05 * t0 if width0 is None else per_frame(width0, self.n_frames, "width0")
        z_t = bounded_inverse(t0, self.t_lo, self.t_hi)
        z_w = bounded_inverse(w0, self.w_lo, self.w_hi, margin=0.02)
        starts = [z_t, z_w] + ([np.zeros_like(z_t)] if self.flexible else [])
        self.register_buffer("prior", self.frame_prior(np.stack(starts, axis=1)))
        self.network = mlp(
            self.n_features,
            len(starts),
            hidden,
            activation,
            output_scale=OUTPUT_INIT,
            seed=seed,
            dtype=dtype,
        )
        if n_samples < 1:
            raise ConfigurationError(f"n_samples must be ≥ 1, got {n_samples}")
        if nodes == "random":
            eps = torch.randn(n_samples, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        else:
            eps = _normal.icdf((torch.arange(n_samples, dtype=dtype) + 0.5) / n_samples)
        self.register_buffer("eps", _standardised(eps))
        self.register_buffer("flat", _standardised(math.sqrt(3) * (2 * _normal.cdf(eps) - 1)))

    def parameters_per_frame(self) -> tuple[Tensor, Tensor, Tensor]:
        """(frame,) μ and σ before the softplus [Å], and the blend λ (0: Gaussian)."""
        z = self.prior + self.network(self.features)
        mu, sigma = bounded(z[:, 0], self.t_lo, self.t_hi), bounded(z[:, 1], self.w_lo, self.w_hi)
        lam = torch.sigmoid(z[:, 2]) if self.flexible else torch.zeros_like(mu)
        return mu, sigma, lam

    def forward(self) -> Samples:
        mu, sigma, lam = self.parameters_per_frame()
        nodes = self.eps.expand(self.n_frames, -1)
        if self.flexible:
            nodes = _standardised((1 - lam[:, None]) * self.eps + lam[:, None] * self.flat)
        t = F.softplus(mu[:, None] + sigma[:, None] * nodes)
        return t, torch.full_like(t, 1.0 / t.shape[1])

    def summary(self) -> dict[str, np.ndarray]:
        out = super().summary()
        if self.flexible:
            with torch.no_grad():
                out["flatness"] = self.parameters_per_frame()[2].cpu().double().numpy()
        return out


GRID_SPAN = (0.05, 2.5)  # default grid of NeuralGridThickness, × the starting thickness


class NeuralGridThickness(LearnedFrameComponent, ThicknessModel):
    """Per-frame thickness distribution on a fixed grid, weights predicted by an MLP.

    Parameters
    ----------
    grid : (t_min, t_max) or (t_min, t_max, n_grid) [Å]; default ``GRID_SPAN`` × the
        starting thickness, (t0/20, 2.5·t0) (t0 the smallest and largest start; without
        t0 the middle of 300–1100 Å): from a wedge's thin edge to beyond twice the mean,
        so a flat distribution from near 0 to 2·t0 and two populations either side of t0
        are both on the grid. ``n_grid`` points when ``grid`` does not say.
    width0 : width of the starting bump [Å]; default max(5 % of t0, grid spacing).
    floor : share of the starting weights spread evenly over the grid, 0 < floor < 1.
    Others as for :class:`NeuralGaussianThickness`.

    Notes
    -----
    w_f = softmax(ℓ⁰_f + MLP(x_f)) over the grid t_1 … t_n. The fixed prior logits
    ℓ⁰_f = log((1 − floor)·b_f + floor/n), with b_f a normalised Gaussian bump of width0
    around t0_f, and the small output layer make a narrow bump at start; the floor bounds
    ℓ⁰ below by log(floor/n), so mass can move anywhere on the grid in few steps. Unlike a
    Gaussian the weights can describe a flat wedge distribution or two thickness
    populations. The samples are the grid, the same for every frame: one matrix–vector
    product per grid point whatever the distribution.
    """

    def __init__(
        self,
        angles_deg: ArrayLike,
        *,
        t0: ArrayLike | None = None,
        grid: tuple[float, float] | tuple[float, float, int] | None = None,
        n_grid: int = 48,
        width0: float | None = None,
        floor: float = 1e-3,
        hidden: Sequence[int] = (64, 64),
        activation: str = "tanh",
        seed: int = 0,
        directions: ArrayLike | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__(angles_deg, directions, dtype=dtype)
        if grid is not None and len(grid) == 3:
            n_grid = int(grid[2])
        if n_grid < 2 or not 0 < floor < 1:
            raise ConfigurationError(f"need n_grid ≥ 2 and 0 < floor < 1: {n_grid}, {floor}")
        if grid is None:
            t0 = per_frame(np.mean(DEFAULT_T_RANGE) if t0 is None else t0, self.n_frames, "t0")
            grid = (GRID_SPAN[0] * float(t0.min()), GRID_SPAN[1] * float(t0.max()))
        t0, (lo, hi) = start_and_range(
            t0, (grid[0], grid[1]), self.n_frames, default=DEFAULT_T_RANGE, inclusive=True
        )
        points = np.linspace(lo, hi, n_grid)
        w0 = np.maximum(0.05 * t0, points[1] - points[0]) if width0 is None else width0
        w0 = per_frame(w0, self.n_frames, "width0")
        bump = np.exp(-((points[None, :] - t0[:, None]) ** 2) / (2 * w0[:, None] ** 2))
        start = (1 - floor) * bump / bump.sum(1, keepdims=True) + floor / n_grid
        self.register_buffer("grid", torch.as_tensor(points, dtype=dtype))
        self.register_buffer("prior", self.frame_prior(np.log(start)))
        self.network = mlp(
            self.n_features,
            n_grid,
            hidden,
            activation,
            output_scale=OUTPUT_INIT,
            seed=seed,
            dtype=dtype,
        )

    fixed_samples = True  # the grid: only the weights are learned

    def forward(self) -> Samples:
        weights = torch.softmax(self.prior + self.network(self.features), dim=-1)
        return self.grid.expand_as(weights), weights


_normal = torch.distributions.Normal(0.0, 1.0)


def _standardised(x: Tensor) -> Tensor:
    """x shifted and scaled to mean 0 and standard deviation 1 along the last axis (0 if
    it has one element or no spread)."""
    x = x - x.mean(-1, keepdim=True)
    std = x.std(-1, correction=0, keepdim=True) if x.shape[-1] > 1 else torch.zeros_like(x)
    return torch.where(std > 0, x / std.clamp_min(torch.finfo(x.dtype).tiny), 0.0)
