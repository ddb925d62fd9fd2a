"""The thickness-model interface and the models without a network.

:class:`ThicknessModel` is the interface (see the package notes); :class:`GlobalThickness`
(one value), :class:`FrameThickness` (one per frame) and :class:`ProfileThickness` (a smooth
function of the rotation angle) implement it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from numpy.typing import ArrayLike
from torch import Tensor, nn

from blochnet.refinement.networks import (
    LearnedFrameComponent,
    per_frame,
)

DEFAULT_T_RANGE = (300.0, 1100.0)  # [Å], the paper's range of the mean thickness
OUTPUT_INIT = 0.01  # initial weight scale of the networks' output layers (see networks.py)
ThicknessKind = Literal["global", "frame", "profile", "neural", "neural-grid"]
# what every thickness model returns: samples [Å] and weights (summing to 1 per frame)
Samples = tuple[Float[Tensor, "frame sample"], Float[Tensor, "frame sample"]]


class ThicknessModel(nn.Module):
    """Interface of every thickness model (see the module docstring)."""

    # True where the samples do not depend on the parameters (only the weights do): the
    # intensities at the samples then serve every value of the parameters, and the model
    # can be fitted on them without solving again (see Objective's thickness_steps)
    fixed_samples: bool = False

    def forward(self) -> Samples:
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

    def forward(self) -> Samples:
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

    def forward(self) -> Samples:
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

    def forward(self) -> Samples:
        t = (self.t0 * torch.exp(self.basis @ self.coefficients))[:, None]
        return t, torch.ones_like(t)
