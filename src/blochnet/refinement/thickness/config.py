"""Choosing and building a thickness model: :func:`make_thickness_model` and
:class:`ThicknessConfig`, the ``[thickness]`` table of a refinement configuration.
"""

from __future__ import annotations

import inspect
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from blochnet.errors import ConfigurationError
from blochnet.refinement.networks import network_directions
from blochnet.refinement.thickness.models import (
    DEFAULT_T_RANGE,
    FrameThickness,
    GlobalThickness,
    ProfileThickness,
    ThicknessKind,
    ThicknessModel,
)
from blochnet.refinement.thickness.neural import NeuralGaussianThickness, NeuralGridThickness

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

    kind: ThicknessKind = Field(
        "neural-grid",
        description="neural-grid: a learned distribution per frame on a fixed thickness "
        "grid; neural: the paper's Gaussian (or flexible) distribution per frame; profile, "
        "frame, global: one thickness per frame, smooth in the angle, free, or shared",
    )
    t0: float | None = Field(None, gt=0, description="starting thickness [Å]; None: auto")
    t_range: tuple[float, float] | None = Field(
        None,
        description="range of the mean (neural; None: t0/2 to 2·t0) or of the grid "
        "(neural-grid; None: t0/20 to 2.5·t0) [Å]",
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

    @model_validator(mode="after")
    def _options_of_the_kind(self) -> ThicknessConfig:
        """A setting the chosen kind does not use is refused, not ignored (at its default
        value it is accepted, so a full dump of a configuration reads back)."""
        used = {
            "neural": {"width_range", "n_samples", "shape", "nodes"},
            "neural-grid": {"n_grid"},
            "profile": {"degree"},
        }
        only = set().union(*used.values()) - used.get(self.kind, set())
        if self.kind not in ("neural", "neural-grid"):
            only |= {"t_range", "hidden", "activation", "use_directions"}
        fields = type(self).model_fields
        unused = sorted(
            key
            for key in only & self.model_fields_set
            if getattr(self, key) != fields[key].get_default(call_default_factory=True)
        )
        if unused:
            owners = {key: kind for kind, keys in used.items() for key in keys}
            hint = ", ".join(f"{key} ({owners.get(key, 'neural kinds')})" for key in unused)
            raise ValueError(f"kind {self.kind!r} does not use {hint}; set kind to one that does")
        return self

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
            directions=network_directions(self.use_directions, directions),
            **options,
        )
