"""blochnet: dynamical (Bloch-wave) refinement of 3D electron diffraction data.

The public API is imported lazily, so that ``blochnet --help`` does not load PyTorch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "Atom": "blochnet.crystal",
    "Cell": "blochnet.crystal",
    "Crystal": "blochnet.crystal",
    "BlochnetError": "blochnet.errors",
    "ConfigurationError": "blochnet.errors",
    "InputFileError": "blochnet.errors",
    "Pattern": "blochnet.experiment.pattern",
    "simulate_pattern": "blochnet.experiment.pattern",
    "read_structure": "blochnet.io.cif",
    "write_structure": "blochnet.io.cif_write",
    "evaluate": "blochnet.experiment.evaluate",
    "read_pets": "blochnet.io.pets",
    "write_pets": "blochnet.io.pets_write",
    "RefineConfig": "blochnet.refinement.config",
    "RefinementResult": "blochnet.refinement.pipeline",
    "refine": "blochnet.refinement.pipeline",
    "ThicknessConfig": "blochnet.refinement.thickness",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'blochnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
