"""Thickness models: per-frame distributions of the crystal thickness.

A thickness model is a module without inputs whose ``forward()`` returns ``samples``
(frame, sample) [Å] and ``weights`` (frame, sample), weights ≥ 0 summing to 1 per frame,
differentiable with respect to its parameters. A frame's intensity is the weighted mean of
the intensities simulated at its samples (``FrameSimulator.intensities(atoms, samples)``);
each sample costs one matrix–vector product on the frame's eigendecomposition.

Models, from simplest: :class:`GlobalThickness` (one value), :class:`FrameThickness` (one
per frame), :class:`ProfileThickness` (a smooth function of the rotation angle),
:class:`NeuralGaussianThickness` (the hybrid model of Malik et al.) and
:class:`NeuralGridThickness` (a learned distribution on a fixed grid). Each data set of a
joint refinement gets its own model instance; nothing is shared between them.

References
----------
Malik et al., Nat. Commun. (2026), arXiv:2508.05908.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

from blochnet.errors import ConfigurationError
from blochnet.refine.networks import (
    LearnedFrameComponent,
    bounded,
    bounded_inverse,
    check_interval,
    mlp,
    per_frame,
    start_and_range,
)

DEFAULT_T_RANGE = (300.0, 1100.0)  # [Å], the paper's range of the mean thickness
OUTPUT_INIT = 0.01  # initial weight scale of the networks' output layers (see networks.py)
ThicknessKind = Literal["global", "frame", "profile", "neural", "neural-grid"]


class ThicknessModel(nn.Module):
    """Interface of every thickness model (see the module docstring)."""

    def forward(self) -> tuple[Tensor, Tensor]:
        """samples (frame, sample) [Å] and weights (frame, sample), summing to 1 per frame."""
        raise NotImplementedError

    def moments(self) -> tuple[Tensor, Tensor]:
        """Differentiable (frame,) mean and standard deviation of each frame's distribution [Å]."""
        t, w = self()
        mean = (w * t).sum(-1)
        var = (w * (t - mean[:, None]) ** 2).sum(-1)
        positive = var > 0  # σ = 0 (S = 1) with a finite (zero) derivative
        return mean, torch.where(positive, var.where(positive, 1.0).sqrt(), 0.0)

    def summary(self) -> dict[str, np.ndarray]:
        """Per frame ``mean`` and ``width`` (standard deviation) of the distribution [Å]."""
        with torch.no_grad():
            mean, width = self.moments()
        return {"mean": mean.cpu().double().numpy(), "width": width.cpu().double().numpy()}


