"""Orientation models: a small rotation of every frame away from the data file's orientation.

An orientation model is a module without inputs whose ``forward()`` returns rotation vectors
(frame, 3) [rad] in the Cartesian crystal frame, applied to every beam direction of the frame
(:meth:`FrameSimulator.intensities`, argument ``rotations``). The beam sets stay those of the
file's orientation, so corrections must stay well below a frame's semi-angle.

* :class:`FrameOrientation`: three free angles per frame (the default), refined by Adam and
  by Levenberg–Marquardt like the other per-frame parameters;
* :class:`NeuralOrientationDrift`: a smooth drift of the orientation along the rotation, a
  learned frame component (:mod:`blochnet.refinement.networks`) from the frame's rotation angle
  (and optionally its beam direction) to three angles bounded to ±``max_rotation``. It
  models what a goniometer does (a slow wobble or precession of the axis) with a few
  thousand network weights instead of 3 free numbers per frame, so frames with few
  reflections borrow orientation information from their neighbours. Refined by Adam only.

Adding such a model took this module and no change to the simulation: the objective only
calls ``forward()``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from blochnet.errors import ConfigurationError
from blochnet.refinement.networks import LearnedFrameComponent, mlp, network_directions

OrientationKind = Literal["frame", "neural"]


class FrameOrientation(nn.Module):
    """One free rotation vector per frame [rad], starting at zero.

    Attributes
    ----------
    rotation : Parameter (frame, 3).
    """

    def __init__(self, n_frames: int, *, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.rotation = nn.Parameter(torch.zeros(n_frames, 3, dtype=dtype))

    def forward(self) -> Tensor:
        return self.rotation

    def frame_parameters(self) -> list[nn.Parameter]:
        """Parameters with one row per frame (refined by Levenberg–Marquardt)."""
        return [self.rotation]


class NeuralOrientationDrift(LearnedFrameComponent):
    """Orientation drift along the rotation, predicted by an MLP from the frame's features.

    Parameters
    ----------
    angles_deg : (frame,) rotation angle of each frame [deg].
    directions : optional (frame, 3) beam directions as three more network inputs.
    hidden, activation, seed : the network (:func:`blochnet.refinement.networks.mlp`).
    max_rotation_deg : bound of each component [deg]: rotation = m · tanh(raw).
    dtype : precision.

    Notes
    -----
    rotation_f = m · tanh(N(x_f) − N₀(x_f)), with N₀ the network's output at construction (a
    buffer): the model starts exactly at the file's orientations while every layer still
    gets gradient from the first step (small but non-zero output weights).
    """

    def __init__(
        self,
        angles_deg: ArrayLike,
        directions: ArrayLike | None = None,
        *,
        hidden: Sequence[int] = (64, 64),
        activation: str = "tanh",
        max_rotation_deg: float = 1.0,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__(angles_deg, directions, dtype=dtype)
        if not 0 < max_rotation_deg <= 10:
            raise ConfigurationError(
                f"max_rotation_deg must be in (0, 10] degrees, got {max_rotation_deg}"
            )
        self.max_rotation = math.radians(max_rotation_deg)
        self.network = mlp(
            self.n_features, 3, hidden, activation, output_scale=0.01, seed=seed, dtype=dtype
        )
        with torch.no_grad():
            self.register_buffer("prior", -self.network(self.features))

    def forward(self) -> Tensor:
        return self.max_rotation * torch.tanh(self.network(self.features) + self.prior)

    def frame_parameters(self) -> list[nn.Parameter]:
        """None: the network's weights are shared by all frames (not refined by LM)."""
        return []


def make_orientation_model(
    kind: str,
    *,
    angles_deg: ArrayLike,
    directions: ArrayLike | None = None,
    dtype: torch.dtype = torch.float64,
    **options,
) -> nn.Module:
    """The orientation model ``kind`` (``frame`` or ``neural``) of one data set."""
    angles = np.asarray(angles_deg, dtype=np.float64).reshape(-1)
    if kind == "frame":
        if options or directions is not None:
            raise ConfigurationError("orientation model 'frame' takes no options")
        return FrameOrientation(len(angles), dtype=dtype)
    if kind == "neural":
        return NeuralOrientationDrift(angles, directions, dtype=dtype, **options)
    raise ConfigurationError(f"unknown orientation model {kind!r}; choose 'frame' or 'neural'")


class OrientationConfig(BaseModel):
    """Orientation model of a refinement (``[orientation]``; used when ``refine_orientation``)."""

    model_config = ConfigDict(extra="forbid")

    kind: OrientationKind = Field(
        "frame", description="frame: three free angles per frame; neural: a learned drift"
    )
    max_rotation_deg: float = Field(1.0, gt=0, le=10, description="neural: bound per angle")
    hidden: tuple[int, ...] = (64, 64)
    activation: Literal["tanh", "relu", "silu", "gelu", "softplus"] = "tanh"
    use_directions: bool = Field(False, description="neural: beam direction as network input")
    seed: int = 0

    def build(
        self,
        angles_deg: ArrayLike,
        *,
        directions: ArrayLike | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> nn.Module:
        """The model for one data set."""
        if self.kind == "frame":
            return make_orientation_model("frame", angles_deg=angles_deg, dtype=dtype)
        return make_orientation_model(
            "neural",
            angles_deg=angles_deg,
            directions=network_directions(self.use_directions, directions),
            dtype=dtype,
            hidden=self.hidden,
            activation=self.activation,
            max_rotation_deg=self.max_rotation_deg,
            seed=self.seed,
        )
