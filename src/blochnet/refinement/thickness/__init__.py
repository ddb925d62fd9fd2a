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

from blochnet.refinement.thickness.config import ThicknessConfig, make_thickness_model
from blochnet.refinement.thickness.models import (
    DEFAULT_T_RANGE,
    FrameThickness,
    GlobalThickness,
    ProfileThickness,
    ThicknessKind,
    ThicknessModel,
)
from blochnet.refinement.thickness.neural import NeuralGaussianThickness, NeuralGridThickness

__all__ = [
    "DEFAULT_T_RANGE",
    "FrameThickness",
    "GlobalThickness",
    "NeuralGaussianThickness",
    "NeuralGridThickness",
    "ProfileThickness",
    "ThicknessConfig",
    "ThicknessKind",
    "ThicknessModel",
    "make_thickness_model",
]