class GlobalThickness(ThicknessModel):
    """One refinable thickness for every frame, t = t0·exp(p) with p = 0 at start (S = 1)."""

    def __init__(self, n_frames: int, t0: float, *, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.n_frames = int(n_frames)
        self.register_buffer("t0", torch.as_tensor(per_frame(t0, 1)[0], dtype=dtype))
        self.log_ratio = nn.Parameter(torch.zeros((), dtype=dtype))

    def forward(self) -> tuple[Tensor, Tensor]:
        t = (self.t0 * torch.exp(self.log_ratio)).expand(self.n_frames, 1)
        return t, torch.ones_like(t)


class FrameThickness(ThicknessModel):
    """One refinable thickness per frame, t_f = t0_f·exp(p_f) (S = 1).

    t0 : scalar or (frame,) starting thickness [Å]. The exponential keeps t > 0 and makes
    the parameters relative changes (well scaled for Adam).
    """

    def __init__(self, n_frames: int, t0: ArrayLike, *, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.register_buffer("t0", torch.as_tensor(per_frame(t0, int(n_frames)), dtype=dtype))
        self.log_ratio = nn.Parameter(torch.zeros(int(n_frames), dtype=dtype))

    def forward(self) -> tuple[Tensor, Tensor]:
        t = (self.t0 * torch.exp(self.log_ratio))[:, None]
        return t, torch.ones_like(t)


class ProfileThickness(LearnedFrameComponent, ThicknessModel):
    """Smooth thickness profile in the rotation angle (S = 1).

    Notes
    -----
    t(α) = t0 · exp(Σ_{k=0}^{degree} c_k P_k(x)), x = α scaled to [−1, 1] over the data set,
    P_k the Legendre polynomials, c = 0 at start. A tilted platelet, t0/cos(α − α0), has
    log t = log t0 + (α − α0)²/2 + (α − α0)⁴/12 + …, so degree 2 describes it to second
    order and degree 4 over the usual ±60° tilt range; odd terms describe a wedge.
    """

    def __init__(
        self,
        angles_deg: ArrayLike,
        t0: float,
        degree: int = 2,
        *,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__(angles_deg, dtype=dtype)
        x = self.features[:, 0].numpy()
        basis = np.polynomial.legendre.legvander(x, int(degree))
        self.register_buffer("basis", torch.as_tensor(basis, dtype=dtype))
        self.register_buffer("t0", torch.as_tensor(per_frame(t0, 1)[0], dtype=dtype))
        self.coefficients = nn.Parameter(torch.zeros(int(degree) + 1, dtype=dtype))

    def forward(self) -> tuple[Tensor, Tensor]:
        t = (self.t0 * torch.exp(self.basis @ self.coefficients))[:, None]
        return t, torch.ones_like(t)


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

    def forward(self) -> tuple[Tensor, Tensor]:
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


class NeuralGridThickness(LearnedFrameComponent, ThicknessModel):
    """Per-frame thickness distribution on a fixed grid, weights predicted by an MLP.

    Parameters
    ----------
    grid : (t_min, t_max) or (t_min, t_max, n_grid) [Å]; defaults as ``t_range`` of
        :class:`NeuralGaussianThickness`; ``n_grid`` points when ``grid`` does not say.
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
        t_range = None if grid is None else (grid[0], grid[1])
        t0, (lo, hi) = start_and_range(
            t0, t_range, self.n_frames, default=DEFAULT_T_RANGE, inclusive=True
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

    def forward(self) -> tuple[Tensor, Tensor]:
        weights = torch.softmax(self.prior + self.network(self.features), dim=-1)
        return self.grid.expand_as(weights), weights


_normal = torch.distributions.Normal(0.0, 1.0)


def _standardised(x: Tensor) -> Tensor:
    """x shifted and scaled to mean 0 and standard deviation 1 along the last axis (0 if
    it has one element or no spread)."""
    x = x - x.mean(-1, keepdim=True)
    std = x.std(-1, correction=0, keepdim=True) if x.shape[-1] > 1 else torch.zeros_like(x)
    return torch.where(std > 0, x / std.clamp_min(torch.finfo(x.dtype).tiny), 0.0)


_KINDS: dict[str, type[ThicknessModel]] = {
    "global": GlobalThickness,
    "frame": FrameThickness,
    "profile": ProfileThickness,
    "neural": NeuralGaussianThickness,
    "neural-grid": NeuralGridThickness,
}


def make_thickness_model(
    kind: str,
    *,
    angles_deg: ArrayLike,
    t0: ArrayLike | None,
    directions: ArrayLike | None = None,
    **options,
) -> ThicknessModel:
    """Build the thickness model called ``kind`` for one data set.

    Parameters
    ----------
    kind : ``global``, ``frame``, ``profile``, ``neural`` (Gaussian) or ``neural-grid``.
    angles_deg : (frame,) rotation angle of each frame [deg].
    t0 : starting thickness [Å], scalar or (frame,) (global and profile use the mean);
        ``None``: the middle of ``t_range`` / ``grid`` if given, else of 300–1100 Å.
    directions : (frame, 3) beam directions as extra network inputs (neural kinds only).
    options : keyword arguments of the model's class.
    """
    if kind not in _KINDS:
        raise ConfigurationError(f"unknown thickness model {kind!r}; choose from {list(_KINDS)}")
    cls = _KINDS[kind]
    accepted = set(inspect.signature(cls).parameters) - {"angles_deg", "n_frames", "t0"}
    unknown = set(options) - accepted
    if directions is not None:
        options["directions"] = directions
        unknown |= {"directions"} - accepted
    if unknown:
        raise ConfigurationError(
            f"thickness model {kind!r} does not take {sorted(unknown)}; it takes {sorted(accepted)}"
        )
    angles = np.asarray(angles_deg, dtype=np.float64).reshape(-1)
    if kind in ("neural", "neural-grid"):
        return cls(angles, t0=t0, **options)
    t0 = float(np.mean(DEFAULT_T_RANGE)) if t0 is None else t0
    first = angles if kind == "profile" else len(angles)
    return cls(first, t0 if kind == "frame" else float(np.mean(t0)), **options)


class ThicknessConfig(BaseModel):
    """Thickness model of a refinement (one instance per data set is built from it)."""

    model_config = ConfigDict(extra="forbid")

    kind: ThicknessKind = "neural"
    t0: float | None = Field(None, gt=0, description="starting thickness [Å]; None: auto")
    t_range: tuple[float, float] | None = Field(
        None, description="range of the mean (neural) or of the grid (neural-grid) [Å]"
    )
    width_range: tuple[float, float] | None = Field(
        None, description="range of σ [Å]; None: (1, half the starting thickness)"
    )
    n_samples: int = Field(40, ge=1, le=1000, description="samples per frame (neural)")
    shape: Literal["gaussian", "flexible"] = Field(
        "gaussian",
        description="neural: Gaussian per frame (the paper's), or flexible: a per-frame blend "
        "of a Gaussian and a uniform (wedge-like) distribution of the same mean and width",
    )
    nodes: Literal["quantile", "random"] = Field(
        "quantile", description="neural: fixed ε at the normal quantiles, or drawn at random"
    )
    n_grid: int = Field(48, ge=2, le=1000, description="grid points (neural-grid)")
    degree: int = Field(2, ge=0, le=10, description="polynomial degree (profile)")
    hidden: tuple[int, ...] = (64, 64)
    activation: Literal["tanh", "relu", "silu", "gelu", "softplus"] = "tanh"
    use_directions: bool = Field(False, description="beam direction as network input")
    seed: int = 0

    @field_validator("t_range", "width_range")
    @classmethod
    def _increasing(cls, bounds: tuple[float, float] | None) -> tuple[float, float] | None:
        if bounds is not None and not 0 < bounds[0] < bounds[1]:
            raise ValueError("must be (lo, hi) with 0 < lo < hi")
        return bounds

    def build(
        self,
        angles_deg: ArrayLike,
        *,
        t0: ArrayLike | None = None,
        directions: ArrayLike | None = None,
    ) -> ThicknessModel:
        """The model for one data set; ``self.t0`` overrides ``t0`` (e.g. from the data)."""
        start = self.t0 if self.t0 is not None else t0
        if start is None and self.t_range is not None:
            start = float(np.mean(self.t_range))
        if self.use_directions and directions is None:
            raise ConfigurationError("use_directions is set but no beam directions were given")
        net = {"hidden": self.hidden, "activation": self.activation, "seed": self.seed}
        options = {
            "profile": {"degree": self.degree},
            "neural": net | {"t_range": self.t_range, "width_range": self.width_range},
            "neural-grid": net | {"grid": self.t_range, "n_grid": self.n_grid},
        }.get(self.kind, {})
        if self.kind == "neural":
            options |= {"n_samples": self.n_samples, "shape": self.shape, "nodes": self.nodes}
        return make_thickness_model(
            self.kind,
            angles_deg=angles_deg,
            t0=start,
            directions=directions if self.use_directions else None,
            **options,
        )
