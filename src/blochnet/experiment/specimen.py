"""Thickness of a simulated specimen: the distribution each frame sees, as (frame, sample)
thicknesses and weights at the frames' rotation angles (used by
:func:`~blochnet.experiment.synthetic.simulate_experiment`; stored with the truth).

``ConstantThickness`` one value; ``PerFrameThickness`` one per frame; ``WedgeThickness`` a
mean following the rotation with a spread within each frame; ``SampledThickness`` a given
distribution per frame. ``ThicknessModel`` is their union, told apart by ``kind``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from blochnet.errors import ConfigurationError

_FORBID = ConfigDict(extra="forbid")
_Positive = Annotated[float, Field(gt=0)]


class ConstantThickness(BaseModel):
    """One thickness ``value`` [Å] for every frame."""

    model_config = _FORBID
    kind: Literal["constant"] = "constant"
    value: float = Field(gt=0)

    def sample(self, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(frame, sample) thicknesses [Å] and weights (rows sum to 1) at frame angles α."""
        return np.full((len(alpha), 1), self.value), np.ones((len(alpha), 1))


class PerFrameThickness(BaseModel):
    """One thickness [Å] per frame, in frame-table order."""

    model_config = _FORBID
    kind: Literal["per_frame"] = "per_frame"
    values: list[_Positive]

    def sample(self, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _check_frames(len(self.values), len(alpha))
        return np.asarray(self.values, dtype=float)[:, None], np.ones((len(alpha), 1))


class WedgeThickness(BaseModel):
    """A thickness distribution whose mean follows the rotation angle α.

    The mean is ``mean_start`` at the first frame and ``mean_end`` at the last; in between
    it is linear in α, or (``inverse_cosine``) t_n / cos(α − α_n), a slab of thickness t_n
    whose normal is along the beam at α_n, both fixed by the two ends. ``spread`` is the
    relative standard deviation: uniform on mean·(1 ± √3·spread), or Gaussian with
    σ = spread·mean cut at ±3σ; ``samples`` evenly spaced points with weights.
    """

    model_config = _FORBID
    kind: Literal["wedge"] = "wedge"
    mean_start: float = Field(gt=0)
    mean_end: float = Field(gt=0)
    law: Literal["linear", "inverse_cosine"] = "linear"
    spread: float = Field(0.0, ge=0, lt=1)
    distribution: Literal["uniform", "gaussian"] = "uniform"
    samples: int = Field(9, ge=1, le=200)

    def means(self, alpha: np.ndarray) -> np.ndarray:
        """(frame,) mean thickness [Å] at the frame angles α [deg]."""
        alpha = np.asarray(alpha, dtype=float)
        t0, t1, a0, a1 = self.mean_start, self.mean_end, alpha[0], alpha[-1]
        if a1 == a0 or self.law == "linear":
            return t0 + (t1 - t0) * (alpha - a0) / (a1 - a0 if a1 != a0 else 1.0)
        r0, r1 = np.radians([a0, a1])
        normal = np.arctan2(t1 * np.cos(r1) - t0 * np.cos(r0), t0 * np.sin(r0) - t1 * np.sin(r1))
        normal += np.pi if np.cos(r0 - normal) < 0 else 0.0
        cosine = np.cos(np.radians(alpha) - normal)
        if cosine.min() < 0.1:
            raise ConfigurationError(
                f"an inverse-cosine wedge {t0:g} → {t1:g} Å over α {a0:g}…{a1:g}° needs the slab "
                "normal > 84° from the beam; use the linear law"
            )
        return t0 * np.cos(r0 - normal) / cosine

    def sample(self, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = self.samples
        if n == 1:
            x, w = np.zeros(1), np.ones(1)
        elif self.distribution == "uniform":
            x, w = np.sqrt(3) * ((np.arange(n) + 0.5) * 2 / n - 1), np.full(n, 1 / n)
        else:
            x = np.linspace(-3, 3, n)
            w = np.exp(-0.5 * x**2) / np.exp(-0.5 * x**2).sum()
        thickness = self.means(alpha)[:, None] * (1 + self.spread * x)
        if thickness.min() <= 0:
            raise ConfigurationError(f"spread {self.spread:g} gives thicknesses ≤ 0; reduce it")
        return thickness, np.broadcast_to(w, thickness.shape).copy()


class SampledThickness(BaseModel):
    """A given distribution per frame: ``thickness`` [Å] and ``weights``, both (frame, sample).

    Weights default to equal and are normalised to sum 1 in every frame.
    """

    model_config = _FORBID
    kind: Literal["samples"] = "samples"
    thickness: list[list[_Positive]]
    weights: list[list[Annotated[float, Field(ge=0)]]] | None = None

    @field_validator("thickness", "weights")
    @classmethod
    def _rectangular(cls, value):
        if value is not None and len({len(row) for row in value} | {0}) != 2:  # {n, 0}, n > 0
            raise ValueError("need the same number (≥ 1) of samples in every frame")
        return value

    def sample(self, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.asarray(self.thickness, dtype=float)
        _check_frames(len(t), len(alpha))
        w = np.ones_like(t) if self.weights is None else np.asarray(self.weights, dtype=float)
        if w.shape != t.shape or np.any(w.sum(1) <= 0):
            raise ConfigurationError(f"weights {w.shape} must match samples {t.shape}, sum > 0")
        return t, w / w.sum(1, keepdims=True)


ThicknessModel = Annotated[
    ConstantThickness | PerFrameThickness | WedgeThickness | SampledThickness,
    Field(discriminator="kind"),
]


def _check_frames(n_given: int, n_frames: int) -> None:
    if n_given != n_frames:
        raise ConfigurationError(f"thickness given for {n_given} frames; data set: {n_frames}")
