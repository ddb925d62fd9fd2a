"""Small networks that learn a per-frame quantity from the frame's orientation.

A *learned frame component* maps each frame's input features to a few numbers (thickness
mean and width, a scale, an orientation drift, a background, …). Every such component
follows one pattern, which :class:`LearnedFrameComponent` and :func:`mlp` provide:

1. subclass :class:`LearnedFrameComponent`; its constructor stores the input features as
   buffers: the rotation angle α scaled to [−1, 1] over the data set and, optionally, the
   beam direction in crystal coordinates (unit vector, 3 more inputs);
2. build the network with ``mlp(self.n_features, n_out, hidden, activation,
   output_scale=0.01)``: small output weights and a zero output bias, so the component
   starts at its prior (to ~0.1 %) and every layer gets gradient from the first step;
3. in ``forward``, map ``prior + network(self.features)`` onto the physical range
   (:func:`bounded` onto an interval, softmax onto a grid, exp for a positive factor), the
   prior being a buffer (:meth:`LearnedFrameComponent.frame_prior`) that holds the
   starting values (frame, n_out) in that raw space (:func:`bounded_inverse`).

An exactly zero output layer (``output_scale=0``) is not recommended: its first Adam steps
are nearly rank one, and fits of frame-dependent targets then stall on a plateau.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor, nn

from blochnet.errors import ConfigurationError

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
}


def mlp(
    n_in: int,
    n_out: int,
    hidden: Sequence[int] = (64, 64),
    activation: str = "tanh",
    *,
    output_scale: float = 1.0,
    seed: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> nn.Sequential:
    """Fully connected network n_in → hidden… → n_out, activation between layers.

    Parameters
    ----------
    n_in, n_out : input and output sizes.
    hidden : widths of the hidden layers (the paper's thickness network: (64, 64)).
    activation : one of ``tanh``, ``relu``, ``silu``, ``gelu``, ``softplus``.
    output_scale : factor on the initial weights of the last layer, whose bias starts at
        zero when it is not 1 (0: the output is ≡ 0 at start).
    seed : seed of the (PyTorch default) initialisation of the weights; ``None`` uses the
        global generator. The global generator's state is left unchanged when given.
    dtype : precision of the parameters.
    """
    if activation not in _ACTIVATIONS:
        raise ConfigurationError(
            f"unknown activation {activation!r}; choose from {sorted(_ACTIVATIONS)}"
        )
    sizes = [n_in, *hidden, n_out]
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b, dtype=dtype))
            if i < len(sizes) - 2:
                layers.append(_ACTIVATIONS[activation]())
    if output_scale != 1.0:
        with torch.no_grad():
            layers[-1].weight.mul_(output_scale)
            layers[-1].bias.zero_()
    return nn.Sequential(*layers)


def bounded(z: Tensor, lo: float, hi: float) -> Tensor:
    """lo + (hi − lo)·sigmoid(z): an unbounded network output mapped onto (lo, hi)."""
    return lo + (hi - lo) * torch.sigmoid(z)


def bounded_inverse(value: ArrayLike, lo: float, hi: float, *, margin: float = 1e-6) -> np.ndarray:
    """z such that ``bounded(z, lo, hi) = value``, value clipped to ``margin`` from the ends."""
    p = np.clip((np.asarray(value, dtype=np.float64) - lo) / (hi - lo), margin, 1 - margin)
    return np.log(p) - np.log1p(-p)


def check_interval(bounds: Sequence[float], name: str) -> tuple[float, float]:
    """(lo, hi) as floats with 0 < lo < hi < ∞, or a :class:`ConfigurationError`."""
    lo, hi = (float(b) for b in bounds)
    if not 0 < lo < hi < np.inf:
        raise ConfigurationError(f"{name} must be (lo, hi) with 0 < lo < hi, got {tuple(bounds)}")
    return lo, hi


def per_frame(value: ArrayLike, n_frames: int, name: str = "t0") -> np.ndarray:
    """(frame,) positive values from a scalar or one value per frame."""
    v = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if v.shape not in ((1,), (n_frames,)) or not np.all(np.isfinite(v) & (v > 0)):
        raise ConfigurationError(f"{name} must be positive, one value or {n_frames}: {value}")
    return np.broadcast_to(v, (n_frames,)).copy()


def start_and_range(
    start: ArrayLike | None,
    bounds: Sequence[float] | None,
    n_frames: int,
    *,
    default: tuple[float, float],
    inclusive: bool = False,
    name: str = "t0",
) -> tuple[np.ndarray, tuple[float, float]]:
    """(frame,) positive starting values and their range (lo, hi), each defaulted from the other.

    No ``start``: the middle of ``bounds`` (or of ``default``). No ``bounds``: (min/2,
    2·max) of the starting values. The starting values must lie inside the range.
    """
    if start is None:
        lo, hi = check_interval(bounds or default, "range")
        values = np.full(n_frames, 0.5 * (lo + hi))
    else:
        values = per_frame(start, n_frames, name)
        lo, hi = (
            check_interval(bounds, "range") if bounds else (0.5 * values.min(), 2 * values.max())
        )
    inside = (lo <= values) & (values <= hi) if inclusive else (lo < values) & (values < hi)
    if not np.all(inside):
        raise ConfigurationError(f"{name} must lie inside the range ({lo:g}, {hi:g})")
    return values, (lo, hi)


def network_directions(use_directions: bool, directions: ArrayLike | None) -> ArrayLike | None:
    """The beam directions a configuration feeds its network: ``directions`` when
    ``use_directions`` (which must then be given), else None."""
    if use_directions and directions is None:
        raise ConfigurationError("use_directions is set but no beam directions were given")
    return directions if use_directions else None


def normalised_angles(angles_deg: ArrayLike) -> np.ndarray:
    """(frame,) rotation angles mapped linearly onto [−1, 1] (zeros if they are all equal)."""
    a = np.asarray(angles_deg, dtype=np.float64).reshape(-1)
    span = a.max() - a.min() if a.size else 0.0
    return 2.0 * (a - a.min()) / span - 1.0 if span > 0 else np.zeros_like(a)


class LearnedFrameComponent(nn.Module):
    """Base of per-frame components learned from the frame's orientation.

    Parameters
    ----------
    angles_deg : (frame,) rotation angle α of each frame [deg].
    directions : optional (frame, 3) beam direction in crystal coordinates; normalised and
        appended to the scaled angle as three more input features.
    dtype : precision of the buffers.

    Attributes
    ----------
    angles : buffer (frame,) α [deg].
    features : buffer (frame, n_features), ``[x]`` or ``[x, d_x, d_y, d_z]`` with
        x = 2(α − α_min)/(α_max − α_min) − 1.
    """

    def __init__(
        self,
        angles_deg: ArrayLike,
        directions: ArrayLike | None = None,
        *,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        angles = np.asarray(angles_deg, dtype=np.float64).reshape(-1)
        if angles.size == 0 or not np.all(np.isfinite(angles)):
            raise ConfigurationError("frame angles must be a non-empty array of finite values")
        columns = [normalised_angles(angles)[:, None]]
        if directions is not None:
            d = np.asarray(directions, dtype=np.float64)
            if d.shape != (angles.size, 3):
                raise ConfigurationError(
                    f"directions must have shape ({angles.size}, 3), got {d.shape}"
                )
            columns.append(d / np.linalg.norm(d, axis=1, keepdims=True))
        self.register_buffer("angles", torch.as_tensor(angles, dtype=dtype))
        self.register_buffer("features", torch.as_tensor(np.hstack(columns), dtype=dtype))

    @property
    def n_frames(self) -> int:
        return self.features.shape[0]

    @property
    def n_features(self) -> int:
        return self.features.shape[1]

    def frame_prior(self, values: ArrayLike) -> Tensor:
        """(frame, k) buffer-ready tensor from k values per frame, or k shared values."""
        v = torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=self.features.dtype)
        return torch.broadcast_to(v, (self.n_frames, v.shape[-1])).clone()
