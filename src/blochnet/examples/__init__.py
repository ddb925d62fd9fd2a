"""Example structures and data sets shipped inside the package (see README.md here)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from blochnet.errors import ConfigurationError

EXAMPLES = {"quartz": "quartz.cif", "silicon": "silicon.cif"}
DATASETS = {"quartz": "quartz.cif_pets"}


def example_path(name: str) -> Path:
    """Path of a bundled example file by short name (``"quartz"``, ``"silicon"``)."""
    if name not in EXAMPLES:
        raise ConfigurationError(f"no example {name!r}; available: {', '.join(EXAMPLES)}")
    return Path(str(resources.files(__package__).joinpath(EXAMPLES[name])))


def example_dataset_path(name: str) -> Path:
    """Path of a bundled 3D-ED data set (``.cif_pets``) by short name (``"quartz"``)."""
    if name not in DATASETS:
        raise ConfigurationError(f"no example data set {name!r}; available: {', '.join(DATASETS)}")
    return Path(str(resources.files(__package__).joinpath(DATASETS[name])))
